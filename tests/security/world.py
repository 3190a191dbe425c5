"""The shared scene of the security battery: agency A (programs A1, A2), agency B (B1),
one client, ROI and Pending referral draft owned by each program, and the actors of the
authorization matrix (battery items 1, 2, 7)."""

import datetime as dt

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
