"""The FHIR R4 API under /fhir (application/fhir+json), SMART Backend Services tokens.

No cookies and no sign-in page: every call but /metadata carries a bearer token from
POST /fhir/token, acts as workflow.Actor(client.user, client.program) and is audited.
The blueprint is CSRF-exempt (bearer tokens are not sent by browsers on their own).
"""

import json

from flask import Response, current_app, request

from admin_views.base import SecureBaseView, client_ip, expose
from api import fhir, fhir_auth
from workflow import RuleViolation, audit_denial


def fhir_response(data, status=200, headers=None):
    response = Response(fhir.dumps(data), status=status, mimetype=fhir.JSON_TYPE)
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error(status, code, message, headers=None):
    return fhir_response(fhir.outcome(code, message), status, headers)


def base_url():
    return current_app.config["BASE_URL"].rstrip("/") + "/fhir"


class FhirView(SecureBaseView):
    public = True
    show_in_menu = False

    def _client(self, resource, letter):
        """(actor, None) for a live token with the scope, else (None, error response)."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        found = fhir_auth.client_for_token(token, current_app.config["SECRET_KEY"]) if token else None
        challenge = {"WWW-Authenticate": 'Bearer realm="CONNECT FHIR"'}
        if found is None:
            return None, error(401, "login", "A valid bearer token is required (POST /fhir/token).",
                               challenge)
        client, scopes = found
        actor = fhir_auth.actor_for(client, client_ip())
        if not fhir_auth.allows(scopes, resource, letter):
            audit_denial(actor, "fhir_scope", detail=f"{request.method} {request.path}: "
                         f"needs system/{resource}.{letter}")
            return None, error(403, "forbidden", f"The token's scopes do not allow this "
                               f"(system/{resource}.{letter} needed).")
        return actor, None

    def _run(self, resource, letter, work):
        actor, refused = self._client(resource, letter)
        if refused is not None:
            return refused
        try:
            return work(actor)
        except fhir.FhirError as exc:
            if request.method != "GET":  # reads audit their own refusals
                audit_denial(actor, f"fhir_{request.method.lower()}", detail=f"{request.path}: {exc.message}")
            return error(exc.status, exc.code, exc.message)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            # Malformed JSON shapes (a string where an object belongs...): a clear 422; the
            # request's transaction was rolled back, nothing is written (R-SAFE-2).
            current_app.logger.info("FHIR malformed body: %r", exc)
            audit_denial(actor, f"fhir_{request.method.lower()}", detail=f"{request.path}: malformed")
            return error(422, "structure", "The resource is not valid FHIR R4 JSON for this "
                         "request (an element has the wrong type or shape).")
        except RuleViolation as exc:
            status = fhir.violation_status(exc)
            audit_denial(actor, f"fhir_{request.method.lower()}", detail=f"{request.path}: {exc.message}")
            return error(status, "not-found" if status == 404 else "business-rule"
                         if status == 409 else "forbidden" if status == 403 else "invalid", exc.message)

    @expose("/")
    def index(self):
        return fhir_response(fhir.capability_statement(base_url()))

    @expose("/metadata")
    def metadata(self):
        return fhir_response(fhir.capability_statement(base_url()))

    @expose("/token", methods=("POST",))
    def token(self):
        try:
            data = fhir_auth.issue_token(request.form, base_url() + "/token",
                                         current_app.config["SECRET_KEY"], client_ip())
        except fhir_auth.TokenError as exc:
            body = {"error": exc.error, "error_description": exc.description}
            return Response(json.dumps(body), status=exc.status, mimetype="application/json",
                            headers={"Cache-Control": "no-store"})
        return Response(json.dumps(data), mimetype="application/json",
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @expose("", methods=("POST",))
    def transaction(self):
        def work(actor):
            body = request.get_json(silent=True, force=True)
            result, referral = fhir.post_referral(actor, body)
            return fhir_response(result, 200)
        return self._run("ServiceRequest", "c", work)

    @expose("/Subscription", methods=("POST",))
    def subscribe(self):
        from api.fhir_subscriptions import create_subscription, subscription_resource

        def work(actor):
            sub = create_subscription(actor, request.get_json(silent=True, force=True))
            return fhir_response(subscription_resource(sub), 201,
                                 {"Location": f"{base_url()}/Subscription/{sub.id}"})
        return self._run("Subscription", "c", work)

    @expose("/<kind>")
    def search(self, kind):
        if kind not in fhir.READ_TYPES:
            return error(404, "not-supported", f"The resource type {kind} is not supported.")
        return self._run(kind, "s", lambda actor: fhir_response(
            fhir.search(actor, kind, request.args, base_url())))

    @expose("/<kind>/<resource_id>")
    def read(self, kind, resource_id):
        if kind not in fhir.READ_TYPES:
            return error(404, "not-supported", f"The resource type {kind} is not supported.")

        def work(actor):
            resource = fhir.read(actor, kind, resource_id)
            version = resource.get("meta", {}).get("versionId")
            return fhir_response(resource, headers={"ETag": f'W/"{version}"'} if version else None)
        return self._run(kind, "r", work)

    @expose("/Task/<resource_id>", methods=("PUT", "PATCH"))
    def update_task(self, resource_id):
        def work(actor):
            body = request.get_json(silent=True, force=True)
            resource = fhir.update_task(actor, resource_id, body, request.headers.get("If-Match"),
                                        partial=request.method == "PATCH")
            return fhir_response(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})
        return self._run("Task", "u", work)


def register(admin):
    from app import csrf

    view = FhirView(name="FHIR", endpoint="fhir", url="/fhir")
    admin.add_view(view)
    csrf.exempt(view.blueprint)
