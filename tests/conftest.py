"""Fixtures and factories. Every test that takes `app` runs on a SQLite file and, when
TEST_DATABASE_URL is set (always in CI), on PostgreSQL too."""

import datetime as dt
import email
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/connect-xdg")
os.makedirs(os.environ["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
for _name in ("MAIL_SERVER", "SMS_BACKEND", "DATABASE_URL", "SECRET_KEY", "BASE_URL"):
    os.environ.pop(_name, None)

import models  # noqa: E402
import security  # noqa: E402

# Tests hash with argon2id's cheapest parameters: the same code path, a fraction of the
# time (production keeps the library's recommended profile; see security.hasher).
from argon2 import PasswordHasher, profiles  # noqa: E402
security.hasher = PasswordHasher.from_parameters(profiles.CHEAPEST)
import workflow  # noqa: E402
from app import create_app  # noqa: E402
from cli import load_reference_data  # noqa: E402
from models import database  # noqa: E402

PASSWORD = "Correct-Horse-42!"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_url():
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return base.rsplit("/", 1)[0] + "/" + base.rsplit("/", 1)[1] + "_" + worker


def _ensure_pg_database(url):
    import psycopg
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


_PG_READY = {}


def _reset_pg(url):
    """Schema once per worker, then TRUNCATE between tests (fast, identities restart)."""
    if url not in _PG_READY:
        _ensure_pg_database(url)
        with database.connection_context():
            database.execute_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
            models.migrate()
        _PG_READY[url] = True
    tables = ", ".join(f'"{m._meta.table_name}"' for m in models.ALL_MODELS if m is not models.SchemaVersion)
    with database.connection_context():
        database.execute_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "postgres" and not _pg_url():
        if IN_CI:
            pytest.fail("TEST_DATABASE_URL is not set in CI: PostgreSQL must be tested")
        pytest.skip("TEST_DATABASE_URL not set")
    return request.param


@pytest.fixture
def app(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("TIMEZONE", "America/Denver")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'connect.db'}"
    else:
        url = _pg_url()
    application = create_app({
        "DATABASE_URL": url,
        "SECRET_KEY": "test-secret-key",
        "DATA_DIR": str(tmp_path),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "BASE_URL": "http://localhost",
        "TESTING": True,
    })
    if backend == "postgres":
        _reset_pg(url)
    with database.connection_context():
        models.migrate()
        load_reference_data()
    database.connect(reuse_if_open=True)
    yield application
    if not database.is_closed():
        database.close()
    if hasattr(database.obj, "close_all"):
        database.obj.close_all()


# ---------------------------------------------------------------------------
# A test client that knows the CSRF dance and signing in.
# ---------------------------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


class Browser:
    """Wraps Flask's test client: sign in, fetch CSRF tokens, post forms."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def get(self, url, **kw):
        return self.client.get(url, **kw)

    def token(self, url="/auth/sign-in"):
        page = self.client.get(url)
        found = CSRF_RE.search(page.get_data(as_text=True))
        assert found, f"no CSRF token on {url}"
        return found.group(1)

    def post(self, url, data=None, token_from=None, csrf=True, **kw):
        data = dict(data or {})
        if csrf and "csrf_token" not in data:
            data["csrf_token"] = self.token(token_from or "/notifications/")
        return self.client.post(url, data=data, **kw)

    def login(self, user_or_email, password=PASSWORD):
        address = getattr(user_or_email, "email", user_or_email)
        response = self.client.post("/auth/sign-in", data={
            "email": address, "password": password, "csrf_token": self.token()})
        assert response.status_code == 302, response.get_data(as_text=True)[:2000]
        return response

    def choose_program(self, program):
        return self.post("/program/", {"program_id": program.id}, token_from="/program/")


@pytest.fixture
def browser(app):
    return Browser(app)


@pytest.fixture
def make_browser(app):
    return lambda: Browser(app)


# ---------------------------------------------------------------------------
# Factories (20 lines, no factory library)
# ---------------------------------------------------------------------------

_counter = {"n": 0}


def _next():
    _counter["n"] += 1
    return _counter["n"]


def make_agency(name=None, region="Region 10 - Gallatin", **fields):
    region_row = models.Region.get(models.Region.name == region)
    return models.Agency.create(name=name or f"Agency {_next()}", region=region_row, **fields)


def make_program(agency=None, name=None, mou=True, counties=("Gallatin",), services=("Primary care",),
                 insurance=("Medicaid",), telemedicine=False, **fields):
    agency = agency or make_agency()
    program = models.Program.create(agency=agency, name=name or f"Program {_next()}",
                                    telemedicine=telemedicine, **fields)
    for county in counties:
        models.ProgramCounty.create(program=program, county=models.County.get(models.County.name == county))
    for service in services:
        models.ProgramService.create(program=program, service=models.Service.get(models.Service.name == service))
    for item in insurance:
        models.ProgramInsurance.create(program=program, insurance_type=models.InsuranceType.get(
            models.InsuranceType.name == item))
    if mou:
        day = models.local_today()
        models.Program.update(mou_valid_until=models.last_valid_day(day)).where(
            models.Program.id == program.id).execute()
        program.mou_valid_until = models.last_valid_day(day)
    return program


_HASHES = {}


def _hash_once(password):
    """argon2id is slow on purpose: hash each test password once per session."""
    from security import hash_password
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


def make_user(role=None, program=None, email=None, name=None, password=PASSWORD, mou=True,
              must_change=False, admin=False, statewide=True, regions=(), active=True):
    n = _next()
    user = models.User.create(email=email or f"user{n}@example.org", name=name or f"User Number{n}",
                              password_hash=_hash_once(password) if password else None,
                              must_change_password=must_change, is_admin=admin,
                              admin_statewide=admin and statewide, is_active=active)
    for region in regions:
        models.AdminRegion.create(user=user, region=models.Region.get(models.Region.name == region))
    roles = [role] if isinstance(role, str) else list(role or [])
    for r in roles:
        models.Membership.create(user=user, program=program, role=r)
    if mou:
        day = models.local_today()
        models.UserMou.create(user=user, signature_name=user.name, signed_on=day,
                              expires_on=models.last_valid_day(day))
    return user


def make_subject(program=None, user=None, **fields):
    n = _next()
    values = dict(first_name=f"Client{n}", last_name=f"Testperson{n}", dob=dt.date(1990, 5, 17),
                  gender="Female", race="White", military="No military service",
                  address=f"{n} Main St", city="Bozeman",
                  county=models.County.get(models.County.name == "Gallatin"), zip_code="59715",
                  phone="+14065550100", created_by=user, created_by_program=program)
    values.update(fields)
    subject = models.Subject(**values)
    subject.fill_normalized()
    subject.save()
    if program is not None:
        models.SubjectLink.get_or_create(subject=subject, program=program, defaults={"reason": "created"})
    return subject


def make_roi(subject, program, others=(), signed=True, info_types=("contact", "demographics"),
             signed_on=None, method="esign", user=None):
    import secrets
    roi = models.Roi.create(subject=subject, program=program, created_by=user,
                            info_types=",".join(info_types), authorizer_kind="client",
                            authorizer_name=subject.full_name,
                            reference=f"R{secrets.token_hex(5).upper()}",
                            state=models.ROI_SIGNED if signed else models.ROI_DRAFT)
    for p in (program, *others):
        models.RoiProgram.get_or_create(roi=roi, program=p)
        if signed:
            models.SubjectLink.get_or_create(subject=subject, program=p, defaults={"reason": "roi"})
    if signed:
        day = signed_on or models.local_today()
        roi.signature_method = method
        roi.signed_on = day
        roi.signed_at = dt.datetime.combine(day, dt.time(18, 0))
        roi.expires_on = models.last_valid_day(day)
        roi.save()
    return roi


@pytest.fixture
def factories(app):
    """The factory functions, bound to the test's database."""
    class F:
        agency = staticmethod(make_agency)
        program = staticmethod(make_program)
        user = staticmethod(make_user)
        subject = staticmethod(make_subject)
        roi = staticmethod(make_roi)
    return F


@pytest.fixture
def network(app):
    """A small network: agency A with programs A1, A2; agency B with program B1, and staff."""
    agency_a = make_agency("Agency A")
    agency_b = make_agency("Agency B", region="Region 9 - Missoula")
    a1 = make_program(agency_a, "Program A1")
    a2 = make_program(agency_a, "Program A2")
    b1 = make_program(agency_b, "Program B1", counties=("Missoula",))
    n = type("Network", (), {})()
    n.agency_a, n.agency_b, n.a1, n.a2, n.b1 = agency_a, agency_b, a1, a2, b1
    n.admin = make_user(admin=True, name="Ada Admin", email="admin@example.org")
    n.gk_a1 = make_user("gatekeeper", a1, name="Gail Gatekeeper", email="gk.a1@example.org")
    n.pr_a1 = make_user("provider", a1, name="Pete Provider", email="pr.a1@example.org")
    n.gk_b1 = make_user("gatekeeper", b1, name="Greta Bee", email="gk.b1@example.org")
    n.pr_b1 = make_user("provider", b1, name="Bob Bee", email="pr.b1@example.org")
    return n


def actor(user, program=None):
    return workflow.Actor(user, program, "127.0.0.1")


# ---------------------------------------------------------------------------
# Real SMTP (aiosmtpd) and a local HTTP server playing the SMS API
# ---------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content)
        body = message.get_payload(decode=True)
        self.messages.append({"to": envelope.rcpt_tos, "subject": message["Subject"],
                              "body": body.decode() if body else message.get_payload()})
        return "250 OK"

    def wait_for(self, count=1, timeout=5):
        end = time.time() + timeout
        while len(self.messages) < count and time.time() < end:
            time.sleep(0.05)
        return self.messages

    def links(self):
        return [m for msg in self.messages for m in re.findall(r"https?://\S+", msg["body"])]


@pytest.fixture
def smtp_server(monkeypatch):
    from aiosmtpd.controller import Controller
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("MAIL_SERVER", "127.0.0.1")
    monkeypatch.setenv("MAIL_PORT", str(port))
    yield box
    controller.stop()


class SmsApi:
    """Records POST /Accounts/{sid}/Messages.json with basic auth checked."""

    def __init__(self, sid, token):
        self.sid, self.token, self.messages, self.refused = sid, token, [], 0

    def handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                import base64
                expected = "Basic " + base64.b64encode(f"{api.sid}:{api.token}".encode()).decode()
                length = int(self.headers.get("Content-Length", 0))
                fields = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.headers.get("Authorization") != expected or \
                        self.path != f"/Accounts/{api.sid}/Messages.json":
                    api.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                api.messages.append(fields)
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"sid": "SM1", "status": "queued"}')

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def sms_api(monkeypatch):
    api = SmsApi("AC123", "sms-secret-token")
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SMS_BACKEND", "twilio")
    monkeypatch.setenv("SMS_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("SMS_ACCOUNT_SID", api.sid)
    monkeypatch.setenv("SMS_AUTH_TOKEN", api.token)
    monkeypatch.setenv("SMS_FROM", "+14065550000")
    yield api
    server.shutdown()


def deliver_outbox():
    from messaging import deliver_pending
    return deliver_pending()


# ---------------------------------------------------------------------------
# A live server and a real browser (Debian's chromium driven by Playwright), axe-core.
# ---------------------------------------------------------------------------

@pytest.fixture
def live_server(app):
    """The app served on 127.0.0.1:<free port> in a thread; yields its base URL."""
    from werkzeug.serving import make_server
    port = free_port()
    app.config["BASE_URL"] = f"http://127.0.0.1:{port}"
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def page(live_server):
    """A Playwright page in Debian's chromium (no browser download)."""
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is missing in CI")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(base_url=live_server, viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(10000)
        yield pg
        context.close()
        browser.close()


ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")


def check_accessibility(pg, name):
    """R-UX-1: axe-core on the current screen, no serious or critical violation; screenshot kept."""
    from axe_playwright_python.sync_playwright import Axe
    os.makedirs(ARTIFACTS, exist_ok=True)
    pg.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)
    results = Axe().run(pg)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, f"{name}: " + "; ".join(
        f"{v['id']}: {v['help']} ({[n['target'] for n in v['nodes']][:3]})" for v in bad)


def ui_login(pg, email_address, password=PASSWORD):
    pg.goto("/auth/sign-in")
    pg.get_by_label("Email").fill(email_address)
    pg.get_by_label("Password").fill(password)
    pg.get_by_role("button", name="Sign in").click()
