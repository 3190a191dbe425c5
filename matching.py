"""Finding subjects: name search, the exact rule and likely duplicates (R-SUBJ-1, R-SUBJ-7).

Every query runs over the normalised, indexed columns of Subject (first_norm, last_norm,
dob, phone_digits, address_norm): name prefixes become index range scans, likely
duplicates are drawn from a handful of date-of-birth variants (one indexed equality each)
and exact or swapped names, then scored with rapidfuzz in Python. That keeps both under
a few milliseconds at a million subjects (bench/bench_subjects.py).
"""

import datetime as dt

from rapidfuzz.distance import JaroWinkler

from peewee import JOIN

from models import NO_PHONE, County, Subject, digits, normalize_address, normalize_name

SEARCH_LIMIT = 50
CANDIDATE_LIMIT = 400
DUPLICATE_LIMIT = 10
NAME_THRESHOLD = 0.86  # Jon/John 0.93, Smyth/Smith 0.89, Anna/Hannah < 0.8

# "0000 Street" is the guide's placeholder for clients without an address (R-SUBJ-3): it
# never identifies anybody, so it never counts as a matching address.
PLACEHOLDER_ADDRESS_PREFIX = "0000 street"


def _prefix_range(column, prefix):
    """column starts with prefix, as an index range (LIKE would skip the index)."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (column >= prefix) & (column < upper)


def split_name(text):
    """'Smith, John' / 'John Smith' / 'smith' -> normalised tokens (at most two used)."""
    text = (text or "").replace(",", " , ")
    parts = text.split()
    if "," in parts:  # "Last, First"
        at = parts.index(",")
        last, first = " ".join(parts[:at]), " ".join(parts[at + 1:])
        return [t for t in (normalize_name(first), normalize_name(last)) if t]
    tokens = [normalize_name(p) for p in parts]
    tokens = [t for t in tokens if t]
    if len(tokens) > 2:  # middle names: first and last tokens matter
        tokens = [tokens[0], tokens[-1]]
    return tokens


def search_subjects(name, dob=None, limit=SEARCH_LIMIT, program=None):
    """Subjects whose names start like the search, statewide (the caller filters what may
    be shown), as a list. One word: last-name matches, then first-name matches; two words:
    first and last name in either order. Each query walks one index in its own order and
    stops at `limit` (no sort of every match). With `program`, each subject says in
    `.linked` whether that program may see it (R-SUBJ-6), probed in the same select."""
    tokens = split_name(name)
    if not tokens:
        return []
    columns = [Subject, County]  # the county is shown
    if program is not None:
        columns.append(Subject.seen_by(program).alias("linked"))
    base = Subject.select(*columns).join(County, JOIN.LEFT_OUTER)
    if dob:
        base = base.where(Subject.dob == dob)
    if len(tokens) == 1:
        queries = [
            base.where(_prefix_range(Subject.last_norm, tokens[0]))
                .order_by(Subject.last_norm, Subject.first_norm),
            base.where(_prefix_range(Subject.first_norm, tokens[0]))
                .order_by(Subject.first_norm, Subject.last_norm)]
    else:
        first, last = tokens
        queries = [
            base.where(_prefix_range(Subject.last_norm, last) & _prefix_range(Subject.first_norm, first))
                .order_by(Subject.last_norm, Subject.first_norm),
            base.where(_prefix_range(Subject.last_norm, first) & _prefix_range(Subject.first_norm, last))
                .order_by(Subject.last_norm, Subject.first_norm)]
    found, seen = [], set()
    for query in queries:
        if len(found) >= limit:
            break
        for subject in query.limit(limit - len(found)):
            if subject.id not in seen:
                seen.add(subject.id)
                found.append(subject)
    return found


def dob_variants(dob):
    """The date itself and dates a typing slip would give: swapped day and month, swapped
    adjacent digits of the day, month and year."""
    found = {dob}

    def add(year, month, day):
        try:
            found.add(dt.date(year, month, day))
        except ValueError:
            pass

    add(dob.year, dob.day, dob.month)
    for value, kind in ((f"{dob.day:02d}", "d"), (f"{dob.month:02d}", "m"), (f"{dob.year:04d}", "y")):
        for i in range(len(value) - 1):
            swapped = int(value[:i] + value[i + 1] + value[i] + value[i + 2:])
            add(swapped if kind == "y" else dob.year,
                swapped if kind == "m" else dob.month,
                swapped if kind == "d" else dob.day)
    return sorted(found)


def _usable_phone(phone_digits):
    return phone_digits and phone_digits != NO_PHONE


def _usable_address(address_norm):
    return address_norm and not address_norm.startswith(PLACEHOLDER_ADDRESS_PREFIX)


def phone_key(phone):
    return digits(phone)[-10:]


def exact_matches(first_name, last_name, dob, phone="", address=""):
    """The exact rule of R-SUBJ-1: same first and last name and date of birth, and the
    same phone or the same address (placeholders such as (999)-999-9999 never count)."""
    first, last = normalize_name(first_name), normalize_name(last_name)
    phone_digits, address_norm = phone_key(phone), normalize_address(address)
    either = []
    if _usable_phone(phone_digits):
        either.append(Subject.phone_digits == phone_digits)
    if _usable_address(address_norm):
        either.append(Subject.address_norm == address_norm)
    if not (first and last and dob and either):
        return Subject.select().where(Subject.id.is_null())
    cond = either[0] if len(either) == 1 else either[0] | either[1]
    return (Subject.select()
            .where((Subject.last_norm == last) & (Subject.first_norm == first)
                   & (Subject.dob == dob) & cond)
            .order_by(Subject.id))


def matches_subject(subject, first_name, last_name, dob, phone_or_address):
    """Whether what the client told the user identifies this subject exactly (R-SUBJ-7)."""
    if (normalize_name(first_name), normalize_name(last_name), dob) != (
            subject.first_norm, subject.last_norm, subject.dob):
        return False
    told = phone_or_address or ""
    told_phone = phone_key(told)
    if len(told_phone) == 10 and _usable_phone(subject.phone_digits) and told_phone == subject.phone_digits:
        return True
    told_address = normalize_address(told)
    return bool(_usable_address(subject.address_norm) and told_address == subject.address_norm)


def name_score(first, last, cand_first, cand_last):
    """Similarity 0..1 of two names, also when first and last were swapped."""
    straight = (JaroWinkler.similarity(first, cand_first) + JaroWinkler.similarity(last, cand_last)) / 2
    swapped = (JaroWinkler.similarity(first, cand_last) + JaroWinkler.similarity(last, cand_first)) / 2
    return max(straight, swapped)


def likely_duplicates(first_name, last_name, dob, phone="", limit=DUPLICATE_LIMIT):
    """Subjects that are probably the same person, best first, each as (score, subject).

    Candidates: a date of birth equal or one typing slip away (indexed equality per
    variant), the exact or swapped names with any date, the same phone. Scored by
    rapidfuzz Jaro-Winkler on the normalised names (swaps included)."""
    first, last = normalize_name(first_name), normalize_name(last_name)
    if not (first and last and dob):
        return []
    columns = (Subject.id, Subject.first_name, Subject.last_name, Subject.first_norm,
               Subject.last_norm, Subject.dob, Subject.city, Subject.phone_digits)
    queries = [Subject.select(*columns).where(Subject.dob.in_(dob_variants(dob))),
               Subject.select(*columns).where((Subject.last_norm == last) & (Subject.first_norm == first)),
               Subject.select(*columns).where((Subject.last_norm == first) & (Subject.first_norm == last))]
    phone_digits = phone_key(phone)
    if _usable_phone(phone_digits) and len(phone_digits) == 10:
        queries.append(Subject.select(*columns).where(Subject.phone_digits == phone_digits))
    seen, scored = set(), []
    for query in queries:
        for cand in query.limit(CANDIDATE_LIMIT).namedtuples():
            if cand.id in seen:
                continue
            seen.add(cand.id)
            score = name_score(first, last, cand.first_norm, cand.last_norm)
            same_names = {first, last} == {cand.first_norm, cand.last_norm}
            same_phone = _usable_phone(phone_digits) and cand.phone_digits == phone_digits
            if cand.dob == dob:
                score += 0.05
            if score >= NAME_THRESHOLD or same_names or (same_phone and score >= 0.75):
                scored.append((round(min(score, 1.0), 3), cand))
    scored.sort(key=lambda pair: (-pair[0], pair[1].id))
    return scored[:limit]


def masked(subject):
    """What a user may see of a subject they may not open: enough to decide, never a
    full address or phone (R-SUBJ-7)."""
    phone = subject.phone_digits if _usable_phone(subject.phone_digits) else ""
    return {
        "id": subject.id,
        "initials": f"{subject.first_name[:1]}. {subject.last_name[:1]}.".upper(),
        "dob": subject.dob,
        "city": subject.city,
        "phone_end": phone[-2:] if phone else "",
    }
