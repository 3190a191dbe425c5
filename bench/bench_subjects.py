"""Subject search and the duplicate check at statewide scale (issue 3, not a test).

    .venv/bin/python bench/bench_subjects.py [--rows 1000000] [--runs 50] [--fresh]

Fills a SQLite database under bench/out/ with synthetic subjects (one INSERT ... SELECT
over a recursive CTE: a million rows in seconds), runs ANALYZE, then times each query
through the application code (matching.py, peewee) beside the raw-SQL floor of the same
SQL on the same connection: median and p95 over `runs` runs after a warm-up.
"""

import argparse
import datetime as dt
import os
import pathlib
import random
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import matching  # noqa: E402
import models  # noqa: E402
from cli import load_reference_data  # noqa: E402

SYLLABLES_FIRST = ["jo", "ma", "ri", "an", "el", "li", "sa", "da", "ke", "lu", "ro", "be", "ca",
                   "ni", "to", "ha", "mi", "ve", "ja", "so"]
SYLLABLES_LAST = ["smi", "th", "john", "son", "ber", "ger", "mil", "ler", "wil", "li", "ams",
                  "and", "er", "ta", "yl", "or", "bro", "wn", "da", "vis", "gar", "cia", "mar",
                  "tin", "lee", "cl", "ark", "ol", "sen", "ne"]


def name_lists():
    firsts = sorted({(a + b + c).capitalize() for a in SYLLABLES_FIRST for b in SYLLABLES_FIRST
                     for c in ("", "n", "h")})
    lasts = sorted({(a + b).capitalize() for a in SYLLABLES_LAST for b in SYLLABLES_LAST})
    return firsts + ["John", "Jon"], lasts + ["Smith", "Smyth"]


def generate(db, rows):
    """INSERT ... SELECT over a recursive CTE; names from two small tables by modulo."""
    firsts, lasts = name_lists()
    county = models.County.select().first().id
    now = models.utcnow().isoformat(sep=" ")
    db.execute_sql("CREATE TEMP TABLE fnames (i INTEGER PRIMARY KEY, name TEXT)")
    db.execute_sql("CREATE TEMP TABLE lnames (i INTEGER PRIMARY KEY, name TEXT)")
    db.obj.cursor().executemany("INSERT INTO fnames VALUES (?, ?)", list(enumerate(firsts)))
    db.obj.cursor().executemany("INSERT INTO lnames VALUES (?, ?)", list(enumerate(lasts)))
    sql = f"""
    WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?)
    INSERT INTO subject (created_at, first_name, last_name, middle_name, dob, gender, race,
        military, address, city, county_id, zip_code, phone, no_phone, other_contact, email,
        homeless, updated_at, first_norm, last_norm, phone_digits, address_norm)
    SELECT '{now}', f.name, l.name, '', date('1920-01-01', '+' || ((n * 7919) % 36500) || ' days'),
        'Female', 'White', 'No military service', n || ' Main St', 'Bozeman', {county}, '59715',
        '+1406' || printf('%07d', n), 0, '', '', 0, '{now}', lower(f.name), lower(l.name),
        '406' || printf('%07d', n), n || ' main st'
    FROM seq
    JOIN fnames f ON f.i = (n * 31) % {len(firsts)}
    JOIN lnames l ON l.i = ((n * 17) / 3 + n / {len(firsts)}) % {len(lasts)}
    """
    with db.atomic():
        db.execute_sql(sql, (rows,))
    db.execute_sql("ANALYZE")


def timed(fn, runs, warmup=5):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def raw(db, make_query):
    """The floor: the same SQL (one query of the case), executed and fetched on the raw
    connection, over the same cycle of samples."""
    cursor = db.obj.connection()

    def run():
        sql, params = make_query().sql()
        return cursor.execute(sql, params).fetchall()
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    path = out / f"subjects_{args.rows}.db"
    if args.fresh and path.exists():
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(str(path) + suffix).unlink(missing_ok=True)
    db = models.make_database(f"sqlite:///{path}")
    models.database.initialize(db)
    db.connect()
    models.migrate()
    load_reference_data()
    if models.Subject.select().count() < args.rows:
        start = time.perf_counter()
        generate(models.database, args.rows)
        print(f"generated {args.rows:,} subjects in {time.perf_counter() - start:.1f} s")
    total = models.count_estimate(models.Subject)
    rng = random.Random(7)
    samples = [models.Subject.get_by_id(rng.randint(1, total)) for _ in range(args.runs)]
    cycle = {"i": 0}

    def pick():
        cycle["i"] = (cycle["i"] + 1) % len(samples)
        return samples[cycle["i"]]

    one = samples[0]
    slip = one.first_name[:-1] + ("h" if one.first_name[-1] != "h" else "a")
    rows = []
    def first_query(name, dob=None):
        """The first SQL statement search_subjects runs (the floor of the search)."""
        tokens = matching.split_name(name)
        base = models.Subject.select()
        if dob:
            base = base.where(models.Subject.dob == dob)
        if len(tokens) == 1:
            cond = matching._prefix_range(models.Subject.last_norm, tokens[0])
        else:
            cond = (matching._prefix_range(models.Subject.last_norm, tokens[1])
                    & matching._prefix_range(models.Subject.first_norm, tokens[0]))
        return base.where(cond).order_by(models.Subject.last_norm, models.Subject.first_norm).limit(50)

    cases = [
        ("search 'first last'", lambda: matching.search_subjects(f"{pick().first_name} {samples[cycle['i']].last_name}"),
         lambda: first_query(f"{pick().first_name} {samples[cycle['i']].last_name}")),
        ("search one word prefix", lambda: matching.search_subjects(pick().last_name[:4]),
         lambda: first_query(pick().last_name[:4])),
        ("search name + DOB", lambda: matching.search_subjects(
            f"{pick().first_name} {samples[cycle['i']].last_name}", samples[cycle['i']].dob),
         lambda: first_query(f"{pick().first_name} {samples[cycle['i']].last_name}", samples[cycle['i']].dob)),
        ("exact rule (R-SUBJ-1)", lambda: list(matching.exact_matches(
            pick().first_name, samples[cycle['i']].last_name, samples[cycle['i']].dob,
            samples[cycle['i']].phone, "")),
         lambda: matching.exact_matches(pick().first_name, samples[cycle['i']].last_name,
                                        samples[cycle['i']].dob, samples[cycle['i']].phone, "")),
    ]
    for label, app_fn, query in cases:
        median, p95 = timed(app_fn, args.runs)
        floor_median, floor_p95 = timed(raw(models.database, query), args.runs)
        rows.append((label, median, p95, floor_median, floor_p95))

    def dup_check():
        s = pick()
        return matching.likely_duplicates(s.first_name[:-1] + "h", s.last_name, s.dob, s.phone)

    def dup_floor():
        s = pick()
        cursor = models.database.obj.connection()
        variants = [d.isoformat() for d in matching.dob_variants(s.dob)]
        marks = ",".join("?" * len(variants))
        cols = "id, first_name, last_name, first_norm, last_norm, dob, city, phone_digits"
        cursor.execute(f"SELECT {cols} FROM subject WHERE dob IN ({marks}) LIMIT 400", variants).fetchall()
        cursor.execute(f"SELECT {cols} FROM subject WHERE last_norm = ? AND first_norm = ? LIMIT 400",
                       (s.last_norm, s.first_norm)).fetchall()
        cursor.execute(f"SELECT {cols} FROM subject WHERE last_norm = ? AND first_norm = ? LIMIT 400",
                       (s.first_norm, s.last_norm)).fetchall()
        cursor.execute(f"SELECT {cols} FROM subject WHERE phone_digits = ? LIMIT 400",
                       (s.phone_digits,)).fetchall()

    median, p95 = timed(dup_check, args.runs)
    floor_median, floor_p95 = timed(dup_floor, args.runs)
    rows.append(("duplicate check (likely)", median, p95, floor_median, floor_p95))
    found = matching.likely_duplicates(slip, one.last_name, one.dob, one.phone)
    assert one.id in [s.id for _, s in found], "the near spelling must be found"

    print(f"\nSQLite, {total:,} subjects, {args.runs} runs after 5 warm-up runs (ms)")
    print(f"{'query':28} {'median':>8} {'p95':>8} {'raw median':>11} {'raw p95':>8}")
    for label, median, p95, floor_median, floor_p95 in rows:
        print(f"{label:28} {median:8.2f} {p95:8.2f} {floor_median:11.2f} {floor_p95:8.2f}")
    db.close()


if __name__ == "__main__":
    os.environ.setdefault("TIMEZONE", "America/Denver")
    dt.date.today()
    main()
