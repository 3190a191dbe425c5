# CONNECT: `make run` serves the demo; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FLASK := $(VENV)/bin/flask --app app
PORT ?= 5000
HOST ?= 127.0.0.1
DEBIAN_PACKAGES := wkhtmltopdf chromium poppler-utils fonts-dejavu-core xvfb

.PHONY: run test deps system-deps bench soak clean

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

deps: $(VENV)/.installed system-deps

# Debian packages: installed when running as root, otherwise we say how.
system-deps:
	@missing=""; \
	command -v wkhtmltopdf >/dev/null || missing="$$missing wkhtmltopdf"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v pdftoppm >/dev/null || missing="$$missing poppler-utils"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "Missing system packages:$$missing. Install them with: sudo apt-get install $(DEBIAN_PACKAGES)"; \
	  fi; \
	fi

data/connect.db:
	$(FLASK) init-db
	$(FLASK) seed-demo

run: deps data/connect.db
	$(FLASK) init-db
	@echo "CONNECT on http://$(HOST):$(PORT) (worker running alongside)"
	$(FLASK) run-worker & WORKER=$$!; \
	trap "kill $$WORKER 2>/dev/null" EXIT INT TERM; \
	$(FLASK) run --host $(HOST) --port $(PORT)

test: deps
	XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp/connect-xdg} $(PY) -m pytest -n 2 --dist loadfile -q -p no:cacheprovider tests

# Benchmarks (issue 6): wrk from Debian drives the load run; data cached in bench/out/.
bench: deps
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "The load run needs wrk: sudo apt-get install wrk"; fi; }
	$(PY) -m bench.run

# Load and soak (issue 7, items 14 and 17): locust (requirements-soak.txt, not needed by
# `make test`) drives gunicorn for SOAK_MINUTES (10) with SOAK_USERS (50); backup drill halfway.
$(VENV)/.soak-installed: $(VENV)/.installed requirements-soak.txt
	$(VENV)/bin/pip install --quiet -r requirements-soak.txt
	touch $@

soak: deps $(VENV)/.soak-installed
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache
