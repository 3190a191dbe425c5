"""Subjects: search, the duplicate check, "Add Subject" in two pages, the profile (R-SUBJ)."""

import datetime as dt

from flask import abort, flash, redirect, request, url_for
from flask_login import current_user

import matching
import workflow
from admin_views.base import (
    SecureBaseView,
    current_actor,
    expose,
    same_site_referrer,
    visible_or_404,
)
from forms.consent import RevokeForm
from forms.subjects import PAGE_1, PAGE_2, LinkSubjectForm, SearchForm, SubjectForm
from models import (
    INFO_SUBSTANCE_USE,
    INFO_TYPES,
    REDISCLOSURE_NOTICE,
    ROI_SIGNED,
    Program,
    Roi,
    RoiProgram,
    Subject,
    local_today,
)


def visible_subject(subject_id):
    """The subject if the acting program may see it (R-SUBJ-6); else 404, attempt audited."""
    actor = current_actor()
    return visible_or_404(Subject.visible_to(actor.user, actor.program), Subject, subject_id,
                          "view_subject")


def rois_of(subject):
    """The subject's ROIs the acting program may see, newest first, with their programs."""
    actor = current_actor()
    rois = list(Roi.visible_to(actor.user, actor.program).where(Roi.subject == subject)
                .order_by(Roi.created_at.desc(), Roi.id.desc()))
    links = (RoiProgram.select(RoiProgram, Program).join(Program)
             .where(RoiProgram.roi.in_([r.id for r in rois])) if rois else [])
    programs = {}
    for link in links:
        programs.setdefault(link.roi_id, []).append(link.program)
    for roi in rois:
        roi.program_list = programs.get(roi.id, [])
    return rois


def care_team(rois):
    """Programs on the signed, valid ROIs the acting program sees (R-NET-3)."""
    today = local_today()
    team = {}
    for roi in rois:
        if roi.is_valid_on(today):
            for program in roi.program_list:
                team[program.id] = program
    return sorted(team.values(), key=lambda p: (p.agency.name, p.name))


def care_team_for(subject, actor):
    """The care team with referral outcomes (R-NET-3), for a user acting for a program."""
    import reporting

    if actor.program is None:
        return None
    return reporting.care_team(actor.user, actor.program, subject)


def chart_for(subject, actor):
    """The Referrals Chart data, when the referrals area provides it."""
    from admin_views.referrals import referral_chart

    if actor.program is None:  # administrators without a program have no chart of their own
        return None
    return referral_chart(subject, actor.program, actor.user)


class SubjectsView(SecureBaseView):
    permission = "view_subjects"
    needs_program = True

    @expose("/")
    def index(self):
        """Search by name and optional date of birth; others' subjects only masked."""
        form = SearchForm(request.args)
        actor = current_actor()
        rows, others, searched = [], [], bool(form.q.data and form.validate())
        link = {"link_first": "", "link_last": "", "link_dob": ""}
        if searched:
            found = matching.search_subjects(form.q.data, form.dob.data, program=actor.program)
            visible_ids = {s.id for s in found if actor.user.is_admin or getattr(s, "linked", False)}
            rows = [s for s in found if s.id in visible_ids]
            tokens = matching.split_name(form.q.data)
            if form.dob.data and len(tokens) == 2:  # masked hints need full name and DOB
                others = [matching.masked(s) for s in found if s.id not in visible_ids]
                link = dict(zip(("link_first", "link_last"), tokens, strict=True),
                            link_dob=form.dob.data.isoformat())
            # R-SAFE-1: the search itself, then one row per client shown or masked, in
            # one INSERT.
            workflow.record_audit_shown(
                actor, "search_subjects",
                [(None, None, f"{len(rows)} shown, {len(others)} masked")]
                + [(s, s.id) for s in rows] + [(None, m["id"], "masked") for m in others])
        link_form = LinkSubjectForm()
        return self.render("subjects/search.html", form=form, rows=rows, others=others,
                           searched=searched, link_form=link_form, **link,
                           can_add=current_user.can("create_subject", actor.program))

    @expose("/link", methods=("POST",))
    def link(self):
        """Continue with an existing subject the client identified (R-SUBJ-7)."""
        form = LinkSubjectForm()
        if not form.validate_on_submit():
            flash("Type the phone or address the client tells you.", "error")
            return redirect(same_site_referrer() or url_for(".index"))
        try:
            dob = dt.date.fromisoformat(form.dob.data)
            subject = workflow.link_existing_subject(
                current_actor(), form.subject_id.data, form.first_name.data, form.last_name.data,
                dob, form.phone_or_address.data)
        except ValueError:
            flash("The date of birth is not valid.", "error")
            return redirect(url_for(".index"))
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return redirect(same_site_referrer() or url_for(".index"))
        flash(f"{subject.full_name} is now linked to your program.", "success")
        return redirect(url_for(".profile", subject_id=subject.id))

    @expose("/add", methods=("GET", "POST"))
    def add(self):
        """Add Subject: page 1, page 2, then the duplicate check (R-SUBJ-1..5)."""
        actor = current_actor()
        if not current_user.can("create_subject", actor.program):
            abort(403)
        form = SubjectForm(data=self._prefill()) if request.method == "GET" else SubjectForm()
        page = "1"
        done = {"1": False, "2": False}
        if request.method == "POST":  # CSRF is checked for every POST by CSRFProtect
            action = request.form.get("action", "next")
            done["1"] = form.page_complete(PAGE_1)
            if action == "back":
                self._clear_errors(form)
            elif done["1"]:
                page = "2"
                if action == "add":
                    done["2"] = form.page_complete(PAGE_2)
                    if done["2"]:
                        return self._create(form, actor, done)
        return self.render("subjects/add.html", form=form, page=page, done=done,
                           page1=PAGE_1, page2=PAGE_2)

    def _create(self, form, actor, done):
        try:
            subject, how = workflow.create_subject(actor, form.values(),
                                                   confirm_new=form.confirm_new.data == "1")
        except workflow.LikelyDuplicates as exc:
            workflow.record_audit_shown(actor, "show_likely_duplicates",
                                        [(None, c["id"]) for c in exc.candidates], detail="masked")
            return self.render("subjects/duplicates.html", form=form, candidates=exc.candidates,
                               link_form=LinkSubjectForm(), page1=PAGE_1, page2=PAGE_2,
                               message=exc.message)
        except workflow.RuleViolation as exc:
            flash(exc.message, "error")
            return self.render("subjects/add.html", form=form, page="2", done=done,
                               page1=PAGE_1, page2=PAGE_2), exc.status_code
        if how == "matched":
            flash(f"{subject.full_name} was already in CONNECT with the same name, date of "
                  "birth and phone or address: that subject is now linked to your program.", "success")
        else:
            flash(f"{subject.full_name} has been added to CONNECT.", "success")
        return redirect(url_for(".profile", subject_id=subject.id))

    @staticmethod
    def _prefill():
        """Names and date of birth carried over from the search."""
        words = (request.args.get("q") or "").replace(",", " ").split()
        data = {"first_name": words[0] if words else "",
                "last_name": " ".join(words[1:]) if len(words) > 1 else ""}
        try:
            data["dob"] = dt.date.fromisoformat(request.args.get("dob") or "")
        except ValueError:
            pass
        return data

    @staticmethod
    def _clear_errors(form, names=None):
        for name in names or (PAGE_1 + PAGE_2):
            form[name].errors = []

    @expose("/<int:subject_id>")
    def profile(self, subject_id):
        """Details, ROIs, care team and the Referrals Chart; the view is audited."""
        subject = visible_subject(subject_id)
        actor = current_actor()
        with workflow.transaction():
            workflow.record_audit(actor, "view_subject", subject, subject=subject)
        rois = rois_of(subject)
        today = local_today()
        substance = any(r.covers(INFO_SUBSTANCE_USE) and r.effective_state(today) == ROI_SIGNED
                        for r in rois)
        # R-ROI-4: a program that sees the client through an ROI sees the information
        # types that ROI covers; the program that added or matched the client sees all.
        disclosed = (set(INFO_TYPES) if actor.user.is_admin
                     else Subject.disclosed_types(subject.id, actor.program))
        return self.render(
            "subjects/profile.html", subject=subject, rois=rois, team=care_team(rois),
            disclosed=disclosed,
            chart=chart_for(subject, actor), care=care_team_for(subject, actor),
            info_types=INFO_TYPES, substance=substance, notice=REDISCLOSURE_NOTICE, today=today,
            can_start=current_user.can("start_roi", actor.program), revoke_form=RevokeForm(),
            program=actor.program)


def register(admin):
    admin.add_view(SubjectsView(name="Subjects", endpoint="subjects", url="/subjects"))
