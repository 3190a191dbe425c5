"""Reports (R-RPT-1..7): figures against hand-made referrals, downloads, role visibility."""

import csv
import glob
import os
import datetime as dt
import io
import math
import subprocess

import pytest
from pypdf import PdfReader

import models
import reporting
from tests.conftest import ARTIFACTS, make_agency, make_program, make_roi, make_subject, make_user

NOW = models.utcnow().replace(microsecond=0)


def ago(days):
    return NOW - dt.timedelta(days=days)


def make_referral(subject, roi, from_program, to_program, sent_days_ago, ack_after=None,
                  outcome_after=None, state=models.REFERRAL_SENT, status=None, delayed=False,
                  created_by=None):
    """A referral with chosen timestamps (days after sending), inserted directly."""
    sent = ago(sent_days_ago) if sent_days_ago is not None else None
    return models.Referral.create(
        subject=subject, roi=roi, from_program=from_program, from_agency=from_program.agency_id,
        to_program=to_program, to_agency=to_program.agency_id, created_by=created_by,
        state=state, status=status, sent_at=sent,
        acknowledged_at=sent + dt.timedelta(days=ack_after) if ack_after is not None else None,
        assigned_at=sent + dt.timedelta(days=ack_after) if ack_after is not None else None,
        outcome_at=sent + dt.timedelta(days=outcome_after) if outcome_after is not None else None,
        closed_at=sent + dt.timedelta(days=outcome_after)
        if state == models.REFERRAL_CLOSED else None,
        delayed_at=sent + dt.timedelta(days=8) if delayed else None,
        updated_at=sent or NOW)


@pytest.fixture
def referrals(network):
    """Hand-made referrals of program A1 (agency A) with known figures:
    A1 -> B1: r1 ack 1 d, outcome 10 d (closed); r2 ack 3 d (enrolled); r3 delayed, not
    acknowledged; r4 ack 2 d. B1 -> A1: r5 ack 5 d, outcome 6 d (declined services).
    A2 -> B1: r6 ack 4 d. Outside: a draft, a referral sent 400 days ago."""
    n = network
    n.client = make_subject(n.a1, n.gk_a1, first_name="Philomena", last_name="Quarterstaff")
    n.client_b = make_subject(n.b1, n.gk_b1, first_name="Barnaby", last_name="Underhill",
                              phone="+14065550177")
    n.client_a2 = make_subject(n.a2, None, first_name="Cressida", last_name="Vantablack")
    roi = make_roi(n.client, n.a1, others=(n.b1,))
    roi_b = make_roi(n.client_b, n.b1, others=(n.a1,))
    roi_a2 = make_roi(n.client_a2, n.a2, others=(n.b1,))
    closed, assigned = models.REFERRAL_CLOSED, models.REFERRAL_ASSIGNED
    n.r1 = make_referral(n.client, roi, n.a1, n.b1, 45, 1, 10, closed,
                         "Closed- Successful completion", created_by=n.gk_a1)
    n.r2 = make_referral(n.client, roi, n.a1, n.b1, 31, 3, None, assigned,
                         "Enrolled in Services", created_by=n.pr_a1)
    n.r3 = make_referral(n.client, roi, n.a1, n.b1, 20, delayed=True, created_by=n.gk_a1)
    n.r4 = make_referral(n.client, roi, n.a1, n.b1, 10, 2, None, assigned, created_by=n.gk_a1)
    n.r5 = make_referral(n.client_b, roi_b, n.b1, n.a1, 15, 5, 6, closed,
                         "Not Started- Declined services", created_by=n.gk_b1)
    n.r6 = make_referral(n.client_a2, roi_a2, n.a2, n.b1, 12, 4, None, assigned)
    make_referral(n.client, roi, n.a1, n.b1, None, state=models.REFERRAL_PENDING)
    make_referral(n.client, roi, n.a1, n.b1, 400, 1, 2, closed, "Other")
    return n


def scope_of(program):
    return reporting.Scope("program", program.id, program.name)


def run(kind, scope, **kw):
    start, end = kw.pop("start", (NOW - dt.timedelta(days=365)).date()), kw.pop("end", models.local_today())
    return reporting.referral_report(kind, scope, start, end, **kw)


def test_r_rpt_4_outcomes_counts_and_medians(referrals):
    """R-RPT-4: all sent and received outcomes of the program; medians by hand."""
    report = run("outcomes", scope_of(referrals.a1))
    assert (report.total, report.sent, report.received) == (5, 4, 1)
    assert report.by_status == {"Closed- Successful completion": 1, "Enrolled in Services": 1,
                                "Active": 1, "Assigned": 1, "Not Started- Declined services": 1}
    assert report.acknowledged == 4 and report.with_outcome == 2
    assert report.median_ack_days == 2.5  # 1, 2, 3, 5
    assert report.median_outcome_days == 8.0  # 6, 10
    assert report.delayed == 1
    assert sum(report.by_month.values()) == 5


def test_r_rpt_4_agency_scope_includes_every_program_of_the_agency(referrals):
    """R-RPT-4: the agency's figures add program A2 (ack 4 d): median of 1..5 is 3."""
    n = referrals
    report = run("outcomes", reporting.Scope("agency", n.agency_a.id, "Agency A"))
    assert report.total == 6
    assert report.median_ack_days == 3.0


@pytest.mark.parametrize("status, expected", [
    ("", {"r1", "r2", "r3", "r4", "r5"}),
    ("Delayed", {"r3"}),
    ("Closed", {"r1", "r5"}),
    ("Active", {"r3"}),
    ("Enrolled in Services", {"r2"}),
    ("Not Started- Declined services", {"r5"}),
    ("Other", set()),
])
def test_r_rpt_3_delays_filter_by_status(referrals, status, expected):
    """R-RPT-3: where every referral stands, filterable by status (and delays)."""
    report = run("delays", scope_of(referrals.a1), status=status, user=referrals.gk_a1,
                 program=referrals.a1)
    ids = {row["id"] for row in report.rows}
    assert ids == {getattr(referrals, name).id for name in expected}
    assert report.total == len(expected)


def test_r_rpt_5_referrals_from_agency(referrals):
    """R-RPT-5: referrals received from the chosen agencies in a period."""
    n = referrals
    from_b = run("from_agency", scope_of(n.a1), agency_ids=[n.agency_b.id])
    assert from_b.total == 1 and from_b.median_ack_days == 5.0
    from_a = run("from_agency", scope_of(n.b1), agency_ids=[n.agency_a.id])
    assert from_a.total == 5  # r1..r4 from A1 and r6 from A2
    assert from_a.median_ack_days == 2.5  # 1, 2, 3, 4
    assert run("from_agency", scope_of(n.b1), agency_ids=[n.agency_b.id]).total == 0
    # Period: only the last 14 days (r4 sent 10 days ago, r6 12 days ago).
    recent = run("from_agency", scope_of(n.b1), start=ago(14).date())
    assert recent.total == 2


def test_r_rpt_6_referrals_to_agency(referrals):
    """R-RPT-6: referrals sent to the chosen agencies in a period, with medians."""
    n = referrals
    report = run("to_agency", scope_of(n.a1), agency_ids=[n.agency_b.id])
    assert report.total == 4 and report.sent == 4 and report.received == 0
    assert report.median_ack_days == 2.0  # 1, 2, 3
    assert report.median_outcome_days == 10.0
    assert run("to_agency", scope_of(n.a1), agency_ids=[n.agency_a.id]).total == 0
    everything = run("to_agency", scope_of(n.a1), start=(NOW - dt.timedelta(days=500)).date())
    assert everything.total == 5  # the referral sent 400 days ago; the draft never


def test_r_rpt_3_report_queries_are_few(referrals):
    """R-RPT-3: figures come from a few aggregate queries, whatever the row count."""
    from playhouse.test_utils import count_queries
    with count_queries() as counter:
        run("delays", scope_of(referrals.a1), user=referrals.gk_a1, program=referrals.a1)
    assert counter.count <= 5


def test_r_rpt_4_client_names_only_where_visible(referrals):
    """R-RPT-4: names only for referrals the acting program may see and the ROI allows."""
    n = referrals
    report = run("outcomes", reporting.Scope("agency", n.agency_a.id, "A"), user=n.gk_a1, program=n.a1)
    names = {row["id"]: row["client"] for row in report.rows}
    assert names[n.r1.id] == "Philomena Quarterstaff"
    assert names[n.r5.id] == "Barnaby Underhill"
    assert names[n.r6.id] == ""  # A2's referral: not visible to A1
    models.Roi.update(state=models.ROI_REVOKED).where(models.Roi.id == n.r5.roi_id).execute()
    report = run("outcomes", scope_of(n.a1), user=n.gk_a1, program=n.a1)
    assert {row["id"]: row["client"] for row in report.rows}[n.r5.id] == ""
    admin_rows = run("outcomes", scope_of(n.a1), user=n.admin, program=None).rows
    assert all(row["client"] == "" for row in admin_rows)


@pytest.mark.parametrize("kind", reporting.REFERRAL_REPORTS)
def test_r_rpt_7_referral_reports_screen_csv_pdf(referrals, browser, kind):
    """R-RPT-7: each referral report runs on screen, as CSV and as a PDF; runs are audited."""
    n = referrals
    browser.login(n.gk_a1)
    page = browser.get(f"/reports/referrals/{kind}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert reporting.REPORTS[kind].title in text and "<svg" in text and "Median time to acknowledge" in text
    csv_resp = browser.get(f"/reports/referrals/{kind}?download=csv")
    assert csv_resp.status_code == 200 and csv_resp.mimetype == "text/csv"
    assert "attachment" in csv_resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(csv_resp.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0] == reporting.ROW_HEADER
    pdf = browser.get(f"/reports/referrals/{kind}?download=pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(pdf.data))
    body = "\n".join(pdf_text(page) for page in reader.pages)
    assert reporting.REPORTS[kind].title in body and "Page 1 of" in body
    audits = models.AuditEvent.select().where(models.AuditEvent.action == f"run_report:{kind}")
    assert audits.where(models.AuditEvent.subject.is_null()).count() == 3
    # R-SAFE-1 (battery item 15): and one row per client named, on each of the three.
    named = [row for row in rows[1:] if row[7] != "Not shown"]
    assert audits.where(models.AuditEvent.subject.is_null(False)).count() == 3 * len(named)


def test_r_rpt_3_figures_on_screen(referrals, browser):
    """R-RPT-3: the screen shows the same counts and medians as the hand count."""
    browser.login(referrals.gk_a1)
    text = browser.get("/reports/referrals/outcomes").get_data(as_text=True)
    assert "<dd>2.5 days</dd>" in text and "<dd>8.0 days</dd>" in text
    assert "Philomena Quarterstaff" in text and "Cressida" not in text


@pytest.mark.parametrize("query, message", [
    ("start=2026-05-01&end=2026-01-01", "The end of the period is before its start."),
    ("start=not-a-date", "Not a valid date value."),
    ("scope=agency:99999", "Not a valid choice."),
    ("status=Bogus", "Not a valid choice."),
])
def test_r_rpt_3_bad_filters_get_a_message(referrals, browser, query, message):
    """R-RPT-3: bad filters are a clear message, never a 500 (R-SAFE-2)."""
    browser.login(referrals.gk_a1)
    response = browser.get(f"/reports/referrals/delays?{query}")
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)


def test_r_rpt_4_large_pdf_has_fixed_rows_per_page(network, browser, tmp_path):
    """R-RPT-4: a report of 100 referrals is a summary page plus fixed-size pages of rows, each
    row whole (fixed rows per page; pdftoppm renders every page)."""
    n = network
    subject = make_subject(n.a1, n.gk_a1)
    roi = make_roi(subject, n.a1, others=(n.b1,))
    with models.database.atomic():
        for i in range(100):
            make_referral(subject, roi, n.a1, n.b1, 1 + i % 90, 1 + i % 4, created_by=n.gk_a1,
                          state=models.REFERRAL_ASSIGNED)
    browser.login(n.gk_a1)
    pdf = browser.get("/reports/referrals/outcomes?download=pdf").data
    reader = PdfReader(io.BytesIO(pdf))
    expected = 1 + math.ceil(100 / reporting.REPORT_PDF_ROWS)
    assert len(reader.pages) == expected
    assert f"Page {expected} of {expected}" in pdf_text(reader.pages[-1])
    assert len(check_pdf_renders(pdf, tmp_path, "outcomes")) == expected
    assert subject.first_name in pdf_text(reader.pages[1])


def pdf_text(page):
    """pypdf's text of a page with its whitespace (tabs from this font) made single spaces."""
    return " ".join(page.extract_text().split())


def check_pdf_renders(data, tmp_path, name):
    """pdftoppm renders every page; the images are kept in tests/artifacts to look at."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(data)
    prefix = os.path.join(ARTIFACTS, f"pdf_{name}")
    for old in glob.glob(prefix + "-*.png"):
        os.remove(old)
    subprocess.run(["pdftoppm", "-png", "-r", "50", str(path), prefix], check=True)
    return sorted(glob.glob(prefix + "-*.png"))


def test_r_rpt_1_blank_roi_pdf(network, browser, tmp_path):
    """R-RPT-1: the chosen regions' programs with a valid MOU, each with a box; the
    information types, signature lines, reference and 42 CFR Part 2 notice; page count
    stated on every page and matching the file."""
    n = network
    gallatin = models.Region.get(models.Region.name == "Region 10 - Gallatin")
    for i in range(25):
        make_program(n.agency_a, f"Gallatin Service {i:02d}",
                     services=("Primary care", "Immunizations", "Cancer screening"))
    make_program(n.agency_a, "Lapsed Program", mou=False)
    expired = make_program(n.agency_a, "Expired Program")
    models.Program.update(mou_valid_until=models.local_today() - dt.timedelta(days=1)).where(
        models.Program.id == expired.id).execute()
    browser.login(n.pr_a1)
    form = browser.get("/reports/blank-roi").get_data(as_text=True)
    assert "Region 10 - Gallatin" in form and 'type="checkbox"' in form
    response = browser.get(f"/reports/blank-roi?regions={gallatin.id}&download=pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    reader = PdfReader(io.BytesIO(response.data))
    text = "\n".join(pdf_text(page) for page in reader.pages)
    programs = 27  # A1, A2 and 25 new ones; B1 serves Missoula only
    pages = 1 + math.ceil((programs - reporting.BLANK_ROI_FIRST_PAGE) / reporting.BLANK_ROI_PAGE) + 1
    assert len(reader.pages) == pages
    assert f"{programs} program(s) with a valid Agency MOU" in text
    assert "Gallatin Service 24" in text and "Program A1" in text
    assert "Lapsed Program" not in text and "Expired Program" not in text and "Program B1" not in text
    assert "42 CFR" in text and "Signature" in text and "Substance use (42 CFR Part 2)" in text
    reference = response.headers["Content-Disposition"].split("blank-roi-")[1].split(".pdf")[0]
    for number, page in enumerate(reader.pages, 1):
        assert f"Page {number} of {pages}" in pdf_text(page)
        assert reference in pdf_text(page)
    audit = models.AuditEvent.get(models.AuditEvent.action == "run_report:blank_roi")
    assert reference in audit.detail
    assert len(check_pdf_renders(response.data, tmp_path, "blank_roi")) == pages


def test_r_rpt_1_blank_roi_needs_a_region(network, browser):
    """R-RPT-1: without a region, a message and the form again."""
    browser.login(network.pr_a1)
    response = browser.get("/reports/blank-roi?download=pdf")
    assert response.status_code == 200 and "Choose at least one region." in response.get_data(as_text=True)


FILTER_CASES = [
    ("region", "Region 9 - Missoula", {"Missoula Food Bank", "Program B1", "Statewide Telehealth"}),
    ("county", "Missoula", {"Missoula Food Bank", "Program B1", "Statewide Telehealth"}),
    ("service", "Food pantry / food bank", {"Missoula Food Bank"}),
    ("insurance", "Medicare", {"Statewide Telehealth"}),
    ("agency", "Agency B", {"Missoula Food Bank", "Program B1"}),
]


@pytest.fixture
def directory_network(network):
    make_program(network.agency_b, "Missoula Food Bank", counties=("Missoula",),
                 services=("Food pantry / food bank",), insurance=())
    make_program(network.agency_a, "Statewide Telehealth", counties=(), telemedicine=True,
                 insurance=("Medicare",))
    make_program(network.agency_b, "No MOU Pantry", mou=False, counties=("Missoula",),
                 services=("Food pantry / food bank",))
    return network


def _filter_id(field, name):
    model = {"region": models.Region, "county": models.County, "service": models.Service,
             "insurance": models.InsuranceType, "agency": models.Agency}[field]
    return model.get(model.name == name).id


@pytest.mark.parametrize("field, value, expected", FILTER_CASES)
def test_r_rpt_2_agencies_report_filters(directory_network, field, value, expected):
    """R-RPT-2: each of the five filters narrows the programs (valid MOU only)."""
    found = {p.name for p in reporting.program_search({field: str(_filter_id(field, value))})}
    assert found == expected


def test_r_rpt_2_agencies_report_five_filters_together(directory_network, browser):
    """R-RPT-2: all five filters at once, on screen, as CSV and as PDF."""
    n = directory_network
    query = (f"region={_filter_id('region', 'Region 9 - Missoula')}&county={_filter_id('county', 'Missoula')}"
             f"&service={_filter_id('service', 'Food pantry / food bank')}"
             f"&insurance=&agency={n.agency_b.id}")
    browser.login(n.pr_a1)
    text = browser.get(f"/reports/agencies?{query}").get_data(as_text=True)
    assert "Missoula Food Bank" in text and "Program B1" not in text and "No MOU Pantry" not in text
    assert "1 program(s)" in text
    csv_text = browser.get(f"/reports/agencies?{query}&download=csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(csv_text.lstrip("\ufeff"))))
    assert rows[0] == reporting.AGENCIES_HEADER and [r[1] for r in rows[1:]] == ["Missoula Food Bank"]
    pdf = browser.get(f"/reports/agencies?{query}&download=pdf")
    printed = pdf_text(PdfReader(io.BytesIO(pdf.data)).pages[1])
    assert "Missoula Food Bank" in printed


@pytest.mark.parametrize("value, expected", [
    ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"),
    ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tTab", "'\tTab"), ("\rCR", "'\rCR"), ("Plain", "Plain"), (-3, -3), (2.5, 2.5), (None, ""),
])
def test_r_safe_6_csv_cells_neutralized(value, expected):
    """R-SAFE-6 (R-RPT-7): cells a spreadsheet would run as formulas get an apostrophe."""
    assert reporting.csv_cell(value) == expected


def test_r_rpt_7_csv_formula_injection_in_downloads(network, browser):
    """R-RPT-7, R-SAFE-6: names typed by users cannot become formulas in a download."""
    n = network
    evil_agency = make_agency("=cmd|'/C calc'!A0")
    evil = make_program(evil_agency, "@SUM(1+1)")
    subject = make_subject(n.a1, n.gk_a1, first_name="-Minus", last_name="+Plus")
    roi = make_roi(subject, n.a1, others=(evil,))
    make_referral(subject, roi, n.a1, evil, 3, created_by=n.gk_a1)
    browser.login(n.gk_a1)
    for url in ("/reports/agencies?download=csv", "/reports/referrals/to_agency?download=csv"):
        rows = list(csv.reader(io.StringIO(browser.get(url).get_data(as_text=True).lstrip("\ufeff"))))
        cells = [cell for row in rows for cell in row]
        assert "'=cmd|'/C calc'!A0" in cells and "'@SUM(1+1)" in cells
        assert not any(cell[:1] in ("=", "+", "-", "@") for cell in cells)
    rows = browser.get("/reports/referrals/to_agency?download=csv").get_data(as_text=True)
    assert "'-Minus +Plus" in rows


ALL = ["blank-roi", "agencies", "referrals/delays", "referrals/outcomes",
       "referrals/from_agency", "referrals/to_agency"]


@pytest.mark.parametrize("who, allowed", [
    ("pr_a1", {"blank-roi", "agencies"}),
    ("gk_a1", set(ALL)),
    ("admin", set(ALL)),
])
def test_r_rpt_7_role_visibility(network, browser, who, allowed):
    """R-RPT-7: providers see Blank ROI and Agencies Report only; gatekeepers (and
    administrators) see all; refusals are 403 and audited."""
    browser.login(getattr(network, who))
    index = browser.get("/reports/").get_data(as_text=True)
    for path in ALL:
        title = {"blank-roi": "Blank ROI", "agencies": "Agencies Report"}.get(
            path, reporting.REPORTS.get(path.split("/")[-1], None) and reporting.REPORTS[path.split("/")[-1]].title)
        assert (title in index) == (path in allowed), title
        status = browser.get(f"/reports/{path}").status_code
        assert status == (200 if path in allowed else 403), path
    denied = models.AuditEvent.select().where(models.AuditEvent.outcome == "denied").count()
    assert denied == len(ALL) - len(allowed)


def test_r_rpt_7_anonymous_is_sent_to_sign_in(app, browser):
    """R-RPT-7: reports need a signed-in user."""
    response = browser.get("/reports/referrals/outcomes")
    assert response.status_code == 302 and "/auth/sign-in" in response.headers["Location"]


def test_r_rpt_7_regional_admin_reports_only_on_their_regions(network, browser):
    """R-RPT-7: a regional administrator's scopes are the agencies of their regions."""
    regional = make_user(admin=True, statewide=False, regions=("Region 9 - Missoula",))
    browser.login(regional)
    text = browser.get("/reports/referrals/outcomes").get_data(as_text=True)
    assert "Agency B (all programs)" in text and "Agency A (all programs)" not in text
    response = browser.get(f"/reports/referrals/outcomes?scope=agency:{network.agency_a.id}")
    assert "Not a valid choice." in response.get_data(as_text=True)


# ---------------------------------------------------------------------------
# The administrators' dashboard
# ---------------------------------------------------------------------------

def test_admin_dashboard_figures_and_scope(referrals, browser):
    """Administrators' home page: 30-day figures, delays, expiring MOUs, undelivered
    messages, for the administrator's scope."""
    n = referrals
    soon = models.local_today() + dt.timedelta(days=10)
    models.Program.update(mou_valid_until=soon).where(models.Program.id == n.b1.id).execute()
    models.Outbox.create(channel="email", recipient=n.gk_b1.email, body="x", state=models.OUTBOX_FAILED)
    models.Outbox.create(channel="email", recipient=n.gk_a1.email, body="x", state=models.OUTBOX_PENDING,
                         attempts=2)
    models.Outbox.create(channel="sms", recipient=n.client_b.phone, body="x", state=models.OUTBOX_FAILED)
    models.Outbox.create(channel="email", recipient="ok@example.org", body="x", state=models.OUTBOX_SENT)
    board = reporting.admin_dashboard(n.admin)
    # Sent in the last 30 days: r3 (20 d), r4 (10), r5 (15), r6 (12); r1 (45) and r2 (31) not.
    assert board["sent"] == 4
    # Acknowledged: r2 (28 d ago), r4 (8), r5 (10), r6 (8); r1 39 days ago.
    assert board["acknowledged"] == 4
    assert board["delayed"] == 1
    assert board["closed"] == 1  # r5 closed 9 days ago; r1 35 days ago
    assert [m["program"] for m in board["expiring"]] == ["Program B1"]
    assert (board["emails_undelivered"], board["texts_undelivered"]) == (2, 1)
    regional = make_user(admin=True, statewide=False, regions=("Region 10 - Gallatin",))
    board_a = reporting.admin_dashboard(regional)
    assert board_a["expiring"] == [] and board_a["emails_undelivered"] == 1
    assert board_a["texts_undelivered"] == 0 and board_a["scope"] == "Region 10 - Gallatin"
    assert reporting.admin_dashboard(n.gk_a1) is None
    browser.login(n.admin)
    home = browser.get("/").get_data(as_text=True)
    assert "Network at a glance" in home and "Program B1" in home


# ---------------------------------------------------------------------------
# Issue 6: the figures computed in SQL (two index halves, medians by OFFSET or
# percentile_cont, the page of rows by index) equal a plain Python computation.
# ---------------------------------------------------------------------------

@pytest.fixture
def varied(network):
    """About 150 referrals among A1, A2 and B1 (A1 also to itself): every state, statuses,
    delays, drafts, ties on sent_at, seconds-precise delays, some outside the year."""
    import random
    rng = random.Random(6)
    n = network
    subject = make_subject(n.a1, n.gk_a1, first_name="Ottilie", last_name="Marchbanks")
    roi = make_roi(subject, n.a1, others=(n.a2, n.b1))
    programs = [n.a1, n.a2, n.b1]
    states = [models.REFERRAL_SENT, models.REFERRAL_ASSIGNED, models.REFERRAL_CLOSED,
              models.REFERRAL_DECLINED, models.REFERRAL_WITHDRAWN, models.REFERRAL_PENDING]
    tie = NOW - dt.timedelta(days=3, seconds=17)
    for index in range(150):
        state = rng.choice(states)
        from_p, to_p = rng.choice(programs), rng.choice(programs)
        sent = None if state == models.REFERRAL_PENDING else (
            tie if index % 9 == 0 else NOW - dt.timedelta(seconds=rng.randrange(1, 420 * 86400)))
        ack = sent + dt.timedelta(seconds=rng.randrange(60, 40 * 86400)) \
            if sent and rng.random() < 0.7 else None
        outcome = ack + dt.timedelta(seconds=rng.randrange(0, 90 * 86400)) \
            if ack and rng.random() < 0.6 else None
        models.Referral.create(
            subject=subject, roi=roi, from_program=from_p, from_agency=from_p.agency_id,
            to_program=to_p, to_agency=to_p.agency_id, created_by=n.gk_a1, state=state,
            status=rng.choice([None, None] + list(models.STATUSES[:4])), sent_at=sent,
            acknowledged_at=ack, assigned_at=ack, outcome_at=outcome,
            delayed_at=sent + dt.timedelta(days=8) if sent and rng.random() < 0.2 else None,
            updated_at=sent or NOW)
    return n


def python_report(kind, scope, start, end, status="", agency_ids=()):
    """The report's figures by hand over every referral row (no SQL aggregation)."""
    def side_of(ref):
        received = (ref.to_program_id if scope.kind == "program" else ref.to_agency_id) == scope.id
        sent = (ref.from_program_id if scope.kind == "program" else ref.from_agency_id) == scope.id
        if kind.direction == "received" or (kind.direction == "both" and received):
            return "received" if received else None
        return "sent" if sent else None
    low, high = reporting.local_day_start(start), reporting.local_day_start(end + dt.timedelta(days=1))
    rows = []
    for ref in models.Referral.select():
        if ref.sent_at is None or not low <= ref.sent_at < high or side_of(ref) is None:
            continue
        if agency_ids and kind.direction == "received" and ref.from_agency_id not in agency_ids:
            continue
        if agency_ids and kind.direction == "sent" and ref.to_agency_id not in agency_ids:
            continue
        label = models.REFERRAL_STATE_LABELS.get(ref.state, ref.state)
        late = ref.delayed_at is not None and ref.state == models.REFERRAL_SENT
        if status and status not in (ref.status, label) and not (status == reporting.DELAYED and late):
            continue
        rows.append((ref, label, late))
    figures = {"total": len(rows), "by_state": {}, "by_status": {}, "by_month": {},
               "received": 0, "sent": 0, "delayed": 0}
    for ref, label, late in rows:
        figures[side_of(ref)] += 1
        figures["delayed"] += late
        for key, value in (("by_state", label), ("by_status", ref.status or label),
                           ("by_month", ref.sent_at.strftime("%Y-%m"))):
            figures[key][value] = figures[key].get(value, 0) + 1
    ack = [(r.acknowledged_at - r.sent_at).total_seconds() for r, _, _ in rows if r.acknowledged_at]
    out = [(r.outcome_at - r.sent_at).total_seconds() for r, _, _ in rows if r.outcome_at]
    figures.update(acknowledged=len(ack), with_outcome=len(out),
                   median_ack_days=reporting.days(reporting.median(ack)),
                   median_outcome_days=reporting.days(reporting.median(out)),
                   ids=[r.id for r, _, _ in sorted(rows, key=lambda x: (x[0].sent_at, x[0].id),
                                                   reverse=True)])
    return figures


VARIED_CASES = [(kind, status, agencies) for kind in reporting.REFERRAL_REPORTS
                for status, agencies in (("", False), ("Delayed", False), ("Closed", False),
                                         ("Enrolled in Services", False), ("", True))
                if (not status or reporting.REPORTS[kind].status_filter)
                and (not agencies or reporting.REPORTS[kind].agency_filter)]


@pytest.mark.parametrize("kind_key, status, agencies", VARIED_CASES)
@pytest.mark.parametrize("scope_kind", ["program", "agency"])
def test_r_rpt_3_4_5_6_issue_6_sql_figures_equal_python(varied, kind_key, status, agencies,
                                                         scope_kind):
    """R-RPT-3..6, issue 6: counts by state, status and month, delays, both medians and the
    newest rows of the SQL report equal a plain computation over the same rows; the page
    (row_limit) is the head of the full list, with the same client names."""
    n = varied
    scope = scope_of(n.a1) if scope_kind == "program" else reporting.Scope(
        "agency", n.agency_a.id, "Agency A")
    agency_ids = [n.agency_b.id] if agencies else []
    kind = reporting.REPORTS[kind_key]
    start, end = (NOW - dt.timedelta(days=365)).date(), models.local_today()
    expected = python_report(kind, scope, start, end, status, agency_ids)
    report = reporting.referral_report(kind_key, scope, start, end, status, agency_ids,
                                       user=n.gk_a1, program=n.a1, row_limit=7)
    assert expected["total"] > 0
    for name in ("total", "received", "sent", "delayed", "by_state", "by_status", "by_month",
                 "acknowledged", "with_outcome", "median_ack_days", "median_outcome_days"):
        assert getattr(report, name) == expected[name], name
    assert [row["id"] for row in report.rows] == expected["ids"][:7]
    full = reporting.referral_report(kind_key, scope, start, end, status, agency_ids,
                                     user=n.gk_a1, program=n.a1, row_limit=None)
    assert [row["id"] for row in full.rows] == expected["ids"]
    assert full.rows[:7] == report.rows


def test_r_rpt_3_issue_6_migration_3_adds_the_report_indexes(app):
    """Issue 6: an existing database (migrations 1-2 only) gets the reports' two covering
    indexes from migration 3, and running it again changes nothing."""
    names = {"referral_to_program_id_sent_at_state_status_delayed_at_a_4df2d48",
             "referral_from_program_id_sent_at_to_program_id_state_sta_ebea59f"}
    for name in names:
        models.database.execute_sql(f'DROP INDEX "{name}"')
    names = {name[:63] for name in names}  # PostgreSQL keeps 63 characters of a name
    models.SchemaVersion.delete().where(models.SchemaVersion.version == 3).execute()
    assert not names & {index.name[:63] for index in models.database.get_indexes("referral")}
    assert models.migrate() == [3]
    assert names <= {index.name[:63] for index in models.database.get_indexes("referral")}
    assert models.migrate() == []


def test_r_rpt_3_issue_6_migration_4_drops_the_replaced_indexes(app):
    """Issue 6: a database made before the covering indexes keeps (to_program, sent_at) and
    (from_program, sent_at); migration 4 drops them (the covering indexes lead with the
    same columns) and leaves every index the models declare."""
    for name, column in zip(models.REPLACED_INDEXES, ("to_program_id", "from_program_id")):
        models.database.execute_sql(f'CREATE INDEX "{name}" ON "referral" ("{column}", "sent_at")')
    models.SchemaVersion.delete().where(models.SchemaVersion.version == 4).execute()
    assert models.migrate() == [4]
    present = {index.name for index in models.database.get_indexes("referral")}
    assert not set(models.REPLACED_INDEXES) & present
    declared = {index._name[:63] for index in models.Referral._meta.fields_to_index()
                if getattr(index, "_name", None)}
    assert declared <= {name[:63] for name in present}
    assert models.migrate() == []
