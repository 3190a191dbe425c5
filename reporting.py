"""Report figures, the public directory, the care team and the administrators' dashboard
(R-RPT, R-NET). Reads only: nothing here changes a row except the audit of a report run,
and nothing imports Flask's request or current_user (the acting user and program are
arguments). Rendering helpers (CSV, SVG charts, PDF pages) live here too so that the
screens, the downloads and the benchmarks share them.
"""

import csv
import datetime as dt
import io
import operator
import secrets
import threading
import time
from dataclasses import dataclass, field
from functools import reduce

from flask import g, has_request_context
from markupsafe import Markup
from markupsafe import escape as _escape
from peewee import JOIN, SQL, Case, EnclosedNodeList, NodeList, Select, Value, fn

from models import (
    INFO_CONTACT,
    INFO_TYPES,
    INFO_SUBSTANCE_USE,
    MOU_VALID_DAYS_WARNING,
    REDISCLOSURE_NOTICE,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    REFERRAL_CLOSED,
    REFERRAL_DISCARDED,
    REFERRAL_PENDING,
    REFERRAL_SENT,
    REFERRAL_STATE_LABELS,
    ROI_SIGNED,
    STATUSES,
    AdminRegion,
    Agency,
    AuditEvent,
    County,
    InsuranceType,
    Membership,
    Outbox,
    Program,
    ProgramCounty,
    ProgramInsurance,
    ProgramService,
    Referral,
    Region,
    Roi,
    RoiProgram,
    Service,
    Subject,
    User,
    database,
    is_sqlite,
    local_today,
    local_zone,
    to_local_date,
    utcnow,
)

# ---------------------------------------------------------------------------
# The catalogue of reports (labels of the guide, Part 8) and who may run them (R-RPT-7).
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportKind:
    key: str
    title: str
    description: str
    permission: str
    direction: str = ""  # "", "both", "received", "sent"
    status_filter: bool = False
    agency_filter: bool = False


REPORTS = {
    kind.key: kind for kind in (
        ReportKind("blank_roi", "Blank ROI",
                   "A printable release of information listing every program with a valid "
                   "Agency MOU in the regions you choose, for a client to sign on paper.",
                   "run_basic_reports"),
        ReportKind("agencies", "Agencies Report",
                   "Programs filtered by region, county, service, insurance type and agency.",
                   "run_basic_reports"),
        ReportKind("delays", "Referral Delays to Agency",
                   "Where every sent and received referral stands, with delays, filterable "
                   "by status.", "run_all_reports", direction="both", status_filter=True),
        ReportKind("outcomes", "Referral Outcomes",
                   "All sent and received referral outcomes of your program or agency.",
                   "run_all_reports", direction="both"),
        ReportKind("from_agency", "Referrals From Agency",
                   "Referrals received from the agencies you choose, in a period.",
                   "run_all_reports", direction="received", agency_filter=True),
        ReportKind("to_agency", "Referrals To Agency",
                   "Referrals sent to the agencies you choose, in a period.",
                   "run_all_reports", direction="sent", agency_filter=True),
    )
}
REFERRAL_REPORTS = ("delays", "outcomes", "from_agency", "to_agency")


def reports_for(user, program):
    """The reports the user may run acting as `program` (R-RPT-7)."""
    return [kind for kind in REPORTS.values() if user.can(kind.permission, program)]


# ---------------------------------------------------------------------------
# CSV (R-SAFE-6) and small numeric helpers
# ---------------------------------------------------------------------------

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A cell a spreadsheet will not run as a formula: text starting with = + - @ tab or
    carriage return gets a leading apostrophe (numbers stay numbers)."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(header, rows):
    """The whole CSV document (UTF-8 BOM so spreadsheets read accents right)."""
    return "".join(csv_lines(header, rows))


def csv_lines(header, rows):
    """CSV lines one by one, for streaming large exports."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    yield "\ufeff"
    for row in [header, *rows] if isinstance(rows, list) else _chain(header, rows):
        writer.writerow([csv_cell(value) for value in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _chain(header, rows):
    yield header
    yield from rows


def days(seconds):
    return None if seconds is None else round(seconds / 86400, 1)


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


# ---------------------------------------------------------------------------
# SVG charts drawn on the server: no script, readable without colour (values printed).
# ---------------------------------------------------------------------------

def escape(value):
    """HTML-escaped text as a plain str (so concatenation never re-escapes markup)."""
    return str(_escape(value))


CHART_COLOURS = ("#0b5394", "#1e7b34", "#8a4b00", "#6a1b9a", "#a4262c", "#37474f")


def svg_bar_chart(items, title, chart_id, width=640):
    """Horizontal bars, one per (label, value); the values are written beside each bar."""
    items = [(str(label), int(value)) for label, value in items]
    bar, gap, label_w = 20, 8, 250
    height = max(1, len(items)) * (bar + gap) + 10
    top = max([v for _, v in items] or [0]) or 1
    scale = (width - label_w - 60) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="report-chart" role="img" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'aria-labelledby="{chart_id}-title"><title id="{chart_id}-title">{escape(title)}: '
             + str(escape(", ".join(f"{label} {value}" for label, value in items) or "no data"))
             + "</title>"]
    for index, (label, value) in enumerate(items):
        y = 5 + index * (bar + gap)
        colour = CHART_COLOURS[index % len(CHART_COLOURS)]
        short = label if len(label) <= 38 else label[:36] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar - 6}" text-anchor="end" font-size="12" '
            f'fill="#1b1b1b">{escape(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{max(1.0, value * scale):.1f}" height="{bar}" '
            f'fill="{colour}"/>'
            f'<text x="{label_w + value * scale + 6:.1f}" y="{y + bar - 6}" font-size="12" '
            f'fill="#1b1b1b">{value}</text>')
    if not items:
        parts.append('<text x="10" y="20" font-size="12" fill="#1b1b1b">No referrals</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def svg_column_chart(items, title, chart_id, width=640, height=220):
    """Vertical columns (referrals per month), value above each column."""
    items = [(str(label), int(value)) for label, value in items]
    n = max(1, len(items))
    base, left = height - 40, 10
    slot = (width - 2 * left) / n
    top = max([v for _, v in items] or [0]) or 1
    scale = (base - 25) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="report-chart" role="img" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'aria-labelledby="{chart_id}-title"><title id="{chart_id}-title">{escape(title)}: '
             + str(escape(", ".join(f"{label} {value}" for label, value in items) or "no data"))
             + "</title>"
             f'<line x1="{left}" y1="{base}" x2="{width - left}" y2="{base}" stroke="#595959"/>']
    for index, (label, value) in enumerate(items):
        x = left + index * slot + slot * 0.15
        w = slot * 0.7
        h = value * scale
        cx = x + w / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#0b5394"/>'
            f'<text x="{cx:.1f}" y="{base - h - 4:.1f}" text-anchor="middle" font-size="11" '
            f'fill="#1b1b1b">{value}</text>'
            f'<text x="{cx:.1f}" y="{base + 14}" text-anchor="middle" font-size="10" '
            f'fill="#1b1b1b">{escape(label[2:] if len(items) > 12 else label)}</text>')
    if not items:
        parts.append(f'<text x="20" y="{base - 10}" font-size="12" fill="#1b1b1b">No referrals</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# ---------------------------------------------------------------------------
# Program search: the Agencies Report, the Blank ROI and the public directory (R-RPT-1,
# R-RPT-2, R-NET-2). Only programs with a valid Agency MOU (R-MOU-3).
# ---------------------------------------------------------------------------

PROGRAM_FILTERS = ("region", "county", "service", "insurance", "agency")


def clean_filters(values):
    """{'region': int|None, ...} from raw strings; anything unreadable counts as no filter."""
    clean = {}
    for name in PROGRAM_FILTERS:
        raw = values.get(name) if values else None
        try:
            clean[name] = int(raw) if raw not in (None, "") else None
        except (TypeError, ValueError):
            clean[name] = None
    return clean


def _serves_counties(county_ids_query):
    """Programs serving one of the counties, telemedicine counting as every county."""
    served = ProgramCounty.select(ProgramCounty.program).where(
        ProgramCounty.county.in_(county_ids_query))
    return Program.id.in_(served) | Program.telemedicine


def program_search(filters=None, region_ids=None, day=None):
    """Programs with a valid Agency MOU matching the filters, ordered by agency and name.
    A program is "in" a region when its agency is there or it serves a county there."""
    filters = clean_filters(filters or {})
    query = (Program.with_valid_mou(day).select(Program, Agency).join(Agency)
             .where(Agency.active).order_by(Agency.name, Program.name))
    if region_ids:
        query = query.where(_in_regions(list(region_ids)))
    if filters["region"]:
        query = query.where(_in_regions([filters["region"]]))
    if filters["county"]:
        query = query.where(_serves_counties([filters["county"]]))
    if filters["service"]:
        query = query.where(Program.id.in_(ProgramService.select(ProgramService.program).where(
            ProgramService.service == filters["service"])))
    if filters["insurance"]:
        query = query.where(Program.id.in_(ProgramInsurance.select(ProgramInsurance.program).where(
            ProgramInsurance.insurance_type == filters["insurance"])))
    if filters["agency"]:
        query = query.where(Program.agency == filters["agency"])
    return query


def _in_regions(region_ids):
    counties = County.select(County.id).where(County.region.in_(region_ids))
    return Agency.region.in_(region_ids) | _serves_counties(counties)


def program_details(programs):
    """Plain dicts of programs with their region, counties, services and insurance names:
    three queries whatever the number of programs (no N+1)."""
    programs = list(programs)
    ids = [p.id for p in programs]
    counties, services, insurance = ({pid: [] for pid in ids} for _ in range(3))
    if ids:
        for pid, name in (ProgramCounty.select(ProgramCounty.program, County.name).join(County)
                          .where(ProgramCounty.program.in_(ids)).order_by(County.name).tuples()):
            counties[pid].append(name)
        for pid, name in (ProgramService.select(ProgramService.program, Service.name).join(Service)
                          .where(ProgramService.program.in_(ids)).order_by(Service.name).tuples()):
            services[pid].append(name)
        for pid, name in (ProgramInsurance.select(ProgramInsurance.program, InsuranceType.name)
                          .join(InsuranceType).where(ProgramInsurance.program.in_(ids))
                          .order_by(InsuranceType.name).tuples()):
            insurance[pid].append(name)
    regions = dict(Region.select(Region.id, Region.name).tuples())
    return [{
        "id": p.id, "name": p.name, "agency": p.agency.name, "agency_id": p.agency_id,
        "region": regions.get(p.agency.region_id, ""), "description": p.description,
        "telemedicine": p.telemedicine, "address": p.address, "city": p.city,
        "zip_code": p.zip_code, "phone": p.phone, "email": p.email, "website": p.website,
        "hours": p.hours, "latitude": p.latitude, "longitude": p.longitude,
        "counties": ["All counties (telemedicine)"] + counties[p.id] if p.telemedicine else counties[p.id],
        "services": services[p.id], "insurance": insurance[p.id],
        "mou_valid_until": p.mou_valid_until,
    } for p in programs]


def filter_choices():
    """The options of the five filters (ids and names), one query each."""
    return {
        "region": list(Region.select(Region.id, Region.name).order_by(Region.name).tuples()),
        "county": list(County.select(County.id, County.name).order_by(County.name).tuples()),
        "service": list(Service.select(Service.id, Service.name).order_by(Service.name).tuples()),
        "insurance": list(InsuranceType.select(InsuranceType.id, InsuranceType.name)
                          .order_by(InsuranceType.name).tuples()),
        "agency": list(Agency.select(Agency.id, Agency.name).where(Agency.active)
                       .order_by(Agency.name).tuples()),
    }


AGENCIES_HEADER = ["Agency", "Program", "Region", "Counties served", "Services",
                   "Insurance types", "Telemedicine", "Phone", "Email", "Address", "MOU valid until"]


def agencies_rows(details):
    for d in details:
        yield [d["agency"], d["name"], d["region"], "; ".join(d["counties"]),
               "; ".join(d["services"]), "; ".join(d["insurance"]),
               "Yes" if d["telemedicine"] else "No", d["phone"], d["email"],
               ", ".join(x for x in (d["address"], d["city"], d["zip_code"]) if x),
               d["mou_valid_until"].isoformat() if d["mou_valid_until"] else ""]


# The public directory keeps results in memory for a few minutes, keyed by the filters, the
# day (MOUs expire at midnight) and a fingerprint of the programs table (any MOU or program
# change moves updated_at or the count, which drops every cached answer).
DIRECTORY_TTL = 300
_directory_cache = {}
_directory_lock = threading.Lock()


def network_fingerprint():
    """Changes whenever a program, its MOU or its county/service/insurance links change
    (max id and count of each link table: an edit deletes and adds rows), or a name the
    directory shows is saved. One statement: every figure is a scalar subquery; asked
    once per request."""
    if has_request_context() and "network_fingerprint" in g:
        return g.network_fingerprint
    figures = [Program.select(fn.MAX(Program.updated_at)), Program.select(fn.COUNT(Program.id)),
               Program.select(fn.MAX(Program.mou_valid_until)),
               Program.select(fn.SUM(Case(None, [(Program.active, Program.id)], 0)))]
    for link in (ProgramCounty, ProgramService, ProgramInsurance):
        figures += [link.select(fn.MAX(link.id)), link.select(fn.COUNT(link.id))]
    figures += [Agency.select(fn.COUNT(Agency.id)),
                Agency.select(fn.SUM(Case(None, [(Agency.active, Agency.id)], 0))),
                # a renamed agency, region, county, service or insurance type (the names
                # shown): the last audited save of one (workflow.save_record)
                AuditEvent.select(fn.MAX(AuditEvent.id)).where(AuditEvent.action.in_(
                    [f"{verb}_{table}" for verb in ("create", "update") for table in (
                        "agency", "region", "county", "service", "insurance_type")]))]
    query = Select(columns=[q.alias(f"f{n}") for n, q in enumerate(figures)]).bind(Program._meta.database)
    fingerprint = tuple(str(value) for value in next(iter(query.tuples())))
    if has_request_context():
        g.network_fingerprint = fingerprint
    return fingerprint


def cached_filter_choices():
    """filter_choices(), kept with the directory's answers (same fingerprint, same TTL)."""
    return _cached(("choices", local_today(), network_fingerprint()), filter_choices)


def _cached(key, build):
    now = time.monotonic()
    with _directory_lock:
        hit = _directory_cache.get(key)
        if hit and now - hit[0] < DIRECTORY_TTL:
            return hit[1]
    value = build()
    with _directory_lock:
        if len(_directory_cache) > 500:
            _directory_cache.clear()
        _directory_cache[key] = (now, value)
    return value


def directory_programs(filters):
    """Program dicts of the public directory for these filters (cached, R-NET-2)."""
    clean = clean_filters(filters)
    key = (tuple(sorted(clean.items())), local_today(), network_fingerprint())
    return _cached(key, lambda: program_details(program_search(clean)))


def clear_directory_cache():
    with _directory_lock:
        _directory_cache.clear()


def directory_program(program_id):
    """One program of the public directory, or None (no valid MOU counts as missing)."""
    program = program_search({}).where(Program.id == program_id).first()
    return program_details([program])[0] if program else None


def team_locator():
    """Per region, its designated administrators (staff contacts: name and email are meant
    to be public here, R-NET-4), and the statewide team."""
    regional = (AdminRegion.select(AdminRegion.region, User.name, User.email).join(User)
                .where(User.is_active & User.is_admin).order_by(User.name).tuples())
    by_region = {}
    for region_id, name, email in regional:
        by_region.setdefault(region_id, []).append({"name": name, "email": email})
    statewide = [{"name": name, "email": email} for name, email in
                 User.select(User.name, User.email).where(
                     User.is_active & User.is_admin & User.admin_statewide)
                 .order_by(User.name).tuples()]
    counties = {}
    for region_id, name in County.select(County.region, County.name).order_by(County.name).tuples():
        counties.setdefault(region_id, []).append(name)
    return {
        "statewide": statewide,
        "regions": [{"id": rid, "name": name, "admins": by_region.get(rid, []),
                     "counties": counties.get(rid, [])}
                    for rid, name in Region.select(Region.id, Region.name)
                    .order_by(Region.name).tuples()],
    }


# ---------------------------------------------------------------------------
# Blank ROI (R-RPT-1)
# ---------------------------------------------------------------------------

BLANK_ROI_FIRST_PAGE = 7  # program rows under the client and information-type block
BLANK_ROI_PAGE = 14  # program rows on the following pages


def new_blank_roi_reference():
    """A reference printed on every page, matched when the signed scan is uploaded."""
    return "B-" + local_today().strftime("%y%m%d") + "-" + secrets.token_hex(3).upper()


def paginate(rows, first, per_page):
    rows = list(rows)
    pages = [rows[:first]]
    rest = rows[first:]
    while rest:
        pages.append(rest[:per_page])
        rest = rest[per_page:]
    return pages


def blank_roi_context(region_ids, reference=None, subject=None):
    """What the Blank ROI template needs: the programs of the regions, cut into pages of
    fixed size so every page can say 'Page i of n' (no header support in Debian's
    wkhtmltopdf) and no row is split."""
    regions = list(Region.select().where(Region.id.in_(list(region_ids) or [0])).order_by(Region.name))
    programs = program_details(program_search(region_ids=[r.id for r in regions]) if regions else [])
    pages = paginate(programs, BLANK_ROI_FIRST_PAGE, BLANK_ROI_PAGE)
    return {
        "regions": regions, "programs": programs, "pages": pages,
        "page_count": len(pages) + 1,  # + the authorization and signature page
        "reference": reference or new_blank_roi_reference(), "info_types": INFO_TYPES,
        "notice": REDISCLOSURE_NOTICE, "printed_on": local_today(), "subject": subject,
    }


def render_blank_roi_pdf(region_ids, reference=None, subject=None):
    """PDF bytes of a Blank ROI for the regions (reusable: needs an app context)."""
    from flask import render_template

    from pdf import render_pdf
    context = blank_roi_context(region_ids, reference, subject)
    return render_pdf(render_template("pdf/blank_roi.html", **context)), context


# ---------------------------------------------------------------------------
# Referral reports (R-RPT-3..6): a few aggregate queries on the Referral indexes.
# ---------------------------------------------------------------------------

DELAYED = "Delayed"


@dataclass
class Scope:
    """Whose referrals: one program, or every program of one agency."""
    kind: str  # program or agency
    id: int
    label: str

    def received(self):
        return Referral.to_program == self.id if self.kind == "program" else Referral.to_agency == self.id

    def sent(self):
        return Referral.from_program == self.id if self.kind == "program" else Referral.from_agency == self.id


def scope_choices(user, program):
    """The scopes a user may report on: gatekeepers their program and its agency;
    administrators every program and agency of their regions (R-RPT-7)."""
    if user.is_admin:
        agencies = list(Agency.visible_to(user).order_by(Agency.name))
        programs = list(Program.select(Program, Agency).join(Agency)
                        .where(Agency.id.in_([a.id for a in agencies]) if agencies else Agency.id.is_null())
                        .order_by(Agency.name, Program.name))
        choices = [Scope("agency", a.id, f"{a.name} (all programs)") for a in agencies]
        choices += [Scope("program", p.id, f"{p.agency.name} — {p.name}") for p in programs]
        return choices
    if program is None:
        return []
    return [Scope("program", program.id, f"{program.agency.name} — {program.name}"),
            Scope("agency", program.agency_id, f"{program.agency.name} (all programs)")]


def status_choices():
    """The status filter of Referral Delays to Agency: delays, the states, the outcomes."""
    states = [REFERRAL_STATE_LABELS[s] for s in REFERRAL_STATE_LABELS
              if s not in (REFERRAL_PENDING, REFERRAL_DISCARDED)]
    return [DELAYED] + states + list(STATUSES)


def local_day_start(day):
    """Midnight of a local date as a naive UTC datetime (what the database stores)."""
    moment = dt.datetime.combine(day, dt.time(0), tzinfo=local_zone())
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class ReferralReport:
    kind: ReportKind
    scope: Scope
    start: dt.date
    end: dt.date
    status: str = ""
    agency_ids: list = field(default_factory=list)
    total: int = 0
    received: int = 0
    sent: int = 0
    delayed: int = 0
    by_state: dict = field(default_factory=dict)
    by_status: dict = field(default_factory=dict)
    by_month: dict = field(default_factory=dict)
    acknowledged: int = 0
    with_outcome: int = 0
    median_ack_seconds: float = None
    median_outcome_seconds: float = None
    rows: list = field(default_factory=list)

    @property
    def median_ack_days(self):
        return days(self.median_ack_seconds)

    @property
    def median_outcome_days(self):
        return days(self.median_outcome_seconds)

    def status_chart(self):
        items = sorted(self.by_status.items(), key=lambda kv: (-kv[1], kv[0]))
        return svg_bar_chart(items, "Referrals by status", f"chart-status-{self.kind.key}")

    def month_chart(self):
        return svg_column_chart(sorted(self.by_month.items()), "Referrals per month",
                                f"chart-month-{self.kind.key}")


def _seconds_between(start, end):
    if is_sqlite():
        return (fn.julianday(end) - fn.julianday(start)) * 86400
    return fn.date_part("epoch", end - start)


def _month_of(column):
    if is_sqlite():
        return fn.strftime("%Y-%m", column)
    return fn.to_char(column, "YYYY-MM")


def report_halves(kind, scope, start, end, status="", agency_ids=()):
    """The report's rows as (direction, WHERE) halves, received and sent apart: each half
    walks its own covering index (issue 6), where an OR of the two columns reads the table.
    A referral a program sends to itself counts once, as received."""
    filters = _report_filters(kind, start, end, status, agency_ids)
    if kind.direction == "received":
        return [("received", scope.received() & filters)]
    if kind.direction == "sent":
        return [("sent", scope.sent() & filters)]
    return [("received", scope.received() & filters),
            ("sent", scope.sent() & ~scope.received() & filters)]


def _report_filters(kind, start, end, status, agency_ids):
    """Period, agencies and status: the part of a report's WHERE that is not its scope."""
    where = (Referral.sent_at.is_null(False)
             & (Referral.sent_at >= local_day_start(start))
             & (Referral.sent_at < local_day_start(end + dt.timedelta(days=1))))
    if agency_ids and kind.direction == "received":
        where &= Referral.from_agency.in_(list(agency_ids))
    elif agency_ids and kind.direction == "sent":
        where &= Referral.to_agency.in_(list(agency_ids))
    if status == DELAYED:
        where &= Referral.delayed_at.is_null(False) & (Referral.state == REFERRAL_SENT)
    elif status in STATUSES:
        where &= Referral.status == status
    elif status:
        codes = [code for code, label in REFERRAL_STATE_LABELS.items() if label == status]
        where &= Referral.state.in_(codes or ["-"])
    return where


def _union_all(queries):
    """UNION ALL of the halves' queries; each wrapped as a subquery so that it may keep its
    own ORDER BY and LIMIT (SQLite refuses them on the members of a compound)."""
    if len(queries) == 1:
        return queries[0]
    first, *others = [query.select_from(SQL("*")) if query._limit else query
                      for query in queries]
    for other in others:
        first = first + other
    return first


def _report_groups(halves):
    """Counts by direction, state, status, delay and month: one statement, each half
    grouped on its own index (COUNT(*), not COUNT(id): PostgreSQL's index holds no id)."""
    delayed = Case(None, [(Referral.delayed_at.is_null(False), 1)], 0)
    month = _month_of(Referral.sent_at)
    return _union_all([
        Referral.select(Value(side).alias("d"), Referral.state, Referral.status,
                        delayed.alias("late"), month.alias("m"), fn.COUNT(SQL("*")),
                        fn.COUNT(Referral.acknowledged_at), fn.COUNT(Referral.outcome_at))
        .where(where)
        # By position: PostgreSQL does not match parameterised CASE expressions.
        .group_by(SQL("2, 3, 4, 5"))
        for side, where in halves]).tuples()


def _report_medians(halves, acknowledged, with_outcome):
    """(median seconds to acknowledge, to outcome) over both halves in one statement:
    percentile_cont on PostgreSQL; on SQLite the middle row(s) by ORDER BY/OFFSET (the
    counts come from the groups), averaged here as before."""
    ack = _seconds_between(Referral.sent_at, Referral.acknowledged_at)
    out = _seconds_between(Referral.sent_at, Referral.outcome_at)
    if not is_sqlite():
        rows = _union_all([Referral.select(ack.alias("a"), out.alias("o")).where(where)
                           for _, where in halves])
        rows = rows.alias("r")

        def median_of(column):
            return NodeList((fn.percentile_cont(0.5), SQL("WITHIN GROUP"),
                             EnclosedNodeList([NodeList((SQL("ORDER BY"), rows.c[column]))])))
        values = Select([rows], [median_of("a"), median_of("o")]).bind(database).tuples()
        return tuple(float(v) if v is not None else None for v in next(iter(values)))
    parts = []
    for key, seconds, end_col, count in (("a", ack, Referral.acknowledged_at, acknowledged),
                                         ("o", out, Referral.outcome_at, with_outcome)):
        if not count:
            continue
        middle = _union_all([Referral.select(seconds.alias("s")).where(where & end_col.is_null(False))
                             for _, where in halves]).alias(f"m{key}")
        parts.append(Select([middle], [Value(key).alias("k"), middle.c.s])
                     .order_by(middle.c.s).limit(2 - count % 2).offset((count - 1) // 2)
                     .select_from(SQL("*")))
    if not parts:
        return None, None
    values = {"a": [], "o": []}
    for key, value in _union_all(parts).bind(database).tuples():
        values[key].append(value)
    return tuple(sum(v) / len(v) if v else None for v in (values["a"], values["o"]))


def referral_report(kind_key, scope, start, end, status="", agency_ids=(), user=None,
                    program=None, row_limit=200):
    """Counts, medians, chart data and up to row_limit rows of one referral report:
    three statements whatever the period (groups, medians, rows)."""
    kind = REPORTS[kind_key]
    report = ReferralReport(kind, scope, start, end, status if kind.status_filter else "",
                            list(agency_ids) if kind.agency_filter else [])
    halves = report_halves(kind, scope, start, end, report.status, report.agency_ids)
    for side, state, status_label, late, month_key, count, acked, outcomes in _report_groups(halves):
        report.total += count
        setattr(report, side, getattr(report, side) + count)
        report.delayed += count if late and state == REFERRAL_SENT else 0
        label = REFERRAL_STATE_LABELS.get(state, state)
        report.by_state[label] = report.by_state.get(label, 0) + count
        shown = status_label or label
        report.by_status[shown] = report.by_status.get(shown, 0) + count
        report.by_month[month_key] = report.by_month.get(month_key, 0) + count
        report.acknowledged += acked
        report.with_outcome += outcomes
    if report.acknowledged or report.with_outcome:
        report.median_ack_seconds, report.median_outcome_seconds = _report_medians(
            halves, report.acknowledged, report.with_outcome)
    if row_limit != 0:  # 0: figures only; None: every row (downloads)
        report.rows = list(report_rows(halves, scope, user, program, limit=row_limit))
    return report


ROW_HEADER = ["Referral", "Sent", "Direction", "From agency", "From program", "To agency",
              "To program", "Client", "State", "Status", "Acknowledged", "Days to acknowledge",
              "Outcome", "Days to outcome", "Delayed"]


def report_rows(halves, scope, user, program, limit=None):
    """Row dicts, newest first, with joins (no N+1). The client's name is selected only
    for referrals the acting program may see (Referral.visible_to) and, on the receiving
    side, only while the referral's ROI is signed, unexpired and covers contact details.
    With a limit, the newest ids of each half come first from its index, and only those
    rows are joined and checked (issue 6)."""
    from_p, to_p, from_a, to_a = Program.alias(), Program.alias(), Agency.alias(), Agency.alias()
    if limit:
        where = Referral.id.in_(_union_all([
            Referral.select(Referral.id).where(half)
            .order_by(Referral.sent_at.desc(), Referral.id.desc()).limit(limit)
            for _, half in halves]))
    else:
        where = reduce(operator.or_, [half for _, half in halves])
    if user is not None and program is not None:
        visible = Referral.visible_condition(user, program)
        first = Case(None, [(visible, Subject.first_name)], None)
        last = Case(None, [(visible, Subject.last_name)], None)
    else:
        first = last = Case(None, [(Referral.id.is_null(), Subject.first_name)], None)
    query = (Referral.select(
        Referral.id, Referral.sent_at, Referral.state, Referral.status, Referral.acknowledged_at,
        Referral.outcome_at, Referral.delayed_at, Referral.from_program, Referral.to_program,
        from_a.name, from_p.name, to_a.name, to_p.name, first, last,
        Roi.state, Roi.expires_on, Roi.info_types, scope.received(), Referral.subject)
        .join(from_p, on=(Referral.from_program == from_p.id))
        .switch(Referral).join(to_p, on=(Referral.to_program == to_p.id))
        .switch(Referral).join(from_a, on=(Referral.from_agency == from_a.id))
        .switch(Referral).join(to_a, on=(Referral.to_agency == to_a.id))
        .switch(Referral).join(Subject, on=(Referral.subject == Subject.id))
        .switch(Referral).join(Roi, JOIN.LEFT_OUTER, on=(Referral.roi == Roi.id))
        .where(where).order_by(Referral.sent_at.desc(), Referral.id.desc()).tuples())
    if limit:
        query = query.limit(limit)
    today = local_today()
    program_id = program.id if program is not None else None
    for (rid, sent_at, state, status, acked, outcome_at, delayed_at, from_id, to_id, from_agency,
         from_program, to_agency, to_program, first_name, last_name, roi_state, roi_expires,
         roi_types, received, subject_id) in query:
        client = ""
        if first_name is not None:
            consent_ok = (roi_state == ROI_SIGNED and roi_expires is not None
                          and roi_expires >= today and INFO_CONTACT in (roi_types or "").split(","))
            if from_id == program_id or consent_ok:
                client = f"{first_name} {last_name}"
        ack_s = (acked - sent_at).total_seconds() if acked and sent_at else None
        out_s = (outcome_at - sent_at).total_seconds() if outcome_at and sent_at else None
        yield {
            "id": rid, "sent": to_local_date(sent_at) if sent_at else None,
            "direction": "Received" if received else "Sent",
            "from_agency": from_agency, "from_program": from_program,
            "to_agency": to_agency, "to_program": to_program, "client": client,
            "subject_id": subject_id if client else None,
            "state": REFERRAL_STATE_LABELS.get(state, state), "status": status or "",
            "acknowledged": to_local_date(acked) if acked else None,
            "ack_days": days(ack_s), "outcome": to_local_date(outcome_at) if outcome_at else None,
            "outcome_days": days(out_s), "delayed": bool(delayed_at),
        }


def row_values(row):
    return [row["id"], row["sent"].isoformat() if row["sent"] else "", row["direction"],
            row["from_agency"], row["from_program"], row["to_agency"], row["to_program"],
            row["client"] or "Not shown", row["state"], row["status"],
            row["acknowledged"].isoformat() if row["acknowledged"] else "",
            row["ack_days"], row["outcome"].isoformat() if row["outcome"] else "",
            row["outcome_days"], "Yes" if row["delayed"] else "No"]


PDF_ROW_HEADER = ["#", "Sent", "Direction", "From", "To", "Client", "State", "Status",
                  "Days to ack.", "Days to outcome", "Delayed"]
PDF_ROW_WIDTHS = [4, 8, 7, 14, 14, 14, 8, 13, 6, 6, 6]  # percent of the page width


def pdf_row_values(row):
    """The printed row: agency and program together so that each cell fits one line."""
    return [row["id"], row["sent"].isoformat() if row["sent"] else "", row["direction"],
            f"{row['from_agency']} — {row['from_program']}",
            f"{row['to_agency']} — {row['to_program']}", row["client"] or "Not shown",
            row["state"], row["status"], row["ack_days"], row["outcome_days"],
            "Yes" if row["delayed"] else "No"]


def summary_lines(report):
    """Figures as (label, value) pairs for the screen, the CSV head and the PDF."""
    def fmt(value):
        return "—" if value is None else f"{value} days"
    return [
        ("Referrals", report.total),
        ("Received", report.received),
        ("Sent", report.sent),
        ("Delayed (not yet acknowledged)", report.delayed),
        ("Acknowledged", report.acknowledged),
        ("With an outcome", report.with_outcome),
        ("Median time to acknowledge", fmt(report.median_ack_days)),
        ("Median time to outcome", fmt(report.median_outcome_days)),
    ]


REPORT_PDF_ROWS = 26  # rows per PDF page (landscape), cells kept to one line


def render_report_pdf(title, context_lines, summary, charts, header, rows, landscape=True,
                      widths=None):
    """PDF bytes of a table report: a summary page, then fixed-size pages of rows."""
    from flask import render_template

    from pdf import render_pdf
    pages = paginate(rows, REPORT_PDF_ROWS, REPORT_PDF_ROWS) if rows else []
    html = render_template("pdf/table_report.html", title=title, context_lines=context_lines,
                           summary=summary, charts=charts, header=header, pages=pages,
                           page_count=len(pages) + 1, printed_on=local_today(),
                           row_count=len(rows), widths=widths)
    return render_pdf(html, orientation="Landscape" if landscape else "Portrait")


# ---------------------------------------------------------------------------
# Care team (R-NET-3)
# ---------------------------------------------------------------------------

def care_team(user, program, subject, day=None):
    """Programs connected to the subject through signed, valid ROIs that name the acting
    program (R-ROI-3: they may see each other), and the subject's referrals the acting
    program is party to or that were made under such an ROI. Administrators see all."""
    day = day or local_today()
    valid = (Roi.subject == subject) & (Roi.state == ROI_SIGNED) & (Roi.expires_on >= day)
    if not user.is_admin:
        mine = RoiProgram.select(RoiProgram.roi).where(RoiProgram.program == program)
        valid &= Roi.id.in_(mine)
    rois = list(Roi.select().where(valid).order_by(Roi.expires_on.desc()))
    roi_ids = [r.id for r in rois]
    links = (RoiProgram.select(RoiProgram, Program, Agency).join(Program).join(Agency)
             .where(RoiProgram.roi.in_(roi_ids or [0])).order_by(Agency.name, Program.name))
    programs = {}
    for link in links:
        roi = next(r for r in rois if r.id == link.roi_id)
        entry = programs.setdefault(link.program_id, {
            "program": link.program.name, "agency": link.program.agency.name,
            "phone": link.program.phone, "consent_until": roi.expires_on, "info_types": set(),
            "referrals": 0})
        entry["consent_until"] = max(entry["consent_until"], roi.expires_on)
        entry["info_types"] |= roi.info_type_set
    from_p, to_p, from_a, to_a = Program.alias(), Program.alias(), Agency.alias(), Agency.alias()
    where = (Referral.subject == subject) & (Referral.state != REFERRAL_DISCARDED)
    if not user.is_admin:
        party = (Referral.from_program == program) | (Referral.to_program == program)
        where &= party | Referral.roi.in_(roi_ids or [0])
        where &= (Referral.state != REFERRAL_PENDING) | (Referral.from_program == program)
    referrals = []
    for ref in (Referral.select(Referral, from_p, to_p, from_a, to_a)
                .join(from_p, on=(Referral.from_program == from_p.id))
                .join(from_a, on=(from_p.agency == from_a.id))
                .switch(Referral).join(to_p, on=(Referral.to_program == to_p.id))
                .join(to_a, on=(to_p.agency == to_a.id))
                .where(where).order_by(Referral.updated_at.desc())):
        if ref.to_program_id in programs:
            programs[ref.to_program_id]["referrals"] += 1
        referrals.append({
            "id": ref.id, "from": f"{ref.from_program.agency.name} — {ref.from_program.name}",
            "to": f"{ref.to_program.agency.name} — {ref.to_program.name}",
            "state": REFERRAL_STATE_LABELS.get(ref.state, ref.state), "status": ref.status or "",
            "sent": to_local_date(ref.sent_at) if ref.sent_at else None,
            "updated": to_local_date(ref.updated_at) if ref.updated_at else None,
        })
    substance = any(INFO_SUBSTANCE_USE in entry["info_types"] for entry in programs.values())
    return {"subject": subject, "programs": list(programs.values()), "referrals": referrals,
            "substance_use": substance, "printed_on": day, "notice": REDISCLOSURE_NOTICE}


# ---------------------------------------------------------------------------
# Administrators' dashboard
# ---------------------------------------------------------------------------

def admin_dashboard(user, now=None):
    """Figures of the last 30 days for the administrator's scope (statewide, or the
    agencies of their regions): referrals sent, acknowledged, closed; delayed referrals;
    MOUs expiring within 30 days; undelivered emails and texts."""
    if not user.is_admin:
        return None
    now = now or utcnow()
    since = now - dt.timedelta(days=30)
    today = local_today()
    scoped = Referral.select()
    programs = Program.select(Program, Agency).join(Agency).where(Program.active)
    emails = Outbox.select().where(Outbox.channel == "email")
    texts = Outbox.select().where(Outbox.channel == "sms")
    if not user.admin_statewide:
        agencies = Agency.select(Agency.id).where(Agency.region.in_(user.admin_region_ids() or [0]))
        scoped = scoped.where(Referral.from_agency.in_(agencies) | Referral.to_agency.in_(agencies))
        programs = programs.where(Agency.id.in_(agencies))
        staff = (User.select(User.email).join(Membership, on=(Membership.user == User.id))
                 .join(Program, on=(Membership.program == Program.id))
                 .where(Program.agency.in_(agencies)))
        emails = emails.where(Outbox.recipient.in_(staff))
        phones = Subject.select(Subject.phone).join(
            Program, on=(Subject.created_by_program == Program.id)).where(Program.agency.in_(agencies))
        texts = texts.where(Outbox.recipient.in_(phones))
    undelivered = (Outbox.state == OUTBOX_FAILED) | (
        (Outbox.state == OUTBOX_PENDING) & (Outbox.attempts > 0))
    expiring = list(programs.where(
        (Program.mou_valid_until >= today)
        & (Program.mou_valid_until < today + dt.timedelta(days=MOU_VALID_DAYS_WARNING)))
        .order_by(Program.mou_valid_until))
    return {
        "sent": scoped.where(Referral.sent_at >= since).count(),
        "acknowledged": scoped.where(Referral.acknowledged_at >= since).count(),
        "closed": scoped.where((Referral.closed_at >= since)
                               & (Referral.state == REFERRAL_CLOSED)).count(),
        "delayed": scoped.where((Referral.state == REFERRAL_SENT)
                                & Referral.delayed_at.is_null(False)).count(),
        "expiring": [{"program": p.name, "agency": p.agency.name, "until": p.mou_valid_until}
                     for p in expiring],
        "emails_undelivered": emails.where(undelivered).count(),
        "texts_undelivered": texts.where(undelivered).count(),
        "scope": "Statewide" if user.admin_statewide else ", ".join(
            r.name for r in Region.select().where(Region.id.in_(user.admin_region_ids() or [0]))
            .order_by(Region.name)),
    }


