"""The screens `make bench` times, each with its raw-SQL floor.

A screen names the endpoints that may serve it (the first one registered wins; none
registered means "not built yet") and the query string to use. A floor is the hand-written
SQL that fetches the same rows through the raw driver (sqlite3 or psycopg), `?` placeholders.
"""

from dataclasses import dataclass, field

from flask import url_for


@dataclass
class Floor:
    """One or more statements; the rows of the last are the page's rows."""
    sqlite: list
    postgres: list = None

    def statements(self, sqlite, context):
        chosen = self.sqlite if sqlite or self.postgres is None else self.postgres
        for sql, params in chosen:
            yield sql, tuple(context[p] if isinstance(p, str) else p for p in params)


@dataclass
class Screen:
    name: str
    group: str  # list, subject, directory, report, detail, baseline, gate
    user: str  # gatekeeper or provider
    endpoints: list  # [(endpoint, {query args}, )] tried in order
    floor: Floor = None
    budget: str = ""
    params: dict = field(default_factory=dict)

    def resolve(self, app, context):
        """The URL to fetch, or None when no candidate endpoint is registered."""
        for endpoint, args in self.endpoints:
            if endpoint in app.view_functions:
                values = {k: (v.format(**context) if isinstance(v, str) else v)
                          for k, v in args.items()}
                with app.test_request_context():
                    return url_for(endpoint, **values)
        return None


PAGE = 25
OPEN = "('pending', 'sent', 'assigned')"


def _page_sql(where, order, keyset=False):
    """One page of a referral list: the ids by index (the first page, or after a keyset
    cursor: the row value of the previous page's last row), then their joins — the
    fastest hand-written form of the rows the lists show."""
    column = order.split()[0]
    where = where + (f" AND ({column}, id) < (?, ?)" if keyset else "")
    return (
        "SELECT r.*, s.first_name, s.last_name, fp.name, tp.name, fa.name, ta.name, "
        "ua.name, us.name FROM (SELECT id FROM referral WHERE " + where + " ORDER BY "
        + order + " LIMIT 25) AS page "
        "JOIN referral r ON r.id = page.id "
        "JOIN subject s ON s.id = r.subject_id JOIN program fp ON fp.id = r.from_program_id "
        "JOIN program tp ON tp.id = r.to_program_id JOIN agency fa ON fa.id = r.from_agency_id "
        "JOIN agency ta ON ta.id = r.to_agency_id LEFT JOIN \"user\" ua ON ua.id = r.assigned_to_id "
        "LEFT JOIN \"user\" us ON us.id = r.created_by_id ORDER BY r." + order.replace(", ", ", r."))


def _count_sql(where):
    """The list's header ("N referrals", "1,000+"): a count capped at 1,001 index entries."""
    return f"SELECT COUNT(*) FROM (SELECT 1 FROM referral WHERE {where} LIMIT 1001) AS capped"


def _list_floor(where, order, params, keyset=False):
    """The capped count, then the page's rows (what a list page shows); `params` are the
    WHERE's, then the cursor's two values for a keyset page."""
    return Floor([(_count_sql(where), params[:-2] if keyset else params),
                  (_page_sql(where, order, keyset), params)])


QUEUE_OPEN = f"to_program_id = ? AND state IN {OPEN}"
QUEUE_ANY = "to_program_id = ? AND state NOT IN ('pending', 'discarded')"
SENT_OPEN = f"from_program_id = ? AND state IN {OPEN}"
SENT_ANY = "from_program_id = ? AND state <> 'discarded'"
PROVIDER = f"to_program_id = ? AND assigned_to_id = ? AND state IN {OPEN}"
QUEUE_ORDER = "sent_at DESC, id DESC"
SENT_ORDER = "created_at DESC, id DESC"
ANY_QUEUE = {"flt0_0": "any"}  # "Any Status" (the queue's first filter)
ANY_SENT = {"flt0_1": "any"}  # "Any Status" (the Sent list's second filter)
# Subject search walks the name index statewide (at most 50), then keeps what the acting
# program may see: one statement doing both is the floor.
SEARCH_SQL = (
    "SELECT s.id, s.first_name, s.last_name, s.dob, s.city, l.program_id FROM "
    "(SELECT * FROM subject WHERE last_norm >= ? AND last_norm < ? "
    "ORDER BY last_norm, first_norm LIMIT 50) AS s "
    "LEFT JOIN subject_link l ON l.subject_id = s.id AND l.program_id = ?")
DUPLICATE_SQL = (
    "SELECT s.id, s.first_name, s.last_name, s.dob, s.city, l.program_id FROM "
    "(SELECT * FROM subject WHERE dob = ? AND last_norm >= ? AND last_norm < ? "
    "AND first_norm >= ? AND first_norm < ? ORDER BY last_norm, first_norm LIMIT 50) AS s "
    "LEFT JOIN subject_link l ON l.subject_id = s.id AND l.program_id = ?")
DIRECTORY_SQL = (
    "SELECT p.id, p.name, a.name, p.city, p.phone FROM program p "
    "JOIN agency a ON a.id = p.agency_id "
    "WHERE p.active AND p.mou_valid_until >= ? "
    "AND p.id IN (SELECT program_id FROM program_county WHERE county_id = ?) "
    "AND p.id IN (SELECT program_id FROM program_service WHERE service_id = ?) "
    "ORDER BY p.name LIMIT 25")
STOCK_SQL = "SELECT * FROM referral LIMIT 20 OFFSET ?"
# A report over the busiest program's last year (the reports' own form fields).
YEAR = {"scope": "program:{program_id}", "start": "{year_ago}", "end": "{today}"}


# The hand-written form of a report: the year's rows of each direction from its own index
# (received: to_program; sent: from_program, a program's referrals to itself counted once,
# as received), then the counts by state, status and month, the two medians and the newest
# 200 rows with their names.
RECEIVED = "r.to_program_id = ?"
SENT = "r.from_program_id = ? AND r.to_program_id <> ?"
REPORT_COLUMNS = ("r.id, r.sent_at, r.state, r.status, r.acknowledged_at, r.outcome_at, "
                  "r.delayed_at")


def _report_floor(*halves):
    """A year of the busiest program: counts by state, status and month, the medians of
    time to acknowledge and to outcome, and the first 200 rows with their names."""
    statements = {}
    for backend, since, month in (("sqlite", "?", "strftime('%Y-%m', y.sent_at)"),
                                  ("postgres", "?::date", "to_char(y.sent_at, 'YYYY-MM')")):
        year = " UNION ALL ".join(f"SELECT {REPORT_COLUMNS} FROM referral r WHERE {half} "
                                  f"AND r.sent_at >= {since}" for half in halves)
        params = tuple(p for half in halves
                       for p in ("program_id",) * half.count("?") + ("year_ago",))
        chosen = [(f"SELECT y.state, y.status, {month}, COUNT(*), COUNT(y.acknowledged_at), "
                   f"COUNT(y.outcome_at) FROM ({year}) AS y GROUP BY y.state, y.status, {month}",
                   params)]
        for column in ("acknowledged_at", "outcome_at"):
            if backend == "sqlite":
                chosen.append((
                    f"SELECT julianday(y.{column}) - julianday(y.sent_at) AS d FROM ({year}) AS y "
                    f"WHERE y.{column} IS NOT NULL ORDER BY d LIMIT 1 OFFSET (SELECT COUNT(*) / 2 "
                    f"FROM ({year}) AS z WHERE z.{column} IS NOT NULL)", params + params))
            else:
                chosen.append((
                    f"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY y.{column} - y.sent_at) "
                    f"FROM ({year}) AS y WHERE y.{column} IS NOT NULL", params))
        chosen.append((
            "SELECT r.id, r.sent_at, r.state, r.status, r.acknowledged_at, r.outcome_at, "
            "r.delayed_at, fa.name, fp.name, ta.name, tp.name, s.first_name, s.last_name, "
            f"roi.state, roi.expires_on FROM (SELECT y.id FROM ({year}) AS y "
            "ORDER BY y.sent_at DESC, y.id DESC LIMIT 200) AS page "
            "JOIN referral r ON r.id = page.id "
            "JOIN program fp ON fp.id = r.from_program_id JOIN program tp ON tp.id = r.to_program_id "
            "JOIN agency fa ON fa.id = r.from_agency_id JOIN agency ta ON ta.id = r.to_agency_id "
            "JOIN subject s ON s.id = r.subject_id LEFT JOIN roi ON roi.id = r.roi_id "
            "ORDER BY r.sent_at DESC, r.id DESC", params))
        statements[backend] = chosen
    return Floor(statements["sqlite"], statements["postgres"])


SCREENS = [
    Screen("Gate only (every page pays this)", "gate", "gatekeeper",
           [("bench_gate.index", {})], Floor([("SELECT 1", ())])),
    Screen("Incoming queue, page 1 (open referrals)", "list", "gatekeeper",
           [("incoming.index_view", {})],
           _list_floor(QUEUE_OPEN, QUEUE_ORDER, ("program_id",)), "queue"),
    Screen("Incoming queue, Any Status, page 1", "list", "gatekeeper",
           [("incoming.index_view", dict(ANY_QUEUE))],
           _list_floor(QUEUE_ANY, QUEUE_ORDER, ("program_id",)), "queue"),
    # Page 1000 as the pager reaches it: "Next" carries the last row's (sent_at, id).
    Screen("Incoming queue, Any Status, page 1000", "list", "gatekeeper",
           [("incoming.index_view", dict(ANY_QUEUE, page=999, after="{queue_cursor}"))],
           _list_floor(QUEUE_ANY, QUEUE_ORDER, ("program_id", "queue_at", "queue_id"), True),
           "queue"),
    Screen("Sent list, page 1 (open referrals)", "list", "gatekeeper",
           [("sent.index_view", {})],
           _list_floor(SENT_OPEN, SENT_ORDER, ("program_id",)), "sent"),
    Screen("Sent list, Any Status, page 1", "list", "gatekeeper",
           [("sent.index_view", dict(ANY_SENT))],
           _list_floor(SENT_ANY, SENT_ORDER, ("program_id",)), "sent"),
    Screen("Sent list, Any Status, page 1000", "list", "gatekeeper",
           [("sent.index_view", dict(ANY_SENT, page=999, after="{sent_cursor}"))],
           _list_floor(SENT_ANY, SENT_ORDER, ("program_id", "sent_at", "sent_id"), True),
           "sent"),
    Screen("Provider's own list", "list", "provider",
           [("incoming.index_view", {})],
           _list_floor(PROVIDER, QUEUE_ORDER, ("program_id", "provider_id")), "provider"),
    Screen("Subject search (last name)", "subject", "gatekeeper",
           [("subjects.index", {"q": "{last_name}"}),
            ("subjects.index_view", {"search": "{last_name}"}),
            ("subject.index_view", {"search": "{last_name}"})],
           Floor([(SEARCH_SQL, ("last_norm", "last_upper", "program_id"))]), "search"),
    Screen("Subject search, name + date of birth (duplicate check)", "subject", "gatekeeper",
           [("subjects.index", {"q": "{first_name} {last_name}", "dob": "{dob}"}),
            ("subjects.check_duplicates", {"first_name": "{first_name}",
                                           "last_name": "{last_name}", "dob": "{dob}"}),
            ("subjects.duplicates", {"first_name": "{first_name}", "last_name": "{last_name}",
                                     "dob": "{dob}"})],
           Floor([(DUPLICATE_SQL, ("dob", "last_norm", "last_upper", "first_norm",
                                   "first_upper", "program_id"))]), "duplicate"),
    Screen("Directory search (county + service)", "directory", "gatekeeper",
           [("public.index", {"county": "{county_id}", "service": "{service_id}"}),
            ("directory.index", {"county": "{county_id}", "service": "{service_id}"}),
            ("public_directory.index", {"county": "{county_id}", "service": "{service_id}"})],
           Floor([(DIRECTORY_SQL, ("today", "county_id", "service_id"))]), "directory"),
    Screen("Report: Referral Delays to Agency (year)", "report", "gatekeeper",
           [("reports.referrals", dict(kind_key="delays", **YEAR))],
           _report_floor(RECEIVED, SENT), "report"),
    Screen("Report: Referral Outcomes (year)", "report", "gatekeeper",
           [("reports.referrals", dict(kind_key="outcomes", **YEAR))],
           _report_floor(RECEIVED, SENT), "report"),
    Screen("Report: Referrals From Agency (year)", "report", "gatekeeper",
           [("reports.referrals", dict(kind_key="from_agency", **YEAR))],
           _report_floor(RECEIVED), "report"),
    Screen("Report: Referrals To Agency (year)", "report", "gatekeeper",
           [("reports.referrals", dict(kind_key="to_agency", **YEAR))],
           _report_floor("r.from_program_id = ?"), "report"),
    Screen("Referral page", "detail", "gatekeeper",
           [("referral.view", {"referral_id": "{referral_id}"}),
            ("referrals.details_view", {"id": "{referral_id}"}),
            ("referrals.referral", {"id": "{referral_id}"}),
            ("referral.details_view", {"id": "{referral_id}"})],
           Floor([
               ("SELECT r.*, s.first_name, s.last_name, s.dob, s.phone, fp.name, tp.name "
                "FROM referral r JOIN subject s ON s.id = r.subject_id "
                "JOIN program fp ON fp.id = r.from_program_id "
                "JOIN program tp ON tp.id = r.to_program_id WHERE r.id = ?", ("referral_id",)),
               ("SELECT e.*, u.name FROM referral_event e LEFT JOIN \"user\" u ON u.id = e.user_id "
                "WHERE e.referral_id = ? ORDER BY e.at", ("referral_id",)),
               ("SELECT n.*, u.name FROM referral_note n LEFT JOIN \"user\" u ON u.id = n.author_id "
                "WHERE n.referral_id = ? ORDER BY n.created_at", ("referral_id",)),
           ]), "detail"),
    Screen("Stock Flask-Admin ModelView(Referral), page 1", "baseline", "gatekeeper",
           [("bench_stock.index_view", {})], Floor([(STOCK_SQL, (0,))]), "stock"),
    Screen("Stock Flask-Admin ModelView(Referral), page 1000", "baseline", "gatekeeper",
           [("bench_stock.index_view", {"page": 999})], Floor([(STOCK_SQL, (999 * 20,))]),
           "stock"),
]


def load_targets(rows):
    """What the load run hits: the queue page when it exists, else the gate page."""
    by_name = {row["name"]: row for row in rows}
    queue = by_name.get("Incoming queue, page 1 (open referrals)", {})
    targets = [("hello", "/bench/hello")]
    if queue.get("status") == "ok":
        targets.append(("queue", queue["url"]))
    else:
        targets.append(("gate", by_name["Gate only (every page pays this)"]["url"]))
    return targets
