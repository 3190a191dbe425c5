"""Battery item 2: program B asks for program A's ids (R-SAFE-2, R-SUBJ-6, R-ROI-3).

In every id parameter (URL path, query string, form and hidden fields, Flask-Admin actions),
with A's real ids and sequential guesses: a 404 that looks like a missing id, none of A's
data in the body, and the attempt audited."""

import re

import pytest

import models
from tests.conftest import Browser
from tests.security.test_authz_matrix import per_record_rule, requests_for
from tests.security.world import build_world, key_counts

SECRETS = ("OwnerA1", "SecretnameA1", "OwnerA2", "SecretnameA2")


def denials():
    return models.AuditEvent.select().where(models.AuditEvent.outcome == "denied").count()


def normalised(body):
    """A page without what changes between two requests (nonces, tokens, numbers)."""
    body = re.sub(r'(nonce|value)="[^"]*"', "", body)
    return re.sub(r"\d+", "0", body)


@pytest.fixture
def attack(app, network):
    w = build_world(network)
    b = Browser(app)
    b.login(w.gk_b1)
    b.csrf = b.token("/notifications/")
    return w, b


def test_r_safe_2_every_id_in_the_path_is_404_no_data_audited(app, attack):
    """R-SAFE-2: every route taking a subject, ROI or referral id, with A1's and A2's ids, as
    B1's gatekeeper: 404, none of their data, one denial audit row per attempt, and the
    page the same as for an id that does not exist."""
    w, b = attack
    missing_body = normalised(b.get("/subjects/999999").get_data(as_text=True))
    before = key_counts()
    tried = 0
    for rule in app.url_map.iter_rules():
        if not per_record_rule(rule):
            continue
        for owner in ("a1", "a2"):
            for method, url, data in requests_for(app, rule=rule, w=w, owner=owner):
                count = denials()
                if method == "GET":
                    response = b.get(url)
                else:
                    response = b.client.post(url, data={**data, "csrf_token": b.csrf})
                body = response.get_data(as_text=True)
                assert response.status_code == 404, (method, url, response.status_code)
                assert not any(s in body for s in SECRETS), url
                assert denials() == count + 1, f"{method} {url}: not audited once"
                if url.startswith("/subjects/"):
                    assert normalised(body) == missing_body
                tried += 1
    assert tried >= 30
    assert key_counts() == before


@pytest.mark.parametrize("url", [
    "/consent/new?subject={s}",
    "/referrals/new?subject={s}&to={c1}",
    "/referrals/chart/{s}",
    "/subjects/{s}",
])
def test_r_safe_2_query_string_ids(attack, url):
    """R-SAFE-2: ids in the query string (GET and POST) are filtered the same way."""
    w, b = attack
    target = url.format(s=w.subjects["a1"].id, c1=w.c1.id)
    count = denials()
    assert b.get(target).status_code == 404
    assert b.client.post(target, data={"csrf_token": b.csrf, "program": w.b1.id}).status_code in (404, 405)
    assert denials() >= count + 1


def test_r_safe_2_sequential_ids_show_only_own(attack):
    """R-SAFE-2: walking subject, ROI and referral ids 1..n+3 opens only B1's own records;
    every other answer is a 404 without data."""
    w, b = attack
    own = {("subjects", w.subjects["b1"].id), ("consent", w.rois["b1"].id),
           ("referrals", w.referrals["b1"].id)}
    for kind, model in (("subjects", models.Subject), ("consent", models.Roi),
                        ("referrals", models.Referral)):
        top = model.select().count() + 3
        for key in range(1, top + 1):
            response = b.get(f"/{kind}/{key}")
            body = response.get_data(as_text=True)
            if (kind, key) in own:
                assert response.status_code == 200, (kind, key)
            else:
                assert response.status_code == 404, (kind, key, response.status_code)
                assert not any(s in body for s in SECRETS)


def test_r_safe_2_hidden_fields_swapped_on_the_referral_form(attack):
    """R-SAFE-2: B1's own draft posted with A1's subject, program and agency in extra
    hidden fields keeps its own subject and programs."""
    w, b = attack
    draft = w.referrals["b1"]
    form = b.get(f"/referrals/{draft.id}/edit").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form).group(1)
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form))
    fields.update({"csrf_token": token, "subject": w.subjects["a1"].id, "subject_id": w.subjects["a1"].id,
                   "program": w.a1.id, "from_program": w.a1.id, "to_program": w.a2.id,
                   "agency": w.agency_a.id, "to": w.a2.id})
    b.client.post(f"/referrals/{draft.id}/edit", data=fields)
    after = models.Referral.get_by_id(draft.id)
    assert (after.subject_id, after.from_program_id, after.to_program_id) == \
        (w.subjects["b1"].id, w.b1.id, w.c1.id)


def test_r_safe_2_consent_form_with_a_foreign_subject(attack):
    """R-SAFE-2: starting an ROI with A1's subject in the form (hidden subject field) is 404,
    no ROI created, audited."""
    w, b = attack
    before, count = models.Roi.select().count(), denials()
    response = b.client.post("/consent/new", data={"csrf_token": b.csrf, "subject": w.subjects["a1"].id,
                                                   "program": [w.b1.id, w.a1.id]})
    assert response.status_code == 404
    assert models.Roi.select().count() == before and denials() == count + 1


@pytest.mark.parametrize("view,action", [("/agency/referrals/", "assign_to_me"),
                                         ("/agency/sent/", None)])
def test_r_safe_2_flask_admin_actions_with_foreign_rowids(app, attack, view, action):
    """R-SAFE-2: a Flask-Admin action on A1's referral id changes nothing."""
    w, b = attack
    screen = next(v for v in app.extensions["admin"][0]._views if (v.url or "") + "/" == view)
    names = list(getattr(screen, "_actions_data", {}) or {}) or [action or "none"]
    before = key_counts()
    for name in names:
        response = b.client.post(view + "action/", data={"csrf_token": b.csrf, "action": name,
                                                          "rowid": w.referrals["a1"].id, "url": view})
        assert response.status_code in (302, 403, 404)
        assert not any(s in response.get_data(as_text=True) for s in SECRETS)
    assert key_counts() == before


@pytest.mark.parametrize("view", ["/agency/referrals/", "/agency/sent/", "/admin/users/",
                                  "/admin/programs/", "/admin/audit/"])
def test_r_safe_2_builtin_delete_action_is_refused(app, network, view):
    """R-SAFE-2 (found by the battery): Flask-Admin's built-in "delete" action deleted any
    referral by raw id (recursively) from Agency → Referrals; it is refused on every view
    that does not allow deleting, and nothing is deleted."""
    w = build_world(network)
    b = Browser(app)
    b.login(w.admin if view.startswith("/admin/") else w.gk_b1)
    before = key_counts()
    ids = [w.referrals["a1"].id, w.referrals["b1"].id, w.a1.id, w.pr_a1.id, 1]
    response = b.post(view + "action/", {"action": "delete", "rowid": ids, "url": view},
                      token_from="/notifications/")
    assert response.status_code in (403, 404)
    assert key_counts() == before
