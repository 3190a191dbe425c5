"""R4 Subscriptions (rest-hook) on Task changes, delivered by the worker.

A client with `system/Subscription.c` creates `Subscription` with criteria `Task` and a
rest-hook channel (endpoint, payload application/fhir+json) and a shared secret in the
extension `urn:connect:hmac-secret` (16+ characters). On every worker tick, Tasks its
program sees (Referral.visible_to, as on the screens) changed since the subscription's
cursor are POSTed as a Bundle (type history) with the header
`X-Connect-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`. A failed
delivery is retried with back-off (1, 2, 4 ... minutes); after MAX_ATTEMPTS the
subscription's status becomes error. Polling with `_lastUpdated` works either way.
"""

import datetime as dt
import hashlib
import hmac
import json
from urllib.parse import urlparse

from models import FhirSubscription, Referral, transaction, utcnow
from workflow import RuleViolation, record_audit

SECRET_URL = "urn:connect:hmac-secret"
SIGNATURE_HEADER = "X-Connect-Signature"
MAX_ATTEMPTS = 8
BATCH = 50


def subscription_resource(sub):
    from api.fhir import clean, meta
    return clean({
        "resourceType": "Subscription", "id": str(sub.id), "meta": meta(sub.updated_at),
        "status": sub.status, "reason": sub.reason or "Task changes",
        "criteria": sub.criteria, "error": sub.last_error[:500] or None,
        "channel": {"type": "rest-hook", "endpoint": sub.endpoint,
                    "payload": "application/fhir+json"},
    })


def create_subscription(actor, body):
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise RuleViolation("The body must be a Subscription.", 422)
    criteria = str(body.get("criteria") or "").strip()
    if criteria.split("?")[0] != "Task" or "?" in criteria:
        raise RuleViolation("Only the criteria \"Task\" (every Task your program sees) is supported.", 422)
    channel = body.get("channel") or {}
    endpoint = str(channel.get("endpoint") or "").strip()
    if channel.get("type") != "rest-hook" or urlparse(endpoint).scheme not in ("http", "https") \
            or not urlparse(endpoint).netloc:
        raise RuleViolation("The channel must be a rest-hook with an http(s) endpoint.", 422)
    if channel.get("payload") not in (None, "application/fhir+json", "application/json"):
        raise RuleViolation("The payload must be application/fhir+json.", 422)
    secret = next((str(e.get("valueString") or "") for e in body.get("extension") or []
                   if e.get("url") == SECRET_URL), "")
    if len(secret) < 16:
        raise RuleViolation(f"Give a shared secret of 16 characters or more in the extension "
                            f"{SECRET_URL}; deliveries are signed with it.", 422)
    with transaction():
        sub = FhirSubscription.create(client=actor.api_client, criteria=criteria, endpoint=endpoint[:500],
                                      secret=secret[:200], reason=str(body.get("reason") or "")[:300])
        record_audit(actor, "fhir_create_Subscription", sub, detail=endpoint[:300])
    return sub


def visible(actor):
    return FhirSubscription.select().where(FhirSubscription.client.in_(
        type(actor.api_client).select(type(actor.api_client).id)
        .where(type(actor.api_client).program == actor.program_id)))


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver_due(base_url, post=None):
    """One worker tick: every active subscription whose Tasks changed gets one POST.
    Returns how many deliveries succeeded. Nothing due, nothing imported: requests and
    the FHIR mapping are ~6 MB the worker needs only when a subscription exists (issue 6)."""
    now = utcnow()
    done = 0
    due = list(FhirSubscription.select().where((FhirSubscription.status == "active")
                                               & (FhirSubscription.next_attempt_at <= now)))
    if not due:
        return 0
    import requests

    from api.fhir import task_resource
    from api.fhir_auth import actor_for

    post = post or (lambda url, data, headers: requests.post(url, data=data, headers=headers, timeout=10))
    for sub in due:
        client = sub.client
        if not client.active:
            continue
        actor = actor_for(client)
        changed = list(Referral.visible_to(actor.user, actor.program)
                       .where(Referral.updated_at > sub.cursor)
                       .order_by(Referral.updated_at, Referral.id).limit(BATCH))
        if not changed:
            continue
        bundle = {"resourceType": "Bundle", "type": "history", "entry": [
            {"fullUrl": f"{base_url}/fhir/Task/{r.id}", "resource": task_resource(r),
             "request": {"method": "PUT", "url": f"Task/{r.id}"},
             "response": {"status": "200 OK"}} for r in changed]}
        body = json.dumps(bundle).encode()
        headers = {"Content-Type": "application/fhir+json", SIGNATURE_HEADER: sign(sub.secret, body),
                   "X-Connect-Subscription": str(sub.id)}
        try:
            answer = post(sub.endpoint, body, headers)
            ok, error = 200 <= answer.status_code < 300, f"HTTP {answer.status_code}"
        except Exception as exc:  # any network failure is retried
            ok, error = False, f"{type(exc).__name__}: {exc}"
        with transaction():
            if ok:
                FhirSubscription.update(cursor=changed[-1].updated_at, attempts=0, last_error="",
                                        next_attempt_at=now, updated_at=now).where(
                    FhirSubscription.id == sub.id).execute()
                record_audit(actor, "fhir_notify_Subscription", sub,
                             detail="Tasks " + ",".join(str(r.id) for r in changed))
                done += 1
            else:
                attempts = sub.attempts + 1
                FhirSubscription.update(
                    attempts=attempts, last_error=error[:1000], updated_at=now,
                    next_attempt_at=now + dt.timedelta(minutes=2 ** min(attempts - 1, 6)),
                    status="error" if attempts >= MAX_ATTEMPTS else "active").where(
                    FhirSubscription.id == sub.id).execute()
                record_audit(actor, "fhir_notify_Subscription", sub, outcome="failed", detail=error)
    return done
