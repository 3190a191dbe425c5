"""The ROI wizard: Complete ROI, code entry, upload, revoke (R-ROI)."""

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, RadioField, SelectMultipleField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from models import AUTHORIZER_KINDS, INFO_TYPES


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class CompleteRoiForm(FlaskForm):
    phone = StringField("Phone (cell phone for Text Message)", validators=[Optional(), Length(max=30)])
    info_types = MultiCheckboxField("Information types", choices=list(INFO_TYPES.items()))
    authorizer_kind = RadioField("Authorization By", choices=list(AUTHORIZER_KINDS.items()),
                                 default="client")
    authorizer_name = StringField("Name of the parent, guardian or power of attorney",
                                  validators=[Optional(), Length(max=200)])
    typed_name = StringField("Type the name of the person authorizing",
                             validators=[Optional(), Length(max=200)])
    agreed = BooleanField("Yes, I agree to this release of information")


class CodeForm(FlaskForm):
    code = StringField("Security code", validators=[DataRequired(), Length(max=12)])


class UploadForm(FlaskForm):
    scan = FileField("Signed ROI scan (PDF)")


class RevokeForm(FlaskForm):
    reason = TextAreaField("Reason for revoking", validators=[DataRequired(), Length(max=2000)])
