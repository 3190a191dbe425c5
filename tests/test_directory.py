"""The public resource directory, map and team locator (R-NET-1, R-NET-2, R-NET-4)."""

import datetime as dt
import re
import time

import pytest

import models
import reporting
import workflow
from tests.conftest import actor, make_program, make_subject, make_user


@pytest.fixture
def listed(network):
    """Programs with and without a valid MOU, located and not, and subjects with unique
    names that must never appear on a public page."""
    n = network
    n.food = make_program(n.agency_b, "Missoula Food Bank", counties=("Missoula",),
                          services=("Food pantry / food bank",), insurance=(),
                          latitude=46.8721, longitude=-113.9940, phone="(406) 555-0199",
                          email="food@example.org", website="https://food.example.org")
    n.tele = make_program(n.agency_a, "Statewide Telehealth", counties=(), telemedicine=True)
    n.lapsed = make_program(n.agency_b, "Lapsed Shelter", mou=False, counties=("Missoula",))
    n.expired = make_program(n.agency_a, "Expired Clinic")
    models.Program.update(mou_valid_until=models.local_today() - dt.timedelta(days=1)).where(
        models.Program.id == n.expired.id).execute()
    n.inactive = make_program(n.agency_a, "Closed Doors", active=False)
    n.secret_names = ["Xanthippe Zorblatt", "Quillon Vexmoor"]
    for full in n.secret_names:
        first, last = full.split()
        make_subject(n.a1, n.gk_a1, first_name=first, last_name=last)
    reporting.clear_directory_cache()
    return n


HIDDEN = ("Lapsed Shelter", "Expired Clinic", "Closed Doors")


def test_r_net_2_directory_without_sign_in_lists_valid_mou_only(listed, browser):
    """R-NET-2 (R-MOU-3): no sign-in; only programs with a valid Agency MOU."""
    response = browser.get("/directory/")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    for name in ("Missoula Food Bank", "Statewide Telehealth", "Program A1", "Program B1"):
        assert name in text
    for name in HIDDEN:
        assert name not in text
    for program in (listed.lapsed, listed.expired, listed.inactive):
        assert browser.get(f"/directory/program/{program.id}").status_code == 404


def test_r_net_2_program_page(listed, browser):
    """R-NET-2, R-NET-1: a page per program with services, counties, insurance,
    telemedicine and contact."""
    text = browser.get(f"/directory/program/{listed.food.id}").get_data(as_text=True)
    for part in ("Missoula Food Bank", "Agency B", "Food pantry / food bank", "Missoula",
                 "(406) 555-0199", "food@example.org", "https://food.example.org", "Telemedicine"):
        assert part in text
    tele = browser.get(f"/directory/program/{listed.tele.id}").get_data(as_text=True)
    assert "All counties (telemedicine)" in tele


def _id(model, name):
    return model.get(model.name == name).id


@pytest.mark.parametrize("field, model, value, shown, not_shown", [
    ("region", models.Region, "Region 9 - Missoula", ["Missoula Food Bank", "Statewide Telehealth"], ["Program A1"]),
    ("county", models.County, "Gallatin", ["Program A1", "Statewide Telehealth"], ["Missoula Food Bank"]),
    ("service", models.Service, "Food pantry / food bank", ["Missoula Food Bank"], ["Program B1"]),
    ("insurance", models.InsuranceType, "Medicaid", ["Program B1"], ["Missoula Food Bank"]),
    ("agency", models.Agency, "Agency A", ["Program A2"], ["Program B1"]),
])
def test_r_net_2_directory_filters_like_agencies_report(listed, browser, field, model, value, shown, not_shown):
    """R-NET-2: the Agencies Report's five filters."""
    text = browser.get(f"/directory/?{field}={_id(model, value)}").get_data(as_text=True)
    listing = text.split('class="list-unstyled directory-list"')[1]
    for name in shown:
        assert name in listing
    for name in not_shown:
        assert name not in listing


def test_r_net_2_no_client_data_on_any_public_page(listed, browser):
    """R-NET-2: scan the HTML of every directory page (and each filter) for subject names
    and staff names: none appears."""
    urls = ["/directory/", "/directory/team"]
    urls += [f"/directory/program/{p.id}" for p in models.Program.select()]
    for field, model in (("region", models.Region), ("county", models.County),
                         ("service", models.Service), ("insurance", models.InsuranceType),
                         ("agency", models.Agency)):
        urls += [f"/directory/?{field}={row.id}" for row in model.select().limit(5)]
    subjects = [s.full_name for s in models.Subject.select()] + listed.secret_names
    staff = [listed.gk_a1.name, listed.pr_a1.name, listed.gk_b1.name, listed.pr_b1.name]
    for url in urls:
        text = browser.get(url).get_data(as_text=True)
        for name in subjects + staff + [s.split()[1] for s in listed.secret_names]:
            assert name not in text, (url, name)


def test_r_net_2_cached_and_invalidated_by_a_new_mou(listed, browser):
    """R-NET-2: cached answers (and Cache-Control for anonymous visitors); a newly
    signed Agency MOU shows at once."""
    first = browser.get("/directory/")
    assert first.headers["Cache-Control"] == "public, max-age=300"
    assert "Lapsed Shelter" not in first.get_data(as_text=True)
    started = time.perf_counter()
    for _ in range(20):
        reporting.directory_programs({})
    assert (time.perf_counter() - started) / 20 < 0.05
    gatekeeper = make_user("gatekeeper", listed.lapsed, name="Lapsed Keeper")
    workflow.sign_agency_mou(actor(gatekeeper, listed.lapsed), listed.lapsed, "Lapsed Keeper")
    assert "Lapsed Shelter" in browser.get("/directory/").get_data(as_text=True)
    browser.login(listed.gk_a1)
    assert browser.get("/directory/").headers["Cache-Control"] == "private, no-store"


def test_r_net_2_map_is_a_static_script_over_a_server_rendered_list(listed, browser, app):
    """R-NET-2: Leaflet from our own static files, tiles from TILE_URL, a marker per
    located program as data on the list; no inline script (CSP)."""
    response = browser.get("/directory/")
    text = response.get_data(as_text=True)
    assert "/static/vendor/leaflet/leaflet.js" in text and "/static/directory_map.js" in text
    assert f'data-tiles="{app.config["TILE_URL"]}"' in text
    assert 'data-lat="46.8721" data-lon="-113.994"' in text
    for tag in re.findall(r"<script[^>]*>", text):
        assert "src=" in tag, tag
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert browser.get("/static/vendor/leaflet/leaflet.js").status_code == 200
    assert browser.get("/static/vendor/leaflet/leaflet.css").status_code == 200


def test_r_net_4_team_locator(listed, browser):
    """R-NET-4: per region, the designated administrators (staff contacts, name and email
    on purpose) and how an organization asks to join."""
    make_user(admin=True, statewide=False, regions=("Region 9 - Missoula",),
              name="Rhea Regional", email="rhea@example.org")
    make_user(admin=True, statewide=False, regions=("Region 9 - Missoula",), active=False,
              name="Gone Coordinator", email="gone@example.org")
    text = browser.get("/directory/team").get_data(as_text=True)
    assert "How an organization asks to join" in text
    missoula = text.split("Region 9 - Missoula")[1].split("</tr>")[0]
    assert "Rhea Regional" in missoula and "rhea@example.org" in missoula
    assert "Ada Admin" in text.split("State team")[1]  # the statewide administrator
    assert "Gone Coordinator" not in text
    gallatin = text.split("Region 10 - Gallatin")[1].split("</tr>")[0]
    assert "Contact the state team" in gallatin


def test_r_net_1_regions_group_counties_on_the_team_page(listed, browser):
    """R-NET-1: regions group counties; programs list counties, services, insurance."""
    text = browser.get("/directory/team").get_data(as_text=True)
    region = models.Region.get(models.Region.name == "Region 10 - Gallatin")
    row = text.split(region.name)[1].split("</tr>")[0]
    counties = [c.name for c in models.County.select().where(models.County.region == region)]
    assert counties and all(name in row for name in counties)
    assert "Missoula" not in row
    details = reporting.directory_program(listed.food.id)
    assert details["counties"] == ["Missoula"] and details["insurance"] == []
    assert details["services"] == ["Food pantry / food bank"]


def test_r_net_2_cache_follows_link_changes(listed):
    """R-NET-2: changing a program's services drops the cached answer at once."""
    pantry = models.Service.get(models.Service.name == "Food pantry / food bank")
    assert [p["name"] for p in reporting.directory_programs({"service": str(pantry.id)})] == ["Missoula Food Bank"]
    models.ProgramService.create(program=listed.b1, service=pantry)
    names = [p["name"] for p in reporting.directory_programs({"service": str(pantry.id)})]
    assert names == ["Missoula Food Bank", "Program B1"]
    models.Agency.update(active=False).where(models.Agency.id == listed.agency_b.id).execute()
    assert reporting.directory_programs({"service": str(pantry.id)}) == []


def test_r_net_2_renamed_agency_shows_at_once_despite_the_cache(listed, browser):
    """R-NET-2 (issue 6): the directory's answers and filter choices are cached under a
    fingerprint of the network taken in one statement; an agency renamed through the
    administrators' save (audited) changes it, so the new name shows at once."""
    assert listed.agency_a.name in browser.get("/directory/").get_data(as_text=True)

    def rename(agency):
        agency.name = "Renamed Health Collective"

    workflow.save_record(actor(listed.admin), listed.agency_a, rename)
    page = browser.get("/directory/").get_data(as_text=True)
    assert page.count("Renamed Health Collective") >= 2  # a result and a filter choice
