"""Browser flows of the guide's Parts 2 and 3 in chromium, with axe-core on each screen
(R-SUBJ-1, R-SUBJ-5, R-ROI-2..6, R-UX-1)."""

import re

from playwright.sync_api import expect

import models
from tests.conftest import check_accessibility, deliver_outbox, make_program, make_subject, ui_login
from tests.test_sms import inbound, last_code


def test_r_subj_5_r_roi_5_search_add_start_roi_esign(page, network):
    """Search → Add Subject (two pages, check marks) → Start new ROI(s) with filters →
    Next → Complete ROI → E-Sign."""
    make_program(network.agency_b, "Tele Counseling", counties=("Missoula",),
                 services=("Mental health counseling",), telemedicine=True)
    ui_login(page, network.pr_a1.email)
    page.get_by_role("link", name="Subjects").first.click()
    check_accessibility(page, "subjects_search")
    page.get_by_label("Name").fill("Rosa Parks")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Add Subject").click()
    check_accessibility(page, "add_subject_page1")
    assert page.locator("#page1-status").get_attribute("data-done") == "no"
    page.get_by_label("DOB").fill("1985-02-04")
    page.get_by_label("Current Gender Identity").select_option("Female")
    page.get_by_label("Race").select_option("Black or African American")
    page.get_by_label("Military Service").select_option("Veteran")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#page1-status")).to_have_attribute("data-done", "yes")
    add = page.get_by_role("button", name="Add Subject")
    expect(add).to_be_disabled()
    page.get_by_label("Current address of residence").fill("400 W Main St")
    page.get_by_label("Current City").fill("Bozeman")
    page.get_by_label("Current County").select_option(label="Gallatin")
    page.get_by_label("Current Zip code").fill("59715")
    page.get_by_label("Phone", exact=True).fill("(406) 555-0123")
    expect(page.locator("#page2-status")).to_contain_text(": complete")
    expect(add).to_be_enabled()
    check_accessibility(page, "add_subject_page2")
    add.click()
    page.wait_for_url(re.compile(r".*/subjects/\d+$"))
    assert "has been added to CONNECT" in page.content()
    check_accessibility(page, "subject_profile_new")
    page.get_by_role("link", name="Start new ROI(s)").click()
    page.get_by_label("Choose Counties").select_option(label="Gallatin")
    page.get_by_label("Choose Services").select_option(label="Behavioral Health: Mental health counseling")
    page.get_by_role("button", name="Search programs").click()
    assert "Tele Counseling" in page.content() and "Program B1" not in page.content()
    check_accessibility(page, "start_new_roi")
    page.get_by_label("Tele Counseling").check()
    page.get_by_role("button", name="Next").click()
    page.wait_for_url(re.compile(r".*/complete$"))
    assert "Program A1 (your program)" in page.content()
    check_accessibility(page, "complete_roi")
    page.get_by_label("Contact information").check()
    page.get_by_label("HIV-related information").check()
    page.get_by_label("Type the name of the person authorizing").fill("rosa  PARKS")
    page.get_by_label("Yes, I agree to this release of information").check()
    page.get_by_role("button", name="E-Sign").click()
    page.wait_for_url(re.compile(r".*/subjects/\d+$"))
    assert "is signed (E-Sign)" in page.content() and "Tele Counseling" in page.content()
    check_accessibility(page, "subject_profile_signed")
    roi = models.Roi.get()
    assert roi.state == models.ROI_SIGNED and roi.info_type_set == {"contact", "hiv"}


def test_r_roi_6_text_message_path_end_to_end(page, app, network, sms_api):
    """Complete ROI → Text Message → the client replies YES (signed webhook) → the code
    the client received is entered → signed."""
    subject = make_subject(network.a1, first_name="Lena", last_name="Horne", phone="+14065550142")
    ui_login(page, network.pr_a1.email)
    page.goto(f"/consent/new?subject={subject.id}")
    page.get_by_label("Program B1").check()
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Contact information").check()
    page.get_by_role("button", name="Text Message").click()
    page.wait_for_url(re.compile(r".*/code$"))
    check_accessibility(page, "text_code_waiting")
    deliver_outbox()
    assert sms_api.messages[-1]["To"] == "+14065550142" and "Reply YES" in sms_api.messages[-1]["Body"]
    assert inbound(app, "YES").status_code == 200
    deliver_outbox()
    _, code = last_code(sms_api)
    page.reload()
    page.get_by_label("Security code").fill(code)
    page.get_by_role("button", name="Confirm code").click()
    page.wait_for_url(re.compile(r".*/subjects/\d+$"))
    assert "is signed (Text Message)" in page.content()
    roi = models.Roi.get()
    assert roi.state == models.ROI_SIGNED and roi.signature_method == "text"
    page.get_by_role("link", name=f"Open ROI {roi.reference}").click()
    check_accessibility(page, "roi_detail")
