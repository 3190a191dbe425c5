"""The directory in HSDS 3.0 (issue 8, items 6 and 7): public endpoints, export, import.

Output is validated with jsonschema against the standard's own compiled schemas; the
standard's examples go in and come back out; bad input gives a report, never a traceback.
"""

import csv
import datetime as dt
import functools
import json
import os
import pathlib
import shutil
import uuid

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from playhouse.test_utils import count_queries

import models
from api import hsds
from tests.conftest import make_agency, make_program, make_roi, make_subject, make_user

STANDARD = pathlib.Path(os.environ.get("HSDS_STANDARD_DIR", "/work/shared/standards/hsds-3.0"))
EXAMPLES = STANDARD / "examples"
PLACE = {"address": "12 Oak St", "city": "Bozeman", "zip_code": "59715", "phone": "(406) 555-0199",
         "latitude": 45.67, "longitude": -111.04, "hours": "Mon-Fri 8-5"}


@functools.lru_cache(maxsize=None)
def validator(name):
    path = STANDARD / "compiled" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"the HSDS 3.0 standard is not at {STANDARD} (set HSDS_STANDARD_DIR)")
    return Draft202012Validator(json.loads(path.read_text()), format_checker=FormatChecker())


def assert_valid(name, record):
    errors = sorted(validator(name).iter_errors(record), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


def get_json(client, url, status=200):
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    return response.get_json()


def sign_mou(program, day=None):
    day = day or models.local_today()
    models.Program.update(mou_valid_until=models.last_valid_day(day)).where(
        models.Program.id == program.id).execute()


def run_cli(app, *args):
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def directory(app):
    """Agencies A and B with published programs (one by telemedicine) and the programs that
    must stay hidden: no MOU, an expired MOU, an inactive program, an inactive agency.
    No users: hashing their passwords would make each test seconds slower."""
    network = type("Directory", (), {})()
    network.agency_a = make_agency("Agency A", address="1 Agency Way", city="Bozeman", zip_code="59715",
                                   email="info@agency-a.org", website="https://agency-a.org")
    network.agency_b = make_agency("Agency B", region="Region 9 - Missoula")
    network.a1 = make_program(network.agency_a, "Program A1", **PLACE)
    network.a2 = make_program(network.agency_a, "Program A2", **PLACE)
    network.b1 = make_program(network.agency_b, "Program B1", counties=("Missoula",), **PLACE)
    network.tele = make_program(network.agency_b, "Tele Counseling", telemedicine=True,
                                services=("Mental health counseling",), counties=("Missoula", "Ravalli"),
                                insurance=("Medicaid", "Medicare"))
    network.no_mou = make_program(network.agency_a, "Hidden No MOU", mou=False, **PLACE)
    network.expired = make_program(network.agency_a, "Hidden Expired", **PLACE)
    models.Program.update(mou_valid_until=models.local_today() - dt.timedelta(days=1)).where(
        models.Program.id == network.expired.id).execute()
    network.inactive = make_program(network.agency_a, "Hidden Inactive", active=False, **PLACE)
    closed = make_agency("Closed Agency", active=False)
    network.closed = make_program(closed, "Hidden Closed Agency", **PLACE)
    network.hidden = (network.no_mou, network.expired, network.inactive, network.closed)
    return network


# ---------------------------------------------------------------------------
# Public endpoints
# ---------------------------------------------------------------------------

def test_r_net_2_hsds_endpoints_are_public_valid_hsds(app, directory):
    """R-NET-2: /hsds answers without sign-in, cacheable, valid against the compiled schemas;
    R-NET-1: each program's counties, services, insurance types and telemedicine are there."""
    client = app.test_client()
    response = client.get("/hsds/services?full=true")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    page = response.get_json()
    names = {s["name"] for s in page["contents"]}
    assert {"Program A1", "Program A2", "Program B1", "Tele Counseling"} <= names
    for service in page["contents"]:
        assert_valid("service", service)
    detail = get_json(client, f"/hsds/services/{hsds.service_id(directory.tele)}")
    assert_valid("service", detail)
    assert {a["name"] for a in detail["service_areas"]} == {"Missoula", "Ravalli"}
    terms = {(a["link_type"], a["taxonomy_term"]["name"]) for a in detail["attributes"]}
    assert {("service_type", "Mental health counseling"), ("payment_accepted", "Medicaid"),
            ("payment_accepted", "Medicare"), ("delivery_method", "Telemedicine")} <= terms
    assert detail["organization"]["name"] == "Agency B"

    orgs = get_json(client, "/hsds/organizations?full_service=true")["contents"]
    assert {o["name"] for o in orgs} == {"Agency A", "Agency B"}
    for org in orgs:
        assert_valid("organization", org)
    org = get_json(client, f"/hsds/organizations/{hsds.organization_id(directory.agency_a)}")
    assert_valid("organization", org)
    assert org["website"] == "https://agency-a.org"
    assert {s["name"] for s in org["services"]} == {"Program A1", "Program A2"}

    sals = get_json(client, "/hsds/service_at_locations?full=true")["contents"]
    assert {s["service"]["name"] for s in sals} == {"Program A1", "Program A2", "Program B1"}
    for sal in sals:
        assert_valid("service_at_location", sal)
    one = get_json(client, f"/hsds/service_at_locations/{hsds.service_at_location_id(directory.a1)}")
    assert_valid("service_at_location", one)
    address = one["location"]["addresses"][0]
    assert (address["address_1"], address["city"], address["postal_code"]) == ("12 Oak St", "Bozeman", "59715")
    assert get_json(client, "/hsds/")["version"] == "3.0"


def test_hsds_taxonomies_and_terms(app, directory):
    """/hsds/taxonomies and /hsds/taxonomy_terms resolve the terms that services carry."""
    client = app.test_client()
    term_schema = validator("service").schema["properties"]["attributes"]["items"]["properties"]["taxonomy_term"]
    term_validator = Draft202012Validator(term_schema, format_checker=FormatChecker())
    taxonomies = get_json(client, "/hsds/taxonomies")["contents"]
    assert {t["name"] for t in taxonomies} == {name for name, _ in hsds.TAXONOMIES.values()}
    services_taxonomy = next(t for t in taxonomies if t["name"] == "CONNECT services")
    assert get_json(client, f"/hsds/taxonomies/{services_taxonomy['id']}") == services_taxonomy
    terms = get_json(client, f"/hsds/taxonomy_terms?taxonomy_id={services_taxonomy['id']}&per_page=200")
    assert terms["total_items"] == models.Service.select().count() + len(
        {s.category for s in models.Service.select()})
    for term in terms["contents"]:
        assert not list(term_validator.iter_errors(term))
    detail = get_json(client, f"/hsds/services/{hsds.service_id(directory.tele)}")
    used = {a["taxonomy_term_id"] for a in detail["attributes"]}
    for term_id in used:
        assert get_json(client, f"/hsds/taxonomy_terms/{term_id}")["id"] == term_id
    top = get_json(client, "/hsds/taxonomy_terms?top_only=true&search=basic")["contents"]
    assert [t["name"] for t in top] == ["Basic Needs"]
    get_json(client, f"/hsds/taxonomy_terms/{uuid.uuid4()}", 404)


def test_hsds_list_pages_are_one_to_one_unless_full(app, directory):
    """Lists carry one-to-one fields (openapi service_list); full=true nests everything."""
    client = app.test_client()
    item = get_json(client, "/hsds/services")["contents"][0]
    assert "attributes" not in item and "service_areas" not in item
    assert set(item["organization"]) <= {"id", "name", "description", "email", "website"}
    assert_valid("service", item)


def test_r_mou_3_hsds_hides_programs_without_valid_mou(app, directory):
    """R-MOU-3, R-NET-2: no MOU, an expired MOU, an inactive program or agency: not published,
    and their ids answer 404 like unknown ids."""
    client = app.test_client()
    listed = json.dumps([get_json(client, url) for url in (
        "/hsds/services?full=true&per_page=200", "/hsds/organizations?full_service=true",
        "/hsds/service_at_locations?full=true&per_page=200")])
    for program in directory.hidden:
        assert program.name not in listed
        assert hsds.service_id(program) not in listed
        get_json(client, f"/hsds/services/{hsds.service_id(program)}", 404)
        get_json(client, f"/hsds/service_at_locations/{hsds.service_at_location_id(program)}", 404)
    assert "Closed Agency" not in listed
    closed = models.Agency.get(models.Agency.name == "Closed Agency")
    get_json(client, f"/hsds/organizations/{hsds.organization_id(closed)}", 404)
    for bad in ("not-a-uuid", str(uuid.uuid4()), "1"):
        get_json(client, f"/hsds/services/{bad}", 404)
    sign_mou(directory.no_mou)
    assert "Hidden No MOU" in json.dumps(get_json(client, "/hsds/services?per_page=200"))


def test_r_net_2_hsds_never_contains_client_or_user_names(app, directory, tmp_path):
    """R-NET-2: no client data and no user names anywhere in the API or the export."""
    subjects = [make_subject(directory.a1, first_name=f"Quillon{n}", last_name=f"Zaffrebeck{n}",
                             email=f"quillon{n}@client.example") for n in range(3)]
    staff = make_user("gatekeeper", directory.tele, name="Ottoline Vexworth", email="ottoline@staff.example")
    make_roi(subjects[0], directory.a1, others=(directory.b1,), user=staff)
    client = app.test_client()
    bodies = [client.get(url).get_data(as_text=True) for url in (
        "/hsds/services?full=true&per_page=200", "/hsds/organizations?full=true&full_service=true",
        "/hsds/service_at_locations?full=true", f"/hsds/services/{hsds.service_id(directory.a1)}",
        f"/hsds/organizations/{hsds.organization_id(directory.agency_a)}")]
    run_cli(app, "export-hsds", str(tmp_path / "out"))
    bodies += [p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    text = "\n".join(bodies).lower()
    forbidden = [s.first_name for s in subjects] + [s.last_name for s in subjects] + [
        s.email for s in subjects] + ["ottoline", "vexworth", staff.email]
    forbidden += [u.name for u in models.User.select()] + [u.email for u in models.User.select()]
    for word in forbidden:
        assert word.lower() not in text, word


def test_hsds_pagination(app, directory):
    """Pages as openapi.json's Page: total_items, total_pages, page_number, size, flags."""
    for n in range(7):
        make_program(directory.agency_b, f"Extra {n:02d}")
    client = app.test_client()
    total = models.Program.with_valid_mou().join(models.Agency).where(models.Agency.active).count()
    seen, page_number = [], 1
    while True:
        page = get_json(client, f"/hsds/services?per_page=3&page={page_number}")
        assert page["total_items"] == total
        assert page["total_pages"] == -(-total // 3)
        assert page["page_number"] == page_number and page["size"] == len(page["contents"])
        assert page["first_page"] == (page_number == 1)
        seen += [s["id"] for s in page["contents"]]
        if page["last_page"]:
            break
        assert page["size"] == 3
        page_number += 1
    assert len(seen) == total == len(set(seen))
    beyond = get_json(client, f"/hsds/services?per_page=3&page={page_number + 1}")
    assert beyond["empty"] and beyond["contents"] == [] and beyond["total_items"] == total
    assert get_json(client, "/hsds/services?per_page=100000")["size"] == total  # clamped, not refused
    for bad in ("page=0", "page=abc", "per_page=0", "per_page=-3", "modified_after=yesterday"):
        assert "error" in get_json(client, f"/hsds/services?{bad}", 400)
    orgs = get_json(client, "/hsds/organizations?per_page=1&page=2")
    assert orgs["total_items"] == 2 and orgs["size"] == 1 and orgs["last_page"]


def test_hsds_filters(app, directory):
    """search, organization_id, taxonomy_term_id and modified_after narrow the lists."""
    client = app.test_client()

    def names(query):
        return {s["name"] for s in get_json(client, f"/hsds/services?{query}")["contents"]}
    assert names("search=tele") == {"Tele Counseling"}
    assert names(f"organization_id={hsds.organization_id(directory.agency_a)}") == {"Program A1", "Program A2"}
    counseling = models.Service.get(models.Service.name == "Mental health counseling")
    assert names(f"taxonomy_term_id={hsds.service_term(counseling)['id']}") == {"Tele Counseling"}
    assert names(f"taxonomy_term_id={hsds.telemedicine_term()['id']}") == {"Tele Counseling"}
    assert names("modified_after=2999-01-01T00:00:00Z") == set()
    assert len(names("modified_after=2000-01-01")) == 4


def test_hsds_services_page_queries_do_not_grow_with_rows(app, directory):
    """A full page costs the same few queries for 4 programs or 14 (no N+1)."""
    client = app.test_client()
    with count_queries() as few:
        client.get("/hsds/services?full=true")
    for n in range(10):
        make_program(directory.agency_b, f"More {n}", **PLACE)
    with count_queries() as many:
        client.get("/hsds/services?full=true")
    assert many.count == few.count


def test_hsds_is_read_only(app, directory):
    """GET only: no change can be made through /hsds."""
    client = app.test_client()
    for url in ("/hsds/services", "/hsds/organizations", "/hsds/service_at_locations"):
        assert client.post(url).status_code in (400, 405)


def test_hsds_ids_are_stable_uuid5(app, directory):
    """Ids are uuid5 of our ids (or the source's own UUID), the same on every export."""
    ns = hsds.namespace()
    assert hsds.service_id(directory.a1) == str(uuid.uuid5(ns, f"program/{directory.a1.id}"))
    assert hsds.organization_id(directory.agency_a) == str(uuid.uuid5(ns, f"agency/{directory.agency_a.id}"))
    external = str(uuid.uuid4())
    models.Program.update(external_id=external).where(models.Program.id == directory.b1.id).execute()
    assert hsds.service_id(models.Program.get_by_id(directory.b1.id)) == external
    client = app.test_client()
    assert get_json(client, f"/hsds/services/{external}")["name"] == "Program B1"


def test_hsds_ids_differ_between_deployments(app, directory, monkeypatch):
    """Two networks never mint the same id for their agency 1: the namespace follows
    BASE_URL unless HSDS_ID_NAMESPACE pins it."""
    first = hsds.service_id(directory.a1)
    monkeypatch.setenv("BASE_URL", "https://connect.mt.example")
    montana = hsds.service_id(directory.a1)
    monkeypatch.setenv("BASE_URL", "https://connect.ct.example")
    assert len({first, montana, hsds.service_id(directory.a1)}) == 3
    pinned = str(uuid.uuid4())
    monkeypatch.setenv("HSDS_ID_NAMESPACE", pinned)
    assert hsds.service_id(directory.a1) == str(uuid.uuid5(uuid.UUID(pinned), f"program/{directory.a1.id}"))


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------

def test_export_hsds_json_and_data_package(app, directory, tmp_path):
    """export-hsds writes valid organizations/services/service_at_locations JSON and a CSV
    data package whose tables have the standard's columns (as examples/tabular.json)."""
    result = run_cli(app, "export-hsds", str(tmp_path))
    assert "Wrote 2 organizations, 4 services" in result.output
    for name, file in (("organization", "organizations"), ("service", "services"),
                       ("service_at_location", "service_at_locations")):
        records = json.loads((tmp_path / f"{file}.json").read_text())
        assert records
        for record in records:
            assert_valid(name, record)
    package = json.loads((tmp_path / "csv" / "datapackage.json").read_text())
    assert package["profile"] == "tabular-data-package"
    tabular = json.loads((EXAMPLES / "tabular.json").read_text())
    paths = {r["path"] for r in package["resources"]}
    assert {"organizations.csv", "services.csv", "locations.csv", "addresses.csv", "phones.csv",
            "service_at_location.csv", "service_areas.csv", "attributes.csv",
            "taxonomy_terms.csv", "taxonomies.csv", "schedules.csv"} <= paths
    for resource in package["resources"]:
        with open(tmp_path / "csv" / resource["path"], newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        assert reader.fieldnames == [f["name"] for f in resource["schema"]["fields"]]
        assert reader.fieldnames == list(tabular[resource["path"]][0].keys())
        assert rows and all(row["id"] for row in rows)
        assert len({row["id"] for row in rows}) == len(rows)
    services = list(csv.DictReader(open(tmp_path / "csv" / "services.csv", newline="")))
    assert {s["name"] for s in services} == {"Program A1", "Program A2", "Program B1", "Tele Counseling"}


def test_export_then_import_matches_everything(app, directory, tmp_path):
    """Our own export read back (JSON and CSV) matches every record: nothing duplicated."""
    run_cli(app, "export-hsds", str(tmp_path))
    before = (models.Agency.select().count(), models.Program.select().count())
    for path in (tmp_path, tmp_path / "csv"):
        result = run_cli(app, "import-hsds", str(path))
        assert "created 0 organizations, 0 services; matched 2 organizations, 4 services; " \
               "refused 0 organizations, 0 services" in result.output
    assert (models.Agency.select().count(), models.Program.select().count()) == before


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------

def _csv_package_from_tabular(folder):
    """The standard's tabular example written out as a CSV package (datapackage + files)."""
    tabular = json.loads((EXAMPLES / "tabular.json").read_text())
    folder.mkdir()
    for name, rows in tabular.items():
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (folder / "datapackage.json").write_text(json.dumps(
        {"name": "example", "resources": [{"name": n[:-4], "path": n} for n in tabular]}))
    return folder


EXAMPLE_SOURCES = ["organization_full.json", "service_full.json", "service_at_location_full.json",
                   "tabular.json", "csv-package"]


@pytest.mark.parametrize("source", EXAMPLE_SOURCES)
def test_r_mou_3_standard_examples_import_and_export_back(app, tmp_path, source):
    """R-MOU-3: the standard's examples are imported as an agency and a program without an
    MOU (invisible), then, once signed, exported back with every field we hold."""
    path = _csv_package_from_tabular(tmp_path / "pkg") if source == "csv-package" else EXAMPLES / source
    result = run_cli(app, "import-hsds", str(path), "--default-region", "R10")
    assert "created 1 organizations, 1 services" in result.output, result.output
    assert "latitude 100 is not a valid coordinate; left out" in result.output
    program = models.Program.get(models.Program.name == "Community Counselling")
    assert program.mou_valid_until is None and not program.has_valid_mou()
    client = app.test_client()
    assert "Community Counselling" not in client.get("/hsds/services?per_page=200").get_data(as_text=True)
    get_json(client, "/hsds/services/ac148810-d857-441c-9679-408f346de14b", 404)

    again = run_cli(app, "import-hsds", str(path), "--default-region", "R10")
    assert "matched 1 organizations, 1 services" in again.output
    assert models.Program.select().where(models.Program.name == "Community Counselling").count() == 1

    sign_mou(program)
    run_cli(app, "export-hsds", str(tmp_path / "out"))
    orgs = json.loads((tmp_path / "out" / "organizations.json").read_text())
    org = next(o for o in orgs if o["name"] == "Example Organization Inc.")
    assert_valid("organization", org)
    original = json.loads((EXAMPLES / "organization_full.json").read_text())
    assert org["id"] == original["id"]  # the source's UUID is kept
    for field in ("name", "description", "email", "website"):
        assert org[field] == original[field], field
    assert org["phones"][0]["number"] == "+44 1234 234567"
    service = org["services"][0]
    expected = original["services"][0]
    assert service["id"] == expected["id"]
    for field in ("name", "description", "url", "email", "status"):
        assert service[field] == expected[field], field
    assert service["phones"][0]["number"] == "+44 1234 234567"
    assert service["schedules"][0]["description"] == expected["schedules"][0]["description"]
    address = service["service_at_locations"][0]["location"]["addresses"][0]
    source_address = expected["service_at_locations"][0]["location"]["addresses"][0]
    assert address["address_1"] == f"{source_address['address_1']}, {source_address['address_2']}"
    assert (address["city"], address["postal_code"]) == (source_address["city"], source_address["postal_code"])
    served = get_json(client, f"/hsds/services/{expected['id']}")
    assert_valid("service", served)


def test_import_matches_existing_agency_by_name_and_city(app, directory, tmp_path):
    """An agency and program already here are matched by name and city, not duplicated;
    the same name in another city is another organization."""
    network = directory
    doc = [{"id": "org-1", "name": "AGENCY  a", "description": "",
            "locations": [{"id": "l1", "location_type": "physical", "addresses": [
                {"id": "a1", "address_1": "1 agency way", "city": "bozeman", "state_province": "MT",
                 "postal_code": "59715", "country": "US", "address_type": "physical"}]}],
            "services": [{"id": "svc-1", "name": "Program A1", "status": "active"},
                         {"id": "svc-2", "name": "Program A9", "status": "active",
                          "service_areas": [{"id": "sa", "name": "Gallatin County, MT"}],
                          "attributes": [{"id": "at", "taxonomy_term": {"id": "t", "name": "Food pantry / food bank",
                                                                        "description": ""}}]}]},
           {"id": "org-2", "name": "Agency A", "description": "",
            "locations": [{"id": "l2", "location_type": "physical", "addresses": [
                {"id": "a2", "address_1": "9 Elm", "city": "Billings", "state_province": "MT",
                 "postal_code": "59101", "country": "US", "address_type": "physical"}]}]}]
    (tmp_path / "in.json").write_text(json.dumps(doc))
    result = run_cli(app, "import-hsds", str(tmp_path / "in.json"), "--default-region", "R10")
    assert 'MATCHED  organization "Agency A" [org-1]: by name and city' in result.output
    assert 'MATCHED  service "Program A1" [svc-1]: by name and city' in result.output
    assert 'CREATED  service "Program A9"' in result.output
    assert 'CREATED  organization "Agency A" [org-2]' in result.output
    new = models.Program.get(models.Program.name == "Program A9")
    assert new.agency_id == network.agency_a.id and new.mou_valid_until is None
    assert [c.county.name for c in new.county_links] == ["Gallatin"]
    assert [s.service.name for s in new.service_links] == ["Food pantry / food bank"]
    assert models.Agency.get_by_id(network.agency_a.id).external_id == "org-1"
    second = run_cli(app, "import-hsds", str(tmp_path / "in.json"), "--default-region", "R10")
    assert "created 0 organizations, 0 services; matched 2 organizations, 2 services" in second.output
    assert 'MATCHED  organization "Agency A" [org-1]: by its id in the source' in second.output
    audit = models.AuditEvent.select().where(models.AuditEvent.action == "import_hsds_create").count()
    assert audit == 2  # one agency (Billings) and one program (A9)


BAD_RECORDS = [
    ("not an object", 42, "not a JSON object"),
    ("organization without a name", {"id": "o1", "description": "x"}, "it has no name"),
    ("name not text", {"id": "o2", "name": ["x"], "description": ""}, "it has no name"),
    ("name too long", {"id": "o3", "name": "N" * 300, "description": ""}, "longer than 200 characters"),
    ("service without organization", {"id": "s1", "name": "Loose", "status": "active"},
     "no organization given"),
    ("defunct service", {"id": "o4", "name": "Org Four", "description": "", "services": [
        {"id": "s4", "name": "Old", "status": "defunct"}]}, "the source marks it defunct"),
    ("service without a name", {"id": "o5", "name": "Org Five", "description": "", "services": [
        {"id": "s5", "status": "active", "name": None}]}, "it has no name"),
]


@pytest.mark.parametrize("label,record,reason", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_import_bad_records_are_refused_with_a_reason(app, tmp_path, label, record, reason):
    """Each bad record gets a REFUSED line with its reason; the good ones still import."""
    good = {"id": "good", "name": "Good Org", "description": "",
            "services": [{"id": "good-s", "name": "Good Service", "status": "active"}]}
    (tmp_path / "in.json").write_text(json.dumps([record, good]))
    result = run_cli(app, "import-hsds", str(tmp_path / "in.json"), "--default-region", "R10")
    refused = [line for line in result.output.splitlines() if line.startswith("REFUSED")]
    assert refused and reason in "\n".join(refused), result.output
    assert 'CREATED  service "Good Service"' in result.output


def test_import_odd_values_are_left_out_with_a_note(app, tmp_path):
    """Wrong types and bad values in optional fields are dropped with a note, never a crash."""
    doc = {"id": "odd", "name": "Odd Org", "description": 17, "email": "not-an-email",
           "website": "javascript:alert(1)", "phones": "none", "locations": [5, {"addresses": "x"}],
           "services": [{"id": "odd-s", "name": "Odd Service", "status": "active", "url": "ftp://x",
                         "email": {"a": 1}, "phones": [{"number": "1" * 40}],
                         "service_areas": [{"name": 12}, "Gallatin"], "attributes": [1, {"taxonomy_term": "x"}],
                         "service_at_locations": [{"location": {"location_type": "physical",
                                                                "latitude": "abc", "longitude": -500,
                                                                "addresses": [{"city": "C" * 150}]}}],
                         "schedules": [{"description": "D" * 300}]}]}
    (tmp_path / "odd.json").write_text(json.dumps(doc))
    result = run_cli(app, "import-hsds", str(tmp_path / "odd.json"), "--default-region", "R10")
    assert "created 1 organizations, 1 services" in result.output, result.output
    for note in ("email is not an email address", "website is not a web address",
                 "url is not a web address", "email is not text", "phone is longer than 30",
                 "latitude abc is not a valid coordinate", "longitude -500 is not a valid coordinate",
                 "city is longer than 100", "opening hours shortened"):
        assert note in result.output, note
    program = models.Program.get(models.Program.name == "Odd Service")
    assert (program.email, program.website, program.phone, program.latitude) == ("", "", "", None)
    assert len(program.hours) == 200
    assert models.Agency.get(models.Agency.name == "Odd Org").description == "17"


BAD_SOURCES = [
    ("missing", None, "does not exist"),
    ("not json", "{not json", "is not valid JSON"),
    ("empty file", "", "is not valid JSON"),
    ("binary", b"\xff\xfe\x00\x81", "is not UTF-8 text"),
]


@pytest.mark.parametrize("label,content,message", BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES])
def test_import_unreadable_source_is_a_clear_message(app, tmp_path, label, content, message):
    """A file that cannot be read at all: one clear sentence, exit code 1, nothing changed."""
    path = tmp_path / "in.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    before = models.Agency.select().count()
    result = run_cli(app, "import-hsds", str(path))
    assert result.exit_code == 1
    assert "Nothing imported:" in result.output and message in result.output
    assert models.Agency.select().count() == before


def test_import_bad_csv_packages(app, tmp_path):
    """CSV packages: a bad datapackage.json, no organizations.csv, orphan services, a path
    outside the folder: clear messages, per-record refusals."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "datapackage.json").write_text("{oops")
    assert "datapackage.json is not a valid" in run_cli(app, "import-hsds", str(folder)).output
    (folder / "datapackage.json").write_text(json.dumps({"resources": [
        {"path": "../secret.csv"}, {"path": "services.csv"}]}))
    (folder / "services.csv").write_text("id,organization_id,name,status\ns1,nowhere,Orphan,active\n")
    assert "has no organizations.csv" in run_cli(app, "import-hsds", str(folder)).output
    (folder / "datapackage.json").unlink()
    (folder / "organizations.csv").write_text("id,name,description\no1,Csv Org,\n,,\n")
    result = run_cli(app, "import-hsds", str(folder), "--default-region", "Region 10 - Gallatin")
    assert 'REFUSED  service "Orphan" [s1]: its organization_id names no row' in result.output
    assert 'CREATED  organization "Csv Org"' in result.output
    assert 'REFUSED  organization "(no name)": it has no name' in result.output


def test_import_region_from_service_areas_or_refused(app, tmp_path):
    """The region comes from the counties served; without any, --default-region or refusal."""
    doc = [{"id": "r1", "name": "Missoula Helpers", "description": "", "services": [
        {"id": "r1s", "name": "Help", "status": "active", "service_areas": [{"name": "Missoula County"}]}]},
        {"id": "r2", "name": "Nowhere Helpers", "description": ""}]
    (tmp_path / "in.json").write_text(json.dumps(doc))
    result = run_cli(app, "import-hsds", str(tmp_path / "in.json"))
    assert models.Agency.get(models.Agency.name == "Missoula Helpers").region.name == "Region 9 - Missoula"
    assert 'REFUSED  organization "Nowhere Helpers" [r2]: its region cannot be told' in result.output
    assert "there is no region called" in run_cli(app, "import-hsds", str(tmp_path / "in.json"),
                                                  "--default-region", "Atlantis").output


def test_import_directory_of_json_files(app, tmp_path):
    """A directory of JSON files (a list page, a single service) is read as one source."""
    shutil.copy(EXAMPLES / "service_list.json", tmp_path / "a.json")
    shutil.copy(EXAMPLES / "service_at_location_list.json", tmp_path / "b.json")
    result = run_cli(app, "import-hsds", str(tmp_path), "--default-region", "R10")
    assert "created 1 organizations, 1 services" in result.output, result.output
