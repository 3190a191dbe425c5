"""Battery item 6: sessions (R-AUTH-6, R-AUTH-7, R-MOU-1, R-SAFE-1).

Item 6 as a whole: a copied cookie replayed after sign-out, deactivation, User MOU
expiry and role removal is refused, with no client data in the answer (here, on every
kind of client screen; tests/test_accounts.py::test_r_auth_6_copied_cookie_stops_working
covers the same events plus password change and reset on the account page); the session
id changes at sign-in and a cookie planted before sign-in never becomes signed in (no
fixation); idle (30 min) and absolute (12 h) timeouts, also for a cookie captured at
sign-in and replayed (test_accounts.py::test_r_auth_7_idle_timeout and
::test_r_auth_7_absolute_timeout cover the browser's own cookie); cookie flags HttpOnly,
SameSite=Lax, and Secure over https, on every cookie of the flow
(test_accounts.py::test_r_auth_7_cookie_flags covers the sign-in answer)."""

import datetime as dt

import pytest
from freezegun import freeze_time

import models
import workflow
from tests.conftest import Browser
from tests.referral_helpers import client, sent
from tests.security.world import (SESSION_COOKIE, plant_session_cookie, session_contents,
                                  session_cookie)

SECRET_NAMES = ("Sessionclient", "Zed")


@pytest.fixture
def victim(app, network):
    """B1's gatekeeper signed in, with a referral of a client "Sessionclient" in the queue;
    a thief holds a copy of the session cookie, which works until the event."""
    subject, _roi = client(network, last_name="Sessionclient")
    network.subject, network.referral = subject, sent(network, subject)
    browser = Browser(app)
    browser.login(network.gk_b1)
    thief = Browser(app)
    plant_session_cookie(thief, session_cookie(browser))
    assert "Sessionclient" in thief.get("/agency/referrals/").get_data(as_text=True)
    network.session_id = session_contents(app, session_cookie(browser))["_user_id"]
    return network, browser, thief


def client_urls(n):
    """Client screens, and last the account page (open without a User MOU)."""
    return [f"/subjects/{n.subject.id}", f"/referrals/{n.referral.id}", "/agency/referrals/",
            "/agency/referrals/export/csv/", f"/reports/care-team/{n.subject.id}",
            f"/referrals/chart/{n.subject.id}", "/account/"]


def _sign_out(app, n, browser):
    browser.post("/auth/sign-out", {}, token_from="/account/")


def _deactivate(app, n, browser):
    workflow.set_user_active(workflow.Actor(n.admin), n.gk_b1, False)


def _user_mou_expires(app, n, browser):
    yesterday = models.local_today() - dt.timedelta(days=1)
    models.UserMou.update(expires_on=yesterday).where(models.UserMou.user == n.gk_b1).execute()


def _role_removed(app, n, browser):
    membership = models.Membership.get(models.Membership.user == n.gk_b1)
    workflow.remove_membership(workflow.Actor(n.admin), membership)


EVENTS = {"sign-out": (_sign_out, "/auth/sign-in"), "deactivation": (_deactivate, "/auth/sign-in"),
          "user-mou-expired": (_user_mou_expires, "/auth/user-mou"),
          "role-removal": (_role_removed, "/auth/sign-in")}


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_item_6_r_auth_6_copied_cookie_replayed_on_client_screens(app, victim, event):
    """Battery item 6 (R-AUTH-6, R-MOU-1): after the event, the copied cookie opens no
    client screen: each answer is a redirect to sign-in (the User MOU page when only the
    MOU expired) and carries no client data."""
    n, browser, thief = victim
    happen, target = EVENTS[event]
    happen(app, n, browser)
    for url in client_urls(n)[:-1] if event == "user-mou-expired" else client_urls(n):
        response = thief.get(url)
        body = response.get_data(as_text=True)
        assert response.status_code == 302, (event, url, response.status_code)
        assert target in response.headers["Location"], (event, url, response.headers["Location"])
        assert not any(name in body for name in SECRET_NAMES), (event, url)
    if event != "user-mou-expired":  # the server session itself is over
        assert models.UserSession.get_by_id(n.session_id).revoked_at is not None


def test_item_6_r_auth_6_session_id_changes_at_sign_in(app, network):
    """Battery item 6 (R-AUTH-6): the cookie before sign-in (it carries the CSRF token)
    holds no session id; the one after holds a new server session id; signing in again
    gives yet another one, and the first stays its own."""
    b = Browser(app)
    b.token()  # the sign-in page: an anonymous cookie
    before = session_cookie(b)
    assert before and "_user_id" not in session_contents(app, before)
    b.login(network.pr_a1)
    after = session_cookie(b)
    first_id = session_contents(app, after)["_user_id"]
    assert after != before and models.UserSession.get_by_id(first_id).user_id == network.pr_a1.id
    again = Browser(app)
    again.login(network.pr_a1)
    assert session_contents(app, session_cookie(again))["_user_id"] != first_id


def test_item_6_r_auth_6_no_session_fixation(app, network):
    """Battery item 6 (R-AUTH-6): an attacker plants their own pre-sign-in cookie in the
    victim's browser; the victim signs in; the attacker's copy of the planted cookie is
    still anonymous, and the victim's authenticated cookie is a new value."""
    attacker = Browser(app)
    attacker.token()
    planted = session_cookie(attacker)
    victim_browser = Browser(app)
    plant_session_cookie(victim_browser, planted)
    victim_browser.login(network.gk_a1)
    assert session_cookie(victim_browser) != planted
    response = attacker.get("/account/")
    assert response.status_code == 302 and "/auth/sign-in" in response.headers["Location"]
    # Nor does an attacker's own signed-in cookie become the victim's session.
    attacker.login(network.pr_b1)
    mine = session_contents(app, session_cookie(attacker))["_user_id"]
    plant_session_cookie(victim_browser, session_cookie(attacker))
    victim_browser.login(network.gk_a1)
    theirs = session_contents(app, session_cookie(victim_browser))["_user_id"]
    assert theirs != mine and models.UserSession.get_by_id(theirs).user_id == network.gk_a1.id
    assert models.UserSession.get_by_id(mine).user_id == network.pr_b1.id


def test_item_6_r_auth_7_idle_timeout_for_a_cookie_captured_at_sign_in(app, victim):
    """Battery item 6 (R-AUTH-7): the cookie of the sign-in answer itself, replayed after
    31 idle minutes, is refused like any other (it must carry the time of last use)."""
    n, _browser, _thief = victim
    start = dt.datetime.now(dt.timezone.utc)
    with freeze_time(start) as clock:
        b = Browser(app)
        b.login(n.gk_b1)
        captured = session_cookie(b)
        clock.tick(dt.timedelta(minutes=31))
        thief = Browser(app)
        plant_session_cookie(thief, captured)
        response = thief.get(f"/referrals/{n.referral.id}")
        assert response.status_code == 302 and "/auth/sign-in" in response.headers["Location"]
        assert "Sessionclient" not in response.get_data(as_text=True)


def test_item_6_r_auth_7_absolute_timeout_for_a_copy_kept_active(app, victim):
    """Battery item 6 (R-AUTH-7): a copied cookie used every 20 minutes still ends 12 hours
    after sign-in, on the client screens too."""
    n, _browser, _thief = victim
    start = dt.datetime.now(dt.timezone.utc)
    with freeze_time(start) as clock:
        b = Browser(app)
        b.login(n.gk_b1)
        thief = Browser(app)
        plant_session_cookie(thief, session_cookie(b))
        for _ in range(36):  # 12 h 00 min
            clock.tick(dt.timedelta(minutes=20))
            if thief.get("/account/").status_code != 200:
                break
        clock.tick(dt.timedelta(minutes=1))
        response = thief.get(f"/subjects/{n.subject.id}")
        assert response.status_code == 302 and "/auth/sign-in" in response.headers["Location"]
        assert "Sessionclient" not in response.get_data(as_text=True)


@pytest.mark.parametrize("https", [False, True])
def test_item_6_r_auth_7_every_cookie_of_the_flow_has_its_flags(app, network, https):
    """Battery item 6 (R-AUTH-7): every Set-Cookie of a whole visit (the anonymous sign-in
    page, the sign-in, client screens, the program chooser, sign-out) is HttpOnly and
    SameSite=Lax, and Secure exactly when the deployment is served over https; no
    remember-me cookie outlives the session."""
    app.config["SESSION_COOKIE_SECURE"] = https
    subject, _roi = client(network)
    b = Browser(app)
    answers = [b.client.get("/auth/sign-in"), b.login(network.gk_a1)]
    for url in ("/", f"/subjects/{subject.id}", "/agency/sent/", "/program/"):
        answers.append(b.get(url))
    answers.append(b.post("/auth/sign-out", {}, token_from="/account/"))
    cookies = [h for r in answers for h in r.headers.getlist("Set-Cookie")]
    assert cookies
    for header in cookies:
        name = header.split("=", 1)[0]
        assert name == SESSION_COOKIE, header
        assert "HttpOnly" in header and "SameSite=Lax" in header, header
        assert ("; Secure" in header) is https, header
