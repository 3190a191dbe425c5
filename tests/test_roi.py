"""Releases of information: the wizard, E-Sign, validity, visibility, revoke (R-ROI)."""

import datetime as dt
import io
import shutil
import subprocess

import pytest
from freezegun import freeze_time
from pypdf import PdfReader

import models
import workflow
from tests.conftest import actor, make_program, make_roi, make_subject


def start(network, subject=None, others=None):
    subject = subject or make_subject(network.a1)
    roi = workflow.start_roi(actor(network.pr_a1, network.a1), subject,
                             [p.id for p in (others if others is not None else [network.b1])])
    return roi


def completed(network, info=("contact", "demographics"), kind="client", name="", **kw):
    roi = start(network, **kw)
    workflow.complete_roi(actor(network.pr_a1, network.a1), roi, list(info), kind, name)
    return roi


# --- R-ROI-2: program search -------------------------------------------------------------

def search_page(browser, subject, query=""):
    return browser.get(f"/consent/new?subject={subject.id}&{query}").get_data(as_text=True)


def test_r_roi_2_search_filters(browser, network):
    """R-ROI-2: counties (telemedicine serves all), services, insurance, agencies; only
    programs with a valid Agency MOU."""
    subject = make_subject(network.a1)
    make_program(network.agency_b, "Tele Counseling", counties=("Missoula",),
                 services=("Mental health counseling",), telemedicine=True)
    lapsed = make_program(network.agency_b, "Lapsed Program", mou=False)
    gallatin = models.County.get(models.County.name == "Gallatin").id
    counseling = models.Service.get(models.Service.name == "Mental health counseling").id
    medicare = models.InsuranceType.get(models.InsuranceType.name == "Medicare").id
    browser.login(network.pr_a1)
    page = search_page(browser, subject)
    for label in ("Choose Counties", "Choose Services", "Choose Insurance Types", "Select Agencies", "Next"):
        assert label in page
    assert "Program A2" in page and "Program B1" in page and "Tele Counseling" in page
    assert "Lapsed Program" not in page and "Program A1</label>" not in page  # acting program implicit
    by_county = search_page(browser, subject, f"county={gallatin}")
    assert "Tele Counseling" in by_county and "Program A2" in by_county and "Program B1" not in by_county
    by_service = search_page(browser, subject, f"service={counseling}")
    assert "Tele Counseling" in by_service and "Program A2" not in by_service
    assert "Tele Counseling" not in search_page(browser, subject, f"insurance={medicare}")
    by_agency = search_page(browser, subject, f"agency={network.agency_a.id}")
    assert "Program A2" in by_agency and "Program B1" not in by_agency
    assert lapsed.id  # present in the database, absent from every search


def test_r_roi_2_lapsed_program_refused_by_start_roi(app, network):
    """R-ROI-2, R-MOU-3: a program without a valid MOU cannot be put on an ROI, even by id."""
    lapsed = make_program(network.agency_b, "Lapsed", mou=False)
    with pytest.raises(workflow.RuleViolation, match="no valid Agency MOU"):
        start(network, others=[lapsed])
    assert models.Roi.select().count() == 0


def test_r_roi_2_start_requires_a_selection(app, network):
    """R-ROI-2: "Next" without a program selected changes nothing."""
    with pytest.raises(workflow.RuleViolation, match="at least one program"):
        start(network, others=[])


def test_r_roi_3_acting_program_always_on_roi(browser, network):
    """R-ROI-3: the referring program is always on the ROI, beside the chosen ones."""
    subject = make_subject(network.a1)
    browser.login(network.pr_a1)
    response = browser.post("/consent/new", {"subject": subject.id, "program": [network.b1.id, network.a2.id]},
                            token_from=f"/consent/new?subject={subject.id}")
    assert response.status_code == 302 and "/complete" in response.location
    roi = models.Roi.get()
    assert set(roi.program_ids()) == {network.a1.id, network.a2.id, network.b1.id}
    page = browser.get(response.location).get_data(as_text=True)
    assert "Complete ROI" in page and "Program B1" in page and "Program A1 (your program)" in page
    for label in ("Authorization By", "E-Sign", "Text Message", "Upload", "HIV-related information",
                  "Substance use (42 CFR Part 2)"):
        assert label in page


def test_r_roi_2_cannot_start_for_invisible_subject(browser, network):
    """R-SUBJ-6: the wizard refuses a subject the acting program may not see (404)."""
    theirs = make_subject(network.b1)
    browser.login(network.pr_a1)
    assert browser.get(f"/consent/new?subject={theirs.id}").status_code == 404


# --- R-ROI-4 / R-ROI-5: Complete ROI and E-Sign ------------------------------------------

@pytest.mark.parametrize("info, kind, name, message", [
    ([], "client", "", "at least one type"),
    (["contact"], "guardian", "", "Enter the name of the guardian"),
    (["contact"], "alien", "", "Choose who authorizes"),
])
def test_r_roi_4_complete_roi_checks(app, network, info, kind, name, message):
    """R-ROI-4: information types and the authorizer are required."""
    roi = start(network)
    with pytest.raises(workflow.RuleViolation, match=message):
        workflow.complete_roi(actor(network.pr_a1, network.a1), roi, info, kind, name)


def test_r_roi_4_information_types_recorded(app, network):
    """R-ROI-4: only the ticked types are recorded; HIV and substance use are explicit."""
    roi = completed(network, info=("contact", "hiv", "bogus"))
    roi = models.Roi.get_by_id(roi.id)
    assert roi.info_type_set == {"contact", "hiv"} and not roi.covers("substance_use")


@pytest.mark.parametrize("kind, name, typed, agreed, ok", [
    ("client", "", "Client{n} Testperson{n}", True, True),
    ("client", "", "  client{n}   TESTPERSON{n} ", True, True),      # case and spacing ignored
    ("client", "", "Client{n} Testperson{n}", False, False),        # "yes" not ticked
    ("client", "", "Someone Else", True, False),                    # another name
    ("guardian", "Gina Guardian", "gina guardian", True, True),
    ("guardian", "Gina Guardian", "Client{n} Testperson{n}", True, False),  # must be the authorizer
    ("poa", "Pat Attorney", "Pat Attorney", True, True),
])
def test_r_roi_5_esign(app, network, kind, name, typed, agreed, ok):
    """R-ROI-5: the typed name must match the authorizer named, and "yes" be ticked."""
    roi = completed(network, kind=kind, name=name)
    n = roi.subject.first_name.removeprefix("Client")
    typed = typed.replace("{n}", n)
    who = actor(network.pr_a1, network.a1)
    if ok:
        workflow.sign_roi_esign(who, roi, typed, agreed)
        assert models.Roi.get_by_id(roi.id).state == models.ROI_SIGNED
    else:
        with pytest.raises(workflow.RuleViolation):
            workflow.sign_roi_esign(who, roi, typed, agreed)
        assert models.Roi.get_by_id(roi.id).state == models.ROI_DRAFT


def test_r_roi_5_esign_needs_completed_details(app, network):
    """R-ROI-4: no signature before the information types are chosen."""
    roi = start(network)
    with pytest.raises(workflow.RuleViolation, match="Complete the ROI first"):
        workflow.sign_roi_esign(actor(network.pr_a1, network.a1), roi, roi.authorizer_name, True)


def test_r_roi_5_esign_through_the_screen(browser, network):
    """R-ROI-4, R-ROI-5: Complete ROI with E-Sign on the screen; phone editable there."""
    subject = make_subject(network.a1)
    roi = start(network, subject=subject)
    browser.login(network.pr_a1)
    url = f"/consent/{roi.id}/complete"
    response = browser.post(url, {"phone": "(406) 555-0199", "info_types": ["contact", "substance_use"],
                                  "authorizer_kind": "client", "typed_name": subject.full_name.upper(),
                                  "agreed": "y", "method": "esign"}, token_from=url)
    assert response.status_code == 302 and response.location.endswith(f"/subjects/{subject.id}")
    roi = models.Roi.get_by_id(roi.id)
    assert roi.state == models.ROI_SIGNED and roi.signature_method == "esign"
    assert models.Subject.get_by_id(subject.id).phone == "+14065550199"
    profile = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert "Signed" in profile and "E-Sign" in profile and roi.reference in profile


def test_r_roi_5_wrong_name_on_screen_keeps_draft(browser, network):
    """R-ROI-5: a mismatched typed name gives a clear message and nothing is signed."""
    roi = start(network)
    browser.login(network.pr_a1)
    url = f"/consent/{roi.id}/complete"
    page = browser.post(url, {"info_types": ["contact"], "authorizer_kind": "client",
                              "typed_name": "Nobody", "agreed": "y", "method": "esign"},
                        token_from=url).get_data(as_text=True)
    assert "The typed name must be the name of the person authorizing" in page
    assert models.Roi.get_by_id(roi.id).state == models.ROI_DRAFT


def test_r_roi_4_other_program_cannot_complete(browser, network):
    """R-SAFE-2: another program cannot open or sign a draft ROI it did not start."""
    roi = start(network)
    browser.login(network.pr_b1)
    assert browser.get(f"/consent/{roi.id}/complete").status_code == 404
    with pytest.raises(workflow.NotFound):
        workflow.sign_roi_esign(actor(network.pr_b1, network.b1), roi, roi.authorizer_name, True)


# --- R-ROI-1: validity, time zone --------------------------------------------------------

@pytest.mark.parametrize("signed, day, valid", [
    (dt.date(2025, 3, 10), dt.date(2026, 3, 10), True),    # day 365: the anniversary
    (dt.date(2025, 3, 10), dt.date(2026, 3, 11), False),   # day 366
    (dt.date(2025, 3, 10), dt.date(2025, 3, 10), True),
    (dt.date(2023, 3, 10), dt.date(2024, 3, 10), True),    # a leap span: 366 days, anniversary
    (dt.date(2023, 3, 10), dt.date(2024, 3, 11), False),
    (dt.date(2024, 2, 29), dt.date(2025, 2, 28), True),    # 29 February → 28 February
    (dt.date(2024, 2, 29), dt.date(2025, 3, 1), False),
])
def test_r_roi_1_valid_one_calendar_year(app, network, signed, day, valid):
    """R-ROI-1: valid through the anniversary of signing; Expired is derived after it."""
    subject = make_subject(network.a1)
    roi = make_roi(subject, network.a1, [network.b1], signed_on=signed)
    assert roi.is_valid_on(day) is valid
    assert roi.effective_state(day) == (models.ROI_SIGNED if valid else models.ROI_EXPIRED)
    assert (models.Roi.valid_for(subject, network.b1, day).exists()) is valid


@pytest.mark.parametrize("utc_moment, local_day", [
    ("2025-02-11 06:30:00", dt.date(2025, 2, 10)),   # 23:30 MST (UTC-7) on 10 February
    ("2025-02-11 07:30:00", dt.date(2025, 2, 11)),   # 00:30 local the next day
    ("2025-07-01 05:30:00", dt.date(2025, 6, 30)),   # 23:30 MDT (UTC-6)
])
def test_r_roi_1_signing_day_in_deployment_time_zone(app, network, utc_moment, local_day):
    """R-ROI-1: the signing day is the America/Denver date (signed at 23:30 local counts
    for that day), and the ROI is valid through its anniversary."""
    roi = completed(network)
    with freeze_time(utc_moment):
        workflow.sign_roi_esign(actor(network.pr_a1, network.a1), roi, roi.authorizer_name, True)
    roi = models.Roi.get_by_id(roi.id)
    assert roi.signed_on == local_day
    assert roi.expires_on == models.last_valid_day(local_day)
    assert roi.expires_on == local_day.replace(year=local_day.year + 1)


def test_r_roi_1_expired_shown_on_profile(browser, network):
    """R-ROI-1: an ROI signed more than a year ago shows as Expired."""
    subject = make_subject(network.a1)
    make_roi(subject, network.a1, [network.b1], signed_on=models.local_today() - dt.timedelta(days=400))
    browser.login(network.pr_a1)
    page = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert "Expired" in page and "No program has a signed, valid ROI" in page


# --- R-ROI-3: programs on a signed ROI see each other -------------------------------------

def test_r_roi_3_signed_roi_links_programs(browser, network):
    """R-ROI-3: once signed, every program on the ROI sees the subject and the others on
    it; a draft stays with the program that started it."""
    subject = make_subject(network.a1)
    roi = completed(network, subject=subject)
    browser.login(network.pr_b1)
    assert browser.get(f"/subjects/{subject.id}").status_code == 404
    assert browser.get(f"/consent/{roi.id}").status_code == 404
    workflow.sign_roi_esign(actor(network.pr_a1, network.a1), roi, roi.authorizer_name, True)
    reasons = {link.program_id: link.reason for link in models.SubjectLink.select()}
    assert reasons == {network.a1.id: "created", network.b1.id: "roi"}
    page = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert "Care team" in page and "Program A1" in page and "Program B1" in page
    assert browser.get(f"/consent/{roi.id}").status_code == 200


def test_r_roi_3_roi_not_naming_program_stays_hidden(browser, network):
    """R-ROI-3: an ROI that does not name the acting program is not listed for it."""
    subject = make_subject(network.a1)
    make_roi(subject, network.a1, [network.b1])
    other = make_roi(subject, network.a1, [network.a2])
    browser.login(network.pr_b1)
    page = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert other.reference not in page
    assert browser.get(f"/consent/{other.id}").status_code == 404


# --- R-ROI-8: revoke ---------------------------------------------------------------------

def test_r_roi_8_revoke_stops_validity_keeps_history(browser, network):
    """R-ROI-8: revoking (with a reason) ends validity; the ROI and its history stay."""
    subject = make_subject(network.a1)
    roi = make_roi(subject, network.a1, [network.b1])
    browser.login(network.pr_a1)
    url = f"/consent/{roi.id}"
    refused = browser.post(f"{url}/revoke", {"reason": "  "}, token_from=url)
    assert refused.status_code == 302 and models.Roi.get_by_id(roi.id).state == models.ROI_SIGNED
    browser.post(f"{url}/revoke", {"reason": "Client withdrew consent by phone"}, token_from=url)
    roi = models.Roi.get_by_id(roi.id)
    assert roi.state == models.ROI_REVOKED and roi.revoked_reason == "Client withdrew consent by phone"
    assert not models.Roi.valid_for(subject, network.b1).exists()
    assert "Revoked" in browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert models.AuditEvent.select().where(models.AuditEvent.action == "revoke_roi").exists()
    assert models.Notification.select().where(models.Notification.user == network.gk_b1).exists()
    with pytest.raises(workflow.RuleViolation, match="already revoked"):
        workflow.revoke_roi(actor(network.pr_a1, network.a1), roi, "again")


def test_r_roi_8_program_not_on_roi_cannot_revoke(app, network):
    """R-ROI-8, R-SAFE-2: a program that does not see the ROI cannot revoke it."""
    subject = make_subject(network.a1)
    roi = make_roi(subject, network.a1, [network.a2])
    with pytest.raises(workflow.NotFound):
        workflow.revoke_roi(actor(network.pr_b1, network.b1), roi, "no")


# --- R-ROI-7 / R-ROI-9: Blank ROI PDF -----------------------------------------------------

def test_r_roi_7_r_roi_9_blank_roi_pdf(browser, network, tmp_path):
    """R-ROI-7, R-ROI-9: the Blank ROI of this ROI lists its programs, info types, the
    reference and the 42 CFR Part 2 notice; pypdf reads it, pdftoppm renders it."""
    roi = completed(network, info=("contact", "substance_use"))
    browser.login(network.pr_a1)
    url = f"/consent/{roi.id}"
    browser.post(f"/consent/{roi.id}/complete", {"info_types": ["contact", "substance_use"],
                                                 "authorizer_kind": "client", "method": "upload"},
                 token_from=f"/consent/{roi.id}/complete")
    assert models.Roi.get_by_id(roi.id).state == models.ROI_AWAITING
    response = browser.get(f"{url}/blank.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(response.data)).pages)
    flat = " ".join(text.split())
    for expected in (roi.reference, "Program A1", "Program B1", "Agency B", "Substance use",
                     "42 CFR Part 2", "prohibit you from making any further disclosure", "Signature"):
        assert expected in flat, expected
    if shutil.which("pdftoppm"):
        path = tmp_path / "blank.pdf"
        path.write_bytes(response.data)
        subprocess.run(["pdftoppm", "-png", "-r", "40", str(path), str(tmp_path / "page")], check=True)
        assert list(tmp_path.glob("page*.png"))


def test_r_roi_9_redisclosure_notice_on_profile(browser, network):
    """R-ROI-9: the profile shows the redisclosure notice when an ROI covers substance use."""
    subject = make_subject(network.a1)
    browser.login(network.pr_a1)
    make_roi(subject, network.a1, [network.b1], info_types=("contact",))
    assert "Prohibition on redisclosure" not in browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    make_roi(subject, network.a1, [network.b1], info_types=("contact", "substance_use"))
    assert "Prohibition on redisclosure" in browser.get(f"/subjects/{subject.id}").get_data(as_text=True)


def test_r_roi_1_blank_chart_for_new_client(browser, network):
    """Guide Part 3 B.II: a client without ROIs shows the blank chart with the grey
    "Start new ROI(s)" button."""
    subject = make_subject(network.a1)
    browser.login(network.pr_a1)
    page = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert "btn-start-roi" in page and "Start new ROI(s)" in page and "No ROI yet" in page
