"""`make bench`: key screens at statewide scale beside their raw-SQL floors, a load run,
the worker's memory, and bench/RESULTS.md (issue 6).

    python -m bench.run [--size statewide|quick] [--backends sqlite,postgres] [--runs 30]
                        [--no-load] [--regenerate]

The databases are generated once into bench/out/ (SQLite file, PostgreSQL database
connect_bench[_quick]) and reused while their summary file is there.

Each screen is timed in process (Flask test client, signed in as a gatekeeper of the
busiest program): median and p95 over --runs runs after warm-up, each run followed by
the screen's raw-SQL floor (the same rows fetched by a hand-written query through the raw
driver, on a connection kept open), so the ratio is measured under the same noise. The
number of queries per page counts every call of the peewee database's execute_sql.
"""

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
RESULTS = HERE / "RESULTS.md"
sys.path.insert(0, str(ROOT))

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/connect-xdg")
for _name in ("MAIL_SERVER", "SMS_BACKEND", "DATABASE_URL"):
    os.environ.pop(_name, None)

import models  # noqa: E402
from bench import generate  # noqa: E402
from bench.screens import SCREENS  # noqa: E402
from models import database  # noqa: E402

PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
SECRET = "bench-secret-key-not-for-production"
WARMUP = 3
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


# ---------------------------------------------------------------------------
# Databases: generated once, reused.
# ---------------------------------------------------------------------------

def database_url(backend, size):
    suffix = "" if size == "statewide" else f"_{size}"
    if backend == "sqlite":
        return f"sqlite:///{OUT / f'sqlite{suffix}.db'}"
    return f"{PG_BASE}/connect_bench{suffix}"


def summary_path(backend, size):
    return OUT / f"{backend}-{size}.json"


def schema_fingerprint():
    """Changes when a table, column or index of models.py changes: the cached data set is
    then generated again."""
    import hashlib
    shape = [(m._meta.table_name, [(f.column_name, f.field_type, f.index, f.unique, f.null)
                                   for f in m._meta.sorted_fields], repr(m._meta.indexes))
             for m in models.ALL_MODELS]
    return hashlib.sha1(json.dumps(shape, default=str).encode()).hexdigest()[:12]


def ensure_database(backend, size, regenerate=False):
    """The generated database's summary; generates it when missing or out of date."""
    OUT.mkdir(exist_ok=True)
    url = database_url(backend, size)
    meta = summary_path(backend, size)
    if meta.exists() and not regenerate:
        summary = json.loads(meta.read_text())
        fresh = summary.get("schema") == schema_fingerprint()
        if fresh and (backend == "postgres" or os.path.exists(url[len("sqlite:///"):])):
            return summary
        print(f"[bench] {backend}: cached data set missing or made for another schema",
              flush=True)
    if backend == "sqlite":
        path = url[len("sqlite:///"):]
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    else:
        import psycopg
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    sizes = generate.STATEWIDE if size == "statewide" else generate.QUICK
    print(f"[bench] generating {size} data on {backend} ...", flush=True)
    from app import create_app
    create_app({"DATABASE_URL": url, "SECRET_KEY": SECRET, "DATA_DIR": str(OUT / "data")})
    with database.connection_context():
        models.migrate()
        last = {"p": -1}

        def progress(label, fraction):
            pct = int(fraction * 100)
            if pct // 10 > last["p"] // 10:
                last["p"] = pct
                print(f"[bench]   {pct:3d}% {label}", flush=True)

        summary = generate.generate_scale(sizes["programs"], sizes["subjects"],
                                          sizes["referrals"], 1, progress)
    _close_all()
    print(f"[bench] generated in {summary['seconds']['total']} s", flush=True)
    summary["schema"] = schema_fingerprint()
    meta.write_text(json.dumps(summary, indent=2))
    return summary


def _close_all():
    if not database.is_closed():
        database.close()
    if hasattr(database.obj, "close_all"):
        database.obj.close_all()


# ---------------------------------------------------------------------------
# In-process timing
# ---------------------------------------------------------------------------

class QueryCounter:
    """Counts every query peewee sends (wraps the database's execute_sql)."""

    def __init__(self):
        self.count = 0
        self.db = database.obj
        self.original = self.db.execute_sql

        def counted(sql, params=None, *args, **kwargs):
            self.count += 1
            return self.original(sql, params, *args, **kwargs)

        self.db.execute_sql = counted

    def close(self):
        self.db.execute_sql = self.original


class RawDriver:
    """The floor's connection: sqlite3 or psycopg, opened once, kept open."""

    def __init__(self, url):
        self.sqlite = url.startswith("sqlite:///")
        if self.sqlite:
            self.conn = sqlite3.connect(url[len("sqlite:///"):])
            self.conn.execute("PRAGMA cache_size = -64000")
        else:
            import psycopg
            self.conn = psycopg.connect(url, autocommit=True)

    def run(self, floor, context):
        """Runs the floor's statements; returns the rows of the last one."""
        rows = None
        for sql, params in floor.statements(self.sqlite, context):
            if not self.sqlite:
                sql = sql.replace("?", "%s")
            cursor = self.conn.execute(sql, params)
            rows = cursor.fetchall()
        return rows

    def close(self):
        self.conn.close()


def percentile(values, pct):
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def sign_in(client, email, password=generate.BENCH_PASSWORD):
    page = client.get("/auth/sign-in").get_data(as_text=True)
    token = CSRF_RE.search(page).group(1)
    response = client.post("/auth/sign-in", data={"email": email, "password": password,
                                                  "csrf_token": token})
    if response.status_code != 302:
        raise RuntimeError(f"sign-in of {email} failed: {response.status_code}")


def measure_screens(backend, size, summary, runs):
    """Times every screen of bench/screens.py; returns result rows."""
    from bench.wsgi import create_bench_app
    url = database_url(backend, size)
    app = create_bench_app({"DATABASE_URL": url, "SECRET_KEY": SECRET,
                            "DATA_DIR": str(OUT / "data"), "TESTING": False})
    context = screen_context(app, summary)
    clients = {}
    for role, email in context["emails"].items():
        clients[role] = app.test_client()
        sign_in(clients[role], email)
    raw = RawDriver(url)
    results = []
    counter = QueryCounter()
    try:
        for screen in SCREENS:
            results.append(time_screen(app, screen, clients, raw, counter, context, runs))
            row = results[-1]
            if row["status"] == "ok":
                print(f"[bench] {backend:8} {screen.name:42} {row['median']:8.2f} ms "
                      f"floor {row['floor_median']:7.2f} ms  x{row['ratio']:.1f}  "
                      f"{row['queries']} queries", flush=True)
            else:
                print(f"[bench] {backend:8} {screen.name:42} {row['status']}", flush=True)
    finally:
        counter.close()
        raw.close()
        _close_all()
    return results, context


def screen_context(app, summary):
    """Who signs in and which rows the screens look at (the busiest program, etc.)."""
    with app.app_context(), database.connection_context():
        p0 = summary["first_program_id"]
        busiest = p0  # hub 1 receives a third of the hubs' share (bench/generate.py)
        u0 = summary["first_user_id"]
        gk = u0  # slot 0 of program index 0
        provider = u0 + generate.PROVIDER_SLOTS[0]
        # A client and a closed referral the busiest program may still see (valid ROI).
        consented = models.Referral.roi.in_(models.Roi.select(models.Roi.id).where(
            models.Roi.expires_on >= models.local_today()))
        subject = models.Subject.get_by_id(
            models.Referral.select(models.Referral.subject).where(
                (models.Referral.to_program == busiest) & consented)
            .order_by(models.Referral.id.desc()).first().subject_id)
        referral = (models.Referral.select().where(
            (models.Referral.to_program == busiest)
            & (models.Referral.state == models.REFERRAL_CLOSED) & consented)
            .order_by(models.Referral.id.desc()).first())
        program = models.Program.get_by_id(busiest)
        county = models.ProgramCounty.select().where(
            models.ProgramCounty.program == busiest).first().county_id
        service = models.ProgramService.select().where(
            models.ProgramService.program == busiest).first().service_id
        # The last row of page 999 (Any Status): "Next" from there shows page 1000.
        R = models.Referral
        queue_last = (R.select(R.id, R.sent_at).where(
            (R.to_program == busiest) & R.state.not_in(("pending", "discarded")))
            .order_by(R.sent_at.desc(), R.id.desc()).offset(999 * 25 - 1).first())
        sent_last = (R.select(R.id, R.created_at).where(
            (R.from_program == busiest) & (R.state != "discarded"))
            .order_by(R.created_at.desc(), R.id.desc()).offset(999 * 25 - 1).first())
        return {
            "queue_cursor": f"{queue_last.sent_at.isoformat()}_{queue_last.id}",
            "queue_at": str(queue_last.sent_at), "queue_id": queue_last.id,
            "sent_cursor": f"{sent_last.created_at.isoformat()}_{sent_last.id}",
            "sent_at": str(sent_last.created_at), "sent_id": sent_last.id,
            "program_id": busiest, "program_name": program.name, "agency_id": program.agency_id,
            "gatekeeper_id": gk, "provider_id": provider,
            "emails": {"gatekeeper": generate.bench_email(0, 0),
                       "provider": generate.bench_email(0, generate.PROVIDER_SLOTS[0])},
            "subject_id": subject.id, "last_norm": subject.last_norm,
            "first_norm": subject.first_norm, "last_name": subject.last_name,
            "last_upper": _upper(subject.last_norm), "first_upper": _upper(subject.first_norm),
            "first_name": subject.first_name, "dob": subject.dob.isoformat(),
            "referral_id": referral.id, "county_id": county, "service_id": service,
            "today": models.local_today().isoformat(),
            "year_ago": (models.local_today() - dt.timedelta(days=365)).isoformat(),
            "page_size": 25,
        }


def _upper(prefix):
    """The end of a prefix range (as the subject search builds it)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def time_screen(app, screen, clients, raw, counter, context, runs):
    row = {"name": screen.name, "budget": screen.budget, "group": screen.group}
    url = screen.resolve(app, context)
    if url is None:
        row["status"] = "not built yet"
        return row
    client = clients[screen.user]
    first = client.get(url)
    if first.status_code != 200:
        row["status"] = f"HTTP {first.status_code}"
        return row
    for _ in range(WARMUP - 1):
        client.get(url).get_data()
        if screen.floor:
            raw.run(screen.floor, context)
    times, floors = [], []
    counter.count = 0
    client.get(url).get_data()
    row["queries"] = counter.count
    for _ in range(runs):
        t0 = time.perf_counter()
        response = client.get(url)
        response.get_data()
        times.append((time.perf_counter() - t0) * 1000)
        if screen.floor:
            t0 = time.perf_counter()
            raw.run(screen.floor, context)
            floors.append((time.perf_counter() - t0) * 1000)
    row.update(status="ok", url=url, median=statistics.median(times), p95=percentile(times, 95),
               bytes=len(response.get_data()))
    if floors:
        row.update(floor_median=statistics.median(floors), floor_p95=percentile(floors, 95))
        row["ratio"] = row["median"] / row["floor_median"] if row["floor_median"] else 0
        row["floor_rows"] = len(raw.run(screen.floor, context) or [])
    else:
        row.update(floor_median=0.0, floor_p95=0.0, ratio=0.0)
    return row


# ---------------------------------------------------------------------------
# Load run: gunicorn with 2 workers, wrk with 16 connections for 15 s.
# ---------------------------------------------------------------------------

WRK_SCRIPT = HERE / "wrk_report.lua"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    try:
        text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def peak_rss_mb(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_run(backend, size, context, targets, seconds=15, connections=16):
    """{target name: wrk figures} plus the workers' peak RSS."""
    import requests
    if not shutil_which("wrk"):
        return {"error": "wrk is not installed (apt-get install wrk)"}
    port = free_port()
    env = dict(os.environ, BENCH_WSGI="1", SECRET_KEY=SECRET,
               DATABASE_URL=database_url(backend, size), DATA_DIR=str(OUT / "data"))
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "bench.wsgi:app"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(base + "/bench/hello", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        session = requests.Session()
        page = session.get(base + "/auth/sign-in").text
        token = CSRF_RE.search(page).group(1)
        session.post(base + "/auth/sign-in", data={
            "email": context["emails"]["gatekeeper"], "password": generate.BENCH_PASSWORD,
            "csrf_token": token}, allow_redirects=False)
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
        results = {}
        for name, path in targets:
            check = session.get(base + path, allow_redirects=False)
            if check.status_code != 200:
                results[name] = {"error": f"HTTP {check.status_code} on {path}"}
                continue
            out = subprocess.run(
                ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s",
                 str(WRK_SCRIPT), "-H", f"Cookie: {cookie}", base + path],
                capture_output=True, text=True, check=False)
            found = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
            results[name] = json.loads(found.group(1)) if found else {"error": out.stdout[-500:]}
            results[name]["path"] = path
        workers = children(server.pid)
        results["worker_peak_rss_mb"] = [round(peak_rss_mb(p) or 0, 1) for p in workers]
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def shutil_which(name):
    import shutil
    return shutil.which(name)


def worker_memory(backend, size, seconds=20):
    """Peak RSS (MB) of `flask run-worker --once` and of the worker running `seconds`."""
    env = dict(os.environ, SECRET_KEY=SECRET, DATABASE_URL=database_url(backend, size),
               DATA_DIR=str(OUT / "data"), WORKER_POLL_SECONDS="2")
    flask = str(ROOT / ".venv/bin/flask")
    code = (
        "import resource, subprocess, sys, signal\n"
        "p = subprocess.Popen(sys.argv[1:])\n"
        "try:\n"
        f"    p.wait(timeout={seconds})\n"
        "except subprocess.TimeoutExpired:\n"
        "    p.send_signal(signal.SIGINT); p.wait(timeout=30)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    figures = {}
    for label, args in (("once", ["run-worker", "--once"]), ("running", ["run-worker"])):
        out = subprocess.run([sys.executable, "-c", code, flask, "--app", "app", *args],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        lines = out.stdout.strip().splitlines()
        try:
            figures[label] = round(int(lines[-1]) / 1024, 1)
        except (IndexError, ValueError):
            figures[label] = None
            figures[f"{label}_error"] = (out.stderr or out.stdout)[-300:]
    return figures


# ---------------------------------------------------------------------------
# Machine and report
# ---------------------------------------------------------------------------

def machine():
    mem = pathlib.Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    cpu = ""
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    pg = ""
    try:
        import psycopg
        with psycopg.connect(f"{PG_BASE}/postgres") as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # the report says so
        pg = f"unavailable ({exc.__class__.__name__})"
    import flask_admin
    import peewee
    return {"nproc": os.cpu_count(), "memory_gb": round(int(mem) / 1024 / 1024, 1), "cpu": cpu,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "postgresql": pg, "peewee": peewee.__version__,
            "flask_admin": flask_admin.__version__, "kernel": platform.release(),
            "load_average": os.getloadavg()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=os.environ.get("BENCH_SIZE", "statewide"),
                        choices=("statewide", "quick"))
    parser.add_argument("--backends", default=os.environ.get("BENCH_BACKENDS", "sqlite,postgres"))
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "30")))
    parser.add_argument("--no-load", action="store_true", help="skip gunicorn + wrk")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "size": args.size, "runs": args.runs, "machine": machine(), "backends": {}}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        entry = report["backends"].setdefault(backend, {})
        try:
            summary = ensure_database(backend, args.size, args.regenerate)
        except Exception as exc:
            entry["error"] = f"{exc.__class__.__name__}: {exc}"
            print(f"[bench] {backend}: {entry['error']}", flush=True)
            continue
        entry["summary"] = summary
        rows, context = measure_screens(backend, args.size, summary, args.runs)
        entry["screens"], entry["context"] = rows, {k: v for k, v in context.items() if k != "emails"}
        if not args.no_load:
            from bench.screens import load_targets
            print(f"[bench] {backend}: load run (gunicorn 2 workers, wrk 16 connections, 15 s)",
                  flush=True)
            entry["load"] = load_run(backend, args.size, context, load_targets(rows))
            print(f"[bench] {backend}: {json.dumps(entry['load'])}", flush=True)
            entry["worker"] = worker_memory(backend, args.size)
            print(f"[bench] {backend}: worker peak RSS {entry['worker']}", flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    OUT.mkdir(exist_ok=True)
    (OUT / f"results-{args.size}.json").write_text(json.dumps(report, indent=2, default=str))
    from bench.report import write_results
    write_results(report, pathlib.Path(args.output))
    print(f"[bench] wrote {args.output} in {report['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
