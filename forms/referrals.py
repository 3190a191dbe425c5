"""Referral forms: the referral itself (built per ROI and receiving program) and the
small forms of the referral page. Every form carries the referral's version, so a
resubmitted or stale form changes nothing (conditional updates in workflow.py)."""

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    HiddenField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, Optional

from models import NOTE_KINDS, STATUSES
from referral_fields import YES_NO, offered_personal, offered_sections

CHOOSE = ("", "Choose…")


class PageForm(FlaskForm):
    """Several of these share one page: the app-wide CSRFProtect checks the one
    `csrf_token` input of each form (templates add it), so ids never repeat."""

    class Meta:
        csrf = False


class VersionForm(PageForm):
    version = HiddenField(validators=[InputRequired()])


def _question_field(question):
    label = question.label
    if question.kind == "choice":
        return SelectField(label, choices=[CHOOSE] + [(c, c) for c in question.choice_list()],
                           validators=[Optional()])
    if question.kind == "yesno":
        return SelectField(label, choices=[CHOOSE, *YES_NO], validators=[Optional()])
    if question.kind == "date":
        return DateField(label, validators=[Optional()])
    return StringField(label, validators=[Optional(), Length(max=2000)])


def referral_form_class(roi, program):
    """A FlaskForm with p_<key> Personal Info fields and q_<id> intake questions."""

    class ReferralForm(PageForm):
        version = HiddenField()

    for key, label, _type, _required in offered_personal(roi):
        field = (DateField(label, validators=[Optional()]) if key == "dob"
                 else StringField(label, validators=[Optional(), Length(max=300)]))
        setattr(ReferralForm, f"p_{key}", field)
    for _section, questions in offered_sections(roi, program):
        for question in questions:
            setattr(ReferralForm, f"q_{question.id}", _question_field(question))
    return ReferralForm


class SendForm(VersionForm):
    insurance_confirmed = BooleanField(
        "I confirm that insurance will not be a barrier for the client to receive services "
        "at this program", validators=[DataRequired(message="Confirm this before sending.")])


class ReasonForm(VersionForm):
    reason = TextAreaField("Reason", validators=[DataRequired(message="Give a reason."),
                                                 Length(max=2000)])


class AssignForm(VersionForm):
    provider = SelectField("Provider", choices=[], validate_choice=False,
                           validators=[DataRequired(message="Choose a provider.")])


class ReassignForm(VersionForm):
    membership = SelectField("New provider", choices=[], validate_choice=False,
                             validators=[DataRequired(message="Choose a provider.")])


class StatusForm(VersionForm):
    status = SelectField("Referral Status", choices=[CHOOSE] + [(s, s) for s in STATUSES],
                         validators=[DataRequired(message="Choose a status.")])


class NoteForm(PageForm):
    kind = SelectField("Kind", choices=list(NOTE_KINDS.items()))
    note_date = DateField("Date", validators=[DataRequired(message="Enter the date.")])
    text = TextAreaField("Note", validators=[DataRequired(message="Write the note."),
                                             Length(max=5000)])


class ProgressForm(PageForm):
    entry_date = DateField("Progress date", validators=[DataRequired(message="Enter the date.")])
    text = TextAreaField("Progress", validators=[DataRequired(message="Describe the progress."),
                                                 Length(max=5000)])
