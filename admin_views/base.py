"""One place owns access: SecureBaseView and SecureModelView.

Every view declares `permission` (a name from models.PERMISSIONS) or `public = True`.
Anonymous users are sent to sign-in, users who must change their password or sign the
User MOU are sent there first, users without an acting program to the chooser, and
signed-in users without the permission get 403. Row filtering goes through one
`visible_query()` that list, count, detail, export and actions all use.
"""

import functools

from flask import abort, current_app, flash, g, redirect, request, session, url_for
from flask_admin import BaseView, expose  # noqa: F401  (re-exported for view modules)
from flask_admin.actions import action
from flask_admin.contrib.peewee import ModelView
from flask_admin.form import BaseForm
from flask_login import current_user
from flask_wtf.csrf import _FlaskFormCSRF

from models import Agency, Membership, Program, local_today
from workflow import Actor, RuleViolation, audit_denial

PROGRAM_SESSION_KEY = "program_id"


def client_ip():
    return request.remote_addr or ""


def active_memberships():
    """The signed-in user's memberships in active programs, with each program and its
    agency: ONE query per request, shared by the acting program, the roles, the program
    count and the menu checks (cached in flask.g)."""
    if "connect_memberships" not in g:
        rows = []
        if current_user.is_authenticated:
            rows = list(Membership.select(Membership.role, Membership.program, Program, Agency)
                        .join(Program).join(Agency)
                        .where((Membership.user == current_user.id) & Program.active))
            current_user.cache_roles(rows)
        g.connect_memberships = rows
    return g.connect_memberships


def has_role_anywhere(role):
    """Whether the user holds `role` in some active program (from active_memberships)."""
    return any(row.role == role for row in active_memberships())


def acting_program():
    """The program the signed-in user acts for this request (R-CTX), or None."""
    if "acting_program" in g:
        return g.acting_program
    program = None
    if current_user.is_authenticated:
        programs = {row.program_id: row.program for row in active_memberships()}
        chosen = session.get(PROGRAM_SESSION_KEY)
        if chosen in programs:
            program = programs[chosen]
        elif len(programs) == 1:  # R-CTX-1: one program, chosen automatically
            program = next(iter(programs.values()))
            session[PROGRAM_SESSION_KEY] = program.id
        g.program_count = len(programs)
    g.acting_program = program
    return program


def acting_program_count():
    """How many active programs the user belongs to (the chooser's "Switch program")."""
    acting_program()
    return g.get("program_count", 0)


def current_actor():
    return Actor(current_user._get_current_object(), acting_program(), client_ip())


def visible_or_404(query, model, key, action):
    """The row of `query` with this id, else 404 with the attempt audited (R-SAFE-2)."""
    row = query.where(model.id == key).first()
    if row is None:
        audit_denial(current_actor(), action, detail=f"{model.__name__.lower()} {key}")
        abort(404)
    return row


def needs_user_mou(user):
    """No valid User MOU (R-MOU-1); asked once per request."""
    if "connect_needs_mou" not in g:
        g.connect_needs_mou = user.current_user_mou(local_today()) is None
    return g.connect_needs_mou


class AccessMixin:
    """Shared by every view: the gate of the module docstring."""

    permission = None  # a permission name, or None with public = True
    public = False
    needs_program = False  # acting program required (subject and referral screens)
    needs_mou = True  # User MOU required (R-MOU-1)
    show_in_menu = True

    def is_accessible(self):
        if self.public:
            return True
        if not current_user.is_authenticated:
            return False
        return current_user.can(self.permission, acting_program())

    def _gate(self):
        """A redirect for sign-in, password change, MOU or program choice, else None."""
        if self.public:
            return None
        if not current_user.is_authenticated:
            return redirect(url_for("auth.sign_in", next=request.full_path))
        if current_user.must_change_password:
            return redirect(url_for("auth.change_password"))
        if self.needs_mou and needs_user_mou(current_user):
            return redirect(url_for("auth.user_mou", next=request.full_path))
        if self.needs_program and acting_program() is None and not current_user.is_admin:
            return redirect(url_for("program.index", next=request.full_path))
        return None

    def _handle_view(self, name, **kwargs):
        response = self._gate()
        if response is not None:
            return response
        if not self.is_accessible():
            return self.inaccessible_callback(name, **kwargs)
        return None

    def inaccessible_callback(self, name, **kwargs):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.sign_in", next=request.full_path))
        audit_denial(current_actor(), f"{self.endpoint}.{name}", detail=request.path)
        return abort(403)

    def is_visible(self):
        return self.show_in_menu and self.is_accessible()


MAX_ID = 2 ** 63 - 1


def _as_id(raw):
    """A database id from the browser, or None (malformed, negative or out of range)."""
    try:
        key = int(str(raw).strip())
    except (TypeError, ValueError):
        return None
    return key if 0 < key <= MAX_ID else None


class SecureBaseView(AccessMixin, BaseView):
    """A custom screen behind the gate."""


class SecureForm(BaseForm):
    """Flask-Admin forms carrying Flask-WTF's CSRF token: the one CSRFProtect checks on
    every POST (Flask-Admin's own SecureForm token would be refused by CSRFProtect)."""

    class Meta(BaseForm.Meta):
        csrf = True
        csrf_class = _FlaskFormCSRF
        csrf_field_name = "csrf_token"
        csrf_context = session

        @property
        def csrf_secret(self):
            return current_app.config.get("WTF_CSRF_SECRET_KEY", current_app.secret_key)

        @property
        def csrf_time_limit(self):
            return current_app.config.get("WTF_CSRF_TIME_LIMIT", 3600)


class SecureModelView(AccessMixin, ModelView):
    """A Flask-Admin list view behind the gate, with one row filter for everything."""

    form_base_class = SecureForm
    can_delete = False
    can_view_details = True
    page_size = 25
    can_set_page_size = True
    page_size_options = (25, 50, 100)

    def search_placeholder(self):
        return "Search"

    def visible_query(self):
        """The rows the current user may see; override per view (the one row filter)."""
        return self.model.select()

    def get_query(self):
        return self.visible_query()

    def get_count_query(self):
        return self.visible_query()

    def get_one(self, id):
        """Flask-Admin's peewee get_one skips get_query: filter here too. A missing, malformed
        or foreign id answers 404 (the same for all three) and the attempt is audited."""
        key = _as_id(id)
        row = self.visible_query().where(self.model.id == key).first() if key is not None else None
        if row is None:
            audit_denial(current_actor(), f"{self.endpoint}.get_one", detail=f"id {str(id)[:40]}")
            abort(404)
        return row

    def _ids(self, ids):
        """Action ids from the browser: only those the user may see, as ints."""
        clean = [key for key in map(_as_id, ids) if key is not None]
        return list(self.visible_query().where(self.model.id.in_(clean))) if clean else []

    MAX_PAGE = 100_000

    def _get_list_extra_args(self):
        """page and page_size from the browser, kept in range: a huge or negative page
        made the database refuse the OFFSET (a 500; found by the security battery, item 9)."""
        args = super()._get_list_extra_args()
        args.page = min(max(args.page or 0, 0), self.MAX_PAGE)
        if args.page_size not in self.page_size_options:
            args.page_size = 0
        return args

    def handle_action(self, return_view=None):
        """Flask-Admin's built-in "delete" action deletes by raw id (recursively) without
        the row filter: refuse it wherever the view does not allow deleting, whatever a
        subclass's is_action_allowed says (found by the security battery, item 2)."""
        if request.form.get("action") == "delete" and not self.can_delete:
            audit_denial(current_actor(), f"{self.endpoint}.action_delete", detail="delete not allowed")
            abort(403)
        return super().handle_action(return_view)

    @action("delete", "Delete", "Delete the selected records?")
    def action_delete(self, ids):
        """Delete only rows the user may see, through delete_model (never a raw id)."""
        done = sum(1 for row in self._ids(ids) if self.delete_model(row))
        flash(f"{done} record(s) deleted.", "success" if done else "warning")

    def handle_rule_violation(self, exc):
        flash(exc.message, "error")


def same_site_referrer():
    """The page the user came from, only when it is on this site."""
    referrer = request.referrer or ""
    return referrer if referrer.startswith(request.host_url) else None


def rule_guard(view):
    """Turn RuleViolation into a flash message and a redirect back (screens)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except RuleViolation as exc:
            if exc.status_code == 404:
                abort(404)
            flash(exc.message, "error")
            return redirect(same_site_referrer() or request.path)

    return wrapper
