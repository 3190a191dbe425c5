"""Load and soak run (issue 7, items 14 and 17): `make soak` or `python -m bench.soak`.

1. A fresh SQLite database under bench/out/soak/: `init-db`, `seed-demo`, then a few hundred
   clients with signed ROIs across the demo programs and some referrals already moving,
   made with the workflow functions (as the screens would).
2. gunicorn (2 workers, 4 threads each) on a free port of 127.0.0.1 and the worker
   (`flask --app app run-worker`), both on that database.
3. locust, headless, `bench/locustfile.py`: SOAK_USERS simulated staff (default 50) for
   SOAK_MINUTES (default 10), each signed in once, doing the mix of the locustfile through
   the real screens (forms with their CSRF tokens).
4. Half-way through, the backup drill (item 17): `backup` under the load, `restore` into a
   fresh database file, `PRAGMA integrity_check`, row counts and checksums of every table
   compared between the backup and the restored copy, and the app started on the copy.
5. The verdict: error rate < 0.1%, no "database is locked" in the logs, p50/p95 of reads
   and writes, and the audit check (one audit row per client-data read the users made).
   The figures go to the "Soak" section of bench/RESULTS.md; a missed threshold exits 1.
"""

import datetime as dt
import hashlib
import json
import os
import pathlib
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "soak"
RESULTS = ROOT / "bench" / "RESULTS.md"
VENV_BIN = ROOT / ".venv" / "bin"
SECTION = "## Soak (issue 7, item 14 and 17)"

MAX_ERROR_RATE = 0.001  # below 0.1%
# gunicorn closes a kept-alive connection after this many idle seconds (its default is 2). It
# must outlast the users' 1-4 s pauses: a GET sent on a connection the server is closing at
# that instant is reset (first full run: 12 of 20,549 requests, all GETs after a pause).
# Browsers repeat such a request by themselves; python-requests under locust does not.
KEEP_ALIVE = 10
KINDS = {"read": "reads (GET)", "write": "writes (POST)",
         "sign-in": "sign-in (POST; argon2id and 0.35 s padding, once per user)"}
# Reads of client data by the audit action each must write (the locustfile counts them):
# pages of one client write one row per page.
ONE_CLIENT_PAGES = ("view_subject", "view_referral_chart", "view_referral", "view_roi")
# The subject search writes one row per search, or (issue 7 item 15) one per search plus one
# per client shown; either is accepted, and the report says which was found.
SEARCH = "search_subjects"
# Pages that show client data and are audited once item 15 reaches them: forms (one row per
# page) and lists (one row per client shown). Checked when the table has such rows.
FORM_PAGES = ("view_referral_form", "view_roi_form")
LIST_PAGES = ("list_incoming", "list_sent")


def env_int(name, default):
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message):
    print(f"[soak {dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def app_env(database, data_dir, secret, base_url=""):
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{database}", DATA_DIR=str(data_dir),
               SECRET_KEY=secret, FLASK_DEBUG="0", WORKER_POLL_SECONDS="5")
    if base_url:
        env["BASE_URL"] = base_url
    for name in ("MAIL_SERVER", "SMS_BACKEND", "TEST_DATABASE_URL", "UPLOAD_DIR"):
        env.pop(name, None)  # emails and texts stay in the outbox; uploads under DATA_DIR
    return env


def flask(env, *args, check=True, timeout=600):
    return subprocess.run([str(VENV_BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=env,
                          check=check, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# 1. The data: the demo network plus a few hundred clients.
# ---------------------------------------------------------------------------

def populate(subjects, seed=7):
    """Clients of every demo program with a signed ROI naming the other programs; one in
    three already referred (sent, assigned or with a status). Inside an app context."""
    import models
    import referral_fields
    import workflow
    from bench.names import FIRST_NAMES, LAST_NAMES, STREETS, TOWNS
    from models import County, Membership, Program, Referral, User

    rng = random.Random(seed)
    programs = list(Program.with_valid_mou().order_by(Program.id))
    staff = {}
    for program in programs:
        members = list(Membership.select(Membership, User).join(User)
                       .where(Membership.program == program))
        gatekeeper = next(m.user for m in members if m.role == "gatekeeper")
        providers = [m.user for m in members if m.role == "provider"] or [gatekeeper]
        staff[program.id] = (gatekeeper, providers)
    for user in User.select().where(~User.is_admin):  # the User MOU is signed once a year
        if user.current_user_mou(models.local_today()) is None:
            workflow.sign_user_mou(workflow.Actor(user, ip="127.0.0.1"), user.name)
    counties = {p.id: list(County.select().join(models.ProgramCounty).where(
        models.ProgramCounty.program == p)) for p in programs}
    towns = {county: (town, zip_code) for town, county, zip_code in TOWNS}
    info_types = ["contact", "demographics", "insurance", "medical", "housing", "education"]
    made = {"subjects": 0, "rois": 0, "referrals": 0}
    for i in range(subjects):
        home = programs[i % len(programs)]
        gatekeeper, _ = staff[home.id]
        actor = workflow.Actor(gatekeeper, home, "127.0.0.1")
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        values = {"first_name": first, "last_name": last,
                  "dob": dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(365 * 60)),
                  "gender": rng.choice(models.GENDERS), "race": "White",
                  "military": "No military service",
                  "address": f"{rng.randrange(1, 9999)} {rng.choice(STREETS)}",
                  "phone": f"(406) 555-{rng.randrange(10000):04d}"}
        county = rng.choice(counties[home.id])
        town, zip_code = towns.get(county.name, (county.name, "59601"))
        values.update(city=town, zip_code=zip_code, county=county.id)
        try:
            subject, how = workflow.create_subject(actor, values, confirm_new=True)
        except workflow.RuleViolation as exc:
            log(f"client {first} {last} not added: {exc.message}")
            continue
        made["subjects"] += how == "created"
        others = [p.id for p in programs if p.id != home.id]
        roi = workflow.start_roi(actor, subject, others)
        workflow.complete_roi(actor, roi, info_types, "client")
        workflow.sign_roi_esign(actor, roi, subject.full_name, True)
        made["rois"] += 1
        if i % 3:
            continue
        target = Program.get_by_id(rng.choice(others))
        roi = models.Roi.get_by_id(roi.id)
        personal = referral_fields.personal_from_subject(subject, roi)
        answers = {str(q.id): "Soak set-up" for _s, questions in
                   referral_fields.offered_sections(roi, target) for q in questions
                   if q.required and q.kind == "text"}
        try:
            draft = workflow.save_referral_draft(actor, subject, target, personal, answers)
            workflow.send_referral(actor, draft, draft.version, True)
        except workflow.RuleViolation as exc:
            log(f"set-up referral not sent: {exc.message}")
            continue
        made["referrals"] += 1
        if i % 2:
            continue
        gatekeeper_b, providers_b = staff[target.id]
        receiving = workflow.Actor(gatekeeper_b, target, "127.0.0.1")
        referral = Referral.get_by_id(draft.id)
        provider = rng.choice(providers_b)
        workflow.assign_referral(receiving, referral, provider.id, referral.version)
        if i % 4 == 0:
            referral = Referral.get_by_id(draft.id)
            workflow.set_referral_status(workflow.Actor(provider, target, "127.0.0.1"), referral,
                                         "Enrolled in Services", referral.version)
    return made


def prepare(database, data_dir, secret, subjects):
    if OUT.exists():
        shutil.rmtree(OUT)
    data_dir.mkdir(parents=True)
    env = app_env(database, data_dir, secret)
    flask(env, "init-db")
    flask(env, "seed-demo")
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "DATA_DIR", "SECRET_KEY")}
    os.environ.update(DATABASE_URL=env["DATABASE_URL"], DATA_DIR=env["DATA_DIR"], SECRET_KEY=secret)
    try:
        from app import create_app
        from models import database as db
        app = create_app({"WORKER": True})
        with app.app_context(), db.connection_context():
            made = populate(subjects)
        db.close()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return made


# ---------------------------------------------------------------------------
# 2. The servers.
# ---------------------------------------------------------------------------

def start_gunicorn(env, port, log_path, access_path, workers=2, threads=4):
    handle = open(log_path, "a")
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "--workers", str(workers), "--threads", str(threads),
         "--bind", f"127.0.0.1:{port}", "--timeout", "60", "--keep-alive", str(KEEP_ALIVE),
         "--access-logfile", str(access_path),
         "--access-logformat", '%(s)s %(m)s %(U)s %(M)s', "--error-logfile", "-",
         "--capture-output", "app:create_app()"],
        cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}; see {log_path}")
        try:
            if requests.get(base + "/auth/sign-in", timeout=2).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"gunicorn did not answer on {base}; see {log_path}")


def stop(proc, timeout=20):
    """End a process we started (and its children: its own process group)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---------------------------------------------------------------------------
# 4. The backup drill (item 17).
# ---------------------------------------------------------------------------

def table_digest(path):
    """{table: (rows, sha256 of every row in rowid order)} of a SQLite file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        digest = {}
        for table in tables:
            h = hashlib.sha256()
            rows = 0
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                h.update(repr(row).encode())
                rows += 1
            digest[table] = (rows, h.hexdigest())
        return digest
    finally:
        conn.close()


def backup_drill(env, secret):
    """backup under load, restore into a fresh file, integrity check, counts and checksums
    equal, the app answers on the restored copy."""
    drill = {"ok": False}
    backup = OUT / "backup.db"
    restored = OUT / "restored.db"
    started = time.monotonic()
    result = flask(env, "backup", str(backup), check=False)
    drill["backup_seconds"] = round(time.monotonic() - started, 2)
    if result.returncode:
        drill["error"] = f"backup failed: {(result.stderr or result.stdout).strip()[-300:]}"
        return drill
    restored_data = OUT / "restored-data"
    restored_data.mkdir(exist_ok=True)
    restored_env = app_env(restored, restored_data, secret)
    started = time.monotonic()
    result = flask(restored_env, "restore", str(backup), check=False)
    drill["restore_seconds"] = round(time.monotonic() - started, 2)
    if result.returncode:
        drill["error"] = f"restore failed: {(result.stderr or result.stdout).strip()[-300:]}"
        return drill
    conn = sqlite3.connect(restored)
    drill["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    source, copy = table_digest(backup), table_digest(restored)
    drill["tables"] = len(source)
    drill["rows"] = sum(rows for rows, _ in source.values())
    drill["audit_rows"] = source.get("audit_event", (0, ""))[0]
    drill["different"] = sorted(t for t in set(source) | set(copy) if source.get(t) != copy.get(t))
    proc = None
    try:
        proc, base = start_gunicorn(restored_env, free_port(), OUT / "restored-gunicorn.log",
                                    OUT / "restored-access.log", workers=1, threads=1)
        drill["restored_sign_in_status"] = requests.get(base + "/auth/sign-in", timeout=10).status_code
        drill["restored_directory_status"] = requests.get(base + "/directory/", timeout=10).status_code
    except (RuntimeError, requests.RequestException) as exc:
        drill["error"] = f"the app did not start on the restored copy: {exc}"
        return drill
    finally:
        stop(proc)
    drill["ok"] = (drill["integrity"] == "ok" and not drill["different"]
                   and drill["restored_sign_in_status"] == 200)
    return drill


# ---------------------------------------------------------------------------
# 5. The figures.
# ---------------------------------------------------------------------------

def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def count_in(paths, needle):
    total = 0
    for path in paths:
        if path.exists():
            total += path.read_text(errors="replace").count(needle)
    return total


def audit_counts(database, since_id):
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT action, outcome, count(*) FROM audit_event WHERE id > ? "
                            "GROUP BY action, outcome", (since_id,)).fetchall()
    finally:
        conn.close()
    counts = {}
    for action, outcome, n in rows:
        counts.setdefault(action, {})[outcome] = n
    return counts


def audit_check(audit, reads, shown):
    """{action: {expected, audit, ok, how}}: audit rows written during the run against the
    client-data reads the users made (and the clients those pages showed)."""
    def rows(action):
        return sum(audit.get(action, {}).values())

    check = {}
    for action in ONE_CLIENT_PAGES:
        n = reads.get(action, 0)
        check[action] = {"expected": n, "audit": rows(action), "ok": n > 0 and rows(action) == n,
                         "how": "one row per page"}
    searches, clients = reads.get(SEARCH, 0), shown.get(SEARCH, 0)
    per_client = clients > 0 and rows(SEARCH) == searches + clients
    check[SEARCH] = {
        "expected": searches + clients if per_client else searches, "audit": rows(SEARCH),
        "ok": searches > 0 and (rows(SEARCH) == searches or per_client),
        "how": (f"one row per search and one per client shown ({searches:,} searches, "
                f"{clients:,} clients)" if per_client else "one row per search")}
    for action in FORM_PAGES + LIST_PAGES:
        n = reads.get(action, 0) if action in FORM_PAGES else shown.get(action, 0)
        how = "one row per page" if action in FORM_PAGES else "one row per client shown"
        if rows(action) == 0:
            how = f"shows client data ({n:,} {'pages' if action in FORM_PAGES else 'clients'}), " \
                  "writes no audit row yet (item 15)"
        check[action] = {"expected": n, "audit": rows(action), "ok": rows(action) in (0, n),
                         "how": how}
    return check


def machine():
    mem_kb = int(pathlib.Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {"nproc": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "load_average": [round(x, 1) for x in os.getloadavg()]}


def access_statuses(path):
    statuses = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            code = line.split(" ", 1)[0]
            statuses[code] = statuses.get(code, 0) + 1
    return statuses


def verdict(report):
    """[(check, passed, detail)]"""
    stats = report["locust"]
    checks = [
        ("error rate < 0.1%", stats["requests"] > 0 and stats["error_rate"] < MAX_ERROR_RATE,
         f"{stats['failures']} of {stats['requests']:,} ({stats['error_rate'] * 100:.3f}%)"),
        ("no \"database is locked\"", report["locked"] == 0, f"{report['locked']} in the logs"),
        ("no 500 in the access log", report["status_5xx"] == 0, f"{report['status_5xx']} answers 5xx"),
        ("audit rows = client-data reads", report["audit_ok"],
         "; ".join(f"{a}: {r['expected']:,} expected / {r['audit']:,} rows"
                   for a, r in report["audit"].items() if r["audit"] or not r["ok"])),
        ("backup drill", report["drill"].get("ok", False), report["drill"].get("error", "")
         or f"integrity {report['drill'].get('integrity')}, "
            f"{len(report['drill'].get('different', []))} tables differ"),
    ]
    return checks


def fmt_ms(value):
    return "–" if value is None else f"{value:,.0f}"


def write_section(report, path=RESULTS):
    m, s, d = report["machine"], report["locust"], report["drill"]
    lines = [
        SECTION, "",
        "Written by `make soak` (`python -m bench.soak`): a fresh SQLite database (demo network "
        f"plus {report['data']['subjects']} clients with signed ROIs, {report['data']['referrals']} "
        "referrals under way), gunicorn with 2 workers × 4 threads (`--keep-alive 10`, see below) "
        "and the worker on 127.0.0.1, "
        f"locust headless with {report['users']} simulated staff for {report['minutes']} min "
        "(spawn 5/s). Each signs in once (8 demo accounts across gatekeepers and providers of 5 "
        "programs, acting program chosen on the screen) and then, with 1–4 s between steps: "
        "searches clients, opens profiles, referral charts, the queue and referral pages, starts "
        "an ROI and uploads its signed scan (Upload), fills and sends referrals, assigns, sets "
        "statuses and adds notes — every write through the real forms with their CSRF tokens. "
        "Times in milliseconds as locust saw them (client side, same 2 CPUs as the server). "
        "Keep-alive: with gunicorn's default of 2 s, a GET sent after a user's pause on a "
        "connection the server was closing at that instant was reset (12 of 20,549 requests in "
        "the first run, all GETs after a pause, none reaching the application); browsers repeat "
        "such a request by themselves, python-requests does not, so the soak keeps connections "
        "10 s, longer than the pauses (behind a proxy: its upstream idle timeout below gunicorn's).",
        "",
        f"- Date: {report['date']}",
        f"- Machine: {m['nproc']} CPUs, {m['memory_gb']} GB memory, load average "
        f"{', '.join(str(x) for x in m['load_average'])} at start and "
        f"{', '.join(str(x) for x in report['machine_end']['load_average'])} at the end "
        "(shared with other sessions)",
        "",
        "| | requests | failures | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, label in KINDS.items():
        k = s["by_kind"][kind]
        lines.append(f"| {label} | {k['requests']:,} | {k['failures']} | {fmt_ms(k['p50'])} | "
                     f"{fmt_ms(k['p95'])} | {fmt_ms(k['p99'])} | {fmt_ms(k['max'])} |")
    lines += [
        f"| **all** | **{s['requests']:,}** | **{s['failures']}** | {fmt_ms(s['p50'])} | "
        f"{fmt_ms(s['p95'])} | {fmt_ms(s['p99'])} | {fmt_ms(s['max'])} |",
        "",
        f"Throughput {s['rps']:.1f} requests/s. Steps (requests, failures, p50, p95):",
        "",
    ]
    lines.append("| step | kind | requests | failures | p50 | p95 |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for name, row in sorted(s["by_name"].items(), key=lambda kv: (kv[1]["kind"], kv[0])):
        lines.append(f"| {name} | {row['kind']} | {row['requests']:,} | {row['failures']} | "
                     f"{fmt_ms(row['p50'])} | {fmt_ms(row['p95'])} |")
    if s["outcomes"]:
        lines += ["", "Business answers counted as success (a form refused with a message, "
                  "as a person would see it): " + ", ".join(
                      f"{k} {v}" for k, v in sorted(s["outcomes"].items())) + "."]
    if s["errors"]:
        lines += ["", "Failures: " + "; ".join(f"{k} ×{v}" for k, v in s["errors"].items())]
    lines += [
        "",
        "Audit check (rows written during the run, by action, against the reads the simulated "
        "users made and saw answered):",
        "",
        "| action | expected rows | audit rows | equal | rule |",
        "|---|---:|---:|:---:|---|",
    ]
    for action, row in report["audit"].items():
        equal = "–" if row["audit"] == 0 and row["ok"] else "yes" if row["ok"] else "**no**"
        lines.append(f"| `{action}` | {row['expected']:,} | {row['audit']:,} | {equal} | "
                     f"{row['how']} |")
    lines += [
        "",
        f"Backup drill at minute {d.get('at_minute', '?')} under the load: `backup` "
        f"{d.get('backup_seconds', '–')} s, `restore` into a fresh file {d.get('restore_seconds', '–')} s, "
        f"`PRAGMA integrity_check` {d.get('integrity', '–')}, {d.get('tables', '–')} tables / "
        f"{d.get('rows', 0):,} rows compared by count and SHA-256 of every row: "
        f"{'all equal' if not d.get('different') and 'tables' in d else 'different: ' + ', '.join(d.get('different', []))}; "
        f"the app on the restored copy answered {d.get('restored_sign_in_status', '–')} on "
        f"`/auth/sign-in` and {d.get('restored_directory_status', '–')} on `/directory/`."
        + (f" Error: {d['error']}" if d.get("error") else ""),
        "",
        "| check | result | |",
        "|---|:---:|---|",
    ]
    for name, passed, detail in verdict(report):
        lines.append(f"| {name} | {'pass' if passed else '**FAIL**'} | {detail} |")
    lines.append("")
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines)
    pattern = re.compile(r"^" + re.escape(SECTION) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text.rstrip("\n") + "\n")


def summarise_locust(raw):
    """From the locustfile's record: totals, read/write percentiles, per step."""
    samples = raw["samples"]  # [name, kind, ms, failed]
    total = len(samples)
    failures = sum(1 for *_x, failed in samples if failed)
    times = [ms for _n, _k, ms, _f in samples]

    def block(rows):
        ms = [r[2] for r in rows]
        return {"requests": len(rows), "failures": sum(1 for r in rows if r[3]),
                "p50": percentile(ms, 50), "p95": percentile(ms, 95),
                "p99": percentile(ms, 99), "max": max(ms) if ms else None}

    by_kind = {kind: block([r for r in samples if r[1] == kind]) for kind in KINDS}
    by_name = {}
    for name in sorted({r[0] for r in samples}):
        rows = [r for r in samples if r[0] == name]
        by_name[name] = dict(block(rows), kind=rows[0][1])
    return {"requests": total, "failures": failures,
            "error_rate": failures / total if total else 1.0,
            "p50": percentile(times, 50), "p95": percentile(times, 95),
            "p99": percentile(times, 99), "max": max(times) if times else None,
            "rps": total / raw["seconds"] if raw.get("seconds") else 0.0,
            "by_kind": by_kind, "by_name": by_name, "reads": raw["audited_reads"],
            "outcomes": raw.get("outcomes", {}), "errors": raw.get("errors", {})}


def main():
    minutes = env_int("SOAK_MINUTES", 10)
    users = env_int("SOAK_USERS", 50)
    subjects = env_int("SOAK_SUBJECTS", 400)
    database = OUT / "soak.db"
    data_dir = OUT / "data"
    secret = secrets.token_hex(32)
    report = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine(), "minutes": minutes, "users": users}
    log(f"preparing {database} ({subjects} clients)")
    started = time.monotonic()
    report["data"] = prepare(database, data_dir, secret, subjects)
    log(f"data ready in {time.monotonic() - started:.0f} s: {report['data']}")

    port = free_port()
    env = app_env(database, data_dir, secret, base_url=f"http://127.0.0.1:{port}")
    gunicorn_log, worker_log = OUT / "gunicorn.log", OUT / "worker.log"
    access_log = OUT / "access.log"
    server = worker = locust = None
    try:
        server, base = start_gunicorn(env, port, gunicorn_log, access_log)
        worker = subprocess.Popen([str(VENV_BIN / "flask"), "--app", "app", "run-worker"],
                                  cwd=ROOT, env=env, stdout=open(worker_log, "a"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        conn = sqlite3.connect(database)
        audit_mark = conn.execute("SELECT coalesce(max(id), 0) FROM audit_event").fetchone()[0]
        conn.close()
        record = OUT / "locust-record.json"
        log(f"locust: {users} users for {minutes} min against {base}")
        locust_env = dict(os.environ, SOAK_RECORD=str(record), SOAK_SEED=str(port))
        locust = subprocess.Popen(
            [str(VENV_BIN / "locust"), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
             "-u", str(users), "-r", "5", "-t", f"{minutes}m", "--host", base,
             "--stop-timeout", "30", "--only-summary", "--csv", str(OUT / "locust"),
             "--exit-code-on-error", "0"],
            cwd=ROOT, env=locust_env, stdout=open(OUT / "locust.log", "a"),
            stderr=subprocess.STDOUT, start_new_session=True)
        half = minutes * 30
        time.sleep(half)
        log("backup drill under load")
        drill = backup_drill(env, secret)
        drill["at_minute"] = round(half / 60, 1)
        report["drill"] = drill
        log(f"drill: {json.dumps(drill)}")
        try:
            locust.wait(timeout=minutes * 60 - half + 180)
        except subprocess.TimeoutExpired:
            log("locust did not stop by itself; stopping it")
            stop(locust)
        report["machine_end"] = machine()
    finally:
        stop(locust)
        stop(worker)
        stop(server)

    if not record.exists():
        log(f"no record from locust; see {OUT / 'locust.log'}")
        return 1
    raw = json.loads(record.read_text())
    report["locust"] = summarise_locust(raw)
    logs = [gunicorn_log, worker_log, OUT / "locust.log"]
    report["locked"] = count_in(logs, "database is locked")
    statuses = access_statuses(access_log)
    report["status_5xx"] = sum(n for code, n in statuses.items() if code.startswith("5"))
    report["statuses"] = statuses
    report["audit"] = audit_check(audit_counts(database, audit_mark), report["locust"]["reads"],
                                  raw.get("shown", {}))
    report["audit_ok"] = all(r["ok"] for r in report["audit"].values())
    (OUT / "report.json").write_text(json.dumps(report, indent=2, default=str))
    write_section(report)
    checks = verdict(report)
    for name, passed, detail in checks:
        log(f"{'pass' if passed else 'FAIL'}  {name}: {detail}")
    s = report["locust"]
    log(f"{s['requests']:,} requests, reads p50/p95 {fmt_ms(s['by_kind']['read']['p50'])}/"
        f"{fmt_ms(s['by_kind']['read']['p95'])} ms, writes p50/p95 "
        f"{fmt_ms(s['by_kind']['write']['p50'])}/{fmt_ms(s['by_kind']['write']['p95'])} ms; "
        f"section written to {RESULTS.relative_to(ROOT)}")
    return 0 if all(passed for _n, passed, _d in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
