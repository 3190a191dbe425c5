"""Battery item 1: the authorization matrix (R-SAFE-2, R-AUTH-6, R-MOU-1, R-CTX).

Every route of app.url_map × method × actor {anonymous; provider, gatekeeper of agency A;
network administrator; provider of agency B; deactivated user (copied cookie); user whose
User MOU expired} × record owner {own program, other program of the same agency, other
agency}, compared with the expected table below. A route missing from the table fails.
Denied requests change no row of the key tables."""

import re

import pytest

import models
from tests.security.world import (ACTORS, HOME, OWNERS, build_world, key_counts,
                                  signed_in_browsers)

# Outcomes: ok (served: 2xx, 400 for an empty form, or a redirect that is not a gate),
# signin (302 to sign-in), mou (302 to the User MOU), denied (403 or 404), any (< 500).
ANY, OK, SIGNIN, MOU, DENIED = "any", "ok", "signin", "mou", "denied"
FORBIDDEN, MISSING = "403", "404"
# What each expectation accepts. REACHED: past the gate (a Flask-Admin ajax end point
# without a configured lookup, or a missing row, answers 404).
REACHED = "reached"
ACCEPTS = {OK: {OK}, SIGNIN: {SIGNIN}, MOU: {MOU}, DENIED: {FORBIDDEN, MISSING},
           REACHED: {OK, MISSING}}

# Who may use each group of routes once signed in, with a current User MOU.
STAFF = {"pr_a1", "gk_a1", "pr_b1"}
GATEKEEPERS = {"gk_a1"}
ADMINS = {"admin"}
EVERYONE = STAFF | ADMINS

# (endpoint pattern, who is allowed, needs the User MOU, per-record: own program only
# (True), or every record for the administrator too ("admin-all")).
TABLE = [
    # Public: CSS, sign-in screens, the SMS webhook (signature checked), HSDS directory API.
    (r"^(static|admin\.static)$", "public", False, False),
    (r"^auth\.(index|sign_in|forgot_password|invitation|reset|sign_out)$", "public", False, False),
    (r"^sms\.", "public", False, False),
    (r"^hsds\.", "public", False, False),
    # Signed-in only, before the User MOU is signed (that is where it is signed).
    (r"^auth\.(change_password|user_mou)$", EVERYONE, False, False),
    (r"^(program|notifications|account)\.", EVERYONE, False, False),
    (r"^admin\.index$", EVERYONE, True, False),
    # Network administration screens: administrators only.
    (r"^(users|memberships|user_mous|agency_mous|outbox|audit|regions|counties|services|"
     r"insurance_types|agencies|programs)\.", ADMINS, True, False),
    (r"^intake_sections\.", GATEKEEPERS | ADMINS, True, False),
    (r"^agency_mou\.", GATEKEEPERS, True, False),
    # Client screens: a program and the MOU; records of the acting program only
    # (administrators see every client and ROI, read-only).
    # The link form reaches the workflow, which refuses an administrator (nothing changed).
    (r"^subjects\.(index|link)$", EVERYONE, True, False),
    (r"^subjects\.add$", STAFF, True, False),
    (r"^subjects\.profile$", EVERYONE, True, "admin-all"),
    (r"^consent\.(detail|blank_pdf|attachment)$", EVERYONE, True, "admin-all"),
    (r"^consent\.index$", EVERYONE, True, False),
    (r"^consent\.new$", STAFF, True, False),
    (r"^consent\.", STAFF, True, True),
    # Agency → Referrals / Sent lists (details and edit pages are not offered: back to the list).
    (r"^(incoming|sent)\.", STAFF, True, False),
    (r"^referral\.(index|new)$", STAFF, True, False),
    (r"^referral\.", STAFF, True, True),
]

# Reports, directory and FHIR land in parallel: their routes are listed here when they do.
OPTIONAL = [
    (r"^reports\.referrals$", GATEKEEPERS | ADMINS, True, False),
    (r"^(reports|report)\.", EVERYONE, True, False),
    (r"^(directory|public)\.", "public", False, False),
    (r"^care_team\.", EVERYONE, True, "admin-all"),
    # FHIR authenticates each call with a bearer token, not a session: its own matrix
    # (clients of program A and B, scopes, expired and forged assertions) is tests/test_fhir.py.
    (r"^fhir\.", "bearer", False, False),
]


def table_row(endpoint):
    for pattern, who, mou, per_record in TABLE + OPTIONAL:
        if re.search(pattern, endpoint):
            return who, mou, per_record
    return None


def expected(endpoint, actor, owner):
    who, mou, per_record = table_row(endpoint)
    if who == "public":
        return ANY
    if actor in ("anonymous", "deactivated"):
        return SIGNIN
    if actor == "expired":
        if mou:
            return MOU
        return OK if "pr_a1" in who else DENIED
    if actor not in who:
        return DENIED
    if per_record and owner is not None:
        if actor == "admin":
            return REACHED if per_record == "admin-all" else DENIED
        return REACHED if HOME[actor] == owner else DENIED
    # Past the gate, the screen itself may still say 404 (no scan attached, no client
    # chosen, an action on a referral in the wrong state, an ajax lookup not configured).
    return REACHED


def observed(response):
    code = response.status_code
    if code >= 500:
        return f"error {code}"
    location = response.headers.get("Location", "")
    if code in (301, 302, 303):
        if "/auth/sign-in" in location:
            return SIGNIN
        if "/auth/user-mou" in location:
            return MOU
        return OK
    if code == 403:
        return FORBIDDEN
    if code == 404:
        return MISSING
    return OK


def _id_of(model):
    # The newest row: never the administrator's own account (an empty edit form posted by
    # an allowed user must not lock the matrix's administrator out).
    row = model.select(model.id).order_by(model.id.desc()).first()
    return row.id if row else 1


def requests_for(app, w, rule, owner):
    """(method, url, form data) for one rule and one record owner."""
    values = {"export_type": "csv", "token": "not-a-token", "hsds_id": "none",
              "filename": "connect.css", "kind_key": "outcomes", "program_id": 1}
    if owner is not None:
        values.update(roi_id=w.rois[owner].id, referral_id=w.referrals[owner].id,
                      subject_id=w.subjects[owner].id)
    url = rule.rule
    for arg in rule.arguments:
        url = re.sub(r"<(?:[a-z]+:)?%s>" % arg, str(values[arg]), url)
    view = next((v for v in app.extensions["admin"][0]._views
                 if v.endpoint == rule.endpoint.split(".")[0]), None)
    record = None
    if getattr(view, "model", None) is not None:
        record = w.referrals[owner].id if (owner and view.model is models.Referral) else _id_of(view.model)
    if record is not None and rule.endpoint.split(".")[1] in ("details_view", "edit_view"):
        url += f"?id={record}"
    out = []
    for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
        data = {}
        if method == "POST" and record is not None:
            data = {"id": record, "rowid": record, "action": "assign_to_me"}
        out.append((method, url, data))
    return out


def per_record_rule(rule):
    return bool({"roi_id", "referral_id", "subject_id"} & set(rule.arguments))


def test_every_route_is_in_the_table(app):
    """Battery 1: a route missing from the expected table fails the test."""
    missing = [f"{r.rule} ({r.endpoint})" for r in app.url_map.iter_rules() if table_row(r.endpoint) is None]
    assert not missing, "routes without an expected row:\n" + "\n".join(missing)


@pytest.mark.parametrize("half", ["admin", "client"])
def test_authorization_matrix(app, network, half):
    """Battery 1: every route × method × actor × record owner matches the table; denied
    requests change nothing. Split in two halves (administration / client screens) to
    keep each test short."""
    w = build_world(network)
    browsers = signed_in_browsers(app, w)
    rules = [r for r in app.url_map.iter_rules() if table_row(r.endpoint)
             and table_row(r.endpoint)[0] != "bearer"
             and (r.rule.startswith("/admin/") == (half == "admin"))
             and r.endpoint != "auth.sign_out"]
    plan = []
    for rule in rules:
        for owner in (OWNERS if per_record_rule(rule) else (None,)):
            for method, url, data in requests_for(app, w, rule, owner):
                for name in ACTORS:
                    plan.append((expected(rule.endpoint, name, owner), name, method, url, data))
    # Denied requests first, all of them, then the key tables must be as they were.
    plan.sort(key=lambda item: item[0] not in (DENIED, SIGNIN, MOU))
    mismatches = []
    before = key_counts()
    checked = False
    for want, name, method, url, data in plan:
        if not checked and want in (OK, REACHED, ANY):
            assert key_counts() == before, "a denied request changed something"
            checked = True
        b = browsers[name]
        if method == "GET":
            response = b.get(url)
        else:
            response = b.client.post(url, data={**data, "csrf_token": b.csrf})
        got = observed(response)
        if got.startswith("error") or (want != ANY and got not in ACCEPTS[want]):
            mismatches.append(f"{name:12} {method:4} {url}: expected {want}, got {got}")
    assert not mismatches, f"{len(mismatches)} of {len(plan)}:\n" + "\n".join(mismatches[:80])
    assert len(plan) > 200


def test_link_form_never_redirects_off_site(browser, network):
    """Battery 1 (found by it): the subject link form sent users back to the Referer header,
    an open redirect; now only a same-site page is followed."""
    browser.login(network.pr_a1)
    response = browser.post("/subjects/link", {}, token_from="/subjects/",
                            headers={"Referer": "https://evil.example.com/phish"})
    assert response.status_code == 302
    assert "evil.example.com" not in response.headers["Location"]
