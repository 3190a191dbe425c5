"""Subjects: search, Add Subject in two pages, the duplicate check and visibility (R-SUBJ)."""

import datetime as dt

import pytest

import matching
import models
import workflow
from tests.conftest import actor, make_subject


def county_id(name="Gallatin"):
    return models.County.get(models.County.name == name).id


def subject_fields(**over):
    values = dict(first_name="Maria", last_name="Lopez", middle_name="", dob="1988-04-12",
                  gender="Female", race="White", military="No military service",
                  address="12 Oak St", city="Bozeman", county=str(county_id()), zip_code="59715",
                  phone="(406) 555-0142", other_contact="", email="")
    values.update(over)
    return values


def clean_values(**over):
    values = subject_fields(**over)
    values["dob"] = dt.date.fromisoformat(values["dob"]) if values["dob"] else None
    return values


def add_subject(browser, **over):
    data = subject_fields(**over)
    data["action"] = "add"
    return browser.post("/subjects/add", {k: v for k, v in data.items() if v is not False},
                        token_from="/subjects/add")


# --- search and visibility ---------------------------------------------------------------

def test_r_subj_6_search_shows_only_visible_subjects(browser, network):
    """R-SUBJ-6: results list only subjects of the acting program; others never by name."""
    mine = make_subject(network.a1, first_name="Alice", last_name="Walker")
    theirs = make_subject(network.b1, first_name="Alicia", last_name="Walker")
    browser.login(network.pr_a1)
    page = browser.get("/subjects/?q=walker").get_data(as_text=True)
    assert f"/subjects/{mine.id}" in page
    assert "Alicia" not in page and f"/subjects/{theirs.id}" not in page
    assert models.AuditEvent.select().where(models.AuditEvent.action == "search_subjects").exists()


def test_r_subj_7_search_with_dob_shows_masked_hint_only(browser, network):
    """R-SUBJ-7: another program's subject appears masked (initials, DOB, city, last two
    digits) and only when the full name and DOB were given; never the address or phone."""
    make_subject(network.b1, first_name="Jonas", last_name="Berg", dob=dt.date(1970, 1, 2),
                 phone="+14065550177", address="77 Pine Rd", city="Missoula")
    browser.login(network.pr_a1)
    without_dob = browser.get("/subjects/?q=Jonas+Berg").get_data(as_text=True)
    assert "J. B." not in without_dob
    page = browser.get("/subjects/?q=Jonas+Berg&dob=1970-01-02").get_data(as_text=True)
    assert "J. B." in page and "01/02/1970" in page and "Missoula" in page and "…77" in page
    assert "Pine" not in page and "555-0177" not in page and "Jonas" not in page.split("Possible matches")[1]


@pytest.mark.parametrize("query, expected", [
    ("lopez", True), ("LOPEZ maria", True), ("maria lopez", True), ("Lopez, Maria", True),
    ("mar", True), ("López", True), ("smith", False)])
def test_r_subj_1_search_by_name_forms(app, network, query, expected):
    """R-SUBJ-1: search by name works on normalised names (case, accents, order)."""
    subject = make_subject(network.a1, first_name="María", last_name="López")
    found = [s.id for s in matching.search_subjects(query)]
    assert (subject.id in found) is expected


def test_r_subj_6_profile_of_other_program_is_404_and_audited(browser, network):
    """R-SUBJ-6, R-SAFE-2: guessing another program's subject id looks like a missing id."""
    theirs = make_subject(network.b1)
    browser.login(network.pr_a1)
    assert browser.get(f"/subjects/{theirs.id}").status_code == 404
    assert browser.get("/subjects/999999").status_code == 404
    denied = models.AuditEvent.select().where((models.AuditEvent.action == "view_subject")
                                              & (models.AuditEvent.outcome == "denied"))
    assert denied.count() == 2


def test_r_subj_6_profile_visible_and_audited(browser, network):
    """R-SUBJ-6, R-SAFE-1: the creator sees the details; each view is audited."""
    mine = make_subject(network.a1)
    browser.login(network.pr_a1)
    page = browser.get(f"/subjects/{mine.id}").get_data(as_text=True)
    assert mine.first_name in page and "Start new ROI(s)" in page and "Referrals Chart" in page
    assert models.AuditEvent.select().where((models.AuditEvent.action == "view_subject")
                                            & (models.AuditEvent.subject == mine.id)).count() == 1


def test_r_subj_6_administrator_sees_every_subject(browser, network):
    """R-SUBJ-6: an administrator may open any subject."""
    theirs = make_subject(network.b1)
    browser.login(network.admin)
    assert browser.get(f"/subjects/{theirs.id}").status_code == 200


# --- Add Subject, two pages --------------------------------------------------------------

def test_r_subj_5_page_check_marks_before_add(browser, network):
    """R-SUBJ-5: page 1 gets its check mark when complete; page 2 then; only then added."""
    browser.login(network.pr_a1)
    first = browser.get("/subjects/add?q=Maria+Lopez&dob=1988-04-12").get_data(as_text=True)
    assert 'id="page1-status"' in first and "Page 1<span class=\"status-text\">: not complete" in first
    assert 'value="Maria"' in first and 'value="Lopez"' in first
    page1 = {k: v for k, v in subject_fields().items()
             if k in ("first_name", "last_name", "middle_name", "dob", "gender", "race", "military")}
    incomplete = browser.post("/subjects/add", {**page1, "gender": "", "action": "next"},
                              token_from="/subjects/add").get_data(as_text=True)
    assert "Choose the current gender identity." in incomplete and "Page 1<span class=\"status-text\">: not complete" in incomplete
    second = browser.post("/subjects/add", {**page1, "action": "next"},
                          token_from="/subjects/add").get_data(as_text=True)
    assert "Page 1<span class=\"status-text\">: complete" in second
    assert "Page 2<span class=\"status-text\">: not complete" in second and "Add Subject" in second
    assert models.Subject.select().count() == 0
    response = add_subject(browser)
    assert response.status_code == 302
    assert models.Subject.select().count() == 1


def test_r_subj_5_add_refused_when_page_1_tampered(browser, network):
    """R-SUBJ-5: posting "Add Subject" with page 1 incomplete goes back to page 1."""
    browser.login(network.pr_a1)
    page = add_subject(browser, race="").get_data(as_text=True)
    assert "Choose the race." in page and models.Subject.select().count() == 0


@pytest.mark.parametrize("over, message", [
    ({"first_name": ""}, "This field is required."),
    ({"dob": ""}, "Enter the date of birth."),
    ({"dob": (dt.date.today() + dt.timedelta(days=2)).isoformat()}, "cannot be in the future"),
    ({"dob": "1890-01-01"}, "more than 120 years ago"),
    ({"zip_code": "90210"}, "Montana zip code"),
    ({"zip_code": "5971"}, "Montana zip code"),
    ({"county": "99999"}, "Not a valid choice"),
    ({"phone": "555-12"}, "10-digit US phone number"),
    ({"phone": "+44 20 7946 0958"}, "10-digit US phone number"),
    ({"phone": ""}, "tick \"No phone\""),
    ({"phone": "", "no_phone": "y"}, "best other way"),
    ({"address": ""}, "Experiencing homelessness"),
    ({"gender": "Robot"}, "Not a valid choice"),
])
def test_r_subj_2_required_fields_and_checks(browser, network, over, message):
    """R-SUBJ-2, R-SUBJ-4: required fields, DOB range, Montana zip, county list, US phone."""
    browser.login(network.pr_a1)
    response = add_subject(browser, **over)
    page = response.get_data(as_text=True).replace("&#34;", '"').replace("&quot;", '"')
    assert response.status_code == 200 and message in page
    assert models.Subject.select().count() == 0


def test_r_subj_4_no_phone_with_best_other_contact(browser, network):
    """R-SUBJ-4: "no phone" (or the guide's 999 number) is recorded explicitly with the
    best other contact."""
    browser.login(network.pr_a1)
    add_subject(browser, phone="(999)-999-9999", other_contact="Through the shelter desk")
    subject = models.Subject.get()
    assert subject.no_phone and subject.phone == "" and subject.other_contact == "Through the shelter desk"


def test_r_subj_4_phone_normalised(app, network):
    """R-SUBJ-4: phone numbers are parsed and stored normalised (E.164, digits indexed)."""
    subject, how = workflow.create_subject(actor(network.pr_a1, network.a1),
                                           clean_values(phone="406.555.0142"))
    assert (subject.phone, subject.phone_digits, how) == ("+14065550142", "4065550142", "created")


@pytest.mark.parametrize("address, homeless, stored, flagged", [
    ("", True, "0000 Street", True),
    ("0000 Street", False, "0000 Street", True),
    ("Gallatin Valley Shelter, 5 Main", True, "Gallatin Valley Shelter, 5 Main", True),
    ("12 Oak St", False, "12 Oak St", False),
])
def test_r_subj_3_homelessness_convention(app, network, address, homeless, stored, flagged):
    """R-SUBJ-3: no address → 0000 Street (city and zip kept); the subject is flagged."""
    values = clean_values(address=address, homeless=homeless)
    subject, _ = workflow.create_subject(actor(network.pr_a1, network.a1), values)
    assert (subject.address, subject.homeless) == (stored, flagged)


# --- duplicate check ---------------------------------------------------------------------

def test_r_subj_1_exact_match_links_instead_of_creating(browser, network):
    """R-SUBJ-1, R-SUBJ-7: same first, last, DOB and phone → the existing subject is linked
    to the program (audited), no new subject."""
    existing = make_subject(network.b1, first_name="Maria", last_name="Lopez",
                            dob=dt.date(1988, 4, 12), phone="+14065550142", address="1 Elm")
    browser.login(network.pr_a1)
    response = add_subject(browser, first_name="MARIA ", last_name="lopez")
    assert response.status_code == 302 and response.location.endswith(f"/subjects/{existing.id}")
    assert models.Subject.select().count() == 1
    link = models.SubjectLink.get(models.SubjectLink.program == network.a1)
    assert (link.subject_id, link.reason) == (existing.id, "matched")
    assert models.AuditEvent.select().where(models.AuditEvent.action == "match_subject").exists()


@pytest.mark.parametrize("phone, address, exact", [
    ("+14065550142", "elsewhere 9", True),   # phone matches
    ("+14065559999", "1 Elm", True),          # address matches
    ("+14065559999", "2 Elm", False),         # neither
])
def test_r_subj_1_exact_rule_phone_or_address(app, network, phone, address, exact):
    """R-SUBJ-1: first, last, DOB and either phone or address."""
    make_subject(network.b1, first_name="Maria", last_name="Lopez", dob=dt.date(1988, 4, 12),
                 phone="+14065550142", address="1 Elm")
    found = matching.exact_matches("Maria", "Lopez", dt.date(1988, 4, 12), phone, address).exists()
    assert found is exact


def test_r_subj_1_placeholders_never_match(app, network):
    """R-SUBJ-1: the 999 phone and the 0000 Street address identify nobody."""
    make_subject(network.b1, first_name="Sam", last_name="Doe", dob=dt.date(1990, 1, 1),
                 phone="", no_phone=True, address="0000 Street")
    assert not matching.exact_matches("Sam", "Doe", dt.date(1990, 1, 1), "9999999999",
                                      "0000 Street").exists()


@pytest.mark.parametrize("first, last, dob, expected", [
    ("John", "Smith", dt.date(1980, 3, 14), True),    # the same
    ("Jon", "Smith", dt.date(1980, 3, 14), True),     # near spelling
    ("John", "Smyth", dt.date(1980, 3, 14), True),    # near spelling
    ("Jhon", "Smith", dt.date(1980, 3, 14), True),    # typo
    ("Smith", "John", dt.date(1980, 3, 14), True),    # swapped names
    ("John", "Smith", dt.date(1980, 3, 41 - 0 - 27), True),
    ("Jon", "Smith", dt.date(1908, 3, 14), True),     # transposed year digits
    ("Jon", "Smyth", dt.date(1980, 3, 11) + dt.timedelta(days=30), False),  # far date
    ("John", "Smith", dt.date(1955, 7, 1), True),     # exact names, other date
    ("Peter", "Jones", dt.date(1980, 3, 14), False),  # another person
])
def test_r_subj_1_likely_duplicates(app, network, first, last, dob, expected):
    """R-SUBJ-1: near spellings, swapped names and transposed DOB digits are found."""
    existing = make_subject(network.b1, first_name="John", last_name="Smith", dob=dt.date(1980, 3, 14))
    found = [s.id for _, s in matching.likely_duplicates(first, last, dob)]
    assert (existing.id in found) is expected


@pytest.mark.parametrize("dob, variant", [
    (dt.date(1980, 3, 14), dt.date(1980, 3, 14)),
    (dt.date(1980, 3, 12), dt.date(1980, 3, 21)),   # day digits swapped
    (dt.date(1980, 3, 12), dt.date(1980, 12, 3)),   # day and month swapped
    (dt.date(1980, 3, 12), dt.date(1908, 3, 12)),   # year digits swapped
])
def test_r_subj_1_dob_variants(dob, variant):
    """R-SUBJ-1: transposed date digits are among the candidate dates."""
    assert variant in matching.dob_variants(dob)


def test_r_subj_1_unrelated_people_are_not_duplicates(app, network):
    """R-SUBJ-1: a different person born the same day is not offered."""
    make_subject(network.b1, first_name="Hannah", last_name="Olsen", dob=dt.date(1980, 3, 14))
    assert matching.likely_duplicates("John", "Smith", dt.date(1980, 3, 14)) == []


def test_r_subj_7_likely_duplicates_page_masked_then_link(browser, network):
    """R-SUBJ-1, R-SUBJ-7: possible matches show only initials, DOB, city and the last two
    phone digits; continuing needs the phone or address the client tells (exact)."""
    existing = make_subject(network.b1, first_name="John", last_name="Smith", dob=dt.date(1980, 3, 14),
                            phone="+14065550188", address="44 Birch Ln", city="Missoula")
    browser.login(network.pr_a1)
    page = add_subject(browser, first_name="Jon", last_name="Smith", dob="1980-03-14",
                       phone="(406) 555-0100", address="9 Other Rd").get_data(as_text=True)
    assert "Possible matches" in page and "J. S." in page and "…88" in page and "Missoula" in page
    assert "Birch" not in page and "0188" not in page
    assert models.Subject.select().count() == 1
    wrong = browser.post("/subjects/link", {"subject_id": existing.id, "first_name": "John",
                                            "last_name": "Smith", "dob": "1980-03-14",
                                            "phone_or_address": "45 Birch Ln"}, token_from="/subjects/")
    assert wrong.status_code == 302
    assert not models.SubjectLink.select().where(models.SubjectLink.program == network.a1).exists()
    right = browser.post("/subjects/link", {"subject_id": existing.id, "first_name": "John",
                                            "last_name": "Smith", "dob": "1980-03-14",
                                            "phone_or_address": "(406) 555-0188"}, token_from="/subjects/")
    assert right.status_code == 302 and right.location.endswith(f"/subjects/{existing.id}")
    assert models.SubjectLink.get(models.SubjectLink.program == network.a1).reason == "matched"
    assert browser.get(f"/subjects/{existing.id}").status_code == 200


def test_r_subj_7_add_new_anyway(browser, network):
    """R-SUBJ-7: when in doubt, a new subject (after seeing the possible matches)."""
    make_subject(network.b1, first_name="John", last_name="Smith", dob=dt.date(1980, 3, 14))
    browser.login(network.pr_a1)
    response = add_subject(browser, first_name="Jon", last_name="Smith", dob="1980-03-14",
                           confirm_new="1")
    assert response.status_code == 302 and models.Subject.select().count() == 2


def test_r_subj_7_link_guessing_is_throttled(app, network):
    """R-SUBJ-7: repeated wrong details are refused, audited, then throttled."""
    existing = make_subject(network.b1, first_name="John", last_name="Smith", dob=dt.date(1980, 3, 14))
    who = actor(network.pr_a1, network.a1)
    for _ in range(workflow.LINK_ATTEMPTS_PER_HOUR):
        with pytest.raises(workflow.RuleViolation):
            workflow.link_existing_subject(who, existing.id, "John", "Smith", existing.dob, "1 Nowhere")
    with pytest.raises(workflow.RuleViolation) as excinfo:
        workflow.link_existing_subject(who, existing.id, "John", "Smith", existing.dob, existing.address)
    assert excinfo.value.status_code == 429


def test_r_safe_1_search_audits_each_subject_shown_in_few_statements(browser, network):
    """R-SAFE-1, R-SUBJ-6 (battery item 15, issue 6): a name search shows the acting
    program's matches and writes one audit row per subject shown; another program's
    match is neither shown nor logged as shown. The page is the sign-in gate, the name
    index walks with their visibility probe (one word with fewer than 50 last-name
    matches walks the first names too) and one audit INSERT: never a query per row."""
    from playhouse.test_utils import count_queries
    ours = [make_subject(network.a1, first_name=f"Ann{i}", last_name="Quillfeather") for i in range(2)]
    theirs = make_subject(network.b1, first_name="Bob", last_name="Quillfeather")
    browser.login(network.gk_a1)
    browser.get("/subjects/")
    before = models.AuditEvent.select(models.fn.MAX(models.AuditEvent.id)).scalar() or 0
    with count_queries() as counter:
        page = browser.get("/subjects/?q=quillfeather").get_data(as_text=True)
    assert counter.count == 4
    assert "Ann0" in page and "Ann1" in page and "Bob" not in page
    rows = list(models.AuditEvent.select().where(models.AuditEvent.id > before))
    assert [r.detail for r in rows if r.subject_id is None] == ["2 shown, 0 masked"]
    rows = [r for r in rows if r.subject_id is not None]
    assert sorted(r.subject_id for r in rows) == sorted(s.id for s in ours)
    assert {(r.action, r.user_id, r.program_id) for r in rows} == {
        ("search_subjects", network.gk_a1.id, network.a1.id)}
    assert theirs.id not in {r.subject_id for r in rows}
    with count_queries() as counter:  # two words: "first last", then "last first"
        browser.get("/subjects/?q=ann0+quillfeather")
    assert counter.count == 4


def test_r_roi_4_profile_shows_only_the_information_types_consented(browser, network):
    """R-ROI-4, R-SUBJ-6: a program that sees the client through an ROI covering contact
    information only sees the phone and address but not the date of birth, gender or race
    (and is told why); the program that added the client sees everything."""
    from tests.conftest import make_roi
    subject = make_subject(network.a1, network.gk_a1, first_name="Dora", last_name="Typeson",
                           dob=dt.date(1961, 7, 30), phone="+14065550177", gender="Woman",
                           race="Asian")
    make_roi(subject, network.a1, others=(network.b1,), info_types=("contact",))
    browser.login(network.gk_b1)
    page = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert "Dora" in page and "(406) 555-0177" in page
    assert "07/30/1961" not in page and "Asian" not in page and ">Race<" not in page
    assert "Not shown: Demographics" in page
    browser.login(network.gk_a1)
    page = browser.get(f"/subjects/{subject.id}").get_data(as_text=True)
    assert "07/30/1961" in page and "Asian" in page and "Not shown" not in page
