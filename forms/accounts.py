"""Forms of the administrators' account screens and of the Agency MOU screen."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp
from wtforms.validators import ValidationError
from wtfpeewee.fields import SelectMultipleQueryField, SelectQueryField

from admin_views.base import SecureForm
from models import ROLE_LABELS, Program, Region, User

class StrictSelectMultipleQueryField(SelectMultipleQueryField):
    """A multiple choice whose every submitted id must be offered: unknown or foreign ids are
    refused with a message instead of being dropped silently."""

    def process_formdata(self, valuelist):
        super().process_formdata(valuelist)
        self._raw = [value for value in valuelist if value != ""]

    def pre_validate(self, form):
        super().pre_validate(form)
        if len(set(getattr(self, "_raw", []))) != len(self.data):
            raise ValidationError("Not a valid choice.")


ROLE_CHOICES = [("", "Choose a role"), ("gatekeeper", ROLE_LABELS["gatekeeper"]),
                ("provider", ROLE_LABELS["provider"])]
EMAIL = Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter a valid email address.")
PHONE = Regexp(r"^$|^[0-9()+\-. ]{7,30}$", message="Enter a phone number with digits only, e.g. (406) 555-0100.")
del Email  # email_validator is not installed; the pattern above is enough here


class InviteUserForm(SecureForm):
    """Create an account: the person gets an invitation email (R-AUTH-1)."""

    email = EmailField("Email", validators=[DataRequired("Enter the person's email address."),
                                            Length(max=254), EMAIL])
    name = StringField("Name", validators=[DataRequired("Enter the person's name."), Length(max=200)])
    phone = StringField("Phone", validators=[Optional(), Length(max=30), PHONE])
    program = SelectQueryField("Program", query=Program.select(), allow_blank=True,
                               blank_text="No program yet", get_label="label")
    role = SelectField("Role in the program", choices=ROLE_CHOICES, validate_choice=True, default="")
    is_admin = BooleanField("Designated administrator")
    admin_statewide = BooleanField("Statewide administrator (otherwise only the regions below)")
    regions = StrictSelectMultipleQueryField("Administrator's regions", query=Region.select())

    def validate(self, extra_validators=None):
        ok = super().validate(extra_validators)
        if self.program.data is not None and not self.role.data:
            self.role.errors.append("Choose gatekeeper or provider for this program.")
            ok = False
        if self.role.data and self.program.data is None:
            self.program.errors.append("Choose the program for this role.")
            ok = False
        return ok


class EditUserForm(SecureForm):
    name = StringField("Name", validators=[DataRequired("Enter the person's name."), Length(max=200)])
    phone = StringField("Phone", validators=[Optional(), Length(max=30), PHONE])
    is_admin = BooleanField("Designated administrator")
    admin_statewide = BooleanField("Statewide administrator (otherwise only the regions below)")
    regions = StrictSelectMultipleQueryField("Administrator's regions", query=Region.select())


class MembershipForm(SecureForm):
    """Add a role: user × program × gatekeeper/provider."""

    user = SelectQueryField("User", query=User.select())
    program = SelectQueryField("Program", query=Program.select(), get_label="label")
    role = SelectField("Role", choices=ROLE_CHOICES[1:])


class SignAgencyMouForm(FlaskForm):
    program_id = IntegerField("Program", validators=[DataRequired()])
    signature_name = StringField("Type your full name to sign",
                                 validators=[DataRequired("Type your full name to sign."), Length(max=200)])
    next = HiddenField()
