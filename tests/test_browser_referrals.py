"""The closed loop in a real browser: referrer → gatekeeper → provider → referrer, with the
emails caught by a real SMTP server and their links followed (R-SEND, R-RECV, R-STAT,
R-TRACK; R-UX-1 on the form, the queue, the referral page and the Sent list)."""

import re

from tests.conftest import check_accessibility, deliver_outbox
from tests.referral_helpers import add_intake, client


def _sign_out(page):
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/auth/sign-in**")


def _follow_email_link(page, smtp_server, address, count, email, password):
    """Deliver the outbox, take the newest email to `address`, open its link, sign in."""
    deliver_outbox()
    smtp_server.wait_for(count)
    mails = [m for m in smtp_server.messages if address in m["to"]]
    assert mails, f"no email to {address}"
    link = re.search(r"https?://\S+/referrals/\d+", mails[-1]["body"]).group(0)
    page.goto(link)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/referrals/\d+"))
    return link


def test_r_send_r_recv_r_stat_closed_loop_in_the_browser(page, network, smtp_server):
    """R-SEND-1..4, R-RECV-1/2/4, R-STAT-1/2, R-TRACK-1, R-SEND-6 end to end."""
    from tests.conftest import PASSWORD
    add_intake(network.b1)
    subject, _roi = client(network)

    # Referrer: chart → Start → Save Progress → Pending → Send → confirm → Active.
    page.goto("/auth/sign-in")
    page.get_by_label("Email").fill(network.gk_a1.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")
    page.goto(f"/referrals/chart/{subject.id}")
    page.get_by_role("link", name=re.compile("Program B1.*Start")).click()
    page.get_by_label("Needs transport?").select_option("yes")
    check_accessibility(page, "referral_form")
    page.get_by_role("button", name="Save Progress").click()
    page.get_by_role("link", name=re.compile("Program B1.*Pending")).click()
    page.get_by_role("button", name="Send").click()
    page.get_by_label(re.compile("insurance will not be a barrier")).check()
    page.get_by_role("button", name="Send").click()
    page.get_by_role("link", name=re.compile("Program B1.*Active")).wait_for()
    _sign_out(page)

    # Gatekeeper: the email link, the queue, Assign.
    _follow_email_link(page, smtp_server, network.gk_b1.email, 1, network.gk_b1.email, PASSWORD)
    page.goto("/agency/referrals/")
    assert subject.last_name in page.content()
    check_accessibility(page, "incoming_queue")
    page.get_by_role("link", name=re.compile(subject.last_name)).click()
    check_accessibility(page, "referral_page_gatekeeper")
    page.get_by_label("Provider").select_option(label="Bob Bee")
    page.get_by_role("button", name="Assign").click()
    page.get_by_text("The referral is assigned.").wait_for()
    _sign_out(page)

    # Provider: the assignment email, notes, status updates to a closed outcome.
    _follow_email_link(page, smtp_server, network.pr_b1.email, 3, network.pr_b1.email, PASSWORD)
    page.get_by_label("Kind").select_option(label="Call attempt")
    page.get_by_label("Note", exact=True).fill("Left a voicemail")
    page.get_by_role("button", name="Add note").click()
    page.get_by_label("Referral Status").select_option("Enrolled in Services")
    page.get_by_role("button", name="Update status").click()
    page.get_by_label("Referral Status").select_option("Closed- Successful completion")
    page.get_by_role("button", name="Update status").click()
    page.get_by_text("Closed- Successful completion", exact=False).first.wait_for()
    check_accessibility(page, "referral_page_provider")
    _sign_out(page)

    # Referrer: told of the assignment by email; Sent list with "Any Status" shows it closed.
    deliver_outbox()
    assert any(network.gk_a1.email in m["to"] and "assigned" in m["body"]
               for m in smtp_server.messages)
    page.goto("/auth/sign-in")
    page.get_by_label("Email").fill(network.gk_a1.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Agency", exact=True).click()
    nav.get_by_role("link", name="Sent").click()
    assert subject.last_name not in page.content()  # closed: not among the open ones
    page.get_by_role("button", name="Show Filters").click()
    page.get_by_label("Status").select_option(label="Any Status")
    page.get_by_role("button", name="Apply filters").click()
    assert subject.last_name in page.content()
    check_accessibility(page, "sent_list")
    page.get_by_role("link", name=re.compile(subject.last_name)).click()
    assert "Left a voicemail" in page.content()
    assert "Closed- Successful completion" in page.content()
