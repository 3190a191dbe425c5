"""What a referral form asks (R-SEND-2): the "Personal Info" fields and the receiving
program's intake questions, limited to the information types the client's ROI covers.

Pure functions over models: the form builder, the workflow and the referral page all use
them, so a field the ROI does not cover is never offered, stored nor shown.
"""

import datetime as dt

from models import INFO_CONTACT, INFO_DEMOGRAPHICS, IntakeQuestion, IntakeSection

# (key, label, information type, required) of the "Personal Info" section.
PERSONAL_FIELDS = (
    ("first_name", "Legal first name", INFO_CONTACT, True),
    ("last_name", "Legal last name", INFO_CONTACT, True),
    ("phone", "Phone", INFO_CONTACT, False),
    ("email", "Email", INFO_CONTACT, False),
    ("address", "Current address", INFO_CONTACT, False),
    ("city", "City", INFO_CONTACT, False),
    ("zip_code", "Zip code", INFO_CONTACT, False),
    ("other_contact", "Best other contact method", INFO_CONTACT, False),
    ("dob", "Date of birth", INFO_DEMOGRAPHICS, True),
    ("gender", "Current gender identity", INFO_DEMOGRAPHICS, False),
    ("race", "Race", INFO_DEMOGRAPHICS, False),
    ("military", "Military service", INFO_DEMOGRAPHICS, False),
)
PERSONAL_TITLE = "Personal Info"
YES_NO = (("yes", "Yes"), ("no", "No"))


def offered_personal(roi):
    """The Personal Info fields whose information type the ROI covers."""
    covered = roi.info_type_set if roi is not None else set()
    return [f for f in PERSONAL_FIELDS if f[2] in covered]


def personal_from_subject(subject, roi):
    """Prefill of Personal Info from the subject, only the covered fields."""
    values = {}
    for key, _label, _type, _required in offered_personal(roi):
        value = getattr(subject, key, "")
        values[key] = value.isoformat() if isinstance(value, dt.date) else (value or "")
    return values


def offered_sections(roi, program):
    """[(section, [questions offered])] of the receiving program; a question whose
    information type the ROI does not cover is left out, and so are emptied sections."""
    covered = roi.info_type_set if roi is not None else set()
    program_id = program if isinstance(program, int) else program.id
    sections = list(IntakeSection.select().where(IntakeSection.program == program_id)
                    .order_by(IntakeSection.position, IntakeSection.id))
    questions = {}
    if sections:
        for q in (IntakeQuestion.select().where(IntakeQuestion.section.in_([s.id for s in sections]))
                  .order_by(IntakeQuestion.position, IntakeQuestion.id)):
            if q.info_type in covered:
                questions.setdefault(q.section_id, []).append(q)
    return [(s, questions[s.id]) for s in sections if s.id in questions]


def clean_personal(values, roi):
    """Only covered Personal Info keys, as trimmed text."""
    values = values or {}
    return {key: str(values.get(key) or "").strip()[:300] for key, *_ in offered_personal(roi)}


def clean_answer(question, value):
    """One answer checked against its kind; '' when empty. Raises ValueError when bad."""
    value = str(value or "").strip()
    if not value:
        return ""
    if question.kind == "choice" and value not in question.choice_list():
        raise ValueError(f"Choose one of the listed answers for \u201c{question.label}\u201d.")
    if question.kind == "yesno" and value not in dict(YES_NO):
        raise ValueError(f"Answer Yes or No for \u201c{question.label}\u201d.")
    if question.kind == "date":
        try:
            value = dt.date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError(f"Enter a date for \u201c{question.label}\u201d.") from None
    return value[:2000]


def clean_answers(values, roi, program):
    """Answers to offered questions only (keys are question ids as text)."""
    from workflow import RuleViolation
    values = values or {}
    clean, problems = {}, []
    for _section, questions in offered_sections(roi, program):
        for q in questions:
            try:
                answer = clean_answer(q, values.get(str(q.id)))
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if answer:
                clean[str(q.id)] = answer
    if problems:
        raise RuleViolation(" ".join(problems), 422)
    return clean


def completeness(personal, answers, roi, program):
    """[(title, complete?)] per section: every required field answered (R-SEND-2 marks)."""
    marks = [(PERSONAL_TITLE, all(personal.get(key) for key, _l, _t, required in offered_personal(roi)
                                  if required))]
    for section, questions in offered_sections(roi, program):
        marks.append((section.title, all(answers.get(str(q.id)) for q in questions if q.required)))
    return marks


def missing_required(referral, roi):
    """Labels of required fields still empty, checked at sending."""
    personal, answers = referral.personal_dict(), referral.answer_dict()
    missing = [label for key, label, _t, required in offered_personal(roi)
               if required and not personal.get(key)]
    for _section, questions in offered_sections(roi, referral.to_program_id):
        missing += [q.label for q in questions if q.required and not answers.get(str(q.id))]
    return missing
