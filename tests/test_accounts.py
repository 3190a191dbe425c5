"""Accounts and sign-in (R-AUTH-1..7), acting program (R-CTX-1..3), audit of sign-ins
(R-SAFE-1), CSRF (R-SAFE-5) and security headers (R-SAFE-6)."""

import datetime as dt
import re

import pytest
from argon2 import PasswordHasher
from freezegun import freeze_time

import models
import workflow
from security import MAX_PASSWORD, password_problems, read_link_token
from tests.conftest import PASSWORD, Browser, deliver_outbox, make_program, make_user

NEW_PASSWORD = "Blue-Lantern-77#"


def sign_in_response(browser, email, password, ip="127.0.0.1"):
    return browser.client.post("/auth/sign-in", data={
        "email": email, "password": password, "csrf_token": browser.token()},
        environ_base={"REMOTE_ADDR": ip})


def signed_in(browser):
    """True when the browser's session still opens a signed-in page."""
    response = browser.get("/account/")
    return response.status_code == 200


# ---------------------------------------------------------------------------
# R-AUTH-1 / R-AUTH-2: invitation by email, first sign-in changes the password
# ---------------------------------------------------------------------------

def test_r_auth_1_invitation_email_link_sets_password(app, browser, network, smtp_server):
    """R-AUTH-1: an administrator creates the account; the email's one-time link sets the
    password; the link then stops working."""
    browser.login(network.admin)
    response = browser.post("/admin/users/new/", {
        "email": "New.Person@Example.org", "name": "Nora New", "phone": "",
        "program": network.a1.id, "role": "provider"}, token_from="/admin/users/new/")
    assert response.status_code == 302
    user = models.User.get(models.User.email == "new.person@example.org")
    assert user.password_hash is None and user.must_change_password
    assert {m.role for m in models.Membership.select().where(models.Membership.user == user)} == {"provider"}
    deliver_outbox()
    mail = smtp_server.wait_for(1)[0]
    assert mail["to"] == ["new.person@example.org"] and "nora.new" not in mail["body"]
    link = next(url for url in smtp_server.links() if "/auth/invitation/" in url)
    path = link.split("http://localhost", 1)[1]
    newcomer = Browser(app)
    assert newcomer.get(path).status_code == 200
    done = newcomer.post(path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, token_from=path)
    assert done.status_code == 302
    newcomer.login("new.person@example.org", NEW_PASSWORD)
    # Single use: the same link is refused now.
    again = Browser(app).post(path, {"password": "Other-Pass-99!", "confirm": "Other-Pass-99!"},
                              token_from=path)
    assert again.status_code == 400 and "invalid, used or expired" in again.get_data(as_text=True)


def test_r_auth_1_create_admin_cli_sends_invitation(app):
    """R-AUTH-1: `create-admin` without --password queues an invitation email."""
    result = app.test_cli_runner().invoke(args=["create-admin", "--email", "boss@example.org",
                                                "--name", "Bo Boss"])
    assert result.exit_code == 0, result.output
    row = models.Outbox.get(models.Outbox.recipient == "boss@example.org")
    assert "/auth/invitation/" in row.body


def test_r_auth_2_first_sign_in_forces_password_change(browser, network):
    """R-AUTH-2: with a temporary password, every page leads to the password change first."""
    user = make_user("provider", network.a1, must_change=True)
    browser.login(user)
    for url in ("/", "/account/", "/auth/user-mou", "/agency-mou/"):
        response = browser.get(url)
        assert response.status_code == 302 and "/auth/change-password" in response.headers["Location"], url
    bad = browser.post("/auth/change-password", {"current_password": PASSWORD, "password": "short",
                                                 "confirm": "short"}, token_from="/auth/change-password")
    assert bad.status_code == 422 and "at least 8 characters" in bad.get_data(as_text=True)
    ok = browser.post("/auth/change-password", {"current_password": PASSWORD, "password": NEW_PASSWORD,
                                                "confirm": NEW_PASSWORD}, token_from="/auth/change-password")
    assert ok.status_code == 302
    assert browser.get("/").status_code == 200
    assert not models.User.get_by_id(user.id).must_change_password


# ---------------------------------------------------------------------------
# R-AUTH-3: password policy, argon2id, rehash
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("password,policy,accepted", [
    ("Correct-Horse-42!", "composition", True),
    ("Sh0rt!a", "composition", False),          # 7 characters
    ("nonumber-Here!", "composition", False),
    ("NOLOWER-42!", "composition", False),
    ("noupper-42!", "composition", False),
    ("NoSymbol42abc", "composition", False),
    ("Password1!", "composition", False),       # common
    ("P@ssw0rd", "composition", False),         # common
    ("P@ssw0rd123!", "composition", False),     # common word dressed up
    ("Aa1!" + "x" * 124, "composition", True),  # 128 characters
    ("Aa1!" + "x" * 125, "composition", False),  # 129 characters
    ("correct horse battery staple", "nist", True),  # no composition rule
    ("shortpw", "nist", False),
    ("password", "nist", False),
])
def test_r_auth_3_password_policy(password, policy, accepted):
    """R-AUTH-3: composition policy (default), blocklist, 128 characters, NIST switch."""
    assert (password_problems(password, policy=policy) == []) is accepted


def test_r_auth_3_nist_setting_switches_policy(app, browser, network, monkeypatch):
    """R-AUTH-3: PASSWORD_POLICY=nist accepts a long pass phrase without symbols."""
    monkeypatch.setenv("PASSWORD_POLICY", "nist")
    browser.login(network.pr_a1)
    phrase = "purple elephants dance quietly"
    response = browser.post("/auth/change-password", {
        "current_password": PASSWORD, "password": phrase, "confirm": phrase},
        token_from="/auth/change-password")
    assert response.status_code == 302
    Browser(app).login(network.pr_a1, phrase)


def test_r_auth_3_long_password_not_truncated_and_argon2id(app, browser, network):
    """R-AUTH-3: 128 characters are kept whole (a prefix does not sign in); hashes are argon2id."""
    long_password = "Aa1!" + "z" * 120 + "tail"
    assert len(long_password) == MAX_PASSWORD
    browser.login(network.pr_a1)
    browser.post("/auth/change-password", {"current_password": PASSWORD, "password": long_password,
                                           "confirm": long_password}, token_from="/auth/change-password")
    user = models.User.get_by_id(network.pr_a1.id)
    assert user.password_hash.startswith("$argon2id$")
    assert sign_in_response(Browser(app), user.email, long_password[:72]).status_code == 401
    Browser(app).login(user, long_password)


def test_r_auth_3_old_hash_parameters_are_rehashed(app, network):
    """R-AUTH-3: a hash made with older parameters is replaced at the next sign-in."""
    weak = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1).hash(PASSWORD)
    models.User.update(password_hash=weak).where(models.User.id == network.pr_a1.id).execute()
    Browser(app).login(network.pr_a1)
    new_hash = models.User.get_by_id(network.pr_a1.id).password_hash
    assert new_hash != weak and new_hash.startswith("$argon2id$") and "m=16," not in new_hash


# ---------------------------------------------------------------------------
# R-AUTH-4: Forgot Password
# ---------------------------------------------------------------------------

def forgot(browser, address):
    return browser.post("/auth/forgot-password", {"email": address}, token_from="/auth/forgot-password")


def test_r_auth_4_forgot_password_same_answer_and_single_use_link(app, browser, network, smtp_server):
    """R-AUTH-4: the answer does not reveal whether an account exists; the emailed link
    works once."""
    known = forgot(browser, network.pr_a1.email)
    unknown = forgot(browser, "nobody@example.org")
    assert known.status_code == unknown.status_code == 302
    texts = [Browser(app).get(r.headers["Location"]).status_code for r in (known, unknown)]
    assert texts[0] == texts[1]
    assert models.Outbox.select().where(models.Outbox.recipient == "nobody@example.org").count() == 0
    deliver_outbox()
    link = smtp_server.wait_for(1) and next(u for u in smtp_server.links() if "/auth/reset/" in u)
    path = link.split("http://localhost", 1)[1]
    reset = Browser(app)
    assert reset.post(path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, token_from=path).status_code == 302
    Browser(app).login(network.pr_a1, NEW_PASSWORD)
    reused = Browser(app).post(path, {"password": "Other-Pass-99!", "confirm": "Other-Pass-99!"}, token_from=path)
    assert reused.status_code == 400


def test_r_auth_4_forgot_password_page_says_the_same(app, network):
    """R-AUTH-4: the flashed message is identical for a known and an unknown address."""
    messages = []
    for address in (network.pr_a1.email, "nobody@example.org"):
        b = Browser(app)
        forgot(b, address)
        messages.append(re.sub(r'(value|nonce)="[^"]*"', "", b.get("/auth/sign-in").get_data(as_text=True)))
    assert messages[0] == messages[1] and "reset link is on its way" in messages[0]


def test_r_auth_4_reset_link_expires_and_newer_link_replaces_older(app, network):
    """R-AUTH-4: a reset link expires after an hour; issuing a new one spends the older one."""
    secret = app.config["SECRET_KEY"]
    first = workflow.issue_link(network.pr_a1, "reset", secret, "")
    second = workflow.issue_link(network.pr_a1, "reset", secret, "")
    token_first, token_second = first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]
    with pytest.raises(workflow.RuleViolation):
        workflow.use_link("reset", token_first, NEW_PASSWORD, secret)
    with freeze_time(dt.datetime.utcnow() + dt.timedelta(hours=1, minutes=1)):
        assert read_link_token(secret, "reset", token_second) is None
        with pytest.raises(workflow.RuleViolation):
            workflow.use_link("reset", token_second, NEW_PASSWORD, secret)
    workflow.use_link("reset", token_second, NEW_PASSWORD, secret)


@pytest.mark.parametrize("token", ["garbage", "", "a" * 500, "eyJ1IjoxfQ.bad.sig"])
def test_r_auth_4_bad_reset_tokens_are_refused_not_500(browser, network, token):
    """R-AUTH-4, R-SAFE-2: a malformed link gives a clear message, never a 500."""
    path = f"/auth/reset/{token}" if token else "/auth/reset/x"
    response = browser.post(path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, token_from=path)
    assert response.status_code == 400
    assert "invalid, used or expired" in response.get_data(as_text=True)


# ---------------------------------------------------------------------------
# R-AUTH-5: throttling in the database, unknown address answered the same
# ---------------------------------------------------------------------------

def test_r_auth_5_unknown_address_same_answer_as_wrong_password(app, network):
    """R-AUTH-5: an unknown address and a wrong password get the same status and text."""
    def page(email):
        r = sign_in_response(Browser(app), email, "Wrong-Password-1!")
        return r.status_code, re.sub(r'(value|nonce)="[^"]*"', "", r.get_data(as_text=True))

    import time
    started = time.monotonic()
    page("nobody@example.org")
    unknown_seconds = time.monotonic() - started
    assert unknown_seconds >= 0.3  # the same floor as a wrong password (no early answer)
    assert page(network.pr_a1.email)[0] == page("nobody@example.org")[0] == 401
    assert page(network.pr_a1.email)[1].replace(network.pr_a1.email, "X") == \
        page("nobody@example.org")[1].replace("nobody@example.org", "X")


@pytest.fixture
def no_delay(monkeypatch):
    """The constant-time floor of a refused sign-in is not what these tests measure."""
    import admin_views.auth
    monkeypatch.setattr(admin_views.auth, "SIGN_IN_MIN_SECONDS", 0)


def test_r_auth_5_throttled_per_account(app, network, no_delay):
    """R-AUTH-5: after 5 failures the right password is refused too, from any address."""
    for n in range(workflow.FAILED_PER_ACCOUNT):
        assert sign_in_response(Browser(app), network.pr_a1.email, "Wrong-1!", ip=f"10.0.0.{n}").status_code == 401
    assert models.SignInAttempt.select().where(models.SignInAttempt.email == network.pr_a1.email).count() == 5
    blocked = sign_in_response(Browser(app), network.pr_a1.email, PASSWORD, ip="10.9.9.9")
    assert blocked.status_code == 401 and "Too many failed sign-ins" in blocked.get_data(as_text=True)
    # Unknown addresses are throttled the same way (no difference to observe).
    for _ in range(workflow.FAILED_PER_ACCOUNT):
        sign_in_response(Browser(app), "ghost@example.org", "Wrong-1!", ip="10.1.1.1")
    ghost = sign_in_response(Browser(app), "ghost@example.org", "Wrong-1!", ip="10.1.1.2")
    assert "Too many failed sign-ins" in ghost.get_data(as_text=True)
    # The window passes: the right password works again.
    models.SignInAttempt.update(at=models.utcnow() - dt.timedelta(minutes=16)).execute()
    assert sign_in_response(Browser(app), network.pr_a1.email, PASSWORD).status_code == 302


def test_r_auth_5_throttled_per_address(app, network, no_delay):
    """R-AUTH-5: 20 failures from one address block that address for every account."""
    for n in range(workflow.FAILED_PER_ADDRESS):
        sign_in_response(Browser(app), f"guess{n}@example.org", "Wrong-1!", ip="192.0.2.7")
    assert sign_in_response(Browser(app), network.gk_a1.email, PASSWORD, ip="192.0.2.7").status_code == 401
    assert sign_in_response(Browser(app), network.gk_a1.email, PASSWORD, ip="192.0.2.8").status_code == 302


def test_r_auth_5_inactive_account_refused_like_wrong_password(app, network):
    """R-AUTH-5: a deactivated account gets the same refusal as a wrong password."""
    user = make_user("provider", network.a1, active=False)
    response = sign_in_response(Browser(app), user.email, PASSWORD)
    assert response.status_code == 401 and workflow.SIGN_IN_REFUSED in response.get_data(as_text=True)


# ---------------------------------------------------------------------------
# R-AUTH-6: server-side revocation; a copied cookie stops working
# ---------------------------------------------------------------------------

def _copy_session(source, target):
    cookie = source.client.get_cookie("connect_session")
    target.client.set_cookie("connect_session", cookie.value)


def _sign_out(app, n, victim, thief):
    victim.post("/auth/sign-out", {}, token_from="/account/")


def _deactivate(app, n, victim, thief):
    workflow.set_user_active(workflow.Actor(n.admin), n.pr_a1, False)


def _change_password(app, n, victim, thief):
    response = victim.post("/auth/change-password", {"current_password": PASSWORD, "password": NEW_PASSWORD,
                                                     "confirm": NEW_PASSWORD}, token_from="/auth/change-password")
    assert response.status_code == 302
    assert signed_in(victim)  # the person who changed it continues in a new session


def _reset(app, n, victim, thief):
    link = workflow.issue_link(n.pr_a1, "reset", app.config["SECRET_KEY"], "")
    workflow.use_link("reset", link.rsplit("/", 1)[1], NEW_PASSWORD, app.config["SECRET_KEY"])


def _remove_role(app, n, victim, thief):
    membership = models.Membership.get(models.Membership.user == n.pr_a1)
    workflow.remove_membership(workflow.Actor(n.admin), membership)


@pytest.mark.parametrize("event", [_sign_out, _deactivate, _change_password, _reset, _remove_role],
                         ids=["sign-out", "deactivation", "password-change", "reset", "role-removal"])
def test_r_auth_6_copied_cookie_stops_working(app, network, event):
    """R-AUTH-6: sign-out, deactivation, password change or reset, role removal end the
    session on the server: a copied cookie is refused afterwards."""
    victim, thief = Browser(app), Browser(app)
    victim.login(network.pr_a1)
    _copy_session(victim, thief)
    assert signed_in(thief)
    event(app, network, victim, thief)
    response = thief.get("/account/")
    assert response.status_code == 302 and "/auth/sign-in" in response.headers["Location"]


# ---------------------------------------------------------------------------
# R-AUTH-7: idle 30 minutes, absolute 12 hours, cookie flags
# ---------------------------------------------------------------------------

def test_r_auth_7_idle_timeout(app, network):
    """R-AUTH-7: 29 idle minutes keep the session; 31 end it."""
    start = dt.datetime.utcnow()
    with freeze_time(start) as clock:
        b = Browser(app)
        b.login(network.pr_a1)
        clock.tick(dt.timedelta(minutes=29))
        assert signed_in(b)
        clock.tick(dt.timedelta(minutes=31))
        assert not signed_in(b)


def test_r_auth_7_absolute_timeout(app, network):
    """R-AUTH-7: even an active session ends 12 hours after sign-in."""
    start = dt.datetime.utcnow()
    with freeze_time(start) as clock:
        b = Browser(app)
        b.login(network.pr_a1)
        for _ in range(35):  # active every 20 minutes for 11 h 40 min
            clock.tick(dt.timedelta(minutes=20))
            assert signed_in(b)
        clock.tick(dt.timedelta(minutes=21))
        assert not signed_in(b)


@pytest.mark.parametrize("secure", [False, True])
def test_r_auth_7_cookie_flags(app, network, secure, monkeypatch):
    """R-AUTH-7: HttpOnly, SameSite=Lax; Secure when served over https."""
    from app import settings_from_env
    monkeypatch.setenv("BASE_URL", "https://connect.example" if secure else "http://127.0.0.1:5000")
    assert settings_from_env()["SESSION_COOKIE_SECURE"] is secure
    app.config["SESSION_COOKIE_SECURE"] = secure
    response = Browser(app).login(network.pr_a1)
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("connect_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure


# ---------------------------------------------------------------------------
# R-CTX: acting program
# ---------------------------------------------------------------------------

def test_r_ctx_1_single_program_is_automatic(browser, network):
    """R-CTX-1: a user of one program acts as it at once; its name is on screen."""
    browser.login(network.pr_a1)
    page = browser.get("/").get_data(as_text=True)
    assert "Acting as" in page and "Agency A — Program A1" in page


def test_r_ctx_2_several_programs_chooser_search_and_switch(browser, network):
    """R-CTX-2: a user of several programs chooses (with a search) and switches at any time."""
    user = make_user("provider", network.a1)
    models.Membership.create(user=user, program=network.b1, role="gatekeeper")
    browser.login(user)
    chooser = browser.get("/program/").get_data(as_text=True)
    assert "Program A1" in chooser and "Program B1" in chooser
    searched = browser.get("/program/?q=B1").get_data(as_text=True)
    assert "Act as Program B1" in searched and "Act as Program A1" not in searched
    browser.choose_program(network.b1)
    assert "Agency B — Program B1" in browser.get("/account/").get_data(as_text=True)
    browser.choose_program(network.a1)
    page = browser.get("/account/").get_data(as_text=True)
    assert "Acting as <strong>Agency A — Program A1" in page and "Switch program" in page


@pytest.mark.parametrize("program_id", ["foreign", "999999", "abc", ""])
def test_r_ctx_3_unaffiliated_program_refused(browser, network, program_id):
    """R-CTX-3: choosing a program one is not affiliated with: a clear error, nothing changes."""
    browser.login(network.pr_a1)
    value = str(network.b1.id) if program_id == "foreign" else program_id
    response = browser.post("/program/", {"program_id": value}, token_from="/program/")
    assert response.status_code in (200, 403)
    if program_id in ("foreign", "999999"):
        assert response.status_code == 403
        assert "not affiliated" in response.get_data(as_text=True)
    assert "Agency A — Program A1" in browser.get("/account/").get_data(as_text=True)


# ---------------------------------------------------------------------------
# R-SAFE-1, R-SAFE-5, R-SAFE-6
# ---------------------------------------------------------------------------

def test_r_safe_1_sign_in_attempts_are_audited(app, network):
    """R-SAFE-1: every sign-in attempt is in the audit log (who, when, from where, outcome)."""
    sign_in_response(Browser(app), network.pr_a1.email, "Wrong-1!", ip="198.51.100.4")
    Browser(app).login(network.pr_a1)
    rows = list(models.AuditEvent.select().where(models.AuditEvent.action == "sign_in")
                .order_by(models.AuditEvent.id))
    assert [(r.user_email, r.outcome) for r in rows] == [(network.pr_a1.email, "denied"),
                                                         (network.pr_a1.email, "ok")]
    assert rows[0].ip == "198.51.100.4" and rows[1].user_id == network.pr_a1.id


def test_r_safe_1_audit_rows_cannot_be_changed(app, network):
    """R-SAFE-1: the audit table refuses UPDATE and DELETE."""
    Browser(app).login(network.pr_a1)
    for sql in ("UPDATE audit_event SET action = 'x'", "DELETE FROM audit_event"):
        with pytest.raises(Exception):
            with models.database.atomic():
                models.database.execute_sql(sql)
    assert models.AuditEvent.select().where(models.AuditEvent.action == "x").count() == 0


@pytest.mark.parametrize("url,data", [
    ("/auth/sign-in", {"email": "x@example.org", "password": "y"}),
    ("/auth/sign-out", {}),
    ("/auth/change-password", {"current_password": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}),
    ("/auth/user-mou", {"signature_name": "Pete Provider"}),
    ("/program/", {"program_id": "1"}),
    ("/agency-mou/", {"program_id": "1", "signature_name": "Gail Gatekeeper"}),
    ("/admin/users/new/", {"email": "a@example.org", "name": "A"}),
    ("/admin/users/action/", {"action": "deactivate", "rowid": "1"}),
    ("/admin/agencies/new/", {"name": "X", "region": "1"}),
    ("/notifications/read", {}),
])
def test_r_safe_5_post_without_csrf_token_refused(app, network, url, data):
    """R-SAFE-5: every POST needs a CSRF token; without it nothing changes."""
    b = Browser(app)
    b.login(network.admin)
    before = {m.__name__: m.select().count() for m in (models.User, models.Agency, models.UserMou,
                                                        models.AgencyMou, models.UserSession)}
    response = b.post(url, data, csrf=False)
    assert response.status_code == 400
    after = {m.__name__: m.select().count() for m in (models.User, models.Agency, models.UserMou,
                                                       models.AgencyMou, models.UserSession)}
    assert before == after and models.User.get_by_id(1).is_active


def test_r_safe_5_sign_out_is_post_only(browser, network):
    """R-SAFE-5: no GET signs out (or changes anything)."""
    browser.login(network.pr_a1)
    assert browser.get("/auth/sign-out").status_code == 405
    assert signed_in(browser)


@pytest.mark.parametrize("url", ["/auth/sign-in", "/", "/account/", "/admin/users/", "/program/"])
def test_r_safe_6_security_headers_and_no_store(browser, network, url):
    """R-SAFE-6: CSP with frame-ancestors 'none', nosniff, Referrer-Policy, no-store."""
    browser.login(network.admin)
    response = browser.get(url)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]
    assert "no-store" in response.headers["Cache-Control"]


def test_r_ctx_2_acting_program_shown_in_footer_when_many(browser, network):
    """R-CTX-2: the acting program's name is on every screen of a multi-program user."""
    user = make_user("gatekeeper", network.a1)
    models.Membership.create(user=user, program=network.a2, role="gatekeeper")
    browser.login(user)
    assert "Choose the program you act for" in browser.get("/account/").get_data(as_text=True)
    browser.choose_program(network.a2)
    for url in ("/", "/account/", "/agency-mou/", "/notifications/"):
        assert "Acting as <strong>Agency A — Program A2" in browser.get(url).get_data(as_text=True), url


def test_r_auth_1_program_factory_in_scope(app):
    """The factories make programs with a valid MOU (sanity for the tests above)."""
    assert make_program().has_valid_mou()


# ---------------------------------------------------------------------------
# R-SAFE-7: backup during writes, integrity-checked copy, restore
# ---------------------------------------------------------------------------

def test_r_safe_7_backup_during_writes_and_restore(app, backend, tmp_path):
    """R-SAFE-7: `backup PATH` while another connection keeps writing gives a consistent,
    integrity-checked copy; `restore PATH` brings exactly that state back. SQLite uses the
    online backup API; PostgreSQL pg_dump/pg_restore (skipped only if they are missing)."""
    import shutil
    import sqlite3
    import threading

    if backend == "postgres" and not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        pytest.skip("pg_dump/pg_restore are not installed: PostgreSQL backup is not testable here")
    stop = threading.Event()
    written = []

    def writer():
        """Another process's writes: a separate connection inserting sign-in records."""
        if backend == "sqlite":
            path = app.config["DATABASE_URL"][len("sqlite:///"):]
            conn = sqlite3.connect(path, timeout=10)
            conn.execute("PRAGMA journal_mode=wal")
            sql = "INSERT INTO sign_in_attempt (email, ip, at, success) VALUES (?, ?, ?, ?)"
        else:
            import psycopg
            conn = psycopg.connect(app.config["DATABASE_URL"], autocommit=False)
            sql = "INSERT INTO sign_in_attempt (email, ip, at, success) VALUES (%s, %s, %s, %s)"
        n = 0
        while not stop.is_set():
            conn.execute(sql, (f"w{n}@example.org", "10.0.0.1", dt.datetime.utcnow(), False))
            conn.commit()
            written.append(n)
            n += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            pass
        target = tmp_path / "copy.backup"
        result = app.test_cli_runner().invoke(args=["backup", str(target)])
        assert result.exit_code == 0, result.output
    finally:
        stop.set()
        thread.join()
    assert target.exists() and target.stat().st_size > 0
    if backend == "sqlite":
        copy = sqlite3.connect(target)
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        in_copy = copy.execute("SELECT COUNT(*) FROM sign_in_attempt").fetchone()[0]
        copy.close()
    else:
        import subprocess
        listing = subprocess.run(["pg_restore", "--list", str(target)], capture_output=True, text=True)
        assert listing.returncode == 0 and "sign_in_attempt" in listing.stdout  # readable archive
        in_copy = None
    total = models.SignInAttempt.select().count()
    assert 20 <= total and (in_copy is None or 0 < in_copy <= total)
    models.database.close()
    if backend == "postgres":
        models.database.obj.close_all()  # pg_restore --clean drops tables: no pooled locks
    result = app.test_cli_runner().invoke(args=["restore", str(target)])
    assert result.exit_code == 0, result.output
    models.database.connect(reuse_if_open=True)
    restored = models.SignInAttempt.select().count()
    assert restored <= total and restored >= 20
    if in_copy is not None:
        assert restored == in_copy
    # The restored database still works: the audit table keeps refusing changes.
    workflow.audit_denial(workflow.Actor(None), "probe")
    with pytest.raises(Exception):
        with models.database.atomic():
            models.database.execute_sql("DELETE FROM audit_event")


def test_r_safe_7_restore_refuses_a_damaged_copy(app, backend, tmp_path):
    """R-SAFE-7: a copy failing its integrity check is not restored (SQLite)."""
    if backend != "sqlite":
        pytest.skip("integrity check of a raw SQLite file; pg_restore validates its own archive")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    result = app.test_cli_runner().invoke(args=["restore", str(bad)])
    assert result.exit_code != 0
    assert models.User.select().count() >= 0
