"""Smoke tests of the foundation: sign-in, MOU gate, acting program."""

from tests.conftest import PASSWORD, make_user


def test_r_auth_5_sign_in_and_home(browser, network):
    """R-AUTH-5: a wrong password is refused; the right one opens the home page."""
    bad = browser.client.post("/auth/sign-in", data={
        "email": network.gk_a1.email, "password": "wrong", "csrf_token": browser.token()})
    assert bad.status_code == 401
    assert "incorrect" in bad.get_data(as_text=True)
    browser.login(network.gk_a1, PASSWORD)
    home = browser.get("/")
    assert home.status_code == 200
    assert "Program A1" in home.get_data(as_text=True)


def test_r_mou_1_user_mou_gate(browser, network):
    """R-MOU-1: a user without a signed User MOU is sent to sign it first."""
    user = make_user("provider", network.a1, mou=False)
    browser.login(user)
    response = browser.get("/")
    assert response.status_code == 302 and "/auth/user-mou" in response.headers["Location"]
