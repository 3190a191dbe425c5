"""Public, read-only HSDS 3.0 endpoints under /hsds (Open Referral API, openapi.json).

Like /directory: no sign-in, only programs with a valid Agency MOU (R-NET-2, R-MOU-3), no
client data and no user names. GET only, so CSRF does not apply; answers may be cached.
"""

import json

from flask import Response, request

from admin_views.base import SecureBaseView, expose
from api import hsds

CACHE = "public, max-age=300"


def json_response(data, status=200):
    response = Response(json.dumps(data, ensure_ascii=False), status=status,
                        mimetype="application/json")
    response.headers["Cache-Control"] = CACHE if status == 200 else "no-store"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def answer(build, *args):
    """Run one read; bad parameters are a 400 with the reason, unknown ids a 404."""
    try:
        data = build(*args)
    except hsds.BadParameter as exc:
        return json_response({"error": str(exc)}, 400)
    if data is None:
        return json_response({"error": "Not found."}, 404)
    return json_response(data)


class HsdsView(SecureBaseView):
    """HSDS 3.0: /hsds/services, /organizations, /service_at_locations, /taxonomies,
    /taxonomy_terms, each with /{id}."""

    public = True
    show_in_menu = False

    @expose("/")
    def index(self):
        return answer(hsds.about)

    @expose("/services")
    def services(self):
        return answer(hsds.services_page, request.args)

    @expose("/services/<hsds_id>")
    def service(self, hsds_id):
        return answer(hsds.service_detail, hsds_id)

    @expose("/organizations")
    def organizations(self):
        return answer(hsds.organizations_page, request.args)

    @expose("/organizations/<hsds_id>")
    def organization(self, hsds_id):
        return answer(hsds.organization_detail, hsds_id)

    @expose("/service_at_locations")
    def service_at_locations(self):
        return answer(hsds.service_at_locations_page, request.args)

    @expose("/service_at_locations/<hsds_id>")
    def service_at_location(self, hsds_id):
        return answer(hsds.service_at_location_detail, hsds_id)

    @expose("/taxonomies")
    def taxonomies(self):
        return answer(hsds.taxonomies_page, request.args)

    @expose("/taxonomies/<hsds_id>")
    def taxonomy(self, hsds_id):
        return answer(hsds.taxonomy_detail, hsds_id)

    @expose("/taxonomy_terms")
    def taxonomy_terms(self):
        return answer(hsds.taxonomy_terms_page, request.args)

    @expose("/taxonomy_terms/<hsds_id>")
    def taxonomy_term(self, hsds_id):
        return answer(hsds.taxonomy_term_detail, hsds_id)


def register(admin):
    admin.add_view(HsdsView(name="HSDS", endpoint="hsds", url="/hsds"))
