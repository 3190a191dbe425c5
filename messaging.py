"""Email and text delivery: the outbox, SMTP, a Twilio-compatible Messages API, the worker.

Rows are written to the outbox by workflow functions in the transaction of the change
that caused them; the worker delivers them with retries and exponential backoff.
"""

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage

from models import (
    OUTBOX_FAILED,
    OUTBOX_KEPT,
    OUTBOX_PENDING,
    OUTBOX_SENT,
    Outbox,
    database,
    transaction,
    utcnow,
)

log = logging.getLogger("connect.messaging")
MAX_ATTEMPTS = 8
TWILIO_API_URL = "https://api.twilio.com/2010-04-01"


class DeliveryError(Exception):
    pass


def _env(name, default=""):
    return os.environ.get(name, default)


def send_email(row):
    """Deliver one email over SMTP; without MAIL_SERVER it stays in the outbox (kept)."""
    server = _env("MAIL_SERVER")
    if not server:
        log.info("email kept (no MAIL_SERVER): to=%s subject=%s", row.recipient, row.subject)
        return OUTBOX_KEPT
    message = EmailMessage()
    message["From"] = _env("MAIL_FROM", "CONNECT <no-reply@connect.local>")
    message["To"] = row.recipient
    message["Subject"] = row.subject
    message.set_content(row.body)
    port = int(_env("MAIL_PORT", "25") or 25)
    try:
        with smtplib.SMTP(server, port, timeout=15) as smtp:
            if _env("MAIL_USE_TLS").lower() in ("1", "true", "yes"):
                smtp.starttls()
            if _env("MAIL_USERNAME"):
                smtp.login(_env("MAIL_USERNAME"), _env("MAIL_PASSWORD"))
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP: {exc}") from exc
    return OUTBOX_SENT


def send_text(row):
    """POST {SMS_API_URL}/Accounts/{sid}/Messages.json with To, From, Body (basic auth)."""
    if _env("SMS_BACKEND", "outbox") != "twilio":
        log.info("text kept (SMS_BACKEND=outbox): to=%s", row.recipient)
        return OUTBOX_KEPT
    base = _env("SMS_API_URL", TWILIO_API_URL).rstrip("/")
    sid = _env("SMS_ACCOUNT_SID")
    url = f"{base}/Accounts/{urllib.parse.quote(sid)}/Messages.json"
    data = urllib.parse.urlencode(
        {"To": row.recipient, "From": _env("SMS_FROM"), "Body": row.body}).encode()
    token = base64.b64encode(f"{sid}:{_env('SMS_AUTH_TOKEN')}".encode()).decode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Authorization": f"Basic {token}",
        "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 (configured URL)
            if response.status >= 300:
                raise DeliveryError(f"SMS API answered {response.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise DeliveryError(f"SMS API: {exc}") from exc
    return OUTBOX_SENT


def _claim(row):
    """Take a row for delivery; only one worker wins the conditional update."""
    with transaction():
        return Outbox.update(attempts=Outbox.attempts + 1).where(
            (Outbox.id == row.id) & (Outbox.state == OUTBOX_PENDING)
            & (Outbox.attempts == row.attempts)).execute() == 1


def deliver(row):
    """Try one outbox row once; record success, or schedule the retry with backoff."""
    if not _claim(row):
        return None
    attempts = row.attempts + 1
    try:
        state = send_email(row) if row.channel == "email" else send_text(row)
    except DeliveryError as exc:
        state = OUTBOX_FAILED if attempts >= MAX_ATTEMPTS else OUTBOX_PENDING
        delay = dt.timedelta(seconds=min(30 * 2 ** attempts, 6 * 3600))
        with transaction():
            Outbox.update(state=state, last_error=str(exc)[:1000],
                          next_attempt_at=utcnow() + delay).where(Outbox.id == row.id).execute()
        log.warning("delivery failed (%s/%s) outbox=%s: %s", attempts, MAX_ATTEMPTS, row.id, exc)
        return state
    with transaction():
        Outbox.update(state=state, sent_at=utcnow(), last_error="").where(
            Outbox.id == row.id).execute()
    return state


def deliver_pending(limit=200):
    """Deliver every due row of the outbox; returns how many were handled."""
    rows = list(Outbox.select().where(
        (Outbox.state == OUTBOX_PENDING) & (Outbox.next_attempt_at <= utcnow()))
        .order_by(Outbox.id).limit(limit))
    for row in rows:
        deliver(row)
    return len(rows)


def retry_outbox(ids):
    """Put failed or kept rows back in the queue (administrators' "Retry" action)."""
    with transaction():
        return Outbox.update(state=OUTBOX_PENDING, next_attempt_at=utcnow(), attempts=0).where(
            Outbox.id.in_(ids) & (Outbox.state != OUTBOX_SENT)).execute()


def twilio_signature(auth_token, url, params):
    """X-Twilio-Signature: base64(HMAC-SHA1(token, url + sorted key+value pairs))."""
    payload = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_twilio_signature(auth_token, url, params, signature):
    if not auth_token or not signature:
        return False
    return hmac.compare_digest(twilio_signature(auth_token, url, params), signature)


def run_due_jobs():
    """Everything the worker does on a tick: reminders, delay flags, then delivery."""
    import workflow

    results = {}
    for name in ("send_mou_reminders", "flag_delayed_referrals"):
        job = getattr(workflow, name, None)
        if job is not None:
            results[name] = job()
    results["delivered"] = deliver_pending()
    from api.fhir_subscriptions import deliver_due  # FHIR rest-hook Subscriptions (issue 8)
    results["fhir_subscriptions"] = deliver_due(workflow._base_url())
    return results


# ---------------------------------------------------------------------------
# The huey worker: SqliteHuey beside the SQLite database, PostgresHuey on PostgreSQL.
# ---------------------------------------------------------------------------

_huey = None


def get_huey(database_url=None, data_dir="data"):
    global _huey
    if _huey is not None:
        return _huey
    url = database_url or _env("DATABASE_URL", "sqlite:///data/connect.db")
    if url.startswith(("postgres://", "postgresql://")):
        from huey import PostgresHuey
        _huey = PostgresHuey("connect", dsn=url)
    else:
        from huey import SqliteHuey
        os.makedirs(data_dir, exist_ok=True)
        # The queue holds a handful of rows: 1 MB of page cache, not huey's default 8 MB
        # (the worker's peak memory budget, issue 6).
        _huey = SqliteHuey("connect", filename=os.path.join(data_dir, "huey.db"), cache_mb=1)
    return _huey


def register_tasks(huey, app):
    """Periodic tick every minute and an on-demand delivery task."""
    from huey import crontab

    @huey.periodic_task(crontab(minute="*"))
    def tick():
        with app.app_context():
            with database.connection_context():
                run_due_jobs()

    @huey.task(retries=3, retry_delay=10)
    def deliver_now():
        with app.app_context():
            with database.connection_context():
                deliver_pending()

    return tick, deliver_now
