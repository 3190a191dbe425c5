"""Browser smoke: the sign-in screen in chromium meets WCAG 2.1 AA (R-UX-1)."""

from tests.conftest import check_accessibility, ui_login


def test_r_ux_1_sign_in_and_home_accessible(page, network):
    """R-UX-1: sign-in and home screens have no serious axe violation."""
    page.goto("/auth/sign-in")
    check_accessibility(page, "sign_in")
    ui_login(page, network.gk_a1.email)
    page.wait_for_url("**/")
    assert "Program A1" in page.content()
    check_accessibility(page, "home")
