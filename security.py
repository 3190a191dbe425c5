"""Passwords, signed links and session helpers (R-AUTH-3..7)."""

import os
import pathlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

HERE = pathlib.Path(__file__).resolve().parent
# argon2id with the library's recommended parameters (RFC 9106 low-memory profile).
hasher = PasswordHasher()
MAX_PASSWORD = 128
_COMMON = None

# A hash computed once, verified against when the address is unknown, so an unknown
# address takes as long as a wrong password (R-AUTH-5).
_DUMMY_HASH = None


def common_passwords():
    global _COMMON
    if _COMMON is None:
        path = HERE / "data" / "common_passwords.txt"
        words = path.read_text().split() if path.exists() else []
        _COMMON = {w.strip().lower() for w in words if w.strip()}
    return _COMMON


def _looks_common(password):
    """Blocklisted as is, or a blocklisted word dressed with digits and symbols."""
    lowered = password.lower()
    if lowered in common_passwords():
        return True
    core = re.sub(r"[^a-z]+$", "", lowered).translate(str.maketrans("@0$1!3", "aosiie"))
    core = re.sub(r"[^a-z]", "", core)
    return len(core) >= 4 and core in common_passwords()


def password_problems(password, policy=None, email="", name=""):
    """Sentences saying why a password is refused (empty when it is accepted)."""
    policy = policy or os.environ.get("PASSWORD_POLICY", "composition")
    problems = []
    if len(password) > MAX_PASSWORD:
        problems.append(f"Use at most {MAX_PASSWORD} characters.")
    if policy == "nist":
        if len(password) < 8:
            problems.append("Use at least 8 characters.")
    else:
        if len(password) < 8:
            problems.append("Use at least 8 characters.")
        if not re.search(r"\d", password):
            problems.append("Include at least 1 number.")
        if not re.search(r"[A-Z]", password):
            problems.append("Include at least 1 upper-case letter.")
        if not re.search(r"[a-z]", password):
            problems.append("Include at least 1 lower-case letter.")
        if not re.search(r"[^A-Za-z0-9]", password):
            problems.append("Include at least 1 symbol.")
    if _looks_common(password) or (email and password.lower() == email.lower()):
        problems.append("This password is too common or easy to guess; choose another.")
    return problems


def hash_password(password):
    return hasher.hash(password)


def verify_password(password_hash, password):
    """True when the password matches; an unknown user still costs one verification."""
    global _DUMMY_HASH
    if not password_hash:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hasher.hash(secrets.token_hex(16))
        try:
            hasher.verify(_DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            pass
        return False
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash):
    try:
        return hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


# Signed, expiring, single-use links: the token carries the user's link_version, which
# every newly issued or used link bumps, so older links stop working.
LINK_MAX_AGE = {"invite": 7 * 24 * 3600, "reset": 3600}


def _serializer(secret_key, purpose):
    return URLSafeTimedSerializer(secret_key, salt=f"connect-{purpose}")


def make_link_token(secret_key, purpose, user_id, link_version):
    return _serializer(secret_key, purpose).dumps({"u": user_id, "v": link_version})


def read_link_token(secret_key, purpose, token):
    """(user_id, link_version) or None when the token is bad or expired."""
    try:
        data = _serializer(secret_key, purpose).loads(token, max_age=LINK_MAX_AGE[purpose])
    except (BadSignature, SignatureExpired):
        return None
    if not isinstance(data, dict):
        return None
    return data.get("u"), data.get("v")


def new_session_id():
    return secrets.token_urlsafe(32)


def load_secret_key(data_dir):
    """SECRET_KEY from the environment, else generated once into data/secret_key."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = pathlib.Path(data_dir) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()
