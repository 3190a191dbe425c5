"""Sending referrals: the chart, the form, Save Progress, Send (R-SEND-1..5, R-SEND-7,
R-ROI-1, R-MOU-3 at sending)."""

import datetime as dt

import pytest

import models
import workflow
from tests.conftest import actor
from tests.referral_helpers import (
    PERSONAL,
    add_intake,
    client,
    draft,
    emails_to,
    fresh,
    sent,
)


def test_r_send_1_chart_has_a_box_per_roi_program_and_own(browser, network):
    """R-SEND-1: one box per program on a signed, valid ROI, the acting program always."""
    subject, _roi = client(network)
    browser.login(network.gk_a1)
    page = browser.get(f"/referrals/chart/{subject.id}").get_data(as_text=True)
    assert "Agency A — Program A1" in page and "(your program)" in page
    assert "Agency B — Program B1" in page
    assert "Program A2" not in page  # not on the ROI
    assert page.count(">Start<") == 2


@pytest.mark.parametrize("change", ["revoked", "expired", "unsigned"])
def test_r_send_1_invalid_roi_gives_no_box(browser, network, change):
    """R-SEND-1 / R-ROI-1: a revoked, expired or unsigned ROI offers no box."""
    subject, roi = client(network)
    if change == "revoked":
        roi.state = models.ROI_REVOKED
    elif change == "expired":
        roi.expires_on = models.local_today() - dt.timedelta(days=1)
    else:
        roi.state = models.ROI_AWAITING
    roi.save()
    browser.login(network.gk_a1)
    page = browser.get(f"/referrals/chart/{subject.id}").get_data(as_text=True)
    assert "Program B1" not in page and "Program A1" in page


def test_r_send_2_fields_follow_the_roi(browser, network):
    """R-SEND-2: Personal Info and intake questions are offered only for covered types."""
    add_intake(network.b1)
    subject, _roi = client(network, info_types=("contact",))
    browser.login(network.gk_a1)
    page = browser.get(f"/referrals/new?subject={subject.id}&to={network.b1.id}").get_data(as_text=True)
    assert "Personal Info" in page and subject.first_name in page
    assert "Date of birth" not in page  # demographics not covered
    assert "Needs transport?" in page
    assert "Current substance use" not in page  # substance use not covered


def test_r_send_2_uncovered_answers_are_not_stored(network):
    """R-SEND-2: an answer to a question the ROI does not cover is dropped on save."""
    need, drug = add_intake(network.b1)
    subject, _roi = client(network)
    referral = draft(network, subject, answers={str(need.id): "yes", str(drug.id): "Opioids"})
    assert referral.answer_dict() == {str(need.id): "yes"}
    assert "dob" in referral.personal_dict()


def test_r_send_2_bad_answer_is_refused(network):
    """R-SEND-2: an answer outside the choices is refused with a clear message."""
    need, _drug = add_intake(network.b1)
    subject, _roi = client(network)
    with pytest.raises(workflow.RuleViolation, match="Yes or No"):
        draft(network, subject, answers={str(need.id): "maybe"})
    assert models.Referral.select().count() == 0


def test_r_send_2_completeness_marks(browser, network):
    """R-SEND-2: each section shows whether its required fields are complete."""
    need, _drug = add_intake(network.b1)
    subject, _roi = client(network)
    referral = draft(network, subject)
    browser.login(network.gk_a1)
    page = browser.get(f"/referrals/{referral.id}/edit").get_data(as_text=True)
    assert "(incomplete)" in page  # Intake: required question unanswered
    workflow.save_referral_draft(actor(network.gk_a1, network.a1), subject, network.b1, PERSONAL,
                                 {str(need.id): "no"}, referral=referral, version=referral.version)
    page = browser.get(f"/referrals/{referral.id}/edit").get_data(as_text=True)
    assert "(incomplete)" not in page and page.count("Complete") >= 2


def test_r_send_3_save_progress_keeps_pending(browser, network):
    """R-SEND-3: Save Progress keeps a Pending draft that can be finished later."""
    subject, _roi = client(network)
    browser.login(network.gk_a1)
    url = f"/referrals/new?subject={subject.id}&to={network.b1.id}"
    response = browser.post(url, {"p_first_name": "Zed", "p_last_name": "Client",
                                  "p_phone": "406-555-0199", "action": "save"}, token_from=url)
    assert response.status_code == 302
    referral = models.Referral.get()
    assert referral.state == models.REFERRAL_PENDING
    assert referral.personal_dict()["phone"] == "406-555-0199"
    chart = browser.get(f"/referrals/chart/{subject.id}").get_data(as_text=True)
    assert ">Pending<" in chart
    page = browser.get(f"/referrals/{referral.id}/edit").get_data(as_text=True)
    assert "406-555-0199" in page


def test_r_send_4_send_asks_insurance_then_active(browser, network):
    """R-SEND-4: Send asks to confirm insurance first; then the referral is Active."""
    subject, _roi = client(network)
    browser.login(network.gk_a1)
    url = f"/referrals/new?subject={subject.id}&to={network.b1.id}"
    response = browser.post(url, {"p_first_name": "Zed", "p_last_name": "Client",
                                  "p_dob": "1990-05-17", "action": "send"}, token_from=url)
    referral = models.Referral.get()
    assert response.headers["Location"].endswith(f"/referrals/{referral.id}/send")
    confirm = browser.get(f"/referrals/{referral.id}/send").get_data(as_text=True)
    assert "insurance will not be a barrier" in confirm
    browser.post(f"/referrals/{referral.id}/send", {"send-version": referral.version},
                 token_from=url)
    assert fresh(referral).state == models.REFERRAL_PENDING  # not confirmed: not sent
    browser.post(f"/referrals/{referral.id}/send", {"send-version": referral.version,
                                                    "send-insurance_confirmed": "y"}, token_from=url)
    assert fresh(referral).state == models.REFERRAL_SENT
    assert fresh(referral).insurance_confirmed
    assert ">Active<" in browser.get(f"/referrals/chart/{subject.id}").get_data(as_text=True)


def test_r_send_4_workflow_refuses_without_confirmation(network):
    """R-SEND-4: send_referral refuses when insurance is not confirmed."""
    subject, _roi = client(network)
    referral = draft(network, subject)
    with pytest.raises(workflow.RuleViolation, match="insurance"):
        workflow.send_referral(actor(network.gk_a1, network.a1), referral, referral.version, False)


def test_r_send_4_required_fields_checked_at_send(network):
    """R-SEND-2/4: required intake answers must be given before sending."""
    add_intake(network.b1)
    subject, _roi = client(network)
    referral = draft(network, subject)
    with pytest.raises(workflow.RuleViolation, match="Needs transport"):
        workflow.send_referral(actor(network.gk_a1, network.a1), referral, referral.version, True)
    assert fresh(referral).state == models.REFERRAL_PENDING


def test_r_send_4_double_submit_sends_once(browser, network):
    """R-SEND-4: a resubmitted Send form sends once (conditional update on version)."""
    subject, _roi = client(network)
    referral = draft(network, subject)
    browser.login(network.gk_a1)
    form = {"send-version": referral.version, "send-insurance_confirmed": "y"}
    token_page = f"/referrals/{referral.id}/send"
    token = browser.token(token_page)
    first = browser.post(token_page, dict(form, csrf_token=token))
    second = browser.post(token_page, dict(form, csrf_token=token), follow_redirects=True)
    assert first.status_code == 302
    assert "already been sent" in second.get_data(as_text=True)
    assert models.ReferralEvent.select().where(models.ReferralEvent.kind == "sent").count() == 1
    assert len(emails_to(network.gk_b1.email)) == 1


@pytest.mark.parametrize("state", ["pending", "sent", "assigned"])
def test_r_send_5_no_second_open_referral(browser, network, state):
    """R-SEND-5: with a pending or active referral to a program, no new one can start."""
    subject, _roi = client(network)
    referral = draft(network, subject) if state == "pending" else sent(network, subject)
    if state == "assigned":
        workflow.assign_referral(actor(network.gk_b1, network.b1), referral, network.pr_b1.id,
                                 referral.version)
    with pytest.raises(workflow.RuleViolation, match="cannot be started"):
        draft(network, subject)
    browser.login(network.gk_a1)
    response = browser.get(f"/referrals/new?subject={subject.id}&to={network.b1.id}")
    assert response.status_code == 409
    assert "cannot be started" in response.get_data(as_text=True)


def test_r_send_5_closed_referral_allows_a_new_one(network):
    """R-SEND-5: once declined (closed), a new referral to the program can start."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    workflow.decline_referral(actor(network.gk_b1, network.b1), referral, referral.version, "Full")
    assert draft(network, subject).state == models.REFERRAL_PENDING


@pytest.mark.parametrize("change", ["revoked", "expired"])
def test_r_roi_1_consent_rechecked_at_sending(network, change):
    """R-ROI-1: at sending, the ROI must still be signed, not revoked and not expired."""
    subject, roi = client(network)
    referral = draft(network, subject)
    if change == "revoked":
        roi.state, roi.revoked_at = models.ROI_REVOKED, models.utcnow()
    else:
        roi.expires_on = models.local_today() - dt.timedelta(days=1)
    roi.save()
    with pytest.raises(workflow.RuleViolation, match="ROI"):
        workflow.send_referral(actor(network.gk_a1, network.a1), referral, referral.version, True)
    assert fresh(referral).state == models.REFERRAL_PENDING
    assert emails_to(network.gk_b1.email) == []


def test_r_roi_1_roi_must_name_the_receiving_program(network):
    """R-ROI-1: no draft, no send, to a program the ROI does not name."""
    subject, _roi = client(network)
    with pytest.raises(workflow.RuleViolation, match="ROI"):
        draft(network, subject, to=network.a2)


def test_r_mou_3_receiving_program_needs_valid_mou_at_sending(network):
    """R-MOU-3: a program whose Agency MOU expired cannot receive the referral."""
    subject, _roi = client(network)
    referral = draft(network, subject)
    models.Program.update(mou_valid_until=models.local_today() - dt.timedelta(days=1)).where(
        models.Program.id == network.b1.id).execute()
    with pytest.raises(workflow.RuleViolation, match="Agency MOU"):
        workflow.send_referral(actor(network.gk_a1, network.a1), referral, referral.version, True)
    assert fresh(referral).state == models.REFERRAL_PENDING


def test_r_send_7_withdraw_needs_reason_and_tells_gatekeepers(browser, network):
    """R-SEND-7: the sender withdraws an unassigned referral with a reason."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    with pytest.raises(workflow.RuleViolation, match="reason"):
        workflow.withdraw_referral(actor(network.gk_a1, network.a1), referral, referral.version, " ")
    browser.login(network.gk_a1)
    browser.post(f"/referrals/{referral.id}/withdraw", {"withdraw-version": referral.version,
                                                        "withdraw-reason": "Client moved"},
                 token_from=f"/referrals/{referral.id}")
    assert fresh(referral).state == models.REFERRAL_WITHDRAWN
    mails = emails_to(network.gk_b1.email)
    assert any("withdrawn" in m.body and "Client moved" in m.body for m in mails)


def test_r_send_7_no_withdraw_after_assignment(network):
    """R-SEND-7: once assigned, the referral can no longer be withdrawn."""
    subject, _roi = client(network)
    referral = sent(network, subject)
    workflow.assign_referral(actor(network.gk_b1, network.b1), referral, network.pr_b1.id,
                             referral.version)
    referral = fresh(referral)
    with pytest.raises(workflow.RuleViolation, match="not yet assigned"):
        workflow.withdraw_referral(actor(network.gk_a1, network.a1), referral, referral.version, "x")


def test_r_send_7_discard_pending_draft(browser, network):
    """R-SEND-7: a Pending draft can be discarded; the chart offers Start again."""
    subject, _roi = client(network)
    referral = draft(network, subject)
    browser.login(network.gk_a1)
    browser.post(f"/referrals/{referral.id}/discard", {"discard-version": referral.version},
                 token_from=f"/referrals/{referral.id}")
    assert fresh(referral).state == models.REFERRAL_DISCARDED
    assert browser.get(f"/referrals/chart/{subject.id}").get_data(as_text=True).count(">Start<") == 2


def test_r_send_5_receiving_side_never_sees_drafts(browser, network):
    """R-SEND-3: a Pending draft is the sender's own: the receiving program gets 404."""
    subject, _roi = client(network)
    referral = draft(network, subject)
    browser.login(network.gk_b1)
    assert browser.get(f"/referrals/{referral.id}").status_code == 404
