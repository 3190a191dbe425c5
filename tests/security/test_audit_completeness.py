"""Battery item 15: audit completeness (R-SAFE-1, R-SAFE-2).

Every route of app.url_map is either in CLIENT_ROUTES (it shows client data; a recipe says
who fetches what and which clients the answer shows) or in NO_CLIENT_DATA (with the reason);
a route in neither fails. Fetching a client route writes exactly one audit row per client
shown (lists: one row each, written in one INSERT), with user, acting program, action,
time, address and outcome filled; asking with another program's id is audited as denied.
Newlines and control characters in logged values are encoded: a value cannot forge a
second line of the audit log or of its CSV export. (UPDATE/DELETE refused on the audit
table: test_audit_table.py.)"""

import csv
import datetime as dt
import io
import re

import pytest

import models
import workflow
from tests.conftest import Browser, actor, make_roi, make_subject
from tests.pdfs import scanned_pdf
from tests.referral_helpers import sent
from tests.test_fhir import Ehr
from tests.test_subjects import subject_fields

# Routes that show no client data, and why.
NO_CLIENT_DATA = [
    (r"^(static|admin\.static)$", "style sheets and scripts"),
    (r"^auth\.", "sign-in, passwords, the User MOU: the user's own account"),
    (r"^(program|notifications|account)\.", "acting program, bell (referral numbers only), own account"),
    (r"^admin\.index$", "start page; administrators' figures are counts"),
    (r"^(users|memberships|user_mous|agency_mous|regions|counties|services|insurance_types|"
     r"agencies|programs|intake_sections)\.", "network and staff records"),
    (r"^agency_mou\.", "the program's Agency MOU"),
    (r"^audit\.", "the audit log itself: subject ids, never client details"),
    (r"^outbox\.", "emails name referral numbers, never clients; texts carry no subject link"),
    (r"^(sms|hsds|public)\.", "public: the signed SMS webhook and the directory"),
    (r"^reports\.(index|agencies|blank_roi)$", "programs, not clients"),
    (r"^care_team\.index$", "redirects to the start page"),
    (r"^fhir\.(index|metadata|token|transaction|subscribe|update_task)$",
     "capability, tokens and writes (writes audited by the workflow functions)"),
    (r"^(incoming|sent)\.(action_view|ajax_lookup|ajax_update|create_view|delete_view|"
     r"details_view|edit_view)$", "no such pages on these lists (404 or back to the list); "
     "actions are changes, audited by the workflow"),
    (r"^referral\.(index|send|assign|reassign|decline|withdraw|discard|set_status|reopen|"
     r"note|progress)$", "a redirect, the send confirmation (program and field labels only), "
     "or a change audited by the workflow"),
    (r"^consent\.(index|code|resend|upload|delete_attachment|revoke)$",
     "a redirect, the code page (reference and 2 phone digits), or a change audited by the workflow"),
    (r"^subjects\.link$", "a change (the link is audited by link_existing_subject)"),
]

# endpoint: (who asks, the URL from the scene, the clients the answer shows, a URL with
# another program's id or None).
CLIENT_ROUTES = {
    "subjects.index": ("gk_a1", "/subjects/?q=Alma+Auditone&dob=1970-01-02", "near", None),
    "subjects.add": ("gk_a1", "POST /subjects/add", "near_other", None),
    "subjects.profile": ("gk_a1", "/subjects/{s1}", "s1", "/subjects/{sb}"),
    "consent.new": ("gk_a1", "/consent/new?subject={s1}", "s1", "/consent/new?subject={sb}"),
    "consent.complete": ("gk_a1", "/consent/{draft_roi}/complete", "s1", "/consent/{roi_b}/complete"),
    "consent.detail": ("gk_a1", "/consent/{roi1}", "s1", "/consent/{roi_b}"),
    "consent.blank_pdf": ("gk_a1", "/consent/{roi1}/blank.pdf", "s1", "/consent/{roi_b}/blank.pdf"),
    "consent.attachment": ("gk_a1", "/consent/{scan_roi}/attachment", "s1",
                           "/consent/{roi_b}/attachment"),
    "referral.chart": ("gk_a1", "/referrals/chart/{s1}", "s1", "/referrals/chart/{sb}"),
    "referral.new": ("gk_a1", "/referrals/new?subject={s2}&to={a2}", "s2",
                     "/referrals/new?subject={sb}&to={a2}"),
    "referral.edit": ("gk_a1", "/referrals/{draft}/edit", "s1", "/referrals/{ref_b}/edit"),
    "referral.view": ("gk_b1", "/referrals/{r1}", "s1", "/referrals/{ref_b_own}"),
    "incoming.index_view": ("gk_b1", "/agency/referrals/", "sent_clients", None),
    "incoming.export": ("gk_b1", "/agency/referrals/export/csv/", "sent_clients", None),
    "sent.index_view": ("gk_a1", "/agency/sent/", "sent_clients+draft", None),
    "sent.export": ("gk_a1", "/agency/sent/export/csv/", "sent_clients+draft", None),
    "reports.referrals": ("gk_a1", "/reports/referrals/outcomes", "sent_clients", None),
    "care_team.show": ("gk_a1", "/reports/care-team/{s1}", "s1", "/reports/care-team/{sb}"),
    "care_team.pdf": ("gk_a1", "/reports/care-team/{s1}.pdf", "s1", "/reports/care-team/{sb}.pdf"),
    "fhir.read": ("ehr_b1", "/fhir/Patient/{s1}", "s1", "/fhir/Patient/{sa_only}"),
    "fhir.search": ("ehr_b1", "/fhir/Patient", "b1_visible", None),
}


def classify(endpoint):
    if endpoint in CLIENT_ROUTES:
        return "client"
    return next((reason for pattern, reason in NO_CLIENT_DATA if re.search(pattern, endpoint)), None)


def test_item_15_r_safe_1_every_route_is_classified(app):
    """Battery item 15: every route is in the client-data table or in the list of routes
    without client data; a new route fails until someone decides which."""
    missing = [f"{r.rule} ({r.endpoint})" for r in app.url_map.iter_rules() if classify(r.endpoint) is None]
    assert not missing, "routes not classified for the audit:\n" + "\n".join(missing)
    stale = set(CLIENT_ROUTES) - {r.endpoint for r in app.url_map.iter_rules()}
    assert not stale, f"client routes that no longer exist: {stale}"


@pytest.fixture
def scene(app, network):
    """Clients of A1 (three referred to B1, one with a Pending draft to A2 as well), a
    client of B1 only, a client of A1 only, and an uploaded ROI scan."""
    w = network
    w.s1 = make_subject(w.a1, w.gk_a1, first_name="Alma", last_name="Auditone", dob=dt.date(1970, 1, 2))
    w.sent_subjects = [w.s1] + [make_subject(w.a1, w.gk_a1, first_name=f"Bea{n}", last_name="Audited")
                                for n in range(2)]
    for subject in w.sent_subjects:
        make_roi(subject, w.a1, others=(w.b1, w.a2), user=w.gk_a1)
    w.referrals = [sent(w, subject) for subject in w.sent_subjects]
    w.roi1 = models.Roi.select().where(models.Roi.subject == w.s1).get()
    who = actor(w.gk_a1, w.a1)
    w.draft = workflow.save_referral_draft(who, w.s1, w.a2, {"first_name": "Alma"}, {})
    w.draft_roi = workflow.start_roi(who, w.s1, [w.a2.id])
    w.scan_roi = workflow.start_roi(who, w.s1, [w.a2.id])
    workflow.complete_roi(who, w.scan_roi, ["contact"], "client")
    workflow.mark_roi_on_paper(who, w.scan_roi)
    workflow.attach_roi_scan(who, models.Roi.get_by_id(w.scan_roi.id), scanned_pdf(), "scan.pdf",
                             app.config["UPLOAD_DIR"], app.config["UPLOAD_LIMIT"])
    # B1's own client (A1 may not see it), with an ROI and a draft of B1's.
    w.sb = make_subject(w.b1, w.gk_b1, first_name="Maria", last_name="Lopez",
                        dob=dt.date(1988, 4, 12), address="12 Oak St", phone="+14065550142")
    w.roi_b = make_roi(w.sb, w.b1, others=(w.a2,), user=w.gk_b1)
    w.ref_b = workflow.save_referral_draft(actor(w.gk_b1, w.b1), w.sb, w.a2, {"first_name": "M"}, {})
    # A1's own client, no ROI: B1 may not see it; A1's draft B1 may not open.
    w.sa_only = make_subject(w.a1, w.gk_a1, first_name="Ada", last_name="Aonly")
    w.ref_b_own = w.draft.id
    # A likely duplicate of someone else's client, near Alma: search shows it masked.
    w.near = make_subject(w.b1, w.gk_b1, first_name="Alma", last_name="Auditone", dob=dt.date(1970, 1, 2),
                          address="9 Elsewhere Rd", phone="+14065550999")
    return w


def _values(w):
    return {"s1": w.s1.id, "sb": w.sb.id, "a2": w.a2.id, "draft_roi": w.draft_roi.id,
            "roi_b": w.roi_b.id, "roi1": w.roi1.id, "scan_roi": w.scan_roi.id, "draft": w.draft.id,
            "ref_b": w.ref_b.id, "r1": w.referrals[0].id, "ref_b_own": w.ref_b_own,
            "sa_only": w.sa_only.id, "s2": w.sent_subjects[1].id}


def _shown(w, key):
    return {"s1": [w.s1.id], "s2": [w.sent_subjects[1].id], "sent_clients": [s.id for s in w.sent_subjects],
            "sent_clients+draft": [s.id for s in w.sent_subjects] + [w.s1.id],
            "b1_visible": [s.id for s in w.sent_subjects] + [w.sb.id, w.near.id],
            "near": [w.s1.id, w.near.id], "near_other": [w.sb.id]}[key]


def _new_rows(since):
    return list(models.AuditEvent.select().where(models.AuditEvent.id > since)
                .order_by(models.AuditEvent.id))


def _last_id():
    row = models.AuditEvent.select(models.AuditEvent.id).order_by(models.AuditEvent.id.desc()).first()
    return row.id if row else 0


class Asker:
    """A signed-in browser, or B1's external system with a bearer token."""

    def __init__(self, app, w, who):
        self.who = who
        if who == "ehr_b1":
            self.ehr = Ehr(app, w.b1)
            self.ehr.token()
            self.user_id, self.program_id = self.ehr.client.user_id, w.b1.id
        else:
            self.browser = Browser(app)
            self.browser.login(getattr(w, who))
            self.user_id = getattr(w, who).id
            self.program_id = (w.a1 if who.endswith("a1") else w.b1).id

    def fetch(self, url):
        if self.who == "ehr_b1":
            return self.ehr.http.get(url, headers=self.ehr._headers())
        if url.startswith("POST "):
            data = subject_fields(first_name="Mariah", last_name="Lopez")
            data["action"] = "add"
            return self.browser.post(url[5:], data, token_from="/subjects/add")
        return self.browser.get(url)


@pytest.mark.parametrize("endpoint", sorted(CLIENT_ROUTES))
def test_item_15_r_safe_1_one_audit_row_per_client_shown(app, scene, endpoint):
    """Battery item 15 (R-SAFE-1): the route's answer is audited with exactly one row per
    client shown, each with user, acting program, action, time, address and outcome; with
    another program's id the attempt is audited as denied (R-SAFE-2)."""
    w = scene
    who, url, shown, foreign = CLIENT_ROUTES[endpoint]
    asker = Asker(app, w, who)
    values = _values(w)
    since = _last_id()
    started = models.utcnow() - dt.timedelta(seconds=5)
    response = asker.fetch(url.format(**values))
    body = response.get_data()
    assert response.status_code == 200, (endpoint, response.status_code, body[:300])
    rows = _new_rows(since)
    per_client = [r for r in rows if r.subject_id is not None]
    assert sorted(r.subject_id for r in per_client) == sorted(_shown(w, shown)), (
        endpoint, [(r.action, r.subject_id, r.outcome) for r in rows])
    for row in rows:
        assert row.user_id == asker.user_id and row.program_id == asker.program_id, row.action
        assert row.action and row.outcome == "ok" and row.ip == "127.0.0.1", row.action
        assert started <= row.at <= models.utcnow() + dt.timedelta(seconds=5)
        assert row.user_email
    if foreign is not None:
        since = _last_id()
        refused = asker.fetch(foreign.format(**values))
        assert refused.status_code in (302, 404), (endpoint, refused.status_code)
        denied = [r for r in _new_rows(since) if r.outcome == "denied"]
        assert len(denied) == 1, (endpoint, [(r.action, r.outcome) for r in _new_rows(since)])
        assert denied[0].user_id == asker.user_id and denied[0].program_id == asker.program_id
        assert denied[0].ip == "127.0.0.1" and denied[0].action and denied[0].at


CONTROL = "\n\r\x1b[31m\x07\tforged"


@pytest.mark.parametrize("where", ["revoke_reason", "sign_in_email", "link_subject_id", "fhir_id"])
def test_item_15_r_safe_1_control_characters_cannot_forge_a_log_line(app, scene, where):
    """Battery item 15 (R-SAFE-1): newlines and control characters in a logged value (a
    revoke reason typed on screen, the address of a refused sign-in, a hidden subject id,
    a FHIR id) are encoded, so the audit log and its CSV export keep one line per event."""
    w = scene
    since = _last_id()
    forged = "x" + CONTROL + " user=admin@example.org action=delete_all outcome=ok"
    b = Browser(app)
    if where == "revoke_reason":
        b.login(w.gk_a1)
        b.post(f"/consent/{w.roi1.id}/revoke", {"reason": forged}, token_from=f"/consent/{w.roi1.id}")
    elif where == "sign_in_email":
        b.client.post("/auth/sign-in", data={"email": "eve" + forged + "@example.org",
                                             "password": "wrong", "csrf_token": b.token()})
    elif where == "link_subject_id":
        b.login(w.gk_b1)
        b.post("/subjects/link", {"subject_id": f"{w.s1.id}{forged}", "first_name": "Alma",
                                  "last_name": "Auditone", "dob": "1970-01-02",
                                  "phone_or_address": "nothing"}, token_from="/subjects/")
    else:
        ehr = Ehr(app, w.b1)
        ehr.http.get("/fhir/Patient/" + forged.replace("\x07", ""), headers=ehr._headers())
    rows = _new_rows(since)
    logged = [r for r in rows if "forged" in (r.detail + r.user_email + r.ip)]
    assert logged, [(r.action, r.detail) for r in rows]
    for row in rows:
        for value in (row.detail, row.user_email, row.ip, row.action, row.object_id):
            assert not any(ord(ch) < 32 and ch != "\t" for ch in value), repr(value)
    assert any(mark in r.detail + r.user_email for r in logged for mark in ("\\n", "\\x1b")), \
        [(r.detail, r.user_email) for r in logged]
    admin = Browser(app)
    admin.login(w.admin)
    export = admin.get("/admin/audit/export/csv/").get_data(as_text=True)
    lines = export.lstrip("\ufeff").splitlines()
    records = list(csv.reader(io.StringIO(export.lstrip("\ufeff"))))
    assert len(lines) == len(records) > len(logged), "a logged value spans two lines of the export"
