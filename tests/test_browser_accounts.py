"""The main account flow in a real browser (Debian's chromium) with axe-core on each screen:
an administrator invites a user (email caught by aiosmtpd), the user follows the link, sets
a password, signs in, signs the User MOU and chooses a program (R-AUTH-1, R-AUTH-2, R-MOU-1,
R-CTX-2, R-UX-1)."""

import re

import models
from tests.conftest import check_accessibility, deliver_outbox, ui_login

NEW_PASSWORD = "Blue-Lantern-77#"


def test_r_auth_1_invite_set_password_sign_mou_choose_program(page, network, smtp_server, live_server):
    """R-AUTH-1, R-MOU-1, R-CTX-2: invite → email → set password → sign in → User MOU →
    program chooser (the new user belongs to two programs)."""
    page.goto("/auth/sign-in")
    check_accessibility(page, "accounts_sign_in")
    ui_login(page, network.admin.email)
    page.wait_for_url(re.compile(r".*/$"))

    page.goto("/admin/users/")
    check_accessibility(page, "accounts_admin_users")
    page.goto("/admin/programs/")
    check_accessibility(page, "accounts_admin_programs")

    page.goto("/admin/users/new/")
    check_accessibility(page, "accounts_admin_invite")
    page.locator("#email").fill("nina.newcomer@example.org")
    page.locator("#name").fill("Nina Newcomer")
    page.locator("#program").select_option(label="Agency A — Program A1")
    page.locator("#role").select_option("provider")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(r".*/admin/users/.*"))
    assert "Invitation email queued" in page.content()
    user = models.User.get(models.User.email == "nina.newcomer@example.org")
    # A second program, added by the administrator on the Memberships screen.
    page.goto(f"/admin/memberships/new/?user_id={user.id}")
    page.locator("#program").select_option(label="Agency B — Program B1")
    page.locator("#role").select_option("gatekeeper")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(r".*/admin/memberships/.*"))
    page.get_by_role("button", name="Sign out").click()

    deliver_outbox()
    smtp_server.wait_for(1)
    link = next(u for u in smtp_server.links() if "/auth/invitation/" in u)
    assert link.startswith(live_server)
    page.goto(link)
    check_accessibility(page, "accounts_set_password")
    page.get_by_label("New password", exact=True).fill("weak")
    page.get_by_label("Repeat the new password").fill("weak")
    page.get_by_role("button", name="Set password").click()
    assert "at least 8 characters" in page.content()
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set password").click()
    page.wait_for_url(re.compile(r".*/auth/sign-in.*"))

    ui_login(page, "nina.newcomer@example.org", NEW_PASSWORD)
    page.wait_for_url(re.compile(r".*/auth/user-mou.*"))
    check_accessibility(page, "accounts_user_mou")
    page.get_by_label("Type your full name to sign").fill("Nina Newcomer")
    page.get_by_role("button", name="Sign User MOU").click()
    page.wait_for_url(re.compile(r".*/$"))
    assert "Choose the program you act for" in page.content()

    page.goto("/program/")
    check_accessibility(page, "accounts_chooser")
    page.get_by_label("Search your programs").fill("B1")
    page.get_by_role("button", name="Search").click()
    assert page.get_by_role("button", name=re.compile("Act as Program A1")).count() == 0
    page.get_by_role("button", name=re.compile("Act as Program B1")).click()
    footer = page.locator("footer.acting-program")
    assert "Agency B — Program B1" in footer.inner_text()

    # A gatekeeper sees the Agency MOU screen of their program.
    page.goto("/agency-mou/")
    check_accessibility(page, "accounts_agency_mou")
    page.goto("/account/")
    check_accessibility(page, "accounts_my_account")
    assert "Program B1" in page.content()
