"""CONNECT: create_app(config=None) wires settings, database, sign-in, CSRF, admin and CLI."""

import datetime as dt
import os
import pathlib
import secrets

from dotenv import load_dotenv
from flask import Flask, g, request, session
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from peewee import JOIN, SQL, fn

import models
from models import (Agency, Membership, Notification, Program, User, UserMou, UserSession,
                    database, utcnow)
from security import load_secret_key

HERE = pathlib.Path(__file__).resolve().parent
IDLE_TIMEOUT = dt.timedelta(minutes=30)
ABSOLUTE_TIMEOUT = dt.timedelta(hours=12)

csrf = CSRFProtect()
login_manager = LoginManager()


def settings_from_env():
    """Settings of CONTRACT.md, read from the environment (and .env)."""
    load_dotenv(HERE / ".env")
    data_dir = os.environ.get("DATA_DIR", str(HERE / "data"))
    base_url = os.environ.get("BASE_URL", "http://127.0.0.1:5000").rstrip("/")
    return {
        "DATA_DIR": data_dir,
        "DATABASE_URL": os.environ.get("DATABASE_URL", "sqlite:///data/connect.db"),
        "BASE_URL": base_url,
        "UPLOAD_DIR": os.environ.get("UPLOAD_DIR", os.path.join(data_dir, "uploads")),
        "UPLOAD_LIMIT": int(os.environ.get("UPLOAD_LIMIT", str(10 * 1024 * 1024))),
        # Requests larger than this are refused (413) before they are read whole.
        "MAX_CONTENT_LENGTH": int(os.environ.get("MAX_REQUEST_BYTES", str(12 * 1024 * 1024))),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": base_url.startswith("https://"),
        "SESSION_COOKIE_NAME": "connect_session",
        "PERMANENT_SESSION_LIFETIME": ABSOLUTE_TIMEOUT,
        "WTF_CSRF_TIME_LIMIT": 8 * 3600,
        "TILE_URL": os.environ.get("TILE_URL", "https://tile.openstreetmap.org/{z}/{x}/{y}.png"),
        "FLASK_ADMIN_SWATCH": "default",
    }


def _resolve_sqlite_path(url, root):
    """sqlite:///data/connect.db is relative to the project, not the working directory."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            return "sqlite:///" + str(pathlib.Path(root) / path)
    return url


def create_app(config=None):
    """The application factory."""
    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.config.update(settings_from_env())
    app.config.update(config or {})
    if "SESSION_COOKIE_SECURE" not in (config or {}):
        app.config["SESSION_COOKIE_SECURE"] = app.config["BASE_URL"].startswith("https://")
    app.config["DATABASE_URL"] = _resolve_sqlite_path(app.config["DATABASE_URL"], HERE)
    app.config.setdefault("SECRET_KEY", None)
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = load_secret_key(app.config["DATA_DIR"])
    os.makedirs(app.config["UPLOAD_DIR"], exist_ok=True)

    if int(os.environ.get("TRUSTED_PROXIES", "0") or 0):
        # Behind N reverse proxies: the client's address and scheme come from X-Forwarded-*.
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = int(os.environ["TRUSTED_PROXIES"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    app.config["WORKER"] = bool(app.config.get("WORKER")) or _invoked_as_worker()
    init_database(app)
    csrf.init_app(app)
    init_login(app)
    init_security_headers(app)

    if not app.config["WORKER"]:  # the worker serves no page: no admin interface to build
        from admin_views import init_admin
        init_admin(app)

    import cli
    cli.init_cli(app)
    return app


def _invoked_as_worker():
    """`flask --app app run-worker` (CONTRACT.md) builds the app through this factory with
    no arguments: the command line says it is the worker (issue 6: worker memory)."""
    import sys
    return pathlib.Path(sys.argv[0]).name == "flask" and "run-worker" in sys.argv[1:]


# The worker's SQLite page cache (KiB) and temporary store: its jobs read a few index
# pages, and a sort of its scans (the delay check) goes to a temporary file, not to memory.
WORKER_SQLITE_CACHE_KIB = 2000


def init_database(app):
    pragmas = None
    if app.config.get("WORKER"):
        pragmas = dict(models.SQLITE_PRAGMAS, cache_size=-WORKER_SQLITE_CACHE_KIB, temp_store="file")
    database.initialize(models.make_database(app.config["DATABASE_URL"], sqlite_pragmas=pragmas))
    # SQLite: each thread keeps its connection from one request to the next (opening the
    # file, its pragmas and parsing the schema cost 2-3 ms a request); it closes when the
    # thread ends. A request that leaves a transaction open still closes it (rollback).
    keep = app.config.get("SQLITE_KEEP_CONNECTION", True) and models.is_sqlite()

    @app.before_request
    def _connect():
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(exc):
        if database.is_closed():
            return
        if keep and not database.in_transaction():
            return
        database.close()


def init_login(app):
    login_manager.init_app(app)
    login_manager.login_view = "auth.sign_in"
    login_manager.login_message = "Please sign in to continue."
    login_manager.session_protection = None  # server-side sessions do this job

    @login_manager.user_loader
    def load_session(session_id):
        return load_user_for_session(session_id)


def load_user_for_session(session_id):
    """The user of a live server-side session, or None (revoked, idle, too old).

    ONE query for the whole sign-in gate (issue 6): the session and its user, whether the
    user holds a valid User MOU today (R-MOU-1), the number of unread notifications (the
    bell) and the user's memberships in active programs with each program and agency
    (R-CTX); all but the user are kept in flask.g for the request
    (admin_views.base.active_memberships, needs_user_mou, the layout's bell)."""
    now = utcnow()
    has_mou = fn.EXISTS(UserMou.select(SQL("1")).where(
        (UserMou.user == User.id) & (UserMou.expires_on >= models.local_today())))
    unread = Notification.select(fn.COUNT(SQL("*"))).where(
        (Notification.user == User.id) & Notification.read_at.is_null())
    rows = list(UserSession.select(UserSession, User, Membership, Program, Agency,
                                   has_mou.alias("has_mou"), unread.alias("unread"))
                .join(User)
                .join(Membership, JOIN.LEFT_OUTER, on=(Membership.user == User.id),
                      attr="gate_membership")
                .join(Program, JOIN.LEFT_OUTER,
                      on=((Program.id == Membership.program) & Program.active),
                      attr="gate_program")
                .join(Agency, JOIN.LEFT_OUTER, on=(Agency.id == Program.agency), attr="agency")
                .where((UserSession.id == session_id) & UserSession.revoked_at.is_null()
                       & User.is_active))
    if not rows or now - rows[0].created_at > ABSOLUTE_TIMEOUT:
        return None
    last_seen = session.get("last_seen")  # stamped at sign-in (admin_views.auth.start_session)
    if last_seen is None or now.timestamp() - last_seen > IDLE_TIMEOUT.total_seconds():
        return None
    session["last_seen"] = now.timestamp()
    row = rows[0]
    user = row.user
    user._session_id = row.id
    memberships = []
    for each in rows:
        membership = getattr(each.user, "gate_membership", None)
        program = getattr(membership, "gate_program", None)
        if program is None:
            continue  # no membership, or one in an inactive program
        membership.program = program
        memberships.append(membership)
    user.cache_roles(memberships)
    g.connect_memberships = memberships
    g.connect_needs_mou = not row.has_mou
    g.connect_unread = row.unread
    return user


CSP = ("default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}' "
       "'unsafe-inline'; img-src 'self' data: {tiles}; font-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'")


def init_security_headers(app):
    tile_host = app.config["TILE_URL"].split("/{")[0].rsplit("/", 0)[0]
    tiles = "/".join(tile_host.split("/")[:3])

    @app.before_request
    def _nonce():
        g.csp_nonce = secrets.token_urlsafe(16)

    @app.before_request
    def _no_nul_bytes():
        """A NUL byte in a query or form value is never meaningful and PostgreSQL refuses
        it in text (a 500 in list searches; found by the security battery, item 9): it is
        dropped from search and filter values (ids keep it and answer 404 as malformed)."""
        from werkzeug.datastructures import ImmutableMultiDict

        def searchable(key):
            return key in ("search", "q", "dob", "first_name", "last_name") or key.startswith("flt")

        values = request.args
        if any("\x00" in v for k, v in values.items(multi=True) if searchable(k)):
            request.args = ImmutableMultiDict(
                [(k, v.replace("\x00", "") if searchable(k) else v) for k, v in values.items(multi=True)])

    @app.after_request
    def _headers(response):
        nonce = getattr(g, "csp_nonce", "")
        response.headers.setdefault("Content-Security-Policy", CSP.format(nonce=nonce, tiles=tiles))
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.is_secure or app.config["SESSION_COOKIE_SECURE"]:
            response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if not request.path.startswith(("/static/", "/admin/static/", "/directory", "/hsds")):
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        return response


def csp_nonce():
    return getattr(g, "csp_nonce", "")
