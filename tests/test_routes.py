"""Every route declares its permission; anonymous users go to sign-in, others get 403;
GET changes nothing; malformed and foreign ids answer 404, never 500
(R-SAFE-2, R-SAFE-5, R-AUTH-7 gate, R-MOU-1 gate)."""

import pytest

import models
from tests.conftest import Browser, make_user

# Plain Flask routes (not Flask-Admin views) that need no permission, and why.
PUBLIC_ROUTES = {
    "static": "the application's CSS",
    "admin.static": "Flask-Admin's CSS and scripts",
    "admin.index": "the home page: any signed-in user (AccessMixin gate, links filtered by permission)",
}


def admin_view(app, endpoint):
    admin = app.extensions["admin"][0]
    prefix = endpoint.split(".", 1)[0]
    return next((v for v in admin._views if v.endpoint == prefix), None)


def routes(app):
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint not in PUBLIC_ROUTES]


def test_every_route_declares_a_permission_or_is_public(app):
    """The url_map walk: every endpoint belongs to a view that declares a known permission
    or public = True; plain routes must be on the explicit allow-list."""
    known = set().union(*models.PERMISSIONS.values())
    problems = []
    for rule in routes(app):
        view = admin_view(app, rule.endpoint)
        if view is None:
            problems.append(f"{rule.rule} ({rule.endpoint}): a plain route not on the allow-list")
        elif not getattr(view, "public", False) and getattr(view, "permission", None) not in known:
            problems.append(f"{rule.rule} ({rule.endpoint}): permission {view.permission!r} is not declared")
    assert not problems, "\n".join(problems)


def _get_urls(app):
    """GET routes without URL arguments (list, create, details pages...)."""
    return sorted({rule.rule for rule in routes(app) if "GET" in rule.methods and not rule.arguments
                   and not getattr(admin_view(app, rule.endpoint), "public", False)})


def test_anonymous_users_are_sent_to_sign_in(app, network):
    """Every non-public page sends an anonymous visitor to the sign-in page."""
    client = Browser(app)
    for url in _get_urls(app):
        response = client.get(url)
        assert response.status_code == 302 and "/auth/sign-in" in response.headers["Location"], url


ADMIN_ONLY = ("/admin/users/", "/admin/memberships/", "/admin/user-mous/", "/admin/agency-mous/",
              "/admin/outbox/", "/admin/audit/", "/admin/regions/", "/admin/counties/",
              "/admin/services/", "/admin/insurance-types/", "/admin/agencies/", "/admin/programs/",
              "/admin/users/new/", "/admin/programs/new/")


@pytest.mark.parametrize("who", ["pr_a1", "gk_a1"])
def test_signed_in_without_permission_gets_403(app, network, who):
    """Signed-in users without the permission get 403 (and the refusal is audited)."""
    b = Browser(app)
    b.login(getattr(network, who))
    for url in ADMIN_ONLY:
        assert b.get(url).status_code == 403, url
    assert models.AuditEvent.select().where(models.AuditEvent.outcome == "denied").count() >= len(ADMIN_ONLY)


def test_r_safe_5_no_get_changes_anything(app, network):
    """R-SAFE-5: opening every page (GET) as an administrator and as a gatekeeper changes no
    row (only the audit log, sign-in records and sessions grow)."""
    ignored = {models.AuditEvent, models.SignInAttempt, models.UserSession, models.SchemaVersion}

    def snapshot():
        return {m.__name__: [tuple(r.values()) if isinstance(r, dict) else r
                             for r in m.select().order_by(m._meta.primary_key).dicts()]
                for m in models.ALL_MODELS if m not in ignored}

    for user in (network.admin, network.gk_a1):
        b = Browser(app)
        b.login(user)
        before = snapshot()
        for url in _get_urls(app):
            assert b.get(url).status_code < 500, url
        after = snapshot()
        assert before == after


BAD_IDS = ("abc", "999999", "-1", "1.5", "%00", "1;DROP TABLE user", "9" * 40)


@pytest.mark.parametrize("view", ["users", "programs", "agencies", "memberships", "user-mous",
                                  "agency-mous", "outbox", "audit", "counties", "intake-sections"])
def test_r_safe_2_malformed_ids_are_404(app, network, view):
    """R-SAFE-2: malformed or unknown ids answer 404, never 500."""
    b = Browser(app)
    b.login(network.admin)
    screen = next(v for v in app.extensions["admin"][0]._views if getattr(v, "url", "") == f"/admin/{view}")
    for bad_id in BAD_IDS:
        for page, allowed in (("details", screen.can_view_details), ("edit", screen.can_edit)):
            response = b.get(f"/admin/{view}/{page}/?id={bad_id}")
            # A page the view does not offer redirects to the list; an offered one says 404.
            assert response.status_code == (404 if allowed else 302), (bad_id, page, response.status_code)
    assert b.get(f"/admin/{view}/details/?id=").status_code in (302, 404)  # no id: back to the list


def test_r_safe_2_foreign_ids_are_404_and_audited(app, network):
    """R-SAFE-2: a regional coordinator guessing another region's ids gets 404, audited."""
    coordinator = make_user(admin=True, statewide=False, regions=("Region 10 - Gallatin",))
    b = Browser(app)
    b.login(coordinator)
    for url in (f"/admin/programs/details/?id={network.b1.id}", f"/admin/agencies/edit/?id={network.agency_b.id}",
                f"/admin/users/details/?id={network.pr_b1.id}"):
        assert b.get(url).status_code == 404, url
    denied = models.AuditEvent.select().where((models.AuditEvent.outcome == "denied")
                                              & (models.AuditEvent.user == coordinator.id))
    assert denied.count() == 3
    r = b.post("/admin/programs/delete/", {"id": network.b1.id}, token_from="/admin/programs/")
    assert r.status_code in (302, 404) and models.Program.get_or_none(models.Program.id == network.b1.id)
