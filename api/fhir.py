"""FHIR R4 (4.0.1) for CONNECT, after the HL7 SDOH Clinical Care referral workflow.

Our rows as FHIR resources (see api/FHIR_MAPPING.md): Subject → Patient, Roi → Consent,
Referral → ServiceRequest + Task (TaskForReferralManagement), Agency → Organization,
Program → HealthcareService. Reads go through the same row filters as the screens
(Subject/Referral/Roi.visible_to) with consent checked on every read; writes go through
the workflow functions, all of one request in one transaction. Ids are our ids.
"""

import datetime as dt
import json

from peewee import fn

import workflow
from models import (
    INFO_CONTACT,
    INFO_DEMOGRAPHICS,
    INFO_HIV,
    INFO_SUBSTANCE_USE,
    INFO_TYPES,
    REDISCLOSURE_NOTICE,
    REFERRAL_ASSIGNED,
    REFERRAL_CLOSED,
    REFERRAL_DECLINED,
    REFERRAL_DISCARDED,
    REFERRAL_PENDING,
    REFERRAL_SENT,
    REFERRAL_WITHDRAWN,
    ROI_AWAITING,
    ROI_DRAFT,
    ROI_EXPIRED,
    ROI_REVOKED,
    ROI_SIGNED,
    STATUSES,
    Agency,
    County,
    Program,
    ProgramService,
    Referral,
    ReferralNote,
    Roi,
    Service,
    Subject,
    User,
    local_today,
    transaction,
)
from referral_fields import offered_personal, offered_sections, personal_from_subject
from workflow import RuleViolation, record_audit

FHIR_VERSION = "4.0.1"
JSON_TYPE = "application/fhir+json"
DEFAULT_COUNT = 50
MAX_COUNT = 200
SDOHCC = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/"
TASK_PROFILE = SDOHCC + "SDOHCC-TaskForReferralManagement"
SR_PROFILE = SDOHCC + "SDOHCC-ServiceRequest"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PROGRAM_SYSTEM = "urn:connect:program"
INFO_TYPE_SYSTEM = "urn:connect:info-type"
SERVICE_SYSTEM = "urn:connect:service"
QUESTION_SYSTEM = "urn:connect:intake-question"
TASK_INPUT_SYSTEM = "urn:connect:task-input"
INSURANCE_CONFIRMED = "insurance-confirmed"
RACE_URL = "urn:connect:race"
MILITARY_URL = "urn:connect:military"
SUCCESS = "Closed- Successful completion"
READ_TYPES = ("Patient", "Consent", "ServiceRequest", "Task", "Organization", "HealthcareService",
              "Subscription")
SEARCH_PARAMS = {
    "Patient": ("_id", "_lastUpdated"),
    "Consent": ("_id", "_lastUpdated", "patient", "status"),
    "ServiceRequest": ("_id", "_lastUpdated", "patient", "status", "requester"),
    "Task": ("_id", "_lastUpdated", "patient", "status", "owner", "requester"),
    "Organization": ("_id", "_lastUpdated"),
    "HealthcareService": ("_id", "_lastUpdated"),
    "Subscription": ("_id", "_lastUpdated"),
}
COMMON_PARAMS = ("_count", "_offset", "_format")
GENDER_TO_FHIR = {"Female": "female", "Male": "male", "Prefers not to say": "unknown"}
GENDER_FROM_FHIR = {"female": "Female", "male": "Male", "other": "Another gender identity",
                    "unknown": "Prefers not to say"}
# Information types carried as Consent security labels (R-ROI-4); HIV and substance use
# also with their HL7 sensitivity and law codes and the Restricted confidentiality.
SENSITIVE_LABELS = {
    INFO_HIV: [(ACT_CODE, "HIV", "HIV/AIDS information sensitivity")],
    INFO_SUBSTANCE_USE: [(ACT_CODE, "42CFRPart2", "42 CFR Part2"),
                         (ACT_CODE, "ETH", "substance abuse information sensitivity")],
}


class FhirError(Exception):
    """An answer as OperationOutcome: HTTP status, issue code, text for people."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def outcome(code, message, severity="error"):
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": message}]}


def violation_status(exc):
    """RuleViolation → HTTP: 404 stays, 403 → 403, validation 422, conflicts 409."""
    return exc.status_code if exc.status_code in (403, 404, 409, 422, 429) else (
        422 if exc.status_code == 400 else 409)


def instant(moment):
    return moment.replace(tzinfo=dt.timezone.utc).isoformat().replace("+00:00", "Z") if moment else None


def meta(updated, version=None, profile=None, security=None):
    data = {"lastUpdated": instant(updated)}
    if version is not None:
        data["versionId"] = str(version)
    if profile:
        data["profile"] = [profile]
    if security:
        data["security"] = security
    return data


def clean(data):
    """Drop empty values (FHIR forbids empty strings, lists and objects)."""
    if isinstance(data, dict):
        out = {k: clean(v) for k, v in data.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(data, list):
        return [v for v in (clean(x) for x in data) if v not in (None, "", [], {})]
    return data


def ref(kind, key, display=None):
    return {"reference": f"{kind}/{key}", "display": display}


# ---------------------------------------------------------------------------
# Consent on every read (R-ROI-9): what a program may see of a subject
# ---------------------------------------------------------------------------

def disclosed_types(subject_id, program):
    """Information types `program` may see of a subject (the screens' rule, models.py)."""
    return Subject.disclosed_types(subject_id, program)


# ---------------------------------------------------------------------------
# Mapping: our rows → FHIR resources
# ---------------------------------------------------------------------------

def patient_resource(subject, types):
    data = {"resourceType": "Patient", "id": str(subject.id), "meta": meta(subject.updated_at)}
    if INFO_CONTACT in types:
        data["name"] = [{"use": "official", "family": subject.last_name,
                         "given": [n for n in (subject.first_name, subject.middle_name) if n]}]
        telecom = []
        if subject.phone:
            telecom.append({"system": "phone", "value": subject.phone, "use": "mobile"})
        if subject.email:
            telecom.append({"system": "email", "value": subject.email})
        data["telecom"] = telecom
        data["address"] = [{"use": "home", "line": [subject.address], "city": subject.city,
                            "district": subject.county.name, "state": "MT",
                            "postalCode": subject.zip_code}]
    if INFO_DEMOGRAPHICS in types:
        data["birthDate"] = subject.dob.isoformat()
        data["gender"] = GENDER_TO_FHIR.get(subject.gender, "other")
        data["extension"] = [{"url": RACE_URL, "valueString": subject.race},
                             {"url": MILITARY_URL, "valueString": subject.military}]
    return clean(data)


CONSENT_STATUS = {ROI_DRAFT: "draft", ROI_AWAITING: "proposed", ROI_SIGNED: "active",
                  ROI_REVOKED: "inactive", ROI_EXPIRED: "inactive"}


def program_actor(program):
    return {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP", "display": "information recipient"}]},
            "reference": {"reference": f"Organization/{program.agency_id}",
                          "identifier": {"system": PROGRAM_SYSTEM, "value": str(program.id)},
                          "display": program.label}}


def security_labels(info_types):
    labels = []
    for code in INFO_TYPES:
        if code in info_types:
            labels.append({"system": INFO_TYPE_SYSTEM, "code": code, "display": INFO_TYPES[code]})
            labels += [{"system": s, "code": c, "display": d} for s, c, d in SENSITIVE_LABELS.get(code, ())]
    if info_types & set(SENSITIVE_LABELS):
        labels.append({"system": CONFIDENTIALITY, "code": "R", "display": "restricted"})
    return labels


def consent_resource(roi):
    state = roi.effective_state()
    programs = (Program.select(Program, Agency).join(Agency)
                .where(Program.id.in_(roi.program_ids())).order_by(Program.id))
    end = roi.expires_on
    if state == ROI_REVOKED and roi.revoked_at:
        end = roi.revoked_at.date()
    return clean({
        "resourceType": "Consent", "id": str(roi.id), "meta": meta(roi.updated_at),
        "identifier": [{"system": "urn:connect:roi", "value": roi.reference}],
        "status": CONSENT_STATUS[state],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": ref("Patient", roi.subject_id),
        "dateTime": instant(roi.signed_at),
        "organization": [ref("Organization", roi.program.agency_id, roi.program.label)],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}],
                       "text": f"Signed by {roi.authorizer_name} ({roi.authorizer_kind}), "
                               f"method {roi.signature_method or 'not yet signed'}"},
        "provision": {
            "type": "permit",
            "period": {"start": roi.signed_on.isoformat() if roi.signed_on else None,
                       "end": end.isoformat() if end and roi.signed_on else None},
            "actor": [program_actor(p) for p in programs],
            "securityLabel": security_labels(roi.info_type_set),
        },
    })


def task_status(referral):
    if referral.state == REFERRAL_ASSIGNED:
        return "in-progress" if referral.status else "accepted"
    if referral.state == REFERRAL_CLOSED:
        return "completed" if referral.status == SUCCESS else "failed"
    return {REFERRAL_PENDING: "draft", REFERRAL_SENT: "requested", REFERRAL_DECLINED: "rejected",
            REFERRAL_WITHDRAWN: "cancelled", REFERRAL_DISCARDED: "entered-in-error"}[referral.state]


SR_STATUS = {REFERRAL_PENDING: "draft", REFERRAL_SENT: "active", REFERRAL_ASSIGNED: "active",
             REFERRAL_CLOSED: "completed", REFERRAL_DECLINED: "revoked",
             REFERRAL_WITHDRAWN: "revoked", REFERRAL_DISCARDED: "entered-in-error"}
TASK_STATUS_STATES = {
    "draft": [REFERRAL_PENDING], "requested": [REFERRAL_SENT], "rejected": [REFERRAL_DECLINED],
    "cancelled": [REFERRAL_WITHDRAWN], "entered-in-error": [REFERRAL_DISCARDED],
    "accepted": [REFERRAL_ASSIGNED], "in-progress": [REFERRAL_ASSIGNED],
    "completed": [REFERRAL_CLOSED], "failed": [REFERRAL_CLOSED],
}


def _labels(program_ids):
    rows = Program.select(Program, Agency).join(Agency).where(Program.id.in_(list(program_ids)))
    return {p.id: p.label for p in rows}


def task_resource(referral):
    labels = _labels({referral.from_program_id, referral.to_program_id})
    notes = (ReferralNote.select(ReferralNote, User).join(User, on=(ReferralNote.author == User.id))
             .where(ReferralNote.referral == referral).order_by(ReferralNote.created_at))
    data = {
        "resourceType": "Task", "id": str(referral.id),
        "meta": meta(referral.updated_at, referral.version, TASK_PROFILE),
        "status": task_status(referral),
        "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code",
                             "code": "fulfill", "display": "Fulfill the focal request"}]},
        "focus": ref("ServiceRequest", referral.id),
        "for": ref("Patient", referral.subject_id),
        "authoredOn": instant(referral.sent_at or referral.created_at),
        "lastModified": instant(referral.updated_at),
        "requester": ref("Organization", referral.from_agency_id, labels.get(referral.from_program_id)),
        "owner": ref("HealthcareService", referral.to_program_id, labels.get(referral.to_program_id)),
        "note": [{"authorString": f"{n.author.name}", "time": instant(n.created_at),
                  "text": f"{n.note_date.isoformat()}: {n.text}"} for n in notes],
    }
    if referral.status:
        data["businessStatus"] = {"text": referral.status}
    if referral.state in (REFERRAL_DECLINED, REFERRAL_WITHDRAWN) and referral.reason:
        data["statusReason"] = {"text": referral.reason}
    return clean(data)


def _services_of(program_id):
    return list(Service.select().join(ProgramService).where(ProgramService.program == program_id)
                .order_by(Service.name))


def service_request_resource(referral, receiving):
    """The referral; its content (Personal Info, intake answers) only as far as the ROI
    covers, and for the receiving program only while consent is valid (R-ROI-4, R-ROI-9)."""
    roi = referral.current_consent() if receiving else Roi.get_or_none(Roi.id == referral.roi_id)
    services = _services_of(referral.to_program_id)
    labels = _labels({referral.from_program_id, referral.to_program_id})
    notes, security = [], []
    if roi is None:
        notes.append({"text": "Consent for this referral has ended: its content is not disclosed."})
    else:
        personal = referral.personal_dict()
        lines = [f"{label}: {personal[key]}" for key, label, _t, _r in offered_personal(roi)
                 if personal.get(key)]
        answers = referral.answer_dict()
        part2 = False
        for section, questions in offered_sections(roi, referral.to_program_id):
            for q in questions:
                if answers.get(str(q.id)):
                    lines.append(f"{section.title} / {q.label}: {answers[str(q.id)]}")
                    part2 = part2 or q.info_type == INFO_SUBSTANCE_USE
        if lines:
            notes.append({"text": "\n".join(lines)})
        if part2:
            notes.append({"text": REDISCLOSURE_NOTICE})
            security = [{"system": ACT_CODE, "code": "42CFRPart2"},
                        {"system": CONFIDENTIALITY, "code": "R"}]
    return clean({
        "resourceType": "ServiceRequest", "id": str(referral.id),
        "meta": meta(referral.updated_at, referral.version, SR_PROFILE, security),
        "status": SR_STATUS[referral.state], "intent": "order",
        "category": [{"coding": [{"system": SERVICE_SYSTEM + ":category", "code": c, "display": c}]}
                     for c in sorted({s.category for s in services})],
        "code": {"coding": [{"system": SERVICE_SYSTEM, "code": s.code or s.name, "display": s.name}
                            for s in services], "text": ", ".join(s.name for s in services)},
        "subject": ref("Patient", referral.subject_id),
        "authoredOn": instant(referral.sent_at or referral.created_at),
        "requester": ref("Organization", referral.from_agency_id, labels.get(referral.from_program_id)),
        "performer": [ref("HealthcareService", referral.to_program_id, labels.get(referral.to_program_id))],
        "supportingInfo": [ref("Consent", roi.id)] if roi is not None else [],
        "note": notes,
    })


def telecom(row):
    items = []
    if row.phone:
        items.append({"system": "phone", "value": row.phone, "use": "work"})
    if row.email:
        items.append({"system": "email", "value": row.email, "use": "work"})
    if row.website:
        items.append({"system": "url", "value": row.website, "use": "work"})
    return items


def address(row):
    return [{"line": [row.address] if row.address else [], "city": row.city,
             "postalCode": row.zip_code, "state": "MT"}]


def organization_resource(agency):
    return clean({"resourceType": "Organization", "id": str(agency.id), "meta": meta(agency.created_at),
                  "active": agency.active, "name": agency.name, "telecom": telecom(agency),
                  "address": address(agency)})


def healthcare_service_resource(program):
    services = _services_of(program.id)
    return clean({
        "resourceType": "HealthcareService", "id": str(program.id), "meta": meta(program.updated_at),
        "identifier": [{"system": PROGRAM_SYSTEM, "value": str(program.id)}],
        "active": program.active, "providedBy": ref("Organization", program.agency_id, program.agency.name),
        "category": [{"coding": [{"system": SERVICE_SYSTEM + ":category", "code": c, "display": c}]}
                     for c in sorted({s.category for s in services})],
        "type": [{"coding": [{"system": SERVICE_SYSTEM, "code": s.code or s.name, "display": s.name}]}
                 for s in services],
        "name": program.name, "comment": program.description, "telecom": telecom(program),
        "program": [{"text": program.label}],
        "appointmentRequired": False,
        "availabilityExceptions": program.hours,
    })


# ---------------------------------------------------------------------------
# Reads and searches, limited to the calling program
# ---------------------------------------------------------------------------

def _int_id(raw):
    try:
        value = int(str(raw))
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 2 ** 63 else None


def _reference_id(value, *kinds):
    """`Task/5`, `5` or a full URL ending in Kind/5 → 5 (None when malformed)."""
    text = str(value or "").rstrip("/")
    parts = text.split("/")
    if len(parts) >= 2 and parts[-2] in kinds:
        return parts[-2], _int_id(parts[-1])
    return (kinds[0] if kinds else None), _int_id(text)


def directory_programs(actor):
    return (Program.select(Program, Agency).join(Agency)
            .where((Program.active & (Program.mou_valid_until >= local_today()))
                   | (Program.id == actor.program_id)))


def base_query(actor, kind):
    user, program = actor.user, actor.program
    if kind == "Patient":
        return Subject.visible_set(user, program), Subject, Subject.updated_at
    if kind == "Consent":
        return Roi.visible_to(user, program), Roi, Roi.updated_at
    if kind in ("Task", "ServiceRequest"):
        return Referral.visible_to(user, program), Referral, Referral.updated_at
    if kind == "HealthcareService":
        return directory_programs(actor), Program, Program.updated_at
    if kind == "Subscription":
        from api.fhir_subscriptions import visible
        from models import FhirSubscription
        return visible(actor), FhirSubscription, FhirSubscription.updated_at
    if kind == "Organization":
        agencies = directory_programs(actor).select(Program.agency)
        return Agency.select().where(Agency.id.in_(agencies)), Agency, Agency.created_at
    raise FhirError(404, "not-supported", f"The resource type {kind} is not supported.")


def _date_filter(column, value):
    prefix, text = value[:2], value[2:]
    if prefix not in ("ge", "gt", "le", "lt", "eq"):
        prefix, text = "eq", value
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, "invalid", f"_lastUpdated must be a date or instant, e.g. "
                        f"ge2026-01-01T00:00:00Z (got {value!r}).") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return {"ge": column >= moment, "gt": column > moment, "le": column <= moment,
            "lt": column < moment, "eq": column == moment}[prefix]


def _filter(query, model, kind, name, value, updated):
    if name == "_id":
        ids = [_int_id(v) for v in value.split(",")]
        return query.where(model.id.in_([i for i in ids if i]))
    if name == "_lastUpdated":
        return query.where(_date_filter(updated, value))
    if name == "patient":
        _kind, key = _reference_id(value, "Patient")
        column = Roi.subject if model is Roi else Referral.subject
        return query.where(column == (key or 0))
    if name == "status":
        wanted = value.split(",")
        if model is Roi:
            states = {s for s, code in CONSENT_STATUS.items() if code in wanted and s != ROI_EXPIRED}
            clause = model.state.in_(list(states) or [""])
            if "inactive" in wanted:
                clause = clause | ((model.state == ROI_SIGNED) & (model.expires_on < local_today()))
            elif "active" in wanted:
                clause = clause & (model.expires_on >= local_today())
            return query.where(clause)
        if kind == "ServiceRequest":
            states = [s for s, code in SR_STATUS.items() if code in wanted]
            return query.where(Referral.state.in_(states or [""]))
        clauses = []
        for code in wanted:
            for state in TASK_STATUS_STATES.get(code, []):
                clause = Referral.state == state
                if code == "accepted":
                    clause = clause & Referral.status.is_null()
                elif code == "in-progress":
                    clause = clause & Referral.status.is_null(False)
                elif code == "completed":
                    clause = clause & (Referral.status == SUCCESS)
                elif code == "failed":
                    clause = clause & (fn.COALESCE(Referral.status, "") != SUCCESS)
                clauses.append(clause)
        if not clauses:
            return query.where(Referral.id.is_null())
        combined = clauses[0]
        for clause in clauses[1:]:
            combined = combined | clause
        return query.where(combined)
    if name in ("owner", "requester"):
        kind_name, key = _reference_id(value, "HealthcareService", "Organization")
        if name == "owner":
            column = Referral.to_agency if kind_name == "Organization" else Referral.to_program
        else:
            column = Referral.from_agency if kind_name == "Organization" else Referral.from_program
        return query.where(column == (key or 0))
    raise FhirError(400, "not-supported", f"The search parameter {name} is not supported for {kind}.")


def to_resource(actor, kind, row):
    """The resource for one visible row, with the consent check of R-ROI-9; None when
    consent no longer lets the program see it."""
    if kind == "Patient":
        types = disclosed_types(row.id, actor.program) if not actor.user.is_admin else set(INFO_TYPES)
        return patient_resource(row, types) if types else None
    if kind == "Consent":
        return consent_resource(row)
    if kind == "Task":
        return task_resource(row)
    if kind == "ServiceRequest":
        return service_request_resource(row, receiving=row.to_program_id == actor.program_id
                                        and row.from_program_id != actor.program_id)
    if kind == "Organization":
        return organization_resource(row)
    if kind == "Subscription":
        from api.fhir_subscriptions import subscription_resource
        return subscription_resource(row)
    return healthcare_service_resource(row)


def _subject_of(kind, row):
    if kind == "Patient":
        return row.id
    if kind in ("Consent", "Task", "ServiceRequest"):
        return row.subject_id
    return None


def read(actor, kind, raw_id):
    """One resource; another program's id answers like a missing one, and is audited."""
    query, model, _updated = base_query(actor, kind)
    key = _int_id(raw_id)
    row = query.where(model.id == key).first() if key else None
    resource = to_resource(actor, kind, row) if row is not None else None
    if resource is None:
        workflow.audit_denial(actor, f"fhir_read_{kind}", detail=f"{kind}/{raw_id}"[:200],
                              subject=_subject_of(kind, row) if row is not None else None)
        raise FhirError(404, "not-found", f"{kind}/{raw_id} was not found.")
    with transaction():
        record_audit(actor, f"fhir_read_{kind}", row, subject=_subject_of(kind, row))
    return resource


def search(actor, kind, args, base_url):
    """A searchset Bundle (paged with _count and _offset; next/previous links)."""
    query, model, updated = base_query(actor, kind)
    for name in args:
        if name not in SEARCH_PARAMS[kind] + COMMON_PARAMS:
            raise FhirError(400, "not-supported", f"The search parameter {name} is not supported "
                            f"for {kind}; supported: {', '.join(SEARCH_PARAMS[kind] + ('_count',))}.")
        for value in args.getlist(name):
            if name not in COMMON_PARAMS:
                query = _filter(query, model, kind, name, value, updated)
    try:
        count = min(max(int(args.get("_count", DEFAULT_COUNT)), 0), MAX_COUNT)
        offset = max(int(args.get("_offset", 0)), 0)
    except ValueError:
        raise FhirError(400, "invalid", "_count and _offset must be whole numbers.") from None
    total = query.count()
    rows = list(query.order_by(updated.desc(), model.id.desc()).offset(offset).limit(count))
    entries = []
    with transaction():
        for row in rows:
            resource = to_resource(actor, kind, row)
            if resource is None:
                record_audit(actor, f"fhir_search_{kind}", row, subject=_subject_of(kind, row),
                             outcome="denied", detail="consent ended")
                continue
            if _subject_of(kind, row) is not None:
                record_audit(actor, f"fhir_search_{kind}", row, subject=_subject_of(kind, row))
            entries.append({"fullUrl": f"{base_url}/{kind}/{row.id}", "resource": resource,
                            "search": {"mode": "match"}})
        record_audit(actor, f"fhir_search_{kind}", detail=_query_string(args)[:500])
    links = [{"relation": "self", "url": _page_url(base_url, kind, args, offset, count)}]
    if offset + count < total and count:
        links.append({"relation": "next", "url": _page_url(base_url, kind, args, offset + count, count)})
    if offset > 0:
        links.append({"relation": "previous",
                      "url": _page_url(base_url, kind, args, max(offset - count, 0), count)})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle


def _query_string(args, **override):
    from urllib.parse import urlencode
    items = [(k, v) for k in args for v in args.getlist(k) if k not in override and k != "_offset"]
    items += [(k, v) for k, v in override.items()]
    return urlencode(items)


def _page_url(base_url, kind, args, offset, count):
    extra = {"_count": str(count)}
    if offset:
        extra["_offset"] = str(offset)
    return f"{base_url}/{kind}?{_query_string(args, **extra)}"


# ---------------------------------------------------------------------------
# Writes: a transaction Bundle (a referral from an EHR) and Task updates
# ---------------------------------------------------------------------------

def _bad(message):
    raise FhirError(422, "invalid", message)


def _identifier_program(reference):
    """A program named by a Reference: HealthcareService/ID or identifier urn:connect:program."""
    reference = reference or {}
    ident = reference.get("identifier") or {}
    if ident.get("system") == PROGRAM_SYSTEM:
        return _int_id(ident.get("value"))
    kind, key = _reference_id(reference.get("reference"), "HealthcareService")
    return key if kind == "HealthcareService" else None


def subject_values(patient):
    """Patient JSON → the fields of Add Subject (validated by workflow.clean_subject_fields)."""
    name = (patient.get("name") or [{}])[0]
    given = name.get("given") or []
    addr = (patient.get("address") or [{}])[0]
    phones = [t.get("value") for t in patient.get("telecom") or [] if t.get("system") == "phone"]
    emails = [t.get("value") for t in patient.get("telecom") or [] if t.get("system") == "email"]
    extensions = {e.get("url"): e.get("valueString") for e in patient.get("extension") or []}
    county = County.get_or_none(fn.LOWER(County.name) == str(addr.get("district") or "").strip().lower())
    try:
        dob = dt.date.fromisoformat(str(patient.get("birthDate") or ""))
    except ValueError:
        dob = None
    values = {
        "first_name": given[0] if given else "", "middle_name": " ".join(given[1:]),
        "last_name": name.get("family") or "", "dob": dob,
        "gender": GENDER_FROM_FHIR.get(patient.get("gender"), ""),
        "race": extensions.get(RACE_URL) or "Prefers not to say",
        "military": extensions.get(MILITARY_URL) or "Prefers not to say",
        "address": " ".join(addr.get("line") or []), "city": addr.get("city") or "",
        "county": county.id if county else None, "zip_code": addr.get("postalCode") or "",
        "email": emails[0] if emails else "",
    }
    if phones:
        values["phone"] = phones[0]
    else:
        values["no_phone"] = True
        values["other_contact"] = f"Email: {emails[0]}" if emails else ""
    return values


def consent_info_types(consent):
    """Information types named by the Consent's security labels (R-ROI-4)."""
    provision = consent.get("provision") or {}
    codes = set()
    for label in provision.get("securityLabel") or []:
        if label.get("system") == INFO_TYPE_SYSTEM and label.get("code") in INFO_TYPES:
            codes.add(label["code"])
        elif label.get("code") == "HIV":
            codes.add(INFO_HIV)
        elif label.get("code") in ("ETH", "42CFRPart2"):
            codes.add(INFO_SUBSTANCE_USE)
    return codes


def _entries(bundle):
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        _bad("POST /fhir takes a Bundle of type transaction.")
    if bundle.get("type") != "transaction":
        _bad("Only Bundle.type = transaction is supported.")
    entries = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        method = (entry.get("request") or {}).get("method")
        if method != "POST":
            _bad("Every entry of the transaction must be a POST (create).")
        entries.append((entry.get("fullUrl") or "", resource))
    by_type = {}
    for full_url, resource in entries:
        by_type.setdefault(resource.get("resourceType"), []).append((full_url, resource))
    unknown = set(by_type) - {"Patient", "Consent", "ServiceRequest", "Task"}
    if unknown or any(len(v) > 1 for v in by_type.values()):
        _bad("A referral transaction holds one Task, one ServiceRequest, optionally one Patient "
             "and one Consent (nothing else).")
    if "Task" not in by_type or "ServiceRequest" not in by_type:
        _bad("A referral transaction needs a ServiceRequest and a Task.")
    return entries, {k: v[0] for k, v in by_type.items()}


def _task_inputs(task):
    answers, insurance = {}, False
    for item in task.get("input") or []:
        for coding in (item.get("type") or {}).get("coding") or []:
            if coding.get("system") == QUESTION_SYSTEM:
                value = item.get("valueString", item.get("valueBoolean"))
                if isinstance(value, bool):
                    value = "yes" if value else "no"
                answers[str(coding.get("code"))] = value
            elif coding.get("system") == TASK_INPUT_SYSTEM and coding.get("code") == INSURANCE_CONFIRMED:
                insurance = item.get("valueBoolean") is True
    return answers, insurance


def post_referral(actor, bundle):
    """An EHR's referral: Patient (matched by the duplicate rule, else added), Consent
    (a signed ROI naming the receiving program, method "api"), ServiceRequest + Task →
    a sent referral (workflow.send_referral). All or nothing. Returns the response Bundle."""
    entries, found = _entries(bundle)
    task = found["Task"][1]
    service_request = found["ServiceRequest"][1]
    to_id = _identifier_program(task.get("owner")) or _identifier_program(
        (service_request.get("performer") or [None])[0])
    to_program = Program.get_or_none(Program.id == to_id) if to_id else None
    if to_program is None:
        _bad("Task.owner must name the receiving program as HealthcareService/{id} "
             "(see GET /fhir/HealthcareService).")
    if task.get("status") not in (None, "requested"):
        _bad("A new referral Task has status requested.")
    answers, insurance = _task_inputs(task)
    results = {}
    with transaction():
        if "Patient" in found:
            subject, how = workflow.create_subject(actor, subject_values(found["Patient"][1]))
            results["Patient"] = (subject.id, "201 Created" if how == "created" else "200 OK")
        else:
            _kind, key = _reference_id((task.get("for") or {}).get("reference"), "Patient")
            subject = Subject.visible_to(actor.user, actor.program).where(Subject.id == (key or 0)).first()
            if subject is None:
                raise FhirError(404, "not-found", "Task.for names a Patient that was not found; "
                                "include the Patient in the transaction.")
            results["Patient"] = (subject.id, "200 OK")
        if "Consent" in found:
            consent = found["Consent"][1]
            if consent.get("status") != "active":
                _bad("The Consent must be active (signed by the client) to send a referral.")
            named = {_identifier_program(a.get("reference"))
                     for a in (consent.get("provision") or {}).get("actor") or []}
            if to_program.id not in named:
                _bad("The Consent must name the receiving program among its provision actors (R-ROI-1).")
            named.discard(None)
            roi = workflow.start_roi(actor, subject, sorted(named))
            performer = (consent.get("performer") or [{}])[0].get("display") or ""
            workflow.complete_roi(actor, roi, consent_info_types(consent),
                                  "client" if not performer else "guardian", performer)
            roi = workflow.sign_roi_by_api(actor, Roi.get_by_id(roi.id))
            results["Consent"] = (roi.id, "201 Created")
        roi = workflow.roi_for_referral(subject, actor.program, to_program)
        if roi is None:
            raise RuleViolation("There is no signed, valid ROI naming the receiving program for "
                                "this client: include an active Consent (R-ROI-1).", 409)
        personal = personal_from_subject(subject, roi)
        draft = workflow.save_referral_draft(actor, subject, to_program, personal, answers)
        referral = workflow.send_referral(actor, draft, draft.version, insurance)
        results["ServiceRequest"] = (referral.id, "201 Created")
        results["Task"] = (referral.id, "201 Created")
        results.setdefault("Consent", (referral.roi_id, "200 OK"))
    response = []
    for _url, resource in entries:
        kind = resource["resourceType"]
        key, status = results[kind]
        response.append({"response": {"status": status, "location": f"{kind}/{key}"}})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": response}, referral


def _provider_for(actor, referral, owner, client):
    """The provider an accepting system names by email in Task.owner.identifier, else the
    client's designated provider (ApiClient.provider); neither: 422."""
    email = str(((owner or {}).get("identifier") or {}).get("value") or "").strip().lower()
    if "@" in email:
        row = workflow._program_staff(referral.to_program_id).where(User.email == email).first()
        if row is None:
            _bad(f"Task.owner names {email}, who is not a provider of this program.")
        return row.id
    if client is not None and client.provider_id:
        return client.provider_id
    _bad("Name the provider who takes the referral: Task.owner.identifier.value = their email "
         "(this client has no designated provider).")


def update_task(actor, raw_id, body, if_match=None, partial=False):
    """A receiving (or sending) system updates its Task: accept (assign), reject with
    statusReason, businessStatus (an R-STAT-1 label), new notes, or cancel (withdraw).
    All changes of one request in one transaction."""
    if not isinstance(body, dict) or body.get("resourceType", "Task") != "Task":
        _bad("The body must be a Task.")
    key = _int_id(raw_id)
    referral = Referral.visible_to(actor.user, actor.program).where(Referral.id == (key or 0)).first()
    if referral is None:
        workflow.audit_denial(actor, "fhir_update_Task", detail=f"Task/{raw_id}"[:200])
        raise FhirError(404, "not-found", f"Task/{raw_id} was not found.")
    if if_match:
        wanted = if_match.replace("W/", "").strip('"')
        if wanted != str(referral.version):
            raise FhirError(412, "conflict", "The Task changed since you read it (version "
                            f"{referral.version}); read it again.")
    if not partial and body.get("id") not in (None, str(referral.id)):
        _bad("Task.id must match the URL.")
    status = body.get("status")
    reason = ((body.get("statusReason") or {}).get("text") or "").strip()
    business = ((body.get("businessStatus") or {}).get("text") or "").strip()
    if business and business not in STATUSES:
        _bad("businessStatus.text must be one of the statuses: " + "; ".join(STATUSES) + ".")
    known = {(n.get("text") or "") for n in task_resource(referral).get("note", [])}
    new_notes = [n for n in body.get("note") or [] if (n.get("text") or "") not in known]
    current = task_status(referral)
    with transaction():
        if status and status != current:
            if status in ("accepted", "in-progress") and referral.state == REFERRAL_SENT:
                workflow.assign_referral(actor, referral, _provider_for(actor, referral, body.get("owner"),
                                                       getattr(actor, "api_client", None)),
                                         referral.version)
            elif status == "rejected":
                workflow.decline_referral(actor, referral, referral.version, reason)
            elif status == "cancelled":
                workflow.withdraw_referral(actor, referral, referral.version, reason)
            elif status in ("completed", "failed") and business:
                pass  # the status label below closes it
            elif status in ("in-progress",) and business:
                pass
            else:
                raise RuleViolation(f"A Task cannot go from {current} to {status} here.", 409)
        referral = Referral.get_by_id(referral.id)
        if business and business != referral.status:
            workflow.set_referral_status(actor, referral, business, referral.version)
            referral = Referral.get_by_id(referral.id)
            wanted = status if status in ("completed", "failed") else None
            if wanted and task_status(referral) != wanted:
                raise RuleViolation(f"The status \u201c{business}\u201d makes the Task "
                                    f"{task_status(referral)}, not {wanted}.", 422)
        for note in new_notes:
            text = (note.get("text") or "").strip()
            day = (note.get("time") or "")[:10] or local_today().isoformat()
            workflow.add_referral_note(actor, referral, "other", day, text)
        referral = Referral.get_by_id(referral.id)
    return task_resource(referral)


# ---------------------------------------------------------------------------
# CapabilityStatement
# ---------------------------------------------------------------------------

def capability_statement(base_url):
    search_docs = {
        "_id": "token", "_lastUpdated": "date", "patient": "reference", "status": "token",
        "owner": "reference", "requester": "reference",
    }
    resources = []
    for kind in READ_TYPES:
        interactions = [{"code": "read"}, {"code": "search-type"}]
        if kind == "Task":
            interactions += [{"code": "update"}, {"code": "patch"}]
        item = {"type": kind, "interaction": interactions,
                "searchParam": [{"name": p, "type": search_docs[p]} for p in SEARCH_PARAMS[kind]]
                + [{"name": "_count", "type": "number"}]}
        if kind == "Task":
            item["supportedProfile"] = [TASK_PROFILE]
            item["documentation"] = (
                "PUT/PATCH: status accepted (assign; Task.owner.identifier = a provider's email, "
                "else the client's account), rejected + statusReason, cancelled + statusReason "
                "(the sender), businessStatus.text = an outcome status label, new note entries.")
        if kind == "ServiceRequest":
            item["supportedProfile"] = [SR_PROFILE]
        if kind == "Subscription":
            item["interaction"].append({"code": "create"})
            item["documentation"] = (
                "criteria \"Task\", channel rest-hook (http(s) endpoint, application/fhir+json), "
                "extension urn:connect:hmac-secret (16+ characters): changed Tasks are POSTed "
                "as a history Bundle signed in the X-Connect-Signature header (sha256=HMAC).")
        resources.append(item)
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-23",
        "kind": "instance", "fhirVersion": FHIR_VERSION, "format": ["json"],
        "publisher": "CONNECT",
        "implementation": {"description": "CONNECT referral network FHIR API", "url": base_url},
        "software": {"name": "CONNECT"},
        "rest": [{
            "mode": "server",
            "documentation": "Every call acts for the program of the registered client and sees "
                             "only what that program sees on the screens.",
            "security": {
                "cors": False,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
                "description": "SMART Backend Services: client_credentials with a JWT assertion "
                               "signed RS384 or ES384; bearer tokens valid 5 minutes.",
                "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                               "extension": [{"url": "token", "valueUri": f"{base_url}/token"}]}],
            },
            "resource": resources,
            "interaction": [{"code": "transaction",
                             "documentation": "A referral: Patient, Consent, ServiceRequest, Task."}],
        }],
    }


def dumps(data):
    return json.dumps(data, ensure_ascii=False)
