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
    text = text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
    # Other control characters (NUL is refused by PostgreSQL text) are written as \xNN.
    return "".join(ch if ch >= " " or ch == "\t" else f"\\x{ord(ch):02x}" for ch in text)[:2000]


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
    if not ok:  # the failure is recorded (and committed) before the refusal
        with transaction():
            SignInAttempt.create(email=email, ip=ip, success=False)
            record_audit(Actor(None, ip=ip), "sign_in", outcome="denied", email=email,
                         detail="throttled" if throttled else "")
        raise RuleViolation(SIGN_IN_THROTTLED if throttled else SIGN_IN_REFUSED, 401)
    with transaction():
        SignInAttempt.create(email=email, ip=ip, success=True)
        record_audit(Actor(user, ip=ip), "sign_in", email=email)
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


def change_password(actor, current_password, new_password, user_agent=""):
    """Change one's password (the current one is needed). Every session ends, a copied
    cookie included (R-AUTH-6); the caller continues in the new session returned."""
    from models import UserSession
    from security import hash_password, new_session_id, verify_password

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
        revoke_sessions(user)
        session = UserSession.create(id=new_session_id(), user=user, ip=actor.ip,
                                     user_agent=(user_agent or "")[:300])
        record_audit(actor, "change_password", user)
    return session


def issue_link(user, purpose, secret_key, base_url, actor=None):
    """Email a single-use, expiring link (invitation or reset); older links stop working."""
    from security import make_link_token

    if actor is not None and actor.user is not None and actor.user.id != user.id:
        check_admin_scope(actor, user=user)
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
    check_admin_scope(actor, user=user)
    if not active and actor is not None and actor.user is not None and actor.user.id == user.id:
        raise RuleViolation("You cannot deactivate your own account.", 409)
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
    check_admin_scope(actor, program=program)
    with transaction():
        row, created = Membership.get_or_create(user=user, program=program, role=role)
        record_audit(actor, "add_membership", row, detail=f"{role} of program {program.id}")
    return row


def remove_membership(actor, membership):
    """Removing a role ends the user's sessions (R-AUTH-6)."""
    check_admin_scope(actor, program=membership.program)
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
# Administrators' screens (accounts area): scope, network records, users, reminders
# ---------------------------------------------------------------------------

def check_admin_scope(actor, program=None, user=None):
    """A regional coordinator manages only the programs and people of their regions."""
    from models import Program, User, programs_managed_by, users_managed_by

    if actor is None or actor.user is None:
        return  # the CLI acts with the machine's authority
    if not actor.user.is_admin:
        raise RuleViolation("Only a designated administrator can do this.", 403)
    if program is not None and not programs_managed_by(actor.user).where(
            Program.id == program.id).exists():
        raise NotFound("That program does not exist.")
    if user is not None and not users_managed_by(actor.user).where(User.id == user.id).exists():
        raise NotFound("That account does not exist.")


def save_record(actor, obj, populate, after_save=None):
    """Create or change a network record (region, county, agency, program, intake section…)
    from an administrator's form: rows, links and audit row in one transaction."""
    from peewee import IntegrityError

    created = obj.id is None
    try:
        with transaction():
            populate(obj)
            obj.save(force_insert=created) if created else obj.save()
            if after_save is not None:
                after_save(obj)
            record_audit(actor, f"{'create' if created else 'update'}_{obj._meta.table_name}", obj)
    except IntegrityError as exc:
        if created:
            obj.id = None
        raise RuleViolation("This would duplicate an existing record or break a link to "
                            "another record; nothing was saved.", 409) from exc
    return obj


def set_program_links(program, counties=None, services=None, insurance_types=None):
    """Replace a program's counties served, services and insurance accepted (R-NET-1)."""
    from models import ProgramCounty, ProgramInsurance, ProgramService

    for model, field, rows in ((ProgramCounty, "county", counties),
                               (ProgramService, "service", services),
                               (ProgramInsurance, "insurance_type", insurance_types)):
        if rows is None:
            continue
        wanted = {row.id for row in rows}
        have = {getattr(link, f"{field}_id") for link in model.select().where(model.program == program)}
        if have - wanted:
            model.delete().where((model.program == program)
                                 & getattr(model, field).in_(list(have - wanted))).execute()
        for key in wanted - have:
            model.create(program=program, **{field: key})


def update_user(actor, user, name, phone="", is_admin=None, statewide=None, region_ids=None):
    """Change an account's name, phone and (statewide administrators only) admin scope."""
    from models import AdminRegion

    check_admin_scope(actor, user=user)
    if not (name or "").strip():
        raise RuleViolation("Enter the person's name.", 422)
    touches_scope = is_admin is not None or statewide is not None or region_ids is not None
    if touches_scope and actor is not None and not actor.user.admin_statewide:
        raise RuleViolation("Only a statewide administrator can change who is an administrator.", 403)
    with transaction():
        user.name = name.strip()
        user.phone = (phone or "").strip()
        if is_admin is not None:
            user.is_admin = bool(is_admin)
        if statewide is not None:
            user.admin_statewide = bool(statewide) and user.is_admin
        user.save()
        if region_ids is not None:
            AdminRegion.delete().where(AdminRegion.user == user).execute()
            for region_id in region_ids if user.is_admin else ():
                AdminRegion.create(user=user, region=region_id)
        record_audit(actor, "update_user", user)
    return user


def invite_user(actor, email, name, phone="", program=None, role=None, is_admin=False,
                statewide=False, region_ids=(), secret_key=None, base_url=""):
    """An administrator creates an account; the person gets an invitation email (R-AUTH-1)."""
    if actor is not None and actor.user is not None and not actor.user.admin_statewide:
        if is_admin or statewide or region_ids:
            raise RuleViolation("Only a statewide administrator can create administrators.", 403)
        if program is None:
            raise RuleViolation("Choose the program the person works for.", 422)
    if program is not None:
        check_admin_scope(actor, program=program)
        if role not in ("gatekeeper", "provider"):
            raise RuleViolation("Choose gatekeeper or provider.", 422)
    user = create_user(actor, email, name, is_admin=is_admin, statewide=statewide and is_admin,
                       region_ids=region_ids if is_admin else (),
                       memberships=[(program, role)] if program is not None else (),
                       secret_key=secret_key, base_url=base_url)
    if phone:
        with transaction():
            user.phone = phone.strip()[:30]
            user.save()
    return user


def _reminder_stage(days_left):
    """Which reminder is due: 30 and 7 days before the last valid day, and on expiry."""
    if days_left < 0:
        return "expired"
    if days_left <= 7:
        return "7"
    if days_left <= 30:
        return "30"
    return None


def _send_reminder_once(key, recipients, message, link, subject, body, program=None, base=""):
    """One reminder to each recipient (bell and email), once per key (SentReminder)."""
    from peewee import IntegrityError

    from models import SentReminder

    try:
        with transaction():
            if SentReminder.select().where(SentReminder.key == key).exists():
                return False
            SentReminder.create(key=key)
            for user in recipients:
                notify(user, message, "mou_reminder", link=link, program=program,
                       email_subject=subject,
                       email_body=f"Hello {user.name},\n\n{body}\n\n{base}{link}\n")
            record_audit(None, "send_mou_reminder", detail=key)
    except IntegrityError:  # another worker sent it at the same moment
        return False
    return True


def mou_reminder_recipients(program):
    """The program's gatekeepers, the administrators of its region and statewide ones."""
    from models import AdminRegion, User

    regional = AdminRegion.select(AdminRegion.user).where(AdminRegion.region == program.agency.region_id)
    admins = User.select().where(User.is_active & User.is_admin
                                 & (User.admin_statewide | User.id.in_(regional)))
    people = {u.id: u for u in gatekeepers_of(program)}
    people.update({u.id: u for u in admins})
    return list(people.values())


def send_mou_reminders(day=None, base_url=None):
    """R-MOU-4: Agency and User MOU reminders 30 and 7 days ahead and on expiry, once each.
    Expiries older than 30 days are not announced (a new deployment stays quiet)."""
    import os

    from models import Program, User, UserMou, fn, local_today

    day = day or local_today()
    base = (base_url or os.environ.get("BASE_URL", "http://127.0.0.1:5000")).rstrip("/")
    window = (day - dt.timedelta(days=30), day + dt.timedelta(days=30))
    sent = 0
    programs = Program.select().where(Program.active & Program.mou_valid_until.between(*window))
    for program in programs:
        stage = _reminder_stage((program.mou_valid_until - day).days)
        if stage is None:
            continue
        until = program.mou_valid_until.isoformat()
        if stage == "expired":
            text = (f"The Agency MOU of {program.label} expired after {until}. The program is "
                    "hidden from directory searches and cannot receive referrals until a "
                    "gatekeeper signs it again.")
        else:
            text = f"The Agency MOU of {program.label} is valid through {until}. A gatekeeper should sign it again before then."
        sent += _send_reminder_once(
            f"agency_mou:{program.id}:{until}:{stage}", mou_reminder_recipients(program), text,
            "/agency-mou/", f"CONNECT: Agency MOU of {program.name} "
            + ("expired" if stage == "expired" else "expires soon"), text, program=program, base=base)
    last = fn.MAX(UserMou.expires_on)
    rows = (UserMou.select(UserMou.user, last.alias("until")).join(User)
            .where(User.is_active).group_by(UserMou.user).having(last.between(*window)))
    for row in rows:
        until = row.until if isinstance(row.until, dt.date) else dt.date.fromisoformat(str(row.until))
        stage = _reminder_stage((until - day).days)
        if stage is None:
            continue
        user = User.get_by_id(row.user_id)
        text = (f"Your User MOU expired after {until.isoformat()}. Sign it again to open subjects "
                "and referrals." if stage == "expired"
                else f"Your User MOU is valid through {until.isoformat()}. Please sign it again before then.")
        sent += _send_reminder_once(f"user_mou:{user.id}:{until.isoformat()}:{stage}", [user], text,
                                    "/auth/user-mou", "CONNECT: your User MOU", text, base=base)
    return sent
