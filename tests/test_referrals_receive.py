"""Receiving and working referrals (R-RECV-1..6, R-STAT-1..4, R-ROI-9)."""

import datetime as dt
import re

import pytest

import models
import workflow
from tests.conftest import actor, make_program, make_user
from tests.referral_helpers import (
    add_intake,
    assigned,
    client,
    emails_to,
    fresh,
    second_gatekeeper,
    sent,
)


def test_r_recv_1_every_gatekeeper_emailed_and_belled_not_providers(network):
    """R-RECV-1: each gatekeeper gets an email with a link and a bell; providers nothing;
    no client name in the email subject or body."""
    gk2 = second_gatekeeper(network)
    subject, _roi = client(network)
    referral = sent(network, subject)
    for gatekeeper in (network.gk_b1, gk2):
        mails = emails_to(gatekeeper.email)
        assert len(mails) == 1
        assert re.search(rf"https?://\S+/referrals/{referral.id}\b", mails[0].body)
        for text in (mails[0].subject, mails[0].body):
            assert subject.first_name not in text and subject.last_name not in text
        assert models.Notification.select().where(models.Notification.user == gatekeeper).count() == 1
    assert emails_to(network.pr_b1.email) == []
    assert models.Notification.select().where(models.Notification.user == network.pr_b1).count() == 0


def test_r_recv_2_queue_lists_incoming_and_gatekeeper_assigns(browser, network):
    """R-RECV-2: Agency → Referrals lists the referral; the gatekeeper opens and assigns it."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    browser.login(network.gk_b1)
    queue = browser.get("/agency/referrals/").get_data(as_text=True)
    assert subject.last_name in queue and f"/referrals/{referral.id}" in queue
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert ">Assign<" in page and "Bob Bee" in page and ">Decline<" in page
    response = browser.post(f"/referrals/{referral.id}/assign", {
        "assign-version": referral.version, "assign-provider": network.pr_b1.id},
        token_from=f"/referrals/{referral.id}")
    assert response.status_code == 302
    assert fresh(referral).state == models.REFERRAL_ASSIGNED
    assert fresh(referral).assigned_to_id == network.pr_b1.id


def test_r_recv_2_gatekeeper_may_assign_themself(network):
    """R-RECV-2: the gatekeeper can assign the referral to themself."""
    subject, _roi = client(network)
    referral = assigned(network, subject, provider=network.gk_b1)
    assert referral.assigned_to_id == network.gk_b1.id
    assert referral.acknowledged_at is not None


def test_r_recv_2_only_program_staff_can_be_assigned(network):
    """R-RECV-2: a user of another program cannot be chosen."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    with pytest.raises(workflow.RuleViolation, match="Choose a provider"):
        workflow.assign_referral(actor(network.gk_b1, network.b1), referral, network.pr_a1.id,
                                 referral.version)


def test_r_recv_2_provider_cannot_assign(network):
    """R-RECV-2: assigning is for gatekeepers."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    with pytest.raises(workflow.RuleViolation, match="gatekeeper"):
        workflow.assign_referral(actor(network.pr_b1, network.b1), referral, network.pr_b1.id,
                                 referral.version)


def test_r_recv_3_second_assignment_gets_a_clear_message(browser, network):
    """R-RECV-3: the later of two assignments (same form version) is refused clearly."""
    gk2 = second_gatekeeper(network)
    subject, _roi = client(network)
    referral = sent(network, subject)
    version = referral.version
    workflow.assign_referral(actor(network.gk_b1, network.b1), referral, network.pr_b1.id, version)
    browser.login(gk2)
    response = browser.post(f"/referrals/{referral.id}/assign", {
        "assign-version": version, "assign-provider": gk2.id},
        token_from="/agency/referrals/", follow_redirects=True)
    assert "already assigned to Bob Bee" in response.get_data(as_text=True)
    assert fresh(referral).assigned_to_id == network.pr_b1.id
    assert models.ReferralEvent.select().where(models.ReferralEvent.kind == "assigned").count() == 1


def test_r_recv_4_assignment_emails_provider_and_sender(network):
    """R-RECV-4: the provider is emailed, and the sender is told the client was assigned."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    provider_mail = emails_to(network.pr_b1.email)
    assert len(provider_mail) == 1 and f"/referrals/{referral.id}" in provider_mail[0].body
    sender_mail = emails_to(network.gk_a1.email)
    assert any("assigned" in m.body for m in sender_mail)
    assert subject.last_name not in provider_mail[0].body


def test_r_recv_5_reassign_to_another_provider_of_the_agency(browser, network):
    """R-RECV-5: the provider reassigns to another provider of the agency (here of a second
    program of agency B that is on the client's ROI)."""
    b2 = make_program(network.agency_b, "Program B2", counties=("Missoula",))
    other = make_user("provider", b2, name="Olga Other", email="olga@example.org")
    subject, _roi = client(network, others=(network.b1, b2))
    referral = assigned(network, subject)
    membership = models.Membership.get((models.Membership.user == other))
    browser.login(network.pr_b1)
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert ">Reassign<" in page and "Olga Other" in page
    browser.post(f"/referrals/{referral.id}/reassign", {
        "reassign-version": referral.version, "reassign-membership": membership.id},
        token_from=f"/referrals/{referral.id}")
    referral = fresh(referral)
    assert referral.assigned_to_id == other.id and referral.to_program_id == b2.id
    assert referral.to_agency_id == network.agency_b.id
    assert len(emails_to(other.email)) == 1
    assert models.ReferralEvent.select().where(models.ReferralEvent.kind == "reassigned").count() == 1


def test_r_recv_5_cannot_reassign_outside_the_agency(network):
    """R-RECV-5: only providers of the same agency are offered."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    outsider = models.Membership.get(models.Membership.user == network.pr_a1)
    with pytest.raises(workflow.RuleViolation, match="another provider"):
        workflow.reassign_referral(actor(network.pr_b1, network.b1), referral, outsider.id,
                                   referral.version)


def test_r_recv_6_decline_needs_reason_and_tells_sender(browser, network):
    """R-RECV-6: Decline needs a reason; the sender is told."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    browser.login(network.gk_b1)
    empty = browser.post(f"/referrals/{referral.id}/decline", {"decline-version": referral.version,
                                                               "decline-reason": ""},
                         token_from=f"/referrals/{referral.id}", follow_redirects=True)
    assert "Give a reason" in empty.get_data(as_text=True)
    assert fresh(referral).state == models.REFERRAL_SENT
    browser.post(f"/referrals/{referral.id}/decline", {"decline-version": referral.version,
                                                       "decline-reason": "No openings"},
                 token_from=f"/referrals/{referral.id}")
    assert fresh(referral).state == models.REFERRAL_DECLINED
    assert any("declined" in m.body and "No openings" in m.body for m in emails_to(network.gk_a1.email))


def test_r_stat_1_dropdown_has_the_13_labels_and_history(browser, network):
    """R-STAT-1: the status dropdown has the 13 exact labels; each change kept with who/when."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    browser.login(network.pr_b1)
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    for label in models.STATUSES:
        assert f'<option value="{label}">{label}</option>' in page
    browser.post(f"/referrals/{referral.id}/status", {"status-version": referral.version,
                                                      "status-status": "Enrolled in Services"},
                 token_from=f"/referrals/{referral.id}")
    event = models.ReferralEvent.get(models.ReferralEvent.kind == "status")
    assert event.user_id == network.pr_b1.id and event.status == "Enrolled in Services"
    assert event.at is not None
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "Pete Provider" not in page and "Bob Bee" in page.split("History")[-1]


def test_r_stat_1_bad_status_refused(network):
    """R-STAT-1: only the listed statuses are accepted."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    with pytest.raises(workflow.RuleViolation, match="listed statuses"):
        workflow.set_referral_status(actor(network.pr_b1, network.b1), referral, "Done", referral.version)


@pytest.mark.parametrize("status", models.STATUSES)
def test_r_stat_4_open_statuses_keep_it_open_others_close(network, status):
    """R-STAT-4: four statuses leave the referral open, every other closes it; the sender
    is notified of each change (R-SEND-6)."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    workflow.set_referral_status(actor(network.pr_b1, network.b1), referral, status, referral.version)
    referral = fresh(referral)
    if status in models.OPEN_STATUSES:
        assert referral.state == models.REFERRAL_ASSIGNED and referral.outcome_at is None
    else:
        assert referral.state == models.REFERRAL_CLOSED and referral.outcome_at is not None
    assert any(status in n.message for n in models.Notification.select().where(
        models.Notification.user == network.gk_a1))


def test_r_stat_4_gatekeeper_reopens_with_reason(browser, network):
    """R-STAT-4: a gatekeeper reopens a closed referral with a reason; history keeps both."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    workflow.set_referral_status(actor(network.pr_b1, network.b1), referral,
                                 "Closed- Successful completion", referral.version)
    referral = fresh(referral)
    first_outcome = referral.outcome_at
    with pytest.raises(workflow.RuleViolation, match="gatekeeper"):
        workflow.reopen_referral(actor(network.pr_b1, network.b1), referral, referral.version, "x")
    with pytest.raises(workflow.RuleViolation, match="reason"):
        workflow.reopen_referral(actor(network.gk_b1, network.b1), referral, referral.version, "")
    browser.login(network.gk_b1)
    browser.post(f"/referrals/{referral.id}/reopen", {"reopen-version": referral.version,
                                                      "reopen-reason": "Client came back"},
                 token_from=f"/referrals/{referral.id}")
    referral = fresh(referral)
    assert referral.state == models.REFERRAL_ASSIGNED and referral.outcome_at == first_outcome
    kinds = [e.kind for e in models.ReferralEvent.select().order_by(models.ReferralEvent.id)]
    assert kinds[-2:] == ["status", "reopened"]


def test_r_stat_2_notes_are_a_dated_signed_call_log(browser, network):
    """R-STAT-2: notes have a kind, a date and an author; the sender sees them (R-SEND-6)."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    browser.login(network.pr_b1)
    browser.post(f"/referrals/{referral.id}/note", {
        "note-kind": "call_attempt", "note-note_date": "2026-03-02", "note-text": "Left a voicemail"},
        token_from=f"/referrals/{referral.id}")
    note = models.ReferralNote.get()
    assert (note.kind, note.note_date, note.author_id) == ("call_attempt", dt.date(2026, 3, 2),
                                                           network.pr_b1.id)
    bad = browser.post(f"/referrals/{referral.id}/note", {
        "note-kind": "gossip", "note-note_date": "2026-03-02", "note-text": "x"},
        token_from=f"/referrals/{referral.id}", follow_redirects=True)
    assert bad.status_code == 200 and models.ReferralNote.select().count() == 1


def test_r_stat_3_progress_entries(network):
    """R-STAT-3: optional progress entries record multi-visit services over time."""
    subject, _roi = client(network)
    referral = assigned(network, subject)
    for day in (1, 8, 15):
        workflow.add_progress_entry(actor(network.pr_b1, network.b1), referral,
                                    dt.date(2026, 3, day), f"Class {day}")
    assert models.ProgressEntry.select().where(models.ProgressEntry.referral == referral).count() == 3
    with pytest.raises(workflow.RuleViolation):
        workflow.add_progress_entry(actor(network.pr_b1, network.b1), referral, "not a date", "x")


def test_r_roi_9_consent_rechecked_on_every_view(browser, network):
    """R-ROI-9: when the ROI is revoked, the receiving program sees that consent ended and
    no client details; the opening is audited."""
    subject, roi = client(network)
    referral = sent(network, subject)
    browser.login(network.gk_b1)
    assert "Zed" in browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    roi.state, roi.revoked_at = models.ROI_REVOKED, models.utcnow()
    roi.save()
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "Consent has ended" in page and "Zed" not in page
    audit = models.AuditEvent.select().where(models.AuditEvent.action == "view_referral").order_by(
        models.AuditEvent.id.desc()).first()
    assert audit.outcome == "denied" and audit.object_id == str(referral.id)


def test_r_roi_9_substance_use_answers_carry_the_redisclosure_notice(browser, network):
    """R-ROI-9: substance-use answers are shown with the 42 CFR Part 2 notice."""
    need, drug = add_intake(network.b1)
    subject, _roi = client(network, info_types=("contact", "demographics", "substance_use"))
    referral = sent(network, subject, answers={str(need.id): "yes", str(drug.id): "Opioids"})
    browser.login(network.gk_b1)
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "Opioids" in page and "42 CFR part 2" in page
    assert all(models.REDISCLOSURE_NOTICE in m.body for m in emails_to(network.gk_b1.email))


def test_r_recv_2_unassigned_provider_cannot_open(browser, network):
    """R-TRACK-2: a provider sees only referrals assigned to them (404 otherwise)."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    browser.login(network.pr_b1)
    assert browser.get(f"/referrals/{referral.id}").status_code == 404


def test_r_recv_2_queue_action_assign_to_me(app, browser, network):
    """R-RECV-2: from the queue, a gatekeeper assigns selected referrals to themself."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    browser.login(network.gk_b1)
    response = browser.post("/agency/referrals/action/", {
        "action": "assign_to_me", "rowid": referral.id, "url": "/agency/referrals/"},
        token_from="/agency/referrals/", follow_redirects=True)
    assert "1 referral(s) assigned to you." in response.get_data(as_text=True)
    assert fresh(referral).assigned_to_id == network.gk_b1.id
