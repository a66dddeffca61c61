"""What the applicant sees and hears on the form in a real browser: focus, error styling,
reflow at 320 px, and where the error summary's links lead."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_public_pages import PHONE, fill_form, new_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

YELLOW = "rgb(255, 191, 71)"
BLACK = "rgb(11, 12, 12)"
RED = "rgb(179, 38, 30)"


@pytest.fixture
def site(live_server, settings):
    settings.SITE_URL = live_server.url
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    return live_server.url


def style(page, selector: str, prop: str) -> str:
    return page.eval_on_selector(selector, f"element => getComputedStyle(element).{prop}")


def top_on_screen(page, selector: str) -> float:
    return page.eval_on_selector(selector, "element => element.getBoundingClientRect().top")


@pytest.mark.parametrize(
    "selector", ["#id_full_name", "#id_email", "#id_phone", "#id_statement", "#id_evidence_1", "#id_consent"]
)
def test_a_focused_field_has_a_yellow_ring_with_a_dark_edge(chromium, site, selector):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    page.focus(selector)
    ring = style(page, selector, "boxShadow")
    assert YELLOW in ring and BLACK in ring, ring
    page.context.close()


def test_a_focused_link_turns_yellow_with_a_dark_underline(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    link = "a[href='/privacy/']"
    page.focus(link)
    assert style(page, link, "backgroundColor") == YELLOW
    assert style(page, link, "color") == BLACK
    assert BLACK in style(page, link, "boxShadow")
    page.context.close()


def test_fields_with_errors_have_a_red_border(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    page.fill("#id_email", "not an address")
    page.fill("#id_phone", "+351 900 000 000")
    page.get_by_role("button", name="Send application").click()
    expect(page.locator("#error-summary")).to_be_focused()
    for selector in ("#id_full_name", "#id_email", "#id_statement"):
        assert style(page, selector, "borderTopColor") == RED, selector
    # The phone field (type=tel) is drawn like the other text fields, and is not red: it has no error.
    assert style(page, "#id_phone", "borderTopWidth") == "2px"
    assert style(page, "#id_phone", "borderTopColor") != RED
    page.context.close()


def test_a_long_file_name_wraps_at_320_px(chromium, site, tmp_path):
    # No space or hyphen anywhere: nothing where a line may break.
    program = tmp_path / ("Scan_of_my_membership_card_from_the_Lisbon_meetup_" * 4 + ".exe")
    program.write_bytes(b"MZ" + bytes(64))
    page = new_page(chromium, {"width": 320, "height": 640})
    page.goto(f"{site}/apply/")
    fill_form(page)
    page.set_input_files("#id_evidence_1", str(program))
    expect(page.locator("#id_evidence_1_client_error")).to_contain_text("is not an allowed type")
    page.get_by_role("button", name="Send application").click()
    expect(page.locator("#error-summary")).to_contain_text(program.name)
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    page.context.close()


def test_an_error_summary_link_focuses_the_field_and_shows_its_question(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    page.fill("#id_statement", "")
    page.get_by_role("button", name="Send application").click()
    page.locator("#error-summary").get_by_role("link", name="Tell us why you want to join.").click()
    expect(page.locator("#id_statement")).to_be_focused()
    # The label and the hint above the box are on screen, not scrolled off the top.
    expect(page.locator("label[for=id_statement]")).to_be_in_viewport()
    assert top_on_screen(page, "label[for=id_statement]") >= 0
    page.context.close()


def test_the_script_s_error_summary_marks_the_title_and_its_links_focus_the_file(chromium, site, tmp_path):
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ" + bytes(64))
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    page.set_input_files("#id_evidence_1", str(program))
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(page).to_have_title(re.compile(r"^Error: Apply to join"))
    summary.get_by_role("link").click()
    expect(page.locator("#id_evidence_1")).to_be_focused()
    assert top_on_screen(page, "label[for=id_evidence_1]") >= 0
    # A second summary does not say "Error:" twice.
    page.get_by_role("button", name="Send application").click()
    expect(page).to_have_title(re.compile(r"^Error: Apply to join"))
    page.context.close()
