"""The directory in HSDS 3.0 (Open Referral): agencies as organizations, programs as services.

Only programs with a valid Agency MOU (and active agencies) are published (R-MOU-3,
R-NET-2); nothing here reads subjects, referrals or users. Ids are UUIDs derived with uuid5
from our ids (stable across exports), or the source's own UUID for imported records, so
that a 211 recognises its records when they come back. See api/HSDS_MAPPING.md.
"""

import csv
import datetime as dt
import json
import math
import os
import pathlib
import threading
import uuid

from peewee import fn

from models import (
    Agency,
    County,
    InsuranceType,
    Program,
    ProgramCounty,
    ProgramInsurance,
    ProgramService,
    Region,
    Service,
)

HSDS_VERSION = "3.0"
OPENAPI_URL = "https://raw.githubusercontent.com/openreferral/specification/3.0/schema/openapi.json"
SCHEMA_DIR = pathlib.Path(__file__).resolve().parent / "hsds_schema"  # the standard's tables
# Ids are uuid5 in a namespace of the deployment (its BASE_URL), so two CONNECT networks
# never mint the same id for their agency 1; HSDS_ID_NAMESPACE pins it (a domain move).
DEFAULT_NAMESPACE = "1845e918-9c77-5884-a812-aaeff1b4a2f2"
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200

TAXONOMIES = {
    "services": ("CONNECT services",
                 "Services programs offer; codes from the 211 HSIS (AIRS) taxonomy where one exists."),
    "insurance": ("CONNECT insurance types", "Insurance and payment options a program accepts."),
    "delivery": ("CONNECT delivery", "How a program delivers its services."),
    "regions": ("CONNECT regions", "The network's regions, each a group of counties."),
}
LINK_SERVICE = "service_type"
LINK_INSURANCE = "payment_accepted"
LINK_DELIVERY = "delivery_method"
LINK_REGION = "region"
TELEMEDICINE_CODE = "telemedicine"


# ---------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------

def namespace():
    if os.environ.get("HSDS_ID_NAMESPACE"):
        return uuid.UUID(os.environ["HSDS_ID_NAMESPACE"])
    base_url = os.environ.get("BASE_URL", "").rstrip("/")
    if base_url:
        return uuid.uuid5(uuid.NAMESPACE_URL, base_url + "/hsds")
    return uuid.UUID(DEFAULT_NAMESPACE)


def hsds_id(*parts):
    """A stable UUID for one of our rows or values: uuid5 of its kind and key."""
    return str(uuid.uuid5(namespace(), "/".join(str(part) for part in parts)))


def is_uuid(value):
    try:
        uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def organization_id(agency):
    return agency.external_id if is_uuid(agency.external_id) else hsds_id("agency", agency.id)


def service_id(program):
    return program.external_id if is_uuid(program.external_id) else hsds_id("program", program.id)


def location_id(program):
    return hsds_id("program", program.id, "location")


def service_at_location_id(program):
    return hsds_id("program", program.id, "service_at_location")


def state_province():
    return os.environ.get("HSDS_STATE_PROVINCE", "MT")


# ---------------------------------------------------------------------------
# What is public (R-MOU-3, R-NET-2)
# ---------------------------------------------------------------------------

def public_programs(day=None):
    """Programs the public directory shows: valid Agency MOU, program and agency active."""
    return (Program.with_valid_mou(day).select(Program, Agency).join(Agency)
            .where(Agency.active).switch(Program))


def public_agencies(day=None):
    listed = public_programs(day).select(Program.agency)
    return Agency.select().where(Agency.active & Agency.id.in_(listed))


def with_location(query):
    """Programs that have a place to go to (an address or coordinates)."""
    return query.where((Program.address != "") | Program.latitude.is_null(False))


_ID_CACHE = {}
_ID_LOCK = threading.Lock()
ID_KINDS = {"organization": (Agency, "agency/{}"), "service": (Program, "program/{}"),
            "service_at_location": (Program, "program/{}/service_at_location")}


def local_id(kind, wanted):
    """Our row id behind a uuid5 HSDS id. uuid5 cannot be reversed, but the id of row n is
    always the same: the map is kept per process; a miss reads the ids (an index-only
    query) and hashes only the rows not seen before."""
    model, pattern = ID_KINDS[kind]
    ns = namespace()
    with _ID_LOCK:
        cache = _ID_CACHE.setdefault((kind, str(ns)), {"known": set(), "ids": {}})
        if wanted not in cache["ids"]:
            for (row_id,) in model.select(model.id).tuples():
                if row_id not in cache["known"]:
                    cache["ids"][str(uuid.uuid5(ns, pattern.format(row_id)))] = row_id
                    cache["known"].add(row_id)
        return cache["ids"].get(wanted)


def find_public(kind, wanted, day=None):
    """The public agency (organization) or program (service, service_at_location) with
    HSDS id `wanted` (the source's UUID or our uuid5), else None."""
    if not is_uuid(wanted):
        return None
    if kind == "organization":
        query, model = public_agencies(day), Agency
    else:
        query, model = public_programs(day), Program
        if kind == "service_at_location":
            query = with_location(query)
    if kind != "service_at_location":
        hit = query.where(model.external_id == wanted).first()
        if hit is not None:
            return hit
    row_id = local_id(kind, wanted)
    return query.where(model.id == row_id).first() if row_id else None


# ---------------------------------------------------------------------------
# Taxonomy terms and attributes
# ---------------------------------------------------------------------------

def taxonomy_record(key):
    name, description = TAXONOMIES[key]
    return {"id": hsds_id("taxonomy", key), "name": name, "description": description}


def _term(key, term_key, name, description, code=None, parent_id=None):
    record = {"id": hsds_id("taxonomy_term", key, term_key), "code": code, "name": name,
              "description": description, "parent_id": parent_id,
              "taxonomy": TAXONOMIES[key][0], "taxonomy_id": hsds_id("taxonomy", key),
              "taxonomy_detail": taxonomy_record(key)}
    return compact(record)


def category_term(category):
    return _term("services", f"category:{category}", category, f"Category: {category}")


def service_term(service):
    return _term("services", service.name, service.name, f"{service.category}: {service.name}",
                 code=service.code or None, parent_id=category_term(service.category)["id"])


def insurance_term(insurance):
    return _term("insurance", insurance.name, insurance.name, f"Accepts {insurance.name}.")


def telemedicine_term():
    return _term("delivery", TELEMEDICINE_CODE, "Telemedicine",
                 "Services offered by video or telephone.", code=TELEMEDICINE_CODE)


def region_term(region):
    return _term("regions", region.code, region.name, f"{region.name} (CONNECT region)",
                 code=region.code)


def attribute(link_id, link_entity, link_type, term, value=None):
    return compact({"id": hsds_id("attribute", link_id, term["id"]), "link_id": link_id,
                    "link_type": link_type, "link_entity": link_entity,
                    "taxonomy_term_id": term["id"], "value": value, "taxonomy_term": term})


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

def compact(record, keep=()):
    """Drop empty optional values: HSDS readers treat missing and empty alike, and format
    checks (uri, email) would refuse an empty string."""
    return {k: v for k, v in record.items() if k in keep or v not in (None, "", [])}


def timestamp(moment):
    return moment.replace(microsecond=0).isoformat() + "Z" if moment else None


def load_links(program_ids):
    """Counties, services and insurance types of many programs in three queries."""
    links = {pid: {"counties": [], "services": [], "insurance": []} for pid in program_ids}
    if not program_ids:
        return links
    for row in (ProgramCounty.select(ProgramCounty.program, County).join(County)
                .where(ProgramCounty.program.in_(program_ids)).order_by(County.name)):
        links[row.program_id]["counties"].append(row.county)
    for row in (ProgramService.select(ProgramService.program, Service).join(Service)
                .where(ProgramService.program.in_(program_ids)).order_by(Service.name)):
        links[row.program_id]["services"].append(row.service)
    for row in (ProgramInsurance.select(ProgramInsurance.program, InsuranceType).join(InsuranceType)
                .where(ProgramInsurance.program.in_(program_ids)).order_by(InsuranceType.name)):
        links[row.program_id]["insurance"].append(row.insurance_type)
    return links


def address_record(owner_key, location, street, city, zip_code):
    if not (street and city):
        return []
    return [{"id": hsds_id(*owner_key, "address"), "location_id": location, "address_1": street,
             "city": city, "state_province": state_province(), "postal_code": zip_code or "",
             "country": "US", "address_type": "physical"}]


def phone_records(owner_field, owner_id, key, number):
    if not number:
        return []
    return [{"id": hsds_id(*key, "phone"), owner_field: owner_id, "number": number}]


def organization_record(agency, regions=None, full=False, services=None):
    """An organization; full adds phones, the office and program locations, the region
    attribute and the given services (already built)."""
    org_id = organization_id(agency)
    record = compact({"id": org_id, "name": agency.name, "description": agency.description,
                      "email": agency.email, "website": agency.website},
                     keep=("description",))
    if not full:
        return record
    record["phones"] = phone_records("organization_id", org_id, ("agency", agency.id), agency.phone)
    locations = []
    if agency.address and agency.city:
        office = hsds_id("agency", agency.id, "location")
        locations.append({"id": office, "location_type": "physical", "organization_id": org_id,
                          "name": agency.name,
                          "addresses": address_record(("agency", agency.id), office, agency.address,
                                                      agency.city, agency.zip_code)})
    for service in services or []:
        for sal in service.get("service_at_locations", []):
            if "location" in sal:
                locations.append(sal["location"])
    record["locations"] = locations
    region = (regions or {}).get(agency.region_id)
    if region is not None:
        record["attributes"] = [attribute(org_id, "organization", LINK_REGION, region_term(region))]
    record["services"] = services or []
    return compact(record, keep=("description",))


def location_record(program, org_id):
    loc_id = location_id(program)
    return compact({
        "id": loc_id, "location_type": "physical", "organization_id": org_id,
        "name": program.name, "latitude": program.latitude, "longitude": program.longitude,
        "addresses": address_record(("program", program.id), loc_id, program.address,
                                    program.city, program.zip_code),
    })


def has_location(program):
    return bool(program.address) or program.latitude is not None


def service_at_location_record(program, org_id, full=False, service=None):
    record = {"id": service_at_location_id(program), "service_id": service_id(program),
              "location_id": location_id(program), "location": location_record(program, org_id)}
    if full:
        record["phones"] = phone_records("service_at_location_id", record["id"],
                                         ("program", program.id, "sal"), program.phone)
    if service is not None:
        record["service"] = service
    return compact(record)


def service_record(program, links, full=True, organization=True):
    """A service: one-to-one fields (+ its organization), or fully nested."""
    agency = program.agency
    svc_id, org_id = service_id(program), organization_id(agency)
    record = compact({
        "id": svc_id, "organization_id": org_id, "name": program.name,
        "description": program.description, "url": program.website, "email": program.email,
        "status": "active" if program.active else "inactive",
        "last_modified": timestamp(program.updated_at),
    })
    if organization:
        record["organization"] = organization_record(agency)
    if not full:
        return record
    link = links.get(program.id, {"counties": [], "services": [], "insurance": []})
    record["phones"] = phone_records("service_id", svc_id, ("program", program.id), program.phone)
    if program.hours:
        record["schedules"] = [{"id": hsds_id("program", program.id, "schedule"),
                                "service_id": svc_id, "description": program.hours}]
    record["service_areas"] = [
        {"id": hsds_id("program", program.id, "county", county.name), "service_id": svc_id,
         "name": county.name, "description": f"{county.name} County"}
        for county in link["counties"]]
    if has_location(program):
        record["service_at_locations"] = [service_at_location_record(program, org_id)]
    attributes = [attribute(svc_id, "service", LINK_SERVICE, service_term(s)) for s in link["services"]]
    attributes += [attribute(svc_id, "service", LINK_INSURANCE, insurance_term(i))
                   for i in link["insurance"]]
    if program.telemedicine:
        attributes.append(attribute(svc_id, "service", LINK_DELIVERY, telemedicine_term(), "true"))
    record["attributes"] = attributes
    if link["insurance"]:
        record["fees_description"] = "Accepts: " + ", ".join(i.name for i in link["insurance"]) + "."
    return compact(record)


def region_map():
    return {region.id: region for region in Region.select()}


def full_organizations(agencies, day=None, full_service=True):
    """Fully nested organizations with their public services (a few queries in all)."""
    agencies = list(agencies)
    programs = list(public_programs(day).where(Program.agency.in_([a.id for a in agencies]))
                    .order_by(Program.name, Program.id)) if agencies else []
    links = load_links([p.id for p in programs])
    by_agency = {}
    for program in programs:
        by_agency.setdefault(program.agency_id, []).append(program)
    regions = region_map()
    result = []
    for agency in agencies:
        services = [service_record(p, links, full=True, organization=False)
                    for p in by_agency.get(agency.id, [])]
        record = organization_record(agency, regions, full=True, services=services)
        if not full_service:
            record["services"] = [_one_to_one(s) for s in services]
        result.append(record)
    return result


def _one_to_one(record):
    return {k: v for k, v in record.items() if not isinstance(v, (list, dict))}


# ---------------------------------------------------------------------------
# Pages (HSDS openapi.json: components/schemas/Page)
# ---------------------------------------------------------------------------

class BadParameter(ValueError):
    """A query parameter the API cannot use; the message says which and why."""


def int_param(args, name, default, low, high=None):
    raw = args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name} must be a whole number.") from None
    if value < low:
        raise BadParameter(f"{name} must be at least {low}.")
    return min(value, high) if high else value


def bool_param(args, name):
    return str(args.get(name, "")).lower() in ("1", "true", "yes")


def page_of(query, args, build):
    """One HSDS page of `query` (ordered), items made by build(rows)."""
    page, per_page = _paging(args)
    rows = list(query.paginate(page, per_page))
    return _envelope(build(rows) if rows else [], query.count(), page, per_page)


def page_of_list(items, args):
    page, per_page = _paging(args)
    return _envelope(items[(page - 1) * per_page:page * per_page], len(items), page, per_page)


def _paging(args):
    return (int_param(args, "page", 1, 1),
            int_param(args, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE))


def _envelope(contents, total, page, per_page):
    total_pages = math.ceil(total / per_page)
    return {"total_items": total, "total_pages": total_pages, "page_number": page,
            "size": len(contents), "first_page": page == 1, "last_page": page >= total_pages,
            "empty": not contents, "contents": contents}


def _text_filter(query, args, *fields):
    term = (args.get("search") or "").strip()
    if term:
        condition = None
        for field in fields:
            clause = fn.LOWER(field).contains(term.lower())
            condition = clause if condition is None else condition | clause
        query = query.where(condition)
    return query


def _service_filters(query, args):
    query = _text_filter(query, args, Program.name, Program.description, Agency.name)
    if args.get("organization_id"):
        agency = find_public("organization", args["organization_id"])
        query = query.where(Program.agency == (agency.id if agency else 0))
    if args.get("taxonomy_term_id"):
        query = query.where(Program.id.in_(_programs_with_term(args["taxonomy_term_id"])))
    if args.get("modified_after"):
        try:
            after = dt.datetime.fromisoformat(args["modified_after"].replace("Z", "+00:00"))
        except ValueError:
            raise BadParameter("modified_after must be an ISO 8601 date and time.") from None
        if after.tzinfo:
            after = after.astimezone(dt.timezone.utc).replace(tzinfo=None)
        query = query.where(Program.updated_at >= after)
    return query


def _programs_with_term(term_id):
    for service in Service.select():
        if service_term(service)["id"] == term_id:
            return ProgramService.select(ProgramService.program).where(ProgramService.service == service)
    for insurance in InsuranceType.select():
        if insurance_term(insurance)["id"] == term_id:
            return ProgramInsurance.select(ProgramInsurance.program).where(
                ProgramInsurance.insurance_type == insurance)
    if telemedicine_term()["id"] == term_id:
        return Program.select(Program.id).where(Program.telemedicine)
    return Program.select(Program.id).where(Program.id.is_null())


def services_page(args):
    full = bool_param(args, "full")
    query = _service_filters(public_programs(), args).order_by(Program.name, Program.id)

    def build(rows):
        links = load_links([p.id for p in rows]) if full else {}
        return [service_record(p, links, full=full) for p in rows]
    return page_of(query, args, build)


def service_detail(wanted):
    program = find_public("service", wanted)
    if program is None:
        return None
    return service_record(program, load_links([program.id]), full=True)


def organizations_page(args):
    full = bool_param(args, "full") or bool_param(args, "full_service")
    query = _text_filter(public_agencies(), args, Agency.name, Agency.description)
    query = query.order_by(Agency.name, Agency.id)

    def build(rows):
        if not full:
            return [organization_record(a) for a in rows]
        return full_organizations(rows, full_service=bool_param(args, "full_service"))
    return page_of(query, args, build)


def organization_detail(wanted):
    agency = find_public("organization", wanted)
    return full_organizations([agency])[0] if agency is not None else None


def service_at_locations_page(args):
    full = bool_param(args, "full")
    query = with_location(_service_filters(public_programs(), args))
    if args.get("postcode"):
        query = query.where(Program.zip_code == args["postcode"].strip())
    query = query.order_by(Program.name, Program.id)

    def build(rows):
        links = load_links([p.id for p in rows]) if full else {}
        return [service_at_location_record(p, organization_id(p.agency), full=full,
                                           service=service_record(p, links, full=full))
                for p in rows]
    return page_of(query, args, build)


def service_at_location_detail(wanted):
    program = find_public("service_at_location", wanted)
    if program is None:
        return None
    links = load_links([program.id])
    return service_at_location_record(program, organization_id(program.agency), full=True,
                                      service=service_record(program, links, full=True))


def all_taxonomy_terms():
    """Every term we use: service categories and services, insurance, delivery, regions."""
    services = list(Service.select().order_by(Service.name))
    terms = [category_term(c) for c in sorted({s.category for s in services})]
    terms += [service_term(s) for s in services]
    terms += [insurance_term(i) for i in InsuranceType.select().order_by(InsuranceType.name)]
    terms.append(telemedicine_term())
    return terms + [region_term(r) for r in Region.select().order_by(Region.name)]


def _matches(record, args):
    term = (args.get("search") or "").strip().lower()
    return not term or term in f"{record['name']} {record['description']}".lower()


def taxonomies_page(args):
    items = [taxonomy_record(key) for key in TAXONOMIES]
    return page_of_list([t for t in items if _matches(t, args)], args)


def taxonomy_detail(wanted):
    return next((taxonomy_record(k) for k in TAXONOMIES if taxonomy_record(k)["id"] == wanted), None)


def taxonomy_terms_page(args):
    terms = [t for t in all_taxonomy_terms() if _matches(t, args)]
    for key in ("taxonomy_id", "parent_id"):
        if args.get(key):
            terms = [t for t in terms if t.get(key) == args[key]]
    if bool_param(args, "top_only"):
        terms = [t for t in terms if not t.get("parent_id")]
    return page_of_list(terms, args)


def taxonomy_term_detail(wanted):
    return next((t for t in all_taxonomy_terms() if t["id"] == wanted), None)


def about():
    return {"version": HSDS_VERSION, "profile": "https://docs.openreferral.org/en/3.0/",
            "openapi_url": OPENAPI_URL}


# ---------------------------------------------------------------------------
# Export: JSON files and the tabular data package
# ---------------------------------------------------------------------------

def export_directory(target, day=None):
    """Write the public directory to `target`: organizations.json (fully nested),
    services.json, service_at_locations.json, and csv/ (datapackage.json + CSV files).
    Returns counts."""
    target = pathlib.Path(target)
    target.mkdir(parents=True, exist_ok=True)
    agencies = list(public_agencies(day).order_by(Agency.name, Agency.id))
    organizations = full_organizations(agencies, day)
    services, sals = [], []
    for org in organizations:
        slim = organization_record_from(org)
        for service in org.get("services", []):
            services.append({**service, "organization": slim})
            for sal in service.get("service_at_locations", []):
                sals.append({**sal, "service": _one_to_one(service)})
    _write_json(target / "organizations.json", organizations)
    _write_json(target / "services.json", services)
    _write_json(target / "service_at_locations.json", sals)
    tables = write_data_package(target / "csv", organizations)
    return {"organizations": len(organizations), "services": len(services),
            "service_at_locations": len(sals), "tables": tables}


def organization_record_from(org):
    return {k: v for k, v in org.items() if not isinstance(v, (list, dict))}


def _write_json(path, data):
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def modular_schemas():
    """The standard's modular table schemas by file name (organization.json -> schema)."""
    return {path.name: json.loads(path.read_text()) for path in sorted(SCHEMA_DIR.glob("*.json"))}


def scalar_fields(schema):
    return [name for name, prop in schema["properties"].items()
            if prop.get("type") in ("string", "number", "integer", "boolean")]


def flatten(record, schema_name, schemas, tables):
    """Walk a nested HSDS record along the modular schemas: each object becomes a row of
    its table (deduplicated by id), its nested objects rows of theirs."""
    if not isinstance(record, dict) or not record.get("id"):
        return
    schema = schemas[schema_name]
    row = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
    tables.setdefault(schema["path"], {}).setdefault(record["id"], row)
    children = {name: (prop.get("items") or {}).get("$ref") or prop.get("$ref")
                for name, prop in schema["properties"].items()}
    if schema_name == "organization.json":
        children["services"] = "service.json"  # nested in the compiled organization only
    for name, child in children.items():
        value = record.get(name)
        if not child or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            flatten(item, child, schemas, tables)


def write_data_package(folder, organizations):
    """The tabular form: one CSV per HSDS table and a Frictionless datapackage.json."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    schemas = modular_schemas()
    tables = {}
    for org in organizations:
        flatten(org, "organization.json", schemas, tables)
    for category in sorted({s.category for s in Service.select()}):
        term = category_term(category)
        flatten(term, "taxonomy_term.json", schemas, tables)
    resources = []
    for schema in sorted(schemas.values(), key=lambda s: s["datapackage_metadata"]["order"]):
        rows = tables.get(schema["path"])
        if not rows:
            continue
        fields = scalar_fields(schema)
        with open(folder / schema["path"], "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows.values():
                writer.writerow({k: _csv_value(row.get(k)) for k in fields})
        resources.append(_resource(schema, fields))
    package = {"name": "connect-directory", "title": "CONNECT directory (HSDS 3.0)",
               "profile": "tabular-data-package", "version": HSDS_VERSION,
               "created": timestamp(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)),
               "resources": resources}
    _write_json(folder / "datapackage.json", package)
    return {path: len(rows) for path, rows in tables.items()}


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _resource(schema, fields):
    columns = []
    for name in fields:
        prop = schema["properties"][name]
        kind = prop.get("datapackage_type") or prop["type"]
        column = {"name": name, "type": kind, "description": prop.get("description", "")}
        if name in schema.get("required", []):
            column["constraints"] = {"required": True}
        columns.append(column)
    meta = schema["datapackage_metadata"]
    return {"name": schema["name"], "path": schema["path"], "profile": meta["profile"],
            "format": meta["format"], "mediatype": meta["mediatype"], "encoding": "utf-8",
            "schema": {"fields": columns, "primaryKey": "id"}}


# ---------------------------------------------------------------------------
# CLI (registered from cli.init_cli)
# ---------------------------------------------------------------------------

def register_cli(app):
    import click

    from models import database

    @app.cli.command("export-hsds")
    @click.argument("directory")
    def export_hsds(directory):
        """Write the public directory as HSDS 3.0 JSON and a CSV data package."""
        with database.connection_context():
            counts = export_directory(directory)
        click.echo(f"Wrote {counts['organizations']} organizations, {counts['services']} services "
                   f"and {counts['service_at_locations']} service locations to {directory} "
                   f"(JSON, and csv/datapackage.json with {len(counts['tables'])} tables).")

    @app.cli.command("import-hsds")
    @click.argument("path")
    @click.option("--source", default=None, help="Name of the source (default: the file name).")
    @click.option("--default-region", default=None,
                  help="Region (name or code) for organizations whose region cannot be told.")
    def import_hsds(path, source, default_region):
        """Load organizations, services and locations from HSDS 3.0 JSON or CSV, without MOUs."""
        from api.hsds_import import import_path
        with database.connection_context():
            report = import_path(path, source=source, default_region=default_region,
                                 progress=lambda message: click.echo(message, err=True))
        click.echo(report.text())
        if report.fatal:
            raise SystemExit(1)
