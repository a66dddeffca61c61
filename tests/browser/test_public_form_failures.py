"""The upload script when the answer is not one of our pages (a proxy error, an outage page)."""

from __future__ import annotations

import re

import pytest
from django_ratelimit.core import _get_window
from playwright.sync_api import expect

from iama_vetting import ratelimits
from tests.browser.test_csrf_retry import block_cookies
from tests.browser.test_public_pages import PHONE, fill_form, intercept, new_page
from tests.security.test_gunicorn_shared_limits import start_well_inside_the_minute
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
        route.fulfill(
            status=502,
            content_type="text/html",
            body="<html><body><center><h1>502 Bad Gateway</h1></center><hr>nginx</body></html>",
        )

    intercept(page, "/apply/", "POST", bad_gateway)
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("nothing was sent")
    expect(summary).to_be_focused()
    expect(page.locator("#id_full_name")).to_have_value("Robin Kept")
    expect(page.locator("#id_consent")).to_be_checked()
    expect(page.get_by_role("button", name="Send application")).to_be_enabled()
    assert not Application.objects.exists()
    page.context.close()


@pytest.mark.parametrize("after_the_servers_summary", [True, False])
def test_the_script_s_error_summary_keeps_the_heading_that_names_it(
    chromium, site, tmp_path, after_the_servers_summary
):
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ" + bytes(64))
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    if after_the_servers_summary:
        page.get_by_role("button", name="Send application").click()
        expect(page.locator("#error-summary")).to_be_focused()
    page.set_input_files("#id_evidence_1", str(program))
    page.get_by_role("button", name="Send application").click()  # the script's summary
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("setup.exe")
    # A screen reader announces the summary by its heading, as an alert like the server's summary.
    expect(summary).to_have_accessible_name("There is a problem")
    expect(page.get_by_role("alert", name="There is a problem")).to_contain_text("setup.exe")
    # Only what is wrong now: the server's earlier list is gone.
    expect(summary.locator("h2")).to_have_count(1)
    expect(summary.get_by_role("link")).to_have_count(1)
    page.context.close()


def _too_many_posts(page, settings, monkeypatch):
    from django.test import Client

    # The limit counts per address; the test client posts from 127.0.0.1 as the browser does.
    # Filled and hit within one minute window: at its end the count starts again.
    start_well_inside_the_minute(_get_window("127.0.0.1", 60))
    for _ in range(ratelimits.APPLY.per_minute):
        Client().post("/apply/", {})


def _cookies_blocked(page, settings, monkeypatch):
    # A lost cookie alone is cured by the script's one new try (test_csrf_retry.py).
    block_cookies(page, "/apply/")


def _maintenance_on(page, settings, monkeypatch):
    from iama_vetting import maintenance

    maintenance.switch_on(None)


def _bug(page, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("vetting.workflow.submit_application", broken)


def _database_down(page, settings, monkeypatch):
    from django.db import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("vetting.workflow.submit_application", broken)


def _disk_full(page, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vetting.workflow.submit_application", broken)


def _request_not_understood(page, settings, monkeypatch):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 3  # Django answers 400 before any view


@pytest.mark.parametrize(
    ("cause", "heading", "paragraph"),
    [
        (_too_many_posts, "Too many requests", "Please wait a minute and try again."),
        (_cookies_blocked, "Please send the form again", "Your form could not be checked"),
        (_maintenance_on, "Down for maintenance", "We are working on the site right now"),
        (_bug, "Something went wrong on our side", "Nothing you sent was kept half-way."),
        (_database_down, "Back in a moment", "The service is briefly unavailable."),
        (_disk_full, "There is a problem", "We could not store your files just now"),
        (_request_not_understood, "We could not understand that request", "Please go back, reload the page"),
    ],
    ids=["429", "csrf-403", "maintenance-503", "500", "database-503", "storage-503", "400"],
)
def test_an_error_reply_keeps_the_form_and_shows_what_the_reply_says(
    chromium, site, settings, monkeypatch, tmp_path, cause, heading, paragraph
):
    settings.MAINTENANCE_FILE = tmp_path / "maintenance.json"
    note = tmp_path / "note.txt"
    note.write_bytes(b"Sam can vouch for me.\n")
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page, name="Robin Kept")
    page.fill("#id_statement", "A statement that took a while to write.")
    page.set_input_files("#id_evidence_1", str(note))
    cause(page, settings, monkeypatch)

    page.get_by_role("button", name="Send application").click()

    summary = page.locator("#error-summary")
    expect(summary.locator("h2")).to_have_text(heading)
    expect(summary).to_contain_text(paragraph)
    expect(summary).to_be_focused()
    expect(page).to_have_title(re.compile(r"^Error: "))
    # Everything typed and chosen is still there, ready to send again.
    expect(page.locator("#id_full_name")).to_have_value("Robin Kept")
    expect(page.locator("#id_statement")).to_have_value("A statement that took a while to write.")
    expect(page.locator("#id_consent")).to_be_checked()
    assert page.eval_on_selector("#id_evidence_1", "input => input.files.length") == 1
    expect(page.get_by_role("button", name="Send application")).to_be_enabled()
    assert not Application.objects.exists()
    page.context.close()


def test_a_reply_with_the_form_and_no_errors_focuses_its_heading(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)

    # Answered with a blank form.
    intercept(page, "/apply/", "POST", lambda route: route.fulfill(response=route.fetch(method="GET")))
    page.get_by_role("button", name="Send application").click()
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_be_focused()
    expect(page.locator("#id_full_name")).to_have_value("")  # the page was replaced
    page.context.close()


def test_a_stale_status_page_shows_the_application_as_it_is_now(chromium, site):
    from tests.factories import make_application
    from vetting import links

    application = make_application(
        status=Application.Status.INFO_REQUESTED, information_request="Please send a recent photo."
    )
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/status/{links.status_token(application)}/")
    page.fill("#id_message", "Here it is.")
    # Meanwhile staff take the application back into review: the post is answered
    # with a redirect to this same address, where the form is gone.
    Application.objects.filter(pk=application.pk).update(status=Application.Status.IN_REVIEW)
    page.get_by_role("button", name="Send to staff").click()
    expect(page.locator("#id_message")).to_have_count(0)
    expect(page.locator("#error-summary")).to_have_count(0)
    assert not page.title().startswith("Error:")
    page.context.close()


def test_a_lost_connection_keeps_the_form_and_lets_the_applicant_send_again(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page, name="Robin Kept")

    intercept(page, "/apply/", "POST", lambda route: route.abort("internetdisconnected"))
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("The connection failed, so nothing was sent.")
    expect(summary).to_be_focused()
    expect(page.locator(".upload-progress")).to_be_hidden()
    expect(page.locator("#id_full_name")).to_have_value("Robin Kept")
    button = page.get_by_role("button", name="Send application")
    expect(button).to_be_enabled()
    # The summary's link leads to the button that sends again.
    summary.get_by_role("link").click()
    expect(button).to_be_focused()

    page.unroute("**/apply/")  # back online
    button.click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    assert Application.objects.get().full_name == "Robin Kept"
    page.context.close()
