"""Administrators' account screens (users, memberships, MOUs, outbox, audit log), the
gatekeepers' Agency MOU screen (R-MOU-2) and everybody's "My account" page.

Every list goes through visible_query(): a regional coordinator (admin_statewide False)
sees only the people, programs and MOUs of their regions (AdminRegion)."""

from flask import abort, current_app, flash, redirect, request, url_for
from flask_admin.actions import action
from flask_admin.contrib.peewee.filters import BasePeeweeFilter, FilterEqual, FilterLike
from flask_login import current_user
from markupsafe import Markup, escape

import messaging
import workflow
from admin_views.auth import mou_text, safe_next
from admin_views.base import (
    SecureBaseView,
    SecureModelView,
    current_actor,
    expose,
    has_role_anywhere,
    rule_guard,
)
from admin_views.directory import MouStateFilter, mou_state
from forms.accounts import EditUserForm, InviteUserForm, MembershipForm, SignAgencyMouForm
from models import (
    OUTBOX_KEPT,
    ROLE_GATEKEEPER,
    ROLE_LABELS,
    Agency,
    AgencyMou,
    AuditEvent,
    Membership,
    Outbox,
    Program,
    Region,
    User,
    UserMou,
    fn,
    local_today,
    programs_managed_by,
    users_managed_by,
)


def _flash_count(done, verb):
    flash(f"{done} account(s) {verb}." if done else f"No account was {verb}.",
          "success" if done else "warning")


class ProgramMemberFilter(BasePeeweeFilter):
    """Users with a role in a program whose name contains the text."""

    def apply(self, query, value):
        programs = Program.select(Program.id).where(Program.name.contains(value))
        members = Membership.select(Membership.user).where(Membership.program.in_(programs))
        return query.where(User.id.in_(members))

    def operation(self):
        return "contains"


def _user_mou_cell(view, context, model, name):
    mou = model.current_user_mou()
    last = mou.expires_on if mou else (UserMou.select(fn.MAX(UserMou.expires_on))
                                       .where(UserMou.user == model).scalar())
    state = mou_state(last)
    return f"{state.title()}" + (f" (through {last.isoformat()})" if last else "")


def _roles_cell(view, context, model, name):
    rows = (Membership.select(Membership, Program).join(Program)
            .where(Membership.user == model).order_by(Program.name))
    return "; ".join(f"{ROLE_LABELS[m.role]} of {m.program.name}" for m in rows) or "—"


class UserView(SecureModelView):
    """Users: create = invitation email; resend, deactivate, reactivate, reset password."""

    permission = "manage_users"
    can_delete = False
    column_list = ("name", "email", "is_active", "is_admin", "admin_statewide", "roles",
                   "user_mou", "last_sign_in_at")
    column_details_list = ("name", "email", "phone", "is_active", "is_admin", "admin_statewide",
                           "regions", "roles", "user_mou", "must_change_password",
                           "password_changed_at", "last_sign_in_at", "created_at")
    column_labels = {"is_active": "Active", "is_admin": "Administrator",
                     "admin_statewide": "Statewide", "roles": "Roles", "user_mou": "User MOU",
                     "must_change_password": "Must change password",
                     "last_sign_in_at": "Last sign-in"}
    column_searchable_list = ("name", "email")
    column_filters = ("is_active", "is_admin", "admin_statewide",
                      ProgramMemberFilter(User.id, "Program"))
    column_sortable_list = ("name", "email", "is_active", "is_admin", "last_sign_in_at")
    column_default_sort = "name"
    column_formatters = {
        "roles": _roles_cell,
        "user_mou": _user_mou_cell,
        "regions": lambda v, c, m, n: ", ".join(
            r.name for r in Region.select().where(Region.id.in_(m.admin_region_ids()))) or "—",
    }

    def visible_query(self):
        return users_managed_by(current_user)

    def get_create_form(self):
        return InviteUserForm

    def get_edit_form(self):
        return EditUserForm

    def _limit(self, form):
        programs = programs_managed_by(current_user).join(Agency).order_by(Agency.name, Program.name)
        if hasattr(form, "program"):
            form.program.query = programs
        if not current_user.admin_statewide:
            for name in ("is_admin", "admin_statewide", "regions"):
                del form[name]
        return form

    def create_form(self, obj=None):
        return self._limit(super().create_form(obj))

    def edit_form(self, obj=None):
        form = self._limit(super().edit_form(obj))
        if obj is not None and "regions" in form and request.method == "GET":
            form.regions.data = list(Region.select().where(Region.id.in_(obj.admin_region_ids())))
        return form

    def create_model(self, form):
        statewide = "is_admin" in form
        try:
            user = workflow.invite_user(
                current_actor(), form.email.data, form.name.data, phone=form.phone.data,
                program=form.program.data, role=form.role.data or None,
                is_admin=statewide and form.is_admin.data,
                statewide=statewide and form.admin_statewide.data,
                region_ids=[r.id for r in form.regions.data] if statewide else (),
                secret_key=current_app.config["SECRET_KEY"], base_url=current_app.config["BASE_URL"])
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return False
        flash(f"Invitation email queued for {user.email}.", "success")
        return user

    def update_model(self, form, model):
        scope = "is_admin" in form
        try:
            workflow.update_user(
                current_actor(), model, form.name.data, form.phone.data,
                is_admin=form.is_admin.data if scope else None,
                statewide=form.admin_statewide.data if scope else None,
                region_ids=[r.id for r in form.regions.data] if scope else None)
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return False
        return True

    def _each(self, ids, change):
        done = 0
        for user in self._ids(ids):
            try:
                change(user)
                done += 1
            except workflow.RuleViolation as exc:
                flash(f"{user.email}: {exc.message}", "error")
        return done

    def _link(self, purpose):
        config = current_app.config
        return lambda user: workflow.issue_link(user, purpose, config["SECRET_KEY"],
                                                config["BASE_URL"], actor=current_actor())

    @action("resend_invitation", "Resend invitation", "Send a new invitation email? Older links stop working.")
    def action_resend_invitation(self, ids):
        _flash_count(self._each(ids, self._link("invite")), "sent a new invitation")

    @action("reset_password", "Reset password", "Email a password reset link to the selected people?")
    def action_reset_password(self, ids):
        _flash_count(self._each(ids, self._link("reset")), "sent a reset link")

    @action("deactivate", "Deactivate", "Deactivate the selected accounts? Their sessions end at once.")
    def action_deactivate(self, ids):
        actor = current_actor()
        _flash_count(self._each(ids, lambda u: workflow.set_user_active(actor, u, False)), "deactivated")

    @action("reactivate", "Reactivate", "Reactivate the selected accounts?")
    def action_reactivate(self, ids):
        actor = current_actor()
        _flash_count(self._each(ids, lambda u: workflow.set_user_active(actor, u, True)), "reactivated")


class MembershipView(SecureModelView):
    """Roles: user × program × gatekeeper/provider; removing one ends the user's sessions."""

    permission = "manage_users"
    can_edit = False
    can_delete = True
    can_view_details = False
    column_list = ("user", "program", "agency", "role", "created_at")
    column_labels = {"created_at": "Since"}
    column_searchable_list = (User.name, User.email)
    column_filters = (Program.name, "role")
    column_sortable_list = (("user", User.name), ("program", Program.name), "role", "created_at")
    column_formatters = {"role": lambda v, c, m, n: ROLE_LABELS[m.role],
                         "agency": lambda v, c, m, n: m.program.agency.name,
                         "program": lambda v, c, m, n: m.program.name}

    def visible_query(self):
        programs = programs_managed_by(current_user).select(Program.id)
        return Membership.select().where(Membership.program.in_(programs))

    def get_create_form(self):
        return MembershipForm

    def create_form(self, obj=None):
        form = super().create_form(obj)
        form.user.query = users_managed_by(current_user).order_by(User.name)
        form.program.query = programs_managed_by(current_user).join(Agency).order_by(Agency.name, Program.name)
        if request.method == "GET" and request.args.get("user_id", "").isdigit():
            form.user.data = form.user.query.where(User.id == int(request.args["user_id"])).first()
        return form

    def create_model(self, form):
        try:
            return workflow.add_membership(current_actor(), form.user.data, form.program.data,
                                           form.role.data)
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return False

    def delete_model(self, model):
        try:
            workflow.remove_membership(current_actor(), model)
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return False
        return True

    @action("delete", "Remove role", "Remove the selected roles? Those users are signed out.")
    def action_delete(self, ids):
        done = sum(1 for row in self._ids(ids) if self.delete_model(row))
        flash(f"{done} role(s) removed.", "success" if done else "warning")


class ReadOnlyView(SecureModelView):
    can_create = False
    can_edit = False
    can_delete = False


class UserMouView(ReadOnlyView):
    permission = "manage_users"
    column_list = ("user", "signature_name", "signed_on", "expires_on", "state", "version")
    column_searchable_list = (User.name, User.email)
    column_filters = ("signed_on", "expires_on", MouStateFilter(UserMou.expires_on, "State"))
    column_sortable_list = (("user", User.name), "signed_on", "expires_on")
    column_default_sort = ("expires_on", True)
    column_formatters = {"state": lambda v, c, m, n: mou_state(m.expires_on).title()}

    def visible_query(self):
        return UserMou.select().where(UserMou.user.in_(users_managed_by(current_user).select(User.id)))


class AgencyMouView(ReadOnlyView):
    permission = "manage_network"
    column_list = ("program", "agency", "signed_by", "signature_name", "signed_on", "expires_on", "state")
    column_searchable_list = (Program.name,)
    column_filters = ("signed_on", "expires_on", MouStateFilter(AgencyMou.expires_on, "State"))
    column_sortable_list = (("program", Program.name), "signed_on", "expires_on")
    column_default_sort = ("expires_on", True)
    column_formatters = {"state": lambda v, c, m, n: mou_state(m.expires_on).title(),
                         "program": lambda v, c, m, n: m.program.name,
                         "agency": lambda v, c, m, n: m.program.agency.name,
                         "signed_by": lambda v, c, m, n: m.signed_by.name}

    def visible_query(self):
        programs = programs_managed_by(current_user).select(Program.id)
        return AgencyMou.select().where(AgencyMou.program.in_(programs))


def _masked_body(view, context, model, name):
    """Link tokens in sent or queued emails stay private; a kept email (no transport)
    is shown whole, since an administrator then passes it on by hand. The security code
    of a text-message ROI is never shown: it proves the client's own consent (R-ROI-6),
    so nobody but the client may read it."""
    import re
    body = model.body if model.state == OUTBOX_KEPT else re.sub(
        r"(/auth/(?:invitation|reset)/)\S+", r"\1[link hidden]", model.body)
    if model.kind == "roi_text_code":
        body = re.sub(r"\b\d{6}\b", "[code hidden]", body)
    return Markup(f"<pre class='outbox-body'>{escape(body)}</pre>")


class OutboxView(ReadOnlyView):
    """Every email and text with its delivery state; "Retry" puts it back in the queue."""

    permission = "view_outbox"
    column_list = ("created_at", "channel", "recipient", "subject", "kind", "state", "attempts",
                   "last_error", "sent_at")
    column_details_list = column_list + ("next_attempt_at", "body")
    column_labels = {"created_at": "Queued", "last_error": "Last error", "sent_at": "Sent"}
    column_searchable_list = ("recipient", "subject")
    column_filters = ("state", "channel", "kind", "created_at")
    column_default_sort = ("id", True)
    column_formatters_detail = {"body": _masked_body}

    def visible_query(self):
        if current_user.admin_statewide:
            return Outbox.select()
        emails = users_managed_by(current_user).select(User.email)
        return Outbox.select().where(Outbox.recipient.in_(emails))

    @action("retry", "Retry", "Put the selected messages back in the delivery queue?")
    def action_retry(self, ids):
        done = messaging.retry_outbox([row.id for row in self._ids(ids)])
        flash(f"{done} message(s) queued again." if done else "No message was queued again "
              "(messages already sent are not sent twice).", "success" if done else "warning")


class AuditView(ReadOnlyView):
    """The audit log (R-SAFE-1): read-only, filterable by user, action, outcome and date."""

    permission = "view_audit"
    can_export = True
    column_list = ("at", "user_email", "program", "action", "object_type", "object_id",
                   "subject", "ip", "outcome", "detail")
    column_labels = {"at": "When (UTC)", "user_email": "User", "object_type": "Object",
                     "object_id": "Id", "ip": "Address", "subject": "Subject id"}
    column_searchable_list = ("user_email", "action", "detail")
    column_filters = ("at", FilterLike(AuditEvent.user_email, "User"),
                      FilterLike(AuditEvent.action, "Action"),
                      FilterEqual(AuditEvent.outcome, "Outcome",
                                  options=(("ok", "ok"), ("denied", "denied"), ("failed", "failed"))),
                      FilterEqual(AuditEvent.object_type, "Object"))
    column_default_sort = ("id", True)
    column_formatters = {"program": lambda v, c, m, n: m.program_id or "",
                         "subject": lambda v, c, m, n: m.subject_id or ""}

    def visible_query(self):
        if current_user.admin_statewide:
            return AuditEvent.select()
        users = users_managed_by(current_user).select(User.id)
        programs = programs_managed_by(current_user).select(Program.id)
        return AuditEvent.select().where(AuditEvent.user.in_(users) | AuditEvent.program.in_(programs))


# ---------------------------------------------------------------------------
# Gatekeepers: the Agency MOU of each of their programs (R-MOU-2)
# ---------------------------------------------------------------------------

def gatekeeper_programs(user):
    return (Program.select(Program, Agency).join(Agency)
            .join_from(Program, Membership, on=(Membership.program == Program.id))
            .where((Membership.user == user.id) & (Membership.role == ROLE_GATEKEEPER) & Program.active)
            .order_by(Agency.name, Program.name))


class AgencyMouScreen(SecureBaseView):
    """A gatekeeper lists their programs with the MOU state and signs with a typed name."""

    permission = "sign_agency_mou"

    def is_accessible(self):
        return current_user.is_authenticated and has_role_anywhere(ROLE_GATEKEEPER)

    @expose("/", methods=("GET", "POST"))
    @rule_guard
    def index(self):
        form = SignAgencyMouForm()
        programs = list(gatekeeper_programs(current_user))
        if form.validate_on_submit():
            program = next((p for p in programs if p.id == form.program_id.data), None)
            if program is None:
                workflow.audit_denial(current_actor(), "sign_agency_mou",
                                      detail=f"program {form.program_id.data}")
                abort(404)
            workflow.sign_agency_mou(current_actor(), program, form.signature_name.data)
            flash(f"Thank you: the Agency MOU of {program.name} is signed for one year.", "success")
            return redirect(safe_next(form.next.data, url_for(".index")))
        if form.is_submitted():
            flash(" ".join(e for errors in form.errors.values() for e in errors), "error")
        rows = [{"program": p, "state": mou_state(p.mou_valid_until)} for p in programs]
        return self.render("accounts/agency_mou.html", rows=rows, form=form, text=mou_text("agency"),
                           today=local_today())


class MyAccountView(SecureBaseView):
    """Everybody's own page: name, roles, User MOU status, change password."""

    permission = "view_notifications"
    needs_mou = False

    def is_accessible(self):
        return current_user.is_authenticated

    @expose("/")
    def index(self):
        mou = current_user.current_user_mou()
        memberships = list(current_user.memberships())
        agency_mous = list(gatekeeper_programs(current_user))
        return self.render("accounts/my_account.html", mou=mou, memberships=memberships,
                           role_labels=ROLE_LABELS, agency_mous=agency_mous, mou_state=mou_state,
                           next_url=request.path)


def register(admin):
    for view, model, name, category, endpoint in (
            (UserView, User, "Users", "Accounts", "users"),
            (MembershipView, Membership, "Memberships", "Accounts", "memberships"),
            (UserMouView, UserMou, "User MOUs", "Accounts", "user_mous"),
            (AgencyMouView, AgencyMou, "Agency MOUs", "Accounts", "agency_mous"),
            (OutboxView, Outbox, "Outbox", "System", "outbox"),
            (AuditView, AuditEvent, "Audit log", "System", "audit")):
        admin.add_view(view(model, name=name, category=category, endpoint=endpoint,
                            url="/admin/" + endpoint.replace("_", "-")))
    admin.add_view(AgencyMouScreen(name="Agency MOU", category="Agency", endpoint="agency_mou",
                                   url="/agency-mou"))
    admin.add_view(MyAccountView(name="My account", endpoint="account", url="/account"))
