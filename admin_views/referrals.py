"""Referrals: the chart, the form, the referral page and the Agency → Referrals / Sent
lists (R-SEND, R-RECV, R-STAT, R-TRACK; R-ROI-1 and R-ROI-9).

Views are thin: reads are model queries, every change is one workflow function.
"""

from flask import abort, flash, has_request_context, redirect, request, url_for
from flask_admin.actions import action
from markupsafe import Markup, escape
from peewee import JOIN

import workflow
from admin_views.base import SecureBaseView, acting_program, current_actor, expose
from admin_views.lists import DayFilter, LeanListView, OptionFilter, cached_options
from forms.referrals import (
    AssignForm,
    NoteForm,
    ProgressForm,
    ReasonForm,
    ReassignForm,
    SendForm,
    StatusForm,
    VersionForm,
    referral_form_class,
)
from models import (
    INFO_SUBSTANCE_USE,
    NOTE_KINDS,
    OPEN_REFERRAL_STATES,
    REDISCLOSURE_NOTICE,
    REFERRAL_DISCARDED,
    REFERRAL_PENDING,
    REFERRAL_STATE_LABELS,
    ROLE_GATEKEEPER,
    STATUSES,
    Agency,
    Program,
    ProgressEntry,
    Referral,
    ReferralEvent,
    ReferralNote,
    Roi,
    RoiProgram,
    Subject,
    User,
    local_today,
    normalize_name,
)
from referral_fields import (
    PERSONAL_TITLE,
    completeness,
    missing_required,
    offered_personal,
    offered_sections,
    personal_from_subject,
)
from workflow import RuleViolation, audit_denial, record_audit, transaction

FromProgram = Program.alias("from_program")
ToProgram = Program.alias("to_program")
FromAgency = Agency.alias("from_agency")
ToAgency = Agency.alias("to_agency")
Assignee = User.alias("assignee")
Sender = User.alias("sender")


# ---------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------

# The referral columns a list row shows, exports or acts on (not the intake answers).
LIST_COLUMNS = (Referral.id, Referral.subject, Referral.from_program, Referral.from_agency,
                Referral.to_program, Referral.to_agency, Referral.created_by, Referral.state,
                Referral.status, Referral.assigned_to, Referral.sent_at, Referral.created_at,
                Referral.delayed_at, Referral.version)


def referral_list_query(base):
    """Referral + subject + both programs and agencies + assignee + sender, one select."""
    return (base.select(*LIST_COLUMNS, Subject.id, Subject.first_name, Subject.last_name,
                        FromProgram.id, FromProgram.name, ToProgram.id, ToProgram.name,
                        FromAgency.id, FromAgency.name, ToAgency.id, ToAgency.name,
                        Assignee.id, Assignee.name, Sender.id, Sender.name)
            .join(Subject, on=(Referral.subject == Subject.id))
            .switch(Referral).join(FromProgram, on=(Referral.from_program == FromProgram.id))
            .switch(Referral).join(ToProgram, on=(Referral.to_program == ToProgram.id))
            .switch(Referral).join(FromAgency, on=(Referral.from_agency == FromAgency.id))
            .switch(Referral).join(ToAgency, on=(Referral.to_agency == ToAgency.id))
            .switch(Referral).join(Assignee, JOIN.LEFT_OUTER, on=(Referral.assigned_to == Assignee.id))
            .switch(Referral).join(Sender, JOIN.LEFT_OUTER, on=(Referral.created_by == Sender.id)))


def incoming_query(user, program):
    """Referrals received by the program (providers: those assigned to them), drafts
    excluded — the queue's rows: the received half of the row filter."""
    return Referral.visible_to(user, program, side="received")


def sent_query(user, program):
    """Referrals sent by the program (providers: their own), drafts included."""
    return Referral.visible_to(user, program, side="sent").where(
        Referral.state != REFERRAL_DISCARDED)


def program_roi_partners(subject, program, day=None):
    """Programs on a signed, valid ROI of the subject that also names `program`."""
    day = day or local_today()
    rois = (Roi.select(Roi.id).join(RoiProgram)
            .where((Roi.subject == subject) & (RoiProgram.program == program)
                   & (Roi.state == "signed") & (Roi.expires_on >= day)))
    return (Program.select(Program, Agency).join(Agency)
            .join_from(Program, RoiProgram, on=(RoiProgram.program == Program.id))
            .where(RoiProgram.roi.in_(rois)).distinct())


def referral_chart(subject, program, user):
    """The Referrals Chart (R-SEND-1): one box per program on a valid ROI, the acting
    program always included; Start, Pending or Active (R-SEND-5)."""
    programs = {p.id: p for p in program_roi_partners(subject, program)}
    if program.id not in programs:
        programs[program.id] = Program.select(Program, Agency).join(Agency).where(
            Program.id == program.id).get()
    open_rows = {r.to_program_id: r for r in Referral.select().where(
        (Referral.subject == subject) & Referral.state.in_(OPEN_REFERRAL_STATES))}
    boxes = []
    for p in sorted(programs.values(), key=lambda p: (p.id != program.id, p.agency.name, p.name)):
        row = open_rows.get(p.id)
        new_url = url_for("referral.new", subject=subject.id, to=p.id)
        if row is None:
            kind, url = "start", new_url
        elif row.state == REFERRAL_PENDING:
            mine = row.from_program_id == program.id and user.can("save_referral_draft", program)
            kind, url = "pending", (url_for("referral.edit", referral_id=row.id) if mine else new_url)
        else:
            kind, url = "active", new_url
        boxes.append({"program": p, "label": p.label, "kind": kind, "url": url, "referral": row,
                      "own": p.id == program.id})
    return {"subject": subject, "boxes": boxes, "program": program,
            "sent_url": sent_url_for(subject)}


def sent_url_for(subject):
    view = SentView.instance
    if view is None:
        return url_for("sent.index_view")
    return url_for("sent.index_view", **{f"flt0_{view.subject_filter_arg}": subject.id,
                                        f"flt1_{view.status_filter_arg}": "any"})


def referral_content(referral, roi):
    """Personal Info and intake answers the ROI allows; substance-use answers flagged."""
    personal = referral.personal_dict()
    rows = [(label, personal.get(key, "")) for key, label, _t, _r in offered_personal(roi)]
    answers = referral.answer_dict()
    sections = []
    for section, questions in offered_sections(roi, referral.to_program_id):
        items = [(q.label, answers.get(str(q.id), ""), q.info_type == INFO_SUBSTANCE_USE)
                 for q in questions]
        sections.append({"title": section.title, "items": items,
                         "part2": any(flag for *_x, flag in items)})
    return {"personal": rows, "sections": sections}


# ---------------------------------------------------------------------------
# Lists: Agency → Referrals (incoming) and Agency → Sent
# ---------------------------------------------------------------------------

STATUS_ANY = "any"


class StatusFilter(OptionFilter):
    """"Status": the open ones by default; "Any Status" is the only choice that shows
    closed and rejected referrals together with the rest (R-TRACK-1)."""

    def __init__(self, column, name):
        options = [(STATUS_ANY, "Any Status")]
        options += [(f"state:{k}", v) for k, v in REFERRAL_STATE_LABELS.items()
                    if k != REFERRAL_DISCARDED]
        options += [(f"status:{s}", s) for s in STATUSES]
        super().__init__(column, name, options=options)

    def validate(self, value):
        return value in dict(self.options)

    def clean(self, value):
        return value

    def apply(self, query, value):
        if value.startswith("state:"):
            return query.where(Referral.state == value[6:])
        if value.startswith("status:"):
            return query.where(Referral.status == value[7:])
        return query


def _program_options():
    if not has_request_context():  # Flask-Admin scaffolds filters at start-up
        return []
    program = acting_program()
    if program is None:
        return []
    return cached_options(("staff", program.id), lambda: [
        (u.id, u.name) for u in workflow._program_staff(program.id).order_by(User.name)])


def _agency_options():
    if not has_request_context():  # Flask-Admin scaffolds filters at start-up
        return []
    return cached_options("agencies", lambda: [
        (a.id, a.name) for a in Agency.select(Agency.id, Agency.name).order_by(Agency.name)])


def _sent_to_options():
    """The programs the acting program has sent to: a scan of all its sent referrals
    (no index leads with (from_program, to_program)), so cached a few minutes."""
    if not has_request_context():  # Flask-Admin scaffolds filters at start-up
        return []
    program = acting_program()
    if program is None:
        return []

    def build():
        ids = (Referral.select(Referral.to_program)
               .where(Referral.from_program == program.id).distinct())
        return [(p.id, p.label) for p in Program.select(Program, Agency).join(Agency)
                .where(Program.id.in_(ids)).order_by(Agency.name, Program.name)]

    return cached_options(("sent_to", program.id), build)


CONSENT_ENDED = "Consent ended"


def _client_name(model):
    """The client's name, unless consent for the receiving program has ended (R-ROI-9)."""
    if getattr(model, "client_hidden", False):
        return CONSENT_ENDED
    return f"{model.subject.first_name} {model.subject.last_name}"


def _client_link(view, context, model, name):
    return Markup(f'<a href="{url_for("referral.view", referral_id=model.id)}">'
                  f'{escape(_client_name(model))}</a>')


def _state_cell(view, context, model, name):
    html = escape(model.state_label)
    if model.status:
        html += Markup("<br><small>") + escape(model.status) + Markup("</small>")
    if model.delayed_at and model.state == "sent":
        html += Markup(' <span class="badge badge-delayed">Delayed</span>')
    return html


def _when(view, context, model, name):
    value = getattr(model, name)
    return value.strftime("%Y-%m-%d") if value else ""


def _program_cell(side):
    def cell(view, context, model, name):
        agency = getattr(model, f"{side}_agency")
        program = getattr(model, f"{side}_program")
        return f"{agency.name} — {program.name}"
    return cell


def _person_cell(attr):
    def cell(view, context, model, name):
        person = getattr(model, attr)
        return person.name if person is not None else ""
    return cell


def csv_safe(value):
    """Cells a spreadsheet would run as formulas are neutralised (R-SAFE-6)."""
    text = str(value if value is not None else "")
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class ReferralListView(LeanListView):
    permission = "view_referrals"
    needs_program = True
    can_export = True
    export_types = ["csv"]
    export_max_rows = 10000
    column_labels = {"id": "No.", "client": "Client", "from_side": "From", "to_side": "To",
                     "sent_at": "Sent", "created_at": "Started", "state": "Status",
                     "assigned": "Assigned provider", "sender": "Sent by"}
    column_formatters = {"client": _client_link, "state": _state_cell, "sent_at": _when,
                         "created_at": _when, "from_side": _program_cell("from"),
                         "to_side": _program_cell("to"), "assigned": _person_cell("assigned_to"),
                         "sender": _person_cell("created_by")}
    column_formatters_export = {
        "client": lambda v, c, m, n: csv_safe(_client_name(m)),
        "state": lambda v, c, m, n: m.status or m.state_label,
        "sent_at": _when, "created_at": _when, "from_side": _program_cell("from"),
        "to_side": _program_cell("to"), "assigned": _person_cell("assigned_to"),
        "sender": _person_cell("created_by")}
    column_sortable_list = (("sent_at", Referral.sent_at), ("created_at", Referral.created_at),
                            ("id", Referral.id))
    default_sort = ((Referral.sent_at, True),)
    keyset_fields = ("sent_at", "created_at")  # received referrals have always been sent

    def init_search(self):
        return True  # search by subject name, done in apply_search

    def search_placeholder(self):
        return "Client name"

    def join_page(self, query):
        """The rows' joins, and whether the acting program may still see each client
        (tested on the page's rows only, in the same select)."""
        seen = Subject.seen_by(current_actor().program).alias("client_seen")
        return referral_list_query(query).select_extend(seen)

    def apply_search(self, query, search):
        query = query.join(Subject, on=(Referral.subject == Subject.id))
        for term in search.split()[:4]:
            norm = normalize_name(term)
            if norm:
                query = query.where(Subject.first_norm.startswith(norm)
                                    | Subject.last_norm.startswith(norm))
        return query

    def apply_defaults(self, query, filters):
        if not any(isinstance(self._filters[index], StatusFilter) for index, *_x in filters):
            query = query.where(Referral.state.in_(OPEN_REFERRAL_STATES))
        return query

    def get_export_value(self, model, name):
        return csv_safe(super().get_export_value(model, name))

    def disclose(self, rows, exporting=False):
        """Received referrals whose client the program may no longer see (consent ended)
        show no name (R-ROI-9): the page's select says so per row (`client_seen`). One
        audit row per row, in one INSERT (R-SAFE-1): hidden ones audited as denied."""
        actor = current_actor()
        for row in rows:
            row.client_hidden = (row.from_program_id != actor.program.id
                                 and not getattr(row, "client_seen", True))
        action = f"{'export' if exporting else 'list'}_{self.endpoint}"
        workflow.record_audit_shown(actor, action, [
            (r, r.subject_id, "consent ended", "denied") if r.client_hidden else (r, r.subject_id)
            for r in rows])

    def get_one(self, id):
        """Flask-Admin detail and edit are off; the referral page is /referrals/<id>."""
        return None

    def filter_index(self, cls, name=None):
        for index, flt in enumerate(self._filters):
            if isinstance(flt, cls) and (name is None or flt.name == name):
                return str(index)
        return None

    def is_gatekeeper(self):
        return ROLE_GATEKEEPER in current_actor().user.roles_in(acting_program())


class IncomingView(ReferralListView):
    """Agency → Referrals: the incoming queue (R-RECV-2, R-TRACK-1, R-TRACK-2)."""

    column_list = ("id", "client", "from_side", "sent_at", "state", "assigned")
    column_filters = (
        StatusFilter(Referral.state, "Status"),
        OptionFilter(Referral.assigned_to, "Assigned provider", options=_program_options),
        OptionFilter(Referral.from_agency, "Sending agency", options=_agency_options),
        DayFilter(Referral.sent_at, "Sent from", after=True),
        DayFilter(Referral.sent_at, "Sent until", after=False),
    )

    def visible_query(self):
        actor = current_actor()
        return incoming_query(actor.user, actor.program)

    def is_action_allowed(self, name):
        return name == "assign_to_me" and current_actor().user.can("assign_referral", acting_program())

    @action("assign_to_me", "Assign to me", "Assign the selected referrals to yourself?")
    def action_assign_to_me(self, ids):
        actor = current_actor()
        done = 0
        for referral in self.deny_ids(ids, "assign_referral"):
            try:
                workflow.assign_referral(actor, referral, actor.user.id, referral.version)
                done += 1
            except RuleViolation as exc:
                flash(f"Referral #{referral.id}: {exc.message}", "error")
        flash(f"{done} referral(s) assigned to you.", "success")


class SentView(ReferralListView):
    """Agency → Sent: referrals the program sent, with "Show Filters" (R-TRACK-1, R-SEND-6)."""

    instance = None
    column_list = ("id", "client", "to_side", "created_at", "sent_at", "state", "sender")
    column_filters = (
        OptionFilter(Referral.subject, "Client record"),
        StatusFilter(Referral.state, "Status"),
        OptionFilter(Referral.to_program, "Receiving program", options=_sent_to_options),
        OptionFilter(Referral.to_agency, "Receiving agency", options=_agency_options),
        OptionFilter(Referral.created_by, "Staff member", options=_program_options),
        DayFilter(Referral.created_at, "Started from", after=True),
        DayFilter(Referral.created_at, "Started until", after=False),
    )
    default_sort = ((Referral.created_at, True),)
    keyset_fields = ("created_at",)  # drafts have no sent_at
    hidden_filters = ("Client record",)
    gatekeeper_filters = ("Staff member",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        SentView.instance = self
        self.subject_filter_arg = self.filter_index(OptionFilter, "Client record")
        self.status_filter_arg = self.filter_index(StatusFilter)

    def visible_query(self):
        actor = current_actor()
        return sent_query(actor.user, actor.program)


# ---------------------------------------------------------------------------
# The referral screens
# ---------------------------------------------------------------------------

class ReferralPages(SecureBaseView):
    """Chart, form, send confirmation and the referral page with its actions."""

    permission = "view_referrals"
    needs_program = True
    show_in_menu = False

    # -- loading with 404 + audit for anything not visible (R-SAFE-2) ----------------
    def _subject(self, subject_id, action="view_subject"):
        actor = current_actor()
        subject = Subject.visible_to(actor.user, actor.program).where(
            Subject.id == subject_id).first()
        if subject is None:
            audit_denial(actor, action, detail=f"subject {subject_id}")
            abort(404)
        return subject

    def _referral(self, referral_id, action="view_referral"):
        actor = current_actor()
        referral = Referral.visible_to(actor.user, actor.program).where(
            Referral.id == referral_id).first()
        if referral is None:
            audit_denial(actor, action, detail=f"referral {referral_id}")
            abort(404)
        return referral

    def _to_program(self, program_id):
        program = Program.select(Program, Agency).join(Agency).where(
            Program.id == workflow._int(program_id)).first()
        if program is None:
            abort(404)
        return program

    @expose("/")
    def index(self):
        return redirect(url_for("incoming.index_view"))

    # -- chart -----------------------------------------------------------------------
    @expose("/chart/<int:subject_id>")
    def chart(self, subject_id):
        actor = current_actor()
        subject = self._subject(subject_id)
        chart = referral_chart(subject, actor.program, actor.user)
        with transaction():
            record_audit(actor, "view_referral_chart", subject, subject=subject)
        return self.render("referrals/chart.html", subject=subject, chart=chart)

    # -- the form --------------------------------------------------------------------
    @expose("/new", methods=("GET", "POST"))
    def new(self):
        actor = current_actor()
        subject = self._subject(request.args.get("subject", type=int))
        to_program = self._to_program(request.args.get("to"))
        existing = workflow.open_referral_to(subject, to_program)
        if existing is not None:  # R-SEND-5
            mine = existing.from_program_id == actor.program.id
            return self.render("referrals/explain.html", subject=subject, program=to_program,
                               message=workflow.one_open_message(existing, to_program.label),
                               existing=existing if mine else None), 409
        roi = workflow.roi_for_referral(subject, actor.program, to_program)
        if roi is None:
            audit_denial(actor, "start_referral", subject=subject,
                         detail=f"no valid ROI naming program {to_program.id}")
            flash("There is no signed, valid ROI naming this program for this client. "
                  "Complete an ROI first.", "error")
            return redirect(url_for(".chart", subject_id=subject.id))
        return self._form(subject, to_program, roi, None)

    @expose("/<int:referral_id>/edit", methods=("GET", "POST"))
    def edit(self, referral_id):
        actor = current_actor()
        referral = self._referral(referral_id, "edit_referral")
        if referral.from_program_id != actor.program.id or referral.state != REFERRAL_PENDING:
            flash("Only a pending referral of your program can be edited.", "error")
            return redirect(url_for(".view", referral_id=referral.id))
        subject = Subject.get_by_id(referral.subject_id)
        to_program = self._to_program(referral.to_program_id)
        roi = workflow.roi_for_referral(subject, actor.program, to_program)
        if roi is None:
            flash("The client's ROI for this program is no longer signed and valid. "
                  "The draft cannot be finished; discard it or complete a new ROI.", "error")
            return redirect(url_for(".view", referral_id=referral.id))
        return self._form(subject, to_program, roi, referral)

    def _form(self, subject, to_program, roi, referral):
        form_class = referral_form_class(roi, to_program)
        if referral is None:
            data = {f"p_{k}": v for k, v in personal_from_subject(subject, roi).items()}
        else:
            data = {f"p_{k}": v for k, v in referral.personal_dict().items()}
            data.update({f"q_{k}": v for k, v in referral.answer_dict().items()})
            data["version"] = referral.version
        data = {k: _as_date(form_class, k, v) for k, v in data.items()}
        form = form_class(data=data) if request.method == "GET" else form_class()
        if request.method == "POST" and form.validate():
            return self._save(form, subject, to_program, referral)
        personal = {k[2:]: _text(v) for k, v in (form.data.items()) if k.startswith("p_")}
        answers = {k[2:]: _text(v) for k, v in form.data.items() if k.startswith("q_")}
        marks = completeness(personal, answers, roi, to_program)
        sections = offered_sections(roi, to_program)
        with transaction():
            record_audit(current_actor(), "view_referral_form", referral, subject=subject)
        return self.render("referrals/form.html", form=form, subject=subject, program=to_program,
                           referral=referral, roi=roi, marks=marks, sections=sections,
                           personal_fields=offered_personal(roi), personal_title=PERSONAL_TITLE,
                           notice=REDISCLOSURE_NOTICE, part2=INFO_SUBSTANCE_USE)

    def _save(self, form, subject, to_program, referral):
        actor = current_actor()
        personal = {k[2:]: _text(v) for k, v in form.data.items() if k.startswith("p_")}
        answers = {k[2:]: _text(v) for k, v in form.data.items() if k.startswith("q_")}
        try:
            saved = workflow.save_referral_draft(actor, subject, to_program, personal, answers,
                                                 referral=referral, version=form.version.data)
        except RuleViolation as exc:
            if exc.status_code == 404:
                abort(404)
            flash(exc.message, "error")
            target = (url_for(".edit", referral_id=referral.id) if referral
                      else url_for(".chart", subject_id=subject.id))
            return redirect(target)
        if request.form.get("action") == "send":
            return redirect(url_for(".send", referral_id=saved.id))
        flash("Progress saved: the referral is Pending until you send it.", "success")
        return redirect(url_for(".chart", subject_id=subject.id))

    @expose("/<int:referral_id>/send", methods=("GET", "POST"))
    def send(self, referral_id):
        """R-SEND-4: confirm that insurance will not be a barrier, then send once."""
        actor = current_actor()
        referral = self._referral(referral_id, "send_referral")
        form = SendForm(prefix="send", data={"version": referral.version})
        if request.method == "POST" and form.validate():
            try:
                workflow.send_referral(actor, referral, form.version.data,
                                       form.insurance_confirmed.data)
            except RuleViolation as exc:
                if exc.status_code == 404:
                    abort(404)
                flash(exc.message, "error")
                return redirect(url_for(".view", referral_id=referral.id))
            flash("The referral is sent and Active. The program's gatekeepers have been notified.",
                  "success")
            return redirect(url_for(".chart", subject_id=referral.subject_id))
        if referral.state != REFERRAL_PENDING:
            flash("This referral has already been sent.", "info")
            return redirect(url_for(".view", referral_id=referral.id))
        roi = Roi.get_by_id(referral.roi_id)
        missing = missing_required(referral, roi)
        return self.render("referrals/send.html", form=form, referral=referral, missing=missing,
                           program=self._to_program(referral.to_program_id))

    # -- the referral page -------------------------------------------------------------
    @expose("/<int:referral_id>")
    def view(self, referral_id):
        actor = current_actor()
        referral = self._referral(referral_id)
        receiving = referral.to_program_id == actor.program.id and referral.state not in (
            REFERRAL_PENDING, REFERRAL_DISCARDED)
        roi = referral.current_consent() if receiving else Roi.get_by_id(referral.roi_id)
        consent_ended = receiving and roi is None
        withheld = sorted(workflow.answer_info_types(referral) - roi.info_type_set) if roi else []
        with transaction():  # R-ROI-9: every opening is checked and audited
            record_audit(actor, "view_referral", referral, subject=referral.subject_id,
                         outcome="denied" if consent_ended else "ok",
                         detail="consent ended" if consent_ended else
                         ("withheld: " + ",".join(withheld) if withheld else ""))
        return self.render("referrals/detail.html", **self._page_context(
            actor, referral, receiving, roi, consent_ended))

    def _page_context(self, actor, referral, receiving, roi, consent_ended):
        gatekeeper = ROLE_GATEKEEPER in actor.user.roles_in(actor.program)
        works = receiving and (gatekeeper or referral.assigned_to_id == actor.user.id)
        version = {"version": referral.version}
        forms = {}
        if receiving and gatekeeper and referral.state == "sent":
            forms["assign"] = AssignForm(prefix="assign", data=version)
            forms["assign"].provider.choices = [("", "Choose…")] + [
                (str(u.id), u.name) for u in workflow.assignable_providers(referral)]
            forms["decline"] = ReasonForm(prefix="decline", data=version)
        if works and referral.state == "assigned":
            forms["reassign"] = ReassignForm(prefix="reassign", data=version)
            forms["reassign"].membership.choices = [("", "Choose…")] + [
                (str(m.id), f"{m.user.name} ({m.program.name})")
                for m in workflow.reassign_candidates(referral)]
            forms["status"] = StatusForm(prefix="status", data=version)
        if works and referral.state in ("assigned", "closed"):
            forms["note"] = NoteForm(prefix="note", data={"note_date": local_today()})
            forms["progress"] = ProgressForm(prefix="progress", data={"entry_date": local_today()})
        if receiving and gatekeeper and referral.state == "closed":
            forms["reopen"] = ReasonForm(prefix="reopen", data=version)
        sending = referral.from_program_id == actor.program.id
        if sending and referral.state == "sent":
            forms["withdraw"] = ReasonForm(prefix="withdraw", data=version)
        if sending and referral.state == REFERRAL_PENDING:
            forms["discard"] = VersionForm(prefix="discard", data=version)
        content = referral_content(referral, roi) if roi is not None and not consent_ended else None
        return {
            "referral": referral, "forms": forms, "content": content, "consent_ended": consent_ended,
            "receiving": receiving, "sending": sending, "notice": REDISCLOSURE_NOTICE,
            "from_program": self._to_program(referral.from_program_id),
            "to_program": self._to_program(referral.to_program_id),
            "assignee": User.get_or_none(User.id == referral.assigned_to_id),
            "events": list(ReferralEvent.select(ReferralEvent, User)
                           .join(User, JOIN.LEFT_OUTER, on=(ReferralEvent.user == User.id))
                           .where(ReferralEvent.referral == referral)
                           .order_by(ReferralEvent.at, ReferralEvent.id)),
            "notes": list(ReferralNote.select(ReferralNote, User)
                          .join(User, JOIN.LEFT_OUTER, on=(ReferralNote.author == User.id))
                          .where(ReferralNote.referral == referral)
                          .order_by(ReferralNote.note_date.desc(), ReferralNote.id.desc())),
            "progress": list(ProgressEntry.select(ProgressEntry, User)
                             .join(User, JOIN.LEFT_OUTER, on=(ProgressEntry.author == User.id))
                             .where(ProgressEntry.referral == referral)
                             .order_by(ProgressEntry.entry_date.desc(), ProgressEntry.id.desc())),
            "note_kinds": NOTE_KINDS,
        }

    # -- actions: one workflow function each ------------------------------------------
    def _act(self, referral_id, permission, form, call, done):
        referral = self._referral(referral_id, permission)
        target = url_for(".view", referral_id=referral.id)
        if not form.validate():
            for errors in form.errors.values():
                for error in errors:
                    flash(error, "error")
            return redirect(target)
        try:
            call(current_actor(), referral)
        except RuleViolation as exc:
            if exc.status_code == 404:
                audit_denial(current_actor(), permission, detail=f"referral {referral_id}")
                abort(404)
            flash(exc.message, "error")
            return redirect(target)
        flash(done, "success")
        if permission == "discard_referral":
            return redirect(url_for(".chart", subject_id=referral.subject_id))
        return redirect(target)

    @expose("/<int:referral_id>/assign", methods=("POST",))
    def assign(self, referral_id):
        form = AssignForm(prefix="assign")
        return self._act(referral_id, "assign_referral", form, lambda a, r: workflow.assign_referral(
            a, r, form.provider.data, form.version.data), "The referral is assigned.")

    @expose("/<int:referral_id>/reassign", methods=("POST",))
    def reassign(self, referral_id):
        form = ReassignForm(prefix="reassign")
        return self._act(referral_id, "reassign_referral", form,
                         lambda a, r: workflow.reassign_referral(a, r, form.membership.data,
                                                                 form.version.data),
                         "The referral is reassigned.")

    @expose("/<int:referral_id>/decline", methods=("POST",))
    def decline(self, referral_id):
        form = ReasonForm(prefix="decline")
        return self._act(referral_id, "decline_referral", form, lambda a, r: workflow.decline_referral(
            a, r, form.version.data, form.reason.data), "The referral is declined; the sender is told.")

    @expose("/<int:referral_id>/withdraw", methods=("POST",))
    def withdraw(self, referral_id):
        form = ReasonForm(prefix="withdraw")
        return self._act(referral_id, "withdraw_referral", form,
                         lambda a, r: workflow.withdraw_referral(a, r, form.version.data,
                                                                 form.reason.data),
                         "The referral is withdrawn; the receiving gatekeepers are told.")

    @expose("/<int:referral_id>/discard", methods=("POST",))
    def discard(self, referral_id):
        form = VersionForm(prefix="discard")
        return self._act(referral_id, "discard_referral", form, lambda a, r: workflow.discard_referral(
            a, r, form.version.data), "The pending referral is discarded.")

    @expose("/<int:referral_id>/status", methods=("POST",))
    def set_status(self, referral_id):
        form = StatusForm(prefix="status")
        return self._act(referral_id, "set_referral_status", form,
                         lambda a, r: workflow.set_referral_status(a, r, form.status.data,
                                                                   form.version.data),
                         f"The status is now \u201c{form.status.data}\u201d.")

    @expose("/<int:referral_id>/reopen", methods=("POST",))
    def reopen(self, referral_id):
        form = ReasonForm(prefix="reopen")
        return self._act(referral_id, "reopen_referral", form, lambda a, r: workflow.reopen_referral(
            a, r, form.version.data, form.reason.data), "The referral is reopened.")

    @expose("/<int:referral_id>/note", methods=("POST",))
    def note(self, referral_id):
        form = NoteForm(prefix="note")
        return self._act(referral_id, "add_referral_note", form, lambda a, r: workflow.add_referral_note(
            a, r, form.kind.data, form.note_date.data, form.text.data), "The note is added.")

    @expose("/<int:referral_id>/progress", methods=("POST",))
    def progress(self, referral_id):
        form = ProgressForm(prefix="progress")
        return self._act(referral_id, "add_progress_entry", form,
                         lambda a, r: workflow.add_progress_entry(a, r, form.entry_date.data,
                                                                  form.text.data),
                         "The progress entry is added.")


def _text(value):
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _as_date(form_class, key, value):
    """Stored ISO dates become dates for DateFields."""
    import datetime as dt
    from wtforms import DateField
    field = getattr(form_class, key, None)
    if field is not None and field.field_class is DateField and isinstance(value, str) and value:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return None
    return value


def register(admin):
    admin.add_view(IncomingView(Referral, name="Referrals", category="Agency",
                                endpoint="incoming", url="/agency/referrals"))
    admin.add_view(SentView(Referral, name="Sent", category="Agency", endpoint="sent",
                            url="/agency/sent"))
    admin.add_view(ReferralPages(name="Referral", endpoint="referral", url="/referrals"))

