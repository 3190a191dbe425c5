"""The ROI wizard (R-ROI): "Start new ROI(s)" → "Next" → "Complete ROI" → E-Sign, Text
Message or Upload; the ROI page with its attachment and "Revoke"; the Blank ROI of one
ROI; and the public webhook for the client's text replies (POST /sms/inbound)."""

import os

from flask import Response, abort, current_app, flash, redirect, request, send_file, url_for
from flask_login import current_user

import uploads
import workflow
from admin_views.base import SecureBaseView, current_actor, expose, rule_guard, visible_or_404
from admin_views.subjects import visible_subject
from forms.consent import CodeForm, CompleteRoiForm, RevokeForm, UploadForm
from messaging import valid_twilio_signature
from models import (
    INFO_SUBSTANCE_USE,
    INFO_TYPES,
    REDISCLOSURE_NOTICE,
    ROI_AWAITING,
    ROI_DRAFT,
    SIGN_TEXT,
    SIGN_UPLOAD,
    Agency,
    County,
    InsuranceType,
    Program,
    ProgramCounty,
    ProgramInsurance,
    ProgramService,
    Roi,
    RoiProgram,
    Service,
    local_today,
)

RESULT_LIMIT = 200


def _ids(name):
    clean = set()
    for raw in request.args.getlist(name):
        try:
            clean.add(int(raw))
        except ValueError:
            continue
    return clean


def search_programs(counties=(), services=(), insurance=(), agencies=(), exclude=None):
    """Programs with a valid Agency MOU (R-MOU-3) matching every filter given (R-ROI-2);
    telemedicine programs serve every county."""
    query = Program.with_valid_mou().join(Agency).switch(Program)
    if counties:
        serving = ProgramCounty.select(ProgramCounty.program).where(ProgramCounty.county.in_(counties))
        query = query.where(Program.telemedicine | Program.id.in_(serving))
    if services:
        query = query.where(Program.id.in_(
            ProgramService.select(ProgramService.program).where(ProgramService.service.in_(services))))
    if insurance:
        query = query.where(Program.id.in_(ProgramInsurance.select(ProgramInsurance.program)
                                           .where(ProgramInsurance.insurance_type.in_(insurance))))
    if agencies:
        query = query.where(Program.agency.in_(agencies))
    if exclude is not None:
        query = query.where(Program.id != exclude.id)
    return query.order_by(Agency.name, Program.name)


def own_roi(roi_id):
    """An ROI the acting program may see (R-ROI-3); else 404 with the attempt audited."""
    actor = current_actor()
    return visible_or_404(Roi.visible_to(actor.user, actor.program), Roi, roi_id, "view_roi")


def roi_programs(roi):
    return list(Program.select(Program, Agency).join(Agency).switch(Program)
                .join(RoiProgram).where(RoiProgram.roi == roi).order_by(Agency.name, Program.name))


class ConsentView(SecureBaseView):
    permission = "view_subjects"
    needs_program = True
    show_in_menu = False

    def _may(self, permission):
        if not current_user.can(permission, current_actor().program):
            abort(403)

    @expose("/")
    def index(self):
        return redirect(url_for("subjects.index"))

    @expose("/new", methods=("GET", "POST"))
    @rule_guard
    def new(self):
        """Start new ROI(s): filter programs, select one or more, "Next"."""
        self._may("start_roi")
        subject = visible_subject(request.values.get("subject", type=int))
        if request.method == "POST":
            roi = workflow.start_roi(current_actor(), subject, request.form.getlist("program"))
            return redirect(url_for(".complete", roi_id=roi.id))
        chosen = {"county": _ids("county"), "service": _ids("service"),
                  "insurance": _ids("insurance"), "agency": _ids("agency")}
        programs = list(search_programs(chosen["county"], chosen["service"], chosen["insurance"],
                                        chosen["agency"], exclude=current_actor().program)
                        .limit(RESULT_LIMIT + 1))
        with workflow.transaction():
            workflow.record_audit(current_actor(), "view_roi_form", subject=subject)
        return self.render(
            "consent/new.html", subject=subject, programs=programs[:RESULT_LIMIT],
            more=len(programs) > RESULT_LIMIT, chosen=chosen,
            counties=County.select().order_by(County.name),
            services=Service.select().order_by(Service.category, Service.name),
            insurance_types=InsuranceType.select().order_by(InsuranceType.name),
            agencies=Agency.select().where(Agency.active).order_by(Agency.name))

    @expose("/<int:roi_id>/complete", methods=("GET", "POST"))
    def complete(self, roi_id):
        """Complete ROI: details, information types, "Authorization By", the signature."""
        self._may("sign_roi")
        roi = own_roi(roi_id)
        if roi.program_id != current_actor().program.id or roi.state not in (ROI_DRAFT, ROI_AWAITING):
            return redirect(url_for(".detail", roi_id=roi.id))
        form = CompleteRoiForm()
        if request.method == "GET":
            form.phone.data = roi.text_phone or roi.subject.phone
            form.info_types.data = sorted(roi.info_type_set)
            form.authorizer_kind.data = roi.authorizer_kind or "client"
            if roi.authorizer_kind != "client":
                form.authorizer_name.data = roi.authorizer_name
        elif form.validate_on_submit():
            response = self._sign(roi, form, request.form.get("method"))
            if response is not None:
                return response
        with workflow.transaction():
            workflow.record_audit(current_actor(), "view_roi_form", roi, subject=roi.subject_id)
        return self.render("consent/complete.html", roi=roi, form=form, subject=roi.subject,
                           programs=roi_programs(roi), acting=current_actor().program,
                           notice=REDISCLOSURE_NOTICE)

    def _sign(self, roi, form, method):
        actor = current_actor()
        try:
            workflow.complete_roi(actor, roi, form.info_types.data, form.authorizer_kind.data,
                                  form.authorizer_name.data, phone=form.phone.data)
            if method == "esign":
                workflow.sign_roi_esign(actor, roi, form.typed_name.data, form.agreed.data)
                flash(f"The ROI {roi.reference} is signed (E-Sign). It is valid through "
                      f"{roi.expires_on.strftime('%B %-d, %Y')}.", "success")
                return redirect(url_for("subjects.profile", subject_id=roi.subject_id))
            if method == "text":
                workflow.send_roi_text(actor, roi, form.phone.data)
                flash("A text asking the client to reply YES is on its way.", "success")
                return redirect(url_for(".code", roi_id=roi.id))
            if method == "upload":
                workflow.mark_roi_on_paper(actor, roi)
                flash("The signature is marked as on paper. Print the Blank ROI, have it signed, "
                      "then upload the scan.", "success")
                return redirect(url_for(".detail", roi_id=roi.id))
            flash("Choose a signature method: E-Sign, Text Message or Upload.", "error")
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
        return None

    @expose("/<int:roi_id>/code", methods=("GET", "POST"))
    def code(self, roi_id):
        """Enter the security code the client received by text (R-ROI-6)."""
        self._may("sign_roi")
        roi = own_roi(roi_id)
        form = CodeForm()
        if form.validate_on_submit():
            try:
                workflow.confirm_roi_code(current_actor(), roi, form.code.data)
            except workflow.RuleViolation as exc:
                flash(exc.message, "error")
                roi = own_roi(roi_id)
            else:
                flash(f"The ROI {roi.reference} is signed (Text Message). It is valid through "
                      f"{roi.expires_on.strftime('%B %-d, %Y')}.", "success")
                return redirect(url_for("subjects.profile", subject_id=roi.subject_id))
        return self.render("consent/code.html", roi=roi, form=form)

    @expose("/<int:roi_id>/resend", methods=("POST",))
    @rule_guard
    def resend(self, roi_id):
        self._may("sign_roi")
        roi = own_roi(roi_id)
        workflow.send_roi_text(current_actor(), roi)
        flash("The text was sent again." if roi.text_state == "asked" else
              "A new security code was sent; it is valid until 12 hours after the first one.",
              "success")
        return redirect(url_for(".code", roi_id=roi.id))

    @expose("/<int:roi_id>")
    def detail(self, roi_id):
        """One ROI with its available actions (review, replace, delete, revoke)."""
        roi = own_roi(roi_id)
        actor = current_actor()
        with workflow.transaction():
            workflow.record_audit(actor, "view_roi", roi, subject=roi.subject_id)
        mine = actor.program is not None and roi.program_id == actor.program.id
        return self.render("consent/detail.html", roi=roi, programs=roi_programs(roi),
                           subject=roi.subject, info_types=INFO_TYPES, mine=mine,
                           upload_form=UploadForm(), revoke_form=RevokeForm(),
                           substance=roi.covers(INFO_SUBSTANCE_USE), notice=REDISCLOSURE_NOTICE,
                           today=local_today(), SIGN_UPLOAD=SIGN_UPLOAD, SIGN_TEXT=SIGN_TEXT,
                           limit_mb=current_app.config["UPLOAD_LIMIT"] // (1024 * 1024))

    @expose("/<int:roi_id>/blank.pdf")
    def blank_pdf(self, roi_id):
        """The Blank ROI of this ROI, to print and sign on paper (R-ROI-7, R-ROI-9)."""
        import pdf

        roi = own_roi(roi_id)
        html = self.render("consent/blank_roi_pdf.html", roi=roi, subject=roi.subject,
                           programs=roi_programs(roi), info_types=INFO_TYPES,
                           notice=REDISCLOSURE_NOTICE, today=local_today())
        try:
            data = pdf.render_pdf(html)
        except pdf.PdfUnavailable as exc:
            flash(str(exc), "error")
            return redirect(url_for(".detail", roi_id=roi.id))
        with workflow.transaction():
            workflow.record_audit(current_actor(), "print_blank_roi", roi, subject=roi.subject_id)
        return Response(data, mimetype="application/pdf", headers={
            "Content-Disposition": f'inline; filename="{roi.reference}.pdf"'})

    @expose("/<int:roi_id>/upload", methods=("POST",))
    @rule_guard
    def upload(self, roi_id):
        """Attach or replace the signed scan (R-ROI-7, R-SAFE-4)."""
        self._may("sign_roi")
        roi = own_roi(roi_id)
        file = request.files.get("scan")
        data = file.read(current_app.config["UPLOAD_LIMIT"] + 1) if file else b""
        replaced = bool(roi.attachment_path)
        workflow.attach_roi_scan(current_actor(), roi, data, file.filename if file else "",
                                 current_app.config["UPLOAD_DIR"], current_app.config["UPLOAD_LIMIT"])
        flash("The scan was replaced." if replaced else
              f"The scan is attached: the ROI {roi.reference} is signed.", "success")
        return redirect(url_for(".detail", roi_id=roi.id))

    @expose("/<int:roi_id>/attachment")
    def attachment(self, roi_id):
        """Review the scan: only as a download, to users who may see the ROI."""
        roi = own_roi(roi_id)
        path = uploads.path_of(roi.attachment_path, current_app.config["UPLOAD_DIR"])
        if not path:
            abort(404)
        with workflow.transaction():
            workflow.record_audit(current_actor(), "view_roi_scan", roi, subject=roi.subject_id)
        response = send_file(path, mimetype="application/pdf", as_attachment=True,
                             download_name=f"{roi.reference}.pdf", max_age=0)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    @expose("/<int:roi_id>/attachment/delete", methods=("POST",))
    @rule_guard
    def delete_attachment(self, roi_id):
        self._may("sign_roi")
        roi = own_roi(roi_id)
        workflow.delete_roi_scan(current_actor(), roi, current_app.config["UPLOAD_DIR"])
        flash("The attachment was deleted.", "success")
        return redirect(url_for(".detail", roi_id=roi.id))

    @expose("/<int:roi_id>/revoke", methods=("POST",))
    @rule_guard
    def revoke(self, roi_id):
        """Revoke with a reason (R-ROI-8)."""
        self._may("revoke_roi")
        roi = own_roi(roi_id)
        workflow.revoke_roi(current_actor(), roi, request.form.get("reason"))
        flash(f"The ROI {roi.reference} is revoked: no new referral can be sent under it.", "success")
        return redirect(url_for(".detail", roi_id=roi.id))


class SmsView(SecureBaseView):
    """POST /sms/inbound: Twilio-signed replies (R-ROI-6). Public, CSRF-exempt; a bad
    signature gets 403 and changes nothing."""

    public = True
    show_in_menu = False

    @expose("/")
    def index(self):
        abort(404)

    @expose("/inbound", methods=("POST",))
    def inbound(self):
        params = request.form.to_dict()
        url = current_app.config["BASE_URL"] + request.path
        token = current_app.config.get("SMS_AUTH_TOKEN") or os.environ.get("SMS_AUTH_TOKEN", "")
        if not valid_twilio_signature(token, url, params, request.headers.get("X-Twilio-Signature", "")):
            abort(403)
        workflow.handle_inbound_text(params.get("From", ""), params.get("Body", ""))
        return Response('<?xml version="1.0" encoding="UTF-8"?><Response></Response>',
                        mimetype="text/xml")


def register(admin):
    from app import csrf

    admin.add_view(ConsentView(name="ROI", endpoint="consent", url="/consent"))
    sms = SmsView(name=None, endpoint="sms", url="/sms")
    admin.add_view(sms)
    csrf.exempt(sms.blueprint)
