"""The statewide generator of issue 6 at a tiny size, on SQLite and PostgreSQL: the shape
of the network it makes (counts, states and statuses, consistent timestamps, hub share)."""

import collections


import models
from bench.generate import BENCH_PASSWORD, bench_email, generate_scale

PROGRAMS, SUBJECTS, REFERRALS = 40, 500, 4000


def test_generator_shape(app, browser):
    """One generation per backend (the slow part), then the network, referrals, sign-in."""
    generated = generate_scale(PROGRAMS, SUBJECTS, REFERRALS, seed=7)
    check_network(generated)
    check_referrals(generated)
    browser.login(bench_email(0, 0), password=BENCH_PASSWORD)
    assert browser.get("/").status_code == 200


def check_network(generated):
    assert generated["programs"] == PROGRAMS and generated["hubs"] == 1
    assert models.Program.select().count() == PROGRAMS
    assert models.Subject.select().count() == SUBJECTS
    assert models.Referral.select().count() == REFERRALS
    assert models.Roi.select().where(models.Roi.state == models.ROI_SIGNED).count() == SUBJECTS
    assert models.Agency.select().count() == generated["agencies"]
    # Every program has gatekeepers and providers with a signed User MOU, and an Agency MOU;
    # some MOUs are expired (directory and sending rules get both kinds).
    roles = collections.Counter(m.role for m in models.Membership.select())
    assert roles[models.ROLE_GATEKEEPER] == 2 * PROGRAMS and roles[models.ROLE_PROVIDER] == 3 * PROGRAMS
    assert models.AgencyMou.select().count() == PROGRAMS
    assert 0 < models.Program.with_valid_mou().count() < PROGRAMS
    # Normalised columns are filled as the application fills them.
    for subject in models.Subject.select().limit(50):
        expected = models.Subject(first_name=subject.first_name, last_name=subject.last_name,
                                  phone=subject.phone, address=subject.address)
        expected.fill_normalized()
        assert (subject.first_norm, subject.last_norm, subject.phone_digits, subject.address_norm) == (
            expected.first_norm, expected.last_norm, expected.phone_digits, expected.address_norm)


def check_referrals(generated):
    now = models.utcnow()
    subjects = {s.id: s for s in models.Subject.select()}
    roi_programs = {(r.roi_id, r.program_id) for r in models.RoiProgram.select()}
    links = {(link.subject_id, link.program_id) for link in models.SubjectLink.select()}
    agency_of = {p.id: p.agency_id for p in models.Program.select()}
    states, statuses, to_counts = collections.Counter(), collections.Counter(), collections.Counter()
    for r in models.Referral.select():
        states[r.state] += 1
        statuses[r.status] += 1
        to_counts[r.to_program_id] += 1
        assert r.from_program_id and r.to_program_id and r.from_program_id != r.to_program_id
        assert agency_of[r.from_program_id] == r.from_agency_id
        assert agency_of[r.to_program_id] == r.to_agency_id
        assert subjects[r.subject_id].created_by_program_id == r.from_program_id
        assert (r.roi_id, r.to_program_id) in roi_programs
        moments = [r.created_at, r.sent_at, r.acknowledged_at, r.outcome_at, r.closed_at]
        present = [m for m in moments if m is not None]
        assert present == sorted(present) and present[-1] <= now
        assert (r.sent_at is None) == (r.state == models.REFERRAL_PENDING)
        assert (r.acknowledged_at is not None) == (r.state in ("assigned", "closed"))
        assert (r.closed_at is not None) == (r.state in ("closed", "declined", "withdrawn"))
        assert (r.outcome_at is not None) == (r.state == "closed")
        assert (r.assigned_to_id is not None) == (r.state in ("assigned", "closed"))
        if r.state == "closed":
            assert r.status in models.STATUSES and r.status not in models.OPEN_STATUSES
        elif r.state == "assigned":
            assert r.status is None or r.status in models.OPEN_STATUSES
        else:
            assert r.status is None
        if r.state != "pending":
            assert (r.subject_id, r.to_program_id) in links
    assert set(states) == {"pending", "sent", "assigned", "closed", "declined", "withdrawn"}
    assert set(statuses) - {None} == set(models.STATUSES)
    # Three years of dates, the hub receives about 10% (plus its share of the rest).
    first = models.Referral.select(models.fn.MIN(models.Referral.created_at)).scalar()
    assert (now - first).days > 3 * 365 - 10
    hub = generated["first_program_id"]
    assert to_counts.most_common(1)[0][0] == hub
    assert 0.08 <= to_counts[hub] / REFERRALS <= 0.16
    # History: every sent referral has its "sent" event; notes exist.
    sent_events = models.ReferralEvent.select().where(models.ReferralEvent.kind == "sent").count()
    assert sent_events == REFERRALS - states["pending"]
    assert models.ReferralNote.select().count() > 0
