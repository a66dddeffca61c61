"""The upload script when the answer is not one of our pages (a proxy error, an outage page)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_public_pages import PHONE, fill_form, new_page
from vetting.models import Application

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def site(live_server, settings):
    settings.SITE_URL = live_server.url
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    return live_server.url


def test_a_proxy_error_keeps_what_the_applicant_typed_and_says_nothing_was_sent(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page, name="Robin Kept")

    def bad_gateway(route):
        if route.request.method == "POST":
            route.fulfill(
                status=502,
                content_type="text/html",
                body="<html><body><center><h1>502 Bad Gateway</h1></center><hr>nginx</body></html>",
            )
        else:
            route.continue_()

    page.route("**/apply/", bad_gateway)
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("nothing was sent")
    expect(summary).to_be_focused()
    expect(page.locator("#id_full_name")).to_have_value("Robin Kept")
    expect(page.locator("#id_consent")).to_be_checked()
    expect(page.get_by_role("button", name="Send application")).to_be_enabled()
    assert not Application.objects.exists()
    page.context.close()


def test_the_script_s_error_summary_keeps_the_heading_that_names_it(chromium, site, tmp_path):
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ" + bytes(64))
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    page.get_by_role("button", name="Send application").click()  # the server's summary
    expect(page.locator("#error-summary")).to_be_focused()
    page.set_input_files("#id_evidence_1", str(program))
    page.get_by_role("button", name="Send application").click()  # the script's summary replaces it
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("setup.exe")
    labelled_by = summary.get_attribute("aria-labelledby")
    if labelled_by:
        expect(page.locator(f"#{labelled_by}")).to_have_text("There is a problem")
    page.context.close()
