"""FHIR R4 API (issue 8): SMART Backend Services tokens, reads/searches limited to the
calling program, the referral transaction Bundle, Task updates, and the round trip with a
gatekeeper on screen. Every response is parsed with fhir.resources (R4B models)."""

import datetime as dt
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir.resources.R4B import get_fhir_model_class

import models
from api import fhir_auth
from tests import referral_helpers as rh
from tests.conftest import make_roi, make_subject

TOKEN_URL = "http://localhost/fhir/token"
FHIR = "application/fhir+json"


def keypair(kind="rsa"):
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
           else ec.generate_private_key(ec.SECP384R1()))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, public


_KEYS = {}


def shared_key(kind="rsa"):
    if kind not in _KEYS:
        _KEYS[kind] = keypair(kind)
    return _KEYS[kind]


def assertion(client_id, key, alg="RS384", aud=TOKEN_URL, exp_in=240, jti=None, sub=None):
    now = int(time.time())
    claims = {"iss": client_id, "sub": sub or client_id, "aud": aud, "exp": now + exp_in,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=alg)


def token_form(signed, scope=None):
    form = {"grant_type": "client_credentials",
            "client_assertion_type": fhir_auth.ASSERTION_TYPE, "client_assertion": signed}
    if scope:
        form["scope"] = scope
    return form


def parse(data):
    """Every FHIR answer must be valid R4(B) for fhir.resources."""
    return get_fhir_model_class(data["resourceType"]).model_validate(data)


class Ehr:
    """An external system: registered for one program, gets a token, calls /fhir."""

    def __init__(self, app, program, scopes="system/*.rs system/ServiceRequest.c system/Task.u",
                 kind="rsa", provider=None):
        self.http = app.test_client()
        self.token_url = app.config["BASE_URL"] + "/fhir/token"
        self.key, public = shared_key(kind)
        self.alg = "RS384" if kind == "rsa" else "ES384"
        self.client = fhir_auth.register_client(program, public, scopes, name=f"EHR of {program.name}",
                                                provider=provider)
        self._token = None

    def token(self, **kw):
        answer = self.http.post("/fhir/token", data=token_form(
            assertion(self.client.client_id, self.key, self.alg, **{"aud": self.token_url, **kw})))
        assert answer.status_code == 200, answer.get_data(as_text=True)
        self._token = answer.get_json()["access_token"]
        return answer.get_json()

    def _headers(self, extra=None):
        if self._token is None:
            self.token()
        headers = {"Authorization": f"Bearer {self._token}", "Accept": FHIR}
        headers.update(extra or {})
        return headers

    def get(self, url, status=200):
        answer = self.http.get(url, headers=self._headers())
        assert answer.status_code == status, answer.get_data(as_text=True)
        assert answer.mimetype == FHIR
        data = answer.get_json()
        parse(data)
        return data

    def send(self, method, url, body, status=200, headers=None):
        answer = self.http.open(url, method=method, data=json.dumps(body),
                                headers=self._headers({"Content-Type": FHIR, **(headers or {})}))
        assert answer.status_code == status, answer.get_data(as_text=True)
        data = answer.get_json()
        parse(data)
        return data


def referral_bundle(to_program, given="Ann", family="Ehrpatient", info=("contact", "demographics"),
                    insurance=True, consent=True, extra_actors=()):
    patient = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}
                                                   if family else {"given": [given]}],
               "gender": "female", "birthDate": "1984-03-02",
               "telecom": [{"system": "phone", "value": "(406) 555-0199"}],
               "address": [{"line": ["12 Elm St"], "city": "Bozeman", "district": "Gallatin",
                            "postalCode": "59715"}]}
    actors = [{"reference": {"identifier": {"system": "urn:connect:program", "value": str(p.id)},
                             "display": p.name}} for p in (to_program, *extra_actors)]
    consent_resource = {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "urn:uuid:patient-1"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}]},
        "provision": {"type": "permit", "actor": [
            {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": "IRCP"}]}, **a} for a in actors],
            "securityLabel": [{"system": "urn:connect:info-type", "code": c} for c in info]}}
    service_request = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                       "subject": {"reference": "urn:uuid:patient-1"},
                       "performer": [{"reference": f"HealthcareService/{to_program.id}"}]}
    inputs = []
    if insurance:
        inputs.append({"type": {"coding": [{"system": "urn:connect:task-input",
                                            "code": "insurance-confirmed"}]}, "valueBoolean": True})
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "focus": {"reference": "urn:uuid:sr-1"}, "for": {"reference": "urn:uuid:patient-1"},
            "owner": {"reference": f"HealthcareService/{to_program.id}"}, "input": inputs}
    entries = [("urn:uuid:patient-1", patient)]
    if consent:
        entries.append(("urn:uuid:consent-1", consent_resource))
    entries += [("urn:uuid:sr-1", service_request), ("urn:uuid:task-1", task)]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": url, "resource": resource,
         "request": {"method": "POST", "url": resource["resourceType"]}} for url, resource in entries]}
    parse(bundle)
    return bundle


def counts():
    return {m.__name__: m.select().count() for m in (models.Subject, models.Roi, models.Referral,
                                                     models.ReferralEvent, models.Outbox)}


# ---------------------------------------------------------------------------
# metadata and tokens
# ---------------------------------------------------------------------------

def test_metadata_capability_statement(app):
    answer = app.test_client().get("/fhir/metadata")
    assert answer.status_code == 200 and answer.mimetype == FHIR
    statement = parse(answer.get_json())
    types = {r.type for r in statement.rest[0].resource}
    assert types == {"Patient", "Consent", "ServiceRequest", "Task", "Organization",
                     "HealthcareService", "Subscription"}
    task = next(r for r in statement.rest[0].resource if r.type == "Task")
    assert {i.code for i in task.interaction} == {"read", "search-type", "update", "patch"}
    assert {p.name for p in task.searchParam} >= {"_id", "_lastUpdated", "patient", "status",
                                                 "owner", "requester", "_count"}


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_token_rs384_and_es384(app, network, kind):
    ehr = Ehr(app, network.a1, kind=kind)
    data = ehr.token()
    assert data["token_type"] == "bearer" and data["expires_in"] == 300
    assert "system/Task.u" in data["scope"]
    ehr.get("/fhir/Patient")


@pytest.mark.parametrize("case", ["expired", "wrong_key", "wrong_aud", "replay", "wrong_sub",
                                  "too_long", "unknown_client", "hs256"])
def test_r_safe_2_bad_assertions_refused(app, network, case):
    """R-SAFE-2 / auth: expired, wrongly signed, wrong audience, replayed jti refused."""
    ehr = Ehr(app, network.a1)
    key, alg, cid = ehr.key, "RS384", ehr.client.client_id
    kw = {}
    if case == "expired":
        kw["exp_in"] = -10
    elif case == "wrong_key":
        key = keypair("rsa")[0]
    elif case == "wrong_aud":
        kw["aud"] = "http://localhost/other"
    elif case == "wrong_sub":
        kw["sub"] = "someone-else"
    elif case == "too_long":
        kw["exp_in"] = 3600
    elif case == "unknown_client":
        cid = "nobody"
    signed = (jwt.encode({"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(time.time()) + 60,
                          "jti": "x"}, "secret-secret-secret-secret-secret", algorithm="HS256")
              if case == "hs256" else assertion(cid, key, alg, **kw))
    if case == "replay":
        assert ehr.http.post("/fhir/token", data=token_form(signed)).status_code == 200
    answer = ehr.http.post("/fhir/token", data=token_form(signed))
    assert answer.status_code == 401, answer.get_data(as_text=True)
    assert answer.get_json()["error"] == "invalid_client"
    if case not in ("unknown_client", "hs256"):
        assert models.AuditEvent.select().where((models.AuditEvent.action == "fhir_token")
                                                & (models.AuditEvent.outcome == "denied")).exists()


def test_no_token_bad_token_expired_token_and_scopes(app, network):
    http = app.test_client()
    assert http.get("/fhir/Task").status_code == 401
    bad = http.get("/fhir/Task", headers={"Authorization": "Bearer forged"})
    assert bad.status_code == 401
    parse(bad.get_json())
    reader = Ehr(app, network.a1, scopes="system/Patient.rs")
    reader.get("/fhir/Patient")
    denied = reader.get("/fhir/Task", status=403)
    assert denied["issue"][0]["code"] == "forbidden"
    # Requested scopes beyond the registered ones are not granted.
    answer = reader.http.post("/fhir/token", data=token_form(
        assertion(reader.client.client_id, reader.key), scope="system/Task.rs"))
    assert answer.status_code == 400 and answer.get_json()["error"] == "invalid_scope"
    # Tokens expire after 5 minutes.
    from freezegun import freeze_time
    with freeze_time(dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=6)):
        assert reader.http.get("/fhir/Patient", headers=reader._headers()).status_code == 401


def test_register_api_client_cli(app, network, tmp_path):
    path = tmp_path / "key.pem"
    path.write_text(shared_key("ec")[1])
    result = app.test_cli_runner().invoke(args=[
        "register-api-client", "--program", str(network.b1.id), "--public-key", str(path),
        "--scopes", "system/Task.rs system/Task.u"])
    assert result.exit_code == 0, result.output
    client_id = result.output.split("client_id: ")[1].split()[0]
    client = models.ApiClient.get(models.ApiClient.client_id == client_id)
    assert client.program_id == network.b1.id and client.scopes == "system/Task.rs system/Task.u"
    bad = app.test_cli_runner().invoke(args=[
        "register-api-client", "--program", str(network.b1.id), "--public-key", str(path),
        "--scopes", "system/Nothing.rs"])
    assert bad.exit_code != 0


# ---------------------------------------------------------------------------
# Reads and searches: only what the calling program may see
# ---------------------------------------------------------------------------

def test_r_safe_1_read_task_audited(app, network):
    """R-SAFE-1: API reads are audited with the client's program."""
    subject, _roi = rh.client(network)
    referral = rh.sent(network, subject)
    ehr_a, ehr_b = Ehr(app, network.a1), Ehr(app, network.b1)
    for ehr in (ehr_a, ehr_b):
        task = ehr.get(f"/fhir/Task/{referral.id}")
        assert task["status"] == "requested"
        assert task["focus"]["reference"] == f"ServiceRequest/{referral.id}"
        assert task["for"]["reference"] == f"Patient/{subject.id}"
        assert task["owner"]["reference"] == f"HealthcareService/{network.b1.id}"
        assert task["meta"]["profile"] == [fhir_auth_profile()]
    audit = models.AuditEvent.get((models.AuditEvent.action == "fhir_read_Task")
                                  & (models.AuditEvent.program == network.b1.id))
    assert audit.subject_id == subject.id and audit.user_id == ehr_b.client.user_id


def fhir_auth_profile():
    from api.fhir import TASK_PROFILE
    return TASK_PROFILE


@pytest.mark.parametrize("steps, status, business", [
    ((), "requested", None),
    (("assign",), "accepted", None),
    (("assign", "Enrolled in Services"), "in-progress", "Enrolled in Services"),
    (("assign", "Closed- Successful completion"), "completed", "Closed- Successful completion"),
    (("assign", "Not Completed- Dropped out"), "failed", "Not Completed- Dropped out"),
    (("decline",), "rejected", None),
    (("withdraw",), "cancelled", None),
])
def test_task_status_mapping(app, network, steps, status, business):
    subject, _roi = rh.client(network)
    referral = rh.sent(network, subject)
    gk_b1 = rh.actor(network.gk_b1, network.b1)
    for step in steps:
        referral = rh.fresh(referral)
        if step == "assign":
            rh.workflow.assign_referral(gk_b1, referral, network.pr_b1.id, referral.version)
        elif step == "decline":
            rh.workflow.decline_referral(gk_b1, referral, referral.version, "No capacity")
        elif step == "withdraw":
            rh.workflow.withdraw_referral(rh.actor(network.gk_a1, network.a1), referral,
                                          referral.version, "Client moved")
        else:
            rh.workflow.set_referral_status(gk_b1, referral, step, referral.version)
    task = Ehr(app, network.a1).get(f"/fhir/Task/{referral.id}")
    assert task["status"] == status
    assert task.get("businessStatus", {}).get("text") == business
    if status in ("rejected", "cancelled"):
        assert task["statusReason"]["text"] in ("No capacity", "Client moved")
    found = Ehr(app, network.b1).get(f"/fhir/Task?status={status}")
    assert [e["resource"]["id"] for e in found["entry"]] == [str(referral.id)]


def test_r_safe_2_other_program_sees_nothing(app, network):
    """R-SAFE-2: a client of program A2 (no ROI, no referral) gets 404 for A1's ids and
    empty bundles; the attempts are audited."""
    subject, roi = rh.client(network)
    referral = rh.sent(network, subject)
    other = Ehr(app, network.a2)
    for kind, key in (("Task", referral.id), ("ServiceRequest", referral.id),
                      ("Patient", subject.id), ("Consent", roi.id)):
        outcome = other.get(f"/fhir/{kind}/{key}", status=404)
        assert outcome["resourceType"] == "OperationOutcome"
        assert other.get(f"/fhir/{kind}")["total"] == 0
        assert other.get(f"/fhir/{kind}?_id={key}")["total"] == 0
        assert other.get(f"/fhir/{kind}?_id={key}").get("entry") is None
    assert other.get("/fhir/Task/abc", status=404)
    denied = models.AuditEvent.select().where((models.AuditEvent.program == network.a2.id)
                                              & (models.AuditEvent.outcome == "denied")).count()
    assert denied >= 4


def test_r_roi_9_consent_rechecked_on_every_read(app, network):
    """R-ROI-9: once the ROI is revoked the receiving program's system no longer gets the
    Patient nor the referral's content (the Task stays, for tracking)."""
    subject, roi = rh.client(network)
    referral = rh.sent(network, subject)
    ehr_b = Ehr(app, network.b1)
    patient = ehr_b.get(f"/fhir/Patient/{subject.id}")
    assert patient["name"][0]["family"] == subject.last_name
    assert ehr_b.get(f"/fhir/ServiceRequest/{referral.id}")["supportingInfo"][0]["reference"] == f"Consent/{roi.id}"
    rh.workflow.revoke_roi(rh.actor(network.gk_a1, network.a1), models.Roi.get_by_id(roi.id), "Client asked")
    ehr_b.get(f"/fhir/Patient/{subject.id}", status=404)
    request = ehr_b.get(f"/fhir/ServiceRequest/{referral.id}")
    assert "supportingInfo" not in request and "ended" in request["note"][0]["text"]
    assert ehr_b.get(f"/fhir/Task/{referral.id}")["status"] == "requested"
    # The sender still sees its own client.
    assert Ehr(app, network.a1).get(f"/fhir/Patient/{subject.id}")["id"] == str(subject.id)


def test_r_roi_4_only_consented_types_disclosed_and_labels(app, network):
    """R-ROI-4: the receiving program sees only the consented types; Consent carries HIV and
    42 CFR Part 2 security labels."""
    subject = make_subject(program=network.a1, user=network.gk_a1)
    roi = make_roi(subject, network.a1, others=(network.b1,), info_types=("contact", "hiv", "substance_use"))
    patient = Ehr(app, network.b1).get(f"/fhir/Patient/{subject.id}")
    assert "name" in patient and "birthDate" not in patient and "gender" not in patient
    consent = Ehr(app, network.b1).get(f"/fhir/Consent/{roi.id}")
    codes = {label["code"] for label in consent["provision"]["securityLabel"]}
    assert {"HIV", "42CFRPart2", "ETH", "R", "contact"} <= codes and "demographics" not in codes
    assert consent["status"] == "active"
    assert {a["reference"]["identifier"]["value"] for a in consent["provision"]["actor"]} == {
        str(network.a1.id), str(network.b1.id)}
    assert consent["provision"]["period"]["end"] == roi.expires_on.isoformat()


def test_search_params_paging_and_polling(app, network):
    subjects = [rh.client(network)[0] for _ in range(3)]
    referrals = [rh.sent(network, s) for s in subjects]
    ehr = Ehr(app, network.b1)
    page = ehr.get("/fhir/Task?_count=2")
    assert page["total"] == 3 and len(page["entry"]) == 2
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = ehr.get(next_url.replace("http://localhost", ""))
    assert len(rest["entry"]) == 1 and any(link["relation"] == "previous" for link in rest["link"])
    ids = {e["resource"]["id"] for e in page["entry"] + rest["entry"]}
    assert ids == {str(r.id) for r in referrals}
    one = ehr.get(f"/fhir/Task?patient=Patient/{subjects[0].id}")
    assert [e["resource"]["id"] for e in one["entry"]] == [str(referrals[0].id)]
    assert ehr.get(f"/fhir/Task?owner=HealthcareService/{network.b1.id}")["total"] == 3
    assert ehr.get(f"/fhir/Task?requester=Organization/{network.agency_a.id}")["total"] == 3
    assert ehr.get(f"/fhir/Task?requester=HealthcareService/{network.a2.id}")["total"] == 0
    # Polling: nothing changed since now; an assignment shows up with _lastUpdated=gt...
    stamp = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ehr.get(f"/fhir/Task?_lastUpdated=gt{stamp}")["total"] == 0
    bad = ehr.get("/fhir/Task?_lastUpdated=yesterday", status=400)
    assert "_lastUpdated" in bad["issue"][0]["diagnostics"]
    assert ehr.get("/fhir/Task?color=blue", status=400)["issue"][0]["code"] == "not-supported"
    orgs = ehr.get("/fhir/Organization")
    assert {e["resource"]["name"] for e in orgs["entry"]} >= {"Agency A", "Agency B"}
    services = ehr.get(f"/fhir/HealthcareService/{network.b1.id}")
    assert services["providedBy"]["reference"] == f"Organization/{network.agency_b.id}"


def test_fhirclient_reads_and_searches(app, network, live_server):
    """The official fhirclient package as a real client against a live server."""
    from fhirclient import client as fhir_client
    from fhirclient.models.task import Task

    subject, _roi = rh.client(network)
    referral = rh.sent(network, subject)
    ehr = Ehr(app, network.b1)
    ehr.token()
    smart = fhir_client.FHIRClient(settings={"app_id": "ehr", "api_base": f"{live_server}/fhir/"})
    smart.server.auth = None
    smart.server.session.headers["Authorization"] = f"Bearer {ehr._token}"
    task = Task.read(str(referral.id), smart.server)
    assert task.status == "requested" and task.focus.reference == f"ServiceRequest/{referral.id}"
    bundle = Task.where(struct={"status": "requested"}).perform(smart.server)
    assert [e.resource.id for e in bundle.entry] == [str(referral.id)]


# ---------------------------------------------------------------------------
# Writes: the referral transaction and Task updates
# ---------------------------------------------------------------------------

def test_r_send_4_transaction_creates_signed_roi_and_sent_referral(app, network):
    """R-SEND-4 and R-ROI-1: the Bundle becomes a subject, a signed ROI (method api) naming
    the receiving program and a sent referral; gatekeepers of B1 are told (R-RECV-1)."""
    ehr = Ehr(app, network.a1)
    result = ehr.send("POST", "/fhir", referral_bundle(network.b1))
    assert result["type"] == "transaction-response"
    locations = [e["response"]["location"] for e in result["entry"]]
    task_id = int(locations[-1].split("/")[1])
    referral = models.Referral.get_by_id(task_id)
    assert referral.state == "sent" and referral.to_program_id == network.b1.id
    roi = models.Roi.get_by_id(referral.roi_id)
    assert roi.signature_method == "api" and roi.state == "signed"
    assert set(roi.program_ids()) == {network.a1.id, network.b1.id}
    assert models.Notification.select().where(models.Notification.user == network.gk_b1.id).exists()
    # The same Patient again is matched (the duplicate rule), not added twice; the second
    # referral to the same program is refused (one open referral) and nothing is written.
    before = counts()
    again = ehr.send("POST", "/fhir", referral_bundle(network.b1), status=409)
    assert "already has an active referral" in again["issue"][0]["diagnostics"]
    assert counts() == before
    second = ehr.send("POST", "/fhir", referral_bundle(network.a2))
    assert second["entry"][0]["response"]["status"] == "200 OK"  # matched
    assert models.Subject.select().count() == 1


@pytest.mark.parametrize("change, status, words", [
    ({"insurance": False}, 422, "insurance"),  # R-SEND-4
    ({"consent": False}, 409, "ROI"),  # R-ROI-1
    ({"info": ()}, 422, "Tick at least one type"),  # R-ROI-4
    ({"family": None}, 422, "legal last name"),
])
def test_r_safe_2_bad_bundles_write_nothing(app, network, change, status, words):
    """R-SAFE-2: every rule violation is an OperationOutcome (409/422), nothing half-written."""
    ehr = Ehr(app, network.a1)
    before = counts()
    answer = ehr.send("POST", "/fhir", referral_bundle(network.b1, **change), status=status)
    assert words in answer["issue"][0]["diagnostics"]
    assert counts() == before


def test_r_roi_1_bundle_refused_without_mou_or_scope(app, network):
    """R-ROI-1 / R-MOU-3: a program without a valid MOU cannot be named; no write scope, 403."""
    models.Program.update(mou_valid_until=None).where(models.Program.id == network.b1.id).execute()
    ehr = Ehr(app, network.a1)
    before = counts()
    ehr.send("POST", "/fhir", referral_bundle(network.b1), status=409)
    assert counts() == before
    reader = Ehr(app, network.a1, scopes="system/Task.rs")
    reader.send("POST", "/fhir", referral_bundle(network.a2), status=403)
    ehr.send("POST", "/fhir", {"resourceType": "Bundle", "type": "batch"}, status=422)
    ehr.send("POST", "/fhir", {"nonsense": True}, status=422)
    for broken in ({"resourceType": "Bundle", "type": "transaction", "entry": ["x"]},
                   {"resourceType": "Bundle", "type": "transaction", "entry": "x"}):
        ehr.send("POST", "/fhir", broken, status=422)
    shapes = referral_bundle(network.a2)
    shapes["entry"][0]["resource"]["name"] = "Ann"
    shapes["entry"][3]["resource"]["owner"] = "HealthcareService/1"
    answer = ehr.http.post("/fhir", data=json.dumps(shapes), headers=ehr._headers())
    assert answer.status_code == 422 and answer.get_json()["resourceType"] == "OperationOutcome"
    assert counts() == before


def test_r_recv_3_receiving_system_updates_task(app, network):
    """The receiving system accepts (assign to a provider named by email), sets the outcome
    label and adds a note; a conflicting second accept is refused (R-RECV-3)."""
    subject, _roi = rh.client(network)
    referral = rh.sent(network, subject)
    ehr_b = Ehr(app, network.b1)
    task = ehr_b.get(f"/fhir/Task/{referral.id}")
    task["status"] = "accepted"
    task["owner"] = {"identifier": {"value": network.pr_b1.email}}
    accepted = ehr_b.send("PUT", f"/fhir/Task/{referral.id}", task)
    assert accepted["status"] == "accepted"
    assert rh.fresh(referral).assigned_to_id == network.pr_b1.id
    # A stale version (If-Match) is refused; nothing changes.
    ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {"status": "rejected",
               "statusReason": {"text": "x"}}, status=412, headers={"If-Match": 'W/"1"'})
    # R-RECV-3: already assigned, a reject is a 409 conflict.
    ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {"status": "rejected",
               "statusReason": {"text": "Full"}}, status=409)
    done = ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {
        "businessStatus": {"text": "Closed- Successful completion"},
        "note": [{"text": "Client attended intake", "time": "2026-01-05T10:00:00Z"}]})
    assert done["status"] == "completed"
    assert done["businessStatus"]["text"] == "Closed- Successful completion"
    assert any("Client attended intake" in n["text"] for n in done["note"])
    ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {"businessStatus": {"text": "Great"}}, status=422)
    # The sender cannot work the receiver's Task.
    Ehr(app, network.a1).send("PATCH", f"/fhir/Task/{referral.id}",
                              {"businessStatus": {"text": "Other"}}, status=404)


def test_accept_defaults_to_designated_provider_api_account_stays_hidden(app, network):
    """Without an email in Task.owner the client's designated provider is assigned; the API
    account is no member: never listed as staff, never emailed (it polls)."""
    subject, _roi = rh.client(network)
    referral = rh.sent(network, subject)
    plain = Ehr(app, network.b1)
    plain.send("PATCH", f"/fhir/Task/{referral.id}", {"status": "accepted"}, status=422)
    ehr_b = Ehr(app, network.b1, provider=network.pr_b1)
    assert ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {"status": "accepted"})["status"] == "accepted"
    assert rh.fresh(referral).assigned_to_id == network.pr_b1.id
    assert not models.Membership.select().where(models.Membership.user == ehr_b.client.user_id).exists()
    assert ehr_b.client.user_id not in [u.id for u in rh.workflow.gatekeepers_of(network.b1)]
    # An EHR-sent referral: the sender account gets bell notifications but no email.
    ehr_a = Ehr(app, network.a1)
    result = ehr_a.send("POST", "/fhir", referral_bundle(network.a2))
    task_id = int(result["entry"][-1]["response"]["location"].split("/")[1])
    gk_a2 = rh.make_user("gatekeeper", network.a2)
    sent = models.Referral.get_by_id(task_id)
    rh.workflow.assign_referral(rh.actor(gk_a2, network.a2), sent, gk_a2.id, sent.version)
    assert not models.Outbox.select().where(models.Outbox.recipient.endswith("api.connect.invalid")).exists()
    assert models.Notification.select().where(models.Notification.user == ehr_a.client.user_id).exists()


def test_reject_with_reason_and_sender_cancel(app, network):
    subject, _roi = rh.client(network)
    referral = rh.sent(network, subject)
    ehr_b = Ehr(app, network.b1)
    ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {"status": "rejected"}, status=422)
    rejected = ehr_b.send("PATCH", f"/fhir/Task/{referral.id}", {
        "status": "rejected", "statusReason": {"text": "Outside our area"}})
    assert rejected["status"] == "rejected" and rejected["statusReason"]["text"] == "Outside our area"
    other, _ = rh.client(network)
    second = rh.sent(network, other)
    cancelled = Ehr(app, network.a1).send("PATCH", f"/fhir/Task/{second.id}", {
        "status": "cancelled", "statusReason": {"text": "Client moved"}})
    assert cancelled["status"] == "cancelled"


def test_round_trip_ehr_gatekeeper_on_screen(app, network, browser):
    """The EHR posts the Bundle → a gatekeeper assigns on the screen → the EHR polls with
    _lastUpdated and sees accepted, then the outcome set on screen."""
    ehr = Ehr(app, network.a1)
    result = ehr.send("POST", "/fhir", referral_bundle(network.b1))
    task_id = int(result["entry"][-1]["response"]["location"].split("/")[1])
    since = ehr.get(f"/fhir/Task/{task_id}")["meta"]["lastUpdated"]
    assert ehr.get(f"/fhir/Task?_lastUpdated=gt{since}")["total"] == 0
    time.sleep(0.01)
    browser.login(network.gk_b1)
    referral = models.Referral.get_by_id(task_id)
    page = f"/referrals/{task_id}"
    assert browser.get(page).status_code == 200
    answer = browser.post(f"/referrals/{task_id}/assign", {
        "assign-provider": network.pr_b1.id, "assign-version": referral.version}, token_from=page)
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    assert models.Referral.get_by_id(task_id).state == "assigned"
    polled = ehr.get(f"/fhir/Task?_lastUpdated=gt{since}")
    assert [e["resource"]["status"] for e in polled["entry"]] == ["accepted"]
    referral = models.Referral.get_by_id(task_id)
    answer = browser.post(f"/referrals/{task_id}/status", {
        "status-status": "Not Started- Declined services", "status-version": referral.version}, token_from=page)
    assert answer.status_code == 302
    task = ehr.get(f"/fhir/Task/{task_id}")
    assert task["status"] == "failed" and task["businessStatus"]["text"] == "Not Started- Declined services"
    # A note written on screen is a change the EHR's polling sees (R-SEND-6).
    since = task["meta"]["lastUpdated"]
    time.sleep(0.01)
    answer = browser.post(f"/referrals/{task_id}/note", {
        "note-kind": "contact_made", "note-note_date": models.local_today().isoformat(),
        "note-text": "Spoke with the client"}, token_from=page)
    assert answer.status_code == 302, answer.get_data(as_text=True)[:300]
    polled = ehr.get(f"/fhir/Task?_lastUpdated=gt{since}")
    assert "Spoke with the client" in polled["entry"][0]["resource"]["note"][-1]["text"]


# ---------------------------------------------------------------------------
# Subscriptions: rest-hook delivered by the worker, HMAC-signed, retried
# ---------------------------------------------------------------------------

class Hook:
    """The EHR's subscription endpoint: a real local HTTP server recording POSTs."""

    def __init__(self):
        import http.server
        import threading

        hook = self
        self.received, self.fail_next = [], 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail_next:
                    hook.fail_next -= 1
                    self.send_response(503)
                else:
                    hook.received.append((dict(self.headers), body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


SECRET = "a-shared-secret-of-the-ehr"


def subscription(endpoint, secret=SECRET, criteria="Task"):
    return {"resourceType": "Subscription", "status": "requested", "reason": "Referral updates",
            "criteria": criteria, "channel": {"type": "rest-hook", "endpoint": endpoint,
                                              "payload": "application/fhir+json"},
            "extension": [{"url": "urn:connect:hmac-secret", "valueString": secret}]}


def test_round_trip_with_subscription_rest_hook(app, network, browser):
    """EHR posts the Bundle and subscribes → the gatekeeper assigns on screen → the worker
    POSTs the Task change (HMAC-signed) to the EHR's endpoint, retrying after a failure →
    the EHR reads the outcome."""
    import hashlib
    import hmac

    import messaging

    hook = Hook()
    try:
        ehr = Ehr(app, network.a1, scopes="system/*.rs system/ServiceRequest.c system/Subscription.c")
        for bad in (subscription(hook.url, secret="short"), subscription("ftp://x/y"),
                    subscription(hook.url, criteria="Patient")):
            ehr.send("POST", "/fhir/Subscription", bad, status=422)
        created = ehr.send("POST", "/fhir/Subscription", subscription(hook.url), status=201)
        assert created["status"] == "active"
        assert Ehr(app, network.b1).get(f"/fhir/Subscription/{created['id']}", status=404)
        result = ehr.send("POST", "/fhir", referral_bundle(network.b1))
        task_id = int(result["entry"][-1]["response"]["location"].split("/")[1])
        messaging.run_due_jobs()
        assert len(hook.received) == 1  # the new Task (requested)
        browser.login(network.gk_b1)
        referral = models.Referral.get_by_id(task_id)
        page = f"/referrals/{task_id}"
        assert browser.post(f"/referrals/{task_id}/assign", {
            "assign-provider": network.pr_b1.id, "assign-version": referral.version},
            token_from=page).status_code == 302
        hook.fail_next = 1
        messaging.run_due_jobs()
        sub = models.FhirSubscription.get_by_id(int(created["id"]))
        assert len(hook.received) == 1 and sub.attempts == 1 and "503" in sub.last_error
        models.FhirSubscription.update(next_attempt_at=models.utcnow()).execute()
        messaging.run_due_jobs()
        headers, body = hook.received[-1]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Connect-Signature"] == expected
        bundle = json.loads(body)
        parse(bundle)
        assert [(e["resource"]["id"], e["resource"]["status"]) for e in bundle["entry"]] == [
            (str(task_id), "accepted")]
        messaging.run_due_jobs()
        assert len(hook.received) == 2  # nothing new, nothing sent
        referral = models.Referral.get_by_id(task_id)
        browser.post(f"/referrals/{task_id}/status", {
            "status-status": "Closed- Successful completion", "status-version": referral.version},
            token_from=page)
        messaging.run_due_jobs()
        assert json.loads(hook.received[-1][1])["entry"][0]["resource"]["status"] == "completed"
        task = ehr.get(f"/fhir/Task/{task_id}")
        assert task["businessStatus"]["text"] == "Closed- Successful completion"
    finally:
        hook.server.shutdown()
