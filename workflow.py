"""Every change of account, agreement, consent and referral state.

Each verb_noun function checks its rule, changes the rows inside one transaction, writes
the history and audit rows, queues the notifications (outbox rows in the same
transaction) and raises RuleViolation with a sentence a user understands. The acting user
and program are arguments: the same function serves screens, the CLI and the API.
"""

import datetime as dt
import json

from models import (
    API_EMAIL_DOMAIN,
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


def _audit_row(actor, action, obj=None, subject=None, outcome="ok", detail="", user=None,
               email=""):
    """The fields of one audit row: who, acting program, what, where from, outcome."""
    user = user if user is not None else (actor.user if actor else None)
    subject_id = subject if isinstance(subject, int) or subject is None else subject.id
    return dict(
        at=utcnow(),
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


def record_audit(actor, action, obj=None, subject=None, outcome="ok", detail="",
                 user=None, email=""):
    """Append one audit row (R-SAFE-1). Called inside the change's transaction."""
    AuditEvent.create(**_audit_row(actor, action, obj, subject, outcome, detail, user, email))


def record_audit_shown(actor, action, shown, outcome="ok", detail=""):
    """One audit row per (object, subject) a page shows, in ONE INSERT: a list of 25
    clients is 25 rows but a single audit query (R-SAFE-1). An item may carry its own
    detail and outcome: (object, subject, detail, outcome)."""
    rows = [_audit_row(actor, action, item[0], item[1],
                       item[3] if len(item) > 3 else outcome,
                       item[2] if len(item) > 2 else detail) for item in shown]
    if rows:
        with transaction():
            AuditEvent.insert_many(rows).execute()


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
    if email_subject and not user.email.endswith(API_EMAIL_DOMAIN):  # API clients poll
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
# Subjects (R-SUBJ) and releases of information (R-ROI): issue 3
# ---------------------------------------------------------------------------

TEXT_CODE_VALID = dt.timedelta(hours=12)
TEXT_MAX_WRONG_CODES = 5
LINK_ATTEMPTS_PER_HOUR = 10
YES_WORDS = frozenset({"yes", "y", "yes please", "si", "sí"})
MAX_AGE_YEARS = 120


class LikelyDuplicates(RuleViolation):
    """Subjects that are probably the same person exist: the user decides (R-SUBJ-1)."""

    status_code = 409

    def __init__(self, candidates):
        super().__init__("This client may already be in CONNECT. Check the possible matches "
                         "below before adding a new subject.")
        self.candidates = candidates


def parse_phone(value):
    """A US phone number in E.164 form (+14065550100); RuleViolation when it is not one."""
    import phonenumbers

    try:
        number = phonenumbers.parse(value or "", "US")
    except phonenumbers.NumberParseException:
        number = None
    if number is None or number.country_code != 1 or not phonenumbers.is_valid_number(number):
        raise RuleViolation("Enter a 10-digit US phone number, such as (406) 555-0142.", 422)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_dob(dob):
    """A date of birth is not in the future and not more than 120 years ago."""
    from models import local_today

    if not isinstance(dob, dt.date):
        raise RuleViolation("Enter the date of birth.", 422)
    today = local_today()
    if dob > today:
        raise RuleViolation("The date of birth cannot be in the future.", 422)
    try:
        oldest = today.replace(year=today.year - MAX_AGE_YEARS)
    except ValueError:  # 29 February
        oldest = today.replace(year=today.year - MAX_AGE_YEARS, day=28)
    if dob < oldest:
        raise RuleViolation("The date of birth cannot be more than 120 years ago.", 422)
    return dob


def check_zip(value):
    """Montana zip codes start with 59 (59001-59937)."""
    import re

    text = (value or "").strip()
    if not re.fullmatch(r"59\d{3}(-\d{4})?", text):
        raise RuleViolation("Enter a Montana zip code (5 digits starting with 59).", 422)
    return text


def clean_subject_fields(values):
    """Validated subject fields (R-SUBJ-2..4) or RuleViolation naming every problem."""
    from models import GENDERS, MILITARY, NO_PHONE, RACES, County, digits

    clean, problems = {}, []
    for key, label in (("first_name", "legal first name"), ("last_name", "legal last name"),
                       ("city", "current city")):
        clean[key] = " ".join((values.get(key) or "").split())[:100]
        if not clean[key]:
            problems.append(f"Enter the {label}.")
    clean["middle_name"] = " ".join((values.get("middle_name") or "").split())[:100]
    for key, allowed, label in (("gender", GENDERS, "current gender identity"),
                                ("race", RACES, "race"), ("military", MILITARY, "military service")):
        clean[key] = values.get(key) or ""
        if clean[key] not in allowed:
            problems.append(f"Choose the {label}.")
    checks = (("dob", check_dob), ("zip_code", check_zip))
    for key, check in checks:
        try:
            clean[key] = check(values.get(key))
        except RuleViolation as exc:
            problems.append(exc.message)
    county = values.get("county")
    county_id = county.id if hasattr(county, "id") else county
    try:
        clean["county"] = County.get_by_id(int(county_id))
    except (TypeError, ValueError, County.DoesNotExist):
        problems.append("Choose the current county from the list.")
    clean["homeless"] = bool(values.get("homeless"))
    address = " ".join((values.get("address") or "").split())[:200]
    if not address and clean["homeless"]:
        address = "0000 Street"  # the guide's convention (R-SUBJ-3)
    if address.lower().startswith("0000 street"):
        clean["homeless"] = True
    clean["address"] = address
    if not address:
        problems.append("Enter the current address (for a client without one, tick "
                        "\"Experiencing homelessness\" to use 0000 Street).")
    clean["other_contact"] = (values.get("other_contact") or "").strip()[:500]
    clean["email"] = (values.get("email") or "").strip()[:200]
    phone = (values.get("phone") or "").strip()
    clean["no_phone"] = bool(values.get("no_phone")) or digits(phone)[-10:] == NO_PHONE
    clean["phone"] = ""
    if clean["no_phone"]:
        if not clean["other_contact"]:
            problems.append("With \"No phone\", describe the best other way to reach the client.")
    elif not phone:
        problems.append("Enter a phone number, or tick \"No phone\" and give the best other contact.")
    else:
        try:
            clean["phone"] = parse_phone(phone)
        except RuleViolation as exc:
            problems.append(exc.message)
    if problems:
        raise RuleViolation(" ".join(problems), 422)
    return clean


def _require(actor, permission, program=None, message=None):
    """The acting user's role in the acting program allows `permission`, or RuleViolation."""
    program = program if program is not None else actor.program
    if program is None:
        raise RuleViolation("Choose the program you act for first.", 403)
    if not actor.user.can(permission, program):
        raise RuleViolation(message or "Your role in this program does not allow this.", 403)


def _link_subject(subject, program, reason):
    from models import SubjectLink

    SubjectLink.get_or_create(subject=subject, program=program, defaults={"reason": reason})


def create_subject(actor, values, confirm_new=False):
    """Add a subject after the duplicate check (R-SUBJ-1..4). An exact match links the
    existing subject to the acting program instead; likely duplicates raise
    LikelyDuplicates unless the user chose to add a new subject anyway.
    Returns (subject, "created" | "matched")."""
    import matching
    from models import Subject

    _require(actor, "create_subject")
    clean = clean_subject_fields(values)
    with transaction():
        existing = matching.exact_matches(clean["first_name"], clean["last_name"], clean["dob"],
                                          clean["phone"], clean["address"]).first()
        if existing is not None:
            _link_subject(existing, actor.program, "matched")
            record_audit(actor, "match_subject", existing, subject=existing,
                         detail="exact match at Add Subject")
            return existing, "matched"
        if not confirm_new:
            found = matching.likely_duplicates(clean["first_name"], clean["last_name"],
                                               clean["dob"], clean["phone"])
            if found:
                raise LikelyDuplicates([matching.masked(s) for _, s in found])
        subject = Subject(**clean, created_by=actor.user, created_by_program=actor.program)
        subject.fill_normalized()
        subject.save()
        _link_subject(subject, actor.program, "created")
        record_audit(actor, "create_subject", subject, subject=subject,
                     detail="after possible matches" if confirm_new else "")
    return subject, "created"


def link_existing_subject(actor, subject_id, first_name, last_name, dob, phone_or_address):
    """Reach an existing subject with what the client tells the user (R-SUBJ-7): first and
    last name, date of birth and the phone or address on file must match exactly."""
    import matching
    from models import AuditEvent, Subject

    _require(actor, "create_subject")
    since = utcnow() - dt.timedelta(hours=1)
    failures = AuditEvent.select().where(
        (AuditEvent.user == actor.user.id) & (AuditEvent.action == "link_subject")
        & (AuditEvent.outcome == "denied") & (AuditEvent.at >= since)).count()
    if failures >= LINK_ATTEMPTS_PER_HOUR:
        raise RuleViolation("Too many details that did not match. Wait an hour, or add the "
                            "client as a new subject.", 429)
    try:
        subject = Subject.get_or_none(Subject.id == int(subject_id))
    except (TypeError, ValueError):
        subject = None
    if subject is None or not matching.matches_subject(subject, first_name, last_name, dob,
                                                       phone_or_address):
        audit_denial(actor, "link_subject", detail=f"subject {subject_id}: details did not match")
        raise RuleViolation("What the client told you does not match this subject's phone or "
                            "address on file. Ask again, or when in doubt add a new subject.", 422)
    with transaction():
        _link_subject(subject, actor.program, "matched")
        record_audit(actor, "link_subject", subject, subject=subject, detail="client-confirmed match")
    return subject


def new_roi_reference():
    import secrets

    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    code = "".join(secrets.choice(alphabet) for _ in range(8))
    return f"ROI-{code[:4]}-{code[4:]}"


def start_roi(actor, subject, program_ids):
    """A draft ROI naming the acting program and the chosen ones, all with a valid Agency
    MOU (R-ROI-2, R-ROI-3, R-MOU-3)."""
    from models import Program, Roi, RoiProgram, Subject

    _require(actor, "start_roi")
    if not Subject.visible_to(actor.user, actor.program).where(Subject.id == subject.id).exists():
        raise NotFound("This subject was not found.")
    if not actor.program.has_valid_mou():
        raise RuleViolation("Your program's Agency MOU is not valid, so it cannot start an ROI. "
                            "Ask your gatekeeper to sign it.", 409)
    wanted = set()
    for raw in program_ids or ():
        try:
            wanted.add(int(raw))
        except (TypeError, ValueError):
            continue
    wanted.discard(actor.program.id)
    if not wanted:
        raise RuleViolation("Select at least one program for this ROI.", 422)
    chosen = list(Program.with_valid_mou().where(Program.id.in_(wanted)))
    if len(chosen) != len(wanted):
        raise RuleViolation("A chosen program cannot be put on an ROI now (no valid Agency MOU). "
                            "Search again and choose from the list.", 409)
    with transaction():
        roi = Roi.create(subject=subject, program=actor.program, created_by=actor.user,
                         reference=new_roi_reference(), authorizer_name=subject.full_name)
        for program in [actor.program, *chosen]:
            RoiProgram.create(roi=roi, program=program)
        record_audit(actor, "start_roi", roi, subject=subject.id,
                     detail="programs " + ",".join(str(p.id) for p in chosen))
    return roi


def _own_roi(actor, roi, states):
    """The acting program started this ROI and it is in one of `states`."""
    from models import ROI_STATE_LABELS

    if actor.program is None or roi.program_id != actor.program.id:
        raise NotFound("This release of information was not found.")
    if roi.state not in states:
        raise RuleViolation(f"This ROI is {ROI_STATE_LABELS[roi.effective_state()].lower()}; "
                            "it cannot be changed that way.", 409)


def complete_roi(actor, roi, info_types, authorizer_kind, authorizer_name="", phone=None):
    """The "Complete ROI" details (R-ROI-4): information types, who authorizes, and the
    client's phone when it was updated here."""
    from models import AUTHORIZER_KINDS, INFO_TYPES, ROI_AWAITING, ROI_DRAFT

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_DRAFT, ROI_AWAITING))
    chosen = [code for code in INFO_TYPES if code in set(info_types or ())]
    if not chosen:
        raise RuleViolation("Tick at least one type of information the client agrees to share.", 422)
    if authorizer_kind not in AUTHORIZER_KINDS:
        raise RuleViolation("Choose who authorizes this ROI.", 422)
    subject = roi.subject
    name = subject.full_name if authorizer_kind == "client" else " ".join((authorizer_name or "").split())
    if not name:
        raise RuleViolation(f"Enter the name of the {AUTHORIZER_KINDS[authorizer_kind].lower()} "
                            "who authorizes this ROI.", 422)
    new_phone = parse_phone(phone) if phone and phone.strip() else None
    with transaction():
        if new_phone and new_phone != subject.phone:
            subject.phone, subject.no_phone, subject.updated_at = new_phone, False, utcnow()
            subject.fill_normalized()
            subject.save()
            record_audit(actor, "update_subject_phone", subject, subject=subject)
        roi.info_types = ",".join(chosen)
        roi.authorizer_kind, roi.authorizer_name = authorizer_kind, name[:200]
        roi.updated_at = utcnow()
        roi.save()
        record_audit(actor, "complete_roi", roi, subject=subject.id, detail=roi.info_types)
    return roi


def _check_details(roi):
    if not roi.info_type_set or not roi.authorizer_name:
        raise RuleViolation("Complete the ROI first: information types and who authorizes it.", 422)


def _sign(actor, roi, method):
    """Signed now; valid through the anniversary of the local signing date (R-ROI-1).
    Every program on it may then see the subject (R-ROI-3). Inside a transaction."""
    from models import ROI_SIGNED, last_valid_day, to_local_date

    now = utcnow()
    roi.state, roi.signature_method = ROI_SIGNED, method
    roi.signed_at, roi.signed_on = now, to_local_date(now)
    roi.expires_on = last_valid_day(roi.signed_on)
    roi.updated_at = now
    roi.save()
    for row in roi.roi_programs:
        _link_subject(roi.subject_id, row.program_id, "roi")
    record_audit(actor, "sign_roi", roi, subject=roi.subject_id,
                 detail=f"{method}; valid through {roi.expires_on.isoformat()}")


def _same_name(a, b):
    return "".join((a or "").lower().split()) == "".join((b or "").lower().split())


def sign_roi_esign(actor, roi, typed_name, agreed):
    """E-Sign (R-ROI-5): the typed name is the authorizer's (case and spaces aside) and
    "yes" is ticked."""
    from models import ROI_AWAITING, ROI_DRAFT, SIGN_ESIGN

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_DRAFT, ROI_AWAITING))
    _check_details(roi)
    if not _same_name(typed_name, roi.authorizer_name):
        raise RuleViolation(f"The typed name must be the name of the person authorizing: "
                            f"{roi.authorizer_name}.", 422)
    if not agreed:
        raise RuleViolation("Tick \"Yes\" to sign the ROI electronically.", 422)
    with transaction():
        _sign(actor, roi, SIGN_ESIGN)
    return roi


def _program_names(roi):
    return ", ".join(row.program.name for row in roi.roi_programs)


def send_roi_text(actor, roi, phone=None):
    """Text Message (R-ROI-6): ask the client's cell phone to reply YES; once they have,
    sending again texts a new code that keeps the first code's 12-hour expiry."""
    from models import ROI_AWAITING, ROI_DRAFT, SIGN_TEXT

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_DRAFT, ROI_AWAITING))
    _check_details(roi)
    number = parse_phone(phone or roi.text_phone or roi.subject.phone)
    if roi.text_state == "locked":
        raise RuleViolation("Too many wrong codes were entered: the text signature of this ROI "
                            "is locked. Use E-Sign or Upload, or start a new ROI.", 409)
    now = utcnow()
    with transaction():
        if roi.text_state == "replied" and number == roi.text_phone:
            if now > roi.text_code_first_sent_at + TEXT_CODE_VALID:
                raise RuleViolation("The security code expired 12 hours after it was first sent. "
                                    "Start new ROI(s) to ask the client again.", 409)
            _text_code(roi, now)
            action = "resend_roi_code"
        else:
            roi.text_phone, roi.text_state, roi.text_asked_at = number, "asked", now
            roi.text_code_hash, roi.text_code_first_sent_at, roi.text_code_sends = "", None, 0
            queue_text(number, f"CONNECT: {roi.program.agency.name} asks you to sign a release of "
                               f"information ({roi.reference}) to share your information with "
                               f"{_program_names(roi)}. Reply YES to get a security code.",
                       kind="roi_text_ask")
            action = "send_roi_text"
        roi.signature_method, roi.state, roi.updated_at = SIGN_TEXT, ROI_AWAITING, now
        roi.save()
        record_audit(actor, action, roi, subject=roi.subject_id, detail=f"to ...{number[-2:]}")
    return roi


def _text_code(roi, now):
    """A new 6-digit code, stored hashed; the expiry stays 12 h after the first one."""
    import secrets

    from models import local_zone
    from security import hash_password

    code = f"{secrets.randbelow(10 ** 6):06d}"
    roi.text_code_hash = hash_password(code)
    roi.text_code_first_sent_at = roi.text_code_first_sent_at or now
    roi.text_code_sends += 1
    roi.text_state = "replied"
    until = (roi.text_code_first_sent_at + TEXT_CODE_VALID).replace(tzinfo=dt.timezone.utc)
    until_text = until.astimezone(local_zone()).strftime("%b %-d %-I:%M %p")
    queue_text(roi.text_phone, f"CONNECT: your security code for release {roi.reference} is "
                               f"{code}. Give it to the person helping you. Valid until "
                               f"{until_text}.", kind="roi_text_code")
    return code


def handle_inbound_text(from_phone, body):
    """A client's reply (R-ROI-6), already authenticated by the webhook signature.

    YES applies to the most recently asked ROI of that number that still awaits a text
    signature (one code per reply); the text says which ROI it is and how many others
    still wait, which a later YES handles once this one is signed. Anything else, or an
    unknown number, changes nothing. Returns "code_sent" or "ignored"."""
    from models import ROI_AWAITING, SIGN_TEXT, Roi

    try:
        number = parse_phone(from_phone)
    except RuleViolation:
        return "ignored"
    if " ".join((body or "").strip().strip(".!").lower().split()) not in YES_WORDS:
        return "ignored"
    now = utcnow()
    waiting = [roi for roi in Roi.select().where(
        (Roi.text_phone == number) & (Roi.state == ROI_AWAITING) & (Roi.signature_method == SIGN_TEXT)
        & Roi.text_state.in_(("asked", "replied"))).order_by(Roi.text_asked_at.desc(), Roi.id.desc())
        if now <= (roi.text_code_first_sent_at or roi.text_asked_at) + TEXT_CODE_VALID]
    if not waiting:
        return "ignored"
    roi = waiting[0]
    with transaction():
        _text_code(roi, now)
        if len(waiting) > 1:
            queue_text(number, f"CONNECT: {len(waiting) - 1} other release(s) also wait for you. "
                               "Reply YES again after this one is done to get their code.",
                       kind="roi_text_more")
        roi.updated_at = now
        roi.save()
        record_audit(None, "text_reply_yes", roi, subject=roi.subject_id,
                     detail=f"from ...{number[-2:]}; {len(waiting) - 1} other waiting")
    return "code_sent"


def confirm_roi_code(actor, roi, code):
    """The user enters the code the client received: signed if right and within 12 hours
    of the first send; five wrong entries lock the text signature."""
    from models import ROI_AWAITING, SIGN_TEXT
    from security import verify_password

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_AWAITING,))
    if roi.signature_method != SIGN_TEXT:
        raise RuleViolation("This ROI is not waiting for a text-message code.", 409)
    refused = _code_refused(roi)
    if refused:  # every refused code is audited, not only wrong ones (R-SAFE-1)
        audit_denial(actor, "confirm_roi_code", detail=refused, subject=roi.subject_id)
        raise RuleViolation(refused, 409)
    code = "".join((code or "").split())
    if len(code) == 6 and code.isdigit() and verify_password(roi.text_code_hash, code):
        with transaction():
            roi.text_state = "confirmed"
            _sign(actor, roi, SIGN_TEXT)
        return roi
    with transaction():
        roi.text_failed_attempts += 1
        left = TEXT_MAX_WRONG_CODES - roi.text_failed_attempts
        if left <= 0:
            roi.text_state = "locked"
        roi.save()
        record_audit(actor, "confirm_roi_code", roi, subject=roi.subject_id, outcome="denied",
                     detail=f"wrong code; {max(left, 0)} tries left")
    if left <= 0:
        raise RuleViolation("Wrong code, five times: the text signature of this ROI is now "
                            "locked. Use E-Sign or Upload, or start a new ROI.", 409)
    raise RuleViolation(f"That code is not right. {left} tries left.", 422)


def _code_refused(roi):
    """Why no code can be confirmed for this ROI now (locked, no reply, expired), or ""."""
    if roi.text_state == "locked" or roi.text_failed_attempts >= TEXT_MAX_WRONG_CODES:
        return ("Too many wrong codes were entered: the text signature of this ROI is locked. "
                "Use E-Sign or Upload, or start a new ROI.")
    if roi.text_state != "replied" or not roi.text_code_hash:
        return "The client has not replied YES yet, so no code was sent."
    if utcnow() > roi.text_code_first_sent_at + TEXT_CODE_VALID:
        return ("The security code expired 12 hours after it was first sent. "
                "Start new ROI(s) to ask the client again.")
    return ""


def mark_roi_on_paper(actor, roi):
    """Upload (R-ROI-7): the client signs the printed ROI; it waits for the scan."""
    from models import ROI_AWAITING, ROI_DRAFT, SIGN_UPLOAD

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_DRAFT, ROI_AWAITING))
    _check_details(roi)
    with transaction():
        roi.signature_method, roi.state, roi.updated_at = SIGN_UPLOAD, ROI_AWAITING, utcnow()
        roi.save()
        record_audit(actor, "mark_roi_on_paper", roi, subject=roi.subject_id)
    return roi


def attach_roi_scan(actor, roi, data, filename, upload_dir, limit):
    """Attach (or replace) the signed scan after the checks of R-SAFE-4; the ROI counts
    as signed from then on. Returns the ROI."""
    import uploads
    from models import ROI_AWAITING, ROI_SIGNED, SIGN_UPLOAD

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_AWAITING, ROI_SIGNED))
    if roi.signature_method != SIGN_UPLOAD:
        raise RuleViolation("Choose \"Upload\" as the signature method before attaching a scan.", 409)
    uploads.check_pdf(data, limit)
    name = uploads.store(data, upload_dir)
    old = roi.attachment_path
    try:
        with transaction():
            roi.attachment_path, roi.attachment_name = name, uploads.safe_filename(filename)
            roi.attachment_size, roi.attachment_uploaded_at = len(data), utcnow()
            roi.save()
            record_audit(actor, "replace_roi_scan" if old else "attach_roi_scan", roi,
                         subject=roi.subject_id, detail=f"{len(data)} bytes")
            if roi.state == ROI_AWAITING:
                _sign(actor, roi, SIGN_UPLOAD)
    except Exception:
        uploads.remove(name, upload_dir)
        raise
    if old:
        uploads.remove(old, upload_dir)
    return roi


def delete_roi_scan(actor, roi, upload_dir):
    """Delete the attachment; an upload ROI without its scan waits for one again."""
    import uploads
    from models import ROI_AWAITING, ROI_SIGNED, SIGN_UPLOAD

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_AWAITING, ROI_SIGNED))
    if not roi.attachment_path:
        raise RuleViolation("This ROI has no attachment to delete.", 409)
    old = roi.attachment_path
    with transaction():
        roi.attachment_path, roi.attachment_name, roi.attachment_size = "", "", 0
        roi.attachment_uploaded_at = None
        if roi.state == ROI_SIGNED and roi.signature_method == SIGN_UPLOAD:
            roi.state, roi.signed_at, roi.signed_on, roi.expires_on = ROI_AWAITING, None, None, None
        roi.updated_at = utcnow()
        roi.save()
        record_audit(actor, "delete_roi_scan", roi, subject=roi.subject_id)
    uploads.remove(old, upload_dir)
    return roi


def revoke_roi(actor, roi, reason):
    """Revoke (R-ROI-8): no new referral under it; referrals already sent keep their
    history. The program that started it, or any program on a signed ROI, may revoke."""
    from models import ROI_REVOKED, Roi

    _require(actor, "revoke_roi")
    if not Roi.visible_to(actor.user, actor.program).where(Roi.id == roi.id).exists():
        raise NotFound("This release of information was not found.")
    reason = (reason or "").strip()
    if not reason:
        raise RuleViolation("Give the reason for revoking this ROI.", 422)
    if roi.state == ROI_REVOKED:
        raise RuleViolation("This ROI is already revoked.", 409)
    now = utcnow()
    with transaction():
        roi.state, roi.revoked_at, roi.revoked_by = ROI_REVOKED, now, actor.user
        roi.revoked_reason, roi.updated_at = reason[:2000], now
        roi.save()
        record_audit(actor, "revoke_roi", roi, subject=roi.subject_id, detail=reason)
        for row in roi.roi_programs:
            if row.program_id == actor.program.id:
                continue
            for gatekeeper in gatekeepers_of(row.program_id):
                notify(gatekeeper, f"ROI {roi.reference} naming your program was revoked.",
                       "roi_revoked", program=row.program_id)
    return roi


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
        if INFO_SUBSTANCE_USE in _disclosed_answer_types(referral):
            body += f"\n{REDISCLOSURE_NOTICE}\n"
    notify(user, message, kind, link=link, program=referral.to_program_id,
           email_subject=email_subject, email_body=body)


def answer_info_types(referral):
    from models import IntakeQuestion
    ids = [int(k) for k in referral.answer_dict() if str(k).isdigit()]
    if not ids:
        return set()
    return {q.info_type for q in IntakeQuestion.select(IntakeQuestion.info_type)
            .where(IntakeQuestion.id.in_(ids))}


def _disclosed_answer_types(referral):
    """Information types of the referral's answers that its current consent still covers:
    the Part 2 notice itself says the client has substance-use records (R-ROI-4)."""
    roi = referral.current_consent()
    if roi is None:
        return set()
    return answer_info_types(referral) & roi.info_type_set


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
        # A new note is a change of the referral for polling systems (FHIR _lastUpdated).
        type(referral).update(updated_at=note.created_at).where(
            type(referral).id == referral.id).execute()
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


def _nth_weekday(year, month, weekday, n):
    """The n-th `weekday` (0 = Monday) of a month; n = -1 is the last one."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _us_holidays(years):
    """US federal holidays with their observed days (5 U.S.C. 6103), computed here: the
    `holidays` package costs the worker about 10 MB of memory (issue 6). tests/test_perf.py
    checks this against that package."""
    days = set()
    for year in years:
        fixed = [dt.date(year, 1, 1), dt.date(year, 7, 4), dt.date(year, 11, 11),
                 dt.date(year, 12, 25)]
        if year >= 2021:
            fixed.append(dt.date(year, 6, 19))
        for day in fixed:
            days.add(day)
            if day.weekday() == 5 and day.month > 1:  # Saturday: observed on Friday
                days.add(day - dt.timedelta(days=1))
            elif day.weekday() == 6:  # Sunday: observed on Monday
                days.add(day + dt.timedelta(days=1))
        if dt.date(year + 1, 1, 1).weekday() == 5:  # next New Year's Day, observed
            days.add(dt.date(year, 12, 31))
        days.update((_nth_weekday(year, 1, 0, 3), _nth_weekday(year, 2, 0, 3),
                     _nth_weekday(year, 5, 0, -1), _nth_weekday(year, 9, 0, 1),
                     _nth_weekday(year, 10, 0, 2), _nth_weekday(year, 11, 3, 4)))
    return days


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


# ---------------------------------------------------------------------------
# FHIR API (issue 8): consent signed in the sending system
# ---------------------------------------------------------------------------

def sign_roi_by_api(actor, roi):
    """An ROI sent as an active FHIR Consent by the client's program's own system, which
    vouches for the signature: recorded with the method "api" (R-ROI-1 validity as any)."""
    from models import ROI_DRAFT, SIGN_API

    _require(actor, "sign_roi")
    _own_roi(actor, roi, (ROI_DRAFT,))
    _check_details(roi)
    with transaction():
        _sign(actor, roi, SIGN_API)
    return roi
