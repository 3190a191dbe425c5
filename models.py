"""The schema of CONNECT: every table, its constants, read-only predicates and queries.

Nothing here imports Flask's request or current_user: the acting user and program are
arguments. Changes of state live in workflow.py.
"""

import datetime as dt
import json
import os
import unicodedata
from zoneinfo import ZoneInfo

from peewee import (
    BooleanField,
    CharField,
    DatabaseProxy,
    DateField,
    DateTimeField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    SQL,
    TextField,
    fn,
)
from playhouse.db_url import parse as parse_db_url

database = DatabaseProxy()

# ---------------------------------------------------------------------------
# Constants: statuses, labels and codes used by screens, reports and tests.
# ---------------------------------------------------------------------------

ROLE_ADMIN = "admin"
ROLE_GATEKEEPER = "gatekeeper"
ROLE_PROVIDER = "provider"
MEMBER_ROLES = (ROLE_GATEKEEPER, ROLE_PROVIDER)
ROLE_LABELS = {ROLE_ADMIN: "Administrator", ROLE_GATEKEEPER: "Gatekeeper", ROLE_PROVIDER: "Provider"}

# Permissions are data: role -> what it may do (named like the workflow functions).
PERMISSIONS = {
    ROLE_PROVIDER: {
        "view_subjects", "create_subject", "start_roi", "sign_roi", "revoke_roi",
        "save_referral_draft", "send_referral", "withdraw_referral",
        "view_referrals", "work_referral", "reassign_referral",
        "set_referral_status", "add_referral_note", "add_progress_entry",
        "run_basic_reports", "view_notifications",
    },
    ROLE_GATEKEEPER: {
        "view_subjects", "create_subject", "start_roi", "sign_roi", "revoke_roi",
        "save_referral_draft", "send_referral", "withdraw_referral",
        "view_referrals", "view_program_referrals", "work_referral",
        "assign_referral", "reassign_referral", "decline_referral", "reopen_referral",
        "set_referral_status", "add_referral_note", "add_progress_entry",
        "run_basic_reports", "run_all_reports", "sign_agency_mou",
        "edit_intake_sections", "view_notifications",
    },
    ROLE_ADMIN: {
        "manage_network", "manage_users", "view_outbox", "view_audit",
        "view_subjects", "run_basic_reports", "run_all_reports",
        "edit_intake_sections", "view_dashboard", "view_notifications",
    },
}

# Referral states (the life cycle) and outcome statuses (R-STAT-1, exact labels).
REFERRAL_PENDING = "pending"
REFERRAL_SENT = "sent"
REFERRAL_ASSIGNED = "assigned"
REFERRAL_CLOSED = "closed"
REFERRAL_DECLINED = "declined"
REFERRAL_WITHDRAWN = "withdrawn"
REFERRAL_DISCARDED = "discarded"
REFERRAL_STATE_LABELS = {
    REFERRAL_PENDING: "Pending",
    REFERRAL_SENT: "Active",
    REFERRAL_ASSIGNED: "Assigned",
    REFERRAL_CLOSED: "Closed",
    REFERRAL_DECLINED: "Rejected",
    REFERRAL_WITHDRAWN: "Withdrawn",
    REFERRAL_DISCARDED: "Discarded",
}
# Only these moves exist (SPEC "States").
REFERRAL_MOVES = {
    REFERRAL_PENDING: {REFERRAL_SENT, REFERRAL_DISCARDED},
    REFERRAL_SENT: {REFERRAL_ASSIGNED, REFERRAL_DECLINED, REFERRAL_WITHDRAWN},
    REFERRAL_ASSIGNED: {REFERRAL_CLOSED, REFERRAL_ASSIGNED},
    REFERRAL_CLOSED: {REFERRAL_ASSIGNED},
    REFERRAL_DECLINED: set(),
    REFERRAL_WITHDRAWN: set(),
    REFERRAL_DISCARDED: set(),
}
OPEN_REFERRAL_STATES = (REFERRAL_PENDING, REFERRAL_SENT, REFERRAL_ASSIGNED)

STATUSES = (
    "Closed- Referred to other program",
    "Closed- Successful completion",
    "Enrolled in Services",
    "Not Completed- Dropped out",
    "Not Completed- Moved out of area",
    "Not Completed- Whereabouts unknown",
    "Not Started- Declined services",
    "Not Started- Moved out of area",
    "Not Started- On waiting list",
    "Not Started- Referred to other program",
    "Not Started- Unable to contact individual",
    "On Waiting List",
    "Other",
)
# R-STAT-4: these leave the referral open; every other status closes it.
OPEN_STATUSES = frozenset(
    {"Enrolled in Services", "Not Started- On waiting list", "On Waiting List", "Other"}
)

NOTE_KINDS = {
    "call_attempt": "Call attempt",
    "contact_made": "Contact made",
    "appointment": "Appointment",
    "other": "Other",
}

# ROI information types (R-ROI-4); HIV and substance use are each explicit.
INFO_CONTACT = "contact"
INFO_DEMOGRAPHICS = "demographics"
INFO_SUBSTANCE_USE = "substance_use"
INFO_HIV = "hiv"
INFO_TYPES = {
    INFO_CONTACT: "Contact information",
    INFO_DEMOGRAPHICS: "Demographics",
    "insurance": "Insurance information",
    "medical": "General medical information",
    "behavioral_health": "Behavioral / mental health",
    INFO_SUBSTANCE_USE: "Substance use (42 CFR Part 2)",
    INFO_HIV: "HIV-related information",
    "education": "Education / school records",
    "housing": "Housing and social needs",
}
REDISCLOSURE_NOTICE = (
    "This information has been disclosed to you from records protected by federal "
    "confidentiality rules (42 CFR part 2). The federal rules prohibit you from making any "
    "further disclosure of information in this record that identifies a patient as having "
    "or having had a substance use disorder either directly, by reference to publicly "
    "available information, or through verification of such identification by another "
    "person unless further disclosure is expressly permitted by the written consent of the "
    "individual whose information is being disclosed or as otherwise permitted by 42 CFR "
    "part 2. A general authorization for the release of medical or other information is "
    "NOT sufficient for this purpose (see 42 CFR 2.31). The federal rules restrict any use "
    "of the information to investigate or prosecute with regard to a crime any patient "
    "with a substance use disorder, except as provided at 42 CFR 2.12(c)(5) and 2.65."
)

ROI_DRAFT = "draft"
ROI_AWAITING = "awaiting_signature"
ROI_SIGNED = "signed"
ROI_REVOKED = "revoked"
ROI_EXPIRED = "expired"  # derived from expires_on, never stored
ROI_STATE_LABELS = {
    ROI_DRAFT: "Draft",
    ROI_AWAITING: "Awaiting signature",
    ROI_SIGNED: "Signed",
    ROI_REVOKED: "Revoked",
    ROI_EXPIRED: "Expired",
}
SIGN_ESIGN = "esign"
SIGN_TEXT = "text"
SIGN_UPLOAD = "upload"
API_EMAIL_DOMAIN = "@api.connect.invalid"  # accounts of FHIR API clients: no email, no sign-in
SIGN_API = "api"  # signed in an external system that sent it through the FHIR API
SIGNATURE_METHODS = {SIGN_ESIGN: "E-Sign", SIGN_TEXT: "Text Message", SIGN_UPLOAD: "Upload",
                     SIGN_API: "API (external system)"}
AUTHORIZER_KINDS = {
    "client": "Client",
    "parent": "Parent",
    "guardian": "Guardian",
    "poa": "Power of attorney",
}

GENDERS = ("Female", "Male", "Transgender woman", "Transgender man", "Non-binary",
           "Another gender identity", "Prefers not to say")
RACES = ("American Indian or Alaska Native", "Asian", "Black or African American",
         "Native Hawaiian or Other Pacific Islander", "White", "More than one race",
         "Another race", "Prefers not to say")
MILITARY = ("No military service", "Veteran", "Active duty", "National Guard or Reserve",
            "Military family member", "Prefers not to say")
NO_PHONE = "9999999999"  # the guide's (999)-999-9999

OUTBOX_PENDING = "pending"
OUTBOX_SENT = "sent"
OUTBOX_FAILED = "failed"  # gave up after the last retry
OUTBOX_KEPT = "kept"  # no transport configured: kept and shown to administrators

MOU_VALID_DAYS_WARNING = 30
USER_MOU_VERSION = "2026-1"
AGENCY_MOU_VERSION = "2026-1"


# ---------------------------------------------------------------------------
# Time: always read from the system clock (CONTRACT: libfaketime may shift it).
# ---------------------------------------------------------------------------

def utcnow():
    """The current time as a naive UTC datetime (what the database stores)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def local_zone():
    return ZoneInfo(os.environ.get("TIMEZONE", "America/Denver"))


def local_today():
    """Today's date in the deployment's time zone (day boundaries for expiry)."""
    return dt.datetime.now(local_zone()).date()


def to_local_date(moment):
    """The deployment-local calendar date of a naive UTC datetime."""
    return moment.replace(tzinfo=dt.timezone.utc).astimezone(local_zone()).date()


def one_year_after(day):
    """The same calendar date a year later (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year + 1)
    except ValueError:
        return day.replace(year=day.year + 1, day=28)


def last_valid_day(signed_on):
    """ROIs and MOUs are valid one calendar year from signing, the anniversary included."""
    return one_year_after(signed_on)


# ---------------------------------------------------------------------------
# Normalisation helpers for matching (indexed columns hold these forms).
# ---------------------------------------------------------------------------

def normalize_name(value):
    """Lower case, accents removed, only letters kept: 'Zoë O'Neil' -> 'zoeoneil'."""
    text = unicodedata.normalize("NFKD", value or "")
    return "".join(ch for ch in text if ch.isalpha() and not unicodedata.combining(ch)).lower()


def normalize_address(value):
    text = unicodedata.normalize("NFKD", value or "")
    return " ".join("".join(ch for ch in text if ch.isalnum() or ch == " ").lower().split())


def digits(value):
    return "".join(ch for ch in (value or "") if ch.isdigit())


# ---------------------------------------------------------------------------
# Database set-up
# ---------------------------------------------------------------------------

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 10000,
    "cache_size": -64000,
    "temp_store": "memory",
}


def make_database(url, sqlite_pragmas=None):
    """A peewee database for a DATABASE_URL: SQLite (WAL, FULL) or pooled psycopg 3.
    `sqlite_pragmas` replaces SQLITE_PRAGMAS (the worker's smaller page cache)."""
    from peewee import SqliteDatabase
    from playhouse.postgres_ext import PooledPsycopg3Database

    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return SqliteDatabase(path, pragmas=sqlite_pragmas or SQLITE_PRAGMAS, timeout=10)
    if url.startswith(("postgres://", "postgresql://")):
        params = parse_db_url(url)
        params.pop("sslmode", None)
        database_name = params.pop("database")
        return PooledPsycopg3Database(
            database_name, max_connections=int(os.environ.get("DB_POOL_SIZE", "20")),
            stale_timeout=300, timeout=10, **params)
    raise ValueError(f"Unsupported DATABASE_URL: {url}")


def is_sqlite():
    from peewee import SqliteDatabase
    return isinstance(database.obj, SqliteDatabase)


def transaction():
    """One write transaction: BEGIN IMMEDIATE on SQLite so writers queue, not deadlock."""
    if is_sqlite() and not database.in_transaction():
        return database.atomic("IMMEDIATE")
    return database.atomic()


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class TimestampedModel(BaseModel):
    created_at = DateTimeField(default=utcnow)


# ---------------------------------------------------------------------------
# Network: regions, counties, services, insurance, agencies, programs
# ---------------------------------------------------------------------------

class Region(BaseModel):
    name = CharField(unique=True, max_length=100)
    code = CharField(unique=True, max_length=20)

    def __str__(self):
        return self.name


class County(BaseModel):
    name = CharField(unique=True, max_length=100)
    region = ForeignKeyField(Region, backref="counties", on_delete="RESTRICT")
    fips = CharField(max_length=5, null=True)

    def __str__(self):
        return self.name


class Service(BaseModel):
    name = CharField(unique=True, max_length=150)
    category = CharField(max_length=100, index=True)
    code = CharField(max_length=40, null=True)

    def __str__(self):
        return self.name


class InsuranceType(BaseModel):
    name = CharField(unique=True, max_length=100)

    def __str__(self):
        return self.name


class Agency(TimestampedModel):
    name = CharField(max_length=200, index=True)
    region = ForeignKeyField(Region, backref="agencies", on_delete="RESTRICT")
    address = CharField(max_length=200, default="")
    city = CharField(max_length=100, default="")
    zip_code = CharField(max_length=10, default="")
    phone = CharField(max_length=30, default="")
    email = CharField(max_length=200, default="")
    website = CharField(max_length=300, default="")
    description = TextField(default="")
    active = BooleanField(default=True)
    # Where an imported record came from (import-hsds): its id there, to match it again.
    external_id = CharField(max_length=100, default="", index=True)
    external_source = CharField(max_length=100, default="")

    def __str__(self):
        return self.name

    @classmethod
    def visible_to(cls, user):
        """Agencies an administrator may manage (regional coordinators: their regions)."""
        query = cls.select()
        if user.is_admin and not user.admin_statewide:
            query = query.where(cls.region.in_(user.admin_region_ids()))
        return query


class Program(TimestampedModel):
    agency = ForeignKeyField(Agency, backref="programs", on_delete="RESTRICT")
    name = CharField(max_length=200, index=True)
    description = TextField(default="")
    telemedicine = BooleanField(default=False)
    address = CharField(max_length=200, default="")
    city = CharField(max_length=100, default="")
    zip_code = CharField(max_length=10, default="")
    phone = CharField(max_length=30, default="")
    email = CharField(max_length=200, default="")
    website = CharField(max_length=300, default="")
    hours = CharField(max_length=200, default="")
    latitude = DoubleField(null=True)
    longitude = DoubleField(null=True)
    active = BooleanField(default=True)
    # Denormalised end of the current Agency MOU, kept by workflow.sign_agency_mou, so
    # directory searches filter on one indexed column (R-MOU-3).
    mou_valid_until = DateField(null=True, index=True)
    updated_at = DateTimeField(default=utcnow)
    # Where an imported record came from (import-hsds): its id there, to match it again.
    external_id = CharField(max_length=100, default="", index=True)
    external_source = CharField(max_length=100, default="")

    class Meta:
        indexes = ((("agency", "name"), False),)

    def __str__(self):
        return f"{self.name} ({self.agency.name})" if self.agency_id else self.name

    @property
    def label(self):
        return f"{self.agency.name} — {self.name}"

    def has_valid_mou(self, day=None):
        day = day or local_today()
        return bool(self.active and self.mou_valid_until and self.mou_valid_until >= day)

    @classmethod
    def with_valid_mou(cls, day=None):
        """Programs visible in directory searches and able to receive referrals (R-MOU-3)."""
        day = day or local_today()
        return cls.select().where(cls.active & (cls.mou_valid_until >= day))


class ProgramCounty(BaseModel):
    program = ForeignKeyField(Program, backref="county_links", on_delete="CASCADE")
    county = ForeignKeyField(County, backref="program_links", on_delete="CASCADE")

    class Meta:
        indexes = ((("program", "county"), True), (("county", "program"), False))


class ProgramService(BaseModel):
    program = ForeignKeyField(Program, backref="service_links", on_delete="CASCADE")
    service = ForeignKeyField(Service, backref="program_links", on_delete="CASCADE")

    class Meta:
        indexes = ((("program", "service"), True), (("service", "program"), False))


class ProgramInsurance(BaseModel):
    program = ForeignKeyField(Program, backref="insurance_links", on_delete="CASCADE")
    insurance_type = ForeignKeyField(InsuranceType, backref="program_links", on_delete="CASCADE")

    class Meta:
        indexes = ((("program", "insurance_type"), True), (("insurance_type", "program"), False))


class IntakeSection(BaseModel):
    """An extra tab of a program's referral form (R-SEND-2)."""
    program = ForeignKeyField(Program, backref="intake_sections", on_delete="CASCADE")
    title = CharField(max_length=150)
    position = IntegerField(default=0)

    def __str__(self):
        return self.title


QUESTION_KINDS = {"text": "Text", "choice": "Choice", "yesno": "Yes/No", "date": "Date"}


class IntakeQuestion(BaseModel):
    section = ForeignKeyField(IntakeSection, backref="questions", on_delete="CASCADE")
    label = CharField(max_length=300)
    kind = CharField(max_length=10, default="text", choices=list(QUESTION_KINDS.items()))
    choices = TextField(default="")  # one per line, for kind == "choice"
    required = BooleanField(default=False)
    info_type = CharField(max_length=30, default=INFO_CONTACT, choices=list(INFO_TYPES.items()))
    position = IntegerField(default=0)

    def choice_list(self):
        return [line.strip() for line in self.choices.splitlines() if line.strip()]

    def __str__(self):
        return self.label


# ---------------------------------------------------------------------------
# Accounts, memberships, agreements
# ---------------------------------------------------------------------------

class User(TimestampedModel):
    email = CharField(unique=True, max_length=254)  # stored lower-case
    name = CharField(max_length=200)
    phone = CharField(max_length=30, default="")
    password_hash = CharField(max_length=255, null=True)
    is_active = BooleanField(default=True)
    must_change_password = BooleanField(default=True)
    is_admin = BooleanField(default=False)
    admin_statewide = BooleanField(default=False)
    # Bumped on every issued or used invitation/reset link: older links stop working.
    link_version = IntegerField(default=0)
    password_changed_at = DateTimeField(null=True)
    last_sign_in_at = DateTimeField(null=True)

    def __str__(self):
        return f"{self.name} <{self.email}>"

    # Flask-Login protocol (the session id, not the user id, is the login id).
    @property
    def is_authenticated(self):
        return True

    @property
    def is_anonymous(self):
        return False

    def get_id(self):
        return getattr(self, "_session_id", None)

    def admin_region_ids(self):
        if not hasattr(self, "_admin_region_ids"):
            self._admin_region_ids = [
                row.region_id for row in AdminRegion.select().where(AdminRegion.user == self)]
        return self._admin_region_ids

    def memberships(self):
        return (Membership.select(Membership, Program, Agency)
                .join(Program).join(Agency)
                .where(Membership.user == self, Program.active)
                .order_by(Agency.name, Program.name))

    def roles_in(self, program):
        if program is None:
            return set()
        program_id = program if isinstance(program, int) else program.id
        cache = self.__dict__.setdefault("_roles_cache", {})
        if program_id not in cache:
            cache[program_id] = {
                m.role for m in Membership.select(Membership.role).where(
                    (Membership.user == self) & (Membership.program == program_id))}
        return cache[program_id]

    def cache_roles(self, memberships):
        """Remember the roles these membership rows give, per program (roles_in then asks
        no query for them); rows already cached stay as they are."""
        cache = self.__dict__.setdefault("_roles_cache", {})
        found = {}
        for row in memberships:
            found.setdefault(row.program_id, set()).add(row.role)
        for program_id, roles in found.items():
            cache.setdefault(program_id, roles)

    def permissions(self, program=None):
        perms = set()
        if self.is_admin:
            perms |= PERMISSIONS[ROLE_ADMIN]
        for role in self.roles_in(program):
            perms |= PERMISSIONS[role]
        return perms

    def can(self, permission, program=None):
        """Whether the user may do `permission` acting as `program` (permissions are data)."""
        return self.is_active and permission in self.permissions(program)

    def current_user_mou(self, day=None):
        day = day or local_today()
        return (UserMou.select().where((UserMou.user == self) & (UserMou.expires_on >= day))
                .order_by(UserMou.expires_on.desc()).first())


class AdminRegion(BaseModel):
    """A regional coordinator's scope; administrators without rows are statewide only
    when admin_statewide is set."""
    user = ForeignKeyField(User, backref="admin_regions", on_delete="CASCADE")
    region = ForeignKeyField(Region, on_delete="CASCADE")

    class Meta:
        indexes = ((("user", "region"), True),)


class Membership(TimestampedModel):
    user = ForeignKeyField(User, backref="membership_rows", on_delete="CASCADE")
    program = ForeignKeyField(Program, backref="memberships", on_delete="CASCADE")
    role = CharField(max_length=20, choices=[(r, ROLE_LABELS[r]) for r in MEMBER_ROLES])

    class Meta:
        indexes = ((("user", "program", "role"), True), (("program", "role"), False))


class UserSession(BaseModel):
    """Server-side session record: revoking it ends a copied cookie too (R-AUTH-6)."""
    id = CharField(primary_key=True, max_length=64)
    user = ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField(null=True)
    ip = CharField(max_length=64, default="")
    user_agent = CharField(max_length=300, default="")

    class Meta:
        indexes = ((("user", "revoked_at"), False),)


class SignInAttempt(BaseModel):
    email = CharField(max_length=254, index=True)
    ip = CharField(max_length=64, index=True)
    at = DateTimeField(default=utcnow, index=True)
    success = BooleanField(default=False)

    class Meta:
        indexes = ((("email", "at"), False), (("ip", "at"), False))


class UserMou(BaseModel):
    user = ForeignKeyField(User, backref="user_mous", on_delete="CASCADE")
    version = CharField(max_length=20, default=USER_MOU_VERSION)
    signature_name = CharField(max_length=200)
    signed_at = DateTimeField(default=utcnow)
    signed_on = DateField()
    expires_on = DateField(index=True)
    ip = CharField(max_length=64, default="")

    class Meta:
        indexes = ((("user", "expires_on"), False),)


class AgencyMou(BaseModel):
    program = ForeignKeyField(Program, backref="agency_mous", on_delete="CASCADE")
    signed_by = ForeignKeyField(User, on_delete="RESTRICT")
    version = CharField(max_length=20, default=AGENCY_MOU_VERSION)
    signature_name = CharField(max_length=200)
    signed_at = DateTimeField(default=utcnow)
    signed_on = DateField()
    expires_on = DateField(index=True)

    class Meta:
        indexes = ((("program", "expires_on"), False),)

    def state_on(self, day=None):
        day = day or local_today()
        if self.expires_on < day:
            return "expired"
        if (self.expires_on - day).days < MOU_VALID_DAYS_WARNING:
            return "expiring"
        return "signed"


class SentReminder(BaseModel):
    """Each reminder is sent once: its key is unique (R-MOU-4, R-TRACK-3)."""
    key = CharField(unique=True, max_length=200)
    created_at = DateTimeField(default=utcnow)


# ---------------------------------------------------------------------------
# Subjects (clients)
# ---------------------------------------------------------------------------

class Subject(TimestampedModel):
    first_name = CharField(max_length=100)
    last_name = CharField(max_length=100)
    middle_name = CharField(max_length=100, default="")
    dob = DateField(index=True)
    gender = CharField(max_length=60)
    race = CharField(max_length=60)
    military = CharField(max_length=60)
    address = CharField(max_length=200)
    city = CharField(max_length=100)
    county = ForeignKeyField(County, on_delete="RESTRICT")
    zip_code = CharField(max_length=10)
    phone = CharField(max_length=20, default="")  # E.164, or "" when no phone
    no_phone = BooleanField(default=False)
    other_contact = TextField(default="")
    email = CharField(max_length=200, default="")
    homeless = BooleanField(default=False)
    created_by = ForeignKeyField(User, null=True, on_delete="SET NULL")
    created_by_program = ForeignKeyField(Program, null=True, on_delete="SET NULL")
    updated_at = DateTimeField(default=utcnow)
    # Normalised, indexed forms for search and duplicate checks (R-SUBJ-1).
    first_norm = CharField(max_length=100)
    last_norm = CharField(max_length=100)
    phone_digits = CharField(max_length=20, default="", index=True)
    address_norm = CharField(max_length=200, default="")

    class Meta:
        indexes = (
            (("last_norm", "first_norm", "dob"), False),
            (("first_norm", "last_norm"), False),
        )

    def __str__(self):
        return f"{self.first_name} {self.last_name}"

    @property
    def full_name(self):
        return f"{self.first_name} {self.last_name}"

    @property
    def initials(self):
        return f"{self.first_name[:1]}. {self.last_name[:1]}.".upper()

    def fill_normalized(self):
        self.first_norm = normalize_name(self.first_name)
        self.last_norm = normalize_name(self.last_name)
        self.phone_digits = digits(self.phone)[-10:] if self.phone else ""
        self.address_norm = normalize_address(self.address)

    @classmethod
    def visible_to(cls, user, program, day=None):
        """Subjects whose details the acting program may see (R-SUBJ-6): those it added or
        matched, and those with a signed, valid ROI naming it today — a program linked
        through an ROI or a referral loses sight of the client when consent ends (R-ROI-9).
        Tested row by row (`seen_by`): instant for the profile, chart and referral lookups
        by id, where `id IN (every client of the program)` made SQLite build that whole
        set for a statewide hub (issue 6). For a scan of every visible client use
        visible_set."""
        if user.is_admin:
            return cls.select()
        if program is None:
            return cls.select().where(cls.id.is_null())
        return cls.select().where(cls.seen_by(program, day))

    @classmethod
    def visible_set(cls, user, program, day=None):
        """visible_to for a scan of all the program's visible clients (FHIR Patient search):
        the program's own links and its valid ROIs drive the lookup."""
        if user.is_admin or program is None:
            return cls.visible_to(user, program, day)
        own = SubjectLink.owned_by(program).select(SubjectLink.subject)
        consented = Roi.valid_naming(program, day).select(Roi.subject)
        return cls.select().where(cls.id.in_(own) | cls.id.in_(consented))

    @classmethod
    def seen_by(cls, program, day=None):
        """The condition of visible_to tested on each row (a correlated EXISTS per rule):
        for a few rows found otherwise, such as a name search's (R-SUBJ-6, R-ROI-9)."""
        own = SubjectLink.owned_by(program).where(SubjectLink.subject == cls.id)
        consented = Roi.valid_naming(program, day).where(Roi.subject == cls.id)
        return fn.EXISTS(own) | fn.EXISTS(consented)

    @staticmethod
    def disclosed_types(subject_id, program, day=None):
        """Information types `program` may see of a subject: everything for the program that
        added or matched the subject, else what its valid ROIs cover (empty: consent ended)."""
        if SubjectLink.owned_by(program).where(SubjectLink.subject == subject_id).exists():
            return set(INFO_TYPES)
        types = set()
        for roi in Roi.valid_for(subject_id, program, day):
            types |= roi.info_type_set
        return types


OWN_LINK_REASONS = ("created", "matched")  # the program's own client, not through an ROI


class SubjectLink(BaseModel):
    """Which programs may see a subject: creator, exact-match link (R-SUBJ-7), ROI, referral."""
    subject = ForeignKeyField(Subject, index=False, backref="links", on_delete="CASCADE")
    program = ForeignKeyField(Program, index=False, backref="subject_links", on_delete="CASCADE")
    reason = CharField(max_length=30)  # created, matched, roi, referral
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("program", "subject"), True), (("subject", "program"), False))

    @classmethod
    def owned_by(cls, program):
        """Links of the clients `program` added or matched itself (not through an ROI)."""
        return cls.select(SQL("1")).where((cls.program == program)
                                          & cls.reason.in_(OWN_LINK_REASONS))


# ---------------------------------------------------------------------------
# Releases of information
# ---------------------------------------------------------------------------

class Roi(TimestampedModel):
    subject = ForeignKeyField(Subject, index=False, backref="rois", on_delete="RESTRICT")
    program = ForeignKeyField(Program, backref="started_rois", on_delete="RESTRICT")
    created_by = ForeignKeyField(User, null=True, on_delete="SET NULL")
    state = CharField(max_length=20, default=ROI_DRAFT, index=True)
    info_types = TextField(default="")  # comma-separated INFO_TYPES codes
    authorizer_kind = CharField(max_length=20, default="client")
    authorizer_name = CharField(max_length=200, default="")
    signature_method = CharField(max_length=10, default="")
    signed_at = DateTimeField(null=True)
    signed_on = DateField(null=True)
    expires_on = DateField(null=True, index=True)  # last valid day, inclusive
    revoked_at = DateTimeField(null=True)
    revoked_by = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    revoked_reason = TextField(default="")
    reference = CharField(max_length=20, unique=True)  # printed on the Blank ROI
    # Text-message signature (R-ROI-6): code stored hashed, 12 h from the first send.
    text_phone = CharField(max_length=20, default="", index=True)
    text_state = CharField(max_length=20, default="")  # asked, replied, locked
    text_asked_at = DateTimeField(null=True)
    text_code_hash = CharField(max_length=255, default="")
    text_code_first_sent_at = DateTimeField(null=True)
    text_code_sends = IntegerField(default=0)
    text_failed_attempts = IntegerField(default=0)
    # Uploaded scan (R-ROI-7, R-SAFE-4): stored outside static folders, generated name.
    attachment_path = CharField(max_length=300, default="")
    attachment_name = CharField(max_length=255, default="")
    attachment_size = IntegerField(default=0)
    attachment_uploaded_at = DateTimeField(null=True)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("subject", "state"), False),)

    @property
    def info_type_set(self):
        return {code for code in self.info_types.split(",") if code}

    def covers(self, info_type):
        return info_type in self.info_type_set

    def effective_state(self, day=None):
        """draft, awaiting_signature, signed, revoked or expired, on `day` (local)."""
        if self.state == ROI_SIGNED and self.expires_on and self.expires_on < (day or local_today()):
            return ROI_EXPIRED
        return self.state

    def is_valid_on(self, day=None):
        return self.effective_state(day) == ROI_SIGNED

    @property
    def state_label(self):
        return ROI_STATE_LABELS[self.effective_state()]

    def program_ids(self):
        return [row.program_id for row in self.roi_programs]

    @classmethod
    def visible_to(cls, user, program):
        """ROIs the acting program may see: those it started, and signed, valid ones that name
        it (R-ROI-3); a revoked or expired ROI no longer shows the client to the programs it
        named (R-ROI-9). Administrators see all."""
        if user.is_admin and program is None:
            return cls.select()
        if program is None:
            return cls.select().where(cls.id.is_null())
        named = RoiProgram.select(RoiProgram.roi).where(RoiProgram.program == program)
        return cls.select().where((cls.program == program)
                                  | (cls.id.in_(named) & (cls.state == ROI_SIGNED)
                                     & (cls.expires_on >= local_today())))

    @classmethod
    def valid_naming(cls, program, day=None):
        """Signed, unexpired, unrevoked ROIs that name `program` (R-ROI-1), any client."""
        return (cls.select(SQL("1")).join(RoiProgram)
                .where((RoiProgram.program == program) & (cls.state == ROI_SIGNED)
                       & (cls.expires_on >= (day or local_today()))))

    @classmethod
    def valid_for(cls, subject, program, day=None):
        """Signed, unexpired, unrevoked ROIs of `subject` that name `program` (R-ROI-1)."""
        return (cls.valid_naming(program, day).select(cls).where(cls.subject == subject)
                .order_by(cls.expires_on.desc()))


class RoiProgram(BaseModel):
    roi = ForeignKeyField(Roi, index=False, backref="roi_programs", on_delete="CASCADE")
    program = ForeignKeyField(Program, index=False, backref="roi_links", on_delete="RESTRICT")

    class Meta:
        indexes = ((("roi", "program"), True), (("program", "roi"), False))


# ---------------------------------------------------------------------------
# Referrals
# ---------------------------------------------------------------------------

# index=False on a foreign key: a composite index below starts with that column already
# (one index less to write on every insert and to build at statewide scale, issue 6).
class Referral(TimestampedModel):
    subject = ForeignKeyField(Subject, index=False, backref="referrals", on_delete="RESTRICT")
    roi = ForeignKeyField(Roi, backref="referrals", on_delete="RESTRICT")
    from_program = ForeignKeyField(Program, index=False, backref="sent_referrals", on_delete="RESTRICT")
    from_agency = ForeignKeyField(Agency, index=False, backref="+", on_delete="RESTRICT")
    to_program = ForeignKeyField(Program, index=False, backref="received_referrals", on_delete="RESTRICT")
    to_agency = ForeignKeyField(Agency, index=False, backref="+", on_delete="RESTRICT")
    created_by = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    state = CharField(max_length=20, default=REFERRAL_PENDING)
    status = CharField(max_length=60, null=True)  # outcome label of R-STAT-1
    assigned_to = ForeignKeyField(User, index=False, null=True, on_delete="SET NULL", backref="+")
    answers = TextField(default="{}")  # JSON: question id -> answer
    personal_info = TextField(default="{}")  # JSON snapshot of the Personal Info tab
    insurance_confirmed = BooleanField(default=False)
    reason = TextField(default="")  # decline or withdraw reason
    sent_at = DateTimeField(null=True)
    acknowledged_at = DateTimeField(null=True)  # first assignment (time to acknowledge)
    assigned_at = DateTimeField(null=True)
    outcome_at = DateTimeField(null=True)  # first closing status (time to outcome)
    closed_at = DateTimeField(null=True)
    delayed_at = DateTimeField(null=True)  # flagged by the worker (R-TRACK-3)
    updated_at = DateTimeField(default=utcnow)
    version = IntegerField(default=0)  # conditional updates: exactly one winner

    class Meta:
        indexes = (
            (("to_program", "state", "sent_at"), False),
            (("from_program", "state", "created_at"), False),
            (("from_program", "created_at"), False),
            # The referral reports read every figure from these two (issue 6, migration 3):
            # a year of the busiest program without a single table lookup. They lead with
            # (to_program, sent_at) and (from_program, sent_at), so they also serve the
            # incoming queue's walk and the sent-date lookups (migration 4 drops the two
            # narrower indexes they replace).
            (("to_program", "sent_at", "state", "status", "delayed_at", "acknowledged_at",
              "outcome_at", "from_agency"), False),
            (("from_program", "sent_at", "to_program", "state", "status", "delayed_at",
              "acknowledged_at", "outcome_at", "to_agency"), False),
            (("assigned_to", "state", "sent_at"), False),
            (("subject", "to_program", "state"), False),
            (("to_agency", "sent_at"), False),
            (("from_agency", "sent_at"), False),
            (("state", "sent_at"), False),
        )

    @property
    def state_label(self):
        return REFERRAL_STATE_LABELS.get(self.state, self.state)

    @property
    def is_open(self):
        return self.state in OPEN_REFERRAL_STATES

    def answer_dict(self):
        return json.loads(self.answers or "{}")

    def personal_dict(self):
        return json.loads(self.personal_info or "{}")

    @classmethod
    def visible_to(cls, user, program, side=None):
        """Referrals the acting program sent or received; providers see only their own
        received ones (R-TRACK-2). The single row filter for lists, details, exports.
        side="received" or "sent": only that half (the incoming queue, the Sent list) —
        one plain predicate the planner estimates well (no OR across two indexes)."""
        return cls.select().where(cls.visible_condition(user, program, side))

    @classmethod
    def visible_condition(cls, user, program, side=None):
        """The WHERE of visible_to, to test a row in place (the reports' client names)."""
        if program is None:
            return cls.id.is_null()
        roles = user.roles_in(program)
        # Drafts are the sender's own: the receiving side never sees them.
        received = (cls.to_program == program) & cls.state.not_in(
            (REFERRAL_PENDING, REFERRAL_DISCARDED))
        if ROLE_GATEKEEPER not in roles:
            received = received & (cls.assigned_to == user)
        sent = cls.from_program == program
        if ROLE_GATEKEEPER not in roles:
            sent = sent & (cls.created_by == user)
        if side == "received":
            return received
        if side == "sent":
            return sent
        return received | sent

    def current_consent(self, day=None):
        """R-ROI-9: the ROI that still lets the receiving program see this referral, or None
        (its own ROI while valid and naming the program, else another valid one)."""
        roi = Roi.get_or_none(Roi.id == self.roi_id)
        if roi is not None and roi.is_valid_on(day) and RoiProgram.select().where(
                (RoiProgram.roi == roi) & (RoiProgram.program == self.to_program_id)).exists():
            return roi
        return Roi.valid_for(self.subject_id, self.to_program_id, day).first()

    @classmethod
    def incoming_for(cls, program):
        return cls.select().where((cls.to_program == program) & (cls.state != REFERRAL_PENDING)
                                  & (cls.state != REFERRAL_DISCARDED))

    @classmethod
    def sent_by(cls, program):
        return cls.select().where(cls.from_program == program)


class ReferralEvent(BaseModel):
    """The history of a referral: every move and status change with who and when."""
    referral = ForeignKeyField(Referral, index=False, backref="events", on_delete="CASCADE")
    at = DateTimeField(default=utcnow)
    # Not indexed: history is read per referral; users and programs are never deleted
    # (deactivated), so SET NULL never has to find these rows (issue 6: ~3 rows per referral).
    user = ForeignKeyField(User, index=False, null=True, on_delete="SET NULL", backref="+")
    program = ForeignKeyField(Program, index=False, null=True, on_delete="SET NULL", backref="+")
    kind = CharField(max_length=30)  # saved, sent, assigned, reassigned, declined, ...
    from_state = CharField(max_length=20, default="")
    to_state = CharField(max_length=20, default="")
    status = CharField(max_length=60, default="")
    detail = TextField(default="")

    class Meta:
        indexes = ((("referral", "at"), False),)


class ReferralNote(BaseModel):
    referral = ForeignKeyField(Referral, index=False, backref="notes", on_delete="CASCADE")
    author = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    program = ForeignKeyField(Program, null=True, on_delete="SET NULL", backref="+")
    kind = CharField(max_length=20, default="other")
    note_date = DateField()
    text = TextField()
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("referral", "created_at"), False),)


class ProgressEntry(BaseModel):
    referral = ForeignKeyField(Referral, index=False, backref="progress_entries", on_delete="CASCADE")
    author = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    entry_date = DateField()
    text = TextField()
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("referral", "entry_date"), False),)


# ---------------------------------------------------------------------------
# Notifications, outbox, audit
# ---------------------------------------------------------------------------

class Notification(BaseModel):
    user = ForeignKeyField(User, backref="notifications", on_delete="CASCADE")
    program = ForeignKeyField(Program, null=True, on_delete="SET NULL", backref="+")
    kind = CharField(max_length=40)
    message = CharField(max_length=500)
    link = CharField(max_length=300, default="")
    created_at = DateTimeField(default=utcnow)
    read_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("user", "read_at", "created_at"), False),)


class Outbox(BaseModel):
    """Every email and text, written in the transaction of the change that caused it."""
    channel = CharField(max_length=10)  # email, sms
    recipient = CharField(max_length=254)
    subject = CharField(max_length=300, default="")
    body = TextField()
    kind = CharField(max_length=40, default="")
    state = CharField(max_length=10, default=OUTBOX_PENDING, index=True)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow)
    last_error = TextField(default="")
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("state", "next_attempt_at"), False),)


class AuditEvent(BaseModel):
    """Append-only (triggers refuse UPDATE and DELETE): who, what, when, from where."""
    at = DateTimeField(default=utcnow, index=True)
    user = ForeignKeyField(User, null=True, on_delete="NO ACTION", backref="+")
    user_email = CharField(max_length=254, default="")
    program = ForeignKeyField(Program, null=True, on_delete="NO ACTION", backref="+")
    action = CharField(max_length=60, index=True)
    object_type = CharField(max_length=40, default="")
    object_id = CharField(max_length=40, default="")
    subject = ForeignKeyField(Subject, null=True, on_delete="NO ACTION", backref="+")
    ip = CharField(max_length=64, default="")
    outcome = CharField(max_length=20, default="ok")  # ok, denied, failed
    detail = TextField(default="")

    class Meta:
        indexes = ((("subject", "at"), False), (("user", "at"), False))


class SchemaVersion(BaseModel):
    version = IntegerField(primary_key=True)
    applied_at = DateTimeField(default=utcnow)


ALL_MODELS = [
    Region, County, Service, InsuranceType, Agency, Program, ProgramCounty, ProgramService,
    ProgramInsurance, IntakeSection, IntakeQuestion, User, AdminRegion, Membership,
    UserSession, SignInAttempt, UserMou, AgencyMou, SentReminder, Subject, SubjectLink, Roi,
    RoiProgram, Referral, ReferralEvent, ReferralNote, ProgressEntry, Notification, Outbox,
    AuditEvent, SchemaVersion,
]


# ---------------------------------------------------------------------------
# Versioned migrations: each runs once, in order, inside a transaction.
# ---------------------------------------------------------------------------

def _migration_1_initial():
    database.create_tables(ALL_MODELS, safe=True)
    _protect_audit_table()


def _protect_audit_table():
    """UPDATE and DELETE on the audit table are refused by the database itself."""
    if is_sqlite():
        for verb in ("UPDATE", "DELETE"):
            database.execute_sql(
                f"CREATE TRIGGER IF NOT EXISTS audit_event_no_{verb.lower()} "
                f"BEFORE {verb} ON audit_event BEGIN "
                f"SELECT RAISE(ABORT, 'audit_event is append-only'); END")
    else:
        database.execute_sql(
            "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'audit_event is append-only'; END $$ LANGUAGE plpgsql")
        database.execute_sql("DROP TRIGGER IF EXISTS audit_event_no_change ON audit_event")
        database.execute_sql(
            "CREATE TRIGGER audit_event_no_change BEFORE UPDATE OR DELETE ON audit_event "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only()")


# ---------------------------------------------------------------------------
# FHIR API clients (issue 8): SMART Backend Services registrations, migration 2.
# ---------------------------------------------------------------------------

class ApiClient(TimestampedModel):
    """An external system (an EHR, a case-management system) acting for one program.

    It signs its token requests with the private key of `public_key` (PEM or JWKS JSON)
    and acts through `user`, a sign-in-less account that acts as a gatekeeper of `program`
    (no Membership row, so it is never listed, notified or assigned), so the same
    permissions, row filters and audit trail apply as on the screens. Accepting a referral
    without naming a provider assigns it to `provider`, the client's designated provider."""
    client_id = CharField(unique=True, max_length=100)
    name = CharField(max_length=200)
    program = ForeignKeyField(Program, backref="api_clients", on_delete="RESTRICT")
    user = ForeignKeyField(User, backref="+", on_delete="RESTRICT")
    provider = ForeignKeyField(User, null=True, backref="+", on_delete="SET NULL")
    public_key = TextField()
    scopes = TextField(default="")  # space-separated SMART system scopes
    active = BooleanField(default=True)

    def __str__(self):
        return self.name


class ApiAssertion(BaseModel):
    """Each client assertion's jti is used once (replays refused) until it expires."""
    client = ForeignKeyField(ApiClient, backref="+", on_delete="CASCADE")
    jti = CharField(max_length=200)
    expires_at = DateTimeField(index=True)

    class Meta:
        indexes = ((("client", "jti"), True),)


class FhirSubscription(TimestampedModel):
    """An R4 rest-hook Subscription on the Tasks its client's program sees: the worker posts
    changed Tasks to `endpoint`, HMAC-signed with `secret`, retrying with back-off."""
    client = ForeignKeyField(ApiClient, backref="subscriptions", on_delete="CASCADE")
    status = CharField(max_length=10, default="active")  # active, error, off
    criteria = CharField(max_length=300)
    endpoint = CharField(max_length=500)
    secret = CharField(max_length=200)
    reason = CharField(max_length=300, default="")
    cursor = DateTimeField(default=utcnow)  # Tasks changed after this are still to send
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow, index=True)
    last_error = TextField(default="")
    updated_at = DateTimeField(default=utcnow)


API_MODELS = [ApiClient, ApiAssertion, FhirSubscription]


def _migration_2_api_clients():
    database.create_tables(API_MODELS, safe=True)


def _migration_3_report_indexes():
    """The two covering indexes of the referral reports (issue 6); every other index of
    Referral already exists, so IF NOT EXISTS makes this create just those two."""
    Referral._schema.create_indexes(safe=True)


REPLACED_INDEXES = ("referral_to_program_id_sent_at", "referral_from_program_id_sent_at")


def _migration_4_drop_replaced_indexes():
    """(to_program, sent_at) and (from_program, sent_at) are prefixes of the reports'
    covering indexes: one index fewer to write per referral and to build (issue 6)."""
    for name in REPLACED_INDEXES:
        database.execute_sql(f'DROP INDEX IF EXISTS "{name}"')


MIGRATIONS = [
    (1, _migration_1_initial),
    (2, _migration_2_api_clients),
    (3, _migration_3_report_indexes),
    (4, _migration_4_drop_replaced_indexes),
]


def migrate():
    """Create or upgrade the schema; safe to run again. Returns the versions applied."""
    database.create_tables([SchemaVersion], safe=True)
    done = {row.version for row in SchemaVersion.select()}
    applied = []
    for version, step in MIGRATIONS:
        if version in done:
            continue
        with database.atomic():
            step()
            SchemaVersion.create(version=version)
        applied.append(version)
    return applied


def count_estimate(query_model):
    """A cheap row count for 'about N rows' labels without COUNT over big tables."""
    if is_sqlite():
        row = database.execute_sql(f"SELECT MAX(id) FROM {query_model._meta.table_name}").fetchone()
        return row[0] or 0
    row = database.execute_sql(
        "SELECT reltuples::bigint FROM pg_class WHERE relname = %s",
        (query_model._meta.table_name,)).fetchone()
    return max(row[0], 0) if row else 0


# ---------------------------------------------------------------------------
# Administrator scope (accounts area): what a designated administrator manages.
# A statewide administrator manages everything; a regional coordinator the agencies,
# programs and people of their regions (AdminRegion).
# ---------------------------------------------------------------------------

def programs_managed_by(user):
    if not user.is_admin:
        return Program.select().where(Program.id.is_null())
    if user.admin_statewide:
        return Program.select()
    agencies = Agency.select(Agency.id).where(Agency.region.in_(user.admin_region_ids()))
    return Program.select().where(Program.agency.in_(agencies))


def users_managed_by(user):
    """Statewide: every account. Regional: the non-administrators of their programs."""
    if not user.is_admin:
        return User.select().where(User.id.is_null())
    if user.admin_statewide:
        return User.select()
    programs = programs_managed_by(user).select(Program.id)
    members = Membership.select(Membership.user).where(Membership.program.in_(programs))
    return User.select().where(User.id.in_(members) & ~User.is_admin)


__all__ = [name for name in dir() if not name.startswith("_")] + ["fn"]
