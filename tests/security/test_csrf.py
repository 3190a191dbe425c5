"""Battery item 7: CSRF on every POST route and every Flask-Admin action (R-SAFE-5).

Without a token, with another session's token, with an expired one: 400 and nothing
changed. The SMS webhook is the one exempt route: it answers only Twilio-signed requests."""

import re
import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from tests.conftest import Browser
from tests.security.test_authz_matrix import requests_for
from tests.security.world import build_world, key_counts

EXEMPT = {"sms.inbound"}  # Twilio signature instead of a CSRF token (tested below)
# The FHIR API authenticates every call with a bearer token (no cookie, so no CSRF risk);
# tests/test_fhir.py refuses calls without a valid token.
EXEMPT_PREFIXES = ("fhir.",)


def stale_token(app, browser, age=3600):
    """The browser's own session token, signed `age` seconds ago (as Flask-WTF signs it)."""
    browser.token("/notifications/")  # makes sure the session holds its raw token
    with browser.client.session_transaction() as sess:
        raw = sess["csrf_token"]

    class Past(URLSafeTimedSerializer):
        def make_signer(self, salt=None):
            signer = super().make_signer(salt)
            signer.get_timestamp = lambda: int(time.time()) - age
            return signer

    return Past(app.config["SECRET_KEY"], salt="wtf-csrf-token").dumps(raw)


def post_routes(app):
    return [r for r in app.url_map.iter_rules() if "POST" in r.methods and r.endpoint not in EXEMPT
            and not r.endpoint.startswith(EXEMPT_PREFIXES)]


def _posts(app, w, rules):
    for rule in rules:
        owner = "a1" if {"roi_id", "referral_id", "subject_id"} & set(rule.arguments) else None
        for method, url, data in requests_for(app, w, rule, owner):
            if method == "POST":
                yield rule, url, data


def _actions(app):
    """Every Flask-Admin action of every model view: (list url, action name)."""
    for view in app.extensions["admin"][0]._views:
        for name in getattr(view, "_actions_data", {}) or {}:
            yield view.url + "/action/", name


@pytest.mark.parametrize("variant", ["missing", "other-session", "expired"])
def test_r_safe_5_every_post_needs_a_valid_csrf_token(app, network, variant):
    """R-SAFE-5: every POST route (signed in as the user allowed to use it) and every
    Flask-Admin action refuse a missing, foreign or expired token with 400; no row changes."""
    w = build_world(network)
    other = Browser(app)
    other.login(w.pr_b1)
    foreign = other.token("/notifications/")
    signed_in = {}
    for who in ("gk_a1", "admin"):
        b = Browser(app)
        b.login(getattr(w, who))
        signed_in[who] = b
    if variant == "expired":
        app.config["WTF_CSRF_TIME_LIMIT"] = 60
        stale = {who: stale_token(app, b) for who, b in signed_in.items()}
    before = key_counts()
    wrong = []
    attempts = 0
    targets = [(rule.rule, url, data) for rule, url, data in _posts(app, w, post_routes(app))]
    targets += [(url, url, {"action": name, "rowid": "1"}) for url, name in _actions(app)]
    for label, url, data in targets:
        who = "admin" if url.startswith("/admin/") and not url.startswith("/admin/intake") else "gk_a1"
        b = signed_in[who]
        payload = dict(data)
        if variant == "other-session":
            payload["csrf_token"] = foreign
        elif variant == "expired":
            payload["csrf_token"] = stale[who]
        response = b.client.post(url, data=payload)
        attempts += 1
        if response.status_code != 400:
            wrong.append(f"{url} ({label}): {response.status_code}")
    assert not wrong, "\n".join(wrong)
    assert key_counts() == before
    assert attempts > 60


def test_expired_token_is_refused_and_fresh_one_accepted(app, network):
    """R-SAFE-5: WTF_CSRF_TIME_LIMIT is enforced: the same session's token works when fresh,
    and answers 400 after the limit."""
    b = Browser(app)
    b.login(network.pr_a1)
    app.config["WTF_CSRF_TIME_LIMIT"] = 60
    stale = stale_token(app, b)
    assert b.client.post("/notifications/read", data={"csrf_token": stale_token(app, b, 10)}).status_code != 400
    assert b.client.post("/notifications/read", data={"csrf_token": stale}).status_code == 400
    fresh = b.token("/notifications/")
    assert b.client.post("/notifications/read", data={"csrf_token": fresh}).status_code != 400


def test_r_roi_6_sms_webhook_needs_the_twilio_signature(app, network):
    """The CSRF-exempt SMS webhook refuses unsigned and wrongly signed requests."""
    b = Browser(app)
    before = key_counts()
    for headers in ({}, {"X-Twilio-Signature": "forged"}):
        response = b.client.post("/sms/inbound", data={"From": "+14065550100", "Body": "123456"},
                                 headers=headers)
        assert response.status_code in (400, 401, 403), response.status_code
    assert key_counts() == before


def test_no_token_in_urls(app, network):
    """CSRF tokens travel in forms only, never in a link (they would leak through Referer)."""
    b = Browser(app)
    b.login(network.gk_a1)
    for url in ("/", "/subjects/", "/agency/referrals/", "/notifications/"):
        body = b.get(url).get_data(as_text=True)
        assert not re.search(r'href="[^"]*csrf_token=', body), url
