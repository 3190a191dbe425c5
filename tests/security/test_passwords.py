"""Battery item 4: passwords (R-AUTH-3)."""

import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workflow
from models import User, database
from security import hash_password, password_problems, verify_password
from tests.conftest import PASSWORD, actor, make_user

STRONG_TAIL = "aA1!"


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=4, max_size=124).filter(lambda s: "\x00" not in s))
def test_r_auth_3_long_and_non_ascii_passwords_are_not_cut(body):
    """R-AUTH-3: up to 128 characters, any alphabet, every character counts."""
    password = body + STRONG_TAIL
    hashed = hash_password(password)
    assert verify_password(hashed, password)
    assert not verify_password(hashed, password[:-1])
    assert not verify_password(hashed, password[1:])


def test_r_auth_3_128_characters_accepted_129_refused():
    """R-AUTH-3: the policy accepts 128 characters and refuses more, it never truncates."""
    ok = "Ünïcødé-" + "x" * 116 + "A1!z"
    assert len(ok) == 128 and password_problems(ok) == []
    assert password_problems(ok + "y")


@pytest.mark.parametrize("password", ["Password1!", "P@ssw0rd", "password", "Welcome123!",
                                      "Short1!", "alllowercase1!", "ALLUPPER1!", "NoDigits!!",
                                      "NoSymbol123"])
def test_r_auth_3_weak_passwords_refused(password):
    """R-AUTH-3: composition rule and the common-password list."""
    assert password_problems(password)


def test_r_auth_3_nist_policy_switch(monkeypatch):
    """R-AUTH-3: PASSWORD_POLICY=nist drops the composition rule, keeps length and blocklist."""
    monkeypatch.setenv("PASSWORD_POLICY", "nist")
    assert password_problems("correct horse battery staple") == []
    assert password_problems("Password1!")
    assert password_problems("short")


def test_r_auth_3_hash_is_argon2id():
    """R-AUTH-3: hashes are argon2id."""
    assert hash_password("Anything-42!").startswith("$argon2id$")


def test_r_auth_3_change_needs_current_password(app, network):
    """R-AUTH-3: changing a password needs the current one; nothing changes otherwise."""
    user = network.pr_a1
    before = User.get_by_id(user.id).password_hash
    with pytest.raises(workflow.RuleViolation):
        workflow.change_password(actor(user), "not-the-password", "Brand-New-Pass-9!")
    assert User.get_by_id(user.id).password_hash == before
    workflow.change_password(actor(user), PASSWORD, "Brand-New-Pass-9!")
    assert verify_password(User.get_by_id(user.id).password_hash, "Brand-New-Pass-9!")


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.just("Zebra-Umbrella-77#"))
def test_r_auth_3_no_plain_password_in_database(tmp_path_factory, password):
    """R-AUTH-3: the database file never holds a password in clear."""
    from app import create_app
    import models
    path = tmp_path_factory.mktemp("pw") / "connect.db"
    create_app({"DATABASE_URL": f"sqlite:///{path}", "SECRET_KEY": "k",
                "DATA_DIR": str(path.parent), "UPLOAD_DIR": str(path.parent / "u")})
    with database.connection_context():
        models.migrate()
        user = make_user(password=password)
        workflow.sign_in(user.email, password, "127.0.0.1")
        try:
            workflow.sign_in(user.email, password + "x", "127.0.0.1")
        except workflow.RuleViolation:
            pass
    raw = b"".join(p.read_bytes() for p in pathlib.Path(path.parent).glob("connect.db*"))
    assert password.encode() not in raw
