"""Administrators' screens: network records, users and memberships, MOUs, outbox, audit log;
regional coordinators' scope; bad input (R-NET-1, R-AUTH-1, R-AUTH-6, R-SAFE-1..3)."""

import re

import pytest

import models
from tests.conftest import Browser, deliver_outbox, make_agency, make_program, make_user


@pytest.fixture
def admin(browser, network):
    browser.login(network.admin)
    return browser


@pytest.fixture
def coordinator(app, network):
    """A regional coordinator of Region 10 (Agency A's region, not Agency B's)."""
    user = make_user(admin=True, statewide=False, regions=("Region 10 - Gallatin",),
                     name="Cora Coordinator", email="cora@example.org")
    b = Browser(app)
    b.login(user)
    b.user = user
    return b


def ids(model, **where):
    return {row.id for row in model.select()}


def test_r_net_1_admin_creates_agency_and_program_with_links(admin, network):
    """R-NET-1: an administrator creates an agency and a program with counties served,
    services, insurance accepted, telemedicine and location; the change is audited."""
    region = models.Region.get(models.Region.name == "Region 10 - Gallatin")
    r = admin.post("/admin/agencies/new/", {"name": "Sunrise Clinic", "region": region.id, "city": "Bozeman",
                                            "email": "", "active": "y"}, token_from="/admin/agencies/new/")
    assert r.status_code == 302
    agency = models.Agency.get(models.Agency.name == "Sunrise Clinic")
    counties = [models.County.get(models.County.name == n).id for n in ("Gallatin", "Park")]
    service = models.Service.get(models.Service.name == "Primary care").id
    insurance = [models.InsuranceType.get(models.InsuranceType.name == n).id for n in ("Medicaid", "N/A")]
    r = admin.client.post("/admin/programs/new/", data={
        "csrf_token": admin.token("/admin/programs/new/"), "agency": agency.id, "name": "Walk-in Care",
        "telemedicine": "y", "latitude": "45.68", "longitude": "-111.04", "active": "y",
        "counties_served": counties, "services_offered": [service], "insurance_accepted": insurance})
    assert r.status_code == 302, r.get_data(as_text=True)[-2000:]
    program = models.Program.get(models.Program.name == "Walk-in Care")
    assert program.telemedicine and program.latitude == 45.68
    assert {link.county_id for link in program.county_links} == set(counties)
    assert {link.insurance_type_id for link in program.insurance_links} == set(insurance)
    # Edit: drop a county; links follow.
    r = admin.client.post(f"/admin/programs/edit/?id={program.id}", data={
        "csrf_token": admin.token(f"/admin/programs/edit/?id={program.id}"), "agency": agency.id,
        "name": "Walk-in Care", "active": "y", "counties_served": counties[:1],
        "services_offered": [service], "insurance_accepted": insurance})
    assert r.status_code == 302
    assert {link.county_id for link in program.county_links} == set(counties[:1])
    actions = {a.action for a in models.AuditEvent.select()}
    assert {"create_agency", "create_program", "update_program"} <= actions
    details = admin.get(f"/admin/programs/details/?id={network.a1.id}").get_data(as_text=True)
    assert "Gail Gatekeeper" in details and "Pete Provider" in details


@pytest.mark.parametrize("field,value,message", [
    ("name", "", "This field is required"),
    ("latitude", "123", "Latitude is between -90 and 90"),
    ("longitude", "abc", "Not a valid float value"),
    ("email", "not-an-email", "Enter a valid email address"),
    ("agency", "999999", "Not a valid choice"),
    ("counties_served", "999999", "Not a valid choice"),
])
def test_r_safe_2_program_form_bad_input(admin, network, field, value, message):
    """R-SAFE-2: bad input on the program form: a clear message, nothing changed."""
    data = {"csrf_token": admin.token("/admin/programs/new/"), "agency": network.agency_a.id,
            "name": "Bad Input Program", "active": "y"}
    data[field] = value
    before = models.Program.select().count()
    r = admin.client.post("/admin/programs/new/", data=data)
    assert r.status_code == 200 and message in r.get_data(as_text=True)
    assert models.Program.select().count() == before


def test_r_safe_2_duplicate_region_refused_cleanly(admin):
    """R-SAFE-2: a duplicate name is refused with a message, not a 500."""
    r = admin.post("/admin/regions/new/", {"name": "Region 10 - Gallatin", "code": "R99"},
                   token_from="/admin/regions/new/")
    assert r.status_code == 200 and "duplicate an existing record" in r.get_data(as_text=True)


def test_r_net_1_county_region_is_editable(admin):
    """R-NET-1: an administrator moves a county to another region."""
    county = models.County.get(models.County.name == "Park")
    target = models.Region.get(models.Region.name == "Region 9 - Missoula")
    r = admin.post(f"/admin/counties/edit/?id={county.id}", {"name": "Park", "fips": county.fips,
                                                              "region": target.id},
                   token_from=f"/admin/counties/edit/?id={county.id}")
    assert r.status_code == 302
    assert models.County.get_by_id(county.id).region_id == target.id


def test_r_safe_3_intake_section_is_one_transaction(admin, network):
    """R-SAFE-3, R-SEND-2: a section whose Choice question has no choices is refused whole:
    neither the section nor any question is saved."""
    data = {"csrf_token": admin.token("/admin/intake-sections/new/"), "program": network.a1.id,
            "title": "Housing", "position": "1",
            "questions-0-label": "Where do you sleep?", "questions-0-kind": "text",
            "questions-0-info_type": "housing", "questions-0-position": "0",
            "questions-1-label": "Which shelter?", "questions-1-kind": "choice", "questions-1-choices": "",
            "questions-1-info_type": "housing", "questions-1-position": "1"}
    r = admin.client.post("/admin/intake-sections/new/", data=data)
    assert r.status_code == 200 and "needs its choices" in r.get_data(as_text=True)
    assert models.IntakeSection.select().count() == 0 and models.IntakeQuestion.select().count() == 0
    data["questions-1-choices"] = "North\nSouth"
    data["csrf_token"] = admin.token("/admin/intake-sections/new/")
    assert admin.client.post("/admin/intake-sections/new/", data=data).status_code == 302
    section = models.IntakeSection.get(models.IntakeSection.title == "Housing")
    assert [q.kind for q in section.questions.order_by(models.IntakeQuestion.position)] == ["text", "choice"]


def test_gatekeeper_edits_own_program_intake_sections_only(app, network):
    """Permission edit_intake_sections: a gatekeeper edits their acting program's sections,
    never another program's (404), and providers get 403."""
    own = models.IntakeSection.create(program=network.a1, title="Own")
    other = models.IntakeSection.create(program=network.b1, title="Other")
    gk = Browser(app)
    gk.login(network.gk_a1)
    page = gk.get("/admin/intake-sections/").get_data(as_text=True)
    assert "Own" in page and "Other" not in page
    assert gk.get(f"/admin/intake-sections/edit/?id={other.id}").status_code == 404
    r = gk.post(f"/admin/intake-sections/edit/?id={own.id}", {"program": network.a1.id, "title": "Own renamed",
                                                              "position": "0"},
                token_from=f"/admin/intake-sections/edit/?id={own.id}")
    assert r.status_code == 302 and models.IntakeSection.get_by_id(own.id).title == "Own renamed"
    r = gk.post("/admin/intake-sections/new/", {"program": network.b1.id, "title": "Sneaky", "position": "0"},
                token_from="/admin/intake-sections/new/")
    assert r.status_code == 200 and "Not a valid choice" in r.get_data(as_text=True)
    provider = Browser(app)
    provider.login(network.pr_a1)
    assert provider.get("/admin/intake-sections/").status_code == 403


# ---------------------------------------------------------------------------
# Users and memberships
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    ({"email": "", "name": "X"}, "Enter the person&#39;s email address"),
    ({"email": "not-an-email", "name": "X"}, "Enter a valid email address"),
    ({"email": "x@example.org", "name": ""}, "Enter the person&#39;s name"),
    ({"email": "pr.a1@example.org", "name": "Dup"}, "already exists"),
    ({"email": "x@example.org", "name": "X", "role": "provider"}, "Choose the program for this role"),
    ({"email": "x@example.org", "name": "X", "program": "PROGRAM"}, "Choose gatekeeper or provider"),
    ({"email": "x@example.org", "name": "X", "program": "999999", "role": "provider"}, "Not a valid choice"),
    ({"email": "x@example.org", "name": "X", "phone": "call me"}, "Enter a phone number"),
])
def test_r_auth_1_invite_form_bad_input(admin, network, data, message):
    """R-AUTH-1, R-SAFE-2: bad input on the invitation form: a clear message, no account, no email."""
    data = dict(data)
    if data.get("program") == "PROGRAM":
        data["program"] = network.a1.id
    before = (models.User.select().count(), models.Outbox.select().count())
    r = admin.post("/admin/users/new/", data, token_from="/admin/users/new/")
    assert r.status_code == 200 and message in r.get_data(as_text=True), r.get_data(as_text=True)[-1500:]
    assert (models.User.select().count(), models.Outbox.select().count()) == before


def _action(b, view, action, rows):
    return b.client.post(f"/admin/{view}/action/", data={
        "csrf_token": b.token(f"/admin/{view}/"), "action": action, "rowid": [str(r) for r in rows]})


def test_r_auth_6_admin_actions_deactivate_reactivate_reset_resend(app, admin, network, smtp_server):
    """R-AUTH-6, R-AUTH-4, R-AUTH-1: the Users actions; deactivation ends sessions at once."""
    victim = Browser(app)
    victim.login(network.pr_a1)
    assert _action(admin, "users", "deactivate", [network.pr_a1.id]).status_code == 302
    assert not models.User.get_by_id(network.pr_a1.id).is_active
    assert victim.get("/account/").status_code == 302
    assert _action(admin, "users", "reactivate", [network.pr_a1.id]).status_code == 302
    assert models.User.get_by_id(network.pr_a1.id).is_active
    _action(admin, "users", "reset_password", [network.pr_a1.id])
    _action(admin, "users", "resend_invitation", [network.gk_a1.id])
    deliver_outbox()
    mails = smtp_server.wait_for(2)
    assert {m["to"][0] for m in mails} == {network.pr_a1.email, network.gk_a1.email}
    assert any("/auth/reset/" in m["body"] for m in mails) and any("/auth/invitation/" in m["body"] for m in mails)
    # An administrator cannot lock themself out.
    _action(admin, "users", "deactivate", [network.admin.id])
    assert models.User.get_by_id(network.admin.id).is_active
    # Garbage ids in an action are ignored, never a 500.
    assert _action(admin, "users", "deactivate", ["abc", "999999", ""]).status_code == 302


def test_r_auth_6_membership_add_and_remove(app, admin, network):
    """R-AUTH-6: adding a role through the Memberships screen; removing it signs the user out."""
    r = admin.post("/admin/memberships/new/", {"user": network.pr_a1.id, "program": network.a2.id,
                                               "role": "gatekeeper"}, token_from="/admin/memberships/new/")
    assert r.status_code == 302
    row = models.Membership.get((models.Membership.user == network.pr_a1) & (models.Membership.program == network.a2))
    victim = Browser(app)
    victim.login(network.pr_a1)
    r = admin.post("/admin/memberships/delete/", {"id": row.id, "url": "/admin/memberships/"},
                   token_from="/admin/memberships/")
    assert r.status_code == 302
    assert not models.Membership.select().where(models.Membership.id == row.id).exists()
    assert victim.get("/account/").status_code == 302
    assert {"add_membership", "remove_membership"} <= {a.action for a in models.AuditEvent.select()}


def test_users_list_search_and_filter(admin, network):
    """Users list: search by name/email, filter by program; MOU state shown."""
    page = admin.get("/admin/users/?search=Pete").get_data(as_text=True)
    assert "Pete Provider" in page and "Gail Gatekeeper" not in page
    assert "Signed" in page
    assert admin.get("/admin/users/?flt0_0=B1").status_code == 200  # a bad value: no 500


# ---------------------------------------------------------------------------
# Regional coordinators
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("view,own,foreign", [
    ("agencies", "agency_a", "agency_b"),
    ("programs", "a1", "b1"),
    ("users", "pr_a1", "pr_b1"),
])
def test_regional_coordinator_sees_only_their_regions(coordinator, network, view, own, foreign):
    """A regional coordinator lists, opens and edits only their regions' records; another
    region's id answers 404 like a missing one."""
    own_row, foreign_row = getattr(network, own), getattr(network, foreign)
    page = coordinator.get(f"/admin/{view}/").get_data(as_text=True)
    assert own_row.name in page and foreign_row.name not in page
    assert coordinator.get(f"/admin/{view}/details/?id={own_row.id}").status_code == 200
    for url in (f"/admin/{view}/details/?id={foreign_row.id}", f"/admin/{view}/edit/?id={foreign_row.id}"):
        assert coordinator.get(url).status_code == 404


def test_regional_coordinator_cannot_reach_other_regions(coordinator, network):
    """Regional scope holds for actions, memberships and new records too."""
    before = models.User.get_by_id(network.pr_b1.id).is_active
    _action(coordinator, "users", "deactivate", [network.pr_b1.id])
    assert models.User.get_by_id(network.pr_b1.id).is_active == before
    r = coordinator.post("/admin/memberships/new/", {"user": network.pr_a1.id, "program": network.b1.id,
                                                     "role": "provider"}, token_from="/admin/memberships/new/")
    assert r.status_code == 200 and "Not a valid choice" in r.get_data(as_text=True)
    region9 = models.Region.get(models.Region.name == "Region 9 - Missoula")
    r = coordinator.post("/admin/agencies/new/", {"name": "Elsewhere", "region": region9.id},
                         token_from="/admin/agencies/new/")
    assert r.status_code == 200 and not models.Agency.select().where(models.Agency.name == "Elsewhere").exists()
    # Regions, counties and the reference lists are for statewide administrators.
    assert coordinator.get("/admin/regions/").status_code == 403
    # Invitations need a program of their region; no administrator fields are offered.
    form = coordinator.get("/admin/users/new/").get_data(as_text=True)
    assert "Statewide administrator" not in form and "Program B1" not in form
    r = coordinator.post("/admin/users/new/", {"email": "n@example.org", "name": "N"},
                         token_from="/admin/users/new/")
    assert "Choose the program the person works for" in r.get_data(as_text=True)
    r = coordinator.post("/admin/users/new/", {"email": "n@example.org", "name": "N", "program": network.a1.id,
                                               "role": "provider"}, token_from="/admin/users/new/")
    assert r.status_code == 302 and models.User.select().where(models.User.email == "n@example.org").exists()


def test_regional_coordinator_outbox_and_audit_scope(coordinator, network):
    """The outbox and audit log of a regional coordinator show only their people."""
    import workflow
    workflow.queue_email(network.pr_a1.email, "For A", "a")
    workflow.queue_email(network.pr_b1.email, "For B", "b")
    page = coordinator.get("/admin/outbox/").get_data(as_text=True)
    assert "For A" in page and "For B" not in page


# ---------------------------------------------------------------------------
# MOUs, outbox, audit
# ---------------------------------------------------------------------------

def test_r_mou_2_mou_lists_show_state_and_expiry(admin, network):
    """R-MOU-2: the MOU lists show state (signed / expiring / expired) and expiry; filters work."""
    import datetime as dt
    today = models.local_today()
    for program, until in ((network.a1, today + dt.timedelta(days=200)), (network.a2, today + dt.timedelta(days=10)),
                           (network.b1, today - dt.timedelta(days=1))):
        models.AgencyMou.create(program=program, signed_by=network.gk_a1, signature_name="x",
                                signed_on=until - dt.timedelta(days=365), expires_on=until)
    page = admin.get("/admin/agency-mous/").get_data(as_text=True)
    assert "Signed" in page and "Expiring" in page and "Expired" in page
    # The state filter narrows the list.
    flt = re.search(r'data-filter-index="(\d+)"[^>]*>\s*State', page)
    programs = admin.get("/admin/programs/").get_data(as_text=True)
    assert "Expiring" in programs and "Expired" in programs
    assert admin.get("/admin/user-mous/").status_code == 200
    del flt


def test_outbox_read_only_with_retry(admin, network, smtp_server):
    """Outbox: read-only with delivery state and last error; "Retry" queues a failed message."""
    import workflow
    row = workflow.queue_email(network.pr_a1.email, "Hello", "Body")
    models.Outbox.update(state=models.OUTBOX_FAILED, last_error="SMTP: refused").where(
        models.Outbox.id == row.id).execute()
    page = admin.get("/admin/outbox/").get_data(as_text=True)
    assert "SMTP: refused" in page and "failed" in page
    assert admin.get(f"/admin/outbox/edit/?id={row.id}").status_code in (302, 403, 404)
    _action(admin, "outbox", "retry", [row.id])
    assert models.Outbox.get_by_id(row.id).state == models.OUTBOX_PENDING
    deliver_outbox()
    assert smtp_server.wait_for(1)[0]["subject"] == "Hello"
    assert models.Outbox.get_by_id(row.id).state == models.OUTBOX_SENT


def test_outbox_hides_links_unless_kept(admin, network):
    """Invitation links are private in sent emails, shown whole in kept ones (no transport)."""
    import workflow
    link = workflow.issue_link(network.pr_a1, "reset", "k", "http://x")
    row = models.Outbox.get(models.Outbox.kind == "reset")
    page = admin.get(f"/admin/outbox/details/?id={row.id}").get_data(as_text=True)
    assert link not in page and "[link hidden]" in page
    models.Outbox.update(state=models.OUTBOX_KEPT).where(models.Outbox.id == row.id).execute()
    assert link in admin.get(f"/admin/outbox/details/?id={row.id}").get_data(as_text=True)


def test_r_roi_6_outbox_never_shows_a_text_message_code(admin, network):
    """R-ROI-6 (battery item 11): the code texted to the client proves the client's own
    consent; the administrators' outbox shows the text without it, queued, sent or kept."""
    import workflow
    row = workflow.queue_text("+14065550100", "CONNECT: your security code for release R-1 "
                              "is 482913. Give it to the person helping you.", kind="roi_text_code")
    for state in (models.OUTBOX_PENDING, models.OUTBOX_SENT, models.OUTBOX_KEPT):
        models.Outbox.update(state=state).where(models.Outbox.id == row.id).execute()
        page = admin.get(f"/admin/outbox/details/?id={row.id}").get_data(as_text=True)
        assert "482913" not in page and "[code hidden]" in page and "release R-1" in page


def test_r_safe_1_audit_log_read_only_and_filterable(admin, network):
    """R-SAFE-1: the audit log lists sign-ins and changes, filterable; no create/edit/delete."""
    page = admin.get("/admin/audit/?search=sign_in").get_data(as_text=True)
    assert "sign_in" in page and network.admin.email in page
    event = models.AuditEvent.select().first()
    for url in ("/admin/audit/new/", f"/admin/audit/edit/?id={event.id}"):
        assert admin.get(url).status_code in (302, 403, 404)
    r = admin.post("/admin/audit/delete/", {"id": event.id}, token_from="/admin/audit/")
    assert r.status_code in (302, 403, 404)
    assert models.AuditEvent.select().where(models.AuditEvent.id == event.id).exists()
    assert admin.get("/admin/audit/?flt0_0=denied").status_code == 200


def test_admin_lists_have_counts_and_sorting(admin, network):
    """R-UX-2: lists say how many rows they hold and can be sorted."""
    for view in ("users", "programs", "agencies", "audit", "outbox", "memberships"):
        response = admin.get(f"/admin/{view}/?sort=0&desc=1")
        assert response.status_code == 200, view


def test_new_agency_in_demo_region(admin):
    """Agencies: search finds by name."""
    make_agency("Searchable Place")
    assert "Searchable Place" in admin.get("/admin/agencies/?search=Searchable").get_data(as_text=True)
    make_program(name="Findable Program")
    assert "Findable Program" in admin.get("/admin/programs/?search=Findable").get_data(as_text=True)
