"""Agency → Reports (R-RPT-1..7) and the care team PDF (R-NET-3).

Every report is a GET: its filters are the query string, `download=csv` or `download=pdf`
gives the file. Each run is audited (who ran what, with which filters).
"""

from flask import Response, abort, flash, redirect, request, url_for
from flask_login import current_user

import reporting
from admin_views.base import SecureBaseView, acting_program, current_actor, expose
from forms.reports import BlankRoiForm, ProgramFilterForm, ReferralReportForm
from models import Agency, Referral, Region, Subject, transaction
from pdf import PdfUnavailable
from workflow import audit_denial, record_audit, record_audit_shown


def record_report_run(key, detail="", subject=None, rows=()):
    """Audit one report run or download (R-SAFE-1), and one row per client it names."""
    with transaction():
        record_audit(current_actor(), f"run_report:{key}", subject=subject, detail=detail)
    record_audit_shown(current_actor(), f"run_report:{key}",
                       [(Referral(id=row["id"]), row["subject_id"]) for row in rows
                        if row["subject_id"]])


def file_response(body, filename, mimetype):
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def pdf_or_message(render):
    """Run a PDF renderer; a missing wkhtmltopdf is a message, not a 500."""
    try:
        return render()
    except PdfUnavailable as exc:
        flash(str(exc), "error")
        return None


def _without_download(args):
    """The report's query string, to which the download links add their format."""
    from urllib.parse import urlencode
    return urlencode([(k, v) for k, values in args.lists() if k != "download" for v in values])


class ReportsView(SecureBaseView):
    permission = "run_basic_reports"
    needs_program = True

    def _require(self, kind):
        """403 (audited) unless the role may run this report (R-RPT-7)."""
        if not current_user.can(kind.permission, acting_program()):
            audit_denial(current_actor(), f"run_report:{kind.key}", detail=request.path)
            abort(403)

    @expose("/")
    def index(self):
        kinds = reporting.reports_for(current_user, acting_program())
        return self.render("reports/index.html", kinds=kinds)

    @expose("/blank-roi")
    def blank_roi(self):
        kind = reporting.REPORTS["blank_roi"]
        self._require(kind)
        form = BlankRoiForm(request.args)
        form.regions.choices = list(Region.select(Region.id, Region.name).order_by(Region.name).tuples())
        if request.args.get("download") == "pdf":
            if not form.validate() or not form.regions.data:
                flash("Choose at least one region.", "error")
            else:
                made = pdf_or_message(lambda: reporting.render_blank_roi_pdf(form.regions.data))
                if made is not None:
                    body, context = made
                    record_report_run("blank_roi", f"reference={context['reference']} "
                                      f"regions={form.regions.data} programs={len(context['programs'])}")
                    return file_response(body, f"blank-roi-{context['reference']}.pdf", "application/pdf")
        return self.render("reports/blank_roi.html", form=form, kind=kind)

    @expose("/agencies")
    def agencies(self):
        kind = reporting.REPORTS["agencies"]
        self._require(kind)
        form = ProgramFilterForm(request.args).fill(reporting.cached_filter_choices())
        details = reporting.program_details(reporting.program_search(request.args)) \
            if form.validate() else []
        download = request.args.get("download")
        filters = {name: getattr(form, name).data for name in reporting.PROGRAM_FILTERS}
        if download in ("csv", "pdf") and not form.errors:
            record_report_run("agencies", f"format={download} filters={filters}")
            rows = list(reporting.agencies_rows(details))
            if download == "csv":
                return file_response(reporting.csv_text(reporting.AGENCIES_HEADER, rows),
                                     "agencies-report.csv", "text/csv")
            body = pdf_or_message(lambda: reporting.render_report_pdf(
                kind.title, self._filter_lines(form), [("Programs", len(rows))], [],
                reporting.AGENCIES_HEADER[:8], [row[:8] for row in rows],
                widths=[14, 14, 11, 14, 18, 12, 7, 10]))
            if body is not None:
                return file_response(body, "agencies-report.pdf", "application/pdf")
        return self.render("reports/agencies.html", form=form, kind=kind, programs=details,
                           query=_without_download(request.args))

    @staticmethod
    def _filter_lines(form):
        lines = []
        for name in reporting.PROGRAM_FILTERS:
            field = getattr(form, name)
            chosen = dict(field.choices).get(field.data)
            if field.data and chosen:
                lines.append(f"{field.label.text}: {chosen}")
        return lines or ["No filter: every program with a valid Agency MOU"]

    @expose("/referrals/<kind_key>")
    def referrals(self, kind_key):
        if kind_key not in reporting.REFERRAL_REPORTS:
            abort(404)
        kind = reporting.REPORTS[kind_key]
        self._require(kind)
        program = acting_program()
        scopes = reporting.scope_choices(current_user, program)
        if not scopes:
            flash("Choose the program you act for to run this report.", "error")
            return redirect(url_for("program.index", next=request.full_path))
        form = ReferralReportForm(request.args)
        form.scope.choices = [(f"{s.kind}:{s.id}", s.label) for s in scopes]
        form.status.choices = [("", "Any Status")] + [(s, s) for s in reporting.status_choices()]
        form.agencies.choices = list(Agency.select(Agency.id, Agency.name).order_by(Agency.name).tuples())
        report = None
        if form.validate():
            chosen = form.scope.data or form.scope.choices[0][0]
            scope = next(s for s in scopes if f"{s.kind}:{s.id}" == chosen)
            start, end = form.period()
            download = request.args.get("download")
            report = reporting.referral_report(
                kind_key, scope, start, end, form.status.data or "", form.agencies.data or [],
                user=current_user, program=program, row_limit=None if download else 200)
            record_report_run(kind_key, f"format={download or 'screen'} scope={chosen} "
                              f"period={start}..{end} status={form.status.data or ''} "
                              f"agencies={form.agencies.data or []}", rows=report.rows)
            if download in ("csv", "pdf"):
                made = self._download(report, download, form)
                if made is not None:
                    return made
        return self.render("reports/referral_report.html", form=form, kind=kind, report=report,
                           summary=reporting.summary_lines(report) if report else [],
                           query=_without_download(request.args))

    def _download(self, report, download, form):
        name = report.kind.key.replace("_", "-")
        if download == "csv":
            rows = [reporting.row_values(row) for row in report.rows]
            return file_response(reporting.csv_text(reporting.ROW_HEADER, rows),
                                 f"{name}.csv", "text/csv")
        lines = [f"{report.scope.label}", f"Period: {report.start} to {report.end}"]
        if report.status:
            lines.append(f"Status: {report.status}")
        if report.agency_ids:
            lines.append("Agencies: " + ", ".join(dict(form.agencies.choices)[a] for a in report.agency_ids))
        body = pdf_or_message(lambda: reporting.render_report_pdf(
            report.kind.title, lines, reporting.summary_lines(report),
            [report.status_chart(), report.month_chart()], reporting.PDF_ROW_HEADER,
            [reporting.pdf_row_values(row) for row in report.rows], widths=reporting.PDF_ROW_WIDTHS))
        return file_response(body, f"{name}.pdf", "application/pdf") if body is not None else None


class CareTeamView(SecureBaseView):
    """The care team of one subject, printable for a family meeting (R-NET-3)."""

    permission = "view_subjects"
    needs_program = True
    show_in_menu = False

    def _subject(self, subject_id):
        """The subject if the acting program may see it; 404 (audited) otherwise."""
        actor = current_actor()
        subject = Subject.visible_to(current_user, actor.program).where(
            Subject.id == subject_id).first()
        if subject is None:
            audit_denial(actor, "view_care_team", detail=f"subject {subject_id}")
            abort(404)
        return subject

    @expose("/<int:subject_id>.pdf")
    def pdf(self, subject_id):
        subject = self._subject(subject_id)
        context = reporting.care_team(current_user, acting_program(), subject)
        record_report_run("care_team", "format=pdf", subject=subject)

        def render():
            from pdf import render_pdf
            return render_pdf(self.render("pdf/care_team.html", **context))
        body = pdf_or_message(render)
        if body is None:
            return redirect(url_for("admin.index"))
        return file_response(body, f"care-team-{subject.id}.pdf", "application/pdf")

    @expose("/")
    def index(self):
        return redirect(url_for("admin.index"))

    @expose("/<int:subject_id>")
    def show(self, subject_id):
        subject = self._subject(subject_id)
        context = reporting.care_team(current_user, acting_program(), subject)
        record_report_run("care_team", "format=screen", subject=subject)
        return self.render("reports/care_team.html", care=context)


def care_team_context(subject):
    """The care team of a subject for the signed-in user's acting program (templates)."""
    return reporting.care_team(current_user, acting_program(), subject)


def register(admin):
    admin.app.jinja_env.globals["care_team_context"] = care_team_context
    admin.add_view(ReportsView(name="Reports", endpoint="reports", url="/reports", category="Agency"))
    admin.add_view(CareTeamView(name=None, endpoint="care_team", url="/reports/care-team"))
