"""Every change of account, agreement, consent and referral state.

Each verb_noun function checks its rule, changes the rows inside one transaction, writes
the history and audit rows, queues the notifications (outbox rows in the same
transaction) and raises RuleViolation with a sentence a user understands. The acting user
and program are arguments: the same function serves screens, the CLI and the API.
"""

import datetime as dt
import json

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
    ok = verify_password(user.password_hash if user else None, password or "")
    ok = ok and not throttled and user is not None and user.is_active
    with transaction():
        SignInAttempt.create(email=email, ip=ip, success=ok)
        record_audit(Actor(user if ok else None, ip=ip), "sign_in", outcome="ok" if ok else "denied",
                     email=email, detail="throttled" if throttled else "")
        if not ok:
            raise RuleViolation(SIGN_IN_THROTTLED if throttled else SIGN_IN_REFUSED, 401)
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


# ---------------------------------------------------------------------------
# Referrals (R-SEND, R-RECV, R-STAT, R-TRACK; R-ROI-1 and R-ROI-9 at sending/opening)
# ---------------------------------------------------------------------------
# Every state move is one of models.REFERRAL_MOVES and is a conditional UPDATE on
# (id, state, version): of two concurrent requests exactly one wins (R-RECV-3), and a
# resubmitted form finds the referral already moved and changes nothing.

REFERRAL_BUSINESS_DAYS = 5  # R-TRACK-3


def _base_url():
    """Links in emails: the app's BASE_URL when inside the app, else the environment."""
    import os

    try:
        from flask import current_app, has_app_context
        if has_app_context():
            return current_app.config.get("BASE_URL", "").rstrip("/")
    except ImportError:  # pragma: no cover - the worker always has Flask installed
        pass
    return os.environ.get("BASE_URL", "http://127.0.0.1:5000").rstrip("/")


def referral_link(referral):
    return f"/referrals/{referral.id}"


def _referral_ref(referral):
    """How emails and the bell name a referral: never the client's name (README)."""
    return f"Referral #{referral.id}"


def _tell(user, referral, message, kind, email_subject=None, extra=""):
    """Bell (and email when a subject line is given) about a referral, no client names."""
    from models import INFO_SUBSTANCE_USE, REDISCLOSURE_NOTICE
    link = referral_link(referral)
    body = None
    if email_subject:
        body = f"{message}\n\nOpen it in CONNECT (sign-in required):\n{_base_url()}{link}\n"
        if extra:
            body += f"\n{extra}\n"
        if INFO_SUBSTANCE_USE in _answer_info_types(referral):
            body += f"\n{REDISCLOSURE_NOTICE}\n"
    notify(user, message, kind, link=link, program=referral.to_program_id,
           email_subject=email_subject, email_body=body)


def _answer_info_types(referral):
    from models import IntakeQuestion
    ids = [int(k) for k in referral.answer_dict() if str(k).isdigit()]
    if not ids:
        return set()
    return {q.info_type for q in IntakeQuestion.select(IntakeQuestion.info_type)
            .where(IntakeQuestion.id.in_(ids))}


def _program_label(program_id):
    from models import Agency, Program
    row = Program.select(Program, Agency).join(Agency).where(Program.id == program_id).get()
    return row.label


def _move_referral(actor, referral, to_state, version, kind, detail="", event_status="",
                   conflict=None, **changes):
    """The conditional UPDATE of every state move, with its history and audit rows.

    Must run inside a transaction. Raises RuleViolation when another request moved the
    referral first (state or version changed)."""
    from peewee import Node

    from models import REFERRAL_MOVES, Referral, ReferralEvent

    from_state = referral.state
    conflict = conflict or ("Someone else changed this referral a moment ago; nothing was "
                            "changed. Reload the page to see its current state.")
    if to_state not in REFERRAL_MOVES[from_state]:
        raise RuleViolation(conflict)
    now = utcnow()
    changed = (Referral.update(state=to_state, version=Referral.version + 1, updated_at=now,
                               **changes)
               .where((Referral.id == referral.id) & (Referral.state == from_state)
                      & (Referral.version == int(version)))
               .execute())
    if changed != 1:
        raise RuleViolation(conflict)
    ReferralEvent.create(referral=referral, user=actor.user, program=actor.program_id, kind=kind,
                         from_state=from_state, to_state=to_state, status=event_status or "",
                         detail=detail, at=now)
    record_audit(actor, f"referral_{kind}", referral,
                 subject=referral.subject_id, detail=detail)
    referral.state = to_state
    referral.version = int(version) + 1
    for name, value in changes.items():
        if not isinstance(value, Node):
            setattr(referral, name, value)
    return referral


def _require(actor, permission, program, message):
    if not actor.user.can(permission, program):
        raise RuleViolation(message, 403)


def _is_sender(actor, referral):
    return actor.program_id == referral.from_program_id


def _is_receiver(actor, referral):
    return actor.program_id == referral.to_program_id


def _clean_version(version):
    try:
        return int(version)
    except (TypeError, ValueError):
        raise RuleViolation("The form is out of date. Reload the page and try again.", 400) from None


def open_referral_to(subject, program, exclude=None):
    """The subject's pending, Active or assigned referral to `program`, if any (R-SEND-5)."""
    from models import OPEN_REFERRAL_STATES, Referral
    query = Referral.select().where((Referral.subject == subject) & (Referral.to_program == program)
                                    & Referral.state.in_(OPEN_REFERRAL_STATES))
    if exclude is not None:
        query = query.where(Referral.id != exclude)
    return query.first()


def one_open_message(existing, program_label):
    from models import REFERRAL_PENDING
    what = "a pending (saved, unsent)" if existing.state == REFERRAL_PENDING else "an active"
    return (f"This client already has {what} referral to {program_label}. A new referral to "
            f"that program cannot be started until it is closed.")


def roi_for_referral(subject, from_program, to_program, day=None):
    """A signed, unexpired, unrevoked ROI of the subject naming both programs (R-ROI-1)."""
    from models import Roi, RoiProgram
    on_sender = RoiProgram.select(RoiProgram.roi).where(RoiProgram.program == from_program)
    return Roi.valid_for(subject, to_program, day).where(Roi.id.in_(on_sender)).first()


def _lock_subject(subject_id):
    """Serialise referral starts of one subject (PostgreSQL row lock; SQLite is serial)."""
    from models import Subject, is_sqlite
    if not is_sqlite():
        list(Subject.select(Subject.id).where(Subject.id == subject_id).for_update())


def save_referral_draft(actor, subject, to_program, personal, answers, referral=None,
                        version=None):
    """Save Progress (R-SEND-3): create or update the Pending draft; R-SEND-2 and R-SEND-5."""
    from models import REFERRAL_PENDING, Referral, ReferralEvent, Subject
    from referral_fields import clean_answers, clean_personal

    _require(actor, "save_referral_draft", actor.program, "You cannot send referrals for this program.")
    if not Subject.visible_to(actor.user, actor.program).where(Subject.id == subject.id).exists():
        raise NotFound("Subject not found.")
    roi = roi_for_referral(subject, actor.program, to_program)
    if roi is None:
        raise RuleViolation("There is no signed, valid ROI naming this program for this client. "
                            "Complete an ROI first.")
    personal = clean_personal(personal, roi)
    answers = clean_answers(answers, roi, to_program)
    with transaction():
        _lock_subject(subject.id)
        if referral is None:
            existing = open_referral_to(subject, to_program)
            if existing is not None:
                raise RuleViolation(one_open_message(existing, _program_label(to_program.id)))
            referral = Referral.create(
                subject=subject, roi=roi, from_program=actor.program,
                from_agency=actor.program.agency_id, to_program=to_program,
                to_agency=to_program.agency_id, created_by=actor.user,
                personal_info=json.dumps(personal), answers=json.dumps(answers))
            ReferralEvent.create(referral=referral, user=actor.user, program=actor.program_id,
                                 kind="saved", to_state=REFERRAL_PENDING)
            record_audit(actor, "save_referral_draft", referral, subject=subject)
            return referral
        if not _is_sender(actor, referral) or referral.state != REFERRAL_PENDING:
            raise RuleViolation("Only a pending referral of your program can be edited.")
        changed = (Referral.update(personal_info=json.dumps(personal), answers=json.dumps(answers),
                                   roi=roi, updated_at=utcnow(), version=Referral.version + 1)
                   .where((Referral.id == referral.id) & (Referral.state == REFERRAL_PENDING)
                          & (Referral.version == _clean_version(version)))
                   .execute())
        if changed != 1:
            raise RuleViolation("This referral was changed or sent a moment ago; nothing was "
                                "changed. Reload the page to see its current state.")
        record_audit(actor, "save_referral_draft", referral, subject=subject)
    return Referral.get_by_id(referral.id)


def discard_referral(actor, referral, version):
    """A Pending draft can be discarded by its program (R-SEND-7)."""
    from models import REFERRAL_DISCARDED
    if not _is_sender(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "save_referral_draft", actor.program, "You cannot discard this referral.")
    with transaction():
        _move_referral(actor, referral, REFERRAL_DISCARDED, _clean_version(version), "discarded")
    return referral


def send_referral(actor, referral, version, insurance_confirmed):
    """Send (R-SEND-4): insurance confirmed, then ROI, MOU and one-open rule checked again
    inside the transaction (R-ROI-1, R-MOU-3, R-SEND-5); gatekeepers told (R-RECV-1)."""
    from models import Program, SubjectLink
    from referral_fields import missing_required

    if not _is_sender(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "send_referral", actor.program, "You cannot send referrals for this program.")
    if not insurance_confirmed:
        raise RuleViolation("Confirm that insurance will not be a barrier for the client at this "
                            "program before sending.", 422)
    version = _clean_version(version)
    with transaction():
        _move_referral(actor, referral, "sent", version, "sent", sent_at=utcnow(),
                       insurance_confirmed=True, conflict="This referral has already been sent "
                       "(it is sent only once). Reload the page to see it.")
        roi = roi_for_referral(referral.subject_id, referral.from_program_id, referral.to_program_id)
        if roi is None:
            raise RuleViolation("The client's ROI for this program is no longer signed and valid "
                                "(revoked or expired). The referral was not sent.")
        to_program = Program.get_by_id(referral.to_program_id)
        if not to_program.has_valid_mou():
            raise RuleViolation("The receiving program has no valid Agency MOU and cannot receive "
                                "referrals now. The referral was not sent.")
        if open_referral_to(referral.subject_id, to_program, exclude=referral.id) is not None:
            raise RuleViolation(one_open_message(open_referral_to(
                referral.subject_id, to_program, exclude=referral.id), to_program.label))
        missing = missing_required(referral, roi)
        if missing:
            raise RuleViolation("Complete the required fields before sending: "
                                + ", ".join(missing) + ".", 422)
        if roi.id != referral.roi_id:
            type(referral).update(roi=roi).where(type(referral).id == referral.id).execute()
        SubjectLink.get_or_create(subject=referral.subject_id, program=to_program,
                                  defaults={"reason": "referral"})
        sender = _program_label(referral.from_program_id)
        for gatekeeper in gatekeepers_of(to_program):
            _tell(gatekeeper, referral, f"{_referral_ref(referral)} arrived for {to_program.label} "
                  f"from {sender}. Open it to assign a provider.", "referral_received",
                  email_subject=f"New referral for {to_program.name} in CONNECT")
    return referral


def withdraw_referral(actor, referral, version, reason):
    """The sender withdraws an unassigned referral with a reason; gatekeepers told (R-SEND-7)."""
    from models import REFERRAL_WITHDRAWN
    if not _is_sender(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "withdraw_referral", actor.program, "You cannot withdraw referrals.")
    reason = (reason or "").strip()
    if not reason:
        raise RuleViolation("Give a reason for withdrawing the referral.", 422)
    if referral.state != "sent":
        raise RuleViolation("Only a referral that is not yet assigned can be withdrawn.")
    with transaction():
        _move_referral(actor, referral, REFERRAL_WITHDRAWN, _clean_version(version), "withdrawn",
                       detail=reason, reason=reason, closed_at=utcnow())
        for gatekeeper in gatekeepers_of(referral.to_program_id):
            _tell(gatekeeper, referral, f"{_referral_ref(referral)} was withdrawn by the sender.",
                  "referral_withdrawn", email_subject="A referral was withdrawn in CONNECT",
                  extra=f"Reason: {reason}")
    return referral


def _program_staff(program_id, roles=("provider", "gatekeeper")):
    from models import Membership, User
    return (User.select().join(Membership, on=(Membership.user == User.id))
            .where((Membership.program == program_id) & Membership.role.in_(roles) & User.is_active)
            .distinct())


def assignable_providers(referral):
    """Providers (or gatekeepers assigning themselves) of the receiving program (R-RECV-2)."""
    return list(_program_staff(referral.to_program_id).order_by(_user_name()))


def _user_name():
    from models import User
    return User.name


def reassign_candidates(referral):
    """Providers of the agency's programs named on a valid ROI of the client (R-RECV-5)."""
    from models import Membership, Program, Roi, RoiProgram, User
    rois = Roi.valid_for(referral.subject_id, referral.to_program_id).select(Roi.id)
    programs = (Program.select(Program.id).join(RoiProgram, on=(RoiProgram.program == Program.id))
                .where((Program.agency == referral.to_agency_id) & RoiProgram.roi.in_(rois)))
    rows = (Membership.select(Membership, User, Program).join(User).switch(Membership).join(Program)
            .where(Membership.program.in_(programs) & Membership.role.in_(("provider", "gatekeeper"))
                   & User.is_active)
            .order_by(User.name, Program.name))
    seen, result = set(), []
    for row in rows:
        key = (row.user.id, row.program.id)
        if key not in seen and row.user.id != referral.assigned_to_id:
            seen.add(key)
            result.append(row)
    return result


def assign_referral(actor, referral, provider_id, version):
    """The gatekeeper gives the referral to one provider (R-RECV-2); exactly one winner
    (R-RECV-3); provider and sender are emailed (R-RECV-4)."""
    from models import Referral
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "assign_referral", actor.program, "Only a gatekeeper of this program can assign.")
    provider = _program_staff(referral.to_program_id).where(_user_id() == _int(provider_id)).first()
    if provider is None:
        raise RuleViolation("Choose a provider of this program.", 422)
    if referral.state != "sent":
        raise RuleViolation(_already_assigned_message(referral))
    now = utcnow()
    try:
        with transaction():
            _move_referral(actor, referral, "assigned", _clean_version(version), "assigned",
                           detail=f"to {provider.name}", assigned_to=provider.id, assigned_at=now,
                           acknowledged_at=fn_coalesce(Referral.acknowledged_at, now))
            _notify_assigned(referral, provider)
    except RuleViolation as exc:
        if exc.status_code == 409:
            raise RuleViolation(_already_assigned_message(Referral.get_by_id(referral.id))) from None
        raise
    return referral


def _already_assigned_message(referral):
    from models import User
    if referral.assigned_to_id:
        name = User.get_by_id(referral.assigned_to_id).name
        return (f"This referral was already assigned to {name} by someone else; your assignment "
                "was not saved.")
    return (f"This referral is {referral.state_label.lower()} and can no longer be assigned; "
            "your assignment was not saved.")


def _notify_assigned(referral, provider):
    from models import User
    _tell(provider, referral, f"{_referral_ref(referral)} was assigned to you.",
          "referral_assigned", email_subject="A referral was assigned to you in CONNECT")
    if referral.created_by_id:
        sender = User.get_by_id(referral.created_by_id)
        _tell(sender, referral, f"The client of {_referral_ref(referral)} has been assigned to a "
              f"provider at {_program_label(referral.to_program_id)}.", "referral_assigned_sender",
              email_subject="Your referral was assigned in CONNECT")


def _user_id():
    from models import User
    return User.id


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def fn_coalesce(column, value):
    from models import fn
    return fn.COALESCE(column, value)


def reassign_referral(actor, referral, membership_id, version):
    """Move an assigned referral to another provider of the agency (R-RECV-5)."""
    from models import REFERRAL_ASSIGNED, ROLE_GATEKEEPER
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "reassign_referral", actor.program, "You cannot reassign referrals.")
    if referral.state != REFERRAL_ASSIGNED:
        raise RuleViolation("Only an assigned referral can be reassigned.")
    mine = referral.assigned_to_id == actor.user.id
    if not mine and ROLE_GATEKEEPER not in actor.user.roles_in(actor.program):
        raise RuleViolation("Only the assigned provider or a gatekeeper can reassign.", 403)
    choice = next((m for m in reassign_candidates(referral) if m.id == _int(membership_id)), None)
    if choice is None:
        raise RuleViolation("Choose another provider of the agency.", 422)
    changes = {"assigned_to": choice.user.id, "assigned_at": utcnow()}
    if choice.program.id != referral.to_program_id:
        changes["to_program"] = choice.program.id
    with transaction():
        _move_referral(actor, referral, REFERRAL_ASSIGNED, _clean_version(version), "reassigned",
                       detail=f"to {choice.user.name} ({choice.program.name})", **changes)
        _notify_assigned(referral, choice.user)
    return referral


def decline_referral(actor, referral, version, reason):
    """A gatekeeper declines (rejects) with a reason; the sender is told (R-RECV-6)."""
    from models import REFERRAL_DECLINED, User
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "decline_referral", actor.program, "Only a gatekeeper of this program can decline.")
    reason = (reason or "").strip()
    if not reason:
        raise RuleViolation("Give a reason for declining the referral.", 422)
    if referral.state != "sent":
        raise RuleViolation("Only a referral that is not yet assigned can be declined.")
    with transaction():
        _move_referral(actor, referral, REFERRAL_DECLINED, _clean_version(version), "declined",
                       detail=reason, reason=reason, closed_at=utcnow())
        if referral.created_by_id:
            _tell(User.get_by_id(referral.created_by_id), referral,
                  f"{_referral_ref(referral)} was declined by {_program_label(referral.to_program_id)}.",
                  "referral_declined", email_subject="Your referral was declined in CONNECT",
                  extra=f"Reason: {reason}")
    return referral


def _can_work(actor, referral):
    from models import ROLE_GATEKEEPER
    if not _is_receiver(actor, referral):
        return False
    return (referral.assigned_to_id == actor.user.id
            or ROLE_GATEKEEPER in actor.user.roles_in(actor.program))


def set_referral_status(actor, referral, status, version):
    """The provider sets the outcome status, kept with who and when (R-STAT-1); closing
    statuses close the referral, the open ones keep it open (R-STAT-4); sender told."""
    from models import OPEN_STATUSES, REFERRAL_ASSIGNED, REFERRAL_CLOSED, STATUSES, Referral, User
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "set_referral_status", actor.program, "You cannot set referral statuses.")
    if status not in STATUSES:
        raise RuleViolation("Choose one of the listed statuses.", 422)
    if not _can_work(actor, referral):
        raise RuleViolation("Only the assigned provider or a gatekeeper can set the status.", 403)
    if referral.state != REFERRAL_ASSIGNED:
        raise RuleViolation("The status can be set only on an assigned, open referral. "
                            "A gatekeeper can reopen a closed referral.")
    now = utcnow()
    closing = status not in OPEN_STATUSES
    changes = {"status": status}
    if closing:
        changes.update(closed_at=now, outcome_at=fn_coalesce(Referral.outcome_at, now))
    with transaction():
        _move_referral(actor, referral, REFERRAL_CLOSED if closing else REFERRAL_ASSIGNED,
                       _clean_version(version), "status", event_status=status, detail=status,
                       **changes)
        if referral.created_by_id:
            _tell(User.get_by_id(referral.created_by_id), referral,
                  f"{_referral_ref(referral)}: the status is now \u201c{status}\u201d.",
                  "referral_status", email_subject="A referral you sent was updated in CONNECT")
    return referral


def reopen_referral(actor, referral, version, reason):
    """A gatekeeper reopens a closed referral with a reason; history keeps both (R-STAT-4)."""
    from models import REFERRAL_ASSIGNED, REFERRAL_CLOSED
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "reopen_referral", actor.program, "Only a gatekeeper of this program can reopen.")
    reason = (reason or "").strip()
    if not reason:
        raise RuleViolation("Give a reason for reopening the referral.", 422)
    if referral.state != REFERRAL_CLOSED:
        raise RuleViolation("Only a closed referral can be reopened.")
    with transaction():
        _move_referral(actor, referral, REFERRAL_ASSIGNED, _clean_version(version), "reopened",
                       detail=reason, closed_at=None)
    return referral


def _clean_day(value, what):
    from models import local_today
    if isinstance(value, dt.date):
        day = value
    else:
        try:
            day = dt.date.fromisoformat(str(value or ""))
        except ValueError:
            raise RuleViolation(f"Enter the {what} as a date (YYYY-MM-DD).", 422) from None
    if day > local_today() + dt.timedelta(days=366):
        raise RuleViolation(f"The {what} is too far in the future.", 422)
    return day


def add_referral_note(actor, referral, kind, note_date, text):
    """A dated, signed note of the call log (R-STAT-2); the sender sees it (R-SEND-6)."""
    from models import NOTE_KINDS, ReferralNote, User
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "add_referral_note", actor.program, "You cannot add notes.")
    if not _can_work(actor, referral) or referral.state not in ("assigned", "closed"):
        raise RuleViolation("Notes are kept by the assigned provider or a gatekeeper once the "
                            "referral is assigned.", 403)
    if kind not in NOTE_KINDS:
        raise RuleViolation("Choose the kind of note.", 422)
    text = (text or "").strip()
    if not text:
        raise RuleViolation("Write the note.", 422)
    day = _clean_day(note_date, "note date")
    with transaction():
        note = ReferralNote.create(referral=referral, author=actor.user, program=actor.program_id,
                                   kind=kind, note_date=day, text=text[:5000])
        record_audit(actor, "add_referral_note", note, subject=referral.subject_id)
        if referral.created_by_id:
            _tell(User.get_by_id(referral.created_by_id), referral,
                  f"{_referral_ref(referral)}: a new note ({NOTE_KINDS[kind]}).", "referral_note")
    return note


def add_progress_entry(actor, referral, entry_date, text):
    """An optional progress entry for multi-visit services (R-STAT-3)."""
    from models import ProgressEntry
    if not _is_receiver(actor, referral):
        raise NotFound("Referral not found.")
    _require(actor, "add_progress_entry", actor.program, "You cannot add progress entries.")
    if not _can_work(actor, referral) or referral.state not in ("assigned", "closed"):
        raise RuleViolation("Progress is recorded by the assigned provider or a gatekeeper.", 403)
    text = (text or "").strip()
    if not text:
        raise RuleViolation("Describe the progress.", 422)
    day = _clean_day(entry_date, "progress date")
    with transaction():
        entry = ProgressEntry.create(referral=referral, author=actor.user, entry_date=day,
                                     text=text[:5000])
        record_audit(actor, "add_progress_entry", entry, subject=referral.subject_id)
    return entry


def _us_holidays(years):
    import holidays
    return holidays.country_holidays("US", years=years)


def add_business_days(day, count):
    """`day` plus `count` business days (weekends and US federal holidays skipped)."""
    off = _us_holidays(range(day.year, day.year + 2))
    while count > 0:
        day += dt.timedelta(days=1)
        if day.weekday() < 5 and day not in off:
            count -= 1
    return day


def delay_cutoff(today):
    """Referrals sent on or before the returned local date are late on `today`."""
    day = today - dt.timedelta(days=1)
    while add_business_days(day, REFERRAL_BUSINESS_DAYS) >= today:
        day -= dt.timedelta(days=1)
    return day


def flag_delayed_referrals(today=None):
    """R-TRACK-3: referrals not assigned within 5 business days are flagged once; the
    sender and the gatekeepers are told. Returns how many were flagged."""
    from models import Referral, User, local_today, local_zone
    today = today or local_today()
    cutoff = delay_cutoff(today)
    end_local = dt.datetime.combine(cutoff + dt.timedelta(days=1), dt.time(0), tzinfo=local_zone())
    end_utc = end_local.astimezone(dt.timezone.utc).replace(tzinfo=None)
    late = (Referral.select(Referral.id).where((Referral.state == "sent") & Referral.delayed_at.is_null()
                                               & (Referral.sent_at < end_utc))
            .order_by(Referral.id).limit(5000))
    flagged = 0
    for row in list(late):
        with transaction():
            if Referral.update(delayed_at=utcnow()).where(
                    (Referral.id == row.id) & Referral.delayed_at.is_null()
                    & (Referral.state == "sent")).execute() != 1:
                continue
            referral = Referral.get_by_id(row.id)
            record_audit(None, "flag_delayed_referral", referral, subject=referral.subject_id)
            message = (f"{_referral_ref(referral)} has not been assigned within "
                       f"{REFERRAL_BUSINESS_DAYS} business days.")
            people = list(gatekeepers_of(referral.to_program_id))
            if referral.created_by_id:
                people.append(User.get_by_id(referral.created_by_id))
            for person in {p.id: p for p in people}.values():
                _tell(person, referral, message, "referral_delayed",
                      email_subject="A referral is delayed in CONNECT")
            flagged += 1
    return flagged
