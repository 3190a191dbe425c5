"""import-hsds: organizations, services and locations from another HSDS 3.0 source.

Imported programs get no Agency MOU, so they stay out of the directory and cannot receive
referrals until a gatekeeper signs (R-MOU-3). Existing agencies and programs are matched
(by the source's id stored on an earlier import, by our own HSDS id, or by name and city)
and kept as they are: a 211's copy never overwrites what a program maintains itself.
Every record gets a line in the report; bad input is refused record by record, never
with a traceback.
"""

import collections
import csv
import json
import pathlib

from api.hsds import TELEMEDICINE_CODE, is_uuid, organization_id, service_id
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
    database,
    normalize_address,
    transaction,
)
from workflow import Actor, record_audit

CSV_TABLES = ("organizations.csv", "services.csv", "locations.csv", "addresses.csv", "phones.csv",
              "service_at_location.csv", "service_areas.csv", "schedules.csv", "attributes.csv",
              "taxonomy_terms.csv", "taxonomies.csv")
INACTIVE = {"inactive", "defunct"}
MAX_SOURCE_BYTES = 200 * 1024 * 1024
BATCH = 50  # organizations per transaction


class SourceError(Exception):
    """The input as a whole cannot be read (missing, not JSON, not a data package)."""


class Refused(Exception):
    """One record cannot be imported; the message is the reason shown in the report."""


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.entries = []
        self.fatal = None

    def add(self, kind, name, outcome, reason="", warnings=(), source_id=""):
        self.entries.append({"kind": kind, "name": name, "outcome": outcome, "reason": reason,
                             "warnings": list(warnings), "source_id": source_id})

    def count(self, kind, outcome):
        return sum(1 for e in self.entries if e["kind"] == kind and e["outcome"] == outcome)

    def of(self, outcome):
        return [e for e in self.entries if e["outcome"] == outcome]

    def text(self):
        if self.fatal:
            return f"Nothing imported: {self.fatal}"
        lines = ["HSDS import: " + "; ".join(
            f"{outcome} {self.count('organization', outcome)} organizations, "
            f"{self.count('service', outcome)} services"
            for outcome in ("created", "matched", "refused"))]
        for entry in self.entries:
            label = f"{entry['outcome'].upper():8} {entry['kind']} \"{entry['name']}\""
            if entry["source_id"]:
                label += f" [{entry['source_id']}]"
            lines.append(label + (f": {entry['reason']}" if entry["reason"] else ""))
            lines.extend(f"         note: {warning}" for warning in entry["warnings"])
        if any(e["outcome"] == "created" for e in self.entries):
            lines.append("Created programs have no Agency MOU: they stay out of the directory "
                         "until a gatekeeper signs one.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Reading: JSON (objects, lists, pages, tabular JSON) and CSV data packages
# ---------------------------------------------------------------------------

def read_source(path, report):
    """Organizations (nested HSDS dicts, services inside) from a file or directory."""
    path = pathlib.Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist.")
    if path.is_dir():
        if (path / "datapackage.json").exists() or (path / "organizations.csv").exists():
            return tables_to_organizations(read_csv_package(path), report)
        files = [path / "organizations.json"] if (path / "organizations.json").exists() \
            else sorted(path.glob("*.json"))
        if not files:
            raise SourceError(f"{path} holds no HSDS JSON files and no datapackage.json.")
        return collect([_read_json(f) for f in files], report)
    if path.name == "datapackage.json" or path.suffix.lower() == ".csv":
        return tables_to_organizations(read_csv_package(path.parent), report)
    return collect([_read_json(path)], report)


def _read_json(path):
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise SourceError(f"{path.name} is larger than {MAX_SOURCE_BYTES // 2**20} MB.")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise SourceError(f"{path.name} is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None


def _kind_of(item):
    if isinstance(item.get("service"), dict):
        return "service_at_location"
    if "status" in item or isinstance(item.get("organization"), dict) or "organization_id" in item:
        return "service"
    return "organization"


def _items(data):
    if isinstance(data, dict) and isinstance(data.get("contents"), list):
        return data["contents"]
    return data if isinstance(data, list) else [data]


def collect(documents, report):
    """Group whatever the documents hold (organizations, services, service_at_locations)
    into organizations with their services, each service once."""
    if len(documents) == 1 and isinstance(documents[0], dict) and any(
            str(k).endswith(".csv") for k in documents[0]):
        return tables_to_organizations(documents[0], report)  # tabular JSON
    orgs, loose = {}, []

    def add_org(org):
        key = str(org.get("id") or f"#{len(orgs)}")
        target = orgs.setdefault(key, {**org, "services": []})
        for service in org.get("services") or []:
            attach(target, service)
        return target

    for number, item in enumerate(item for doc in documents for item in _items(doc)):
        if not isinstance(item, dict):
            report.add("record", f"item {number + 1}", "refused", "not a JSON object")
            continue
        kind = _kind_of(item)
        if kind == "service_at_location":
            sal = {k: v for k, v in item.items() if k != "service"}
            service = dict(item["service"])
            service["service_at_locations"] = [*(_list(service.get("service_at_locations"))), sal]
            item, kind = service, "service"
        if kind == "organization":
            add_org(item)
        elif isinstance(item.get("organization"), dict) and item["organization"]:
            attach(add_org({**item["organization"], "services": []}), item)
        else:
            loose.append(item)
    for service in loose:
        org = orgs.get(str(service.get("organization_id") or ""))
        if org is None:
            report.add("service", _name(service), "refused",
                       "no organization given for it (neither nested nor by organization_id)",
                       source_id=str(service.get("id") or ""))
        else:
            attach(org, service)
    return list(orgs.values())


def attach(org, service):
    if not isinstance(service, dict):
        return
    known = {str(s.get("id")) for s in org["services"] if s.get("id")}
    if service.get("id") and str(service["id"]) in known:
        return
    org["services"].append(service)


def read_csv_package(folder):
    """Rows of each known table of a tabular HSDS data package (datapackage.json names
    the files; without it the standard file names are looked for)."""
    names = list(CSV_TABLES)
    package = folder / "datapackage.json"
    if package.exists():
        try:
            meta = json.loads(package.read_text(encoding="utf-8-sig"))
            names = [r["path"] for r in meta.get("resources", []) if isinstance(r, dict)]
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
            raise SourceError("datapackage.json is not a valid data package description.") from None
    tables = {}
    for name in names:
        if not isinstance(name, str) or pathlib.Path(name).name != name or not name.endswith(".csv"):
            continue  # only plain file names inside the package folder
        file = folder / name
        if not file.exists():
            continue
        try:
            with open(file, newline="", encoding="utf-8-sig") as handle:
                tables[name] = [dict(row) for row in csv.DictReader(handle)]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(f"{name} cannot be read as UTF-8 CSV ({exc}).") from None
    if "organizations.csv" not in tables:
        raise SourceError(f"{folder} has no organizations.csv.")
    return tables


def tables_to_organizations(tables, report):
    """Nest tabular rows back into organizations → services → locations."""
    def rows(name):
        return [r for r in _list(tables.get(name)) if isinstance(r, dict)]

    def by(name, key):
        grouped = collections.defaultdict(list)
        for row in rows(name):
            if row.get(key):
                grouped[str(row[key])].append(row)
        return grouped

    taxonomies = {str(r.get("id")): r for r in rows("taxonomies.csv")}
    terms = {str(r.get("id")): {**r, "taxonomy_detail": taxonomies.get(str(r.get("taxonomy_id")))}
             for r in rows("taxonomy_terms.csv")}
    attributes = by("attributes.csv", "link_id")
    addresses = by("addresses.csv", "location_id")
    phones = {key: by("phones.csv", key) for key in ("organization_id", "service_id", "location_id")}

    def attrs(owner):
        return [{**a, "taxonomy_term": terms.get(str(a.get("taxonomy_term_id")))}
                for a in attributes.get(owner, [])]

    locations = {str(r.get("id")): {**r, "addresses": addresses.get(str(r.get("id")), []),
                                    "phones": phones["location_id"].get(str(r.get("id")), []),
                                    "attributes": attrs(str(r.get("id")))}
                 for r in rows("locations.csv")}
    sals, areas = by("service_at_location.csv", "service_id"), by("service_areas.csv", "service_id")
    schedules, services = by("schedules.csv", "service_id"), by("services.csv", "organization_id")
    result = []
    for org in rows("organizations.csv"):
        oid = str(org.get("id"))
        nested = [{**s, "phones": phones["service_id"].get(str(s.get("id")), []),
                   "schedules": schedules.get(str(s.get("id")), []),
                   "service_areas": areas.get(str(s.get("id")), []),
                   "attributes": attrs(str(s.get("id"))),
                   "service_at_locations": [{**sal, "location": locations.get(str(sal.get("location_id")))}
                                            for sal in sals.get(str(s.get("id")), [])]}
                  for s in services.get(oid, [])]
        result.append({**org, "phones": phones["organization_id"].get(oid, []),
                       "attributes": attrs(oid), "services": nested,
                       "locations": [loc for loc in locations.values()
                                     if str(loc.get("organization_id")) == oid]})
    known = {str(o.get("id")) for o in rows("organizations.csv")}
    for service in rows("services.csv"):
        if str(service.get("organization_id")) not in known:
            report.add("service", _name(service), "refused",
                       "its organization_id names no row of organizations.csv",
                       source_id=str(service.get("id") or ""))
    return result


# ---------------------------------------------------------------------------
# Field extraction: HSDS values → our columns (bad optional values dropped with a note)
# ---------------------------------------------------------------------------

def _list(value):
    return value if isinstance(value, list) else []


def _dicts(value):
    return [v for v in _list(value) if isinstance(v, dict)]


def _name(record):
    name = record.get("name") if isinstance(record, dict) else None
    return name.strip()[:120] if isinstance(name, str) and name.strip() else "(no name)"


def _text(value):
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


class Fields:
    """Collects column values and the notes about values left out."""

    def __init__(self):
        self.values, self.warnings = {}, []

    def put(self, column, label, value, limit, check=None, problem="is not valid", strip=True):
        if value in (None, "", [], {}):
            return
        text = value if isinstance(value, str) and not strip else _text(value)
        if text is None:
            self.warnings.append(f"{label} is not text; left out")
        elif len(text) > limit:
            self.warnings.append(f"{label} is longer than {limit} characters; left out")
        elif check and not check(text):
            self.warnings.append(f"{label} {problem}; left out")
        elif text.strip():
            self.values[column] = text


def _required_name(record, limit=200):
    name = _text(record.get("name"))
    if not name:
        raise Refused("it has no name")
    if len(name) > limit:
        raise Refused(f"its name is longer than {limit} characters")
    return name


def _is_url(text):
    return text.lower().startswith(("http://", "https://")) and " " not in text


def _is_email(text):
    local, _, domain = text.partition("@")
    return bool(local) and "." in domain and " " not in text


def _clean_phone(value):
    text = _text(value)
    return text.strip('"').strip() if text else value


def _first_phone(*groups):
    for group in groups:
        for phone in _dicts(group):
            if phone.get("number") not in (None, ""):
                return _clean_phone(phone["number"])
    return None


def _address_of(locations):
    """The first physical address among locations (physical type preferred)."""
    for location in locations:
        if location.get("location_type") in ("virtual", "postal"):
            continue
        addresses = _dicts(location.get("addresses"))
        addresses.sort(key=lambda a: a.get("address_type") != "physical")
        if addresses:
            return location, addresses[0]
        if location.get("latitude") not in (None, ""):
            return location, {}
    return None, {}


def _put_address(fields, address):
    street = ", ".join(t for t in (_text(address.get("address_1")), _text(address.get("address_2"))) if t)
    fields.put("address", "address", street, 200)
    fields.put("city", "city", address.get("city"), 100)
    fields.put("zip_code", "postal code", address.get("postal_code"), 10)


def _coordinate(fields, column, value, bound):
    if value in (None, ""):
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not -bound <= number <= bound:
        fields.warnings.append(f"{column} {value} is not a valid coordinate; left out")
    else:
        fields.values[column] = number


def agency_fields(org):
    fields = Fields()
    fields.values["name"] = _required_name(org)
    fields.put("description", "description", org.get("description"), 100_000, strip=False)
    fields.put("email", "email", org.get("email"), 200, _is_email, "is not an email address")
    fields.put("website", "website", org.get("website"), 300, _is_url, "is not a web address")
    fields.put("phone", "phone", _first_phone(org.get("phones")), 30)
    locations = _dicts(org.get("locations"))
    for service in _dicts(org.get("services")):
        locations += [sal["location"] for sal in _dicts(service.get("service_at_locations"))
                      if isinstance(sal.get("location"), dict)]
    _put_address(fields, _address_of(locations)[1])
    return fields


def _hours(schedules, fields):
    for schedule in schedules:
        text = _text(schedule.get("description"))
        if text and len(text) <= 200:
            fields.values["hours"] = text
            return
        parts = [_text(schedule.get(k)) for k in ("byday", "opens_at", "closes_at")]
        if any(parts):
            days, opens, closes = (p or "" for p in parts)
            fields.values["hours"] = f"{days} {opens}-{closes}".strip(" -")[:200]
            return
        if text:
            fields.values["hours"] = text[:197] + "..."
            fields.warnings.append("opening hours shortened to 200 characters")
            return


# ---------------------------------------------------------------------------
# The importer
# ---------------------------------------------------------------------------

IMPORT_ACTOR = Actor(None, None, "cli")


class Index:
    """Agencies or programs by source id, by our HSDS id and by name key: matching stays
    a dictionary look-up when a 211 sends thousands of records."""

    def __init__(self, rows, make_id):
        self.make_id = make_id
        self.by_source, self.by_source_uuid, self.by_hsds_id = {}, {}, {}
        self.by_name = collections.defaultdict(dict)  # (agency id or None, name key) -> {id: row}
        for row in rows:
            self.add(row)

    def named(self, name, agency=None):
        return list(self.by_name[(agency.id if agency else None, _key(name))].values())

    def add(self, row):
        if row.external_id:
            self.by_source[(row.external_source, row.external_id)] = row
            if is_uuid(row.external_id):
                self.by_source_uuid.setdefault(row.external_id, row)
        self.by_hsds_id.setdefault(self.make_id(row), row)
        self.by_name[(getattr(row, "agency_id", None), _key(row.name))][row.id] = row


class Importer:
    def __init__(self, source, default_region, report):
        self.source, self.default_region, self.report = source[:100], default_region, report
        self.agencies = Index(Agency.select().order_by(Agency.id), organization_id)
        self.programs = Index(Program.select().order_by(Program.id), service_id)
        self.services = {_key(s.name): s for s in Service.select()}
        self.service_codes = {s.code.lower(): s for s in Service.select() if s.code}
        self.insurance = {_key(i.name): i for i in InsuranceType.select()}
        self.counties = {_key(c.name): c for c in County.select()}
        self.regions = {}
        for region in Region.select():
            self.regions[_key(region.name)] = region
            self.regions[_key(region.code)] = region

    # -- matching ---------------------------------------------------------

    def _by_id(self, index, wanted):
        if not wanted:
            return None, ""
        found = index.by_source.get((self.source, wanted)) or (
            index.by_source_uuid.get(wanted) if is_uuid(wanted) else None)
        if found:
            return found, "by its id in the source"
        if wanted in index.by_hsds_id:
            return index.by_hsds_id[wanted], "by its CONNECT id"
        return None, ""

    def match_agency(self, org, values):
        found, how = self._by_id(self.agencies, str(org.get("id") or "")[:100])
        if found:
            return found, how
        for agency in self.agencies.named(values["name"]):
            if _same_place(agency, values):
                return agency, "by name and city"
        return None, ""

    def match_program(self, agency, service, values):
        found, how = self._by_id(self.programs, str(service.get("id") or "")[:100])
        if found:
            return found, how
        for program in self.programs.named(values["name"], agency):
            if _same_place(program, values):
                return program, "by name and city"
        return None, ""

    # -- code lists ---------------------------------------------------------

    def _county(self, name):
        text = _key(_text(name) or "")
        for suffix in ("county" + _key(_state()), "county"):
            if text.endswith(suffix) and text[:-len(suffix)] in self.counties:
                return self.counties[text[:-len(suffix)]]
        return self.counties.get(text)

    def _terms(self, service, fields):
        services, insurance, telemedicine, unknown = [], [], False, []
        for attr in _dicts(service.get("attributes")):
            term = attr.get("taxonomy_term") if isinstance(attr.get("taxonomy_term"), dict) else {}
            name, code = _text(term.get("name")) or "", (_text(term.get("code")) or "").lower()
            key = _key(name)
            if code == TELEMEDICINE_CODE or key in ("telemedicine", "telehealth"):
                telemedicine = True
            elif code in self.service_codes:
                services.append(self.service_codes[code])
            elif key in self.services:
                services.append(self.services[key])
            elif key in self.insurance:
                insurance.append(self.insurance[key])
            elif name or code:
                unknown.append(name or code)
        if unknown:
            fields.warnings.append("taxonomy terms not known here, left out: " + ", ".join(sorted(set(unknown))))
        return list(dict.fromkeys(services)), list(dict.fromkeys(insurance)), telemedicine

    def region_for(self, org):
        for attr in _dicts(org.get("attributes")):
            term = attr.get("taxonomy_term") if isinstance(attr.get("taxonomy_term"), dict) else {}
            for value in (term.get("name"), term.get("code")):
                region = self.regions.get(_key(_text(value) or ""))
                if region and _key(_text(value) or ""):
                    return region
        votes = collections.Counter()
        for service in _dicts(org.get("services")):
            for area in _dicts(service.get("service_areas")):
                county = self._county(area.get("name"))
                if county:
                    votes[county.region_id] += 1
        if votes:
            return Region.get_by_id(votes.most_common(1)[0][0])
        if self.default_region:
            return self.default_region
        raise Refused("its region cannot be told (no service area names one of our counties); "
                      "give --default-region")

    # -- records ------------------------------------------------------------

    def program_fields(self, service):
        status = (_text(service.get("status")) or "active").lower()
        if status in INACTIVE:
            raise Refused(f"the source marks it {status}")
        fields = Fields()
        fields.values["name"] = _required_name(service)
        fields.put("description", "description", service.get("description"), 100_000, strip=False)
        fields.put("email", "email", service.get("email"), 200, _is_email, "is not an email address")
        fields.put("website", "url", service.get("url"), 300, _is_url, "is not a web address")
        sals = _dicts(service.get("service_at_locations"))
        locations = [s["location"] for s in sals if isinstance(s.get("location"), dict)]
        location, address = _address_of(locations)
        fields.put("phone", "phone", _first_phone(service.get("phones"), *(s.get("phones") for s in sals),
                                                  *(loc.get("phones") for loc in locations)), 30)
        _put_address(fields, address)
        if location:
            _coordinate(fields, "latitude", location.get("latitude"), 90)
            _coordinate(fields, "longitude", location.get("longitude"), 180)
        schedules = _dicts(service.get("schedules")) + [
            sch for s in sals for sch in _dicts(s.get("schedules"))]
        _hours(schedules, fields)
        counties, unknown = [], []
        for area in _dicts(service.get("service_areas")):
            county = self._county(area.get("name"))
            if county:
                counties.append(county)
            elif _text(area.get("name")):
                unknown.append(_text(area.get("name"))[:60])
        if unknown:
            fields.warnings.append("service areas that are not our counties, left out: " + "; ".join(unknown))
        services, insurance, telemedicine = self._terms(service, fields)
        virtual = any(loc.get("location_type") == "virtual" for loc in locations)
        fields.values["telemedicine"] = telemedicine or virtual
        return fields, (list(dict.fromkeys(counties)), services, insurance)

    def run(self, organizations, progress=None):
        """Batches of organizations, one transaction each (short enough not to hold up the
        screens' writers), each organization a savepoint: a failure undoes that one only."""
        organizations = [org for org in organizations if isinstance(org, dict)]
        for start in range(0, len(organizations), BATCH):
            pending = []
            with transaction():
                for org in organizations[start:start + BATCH]:
                    pending += self.import_organization(org)
            for entry in pending:
                self.report.add(*entry)
            if progress:
                progress(f"... {min(start + BATCH, len(organizations))} of {len(organizations)} "
                         "organizations done")

    def import_organization(self, org):
        """Report entries of one organization and its services (saved in one savepoint)."""
        source_id = str(org.get("id") or "")[:100]
        services = _dicts(org.get("services"))

        def refuse_all(reason, service_reason):
            return [("organization", _name(org), "refused", reason, (), source_id)] + [
                ("service", _name(s), "refused", service_reason, (), str(s.get("id") or ""))
                for s in services]
        try:
            fields = agency_fields(org)
            agency, how = self.match_agency(org, fields.values)
            region = None if agency else self.region_for(org)
        except Refused as exc:
            return refuse_all(str(exc), "its organization was refused")
        try:
            with database.atomic():
                if agency is None:
                    agency = Agency.create(region=region, external_id=source_id,
                                           external_source=self.source, **fields.values)
                    record_audit(IMPORT_ACTOR, "import_hsds_create", agency, detail=self._detail(source_id))
                    entries = [("organization", fields.values["name"], "created", f"in {region.name}",
                                fields.warnings, source_id)]
                else:
                    self._remember(agency, source_id)
                    entries = [("organization", agency.name, "matched",
                                f"{how}; our record kept as it is", (), source_id)]
                entries += [self.import_service(agency, service) for service in services]
        except Exception as exc:  # noqa: BLE001 - one bad record never stops the import
            return refuse_all(f"could not be saved ({type(exc).__name__}: {str(exc)[:200]})",
                              "its organization could not be saved")
        self.agencies.add(agency)
        return entries

    def import_service(self, agency, service):
        source_id = str(service.get("id") or "")[:100]
        try:
            fields, (counties, services, insurance) = self.program_fields(service)
            with database.atomic():
                program, how = self.match_program(agency, service, fields.values)
                if program is not None:
                    self._remember(program, source_id)
                    return ("service", program.name, "matched", f"{how}; our record kept as it is",
                            (), source_id)
                program = Program.create(agency=agency, external_id=source_id,
                                         external_source=self.source, **fields.values)
                for county in counties:
                    ProgramCounty.create(program=program, county=county)
                for item in services:
                    ProgramService.create(program=program, service=item)
                for item in insurance:
                    ProgramInsurance.create(program=program, insurance_type=item)
                record_audit(IMPORT_ACTOR, "import_hsds_create", program, detail=self._detail(source_id))
            self.programs.add(program)
            return ("service", program.name, "created", f"program of {agency.name}, no Agency MOU yet",
                    fields.warnings, source_id)
        except Refused as exc:
            return ("service", _name(service), "refused", str(exc), (), source_id)
        except Exception as exc:  # noqa: BLE001 - the savepoint rolled back this record only
            return ("service", _name(service), "refused",
                    f"could not be saved ({type(exc).__name__}: {str(exc)[:200]})", (), source_id)

    def _remember(self, row, source_id):
        """Keep the source's id on a matched record so the next import matches by id."""
        index = self.agencies if isinstance(row, Agency) else self.programs
        if source_id and not row.external_id and source_id != index.make_id(row):
            row.external_id, row.external_source = source_id, self.source
            row.save(only=[type(row).external_id, type(row).external_source])
            index.add(row)
            record_audit(IMPORT_ACTOR, "import_hsds_match", row, detail=self._detail(source_id))

    def _detail(self, source_id):
        return f"source={self.source} id={source_id}"


def _key(value):
    """Letters and digits only, lower case, accents removed: names and codes compare alike
    ('Head Start 2' stays apart from 'Head Start 3')."""
    return "".join(ch for ch in normalize_address(value) if ch.isalnum())


def _state():
    from api.hsds import state_province
    return state_province()


def _same_place(row, values):
    """Same city when both have one, else same street address when both have one."""
    city_a, city_b = normalize_address(row.city), normalize_address(values.get("city", ""))
    if city_a and city_b:
        return city_a == city_b
    street_a, street_b = normalize_address(row.address), normalize_address(values.get("address", ""))
    if street_a and street_b:
        return street_a == street_b
    return True


def import_path(path, source=None, default_region=None, progress=None):
    """Read and import `path`; always returns a Report (report.fatal when nothing could be
    read). `progress(message)` hears how far a long import has come."""
    report = Report()
    region = None
    if default_region:
        key = _key(default_region)
        region = next((r for r in Region.select() if key in (_key(r.name), _key(r.code))),
                      None)
        if region is None:
            report.fatal = f"there is no region called {default_region!r}."
            return report
    try:
        organizations = read_source(path, report)
    except SourceError as exc:
        report.fatal = str(exc)
        return report
    except (OSError, RecursionError) as exc:
        report.fatal = f"{path} cannot be read ({exc})."
        return report
    Importer(source or pathlib.Path(path).resolve().name, region, report).run(organizations, progress)
    return report
