"""Browser checks of issue 5: the directory map and a report, with axe-core (R-UX-1)."""

import pytest

import models
from tests.conftest import check_accessibility, make_program, make_roi, make_subject, ui_login
from tests.test_reports import make_referral


@pytest.fixture
def mapped(network):
    models.Program.update(latitude=45.6793, longitude=-111.0373).where(
        models.Program.id == network.a1.id).execute()
    models.Program.update(latitude=46.8721, longitude=-113.9940).where(
        models.Program.id == network.b1.id).execute()
    make_program(network.agency_a, "Gallatin Food Pantry", latitude=45.70, longitude=-111.06,
                 services=("Food pantry / food bank",))
    return network


def test_r_net_2_directory_map_in_a_browser(mapped, page, app):
    """R-NET-2: the map opens without sign-in with a marker per located program, and the
    list is there whether tiles load or not (tests have no tile server)."""
    page.goto("/directory/")
    page.wait_for_selector(".leaflet-marker-icon")
    assert page.locator(".leaflet-marker-icon").count() == 3
    assert page.get_by_role("link", name="Gallatin Food Pantry").is_visible()
    check_accessibility(page, "directory_map")
    page.get_by_label("Service").select_option(label="Food pantry / food bank")
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector(".leaflet-marker-icon")
    assert page.locator(".leaflet-marker-icon").count() == 1


def test_r_rpt_4_referral_outcomes_in_a_browser(network, page):
    """R-RPT-4, R-RPT-7: a gatekeeper opens Agency → Reports → Referral Outcomes."""
    subject = make_subject(network.a1, network.gk_a1)
    roi = make_roi(subject, network.a1, others=(network.b1,))
    for days, ack, state, status in ((40, 1, "closed", "Closed- Successful completion"),
                                     (20, 3, "assigned", "Enrolled in Services"),
                                     (8, None, "sent", None)):
        make_referral(subject, roi, network.a1, network.b1, days, ack, 9 if state == "closed" else None,
                      state, status, created_by=network.gk_a1)
    ui_login(page, network.gk_a1.email)
    page.wait_for_url("**/")
    page.goto("/reports/")
    check_accessibility(page, "reports_index")
    page.get_by_role("link", name="Referral Outcomes").click()
    page.get_by_role("button", name="Run report").click()
    page.wait_for_selector("svg.report-chart")
    assert "2.0 days" in page.content()  # median of 1 and 3
    check_accessibility(page, "report_outcomes")
