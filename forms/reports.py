"""Report filter forms. Reports only read, so these are GET forms (no CSRF token needed):
the query string is the report, a link to it reruns it."""

import datetime as dt

from wtforms import DateField, Form, SelectField, SelectMultipleField, widgets
from wtforms.validators import Optional, ValidationError

from models import local_today


class MultiCheckboxField(SelectMultipleField):
    """Checkboxes, each with its own <label for> (R-UX-1)."""

    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


def _int_or_none(value):
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class BlankRoiForm(Form):
    regions = MultiCheckboxField("Regions", coerce=int)


class ProgramFilterForm(Form):
    """The five filters of the Agencies Report and the public directory (R-RPT-2, R-NET-2)."""

    region = SelectField("Region", coerce=_int_or_none, validators=[Optional()])
    county = SelectField("County", coerce=_int_or_none, validators=[Optional()])
    service = SelectField("Service", coerce=_int_or_none, validators=[Optional()])
    insurance = SelectField("Insurance type", coerce=_int_or_none, validators=[Optional()])
    agency = SelectField("Agency", coerce=_int_or_none, validators=[Optional()])

    def fill(self, choices):
        for name, options in choices.items():
            label = getattr(self, name).label.text.lower()
            getattr(self, name).choices = [(None, f"Any {label}")] + list(options)
        return self


class ReferralReportForm(Form):
    scope = SelectField("Program or agency", validators=[Optional()])
    start = DateField("From", validators=[Optional()])
    end = DateField("To", validators=[Optional()])
    status = SelectField("Status", validators=[Optional()])
    agencies = SelectMultipleField("Agencies", coerce=int, validators=[Optional()])

    def validate_end(self, field):
        if self.start.data and field.data and field.data < self.start.data:
            raise ValidationError("The end of the period is before its start.")
        if self.start.data and field.data and (field.data - self.start.data).days > 3660:
            raise ValidationError("Choose a period of at most ten years.")

    def period(self):
        end = self.end.data or local_today()
        start = self.start.data or (end - dt.timedelta(days=364))
        return start, end
