"""A statewide network, generated in bulk (issue 6).

`generate_scale(programs, subjects, referrals, seed, progress)` fills a migrated database
with a network of the requested size in one pass, SQL-side: the small tables (agencies,
programs, users, memberships, agreements) are inserted from Python in batches, the big ones
(subjects, ROIs, referrals, their history and notes) by `INSERT ... SELECT` over a row
series (a recursive CTE on SQLite, generate_series on PostgreSQL), so no row crosses the
driver. Values come from an integer hash of the row number and the seed: the same seed
gives the same network on both backends.

Shape (numbers for the statewide size; they scale with the arguments):
- 14 regions and 56 counties from data/, ~700 agencies, 2,000 programs with Agency MOUs
  (one in ten expired), 5 users per program (2 gatekeepers, 3 providers) with User MOUs.
- The first programs are hubs (one per 400 programs, at least one): they receive 10% of
  the referrals and are the home program of 10% of the clients (so they send as much),
  the first hub a third of each share.
- Clients created over three years, each with a signed ROI naming their home program
  (plus every program they were referred to) and links to those programs.
- Referrals over three years from the client's home program: recent ones mostly open
  (pending, sent, assigned), older ones mostly closed (the 13 statuses), declined or
  withdrawn; sent_at <= acknowledged_at = assigned_at <= outcome_at = closed_at <= now.
- History rows for every move, a call-log note on one referral in ten.
"""

import datetime as dt
import random
import time

import models
from bench.names import AGENCY_KINDS, FIRST_NAMES, LAST_NAMES, STREETS, TOWNS
from models import database

BENCH_PASSWORD = "Bench-Password-42!"
BENCH_DOMAIN = "bench.example.org"
USERS_PER_PROGRAM = 5  # slots 0-1 gatekeepers, 2-4 providers
GATEKEEPER_SLOTS = (0, 1)
PROVIDER_SLOTS = (2, 3, 4)
AGENCIES_PER_PROGRAM = 0.35  # ~700 agencies for 2,000 programs
HUB_EVERY = 400  # one hub program per 400 programs
HUB_SHARE = 10  # percent of referrals sent to hubs
YEARS = 3
RECENT_DAYS = 45
CHUNK = 500_000
PRIME = 2147483647  # 2^31 - 1: products of two residues fit in 63 bits

QUICK = {"programs": 50, "subjects": 5000, "referrals": 20000}
STATEWIDE = {"programs": 2000, "subjects": 1_000_000, "referrals": 3_000_000}

# State mix per 1000 referrals: (state, old, recent). Old = created > RECENT_DAYS ago.
STATE_MIX = (
    (models.REFERRAL_PENDING, 15, 100),
    (models.REFERRAL_SENT, 20, 250),
    (models.REFERRAL_ASSIGNED, 100, 350),
    (models.REFERRAL_CLOSED, 670, 150),
    (models.REFERRAL_DECLINED, 100, 80),
    (models.REFERRAL_WITHDRAWN, 95, 70),
)
CLOSING_STATUSES = [s for s in models.STATUSES if s not in models.OPEN_STATUSES]
OPEN_STATUSES = [s for s in models.STATUSES if s in models.OPEN_STATUSES]
# Weighted: most closed referrals end in "Closed- Successful completion".
CLOSED_STATUS_WEIGHTS = [("Closed- Successful completion", 6)] + [
    (s, 1) for s in CLOSING_STATUSES if s != "Closed- Successful completion"]
DECLINE_REASONS = ("Not eligible for our services", "Client lives outside our service area",
                   "Program is at capacity", "Duplicate referral")
WITHDRAW_REASONS = ("Client no longer interested", "Client found services elsewhere",
                    "Referral sent to the wrong program")
NOTE_TEXTS = ("Left a voicemail", "Spoke with client, intake scheduled",
              "Appointment confirmed for next week", "Client did not answer; will try again")
GENDER_WEIGHTS = [("Female", 48), ("Male", 47), ("Non-binary", 2), ("Transgender woman", 1),
                  ("Transgender man", 1), ("Prefers not to say", 1)]
RACE_WEIGHTS = [("White", 80), ("American Indian or Alaska Native", 9),
                ("More than one race", 4), ("Black or African American", 1), ("Asian", 1),
                ("Another race", 2), ("Prefers not to say", 3)]
MILITARY_WEIGHTS = [("No military service", 85), ("Veteran", 10), ("Active duty", 1),
                    ("National Guard or Reserve", 2), ("Military family member", 2)]
ROI_INFO_TYPES = "contact,demographics,insurance,medical,housing"


# ---------------------------------------------------------------------------
# SQL helpers: the two dialects differ only in these.
# ---------------------------------------------------------------------------

class Dialect:
    def __init__(self, sqlite, seed):
        self.sqlite = sqlite
        self.seed = seed

    def series(self, lo, hi):
        """(prefix, from_item) giving rows x = lo..hi."""
        if self.sqlite:
            return (f"WITH RECURSIVE seq(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM seq "
                    f"WHERE x < {hi}) ", "seq")
        return "", f"generate_series({lo}::bigint, {hi}::bigint) AS seq(x)"

    def ts(self, seconds):
        if self.sqlite:
            return f"datetime({seconds}, 'unixepoch')"
        return f"(to_timestamp({seconds}) AT TIME ZONE 'UTC')"

    def day(self, seconds):
        if self.sqlite:
            return f"date({seconds}, 'unixepoch')"
        return f"(to_timestamp({seconds}) AT TIME ZONE 'UTC')::date"

    def date_of(self, column):
        return f"date({column})" if self.sqlite else f"({column})::date"

    def least(self, a, b):
        return f"min({a}, {b})" if self.sqlite else f"LEAST({a}, {b})"

    def greatest(self, a, b):
        return f"max({a}, {b})" if self.sqlite else f"GREATEST({a}, {b})"

    def insert_ignore(self, table, columns, select, prefix=""):
        if self.sqlite:
            return f"{prefix}INSERT OR IGNORE INTO {table} ({columns}) {select}"
        return f"{prefix}INSERT INTO {table} ({columns}) {select} ON CONFLICT DO NOTHING"

    def h(self, expr, salt):
        """A pseudo-random integer in [0, PRIME) from an integer expression and the seed."""
        rng = random.Random(self.seed * 1_000_003 + salt)
        a, b = rng.randrange(1 << 20, 1 << 31), rng.randrange(PRIME)
        c, d = rng.randrange(1 << 20, 1 << 31), rng.randrange(PRIME)
        e = f"CAST({expr} AS BIGINT)"
        return f"((({e} * {a} + {b}) % {PRIME}) * (({e} * {c} + {d}) % {PRIME}) % {PRIME})"

    def pick(self, expr, salt, weighted):
        """A CASE choosing one of `weighted` [(sql_literal_value, weight)] by hash."""
        total = sum(w for _, w in weighted)
        roll = f"({self.h(expr, salt)} % {total})"
        whens = []
        upto = 0
        for value, weight in weighted:
            upto += weight
            whens.append(f"WHEN {roll} < {upto} THEN {value}")
        return "CASE " + " ".join(whens) + " END"


def q(text):
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


ROI_RENEWAL_DAYS = 500  # generated ROIs are signed within this many days before now


def _execute(sql):
    cursor = database.cursor()
    cursor.execute(sql)
    return cursor


def _scalar(sql):
    return _execute(sql).fetchone()[0]


def _next_id(model):
    return (_scalar(f'SELECT COALESCE(MAX(id), 0) FROM "{model._meta.table_name}"') or 0) + 1


def _insert_rows(model, rows, batch=500):
    for start in range(0, len(rows), batch):
        model.insert_many(rows[start:start + batch]).execute()


def _defaults(model, given, now_sql):
    """Column -> SQL for every NOT NULL column the caller left out (peewee defaults are
    Python-side, so INSERT ... SELECT must spell them)."""
    values = dict(given)
    for field in model._meta.sorted_fields:
        name = field.column_name
        if name in values or field.primary_key or field.null:
            continue
        default = field.default
        if default is None:
            raise ValueError(f"{model.__name__}.{name} needs a value")
        if callable(default):
            values[name] = now_sql
        elif isinstance(default, bool):
            values[name] = "true" if default else "false"
        elif isinstance(default, (int, float)):
            values[name] = str(default)
        else:
            values[name] = q(default)
    return values


def _insert_select(model, values, from_sql, prefix="", now_sql="CURRENT_TIMESTAMP", where=""):
    values = _defaults(model, values, now_sql)
    columns = ", ".join(values)
    select = ", ".join(values.values())
    _execute(f"{prefix}INSERT INTO {model._meta.table_name} ({columns}) SELECT {select} "
             f"FROM {from_sql} {where}")


# ---------------------------------------------------------------------------
# Secondary indexes are dropped during the load and rebuilt afterwards.
# ---------------------------------------------------------------------------

BIG_TABLES = (models.Subject, models.Roi, models.RoiProgram, models.SubjectLink,
              models.Referral, models.ReferralEvent, models.ReferralNote)
# Indexes kept during the load (none: the links are de-duplicated by GROUP BY).
KEEP_INDEXES = set()


def _drop_indexes(tables):
    dropped = []
    for model in tables:
        table = model._meta.table_name
        for index in database.get_indexes(table):
            if not index.sql or index.name.endswith("_pkey"):
                continue
            if (table, tuple(index.columns)) in KEEP_INDEXES:
                continue
            _execute(f'DROP INDEX "{index.name}"')
            dropped.append(index.sql)
    return dropped


def _create_indexes(statements, progress=None):
    """Runs the CREATE INDEX statements; returns {index name: seconds}."""
    seconds = {}
    for n, sql in enumerate(statements, 1):
        t0 = time.monotonic()
        _execute(sql)
        seconds[sql.split(" ON ")[0].split()[-1].strip('"')] = round(time.monotonic() - t0, 2)
        if progress:
            progress(n, len(statements))
    return seconds


# ---------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------

def generate_scale(programs=2000, subjects=1_000_000, referrals=3_000_000, seed=1,
                   progress=None):
    """Fill the (migrated) database with a network of the given size; returns a summary
    with row counts and seconds per step. `progress(label, fraction)` is told as it goes."""
    from cli import load_reference_data

    started, cpu_started = time.monotonic(), time.process_time()
    report = progress or (lambda label, fraction: None)
    sqlite = models.is_sqlite()
    sql = Dialect(sqlite, seed)
    rng = random.Random(seed)
    timings = {}

    load_reference_data()
    regions = list(models.Region.select().order_by(models.Region.id))
    counties = list(models.County.select().order_by(models.County.id))
    services = list(models.Service.select().order_by(models.Service.id))
    insurance = list(models.InsuranceType.select().order_by(models.InsuranceType.id))

    n_prog = max(2, programs)
    n_agency = max(1, round(n_prog * AGENCIES_PER_PROGRAM))
    n_hubs = max(1, n_prog // HUB_EVERY)
    n_subj = max(1, subjects)
    n_ref = max(0, referrals)
    now = models.utcnow().replace(microsecond=0)
    now_s = int(now.replace(tzinfo=dt.timezone.utc).timestamp())
    span = YEARS * 365 * 86400
    start_s = now_s - span
    now_sql = sql.ts(now_s)
    today = models.local_today()

    # Work units for the progress bar, roughly proportional to time spent.
    weights = {"network": 0.02, "subjects": 0.12, "rois": 0.10, "links": 0.12,
               "referrals": 0.24, "history": 0.22, "indexes": 0.15, "analyze": 0.03}
    done = {"w": 0.0}

    def step(label, fraction):
        report(label, min(1.0, done["w"] + weights[label] * fraction))

    def finish(label, t0):
        done["w"] += weights[label]
        timings[label] = round(time.monotonic() - t0, 2)
        report(label, min(1.0, done["w"]))

    if sqlite:
        database.execute_sql("PRAGMA foreign_keys = OFF")
        database.execute_sql("PRAGMA journal_mode = MEMORY")
        database.execute_sql("PRAGMA synchronous = OFF")
        database.execute_sql("PRAGMA cache_size = -400000")
        database.execute_sql("PRAGMA temp_store = FILE")  # sorts spill to files, faster
        database.execute_sql("PRAGMA threads = 2")  # index builds sort on two threads
    else:
        database.execute_sql("SET session_replication_role = replica")  # no FK triggers
        database.execute_sql("SET synchronous_commit = off")
        database.execute_sql("SET maintenance_work_mem = '512MB'")
        database.execute_sql("SET work_mem = '256MB'")

    # --- network: agencies, programs, users, agreements (Python, small) -------------
    t0 = time.monotonic()
    a0, p0 = _next_id(models.Agency), _next_id(models.Program)
    u0 = _next_id(models.User)
    s0, r0 = _next_id(models.Subject), _next_id(models.Roi)
    f0 = _next_id(models.Referral)
    from security import hash_password
    password_hash = hash_password(BENCH_PASSWORD)
    created = dt.datetime.fromtimestamp(start_s - 86400 * 30, dt.timezone.utc).replace(tzinfo=None)
    towns_by_county = {}
    for town, county, zip_code in TOWNS:
        towns_by_county.setdefault(county, []).append((town, zip_code))
    county_by_region = {}
    for county in counties:
        county_by_region.setdefault(county.region_id, []).append(county)

    agency_rows, agency_region = [], {}
    for i in range(n_agency):
        region = regions[i % len(regions)]
        county = rng.choice(county_by_region.get(region.id) or counties)
        town, zip_code = (towns_by_county.get(county.name) or [(county.name, "59000")])[0]
        kind = AGENCY_KINDS[i % len(AGENCY_KINDS)]
        agency_region[i] = (region, county, town, zip_code)
        agency_rows.append({
            "id": a0 + i, "name": f"{town} {kind} {i + 1}", "region": region.id,
            "address": f"{100 + i} {rng.choice(STREETS)}", "city": town, "zip_code": zip_code,
            "phone": f"+1406{2000000 + rng.randrange(8000000)}",
            "email": f"info{i + 1}@agency.{BENCH_DOMAIN}", "created_at": created})
    _insert_rows(models.Agency, agency_rows)

    program_rows, county_rows, service_rows, insurance_rows = [], [], [], []
    user_rows, member_rows, user_mou_rows, agency_mou_rows = [], [], [], []
    for i in range(n_prog):
        agency_i = i % n_agency
        region, county, town, zip_code = agency_region[agency_i]
        service = services[(i * 7 + rng.randrange(3)) % len(services)]
        hub = i < n_hubs
        expired = not hub and rng.random() < 0.1
        valid_until = today + dt.timedelta(days=rng.randrange(-300, -1) if expired
                                           else rng.randrange(30, 360))
        name = (f"Statewide {service.name} Hub {i + 1}" if hub
                else f"{service.name} — {town} {i + 1}")
        program_rows.append({
            "id": p0 + i, "agency": a0 + agency_i, "name": name[:200],
            "description": f"{service.name} for {county.name} County and nearby.",
            "telemedicine": rng.random() < 0.2, "address": f"{100 + i} {rng.choice(STREETS)}",
            "city": town, "zip_code": zip_code, "phone": f"+1406{2000000 + rng.randrange(8000000)}",
            "email": f"program{i + 1}@{BENCH_DOMAIN}", "hours": "Mon-Fri 8:00-17:00",
            "latitude": round(44.4 + rng.random() * 4.6, 5),
            "longitude": round(-116.0 + rng.random() * 11.9, 5),
            "mou_valid_until": valid_until, "created_at": created, "updated_at": created})
        chosen = {county.id} | {rng.choice(counties).id for _ in range(rng.randrange(0, 3))}
        if hub:
            chosen = {c.id for c in counties}
        county_rows += [{"program": p0 + i, "county": c} for c in sorted(chosen)]
        chosen = {service.id} | {rng.choice(services).id for _ in range(rng.randrange(1, 3))}
        service_rows += [{"program": p0 + i, "service": s} for s in sorted(chosen)]
        chosen = {rng.choice(insurance).id for _ in range(rng.randrange(2, 5))}
        insurance_rows += [{"program": p0 + i, "insurance_type": t} for t in sorted(chosen)]
        for slot in range(USERS_PER_PROGRAM):
            uid = u0 + i * USERS_PER_PROGRAM + slot
            role = models.ROLE_GATEKEEPER if slot in GATEKEEPER_SLOTS else models.ROLE_PROVIDER
            first = FIRST_NAMES[(i * 5 + slot) % len(FIRST_NAMES)]
            last = LAST_NAMES[(i * 3 + slot * 11) % len(LAST_NAMES)]
            user_rows.append({
                "id": uid, "email": bench_email(i, slot), "name": f"{first} {last}",
                "password_hash": password_hash, "must_change_password": False,
                "created_at": created, "password_changed_at": created})
            member_rows.append({"user": uid, "program": p0 + i, "role": role, "created_at": created})
            user_mou_rows.append({"user": uid, "signature_name": f"{first} {last}",
                                  "signed_at": now, "signed_on": today,
                                  "expires_on": models.last_valid_day(today)})
        signed_on = valid_until - dt.timedelta(days=365)
        agency_mou_rows.append({
            "program": p0 + i, "signed_by": u0 + i * USERS_PER_PROGRAM,
            "signature_name": user_rows[-USERS_PER_PROGRAM]["name"],
            "signed_at": dt.datetime.combine(signed_on, dt.time(17)), "signed_on": signed_on,
            "expires_on": valid_until})
    admin_id = u0 + n_prog * USERS_PER_PROGRAM
    user_rows.append({"id": admin_id, "email": f"admin@{BENCH_DOMAIN}", "name": "Bench Administrator",
                      "password_hash": password_hash, "must_change_password": False,
                      "is_admin": True, "admin_statewide": True, "created_at": created})
    user_mou_rows.append({"user": admin_id, "signature_name": "Bench Administrator",
                          "signed_at": now, "signed_on": today,
                          "expires_on": models.last_valid_day(today)})
    with database.atomic():
        for model, rows in ((models.Program, program_rows), (models.ProgramCounty, county_rows),
                            (models.ProgramService, service_rows),
                            (models.ProgramInsurance, insurance_rows), (models.User, user_rows),
                            (models.Membership, member_rows), (models.UserMou, user_mou_rows),
                            (models.AgencyMou, agency_mou_rows)):
            _insert_rows(model, rows)
    _make_lookup_tables(sql)
    finish("network", t0)

    dropped = _drop_indexes(BIG_TABLES)

    # Expressions shared by the steps (j = subject index, r = referral index).
    def subj_created(j):
        return f"({start_s} + ({j}) * {span} / {n_subj} + {sql.h(j, 1)} % 3600)"

    def home(j):
        return home_sql(sql, j, n_prog, n_hubs)

    # --- subjects ------------------------------------------------------------
    t0 = time.monotonic()
    for lo, hi in _chunks(n_subj):
        prefix, source = sql.series(lo, hi)
        j = "s.j"
        dob = f"{-946771200} + {sql.h(j, 25)} % {80 * 365 * 86400}"
        no_phone = f"({sql.h(j, 23)} % 20 = 0)"
        number = f"(2000000 + {sql.h(j, 24)} % 8000000)"
        values = {
            "id": f"{s0} + {j}", "first_name": "f.name", "last_name": "l.name",
            "dob": sql.day(dob),
            "gender": sql.pick(j, 26, [(q(v), w) for v, w in GENDER_WEIGHTS]),
            "race": sql.pick(j, 27, [(q(v), w) for v, w in RACE_WEIGHTS]),
            "military": sql.pick(j, 28, [(q(v), w) for v, w in MILITARY_WEIGHTS]),
            "address": f"(100 + {sql.h(j, 29)} % 9900) || ' ' || st.name",
            "address_norm": f"(100 + {sql.h(j, 29)} % 9900) || ' ' || st.norm",
            "city": "pl.city", "county_id": "pl.county_id", "zip_code": "pl.zip",
            "phone": f"CASE WHEN {no_phone} THEN '' ELSE '+1406' || {number} END",
            "no_phone": no_phone,
            "phone_digits": f"CASE WHEN {no_phone} THEN '' ELSE '406' || {number} END",
            "email": f"CASE WHEN {sql.h(j, 30)} % 5 < 2 THEN f.norm || '.' || l.norm || {j} || "
                     f"'@example.com' ELSE '' END",
            "homeless": f"({sql.h(j, 31)} % 50 = 0)",
            "created_by_id": f"{u0} + {home(j)} * {USERS_PER_PROGRAM} + {sql.h(j, 32)} % {USERS_PER_PROGRAM}",
            "created_by_program_id": f"{p0} + {home(j)}",
            "created_at": sql.ts(subj_created(j)), "updated_at": sql.ts(subj_created(j)),
            "first_norm": "f.norm", "last_norm": "l.norm",
        }
        from_sql = (f"(SELECT x - 1 AS j FROM {source}) AS s "
                    f"JOIN gen_first f ON f.i = {sql.h(j, 20)} % {len(FIRST_NAMES)} "
                    f"JOIN gen_last l ON l.i = {sql.h(j, 21)} % {len(LAST_NAMES)} "
                    f"JOIN gen_street st ON st.i = {sql.h(j, 22)} % {len(STREETS)} "
                    f"JOIN gen_place pl ON pl.i = {sql.h(j, 33)} % {_scalar('SELECT COUNT(*) FROM gen_place')}")
        with database.atomic():
            _insert_select(models.Subject, values, from_sql, prefix, now_sql)
        step("subjects", hi / n_subj)
    finish("subjects", t0)

    # --- ROIs: one signed ROI per client, naming the home program --------------------
    # Signed (or last renewed) within the past 500 days, never before the client was
    # added: about a third have lapsed, and those clients are hidden from the programs
    # that reached them through the ROI (R-ROI-9), as in a network where clients re-sign
    # yearly.
    t0 = time.monotonic()
    for lo, hi in _chunks(n_subj):
        prefix, source = sql.series(lo, hi)
        j = "s.j"
        signed = sql.greatest(f"({subj_created(j)} + 600)",
                              f"({now_s} - {sql.h(j, 41)} % {ROI_RENEWAL_DAYS * 86400})")
        values = {
            "id": f"{r0} + {j}", "subject_id": f"{s0} + {j}", "program_id": f"{p0} + {home(j)}",
            "created_by_id": f"{u0} + {home(j)} * {USERS_PER_PROGRAM}",
            "state": q(models.ROI_SIGNED), "info_types": q(ROI_INFO_TYPES),
            "authorizer_kind": q("client"), "authorizer_name": q("Client"),
            "signature_method": q(models.SIGN_ESIGN),
            "signed_at": sql.ts(signed), "signed_on": sql.day(signed),
            "expires_on": sql.day(f"{signed} + {365 * 86400}"),
            "reference": f"'G' || ({r0} + {j})",
            "created_at": sql.ts(subj_created(j)), "updated_at": sql.ts(signed),
        }
        with database.atomic():
            _insert_select(models.Roi, values, f"(SELECT x - 1 AS j FROM {source}) AS s",
                           prefix, now_sql)
            _insert_select(models.RoiProgram, {"roi_id": f"{r0} + {j}", "program_id": f"{p0} + {home(j)}"},
                           f"(SELECT x - 1 AS j FROM {source}) AS s", prefix, now_sql)
            _insert_select(models.SubjectLink, {
                "subject_id": f"{s0} + {j}", "program_id": f"{p0} + {home(j)}",
                "reason": q("created"), "created_at": sql.ts(subj_created(j))},
                f"(SELECT x - 1 AS j FROM {source}) AS s", prefix, now_sql)
        step("rois", hi / n_subj)
    finish("rois", t0)

    # --- referrals -----------------------------------------------------------------
    t0 = time.monotonic()
    recent_s = now_s - RECENT_DAYS * 86400
    for lo, hi in _chunks(n_ref):
        prefix, source = sql.series(lo, hi)
        k = dict(s0=s0, r0=r0, p0=p0, a0=a0, u0=u0, f0=f0, n_prog=n_prog, n_agency=n_agency,
                 n_hubs=n_hubs, n_subj=n_subj, n_ref=n_ref, start_s=start_s, span=span,
                 now_s=now_s, recent_s=recent_s)
        with database.atomic():
            _execute("DROP TABLE IF EXISTS gen_ref")
            _execute(_referral_stage(sql, prefix, source, k))
            _execute(_referral_insert(sql, k))
            _execute("DROP TABLE gen_ref")
        step("referrals", hi / n_ref)
    finish("referrals", t0)

    # --- ROI and client links of the receiving programs --------------------------------
    # A referral never goes to the client's home program, so these pairs never repeat the
    # home links made above: GROUP BY alone keeps them unique.
    t0 = time.monotonic()
    with database.atomic():
        _execute(f"INSERT INTO roi_program (roi_id, program_id) SELECT roi_id, to_program_id "
                 f"FROM referral WHERE id >= {f0} GROUP BY roi_id, to_program_id")
        step("links", 0.5)
        _execute(f"INSERT INTO subject_link (subject_id, program_id, reason, created_at) "
                 f"SELECT subject_id, to_program_id, 'referral', MIN(sent_at) FROM referral "
                 f"WHERE id >= {f0} AND state <> 'pending' GROUP BY subject_id, to_program_id")
    finish("links", t0)

    # --- history and notes ----------------------------------------------------------------
    t0 = time.monotonic()
    for lo, hi in _chunks(n_ref):
        a, b = f0 + lo - 1, f0 + hi - 1
        with database.atomic():
            _history_inserts(sql, a, b, u0, p0)
        step("history", hi / n_ref)
    finish("history", t0)

    # --- indexes back, statistics ------------------------------------------------------------
    t0 = time.monotonic()
    _drop_lookup_tables()
    index_seconds = _create_indexes(dropped, lambda n, total: step("indexes", n / total))
    if not sqlite:
        for model in (models.Agency, models.Program, models.User, models.Subject, models.Roi,
                      models.Referral):
            table = model._meta.table_name
            _execute(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                     f'(SELECT MAX(id) FROM "{table}"))')
    finish("indexes", t0)
    t0 = time.monotonic()
    if sqlite:
        database.execute_sql("PRAGMA analysis_limit = 1000")
        database.execute_sql("ANALYZE")
        database.execute_sql("PRAGMA journal_mode = WAL")
        database.execute_sql("PRAGMA synchronous = FULL")
        database.execute_sql("PRAGMA foreign_keys = ON")
    else:
        database.execute_sql("SET session_replication_role = origin")
        tables = ", ".join(f'"{m._meta.table_name}"' for m in BIG_TABLES + (
            models.Agency, models.Program, models.User, models.Membership))
        database.execute_sql(f"VACUUM ANALYZE {tables}")
    finish("analyze", t0)
    timings["total"] = round(time.monotonic() - started, 2)
    # CPU seconds of this process (SQLite works in-process; PostgreSQL in its server).
    timings["cpu"] = round(time.process_time() - cpu_started, 2)
    return {"programs": n_prog, "agencies": n_agency, "hubs": n_hubs, "subjects": n_subj,
            "referrals": n_ref, "first_program_id": p0, "first_user_id": u0,
            "first_referral_id": f0, "seconds": timings,
            "index_seconds": dict(sorted(index_seconds.items(), key=lambda kv: -kv[1]))}


def home_sql(sql, j, n_prog, n_hubs):
    """The home program index of client j: a hub for one client in ten (hubs send as much
    as they receive; the first hub a third of that), any program otherwise."""
    hub = f"CASE WHEN {sql.h(j, 41)} % 3 = 0 THEN 0 ELSE {sql.h(j, 41)} % {n_hubs} END"
    return (f"(CASE WHEN {sql.h(j, 40)} % 100 < {HUB_SHARE} THEN {hub} "
            f"ELSE {sql.h(j, 2)} % {n_prog} END)")


def bench_email(program_index, slot):
    kind = "gk" if slot in GATEKEEPER_SLOTS else "pr"
    return f"p{program_index + 1}.{kind}{slot}@{BENCH_DOMAIN}"


def _chunks(total, size=CHUNK):
    lo = 1
    while lo <= total:
        hi = min(total, lo + size - 1)
        yield lo, hi
        lo = hi + 1


def _make_lookup_tables(sql):
    """Small temporary tables the SQL generator joins by index: names, streets, places."""
    _drop_lookup_tables()
    temp = "CREATE TEMP TABLE"
    for table, items in (("gen_first", FIRST_NAMES), ("gen_last", LAST_NAMES),
                         ("gen_street", STREETS)):
        _execute(f"{temp} {table} (i INTEGER PRIMARY KEY, name TEXT, norm TEXT)")
        rows = ", ".join(f"({n}, {q(v)}, {q(norm(v, table))})" for n, v in enumerate(items))
        _execute(f"INSERT INTO {table} (i, name, norm) VALUES {rows}")
    counties = {c.name: c.id for c in models.County.select()}
    places = [(town, counties[county], zip_code) for town, county, zip_code in TOWNS
              if county in counties]
    # Every county appears; the named towns carry the weight of the larger ones.
    places += [(name, cid, "59000") for name, cid in counties.items()]
    _execute(f"{temp} gen_place (i INTEGER PRIMARY KEY, city TEXT, county_id INTEGER, zip TEXT)")
    rows = ", ".join(f"({n}, {q(c)}, {cid}, {q(z)})" for n, (c, cid, z) in enumerate(places))
    _execute(f"INSERT INTO gen_place (i, city, county_id, zip) VALUES {rows}")


def norm(value, table):
    if table == "gen_street":
        return models.normalize_address(value)
    return models.normalize_name(value)


def _drop_lookup_tables():
    for table in ("gen_first", "gen_last", "gen_street", "gen_place"):
        _execute(f"DROP TABLE IF EXISTS {table}")


def _levels(sql, source, k):
    """Levels 1 and 2 of a chunk of referrals: index r, subject j, created seconds cs,
    home (from) program f, raw target t0, state st and the durations."""
    h = sql.h
    n_prog, n_hubs = k["n_prog"], k["n_hubs"]
    # Level 1: r, subject index j, created seconds.
    level1 = (f"SELECT r, {h('r', 4)} % ((r * {k['n_subj']}) / {k['n_ref']} + 1) AS j, "
              f"{k['start_s']} + r * {k['span']} / {k['n_ref']} + 3600 + {h('r', 3)} % 600 AS cs "
              f"FROM (SELECT x - 1 AS r FROM {source}) AS s0")
    # Level 2: home (from) program, raw target, state, durations.
    hub_pick = f"CASE WHEN {h('r', 6)} % 3 = 0 THEN 0 ELSE {h('r', 6)} % {n_hubs} END"
    t0 = f"CASE WHEN {h('r', 5)} % 100 < {HUB_SHARE} THEN {hub_pick} ELSE {h('r', 6)} % {n_prog} END"
    u = f"{h('r', 7)} % 1000"
    old_case, recent_case = [], []
    up_old = up_recent = 0
    for state, old, recent in STATE_MIX:
        up_old += old
        up_recent += recent
        old_case.append(f"WHEN {u} < {up_old} THEN {q(state)}")
        recent_case.append(f"WHEN {u} < {up_recent} THEN {q(state)}")
    state = (f"CASE WHEN cs > {k['recent_s']} THEN CASE {' '.join(recent_case)} END "
             f"ELSE CASE {' '.join(old_case)} END END")
    level2 = (f"SELECT r, j, cs, {home_sql(sql, 'j', n_prog, n_hubs)} AS f, {t0} AS t0, {state} AS st, "
              f"300 + {h('r', 8)} % 7200 AS d_send, "
              f"1800 + {h('r', 9)} % 432000 + CASE WHEN {h('r', 9)} % 20 = 0 THEN 604800 ELSE 0 END AS d_ack, "
              f"86400 + {h('r', 10)} % 5184000 AS d_out "
              f"FROM ({level1}) AS s1")
    return level1, level2


def _referral_insert(sql, k):
    """INSERT ... SELECT for one chunk of referrals from gen_ref (module docstring: shape)."""
    h = sql.h
    n_prog = k["n_prog"]
    # Level 3: target != home, seconds of each moment (NULL when it did not happen).
    now_s = k["now_s"]
    least = sql.least
    level3 = (
        f"SELECT r, j, cs, f, st, d_ack, "
        f"CASE WHEN t0 = f THEN (t0 + 1) % {n_prog} ELSE t0 END AS t, "
        f"CASE WHEN st <> 'pending' THEN {least('cs + d_send', now_s)} END AS ss, "
        f"CASE WHEN st IN ('assigned', 'closed') THEN {least('cs + d_send + d_ack', now_s)} END AS sa, "
        f"CASE WHEN st = 'closed' THEN {least('cs + d_send + d_ack + d_out', now_s)} "
        f"WHEN st IN ('declined', 'withdrawn') THEN {least('cs + d_send + d_ack', now_s)} END AS sc, "
        f"CASE WHEN st = 'sent' AND cs < {now_s - 8 * 86400} THEN cs + d_send + 604800 "
        f"WHEN st IN ('assigned', 'closed') AND d_ack >= 604800 "
        f"THEN {least('cs + d_send + 604800', now_s)} END AS sd "
        f"FROM gen_ref AS s2")
    closed_status = sql.pick("r", 11, [(q(s), w) for s, w in CLOSED_STATUS_WEIGHTS])
    open_status = sql.pick("r", 12, [("NULL", 2)] + [(q(s), 1) for s in OPEN_STATUSES])
    decline = sql.pick("r", 14, [(q(s), 1) for s in DECLINE_REASONS])
    withdraw = sql.pick("r", 14, [(q(s), 1) for s in WITHDRAW_REASONS])
    upp = USERS_PER_PROGRAM
    values = {
        "id": f"{k['f0']} + r",
        "subject_id": f"{k['s0']} + j", "roi_id": f"{k['r0']} + j",
        "from_program_id": f"{k['p0']} + f", "from_agency_id": f"{k['a0']} + f % {k['n_agency']}",
        "to_program_id": f"{k['p0']} + t", "to_agency_id": f"{k['a0']} + t % {k['n_agency']}",
        "created_by_id": f"{k['u0']} + f * {upp} + {h('r', 13)} % {upp}",
        "state": "st",
        "status": f"CASE WHEN st = 'closed' THEN {closed_status} "
                  f"WHEN st = 'assigned' THEN {open_status} END",
        "assigned_to_id": f"CASE WHEN st IN ('assigned', 'closed') THEN "
                          f"{k['u0']} + t * {upp} + {PROVIDER_SLOTS[0]} + {h('r', 15)} % {len(PROVIDER_SLOTS)} END",
        "answers": q('{"1": "Yes"}'),
        "personal_info": f"'{{\"subject\": ' || ({k['s0']} + j) || ', \"language\": \"English\"}}'",
        "insurance_confirmed": "(st <> 'pending')",
        "reason": f"CASE WHEN st = 'declined' THEN {decline} WHEN st = 'withdrawn' THEN {withdraw} "
                  f"ELSE '' END",
        "sent_at": sql.ts("ss"), "acknowledged_at": sql.ts("sa"), "assigned_at": sql.ts("sa"),
        "outcome_at": f"CASE WHEN st = 'closed' THEN {sql.ts('sc')} END",
        "closed_at": sql.ts("sc"), "delayed_at": sql.ts("sd"),
        "created_at": sql.ts("cs"),
        "updated_at": sql.ts("COALESCE(sc, sa, ss, cs)"),
        "version": "CASE st WHEN 'pending' THEN 0 WHEN 'sent' THEN 1 WHEN 'assigned' THEN 2 "
                   "WHEN 'closed' THEN 3 ELSE 2 END",
    }
    columns = ", ".join(values)
    return (f"INSERT INTO referral ({columns}) SELECT {', '.join(values.values())} "
            f"FROM ({level3}) AS s3")


def _referral_stage(sql, prefix, source, k):
    """Level 2 of _referral_insert materialised (CREATE TEMP TABLE gen_ref AS ...), so the
    planner cannot copy the hash expressions into every column that uses them."""
    return f"CREATE TEMP TABLE gen_ref AS {prefix}{_levels(sql, source, k)[1]}"


def _history_inserts(sql, a, b, u0, p0):
    """ReferralEvent rows for every move of referrals a..b, and a note on one in ten."""
    upp = USERS_PER_PROGRAM
    rng = f"id BETWEEN {a} AND {b}"
    event_cols = "referral_id, at, user_id, program_id, kind, from_state, to_state, status, detail"
    gatekeeper = f"{u0} + (to_program_id - {p0}) * {upp}"
    statements = [
        # saved (drafts) or sent
        f"SELECT id, created_at, created_by_id, from_program_id, 'saved', '', 'pending', '', '' "
        f"FROM referral WHERE {rng} AND state = 'pending'",
        f"SELECT id, sent_at, created_by_id, from_program_id, 'sent', 'pending', 'sent', '', '' "
        f"FROM referral WHERE {rng} AND state <> 'pending'",
        # assigned by a gatekeeper of the receiving program
        f"SELECT id, assigned_at, {gatekeeper}, to_program_id, 'assigned', 'sent', 'assigned', "
        f"'', '' FROM referral WHERE {rng} AND state IN ('assigned', 'closed')",
        # status set by the provider (open statuses keep it assigned)
        f"SELECT id, assigned_at, assigned_to_id, to_program_id, 'status', 'assigned', 'assigned', "
        f"status, '' FROM referral WHERE {rng} AND state = 'assigned' AND status IS NOT NULL",
        f"SELECT id, outcome_at, assigned_to_id, to_program_id, 'status', 'assigned', 'closed', "
        f"status, '' FROM referral WHERE {rng} AND state = 'closed'",
        f"SELECT id, closed_at, {gatekeeper}, to_program_id, 'declined', 'sent', 'declined', '', "
        f"reason FROM referral WHERE {rng} AND state = 'declined'",
        f"SELECT id, closed_at, created_by_id, from_program_id, 'withdrawn', 'sent', 'withdrawn', "
        f"'', reason FROM referral WHERE {rng} AND state = 'withdrawn'",
    ]
    for select in statements:
        _execute(f"INSERT INTO referral_event ({event_cols}) {select}")
    kinds = list(models.NOTE_KINDS)
    kind = "CASE id % 4 " + " ".join(f"WHEN {n} THEN {q(v)}" for n, v in enumerate(kinds)) + " END"
    text = "CASE id % 4 " + " ".join(f"WHEN {n} THEN {q(v)}" for n, v in enumerate(NOTE_TEXTS)) + " END"
    _execute(f"INSERT INTO referral_note (referral_id, author_id, program_id, kind, note_date, "
             f"text, created_at) SELECT id, assigned_to_id, to_program_id, {kind}, "
             f"{sql.date_of('assigned_at')}, {text}, assigned_at FROM referral "
             f"WHERE {rng} AND id % 10 = 3 AND state IN ('assigned', 'closed')")


# ---------------------------------------------------------------------------
# CLI: flask --app app generate-scale
# ---------------------------------------------------------------------------

def register_cli(app):
    import click

    @app.cli.command("generate-scale")
    @click.option("--programs", default=STATEWIDE["programs"], show_default=True)
    @click.option("--subjects", default=STATEWIDE["subjects"], show_default=True)
    @click.option("--referrals", default=STATEWIDE["referrals"], show_default=True)
    @click.option("--seed", default=1, show_default=True)
    @click.option("--quick", is_flag=True, help="CI size: 50 programs, 5,000 clients, 20,000 referrals.")
    def generate_scale_command(programs, subjects, referrals, seed, quick):
        """Fill the database with a generated statewide network (benchmarks)."""
        if quick:
            programs, subjects, referrals = QUICK["programs"], QUICK["subjects"], QUICK["referrals"]
        with database.connection_context():
            models.migrate()
            with click.progressbar(length=1000, label="Generating", show_percent=True,
                                   show_eta=True) as bar:
                state = {"at": 0, "label": ""}

                def progress(label, fraction):
                    target = int(fraction * 1000)
                    if label != state["label"]:
                        state["label"] = label
                        bar.label = f"Generating {label:<9}"
                    if target > state["at"]:
                        bar.update(target - state["at"])
                        state["at"] = target

                summary = generate_scale(programs, subjects, referrals, seed, progress)
        click.echo(f"Generated {summary['programs']:,} programs ({summary['hubs']} hubs), "
                   f"{summary['subjects']:,} clients and {summary['referrals']:,} referrals "
                   f"in {summary['seconds']['total']} s.")
        click.echo("Seconds per step: " + ", ".join(
            f"{k} {v}" for k, v in summary["seconds"].items() if k != "total"))
        slowest = list(summary["index_seconds"].items())[:5]
        click.echo("Slowest index builds: " + ", ".join(f"{k} {v}" for k, v in slowest))
        click.echo(f"Every generated user signs in with the password {BENCH_PASSWORD!r}, "
                   f"e.g. {bench_email(0, 0)} (gatekeeper of the busiest hub).")
