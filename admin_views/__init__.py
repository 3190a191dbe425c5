"""init_admin(app) registers every view in one place; Flask-Admin is the whole interface."""

import re

from flask import g, url_for
from flask_admin import Admin, AdminIndexView, expose
from flask_admin.theme import Bootstrap4Theme
from flask_login import current_user
from markupsafe import Markup, escape

from admin_views.auth import AuthView, NotificationView, ProgramView, unread_count
from admin_views.base import AccessMixin, acting_program, acting_program_count


class HomeView(AccessMixin, AdminIndexView):
    """The start page after sign-in: what the user can do, for the acting program."""

    def is_accessible(self):
        return current_user.is_authenticated

    @expose("/")
    def index(self):
        links = [{"label": view.name, "url": url_for(f"{view.endpoint}.index_view"
                                                     if hasattr(view, "index_view") else f"{view.endpoint}.index")}
                 for view in self.admin._views
                 if view is not self and view.is_visible()]
        from reporting import admin_dashboard
        dashboard = admin_dashboard(current_user) if current_user.can("view_dashboard") else None
        return self.render("admin/index.html", program=acting_program(), links=links,
                           dashboard=dashboard)


def markdown_lite(text):
    """The MOU texts: headings, numbered paragraphs and **bold**, escaped first."""
    html = []
    for block in re.split(r"\n\s*\n", str(escape(text))):
        block = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", block)
        items = re.split(r"(?m)^\d+\.\s+", block)
        if block.startswith("# "):
            html.append(f"<h2 class='h4'>{block[2:]}</h2>")
        elif len(items) > 2 and not items[0].strip():  # a numbered list
            html.append("<ol>" + "".join(f"<li>{item.strip()}</li>" for item in items[1:]) + "</ol>")
        else:
            html.append(f"<p>{block}</p>")
    return Markup("\n".join(html))


def init_admin(app):
    from app import csp_nonce

    admin = Admin(app, name="CONNECT", url="/", theme=Bootstrap4Theme(base_template="layout.html"),
                  index_view=HomeView(name="Home", url="/"), csp_nonce_generator=csp_nonce)
    admin.add_view(AuthView(name=None, endpoint="auth", url="/auth"))
    admin.add_view(ProgramView(name=None, endpoint="program", url="/program"))
    admin.add_view(NotificationView(name=None, endpoint="notifications", url="/notifications"))
    register_area_views(admin)

    app.jinja_env.filters["connect_markdown"] = markdown_lite

    def connect_unread():
        """The bell: counted by the sign-in gate's query (app.load_user_for_session)."""
        if not current_user.is_authenticated:
            return 0
        return g.connect_unread if "connect_unread" in g else unread_count(current_user)

    @app.context_processor
    def connect_context():
        return {
            "connect_unread": connect_unread,
            "connect_program": acting_program,
            "connect_program_count": acting_program_count,
        }

    return admin


def register_area_views(admin):
    """Each area module adds its views here (accounts, directory, subjects, consent,
    referrals, reports)."""
    import importlib

    for name in ("accounts", "directory", "subjects", "consent", "referrals", "reports", "public", "interop", "fhir"):
        try:
            module = importlib.import_module(f"admin_views.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"admin_views.{name}":
                raise
            continue
        module.register(admin)
