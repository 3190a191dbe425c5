"""Issue 6 (scale): the worker's footprint and what the speed fixes must keep exact."""

import datetime as dt

import pytest

import workflow
from app import create_app


@pytest.mark.parametrize("years", [range(2000, 2040), range(2040, 2101)])
def test_us_holidays_match_the_holidays_package(years):
    """The delay check's US federal holidays (R-TRACK-3's business days) are computed
    without the `holidays` package (10 MB in the worker); they match it exactly."""
    holidays = pytest.importorskip("holidays")
    for year in years:
        expected = set(holidays.country_holidays("US", years=[year]).keys())
        assert workflow._us_holidays([year]) == expected, year


def test_business_days_skip_observed_holidays():
    """R-TRACK-3: Friday 2026-07-03 (Independence Day observed) is not a business day."""
    assert workflow.add_business_days(dt.date(2026, 7, 2), 1) == dt.date(2026, 7, 6)


def test_worker_app_builds_no_admin_and_a_small_page_cache(tmp_path):
    """Issue 6: `run-worker` gets an app without the admin interface and a small SQLite
    page cache; the web app keeps both."""
    from models import database
    config = {"DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "SECRET_KEY": "k",
              "DATA_DIR": str(tmp_path), "UPLOAD_DIR": str(tmp_path / "up")}
    worker = create_app(dict(config, WORKER=True))
    assert "admin" not in worker.extensions and "run-worker" in worker.cli.commands
    with database.connection_context():
        assert database.execute_sql("PRAGMA cache_size").fetchone()[0] == -2000
    web = create_app(config)
    assert "admin" in web.extensions
    with database.connection_context():
        assert database.execute_sql("PRAGMA cache_size").fetchone()[0] == -64000
    database.close()


def test_worker_tick_without_subscriptions_imports_no_http_client(tmp_path):
    """Issue 6 (worker peak memory within 60 MB): a worker tick with no FHIR subscription
    due does not import requests and the FHIR mapping (~6 MB)."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "from app import create_app\n"
        "import messaging, models\n"
        f"app = create_app({{'WORKER': True, 'DATABASE_URL': 'sqlite:///{tmp_path / 'w.db'}', "
        f"'SECRET_KEY': 'k', 'DATA_DIR': '{tmp_path}'}})\n"
        "with app.app_context(), models.database.connection_context():\n"
        "    models.migrate()\n"
        "    messaging.run_due_jobs()\n"
        "print('requests' in sys.modules, 'api.fhir' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.split()[-2:] == ["False", "False"], out.stderr[-500:]
