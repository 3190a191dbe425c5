"""Every change of account, agreement, consent and referral state.

Each verb_noun function checks its rule, changes the rows inside one transaction, writes
the history and audit rows, queues the notifications (outbox rows in the same
transaction) and raises RuleViolation with a sentence a user understands. The acting user
and program are arguments: the same function serves screens, the CLI and the API.
"""

import datetime as dt

from models import (
    AuditEvent,
    Membership,
    Notification,
    Outbox,
    transaction,
    utcnow,
)


class RuleViolation(Exception):
    """A business rule forbids the change; the message is shown to the user as is."""

    status_code = 409

    def __init__(self, message, status_code=None):
        super().__init__(message)
        self.message = message
        if status_code:
            self.status_code = status_code


class NotFound(RuleViolation):
    """The object does not exist or the acting program may not see it (same answer)."""

    status_code = 404


class Actor:
    """Who acts: the user, their acting program and where the request came from."""

    def __init__(self, user, program=None, ip=""):
        self.user = user
        self.program = program
        self.ip = ip or ""

    @property
    def program_id(self):
        return self.program.id if self.program is not None else None


def _clean_log_value(value):
    """Newlines and control characters are encoded so one event stays one line."""
    text = str(value or "")
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")[:2000]


def record_audit(actor, action, obj=None, subject=None, outcome="ok", detail="",
                 user=None, email=""):
    """Append one audit row (R-SAFE-1). Called inside the change's transaction."""
    user = user if user is not None else (actor.user if actor else None)
    subject_id = subject if isinstance(subject, int) or subject is None else subject.id
    AuditEvent.create(
        user=user.id if user is not None else None,
        user_email=_clean_log_value(email or (user.email if user is not None else "")),
        program=actor.program_id if actor else None,
        action=action,
        object_type=type(obj).__name__ if obj is not None else "",
        object_id=str(obj.id) if obj is not None and getattr(obj, "id", None) else "",
        subject=subject_id,
        ip=_clean_log_value(actor.ip if actor else ""),
        outcome=outcome,
        detail=_clean_log_value(detail),
    )


def audit_denial(actor, action, detail="", subject=None):
    """Record a refused attempt in its own short transaction."""
    with transaction():
        record_audit(actor, action, subject=subject, outcome="denied", detail=detail)


def queue_email(recipient, subject, body, kind=""):
    """An email row in the outbox; the worker delivers it (same transaction as the change)."""
    return Outbox.create(channel="email", recipient=recipient, subject=subject, body=body,
                         kind=kind)


def queue_text(phone, body, kind=""):
    return Outbox.create(channel="sms", recipient=phone, body=body, kind=kind)


def notify(user, message, kind, link="", program=None, email_subject=None, email_body=None):
    """A bell notification, and an email when a subject line is given."""
    Notification.create(user=user, program=program, kind=kind, message=message[:500],
                        link=link)
    if email_subject:
        queue_email(user.email, email_subject, email_body or message, kind=kind)


def gatekeepers_of(program):
    from models import User
    return (User.select().join(Membership, on=(Membership.user == User.id))
            .where((Membership.program == program) & (Membership.role == "gatekeeper")
                   & User.is_active))


def mark_notifications_read(user, ids=None):
    """Mark the user's notifications read (all, or the given ids)."""
    query = Notification.update(read_at=utcnow()).where(
        (Notification.user == user) & Notification.read_at.is_null())
    if ids:
        query = query.where(Notification.id.in_(ids))
    with transaction():
        return query.execute()


def days_between(start, end):
    return (end - start).total_seconds() / 86400 if start and end else None


# ---------------------------------------------------------------------------
# Accounts (R-AUTH) and agreements (R-MOU)
# ---------------------------------------------------------------------------

FAILED_PER_ACCOUNT = 5
FAILED_PER_ADDRESS = 20
THROTTLE_WINDOW = dt.timedelta(minutes=15)
SIGN_IN_REFUSED = "The email address or password is incorrect."
SIGN_IN_THROTTLED = "Too many failed sign-ins. Wait 15 minutes and try again."


def _throttled(email, ip):
    from models import SignInAttempt
    since = utcnow() - THROTTLE_WINDOW
    failed = SignInAttempt.select().where((SignInAttempt.at >= since) & ~SignInAttempt.success)
    return (failed.where(SignInAttempt.email == email).count() >= FAILED_PER_ACCOUNT
            or failed.where(SignInAttempt.ip == ip).count() >= FAILED_PER_ADDRESS)


def sign_in(email, password, ip="", user_agent=""):
    """Check the password (throttled per account and address, R-AUTH-5); open a session."""
    from models import SignInAttempt, User, UserSession
    from security import hash_password, needs_rehash, new_session_id, verify_password

    email = (email or "").strip().lower()[:254]
    throttled = _throttled(email, ip)
    user = User.get_or_none(User.email == email)
    # While throttled no password is checked at all (the answer's timing is padded by the view).
    ok = not throttled and verify_password(user.password_hash if user else None, password or "")
    ok = ok and user is not None and user.is_active
    with transaction():
        SignInAttempt.create(email=email, ip=ip, success=ok)
        record_audit(Actor(user if ok else None, ip=ip), "sign_in", outcome="ok" if ok else "denied",
                     email=email, detail="throttled" if throttled else "")
    if not ok:  # the refused attempt is committed: it counts for throttling
        raise RuleViolation(SIGN_IN_THROTTLED if throttled else SIGN_IN_REFUSED, 401)
    with transaction():
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        user.last_sign_in_at = utcnow()
        user.save()
        session = UserSession.create(id=new_session_id(), user=user, ip=ip,
                                     user_agent=(user_agent or "")[:300])
    return user, session


def end_session(session_id):
    from models import UserSession
    with transaction():
        UserSession.update(revoked_at=utcnow()).where(
            (UserSession.id == session_id) & UserSession.revoked_at.is_null()).execute()


def revoke_sessions(user):
    """End every session of the user on the server (R-AUTH-6)."""
    from models import UserSession
    return UserSession.update(revoked_at=utcnow()).where(
        (UserSession.user == user) & UserSession.revoked_at.is_null()).execute()


def _check_new_password(user, new_password):
    from security import password_problems
    problems = password_problems(new_password, email=user.email, name=user.name)
    if problems:
        raise RuleViolation(" ".join(problems), 422)


def change_password(actor, current_password, new_password, keep_session=None):
    """Change one's password (the current one is needed); other sessions end."""
    from models import UserSession
    from security import hash_password, verify_password

    user = actor.user
    if not verify_password(user.password_hash, current_password or ""):
        raise RuleViolation("The current password is incorrect.", 422)
    _check_new_password(user, new_password)
    with transaction():
        user.password_hash = hash_password(new_password)
        user.must_change_password = False
        user.password_changed_at = utcnow()
        user.link_version += 1
        user.save()
        query = UserSession.update(revoked_at=utcnow()).where(
            (UserSession.user == user) & UserSession.revoked_at.is_null())
        if keep_session:
            query = query.where(UserSession.id != keep_session)
        query.execute()
        record_audit(actor, "change_password", user)


def issue_link(user, purpose, secret_key, base_url, actor=None):
    """Email a single-use, expiring link (invitation or reset); older links stop working."""
    from security import make_link_token

    with transaction():
        user.link_version += 1
        user.save()
        token = make_link_token(secret_key, purpose, user.id, user.link_version)
        link = f"{base_url}/auth/{'invitation' if purpose == 'invite' else 'reset'}/{token}"
        if purpose == "invite":
            subject = "Your CONNECT account"
            body = (f"Hello {user.name},\n\nA CONNECT account has been created for you by your "
                    f"designated administrator. Set your password within 7 days here:\n\n{link}\n\n"
                    f"Your sign-in address is {user.email}.\n")
        else:
            subject = "Reset your CONNECT password"
            body = ("Someone asked to reset the password of this CONNECT account. If it was you, "
                    f"choose a new password within 1 hour here:\n\n{link}\n\n"
                    "If it was not you, ignore this email.\n")
        queue_email(user.email, subject, body, kind=purpose)
        record_audit(actor, f"issue_{purpose}_link", user, user=actor.user if actor else None)
    return link


def use_link(purpose, token, new_password, secret_key, ip=""):
    """Set a password from an invitation or reset link; the link is then spent."""
    from models import User
    from security import hash_password, read_link_token

    found = read_link_token(secret_key, purpose, token)
    user = User.get_or_none(User.id == found[0]) if found else None
    if user is None or not user.is_active or user.link_version != found[1]:
        raise RuleViolation("This link is invalid, used or expired. Ask for a new one.", 400)
    _check_new_password(user, new_password)
    with transaction():
        user.password_hash = hash_password(new_password)
        user.must_change_password = False
        user.password_changed_at = utcnow()
        user.link_version += 1
        user.save()
        revoke_sessions(user)
        record_audit(Actor(user, ip=ip), f"use_{purpose}_link", user)
    return user


def create_user(actor, email, name, is_admin=False, statewide=False, region_ids=(),
                password=None, memberships=(), secret_key=None, base_url=""):
    """A new account (R-AUTH-1): with a password, or an invitation email."""
    from models import AdminRegion, Membership, User
    from security import hash_password

    email = (email or "").strip().lower()
    if not email or "@" not in email:
        raise RuleViolation("Enter a valid email address.", 422)
    if not (name or "").strip():
        raise RuleViolation("Enter the person's name.", 422)
    if User.select().where(User.email == email).exists():
        raise RuleViolation(f"An account with {email} already exists.", 409)
    if password:
        probe = User(email=email, name=name)
        _check_new_password(probe, password)
    with transaction():
        user = User.create(email=email, name=name.strip(), is_admin=is_admin,
                           admin_statewide=statewide,
                           password_hash=hash_password(password) if password else None,
                           must_change_password=True)
        for region_id in region_ids:
            AdminRegion.create(user=user, region=region_id)
        for program, role in memberships:
            Membership.create(user=user, program=program, role=role)
        record_audit(actor, "create_user", user)
        if not password and secret_key:
            issue_link(user, "invite", secret_key, base_url, actor=actor)
    return user


def set_user_active(actor, user, active):
    """Deactivate (sessions end at once) or reactivate an account."""
    with transaction():
        user.is_active = active
        user.save()
        if not active:
            revoke_sessions(user)
        record_audit(actor, "activate_user" if active else "deactivate_user", user)


def add_membership(actor, user, program, role):
    from models import MEMBER_ROLES, Membership
    if role not in MEMBER_ROLES:
        raise RuleViolation("Choose gatekeeper or provider.", 422)
    with transaction():
        row, created = Membership.get_or_create(user=user, program=program, role=role)
        record_audit(actor, "add_membership", row, detail=f"{role} of program {program.id}")
    return row


def remove_membership(actor, membership):
    """Removing a role ends the user's sessions (R-AUTH-6)."""
    with transaction():
        user = membership.user
        record_audit(actor, "remove_membership", membership,
                     detail=f"{membership.role} of program {membership.program_id}")
        membership.delete_instance()
        revoke_sessions(user)


def sign_user_mou(actor, signature_name):
    """The yearly User MOU (R-MOU-1): the typed name must be the user's name."""
    from models import UserMou, last_valid_day, local_today

    if " ".join((signature_name or "").lower().split()) != " ".join(actor.user.name.lower().split()):
        raise RuleViolation("Type your full name exactly as shown to sign the User MOU.", 422)
    today = local_today()
    with transaction():
        mou = UserMou.create(user=actor.user, signature_name=signature_name.strip(),
                             signed_on=today, expires_on=last_valid_day(today), ip=actor.ip)
        record_audit(actor, "sign_user_mou", mou)
    return mou


def sign_agency_mou(actor, program, signature_name):
    """A gatekeeper signs the program's Agency MOU for a year (R-MOU-2)."""
    from models import ROLE_GATEKEEPER, AgencyMou, Program, last_valid_day, local_today

    if ROLE_GATEKEEPER not in actor.user.roles_in(program):
        raise RuleViolation("Only a gatekeeper of this program can sign its Agency MOU.", 403)
    if " ".join((signature_name or "").lower().split()) != " ".join(actor.user.name.lower().split()):
        raise RuleViolation("Type your full name exactly as shown to sign the Agency MOU.", 422)
    today = local_today()
    with transaction():
        mou = AgencyMou.create(program=program, signed_by=actor.user,
                               signature_name=signature_name.strip(), signed_on=today,
                               expires_on=last_valid_day(today))
        Program.update(mou_valid_until=mou.expires_on, updated_at=utcnow()).where(
            Program.id == program.id).execute()
        program.mou_valid_until = mou.expires_on
        record_audit(actor, "sign_agency_mou", mou)
    return mou
