"""Battery item 9: SQL injection in every search, filter, sort and page parameter of the list
views (Flask-Admin search, flt*, sort, page, page_size) and the subject search (R-SAFE-2,
R-SAFE-5): known payloads and hypothesis fuzzing, no 500, no extra rows."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Browser
from tests.security.world import build_world, key_counts

PAYLOADS = ["' OR '1'='1", "' OR 1=1 --", "\" OR \"\"=\"", "1; DROP TABLE subject; --",
            "') OR ('x'='x", "%' OR '%'='", "1 UNION SELECT email, password_hash FROM \"user\" --",
            "\\", "'", "%", "_", "\x00", "1e309", "-1", "99999999999999999999999", "1' AND SLEEP(1)--",
            "$(id)", "name desc; --", "é'ü’"]
# Every parameter gets these; the search gets all of PAYLOADS (keeps the battery short).
SAMPLE = ["' OR '1'='1", "99999999999999999999999"]
# Search payloads no row contains: any row they bring back came from an injection. ("%" and
# "_" are LIKE wildcards, "-1" is in service codes, a NUL is dropped: they may match the
# user's own rows.)
MATCH_NOTHING = [p for p in PAYLOADS if p not in ("%", "_", "-1", "\\", "'", "\x00")]
ROW_ID = re.compile(r'(?:[?&]id=|name="rowid" value=")(\d+)')


def list_views(app):
    return [v for v in app.extensions["admin"][0]._views
            if getattr(v, "model", None) is not None and getattr(v, "url", None)]


def user_for(view, w):
    return w.admin if view.url.startswith("/admin/") and "intake" not in view.url else w.gk_a1


def ids_on(body):
    return set(ROW_ID.findall(body))


@pytest.fixture
def scene(app, network):
    w = build_world(network)
    browsers = {}
    for who in (w.admin, w.gk_a1):
        b = Browser(app)
        b.login(who)
        browsers[who.id] = b
    return w, browsers


@pytest.mark.parametrize("part", [0, 1, 2])
def test_r_safe_5_known_payloads_in_every_list_parameter(app, scene, part):
    """R-SAFE-5: every list view × {search, sort, page, page_size, each filter} × known
    payloads: never a 500, and a search never shows a row that a no-match search hides."""
    w, browsers = scene
    before = key_counts()
    problems, tried = [], 0
    for view in list_views(app)[part::3]:
        b = browsers[user_for(view, w).id]
        base = view.url + "/"
        empty = ids_on(b.get(base + "?search=zzqqxxnomatch").get_data(as_text=True))
        filters = len(getattr(view, "_filters", None) or [])
        params = [{"search": payload} for payload in PAYLOADS[:4] + MATCH_NOTHING[4:8] + ["%", "\x00"]]
        for payload in SAMPLE:
            params += [{"sort": payload}, {"page": payload}, {"page_size": payload},
                       {"desc": payload, "sort": "0"}]
            params += [{f"flt0_{i}": payload} for i in range(filters)]
        if True:
            for query in params:
                response = b.get(base, query_string=query)
                tried += 1
                if response.status_code >= 500:
                    problems.append(f"{base} {query!r}: {response.status_code}")
                elif query.get("search") in MATCH_NOTHING and response.status_code == 200:
                    extra = ids_on(response.get_data(as_text=True)) - empty
                    if extra:
                        problems.append(f"{base} {query!r}: extra rows {sorted(extra)[:5]}")
    assert not problems, "\n".join(problems[:40])
    assert tried > 100
    assert key_counts() == before


def test_r_safe_5_subject_search_payloads(app, scene):
    """R-SAFE-5: the subject search (names, date of birth) with injection payloads: no 500,
    none of the other programs' clients shown."""
    w, browsers = scene
    b = browsers[w.gk_a1.id]
    for query in [q for payload in PAYLOADS for q in (
            {"q": payload}, {"q": f"OwnerA2 {payload}"}, {"q": "Secretname", "dob": payload},
            {"last_name": payload, "first_name": payload, "dob": payload})]:
        response = b.get("/subjects/", query_string=query)
        body = response.get_data(as_text=True)
        assert response.status_code < 500, query
        assert "SecretnameA2" not in body and "SecretnameB1" not in body, query


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_r_safe_5_fuzzed_search_and_sort(app, scene, text):
    """R-SAFE-5 (hypothesis): arbitrary text in the subject search and in the referral
    lists' search, sort and filter never gives a 500 nor another program's client."""
    w, browsers = scene
    b = browsers[w.gk_a1.id]
    for url, query in (("/subjects/", {"q": text}), ("/agency/sent/", {"search": text, "sort": text}),
                       ("/agency/referrals/", {"flt0_0": text, "page": text}),
                       ("/admin/intake-sections/", {"search": text})):
        response = b.get(url, query_string=query)
        assert response.status_code < 500, (url, query)
        body = response.get_data(as_text=True)
        assert "SecretnameA2" not in body and "SecretnameB1" not in body
