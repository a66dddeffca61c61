"""The upload script after a CSRF refusal: it fetches a fresh token and sends the form once more."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from evidence.models import Evidence
from tests.browser.test_public_pages import PHONE, fill_form, intercept
from tests.factories import make_application
from vetting import links
from vetting.models import Application, InformationReply

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def site(live_server, settings, plain_http):
    settings.SITE_URL = live_server.url
    return live_server.url


def new_page(chromium):
    # The production CSP applies (no bypass): the background fetch must pass it.
    return chromium.new_context(viewport=PHONE).new_page()


def posts_to(page, path: str) -> list[str]:
    """The POSTs the page makes to `path`, as they happen."""
    posts: list[str] = []

    def record(request) -> None:
        if request.method == "POST" and request.url.endswith(path):
            posts.append(request.url)

    page.on("request", record)
    return posts


def block_cookies(page, path: str) -> None:
    """A browser that keeps no cookie: the CSRF cookie is gone, and the form's page, fetched
    again, sets none (it answers as it did, without Set-Cookie)."""
    html = page.content()
    page.context.clear_cookies()

    intercept(
        page,
        path,
        "GET",
        lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html),
    )


def test_an_application_refused_for_a_lost_csrf_cookie_is_sent_again_and_stored_once(
    chromium, site, tmp_path, screenshot
):
    note = tmp_path / "note.txt"
    note.write_bytes(b"Sam can vouch for me.\n")
    page = new_page(chromium)
    page.goto(f"{site}/apply/")
    page.context.clear_cookies()  # a browser restarted with the tab restored
    fill_form(page, name="Carl Csrf")
    page.set_input_files("#id_evidence_1", str(note))
    posts = posts_to(page, "/apply/")

    page.get_by_role("button", name="Send application").click()

    page.wait_for_url(re.compile(r"/apply/done/"))
    screenshot(page, "csrf-retried-apply-done")
    application = Application.objects.get()
    assert application.full_name == "Carl Csrf"
    assert Evidence.objects.get(application=application).original_name == "note.txt"
    assert len(posts) == 2  # the refused one and the one sent again
    page.context.close()


def test_an_answer_refused_for_a_lost_csrf_cookie_is_sent_again_and_stored_once(chromium, site):
    application = make_application(
        status=Application.Status.INFO_REQUESTED, information_request="Please send a recent photo."
    )
    path = f"/status/{links.status_token(application)}/"
    page = new_page(chromium)
    page.goto(f"{site}{path}")
    page.context.clear_cookies()
    page.fill("#id_message", "Here it is.")

    page.get_by_role("button", name="Send to staff").click()

    page.wait_for_url(re.compile(r"\?sent=1$"))
    expect(page.locator(".notice")).to_contain_text("your answer was sent to staff")
    assert InformationReply.objects.get().text == "Here it is."
    application.refresh_from_db()
    assert application.status == Application.Status.SUBMITTED
    page.context.close()


def test_when_sending_again_is_refused_too_the_whole_message_shows_and_nothing_loops(
    chromium, site, screenshot
):
    page = new_page(chromium)
    page.goto(f"{site}/apply/")
    fill_form(page, name="Robin Kept")
    block_cookies(page, "/apply/")
    posts = posts_to(page, "/apply/")

    page.get_by_role("button", name="Send application").click()

    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary.locator("h2")).to_have_text("Please send the form again")
    expect(summary).to_contain_text("or your browser blocks cookies for this site")
    expect(summary).to_contain_text("Go back, reload the page and send it again.")
    expect(summary.get_by_role("link", name="Open the application form again")).to_have_attribute(
        "href", "/apply/"
    )
    screenshot(page, "csrf-refused-twice")
    expect(page.locator("#id_full_name")).to_have_value("Robin Kept")
    expect(page.get_by_role("button", name="Send application")).to_be_enabled()
    expect(page.get_by_role("button", name="Send application")).to_have_text("Send application")
    assert len(posts) == 2
    assert not Application.objects.exists()
    page.context.close()


def test_when_the_fresh_token_cannot_be_fetched_the_refusal_shows(chromium, site):
    page = new_page(chromium)
    page.goto(f"{site}/apply/")
    fill_form(page, name="Robin Kept")
    page.context.clear_cookies()
    posts = posts_to(page, "/apply/")

    # The connection is lost for the form page the script fetches for a fresh token.
    intercept(page, "/apply/", "GET", lambda route: route.abort("internetdisconnected"))
    page.get_by_role("button", name="Send application").click()

    summary = page.locator("#error-summary")
    expect(summary.locator("h2")).to_have_text("Please send the form again")
    expect(summary).to_be_focused()
    expect(page.locator("#id_full_name")).to_have_value("Robin Kept")
    expect(page.get_by_role("button", name="Send application")).to_be_enabled()
    assert len(posts) == 1
    assert not Application.objects.exists()
    page.context.close()
