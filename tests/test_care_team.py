"""The care team (R-NET-3): programs connected through signed ROIs and where each
referral stands, within ROI visibility; printable as a PDF."""

import datetime as dt
import io

import pytest
from pypdf import PdfReader

import models
import reporting
from tests.conftest import make_agency, make_program, make_roi, make_subject, make_user
from tests.test_reports import make_referral, pdf_text


@pytest.fixture
def team(network):
    """A child referred by primary care (A1) to a school program and a behavioral-health
    program under one ROI; another ROI (not naming A1) with a housing program."""
    n = network
    school_agency = make_agency("Gallatin Schools")
    bh_agency = make_agency("Bridger Behavioral Health")
    n.school = make_program(school_agency, "School Nurse Program")
    n.bh = make_program(bh_agency, "Youth Counseling")
    n.housing = make_program(make_agency("Housing Help"), "Family Housing")
    n.gk_school = make_user("gatekeeper", n.school, name="Sam School")
    n.child = make_subject(n.a1, n.gk_a1, first_name="Wilhelmina", last_name="Brackenridge")
    n.roi = make_roi(n.child, n.a1, others=(n.school, n.bh),
                     info_types=("contact", "behavioral_health", "substance_use"))
    n.other_roi = make_roi(n.child, n.housing, others=(n.bh,))
    n.to_school = make_referral(n.child, n.roi, n.a1, n.school, 20, 2, 9, models.REFERRAL_CLOSED,
                                "Closed- Successful completion", created_by=n.gk_a1)
    n.to_bh = make_referral(n.child, n.roi, n.a1, n.bh, 10, 1, None, models.REFERRAL_ASSIGNED,
                            "Enrolled in Services", created_by=n.gk_a1)
    n.housing_ref = make_referral(n.child, n.other_roi, n.housing, n.bh, 5, created_by=None)
    return n


def test_r_net_3_care_team_programs_and_referrals(team):
    """R-NET-3: every program on signed ROIs naming the acting program; each referral's
    status, receiving program and last update; nothing from an ROI not naming it."""
    care = reporting.care_team(team.gk_a1, team.a1, team.child)
    programs = {p["program"] for p in care["programs"]}
    assert programs == {"Program A1", "School Nurse Program", "Youth Counseling"}
    rows = {r["id"]: r for r in care["referrals"]}
    assert set(rows) == {team.to_school.id, team.to_bh.id}
    assert rows[team.to_school.id]["status"] == "Closed- Successful completion"
    assert rows[team.to_bh.id]["to"] == "Bridger Behavioral Health — Youth Counseling"
    assert rows[team.to_bh.id]["updated"] is not None
    assert care["substance_use"] is True


def test_r_net_3_school_sees_the_same_team_through_the_roi(team):
    """R-NET-3 (R-ROI-3): the school, named on the ROI, sees the other programs and the
    referral to behavioral health made under it."""
    care = reporting.care_team(team.gk_school, team.school, team.child)
    assert {r["id"] for r in care["referrals"]} == {team.to_school.id, team.to_bh.id}


@pytest.mark.parametrize("change", ["revoked", "expired", "unsigned"])
def test_r_net_3_invalid_roi_hides_the_team(team, change):
    """R-NET-3: a revoked, expired or unsigned ROI connects nobody any more."""
    roi = team.roi
    if change == "revoked":
        roi.state = models.ROI_REVOKED
    elif change == "expired":
        roi.expires_on = models.local_today() - dt.timedelta(days=1)
    else:
        roi.state = models.ROI_DRAFT
    roi.save()
    care = reporting.care_team(team.gk_school, team.school, team.child)
    assert care["programs"] == []
    assert {r["id"] for r in care["referrals"]} == {team.to_school.id}  # its own referral


def test_r_net_3_care_team_screen_and_pdf(team, browser):
    """R-NET-3: the partial on screen, and a PDF for a family meeting (audited)."""
    browser.login(team.gk_a1)
    text = browser.get(f"/reports/care-team/{team.child.id}").get_data(as_text=True)
    assert "Care team" in text and "School Nurse Program" in text and "Youth Counseling" in text
    assert "Family Housing" not in text and "42 CFR" in text
    response = browser.get(f"/reports/care-team/{team.child.id}.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    reader = PdfReader(io.BytesIO(response.data))
    printed = " ".join(pdf_text(page) for page in reader.pages)
    assert len(reader.pages) == 1
    assert "Wilhelmina Brackenridge" in printed and "Enrolled in Services" in printed
    assert "42 CFR" in printed
    actions = [a.action for a in models.AuditEvent.select().where(models.AuditEvent.subject == team.child.id)]
    assert actions.count("run_report:care_team") == 2


def test_r_net_3_subject_not_visible_is_404_and_audited(team, browser):
    """R-NET-3 (R-SAFE-2): another program's subject looks missing, and the try is logged."""
    stranger = make_subject(team.b1, team.gk_b1, first_name="Hidden", last_name="Person")
    browser.login(team.gk_a1)
    for url in (f"/reports/care-team/{stranger.id}", f"/reports/care-team/{stranger.id}.pdf",
                "/reports/care-team/999999"):
        assert browser.get(url).status_code == 404
    denied = models.AuditEvent.select().where((models.AuditEvent.action == "view_care_team")
                                              & (models.AuditEvent.outcome == "denied"))
    assert denied.count() == 3


def test_r_net_3_care_team_on_the_subject_profile(team, browser):
    """R-NET-3: the subject profile shows the care team partial."""
    browser.login(team.gk_a1)
    response = browser.get(f"/subjects/{team.child.id}")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Youth Counseling" in text and "Enrolled in Services" in text
    assert f"/reports/care-team/{team.child.id}.pdf" in text
