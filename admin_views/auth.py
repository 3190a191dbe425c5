"""Sign-in, sign-out, passwords, User MOU, acting program and the bell (R-AUTH, R-MOU-1, R-CTX)."""

import time
from urllib.parse import urlparse

from flask import current_app, flash, redirect, request, session, url_for
from flask_login import current_user, login_user, logout_user

import workflow
from admin_views.base import (
    PROGRAM_SESSION_KEY,
    SecureBaseView,
    acting_program,
    client_ip,
    current_actor,
    expose,
)
from forms.auth import (
    ChangePasswordForm,
    ChooseProgramForm,
    ForgotPasswordForm,
    SetPasswordForm,
    SignInForm,
    SignMouForm,
)
from models import Notification, User, local_today, utcnow

SIGN_IN_MIN_SECONDS = 0.35  # known and unknown addresses answer in the same time


def start_session(user, server_session):
    """A fresh cookie for a new server session, stamped with its first use: the idle
    timeout then applies to every cookie, the sign-in answer's own too (R-AUTH-7)."""
    session.clear()
    user._session_id = server_session.id
    login_user(user)
    session.permanent = True
    session["last_seen"] = utcnow().timestamp()


def safe_next(target, default):
    """Only same-site relative paths are followed after sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and not urlparse(target).netloc:
        return target
    return default


class AuthView(SecureBaseView):
    public = True
    show_in_menu = False

    @expose("/")
    def index(self):
        return redirect(url_for("auth.sign_in"))

    @expose("/sign-in", methods=("GET", "POST"))
    def sign_in(self):
        form = SignInForm()
        if form.validate_on_submit():
            started = time.monotonic()
            try:
                user, server_session = workflow.sign_in(
                    form.email.data, form.password.data, client_ip(), request.user_agent.string)
            except workflow.RuleViolation as exc:
                time.sleep(max(0.0, SIGN_IN_MIN_SECONDS - (time.monotonic() - started)))
                flash(exc.message, "error")
                return self.render("auth/sign_in.html", form=form), exc.status_code
            start_session(user, server_session)  # a new session id at sign-in
            time.sleep(max(0.0, SIGN_IN_MIN_SECONDS - (time.monotonic() - started)))
            return redirect(safe_next(request.args.get("next"), url_for("admin.index")))
        return self.render("auth/sign_in.html", form=form)

    @expose("/sign-out", methods=("POST",))
    def sign_out(self):
        if current_user.is_authenticated:
            workflow.end_session(current_user.get_id())
        logout_user()
        session.clear()
        flash("You have signed out.", "success")
        return redirect(url_for("auth.sign_in"))

    @expose("/forgot-password", methods=("GET", "POST"))
    def forgot_password(self):
        form = ForgotPasswordForm()
        if form.validate_on_submit():
            email = form.email.data.strip().lower()
            user = User.get_or_none((User.email == email) & User.is_active)
            if user is not None:
                workflow.issue_link(user, "reset", current_app.config["SECRET_KEY"],
                                    current_app.config["BASE_URL"], actor=workflow.Actor(None, ip=client_ip()))
            flash("If an account uses that address, an email with a reset link is on its way.", "success")
            return redirect(url_for("auth.sign_in"))
        return self.render("auth/forgot_password.html", form=form)

    def _set_password(self, purpose, token):
        form = SetPasswordForm()
        if form.validate_on_submit():
            try:
                workflow.use_link(purpose, token, form.password.data,
                                  current_app.config["SECRET_KEY"], client_ip())
            except workflow.RuleViolation as exc:
                flash(exc.message, "error")
                return self.render("auth/set_password.html", form=form, purpose=purpose), 400
            logout_user()
            session.clear()
            flash("Your password is set. Sign in with it now.", "success")
            return redirect(url_for("auth.sign_in"))
        return self.render("auth/set_password.html", form=form, purpose=purpose)

    @expose("/reset/<token>", methods=("GET", "POST"))
    def reset(self, token):
        return self._set_password("reset", token)

    @expose("/invitation/<token>", methods=("GET", "POST"))
    def invitation(self, token):
        return self._set_password("invite", token)

    @expose("/change-password", methods=("GET", "POST"))
    def change_password(self):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.sign_in"))
        form = ChangePasswordForm()
        if form.validate_on_submit():
            try:
                new_session = workflow.change_password(
                    current_actor(), form.current_password.data, form.password.data,
                    request.user_agent.string)
            except workflow.RuleViolation as exc:
                flash(exc.message, "error")
                return self.render("auth/change_password.html", form=form), 422
            user = current_user._get_current_object()
            program_id = session.get(PROGRAM_SESSION_KEY)
            start_session(user, new_session)  # the old one is revoked: continue in a new one
            if program_id:
                session[PROGRAM_SESSION_KEY] = program_id
            flash("Your password has been changed.", "success")
            return redirect(url_for("admin.index"))
        return self.render("auth/change_password.html", form=form)

    @expose("/user-mou", methods=("GET", "POST"))
    def user_mou(self):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.sign_in"))
        if current_user.must_change_password:
            return redirect(url_for("auth.change_password"))
        form = SignMouForm()
        current = current_user.current_user_mou(local_today())
        if form.validate_on_submit():
            try:
                workflow.sign_user_mou(current_actor(), form.signature_name.data)
            except workflow.RuleViolation as exc:
                flash(exc.message, "error")
                return self.render("auth/user_mou.html", form=form, text=mou_text("user"),
                                   current=current), 422
            flash("Thank you: the User MOU is signed for one year.", "success")
            return redirect(safe_next(request.args.get("next"), url_for("admin.index")))
        return self.render("auth/user_mou.html", form=form, text=mou_text("user"), current=current)


def mou_text(kind):
    from cli import DATA
    return (DATA / f"{kind}_mou.md").read_text()


class ProgramView(SecureBaseView):
    """Choose the acting program (R-CTX-2); an unaffiliated program is refused (R-CTX-3)."""

    permission = "view_notifications"
    needs_mou = False
    show_in_menu = False

    def is_accessible(self):
        return current_user.is_authenticated

    @expose("/", methods=("GET", "POST"))
    def index(self):
        form = ChooseProgramForm()
        search = (request.args.get("q") or "").strip()
        memberships = list(current_user.memberships())
        choices = {}
        for m in memberships:
            entry = choices.setdefault(m.program.id, {"program": m.program, "roles": set()})
            entry["roles"].add(m.role)
        rows = [c for c in choices.values()
                if not search or search.lower() in c["program"].label.lower()]
        if form.validate_on_submit():
            program_id = form.program_id.data
            if program_id not in choices:
                workflow.audit_denial(current_actor(), "choose_program", detail=f"program {program_id}")
                flash("You are not affiliated with that agency or program. Choose one of yours, "
                      "or ask your designated administrator for access.", "error")
                return self.render("auth/choose_program.html", form=form, rows=rows,
                                   search=search), 403
            session[PROGRAM_SESSION_KEY] = program_id
            flash(f"You are now acting as {choices[program_id]['program'].label}.", "success")
            return redirect(safe_next(request.args.get("next"), url_for("admin.index")))
        return self.render("auth/choose_program.html", form=form, rows=rows, search=search,
                           current=acting_program())


class NotificationView(SecureBaseView):
    """The bell: unread notifications first (R-RECV-1)."""

    permission = "view_notifications"
    needs_mou = False
    show_in_menu = False

    def is_accessible(self):
        return current_user.is_authenticated

    @expose("/")
    def index(self):
        rows = list(Notification.select().where(Notification.user == current_user.id)
                    .order_by(Notification.read_at.is_null(False), Notification.created_at.desc())
                    .limit(100))
        return self.render("auth/notifications.html", rows=rows)

    @expose("/read", methods=("POST",))
    def mark_read(self):
        workflow.mark_notifications_read(current_user._get_current_object())
        flash("All notifications are marked as read.", "success")
        return redirect(url_for("notifications.index"))


def unread_count(user):
    return Notification.select().where((Notification.user == user.id)
                                       & Notification.read_at.is_null()).count()
