"""The soak's simulated staff (issue 7, item 14), run by `python -m bench.soak`.

Each simulated user signs in once with a demo account (the acting program chosen on the
program screen, the User MOU signed on its screen if asked) and stays signed in; then,
1-4 s apart, it does what staff do all day: search clients, open profiles, referral charts,
the queue and referral pages; start an ROI and upload its signed scan; fill and send
referrals; assign; set statuses; add notes. Every write is the real form of the page it is
on, with the CSRF token read from that page. POSTs do not follow their redirect: the page
the browser would show next is fetched as its own (read) request.

Recorded for the verdict (SOAK_RECORD, a JSON file written when locust quits): every
request (step name, read or write, milliseconds, failed), the client-data reads made by
the audit action they must write, and the refusals a person would read on the page.
"""

import datetime as dt
import html
import json
import os
import random
import re
import sys
import time
from html.parser import HTMLParser
from itertools import count

from locust import HttpUser, between, events, task

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.names import LAST_NAMES  # noqa: E402
from tests.pdfs import scanned_pdf  # noqa: E402  (the suite's scanned-style page)

PASSWORD = "Connect-Demo-2026!"
# (sign-in, acting program): gatekeepers and providers of the five demo programs.
ACCOUNTS = (
    ("gatekeeper.clinic@connect.example", "Primary Care"),
    ("provider.clinic@connect.example", "Primary Care"),
    ("gatekeeper.foodbank@connect.example", "Emergency Food Pantry"),
    ("counselor.school@connect.example", "School-Based Family Support"),
    ("gatekeeper.bh@connect.example", "Outpatient Counseling"),
    ("therapist@connect.example", "Outpatient Counseling"),
    ("gatekeeper.clinic@connect.example", "Maternal Home Visiting"),
    ("therapist@connect.example", "School-Based Family Support"),
)
CLOSING = ("Closed- Successful completion", "Closed- Referred to other program",
           "Not Completed- Dropped out", "Not Started- Unable to contact individual")
STAYING_OPEN = ("Enrolled in Services", "On Waiting List")
NOTE_TEXTS = ("Left a voicemail", "Spoke with the client; intake scheduled",
              "Appointment confirmed for next week", "No answer; will try again tomorrow")

RECORD = {"samples": [], "audited_reads": {}, "shown": {}, "outcomes": {}, "errors": {}}
_started = [None]
_next_account = count()

SUBJECT_LINK = re.compile(r'href="/subjects/(\d+)"')
REFERRAL_ROW = re.compile(r'<a href="/referrals/(\d+)">[^<]*</a></td><td>[^<]*</td><td>[^<]*</td>'
                          r'<td>(Active|Assigned|Pending|Closed)')
START_BOX = re.compile(r'class="chart-box chart-start" href="/referrals/new\?subject=(\d+)&amp;to=(\d+)">'
                       r'\s*<span class="d-block">([^<]*)</span>')
ALERT_ERROR = re.compile(r'<div class="alert alert-danger[^>]*>\s*([^<]+)')


# ---------------------------------------------------------------------------
# What locust records.
# ---------------------------------------------------------------------------

@events.test_start.add_listener
def _start(**_kw):
    _started[0] = time.monotonic()


@events.request.add_listener
def _request(name, response_time, exception, request_type, **_kw):
    # Sign-in is its own kind: argon2id plus the 0.35 s answer padding, once per user.
    kind = "sign-in" if name == "sign in" else "read" if request_type == "GET" else "write"
    RECORD["samples"].append((name, kind, round(response_time, 1), exception is not None))
    if exception is not None:
        key = f"{name}: {str(exception)[:120]}"
        RECORD["errors"][key] = RECORD["errors"].get(key, 0) + 1


@events.quitting.add_listener
def _quit(**_kw):
    path = os.environ.get("SOAK_RECORD")
    if not path:
        return
    RECORD["seconds"] = time.monotonic() - _started[0] if _started[0] else 0
    with open(path, "w") as handle:
        json.dump(RECORD, handle)


def _tally(table, key, n=1):
    RECORD[table][key] = RECORD[table].get(key, 0) + n


def rows_shown(page):
    """Rows of a referral list (one client each): those with a referral number cell."""
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    rows = re.split(r"<tr[\s>]", body.group(1))[1:] if body else []
    return sum(1 for row in rows if re.search(r"<td>\d+</td>", row))


# ---------------------------------------------------------------------------
# Reading forms off a page, as a browser does.
# ---------------------------------------------------------------------------

class _Forms(HTMLParser):
    """Every <form>: action, method and its fields as the browser would submit them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms, self._form, self._select, self._textarea = [], None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._form = {"action": a.get("action") or "", "method": (a.get("method") or "get").lower(),
                          "values": {}, "selects": {}, "checkboxes": {}, "radios": {}, "buttons": []}
            self.forms.append(self._form)
            return
        form = self._form
        if form is None:
            return
        if tag == "option":
            if self._select is not None:
                form["selects"][self._select].append(a.get("value") or "")
            return
        if not a.get("name"):
            return
        if tag == "input":
            kind = (a.get("type") or "text").lower()
            name, value = a["name"], a.get("value") or ""
            if kind == "checkbox":
                form["checkboxes"].setdefault(name, []).append((value or "y", "checked" in a))
            elif kind == "radio":
                form["radios"].setdefault(name, []).append((value, "checked" in a))
            elif kind not in ("submit", "button", "file"):
                form["values"][name] = value
        elif tag == "select":
            self._select = a["name"]
            form["selects"][self._select] = []
        elif tag == "textarea":
            self._textarea = a["name"]
            form["values"][self._textarea] = ""
        elif tag == "button":
            form["buttons"].append((a["name"], a.get("value") or ""))

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea is not None and self._form is not None:
            self._form["values"][self._textarea] += data


def forms_of(page, action=None):
    parser = _Forms()
    parser.feed(page)
    if action is None:
        return parser.forms
    return [f for f in parser.forms if f["action"] == action]


def submission(form, **choices):
    """The form's own values (hidden fields, CSRF token, defaults) plus the user's choices."""
    data = dict(form["values"])
    for name, boxes in form["checkboxes"].items():
        ticked = [v for v, on in boxes if on]
        if ticked:
            data[name] = ticked
    for name, radios in form["radios"].items():
        ticked = [v for v, on in radios if on]
        if ticked:
            data[name] = ticked[0]
    data.update(choices)
    return data


# A signed scan to upload: a real one-page PDF with a grey image, as a scanner makes.
SCAN = scanned_pdf()


# ---------------------------------------------------------------------------
# The simulated staff member.
# ---------------------------------------------------------------------------

class Staff(HttpUser):
    wait_time = between(1, 4)

    def on_start(self):
        self.email, self.program = ACCOUNTS[next(_next_account) % len(ACCOUNTS)]
        self.rng = random.Random(f"{os.environ.get('SOAK_SEED', '')}{id(self)}")
        self.subjects, self.starts, self.referrals = [], [], {}
        self.gatekeeper = "gatekeeper" in self.email or "counselor" in self.email
        self.sign_in()

    # -- requests ----------------------------------------------------------------------
    def get(self, url, name, audit=None, expected=None):
        """A page; `audit` is the action the server must write for it (a client-data read);
        `expected` {status: outcome}: an answer a person reads on the page, not an error."""
        with self.client.get(url, name=name, catch_response=True, allow_redirects=False) as r:
            if audit and r.status_code in (200, 404):
                _tally("audited_reads", audit)
            if r.status_code in (expected or {}):
                r.success()
                _tally("outcomes", expected[r.status_code])
            elif r.status_code == 200:
                r.success()
                refused = ALERT_ERROR.search(r.text)
                if refused:
                    _tally("outcomes", f"refused: {html.unescape(refused.group(1).strip())[:70]}")
            elif r.status_code == 302:
                r.success()
            else:
                r.failure(f"{r.status_code} {r.error or ''}".strip())
            return r

    def post(self, url, name, data, files=None, expect=(302,)):
        with self.client.post(url, name=name, data=data, files=files, catch_response=True,
                              allow_redirects=False) as r:
            if r.status_code in expect:
                r.success()
            else:
                r.failure(f"{r.status_code} {r.error or ''}".strip())
            return r

    def follow(self, response, name, audit=None):
        """The page a browser would show after a POST's redirect."""
        location = response.headers.get("Location", "")
        if response.status_code == 302 and location:
            return self.get(location, name, audit)
        return None

    # -- sign-in (once) ----------------------------------------------------------------
    def sign_in(self):
        page = self.get("/auth/sign-in", "sign-in page")
        form = [f for f in forms_of(page.text) if "email" in f["values"]][0]
        r = self.post("/auth/sign-in", "sign in",
                      submission(form, email=self.email, password=PASSWORD))
        if r.status_code != 302:
            return
        page = self.get("/program/", "program chooser")
        chosen = re.search(r'name="program_id" value="(\d+)">\s*<button[^>]*>Act as '
                           + re.escape(self.program) + "<", page.text)
        for form in forms_of(page.text):
            if chosen and form["values"].get("program_id") == chosen.group(1):
                self.post("/program/", "choose program", submission(form))
        self.get("/", "home")

    # -- reads -------------------------------------------------------------------------
    @task(10)
    def search(self):
        name = self.rng.choice(LAST_NAMES)
        r = self.get(f"/subjects/?q={name[:self.rng.choice((3, 4, len(name)))]}", "search subjects",
                     "search_subjects")
        found = SUBJECT_LINK.findall(r.text)
        if r.status_code == 200:
            _tally("shown", "search_subjects", len(found))
        if found:
            self.subjects = (self.subjects + found)[-200:]

    def a_subject(self):
        if not self.subjects:
            self.search()
        return self.rng.choice(self.subjects) if self.subjects else None

    @task(8)
    def profile(self):
        subject = self.a_subject()
        if subject is None:
            return
        r = self.get(f"/subjects/{subject}", "subject profile", "view_subject")
        self.remember_starts(r.text)

    def remember_starts(self, page):
        for subject, to, label in START_BOX.findall(page):
            if "(your program)" not in label:
                self.starts = (self.starts + [(subject, to)])[-50:]

    @task(3)
    def chart(self):
        subject = self.a_subject()
        if subject is not None:
            r = self.get(f"/referrals/chart/{subject}", "referrals chart", "view_referral_chart")
            self.remember_starts(r.text)

    @task(6)
    def queue(self):
        r = self.get("/agency/referrals/", "incoming queue")
        if r.status_code == 200:
            _tally("shown", "list_incoming", rows_shown(r.text))
        self.referrals = {int(i): state for i, state in REFERRAL_ROW.findall(r.text)}

    @task(2)
    def sent_list(self):
        r = self.get("/agency/sent/", "sent list")
        if r.status_code == 200:
            _tally("shown", "list_sent", rows_shown(r.text))

    @task(8)
    def referral(self):
        if not self.referrals:
            self.queue()
        if self.referrals:
            self.get(f"/referrals/{self.rng.choice(list(self.referrals))}", "referral page",
                     "view_referral")

    # -- writes ------------------------------------------------------------------------
    @task(3)
    def send_referral(self):
        if not self.starts:
            self.profile()
        if not self.starts:
            return
        subject, to = self.starts.pop(self.rng.randrange(len(self.starts)))
        # 409: an open referral exists already (R-SEND-5), said on the page.
        r = self.get(f"/referrals/new?subject={subject}&to={to}", "referral form",
                     "view_referral_form", expected={409: "referral form: one open referral already (409)"})
        forms = [f for f in forms_of(r.text) if ("action", "send") in f["buttons"]]
        if r.status_code != 200 or not forms:
            return
        form = forms[0]
        answers = {}
        for name, value in form["values"].items():
            if name.startswith("q_") and not value:
                answers[name] = "Needs follow-up (soak)"
        for name, options in form["selects"].items():
            real = [o for o in options if o]
            if name.startswith("q_") and real:
                answers[name] = self.rng.choice(real)
        r = self.post(f"/referrals/new?subject={subject}&to={to}", "referral form: send",
                      submission(form, action="send", **answers))
        location = r.headers.get("Location", "")
        if not location.endswith("/send"):
            self.follow(r, "referrals chart", "view_referral_chart")
            return
        page = self.get(location, "send confirmation")
        forms = forms_of(page.text, location)
        if not forms:
            _tally("outcomes", "send confirmation: required fields missing")
            return
        r = self.post(location, "send referral", submission(forms[0], **{"send-insurance_confirmed": "y"}))
        self.follow(r, "referrals chart", "view_referral_chart")

    def referral_with(self, form_name, states):
        """A referral page of the queue that offers this form, or None."""
        if not self.referrals:
            self.queue()
        ids = [i for i, state in self.referrals.items() if state in states]
        self.rng.shuffle(ids)
        for referral_id in ids[:3]:
            page = self.get(f"/referrals/{referral_id}", "referral page", "view_referral")
            forms = forms_of(page.text, f"/referrals/{referral_id}/{form_name}")
            if forms:
                return referral_id, forms[0]
            self.referrals.pop(referral_id, None)
        return None, None

    @task(4)
    def assign(self):
        if not self.gatekeeper:
            return
        referral_id, form = self.referral_with("assign", ("Active",))
        if form is None:
            return
        providers = [o for o in form["selects"].get("assign-provider", []) if o]
        r = self.post(f"/referrals/{referral_id}/assign", "assign",
                      submission(form, **{"assign-provider": self.rng.choice(providers)}))
        self.referrals[referral_id] = "Assigned"
        self.follow(r, "referral page", "view_referral")

    @task(3)
    def status(self):
        referral_id, form = self.referral_with("status", ("Assigned",))
        if form is None:
            return
        status = self.rng.choice(CLOSING if self.rng.random() < 0.6 else STAYING_OPEN)
        r = self.post(f"/referrals/{referral_id}/status", "update status",
                      submission(form, **{"status-status": status}))
        if status in CLOSING:
            self.referrals.pop(referral_id, None)
        self.follow(r, "referral page", "view_referral")

    @task(4)
    def note(self):
        referral_id, form = self.referral_with("note", ("Assigned", "Closed"))
        if form is None:
            return
        r = self.post(f"/referrals/{referral_id}/note", "add note", submission(
            form, **{"note-kind": self.rng.choice(["call_attempt", "contact_made", "appointment"]),
                     "note-note_date": dt.date.today().isoformat(),
                     "note-text": self.rng.choice(NOTE_TEXTS)}))
        self.follow(r, "referral page", "view_referral")

    @task(2)
    def upload_roi(self):
        """Start new ROI(s) → Complete ROI → Upload → the signed scan attached."""
        subject = self.a_subject()
        if subject is None:
            return
        page = self.get(f"/consent/new?subject={subject}", "start ROI page", "view_roi_form")
        forms = forms_of(page.text, "/consent/new")
        if not forms or not forms[0]["checkboxes"].get("program"):
            return
        programs = [v for v, _on in forms[0]["checkboxes"]["program"]]
        chosen = self.rng.sample(programs, min(len(programs), self.rng.choice((1, 2))))
        r = self.post("/consent/new", "start ROI", submission(forms[0], program=chosen))
        location = r.headers.get("Location", "")
        if not location.endswith("/complete"):
            self.follow(r, "subjects")
            return
        page = self.get(location, "complete ROI page", "view_roi_form")
        forms = [f for f in forms_of(page.text) if f["method"] == "post" and "info_types" in f["checkboxes"]]
        if not forms:
            return
        r = self.post(location, "complete ROI (Upload)", submission(
            forms[0], info_types=["contact", "demographics", "medical"], authorizer_kind="client",
            method="upload"))
        detail = r.headers.get("Location", "")
        page = self.follow(r, "ROI page", "view_roi")
        if page is None or page.status_code != 200:
            return
        forms = forms_of(page.text, f"{detail}/upload")
        if not forms:
            return
        r = self.post(f"{detail}/upload", "upload signed ROI", submission(forms[0]),
                      files={"scan": ("signed-roi.pdf", SCAN, "application/pdf")})
        self.follow(r, "ROI page", "view_roi")
