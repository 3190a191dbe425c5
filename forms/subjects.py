"""Subject search, the two-page "Add Subject" form and the client-confirmed match (R-SUBJ)."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, HiddenField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, Optional, ValidationError

from models import GENDERS, MILITARY, NO_PHONE, RACES, County, digits
from workflow import RuleViolation, check_dob, check_zip, parse_phone

PAGE_1 = ("first_name", "middle_name", "last_name", "dob", "gender", "race", "military")
PAGE_2 = ("address", "homeless", "city", "county", "zip_code", "phone", "no_phone",
          "other_contact", "email")


def _rule(check):
    def validator(form, field):
        if field.data in (None, ""):
            return
        try:
            check(field.data)
        except RuleViolation as exc:
            raise ValidationError(exc.message) from None
    return validator


class SearchForm(FlaskForm):
    class Meta:
        csrf = False  # a GET search changes nothing

    q = StringField("Name", validators=[Optional(), Length(max=200)])
    dob = DateField("Date of birth (optional)", validators=[Optional()])


def _choices(values):
    return [("", "Choose…")] + [(v, v) for v in values]


class SubjectForm(FlaskForm):
    first_name = StringField("Legal First Name", validators=[DataRequired(), Length(max=100)])
    middle_name = StringField("Middle Name", validators=[Optional(), Length(max=100)])
    last_name = StringField("Legal Last Name", validators=[DataRequired(), Length(max=100)])
    dob = DateField("DOB", validators=[InputRequired(message="Enter the date of birth."),
                                       _rule(check_dob)])
    gender = SelectField("Current Gender Identity", choices=_choices(GENDERS),
                         validators=[DataRequired(message="Choose the current gender identity.")])
    race = SelectField("Race", choices=_choices(RACES),
                       validators=[DataRequired(message="Choose the race.")])
    military = SelectField("Military Service", choices=_choices(MILITARY),
                           validators=[DataRequired(message="Choose the military service.")])
    homeless = BooleanField("Experiencing homelessness (use the shelter's address, or leave the "
                            "address empty for 0000 Street)")
    address = StringField("Current address of residence", validators=[Length(max=200)])
    city = StringField("Current City", validators=[DataRequired(), Length(max=100)])
    county = SelectField("Current County", coerce=str,
                         validators=[DataRequired(message="Choose the current county.")])
    zip_code = StringField("Current Zip code", validators=[DataRequired(), _rule(check_zip)])
    phone = StringField("Phone", validators=[Length(max=30)])
    no_phone = BooleanField("No phone: the client has no phone, or none where they are "
                            "comfortable being contacted")
    other_contact = TextAreaField("Best other way to reach the client",
                                  validators=[Length(max=500)])
    email = StringField("Email (optional)", validators=[Optional(), Length(max=200)])
    page = HiddenField(default="1")
    confirm_new = HiddenField(default="")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.county.choices = [("", "Choose…")] + [
            (str(c.id), c.name) for c in County.select().order_by(County.name)]

    def validate_address(self, field):
        if not (field.data or "").strip() and not self.homeless.data:
            raise ValidationError("Enter the current address, or tick \"Experiencing homelessness\".")

    def without_phone(self):
        """"No phone" ticked, or the guide's (999)-999-9999 typed."""
        return bool(self.no_phone.data) or digits(self.phone.data)[-10:] == NO_PHONE

    def validate_phone(self, field):
        if self.without_phone():
            return
        if not (field.data or "").strip():
            raise ValidationError("Enter a phone number, or tick \"No phone\".")
        _rule(parse_phone)(self, field)

    def validate_other_contact(self, field):
        if self.without_phone() and not (field.data or "").strip():
            raise ValidationError("With \"No phone\", describe the best other way to reach the client.")

    def page_complete(self, names):
        """Validate only the fields of one page (the check marks of R-SUBJ-5)."""
        ok = True
        for name in names:
            field = self[name]
            extra = [getattr(type(self), f"validate_{name}")] if hasattr(self, f"validate_{name}") else []
            if not field.validate(self, extra):
                ok = False
        return ok

    def values(self):
        return {name: self[name].data for name in PAGE_1 + PAGE_2}


class LinkSubjectForm(FlaskForm):
    subject_id = HiddenField(validators=[DataRequired()])
    first_name = HiddenField(validators=[DataRequired()])
    last_name = HiddenField(validators=[DataRequired()])
    dob = HiddenField(validators=[DataRequired()])
    phone_or_address = StringField("Phone or address the client tells you",
                                   validators=[DataRequired(), Length(max=200)])
