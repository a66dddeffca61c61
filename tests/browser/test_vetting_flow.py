"""The whole path a person and two staff members take, in a real browser."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from notifications.models import OutboundEmail
from tests.conftest import STAFF_PASSWORD
from tests.factories import PDF_BYTES
from vetting.models import Application

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def link_in(mail: OutboundEmail, path: str) -> str:
    return re.search(rf"\S+{path}\S+/", mail.body_text).group(0)


def sign_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")


def see(page, text: str) -> None:
    expect(page.get_by_text(text).first).to_be_visible()


def take_action(page, label: str) -> None:
    """Click the workflow button by its label, then confirm on the next page."""
    page.get_by_role("link", name=label, exact=True).click()
    page.locator(f"input[type=submit][value='{label}']").click()


def test_apply_confirm_verify_approve_and_see_it_on_the_status_page(
    chromium, live_server, plain_http, settings, tmp_path, agent, server_admin
):
    settings.SITE_URL = live_server.url
    passport = tmp_path / "passport.pdf"
    passport.write_bytes(PDF_BYTES)

    applicant = chromium.new_page()
    applicant.goto(f"{live_server.url}/apply/")
    applicant.fill("#id_full_name", "Robin Browser")
    applicant.fill("#id_email", "robin@applicant.example")
    applicant.fill("#id_matrix_username", "robin")
    applicant.fill("#id_referral", "Sam from the Lisbon meetup")
    applicant.fill("#id_statement", "I run the local chapter.")
    applicant.set_input_files("#id_evidence_1", str(passport))
    applicant.check("#id_consent")
    applicant.get_by_role("button", name="Send application").click()
    applicant.wait_for_url(re.compile(r"/apply/done/"))
    application = Application.objects.get()
    see(applicant, application.reference)

    received = OutboundEmail.objects.get(template="application-received")
    applicant.goto(link_in(received, "/confirm/"))
    see(applicant, "Your application is in the queue.")

    staff = chromium.new_context().new_page()
    sign_in(staff, live_server.url, "agent")
    staff.goto(f"{live_server.url}/admin/vetting/application/")
    staff.get_by_role("link", name=application.reference).click()
    staff.get_by_role("button", name="Claim", exact=True).click()  # one click: no confirmation page
    see(staff, "Claim: done.")
    staff.get_by_role("link", name="Record verification", exact=True).click()
    staff.check("#id_identity_verified")
    staff.select_option("#id_verification_method", "video")
    staff.fill("#id_verified_on", "2026-11-20")
    staff.fill("#id_verification_location", "Jitsi")
    staff.select_option("#id_score", "4")
    staff.select_option("#id_recommendation", "approve")
    staff.locator("input[type=submit][value='Record verification']").click()
    see(staff, "The application is now recommended.")
    staff.context.close()

    decider = chromium.new_context().new_page()
    sign_in(decider, live_server.url, "server_admin")
    decider.goto(f"{live_server.url}/admin/vetting/application/{application.pk}/change/")
    take_action(decider, "Approve")
    see(decider, "Approve: done. The application is now approved.")
    decider.context.close()

    applicant.goto(link_in(received, "/status/"))
    see(applicant, "Your application was approved.")
    applicant.close()
