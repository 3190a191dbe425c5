"""The shared scene of the security battery: agency A (programs A1, A2), agency B (B1),
one client, ROI and Pending referral draft owned by each program, and the actors of the
authorization matrix (battery items 1, 2, 7)."""

import datetime as dt

import pytest

import models
import workflow
from tests.conftest import (Browser, actor, make_agency, make_program, make_roi, make_subject,
                            make_user)

PERSONAL = {"first_name": "Zed", "last_name": "Client", "dob": "1990-05-17"}
OWNERS = ("a1", "a2", "b1")
# Who signs the draft of each owner program, and to which program it would go.
# Drafts go to program C1 of a third agency, so each record has exactly one owner among
# A1, A2 and B1.
_DRAFT = {"a1": "gk_a1", "a2": "gk_a2", "b1": "gk_b1"}

# Tables whose row counts a denied request must leave alone (audit, sign-in records and
# sessions are expected to grow).
KEY_TABLES = ("Subject", "SubjectLink", "Roi", "RoiProgram", "Referral", "ReferralEvent",
              "ReferralNote", "ProgressEntry", "Notification", "Outbox", "User", "Membership",
              "UserMou", "Agency", "Program", "AgencyMou", "IntakeSection", "IntakeQuestion",
              "RoiAttachment", "ReferralAnswer")


def key_counts():
    counts = {}
    for name in KEY_TABLES:
        model = getattr(models, name, None)
        if model is not None:
            counts[name] = model.select().count()
    counts["states"] = sorted((r.id, r.state, r.version) for r in models.Referral.select())
    counts["rois"] = sorted((r.id, r.state) for r in models.Roi.select())
    return counts


def build_world(network):
    """Records owned by A1, A2 and B1; extra actors (deactivated, expired User MOU)."""
    w = network
    w.gk_a2 = make_user("gatekeeper", w.a2, name="Gina Atwo", email="gk.a2@example.org")
    w.c1 = make_program(make_agency("Agency C", region="Region 9 - Missoula"), "Program C1",
                        counties=("Missoula",))
    w.subjects, w.rois, w.referrals = {}, {}, {}
    for key in OWNERS:
        program = getattr(w, key)
        gk, to = getattr(w, _DRAFT[key]), w.c1
        subject = make_subject(program=program, user=gk, first_name=f"Owner{key.upper()}",
                               last_name=f"Secretname{key.upper()}")
        roi = make_roi(subject, program, others=(to,), user=gk)
        referral = workflow.save_referral_draft(actor(gk, program), subject, to, PERSONAL, {})
        w.subjects[key], w.rois[key], w.referrals[key] = subject, roi, referral
    # A provider of A1 signed in, then deactivated (the copied-cookie case).
    w.deactivated = make_user("provider", w.a1, name="Dee Activated", email="dee@example.org")
    # A provider of A1 whose User MOU has expired.
    w.expired = make_user("provider", w.a1, name="Exe Pired", email="exe@example.org", mou=False)
    old = models.local_today() - dt.timedelta(days=400)
    models.UserMou.create(user=w.expired, signature_name=w.expired.name, signed_on=old,
                          expires_on=old + dt.timedelta(days=364))
    return w


ACTORS = ("anonymous", "pr_a1", "gk_a1", "admin", "pr_b1", "deactivated", "expired")
# The acting program of each signed-in actor (the owner that counts as "own").
HOME = {"pr_a1": "a1", "gk_a1": "a1", "pr_b1": "b1", "deactivated": "a1", "expired": "a1"}


def signed_in_browsers(app, w):
    """One browser per actor, signed in; the deactivated user is deactivated after sign-in.
    Each browser carries a valid CSRF token of its own session in `.csrf`."""
    browsers = {}
    for name in ACTORS:
        b = Browser(app)
        if name != "anonymous":
            b.login(getattr(w, name))
        b.csrf = b.token("/notifications/" if name != "anonymous" else "/auth/sign-in")
        browsers[name] = b
    models.User.update(is_active=False).where(models.User.id == w.deactivated.id).execute()
    return browsers


# ---------------------------------------------------------------------------
# The consent scene (battery item 11): a client of A1 with a signed ROI naming B1 whose
# last valid day is today, and a referral to B1 carrying substance-use and HIV answers.
# ---------------------------------------------------------------------------

CONSENT_PERSON = {"first_name": "Consentia", "last_name": "Hiddenname",
                  "dob": dt.date(1961, 7, 23), "address": "77 Secretive Lane",
                  "phone": "+14065550142"}
SU_ANSWER = "Opioid-use-answer-XQ"
HIV_ANSWER = "HIV-status-answer-ZK"
ALL_TYPES = ("contact", "demographics", "substance_use", "hiv")


def add_sensitive_intake(program):
    """B1's intake: a contact question, a substance-use one and an HIV one (free text)."""
    section = models.IntakeSection.create(program=program, title="Intake", position=1)
    ask = dict(section=section, kind="text")
    return (models.IntakeQuestion.create(label="Best time to call", info_type="contact", position=1, **ask),
            models.IntakeQuestion.create(label="Current substance use", info_type="substance_use",
                                         position=2, **ask),
            models.IntakeQuestion.create(label="HIV status", info_type="hiv", position=3, **ask))


def build_consent_world(network, consented=True):
    """The client, ROI (signed a calendar year ago: today is its last valid day, in the
    deployment's TIMEZONE) and the referral to B1, sent and not yet assigned. Without
    consent: the client of A1 only (no ROI, no referral)."""
    w = network
    w.person = make_subject(program=w.a1, user=w.gk_a1, **CONSENT_PERSON)
    call, su, hiv = add_sensitive_intake(w.b1)
    w.roi, w.rois, w.referral = None, [], None
    if not consented:
        return w
    today = models.local_today()
    if (today.month, today.day) == (2, 29):
        pytest.skip("no ROI has 29 February as its last valid day")
    signed_on = today.replace(year=today.year - 1)
    w.roi = make_roi(w.person, w.a1, others=(w.b1,), info_types=ALL_TYPES, user=w.gk_a1,
                     signed_on=signed_on)
    assert w.roi.expires_on == today
    w.rois = [w.roi]
    personal = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in CONSENT_PERSON.items()}
    who = actor(w.gk_a1, w.a1)
    draft = workflow.save_referral_draft(who, w.person, w.b1, personal, {
        str(call.id): "Mornings", str(su.id): SU_ANSWER, str(hiv.id): HIV_ANSWER})
    workflow.send_referral(who, draft, draft.version, True)
    w.referral = models.Referral.get_by_id(draft.id)
    return w


# ---------------------------------------------------------------------------
# Session cookies (battery item 6)
# ---------------------------------------------------------------------------

SESSION_COOKIE = "connect_session"


def session_cookie(browser):
    cookie = browser.client.get_cookie(SESSION_COOKIE)
    return cookie.value if cookie is not None else None


def plant_session_cookie(browser, value):
    """What a thief (or a fixation attacker) does with a cookie value."""
    browser.client.set_cookie(SESSION_COOKIE, value)


def session_contents(app, value):
    """The signed cookie's contents (the server session id is `_user_id`)."""
    return app.session_interface.get_signing_serializer(app).loads(value)
