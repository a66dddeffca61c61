"""The admin's own forms in a real browser, under the production CSP: errors are met with the focus on their summary."""

from __future__ import annotations

import pytest

from tests.browser.test_vetting_flow import sign_in
from tests.factories import make_application
from vetting import workflow

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_verification_sent_incomplete_puts_the_focus_on_the_error_summary(
    chromium, live_server, plain_http, agent, screenshot
):
    application = make_application()
    workflow.claim(application, agent)
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(page, live_server.url, "agent")
    page.goto(f"{live_server.url}/admin/vetting/application/{application.pk}/action/record_verification/")
    assert page.evaluate("document.activeElement.id") != "error-summary"

    page.locator("input[type=submit][value='Record verification']").click()
    page.wait_for_load_state()

    assert page.evaluate("document.activeElement.id") == "error-summary"
    assert page.evaluate("document.activeElement.textContent") == "Please correct the errors below."
    screenshot(page, "admin-record-verification-errors")
    page.context.close()
