"""Administrators' network screens (R-NET-1): regions, counties, services, insurance types,
agencies, programs and their intake sections. Every save goes through
workflow.save_record (one transaction, audited); every list through visible_query()."""

from flask import flash, request
from flask_admin.contrib.peewee.filters import BasePeeweeFilter
from flask_admin.contrib.peewee.form import save_inline
from markupsafe import Markup, escape
from wtforms.validators import NumberRange, Optional, Regexp

import workflow
from forms.accounts import StrictSelectMultipleQueryField
from admin_views.base import SecureModelView, current_actor
from flask_login import current_user
from models import (
    MOU_VALID_DAYS_WARNING,
    ROLE_GATEKEEPER,
    Agency,
    County,
    InsuranceType,
    IntakeQuestion,
    IntakeSection,
    Membership,
    Program,
    Region,
    Service,
    User,
    local_today,
    programs_managed_by,
)

EMAIL_CHECK = Regexp(r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter a valid email address.")


def mou_state(valid_until, day=None):
    """signed / expiring (last 30 days) / expired / not signed, from the last valid day."""
    day = day or local_today()
    if valid_until is None:
        return "not signed"
    if valid_until < day:
        return "expired"
    if (valid_until - day).days < MOU_VALID_DAYS_WARNING:
        return "expiring"
    return "signed"


class MouStateFilter(BasePeeweeFilter):
    """Filter by MOU state, computed from the last valid day column."""

    def __init__(self, column, name="MOU state"):
        super().__init__(column, name, options=(("signed", "Signed"), ("expiring", "Expiring"),
                                                ("expired", "Expired"), ("none", "Not signed")))

    def apply(self, query, value):
        import datetime as dt
        day = local_today()
        soon = day + dt.timedelta(days=MOU_VALID_DAYS_WARNING)
        conditions = {
            "signed": self.column >= soon,
            "expiring": self.column.between(day, soon - dt.timedelta(days=1)),
            "expired": self.column < day,
            "none": self.column.is_null(),
        }
        return query.where(conditions.get(value, self.column.is_null(False)))

    def operation(self):
        return "is"


class RecordView(SecureModelView):
    """A network list view: saves go through workflow.save_record (audited, one transaction)."""

    permission = "manage_network"
    can_export = True
    column_display_pk = False

    def populate(self, form, obj):
        form.populate_obj(obj)

    def after_save(self, form, obj):
        save_inline(form, obj)

    def _save(self, form, obj):
        try:
            return workflow.save_record(current_actor(), obj, lambda o: self.populate(form, o),
                                        lambda o: self.after_save(form, o))
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return False

    def create_model(self, form):
        return self._save(form, self.model())

    def update_model(self, form, model):
        return bool(self._save(form, model))


class ReferenceView(RecordView):
    """Regions, counties, services, insurance types: statewide administrators only."""

    def is_accessible(self):
        return super().is_accessible() and current_user.admin_statewide


class RegionView(ReferenceView):
    column_list = ("name", "code", "counties")
    column_searchable_list = ("name", "code")
    column_sortable_list = ("name", "code")
    form_columns = ("name", "code")
    column_formatters = {"counties": lambda v, c, m, n: ", ".join(c.name for c in m.counties)}


class CountyView(ReferenceView):
    column_list = ("name", "fips", "region")
    column_searchable_list = ("name", "fips")
    column_filters = (Region.name, "name")
    column_sortable_list = ("name", "fips", ("region", Region.name))
    form_columns = ("name", "fips", "region")
    column_default_sort = "name"
    page_size = 100


class ServiceView(ReferenceView):
    column_list = ("name", "category", "code")
    column_searchable_list = ("name", "category", "code")
    column_filters = ("category",)
    form_columns = ("name", "category", "code")
    column_default_sort = "name"


class InsuranceTypeView(ReferenceView):
    column_list = ("name",)
    column_searchable_list = ("name",)
    form_columns = ("name",)
    column_default_sort = "name"


class AgencyView(RecordView):
    """Agencies; a regional coordinator sees and manages those of their regions."""

    column_list = ("name", "region", "city", "phone", "active", "programs")
    column_searchable_list = ("name", "city")
    column_filters = (Region.name, "active", "city")
    column_sortable_list = ("name", ("region", Region.name), "city", "active")
    column_default_sort = "name"
    form_columns = ("name", "region", "address", "city", "zip_code", "phone", "email",
                    "website", "description", "active")
    form_args = {"email": {"validators": [Optional(), EMAIL_CHECK]}}
    column_formatters = {"programs": lambda v, c, m, n: ", ".join(p.name for p in m.programs)}

    def visible_query(self):
        return Agency.visible_to(current_user)

    def _limit(self, form):
        if not current_user.admin_statewide:
            form.region.query = Region.select().where(Region.id.in_(current_user.admin_region_ids()))
        return form

    def create_form(self, obj=None):
        return self._limit(super().create_form(obj))

    def edit_form(self, obj=None):
        return self._limit(super().edit_form(obj))


def _people(program, role):
    rows = (User.select(User.name).join(Membership, on=(Membership.user == User.id))
            .where((Membership.program == program) & (Membership.role == role)).order_by(User.name))
    return ", ".join(u.name for u in rows) or "—"


def _mou_cell(view, context, model, name):
    state = mou_state(model.mou_valid_until)
    until = f" (through {model.mou_valid_until.isoformat()})" if model.mou_valid_until else ""
    return Markup(f"<span class='mou-{state.replace(' ', '-')}'>{escape(state.title())}</span>{escape(until)}")


class ProgramView(RecordView):
    """Programs: counties served, services, insurance accepted, telemedicine, location."""

    column_list = ("agency", "name", "telemedicine", "active", "mou_valid_until")
    column_labels = {"mou_valid_until": "Agency MOU", "zip_code": "Zip code"}
    column_details_list = ("agency", "name", "description", "telemedicine", "address", "city",
                           "zip_code", "phone", "email", "website", "hours", "latitude", "longitude",
                           "active", "mou_valid_until", "counties", "services", "insurance",
                           "gatekeepers", "providers")
    column_searchable_list = ("name", Agency.name)
    column_filters = (Agency.name, "telemedicine", "active", "city",
                      MouStateFilter(Program.mou_valid_until, "Agency MOU"))
    column_sortable_list = (("agency", Agency.name), "name", "telemedicine", "active", "mou_valid_until")
    column_default_sort = "name"
    form_columns = ("agency", "name", "description", "telemedicine", "address", "city", "zip_code",
                    "phone", "email", "website", "hours", "latitude", "longitude", "active",
                    "counties_served", "services_offered", "insurance_accepted")
    form_args = {
        "latitude": {"validators": [Optional(), NumberRange(-90, 90, "Latitude is between -90 and 90.")]},
        "longitude": {"validators": [Optional(), NumberRange(-180, 180, "Longitude is between -180 and 180.")]},
        "email": {"validators": [Optional(), EMAIL_CHECK]},
    }
    form_extra_fields = {
        "counties_served": StrictSelectMultipleQueryField("Counties served", query=County.select().order_by(County.name)),
        "services_offered": StrictSelectMultipleQueryField("Services", query=Service.select().order_by(Service.name)),
        "insurance_accepted": StrictSelectMultipleQueryField(
            "Insurance accepted", query=InsuranceType.select().order_by(InsuranceType.name)),
    }
    LINKS = ("counties_served", "services_offered", "insurance_accepted")
    column_formatters = {
        "mou_valid_until": _mou_cell,
        "counties": lambda v, c, m, n: ", ".join(link.county.name for link in m.county_links),
        "services": lambda v, c, m, n: ", ".join(link.service.name for link in m.service_links),
        "insurance": lambda v, c, m, n: ", ".join(link.insurance_type.name for link in m.insurance_links),
        "gatekeepers": lambda v, c, m, n: _people(m, "gatekeeper"),
        "providers": lambda v, c, m, n: _people(m, "provider"),
    }

    def visible_query(self):
        return programs_managed_by(current_user)

    def _prepare(self, form, obj=None):
        form.agency.query = Agency.visible_to(current_user).order_by(Agency.name)
        if obj is not None and request.method == "GET":
            form.counties_served.data = [link.county for link in obj.county_links]
            form.services_offered.data = [link.service for link in obj.service_links]
            form.insurance_accepted.data = [link.insurance_type for link in obj.insurance_links]
        return form

    def create_form(self, obj=None):
        return self._prepare(super().create_form(obj))

    def edit_form(self, obj=None):
        return self._prepare(super().edit_form(obj), obj)

    def populate(self, form, obj):
        for name, field in form._fields.items():
            if name not in self.LINKS and name != "csrf_token":
                field.populate_obj(obj, name)

    def after_save(self, form, obj):
        workflow.set_program_links(obj, form.counties_served.data, form.services_offered.data,
                                   form.insurance_accepted.data)


class IntakeSectionView(RecordView):
    """A program's extra referral-form sections and questions (R-SEND-2); administrators,
    and gatekeepers for their own acting program (permission edit_intake_sections)."""

    permission = "edit_intake_sections"
    can_export = False
    column_list = ("program", "title", "position", "questions")
    column_searchable_list = ("title",)
    column_filters = (Program.name,)
    column_sortable_list = (("program", Program.name), "title", "position")
    column_default_sort = "position"
    form_columns = ("program", "title", "position")
    inline_models = [(IntakeQuestion, {
        "form_columns": ("id", "label", "kind", "choices", "required", "info_type", "position"),
        "form_args": {"id": {"validators": [Optional()]}},
        "form_label": "Questions",
        "column_labels": {"info_type": "Information type", "choices": "Choices (one per line)"}})]
    column_formatters = {"questions": lambda v, c, m, n: ", ".join(q.label for q in m.questions)}

    @property
    def needs_program(self):
        return not current_user.is_admin

    def programs(self):
        if current_user.is_admin:
            return programs_managed_by(current_user)
        from admin_views.base import acting_program
        program = acting_program()
        if program is None or ROLE_GATEKEEPER not in current_user.roles_in(program):
            return Program.select().where(Program.id.is_null())
        return Program.select().where(Program.id == program.id)

    def visible_query(self):
        return IntakeSection.select().where(IntakeSection.program.in_(self.programs().select(Program.id)))

    def _prepare(self, form):
        form.program.query = self.programs().order_by(Program.name)
        return form

    def create_form(self, obj=None):
        return self._prepare(super().create_form(obj))

    def edit_form(self, obj=None):
        return self._prepare(super().edit_form(obj))

    def after_save(self, form, obj):
        save_inline(form, obj)
        for question in IntakeQuestion.select().where(IntakeQuestion.section == obj):
            if question.kind == "choice" and not question.choice_list():
                raise workflow.RuleViolation(
                    f"The Choice question “{question.label}” needs its choices, one per line.", 422)


def register(admin):
    for view, model, name, endpoint in (
            (RegionView, Region, "Regions", "regions"),
            (CountyView, County, "Counties", "counties"),
            (ServiceView, Service, "Services", "services"),
            (InsuranceTypeView, InsuranceType, "Insurance types", "insurance_types"),
            (AgencyView, Agency, "Agencies", "agencies"),
            (ProgramView, Program, "Programs", "programs"),
            (IntakeSectionView, IntakeSection, "Intake sections", "intake_sections")):
        admin.add_view(view(model, name=name, category="Network", endpoint=endpoint,
                            url="/admin/" + endpoint.replace("_", "-")))
