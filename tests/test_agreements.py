"""Agreements: User MOU (R-MOU-1), Agency MOU (R-MOU-2, R-MOU-3), reminders (R-MOU-4)."""

import datetime as dt

import pytest

import models
import workflow
from tests.conftest import Browser, deliver_outbox, make_program, make_user


def test_r_mou_1_sign_user_mou_with_typed_name(browser, network):
    """R-MOU-1: a wrong name changes nothing; the right one signs for a year, then the
    pages open."""
    user = make_user("provider", network.a1, mou=False, name="Mona Moo")
    browser.login(user)
    assert "/auth/user-mou" in browser.get("/").headers["Location"]
    bad = browser.post("/auth/user-mou", {"signature_name": "Someone Else"}, token_from="/auth/user-mou")
    assert bad.status_code == 422 and "Type your full name exactly" in bad.get_data(as_text=True)
    assert models.UserMou.select().where(models.UserMou.user == user).count() == 0
    ok = browser.post("/auth/user-mou", {"signature_name": "  mona   MOO "}, token_from="/auth/user-mou")
    assert ok.status_code == 302
    mou = models.UserMou.get(models.UserMou.user == user)
    assert mou.expires_on == models.last_valid_day(models.local_today())
    assert browser.get("/").status_code == 200


@pytest.mark.parametrize("days_ago,gated", [(0, False), (364, False), (365, False), (366, True)])
def test_r_mou_1_user_mou_is_yearly(browser, network, days_ago, gated):
    """R-MOU-1: the User MOU must be signed again every year (valid through the anniversary)."""
    user = make_user("provider", network.a1, mou=False)
    signed = models.local_today() - dt.timedelta(days=days_ago)
    models.UserMou.create(user=user, signature_name=user.name, signed_on=signed,
                          expires_on=models.last_valid_day(signed))
    browser.login(user)
    response = browser.get("/")
    assert (response.status_code == 302 and "/auth/user-mou" in response.headers["Location"]) is gated


def test_r_mou_1_my_account_shows_mou_status(browser, network):
    """R-MOU-1: "My account" shows the User MOU status and the change password link."""
    browser.login(network.pr_a1)
    page = browser.get("/account/").get_data(as_text=True)
    assert "valid through" in page and "Change password" in page and "Program A1" in page


def test_r_mou_2_gatekeeper_signs_agency_mou(browser, network):
    """R-MOU-2: the gatekeeper lists their programs with the MOU state and signs one."""
    program = make_program(network.agency_a, "Program New", mou=False)
    models.Membership.create(user=network.gk_a1, program=program, role="gatekeeper")
    browser.login(network.gk_a1)
    page = browser.get("/agency-mou/").get_data(as_text=True)
    assert "Program New" in page and "Not Signed" in page and "Program A1" in page
    bad = browser.post("/agency-mou/", {"program_id": program.id, "signature_name": "Nobody"},
                       token_from="/agency-mou/")
    assert bad.status_code == 302
    assert "Type your full name exactly" in browser.get("/agency-mou/").get_data(as_text=True)
    assert not models.Program.get_by_id(program.id).has_valid_mou()
    ok = browser.post("/agency-mou/", {"program_id": program.id, "signature_name": network.gk_a1.name},
                      token_from="/agency-mou/")
    assert ok.status_code == 302
    fresh = models.Program.get_by_id(program.id)
    assert fresh.has_valid_mou() and fresh.mou_valid_until == models.last_valid_day(models.local_today())
    row = models.AgencyMou.get(models.AgencyMou.program == program)
    assert row.signed_by_id == network.gk_a1.id and row.state_on() == "signed"
    assert models.AuditEvent.select().where(models.AuditEvent.action == "sign_agency_mou").exists()


@pytest.mark.parametrize("who,program,status", [
    ("gk_a1", "b1", 404),      # a program where they are not gatekeeper
    ("gk_a1", "missing", 404),
    ("pr_a1", "a1", 403),      # providers do not sign
])
def test_r_mou_2_only_own_gatekeeper_signs(browser, network, who, program, status):
    """R-MOU-2: only a gatekeeper of the program signs; foreign ids look missing (404)."""
    user = getattr(network, who)
    browser.login(user)
    program_id = getattr(network, program).id if program != "missing" else 999999
    before = models.AgencyMou.select().count()
    token_from = "/agency-mou/" if who.startswith("gk") else "/account/"
    response = browser.post("/agency-mou/", {"program_id": program_id, "signature_name": user.name},
                            token_from=token_from)
    assert response.status_code == status
    assert models.AgencyMou.select().count() == before


@pytest.mark.parametrize("valid_until_offset,visible", [(None, False), (-1, False), (0, True), (200, True)])
def test_r_mou_3_program_without_valid_mou_is_hidden(app, valid_until_offset, visible):
    """R-MOU-3: without a valid Agency MOU a program is not offered (with_valid_mou)."""
    program = make_program(mou=False)
    if valid_until_offset is not None:
        models.Program.update(mou_valid_until=models.local_today() + dt.timedelta(days=valid_until_offset)) \
            .where(models.Program.id == program.id).execute()
    assert (program.id in {p.id for p in models.Program.with_valid_mou()}) is visible


# ---------------------------------------------------------------------------
# R-MOU-4: reminders 30 and 7 days before expiry and on expiry, once each
# ---------------------------------------------------------------------------

def _expire_program_mou_in(program, days):
    until = models.local_today() + dt.timedelta(days=days)
    models.Program.update(mou_valid_until=until).where(models.Program.id == program.id).execute()
    return until


@pytest.mark.parametrize("days_left,stage", [
    (45, None), (31, None), (30, "30"), (12, "30"), (7, "7"), (0, "7"), (-1, "expired"),
    (-30, "expired"), (-31, None)])
def test_r_mou_4_agency_mou_reminder_stages(app, network, days_left, stage):
    """R-MOU-4: the stage sent depends on the days left; each is sent once only."""
    for program in (network.a2, network.b1):
        _expire_program_mou_in(program, 300)
    _expire_program_mou_in(network.a1, days_left)
    models.UserMou.update(expires_on=models.local_today() + dt.timedelta(days=300)).execute()
    first = workflow.send_mou_reminders()
    again = workflow.send_mou_reminders()
    assert again == 0
    keys = [r.key for r in models.SentReminder.select()]
    if stage is None:
        assert first == 0 and keys == []
    else:
        assert first == 1 and keys == [f"agency_mou:{network.a1.id}:{_until(network.a1)}:{stage}"]


def _until(program):
    return models.Program.get_by_id(program.id).mou_valid_until.isoformat()


def test_r_mou_4_agency_mou_reminder_recipients_email_and_bell(app, network, smtp_server):
    """R-MOU-4: gatekeepers of the program and administrators of its region (statewide too)
    get an email and a bell notification; providers and other regions' coordinators do not.
    The worker (`run-worker --once`) sends them."""
    regional_here = make_user(admin=True, statewide=False, regions=("Region 10 - Gallatin",),
                              email="coord.here@example.org")
    regional_there = make_user(admin=True, statewide=False, regions=("Region 9 - Missoula",),
                               email="coord.there@example.org")
    for program in (network.a2, network.b1):
        _expire_program_mou_in(program, 300)
    models.UserMou.update(expires_on=models.local_today() + dt.timedelta(days=300)).execute()
    _expire_program_mou_in(network.a1, 7)
    result = app.test_cli_runner().invoke(args=["run-worker", "--once"])
    assert result.exit_code == 0, result.output
    expected = {network.gk_a1.email, network.admin.email, regional_here.email}
    mails = smtp_server.wait_for(len(expected))
    assert {m["to"][0] for m in mails} == expected
    assert all("Program A1" in m["body"] and "/agency-mou/" in m["body"] for m in mails)
    bell = {n.user_id for n in models.Notification.select().where(models.Notification.kind == "mou_reminder")}
    assert bell == {network.gk_a1.id, network.admin.id, regional_here.id}
    assert regional_there.id not in bell and network.pr_a1.id not in bell
    # Once only: a second tick sends nothing new.
    app.test_cli_runner().invoke(args=["run-worker", "--once"])
    deliver_outbox()
    assert models.Outbox.select().where(models.Outbox.kind == "mou_reminder").count() == 3


def test_r_mou_4_user_mou_reminders_once_per_stage(app, network, smtp_server):
    """R-MOU-4: a user is reminded 30 and 7 days before their User MOU expires and on
    expiry, each once; the bell shows it."""
    for program in (network.a1, network.a2, network.b1):
        _expire_program_mou_in(program, 300)
    models.UserMou.update(expires_on=models.local_today() + dt.timedelta(days=300)).execute()
    models.UserMou.update(expires_on=models.local_today() + dt.timedelta(days=30)).where(
        models.UserMou.user == network.pr_a1).execute()
    today = models.local_today()
    sent = [workflow.send_mou_reminders(day=today + dt.timedelta(days=offset))
            for offset in (0, 1, 23, 24, 30, 31, 32)]
    assert sent == [1, 0, 1, 0, 0, 1, 0]
    stages = sorted(r.key.rsplit(":", 1)[1] for r in models.SentReminder.select())
    assert stages == ["30", "7", "expired"]
    deliver_outbox()
    assert len(smtp_server.wait_for(3)) == 3
    assert {m["to"][0] for m in smtp_server.messages} == {network.pr_a1.email}
    b = Browser(app)
    b.login(network.pr_a1)
    page = b.get("/notifications/").get_data(as_text=True)
    assert "User MOU is valid through" in page


def test_r_mou_4_renewal_restarts_reminders(app, network):
    """R-MOU-4: signing again renews for a year; the next cycle's reminders are new keys."""
    for program in (network.a2, network.b1):
        _expire_program_mou_in(program, 300)
    models.UserMou.update(expires_on=models.local_today() + dt.timedelta(days=300)).execute()
    _expire_program_mou_in(network.a1, 5)
    assert workflow.send_mou_reminders() == 1
    workflow.sign_agency_mou(workflow.Actor(network.gk_a1), network.a1, network.gk_a1.name)
    assert workflow.send_mou_reminders() == 0
    later = models.last_valid_day(models.local_today()) - dt.timedelta(days=3)
    assert workflow.send_mou_reminders(day=later) == 1
