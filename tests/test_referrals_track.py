"""Tracking: Sent and incoming lists, filters, delays, cross-program access, list cost
(R-TRACK-1..3, R-SEND-6, R-SAFE-2)."""

import datetime as dt

import pytest
from playhouse.test_utils import assert_query_count, count_queries

import models
import workflow
from tests.conftest import actor, make_user
from tests.referral_helpers import assigned, client, draft, fresh, sent


def _sent_url(params=""):
    return "/agency/sent/" + params


def _status_arg(app):
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "sent")
    return f"flt0_{view.status_filter_arg}"


def _closed_and_declined(network):
    open_subject, _ = client(network, last_name="Openperson")
    sent(network, open_subject)
    closed_subject, _ = client(network, last_name="Closedperson")
    referral = assigned(network, closed_subject)
    workflow.set_referral_status(actor(network.pr_b1, network.b1), referral,
                                 "Closed- Successful completion", referral.version)
    declined_subject, _ = client(network, last_name="Declinedperson")
    referral = sent(network, declined_subject)
    workflow.decline_referral(actor(network.gk_b1, network.b1), referral, referral.version, "Full")


@pytest.mark.parametrize("choice, shown", [
    ("", {"Openperson"}),
    ("any", {"Openperson", "Closedperson", "Declinedperson"}),
    ("state:closed", {"Closedperson"}),
    ("state:declined", {"Declinedperson"}),
    ("status:Closed- Successful completion", {"Closedperson"}),
])
def test_r_track_1_any_status_is_the_only_choice_showing_all(app, browser, network, choice, shown):
    """R-TRACK-1: the default shows open referrals; only "Any Status" shows closed and
    rejected together with the rest."""
    _closed_and_declined(network)
    browser.login(network.gk_a1)
    query = f"?{_status_arg(app)}={choice}" if choice else ""
    page = browser.get(_sent_url(query)).get_data(as_text=True)
    for name in ("Openperson", "Closedperson", "Declinedperson"):
        assert (name in page) == (name in shown), name
    assert "Show Filters" in page and "Any Status" in page


def test_r_track_1_filters_program_dates_and_search(app, browser, network):
    """R-TRACK-1: filter by receiving program and dates; search by client name."""
    subject_b, _ = client(network, last_name="Tobee")
    sent(network, subject_b)
    subject_a, _ = client(network, last_name="Toself", others=())
    sent(network, subject_a, to=network.a1)
    browser.login(network.gk_a1)
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "sent")
    program_arg = f"flt0_{view.filter_index(type(view._filters[2]), 'Receiving program')}"
    page = browser.get(_sent_url(f"?{program_arg}={network.b1.id}")).get_data(as_text=True)
    assert "Tobee" in page and "Toself" not in page
    until_arg = f"flt0_{view.filter_index(type(view._filters[6]), 'Started until')}"
    yesterday = (models.local_today() - dt.timedelta(days=1)).isoformat()
    page = browser.get(_sent_url(f"?{until_arg}={yesterday}")).get_data(as_text=True)
    assert "Tobee" not in page and "Toself" not in page
    page = browser.get(_sent_url("?search=tob")).get_data(as_text=True)
    assert "Tobee" in page and "Toself" not in page
    bad = browser.get(_sent_url(f"?{until_arg}=not-a-date"))
    assert bad.status_code == 200  # a bad filter value is ignored with a message


def test_r_track_2_providers_see_only_their_own(browser, network):
    """R-TRACK-2: gatekeepers see all of the program's sent referrals and can filter by
    staff member; a provider sees only their own and has no staff filter."""
    mine, _ = client(network, last_name="Byprovider")
    draft(network, mine, user=network.pr_a1)
    theirs, _ = client(network, last_name="Bygatekeeper")
    draft(network, theirs, user=network.gk_a1)
    browser.login(network.pr_a1)
    page = browser.get(_sent_url()).get_data(as_text=True)
    assert "Byprovider" in page and "Bygatekeeper" not in page
    page = browser.get(_sent_url("?filters=1")).get_data(as_text=True)
    assert ">Status</label>" in page and ">Staff member</label>" not in page
    gatekeeper = workflow.Actor(network.gk_a1, network.a1)
    assert models.Referral.visible_to(gatekeeper.user, network.a1).count() == 2


def test_r_track_2_incoming_provider_sees_assigned_only(browser, network):
    """R-TRACK-2: in Agency → Referrals a provider sees only what is assigned to them."""
    one, _ = client(network, last_name="Assignedone")
    assigned(network, one)
    two, _ = client(network, last_name="Waitingtwo")
    sent(network, two)
    browser.login(network.pr_b1)
    page = browser.get("/agency/referrals/").get_data(as_text=True)
    assert "Assignedone" in page and "Waitingtwo" not in page
    browser2 = type(browser)(browser.app)
    browser2.login(network.gk_b1)
    page = browser2.get("/agency/referrals/").get_data(as_text=True)
    assert "Assignedone" in page and "Waitingtwo" in page and "Assigned provider" in page


def test_r_send_6_sender_sees_progress_and_notes(browser, network):
    """R-SEND-6: the sender sees the receiving program's status, notes and progress."""
    subject, _ = client(network)
    referral = assigned(network, subject)
    worker = actor(network.pr_b1, network.b1)
    workflow.add_referral_note(worker, referral, "contact_made", models.local_today(), "Spoke with client")
    workflow.add_progress_entry(worker, referral, models.local_today(), "Attended first class")
    workflow.set_referral_status(worker, referral, "Enrolled in Services", referral.version)
    browser.login(network.gk_a1)
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "Spoke with client" in page and "Attended first class" in page
    assert "Enrolled in Services" in page and "Contact made" in page
    assert ">Assign<" not in page and "Add note" not in page


@pytest.mark.parametrize("sent_on, today, late", [
    (dt.date(2026, 3, 2), dt.date(2026, 3, 9), False),   # Mon -> next Mon: 5 business days
    (dt.date(2026, 3, 2), dt.date(2026, 3, 10), True),   # Tuesday after: late
    (dt.date(2026, 6, 29), dt.date(2026, 7, 7), False),  # Independence Day (observed Fri 3 Jul)
    (dt.date(2026, 6, 29), dt.date(2026, 7, 8), True),
    (dt.date(2026, 11, 23), dt.date(2026, 12, 1), False),  # Thanksgiving Thu 26 Nov
    (dt.date(2026, 11, 23), dt.date(2026, 12, 2), True),
])
def test_r_track_3_five_business_days(network, sent_on, today, late):
    """R-TRACK-3: weekends and US federal holidays do not count."""
    subject, _ = client(network)
    referral = sent(network, subject)
    moment = dt.datetime.combine(sent_on, dt.time(17, 0))  # 10:00 or 11:00 in Denver
    models.Referral.update(sent_at=moment).where(models.Referral.id == referral.id).execute()
    assert workflow.flag_delayed_referrals(today=today) == (1 if late else 0)


def test_r_track_3_delayed_flag_tells_once_and_shows_badge(browser, network):
    """R-TRACK-3: the sender and gatekeepers are told once; a "Delayed" badge shows."""
    subject, _ = client(network)
    referral = sent(network, subject)
    models.Referral.update(sent_at=models.utcnow() - dt.timedelta(days=20)).where(
        models.Referral.id == referral.id).execute()
    assert workflow.flag_delayed_referrals() == 1
    assert workflow.flag_delayed_referrals() == 0
    delayed = models.Outbox.select().where(models.Outbox.kind == "referral_delayed")
    assert sorted(m.recipient for m in delayed) == sorted([network.gk_a1.email, network.gk_b1.email])
    browser.login(network.gk_b1)
    assert "Delayed" in browser.get("/agency/referrals/").get_data(as_text=True)
    assert fresh(referral).delayed_at is not None


def test_r_track_3_times_for_reports(network):
    """R-TRACK-3: time to acknowledge (first assignment) and to outcome are stored."""
    subject, _ = client(network)
    referral = assigned(network, subject)
    assert referral.acknowledged_at is not None and referral.outcome_at is None
    workflow.set_referral_status(actor(network.pr_b1, network.b1), referral,
                                 "Not Started- Declined services", referral.version)
    assert fresh(referral).outcome_at is not None


def _program_a_referral(network):
    """A referral between A1 and A2 (both agency A): nothing program B may reach."""
    subject, _ = client(network, others=(network.a2,))
    return sent(network, subject, to=network.a2), subject


@pytest.mark.parametrize("method, url", [
    ("get", "/referrals/{id}"),
    ("get", "/referrals/{id}/edit"),
    ("get", "/referrals/{id}/send"),
    ("get", "/referrals/chart/{subject}"),
    ("post", "/referrals/{id}/assign"),
    ("post", "/referrals/{id}/decline"),
    ("post", "/referrals/{id}/status"),
    ("post", "/referrals/{id}/withdraw"),
    ("post", "/agency/referrals/action/"),
])
def test_r_safe_2_other_program_gets_404_and_is_audited(browser, network, method, url):
    """R-SAFE-2: a user of program B asking for program A's ids gets 404; audited."""
    referral, subject = _program_a_referral(network)
    browser.login(network.gk_b1)
    target = url.format(id=referral.id, subject=subject.id)
    before = models.AuditEvent.select().where(models.AuditEvent.outcome == "denied").count()
    if method == "get":
        response = browser.get(target)
    else:
        response = browser.post(target, {"rowid": referral.id, "action": "assign_to_me",
                                         "url": "/agency/referrals/", "assign-version": 1,
                                         "assign-provider": network.gk_b1.id},
                                token_from="/agency/referrals/")
    assert response.status_code == 404
    assert models.AuditEvent.select().where(models.AuditEvent.outcome == "denied").count() == before + 1
    assert fresh(referral).state == models.REFERRAL_SENT


def test_r_safe_2_other_program_lists_and_exports_hold_nothing(app, browser, network):
    """R-SAFE-2: lists and CSV exports of program B never contain program A's referrals,
    even when asked for A's client by id."""
    referral, subject = _program_a_referral(network)
    browser.login(network.gk_b1)
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "sent")
    args = f"?flt0_{view.subject_filter_arg}={subject.id}&{_status_arg(app)}=any"
    for url in ("/agency/sent/" + args, "/agency/referrals/?" + _status_arg(app) + "=any",
                "/agency/sent/export/csv/" + args, "/agency/referrals/export/csv/"):
        body = browser.get(url).get_data(as_text=True)
        assert subject.last_name not in body, url
    assert referral.id


def test_r_track_1_csv_export_neutralises_formulas(app, browser, network):
    """R-SAFE-6 / R-TRACK-1: the CSV export escapes cells a spreadsheet would run."""
    subject, _ = client(network, first_name="=HYPERLINK(1)")
    sent(network, subject)
    browser.login(network.gk_b1)
    body = browser.get("/agency/referrals/export/csv/").get_data(as_text=True)
    assert ",'=HYPERLINK(1) " in body


def test_lists_make_no_n_plus_1_queries(app, browser, network):
    """Lean lists: the page costs the same number of queries for 2 or 30 rows, and the
    list itself 2 statements: the page's select (rows, capped count, the consent check of
    the received rows, R-ROI-9) and ONE audit INSERT for the 25 clients shown (R-SAFE-1,
    battery item 15)."""
    def page_queries():
        with count_queries() as counter:
            assert browser.get("/agency/referrals/").status_code == 200
        return counter.count

    for _ in range(2):
        sent(network, client(network)[0])
    browser.login(network.gk_b1)
    few = page_queries()
    for _ in range(28):
        sent(network, client(network)[0])
    assert page_queries() == few
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "incoming")
    with app.test_request_context("/agency/referrals/"):
        from flask import g
        g.acting_program = network.b1
        from flask_login import login_user
        login_user(network.gk_b1)
        network.gk_b1.roles_in(network.b1)  # cached per request in the app too
        with assert_query_count(2):
            _count, rows = view.get_list(0, None, None, None, [])
            names = [(r.subject.last_name, r.from_program.name, r.to_agency.name,
                      r.assigned_to and r.assigned_to.name) for r in rows]
    assert len(names) == 25


def test_count_label_is_capped(app, network):
    """R-UX-2: lists say how many rows they hold without counting whole tables."""
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "incoming")
    assert view.count_label(12) == "12"
    assert view.count_label(view.count_cap + 1) == "1,000+"


def test_r_track_2_staff_filter_for_gatekeepers(app, browser, network):
    """R-TRACK-2: a gatekeeper filters the Sent list by staff member."""
    other = make_user("provider", network.a1, name="Sam Sender")
    s1, _ = client(network, last_name="Bysam")
    draft(network, s1, user=other)
    s2, _ = client(network, last_name="Bygail")
    draft(network, s2, user=network.gk_a1)
    browser.login(network.gk_a1)
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "sent")
    staff_arg = f"flt0_{view.filter_index(type(view._filters[4]), 'Staff member')}"
    page = browser.get(f"/agency/sent/?{staff_arg}={other.id}").get_data(as_text=True)
    assert ">Staff member</label>" in page and "Bysam" in page and "Bygail" not in page


# ---------------------------------------------------------------------------
# Issue 6 budgets: 3 statements per list page (the gate, the page, the audit)
# ---------------------------------------------------------------------------

GATE_QUERIES = 1  # session + user + User MOU + memberships/programs + the bell, one select


def _page_queries(browser, url):
    with count_queries() as counter:
        response = browser.get(url)
        assert response.status_code == 200
    return counter.count


@pytest.mark.parametrize("endpoint", ["/agency/referrals/", "/agency/sent/"])
def test_list_pages_stay_within_their_query_budget(app, browser, network, endpoint):
    """Issue 6: a list page is 3 statements — the sign-in gate's one select, the page
    (rows, capped count and each received client's consent (R-ROI-9) in one select) and
    ONE audit INSERT for every client shown (R-SAFE-1) —
    on page 1, on a later page by number or by cursor, with "Show Filters" open (the
    choices are cached per process), and never one per row."""
    for _ in range(30):
        sent(network, client(network)[0])
    browser.login(network.gk_b1 if endpoint == "/agency/referrals/" else network.gk_a1)
    assert _page_queries(browser, endpoint) == GATE_QUERIES + 2
    assert _page_queries(browser, endpoint + "?page=1") == GATE_QUERIES + 2
    body = browser.get(endpoint).get_data(as_text=True)
    import html
    import re
    following = html.unescape(re.search(r'href="([^"]+)" rel="next"', body).group(1))
    assert "after=" in following
    assert _page_queries(browser, following) == GATE_QUERIES + 2
    from admin_views import lists
    lists._option_cache.clear()
    app.config["LIST_OPTION_CACHE_SECONDS"] = 60
    _page_queries(browser, endpoint + "?filters=1")
    assert _page_queries(browser, endpoint + "?filters=1") == GATE_QUERIES + 2
    lists._option_cache.clear()


def _listed_ids(body):
    import re
    return [int(i) for i in re.findall(r'/referrals/(\d+)"', body)]


@pytest.mark.parametrize("endpoint", ["/agency/referrals/?flt0_0=any", "/agency/sent/?flt0_1=any"])
def test_keyset_pages_match_numbered_pages(app, browser, network, endpoint):
    """Issue 6 (page 1000 costs what page 1 does): "Next" and "Previous" carry the
    boundary row's (date, id) instead of an OFFSET and show exactly the rows of the
    numbered pages, forwards and back, ties on the date broken by the id (R-UX-2)."""
    import html
    import re
    from freezegun import freeze_time
    with freeze_time("2026-03-02 10:00:00"):  # many rows share one timestamp
        for _ in range(60):
            sent(network, client(network)[0])
    browser.login(network.gk_b1 if "referrals" in endpoint else network.gk_a1)
    numbered = [_listed_ids(browser.get(f"{endpoint}&page={n}").get_data(as_text=True))
                for n in range(3)]
    assert [len(page) for page in numbered] == [25, 25, 10]
    url, walked = endpoint, []
    for n in range(3):
        body = browser.get(url).get_data(as_text=True)
        walked.append(_listed_ids(body))
        assert f"Page {n + 1}<" in body
        found = re.search(r'href="([^"]+)" rel="next"', body)
        url = html.unescape(found.group(1)) if found else None
    assert walked == numbered and url is None  # no "Next" after the last page
    body = browser.get(endpoint + "&page=2").get_data(as_text=True)
    for n in (1, 0):
        url = html.unescape(re.search(r'href="([^"]+)" rel="prev"', body).group(1))
        body = browser.get(url).get_data(as_text=True)
        assert _listed_ids(body) == numbered[n]
    assert 'rel="prev"' not in body  # back on the first page


def test_malformed_page_cursor_shows_the_first_page(app, browser, network):
    """Bad input gets a clear message and changes nothing: a cursor that is not a
    (date, id) pair is said and ignored (issue 6, item 9 of the battery)."""
    sent(network, client(network)[0])
    browser.login(network.gk_b1)
    for cursor in ("nonsense", "2026-13-45T00:00:00_1", "x_99999999999999999999999", "_"):
        response = browser.get(f"/agency/referrals/?after={cursor}")
        body = response.get_data(as_text=True)
        assert response.status_code == 200 and "invalid page position" in body
        assert len(_listed_ids(body)) == 1


def test_r_safe_1_list_pages_audit_each_subject_shown(app, browser, network):
    """R-SAFE-1 (battery item 15): a list page that shows client names writes one audit
    row per subject shown — user, program, address, outcome — and so does its CSV export;
    an empty page writes none."""
    shown = {client(network)[0].id for _ in range(3)}
    for subject_id in list(shown):
        sent(network, models.Subject.get_by_id(subject_id))
    browser.login(network.gk_b1)
    before = models.AuditEvent.select().count()
    browser.get("/agency/referrals/")
    rows = list(models.AuditEvent.select().where(models.AuditEvent.id > 0)
                .order_by(models.AuditEvent.id.desc()).limit(models.AuditEvent.select().count() - before))
    assert {r.subject_id for r in rows} == shown and len(rows) == 3
    assert {(r.action, r.user_id, r.program_id, r.outcome) for r in rows} == {
        ("list_incoming", network.gk_b1.id, network.b1.id, "ok")}
    assert all(r.ip == "127.0.0.1" and r.object_type == "Referral" for r in rows)
    before = models.AuditEvent.select().count()
    browser.get("/agency/referrals/export/csv/").get_data()
    exported = models.AuditEvent.select().where(models.AuditEvent.action == "export_incoming")
    assert {r.subject_id for r in exported} == shown
    before = models.AuditEvent.select().count()
    browser.get("/agency/referrals/?search=Nobody-matches-this")
    assert models.AuditEvent.select().count() == before


def test_list_page_ids_come_from_the_index_before_the_joins(app, network):
    """Issue 6: the page's ids are chosen on the referral table alone (the index skips the
    OFFSET), and the joins run for those 25 only; the capped count joins nothing."""
    view = next(v for v in app.extensions["admin"][0]._views if getattr(v, "endpoint", "") == "incoming")
    with app.test_request_context("/agency/referrals/"):
        from flask import g
        from flask_login import login_user
        g.acting_program = network.b1
        login_user(network.gk_b1)
        sql, _params = view.page_query(999, None, False, None, []).sql()
        start = sql.index("JOIN (SELECT")
        end = sql.index('AS "page_ids"')
        inner = sql[start + len("JOIN ("):end]
        assert "JOIN" not in inner and "OFFSET" in inner and "LIMIT" in inner
        assert sql.count("JOIN") >= 8  # subject, 2 programs, 2 agencies, 2 users, the ids
        count_sql, _ = (view.filtered_query(None, []).select(models.Referral.id).order_by()
                        .limit(view.count_cap + 1)).sql()
        assert "JOIN" not in count_sql and "LIMIT" in count_sql


def test_show_filters_builds_the_choices_only_when_asked(browser, network):
    """Issue 6: the filter drop-downs (staff, agencies, receiving programs) are built only
    when "Show Filters" is open; the button reloads the list with the panel open."""
    subject, _ = client(network, last_name="Filtered")
    sent(network, subject)
    browser.login(network.gk_a1)
    closed = browser.get("/agency/sent/").get_data(as_text=True)
    assert 'name="filters" value="1"' in closed and "Show Filters" in closed
    assert ">Receiving program</label>" not in closed
    opened = browser.get("/agency/sent/?filters=1").get_data(as_text=True)
    assert ">Receiving program</label>" in opened and ">Staff member</label>" in opened
    assert network.b1.name in opened  # the program referred to is a choice
