"""Text-message signatures (R-ROI-6): the outbound text reaches a local Twilio-compatible
API (basic auth checked); inbound replies are posted signed and badly signed."""

import datetime as dt
import re

import pytest
from freezegun import freeze_time

import models
import workflow
from messaging import twilio_signature
from tests.conftest import actor, deliver_outbox, make_subject

CELL = "+14065550142"


def text_roi(network, phone=CELL, subject=None):
    subject = subject or make_subject(network.a1, phone=phone)
    who = actor(network.pr_a1, network.a1)
    roi = workflow.start_roi(who, subject, [network.b1.id])
    workflow.complete_roi(who, roi, ["contact"], "client")
    workflow.send_roi_text(who, roi)
    return models.Roi.get_by_id(roi.id)


def inbound(app, body, sender=CELL, token="sms-secret-token", signature=None):
    params = {"From": sender, "Body": body, "MessageSid": "SM123", "To": "+14065550000"}
    url = app.config["BASE_URL"] + "/sms/inbound"
    headers = {}
    if signature is not False:
        headers["X-Twilio-Signature"] = signature or twilio_signature(token, url, params)
    return app.test_client().post("/sms/inbound", data=params, headers=headers)


def last_code(sms_api):
    for message in reversed(sms_api.messages):
        found = re.search(r"security code for release (\S+) is (\d{6})", message["Body"])
        if found:
            return found.group(1), found.group(2)
    return None, None


def test_r_roi_6_text_path_through_screens(app, browser, network, sms_api):
    """R-ROI-6: "Text Message" texts the client's cell; YES brings a 6-digit code; the
    user enters it and the ROI is signed."""
    subject = make_subject(network.a1, phone="+14065550100")
    roi = workflow.start_roi(actor(network.pr_a1, network.a1), subject, [network.b1.id])
    browser.login(network.pr_a1)
    url = f"/consent/{roi.id}/complete"
    response = browser.post(url, {"phone": "406-555-0142", "info_types": ["contact", "hiv"],
                                  "authorizer_kind": "client", "method": "text"}, token_from=url)
    assert response.status_code == 302 and response.location.endswith(f"/consent/{roi.id}/code")
    assert models.Roi.get_by_id(roi.id).state == models.ROI_AWAITING
    deliver_outbox()
    assert sms_api.refused == 0 and len(sms_api.messages) == 1
    ask = sms_api.messages[0]
    assert ask["To"] == CELL and ask["From"] == "+14065550000" and "Reply YES" in ask["Body"]
    assert inbound(app, "Yes").status_code == 200
    deliver_outbox()
    reference, code = last_code(sms_api)
    assert reference == models.Roi.get_by_id(roi.id).reference and sms_api.messages[-1]["To"] == CELL
    stored = models.Roi.get_by_id(roi.id).text_code_hash
    assert code not in stored and stored.startswith("$argon2")
    page = browser.get(f"/consent/{roi.id}/code").get_data(as_text=True)
    assert "Security code" in page and "replied YES" in page
    done = browser.post(f"/consent/{roi.id}/code", {"code": code}, token_from=f"/consent/{roi.id}/code")
    assert done.status_code == 302
    signed = models.Roi.get_by_id(roi.id)
    assert signed.state == models.ROI_SIGNED and signed.signature_method == "text"


@pytest.mark.parametrize("case", ["unsigned", "bad_signature", "wrong_token"])
def test_r_roi_6_badly_signed_inbound_refused(app, network, sms_api, case):
    """R-ROI-6: unsigned or badly signed webhooks get 403 and change nothing."""
    roi = text_roi(network)
    outbox = models.Outbox.select().count()
    signature = {"unsigned": False, "bad_signature": "bm90LWEtc2lnbmF0dXJl", "wrong_token": None}[case]
    token = "another-token" if case == "wrong_token" else "sms-secret-token"
    assert inbound(app, "YES", token=token, signature=signature).status_code == 403
    assert models.Outbox.select().count() == outbox
    assert models.Roi.get_by_id(roi.id).text_state == "asked"


@pytest.mark.parametrize("sender, body", [
    ("+14065559999", "YES"),        # unknown number
    (CELL, "hello"),                # unrelated text
    (CELL, "NO"),
    (CELL, "STOP"),
    ("not-a-number", "YES"),
])
def test_r_roi_6_unknown_or_unrelated_texts_change_nothing(app, network, sms_api, sender, body):
    """R-ROI-6: signed but unknown or unrelated texts change nothing."""
    roi = text_roi(network)
    outbox = models.Outbox.select().count()
    audit = models.AuditEvent.select().count()
    assert inbound(app, body, sender=sender).status_code == 200
    assert models.Outbox.select().count() == outbox and models.AuditEvent.select().count() == audit
    assert models.Roi.get_by_id(roi.id).text_state == "asked"


def code_for(app, sms_api, body="YES"):
    inbound(app, body)
    deliver_outbox()
    return last_code(sms_api)[1]


@pytest.mark.parametrize("offset, ok", [
    (dt.timedelta(hours=11, minutes=59), True),
    (dt.timedelta(hours=12), True),
    (dt.timedelta(hours=12, seconds=1), False),
])
def test_r_roi_6_code_valid_12_hours_from_first_send(app, network, sms_api, offset, ok):
    """R-ROI-6: the code is valid 12 hours from when it was first sent."""
    start = dt.datetime(2025, 5, 1, 15, 0, 0)
    with freeze_time(start):
        roi = text_roi(network)
        code = code_for(app, sms_api)
    with freeze_time(start + offset):
        who = actor(network.pr_a1, network.a1)
        roi = models.Roi.get_by_id(roi.id)
        if ok:
            workflow.confirm_roi_code(who, roi, code)
            assert models.Roi.get_by_id(roi.id).state == models.ROI_SIGNED
        else:
            with pytest.raises(workflow.RuleViolation, match="expired"):
                workflow.confirm_roi_code(who, roi, code)


def test_r_roi_6_resend_keeps_expiry(app, network, sms_api):
    """R-ROI-6: re-sending texts a new code (the old one stops working) with the first
    code's expiry; after 12 hours no re-send."""
    start = dt.datetime(2025, 5, 1, 15, 0, 0)
    who = actor(network.pr_a1, network.a1)
    with freeze_time(start):
        roi = text_roi(network)
        first = code_for(app, sms_api)
    with freeze_time(start + dt.timedelta(hours=10)):
        workflow.send_roi_text(who, models.Roi.get_by_id(roi.id))
        deliver_outbox()
        second = last_code(sms_api)[1]
        roi = models.Roi.get_by_id(roi.id)
        assert roi.text_code_first_sent_at == start and roi.text_code_sends == 2
    with freeze_time(start + dt.timedelta(hours=12, minutes=1)):
        with pytest.raises(workflow.RuleViolation, match="expired"):
            workflow.send_roi_text(who, models.Roi.get_by_id(roi.id))
        with pytest.raises(workflow.RuleViolation, match="expired"):
            workflow.confirm_roi_code(who, models.Roi.get_by_id(roi.id), second)
    with freeze_time(start + dt.timedelta(hours=11)):
        if first != second:
            with pytest.raises(workflow.RuleViolation, match="not right"):
                workflow.confirm_roi_code(who, models.Roi.get_by_id(roi.id), first)
        workflow.confirm_roi_code(who, models.Roi.get_by_id(roi.id), second)
    assert models.Roi.get_by_id(roi.id).state == models.ROI_SIGNED


def test_r_roi_6_five_wrong_codes_lock(app, network, sms_api):
    """R-ROI-6: five wrong entries lock the text signature; the right code is then refused."""
    roi = text_roi(network)
    code = code_for(app, sms_api)
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    who = actor(network.pr_a1, network.a1)
    for attempt in range(1, 6):
        with pytest.raises(workflow.RuleViolation) as excinfo:
            workflow.confirm_roi_code(who, models.Roi.get_by_id(roi.id), wrong)
        assert ("locked" in excinfo.value.message) is (attempt == 5)
    with pytest.raises(workflow.RuleViolation, match="locked"):
        workflow.confirm_roi_code(who, models.Roi.get_by_id(roi.id), code)
    assert models.Roi.get_by_id(roi.id).state == models.ROI_AWAITING
    assert inbound(app, "YES").status_code == 200  # a locked ROI ignores further replies
    assert models.Roi.get_by_id(roi.id).text_state == "locked"


def test_r_roi_6_code_before_reply_refused(app, network, sms_api):
    """R-ROI-6: no code can be confirmed before the client replied YES."""
    roi = text_roi(network)
    with pytest.raises(workflow.RuleViolation, match="not replied"):
        workflow.confirm_roi_code(actor(network.pr_a1, network.a1), roi, "123456")


def test_r_roi_6_several_pending_rois_most_recent_first(app, network, sms_api):
    """R-ROI-6 (decision): with several ROIs waiting on one number, YES applies to the most
    recently asked one only; the reply names it and says how many others wait. After it
    is signed, the next YES serves the next one."""
    subject = make_subject(network.a1, phone=CELL)
    with freeze_time("2025-05-01 15:00:00"):
        older = text_roi(network, subject=subject)
    with freeze_time("2025-05-01 15:05:00"):
        newer = text_roi(network, subject=subject)
        reference, code = code_for(app, sms_api), None
        reference, code = last_code(sms_api)
        assert reference == newer.reference
        assert "1 other release(s) also wait" in sms_api.messages[-1]["Body"]
        assert models.Roi.get_by_id(older.id).text_state == "asked"
        workflow.confirm_roi_code(actor(network.pr_a1, network.a1), models.Roi.get_by_id(newer.id), code)
        inbound(app, "yes")
        deliver_outbox()
        assert last_code(sms_api)[0] == older.reference


def test_r_roi_6_inbound_is_csrf_exempt_but_other_posts_are_not(app, browser, network):
    """R-SAFE-5: the webhook needs no CSRF token (it is signed); screens still do."""
    roi = text_roi(network)
    browser.login(network.pr_a1)
    response = browser.post(f"/consent/{roi.id}/code", {"code": "123456"}, csrf=False)
    assert response.status_code == 400
