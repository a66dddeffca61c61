"""Public pages: errors linked to their fields, plain dates, no inline code (strict CSP)."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from evidence.validation import ALLOWED_EXTENSIONS_TEXT
from tests.factories import make_application
from tests.vetting.test_apply import form_data
from vetting import links

pytestmark = pytest.mark.django_db


def test_errors_are_summarised_at_the_top_and_linked_to_their_fields(client):
    page = client.post("/apply/", form_data(full_name="", consent="")).content.decode()
    summary = page.index('id="error-summary"')
    assert summary < page.index("<form")
    assert 'href="#id_full_name"' in page and 'href="#id_consent"' in page
    assert re.search(
        r'<input[^>]*aria-describedby="id_full_name_error"[^>]*id="id_full_name"', page
    ) or re.search(r'<input[^>]*id="id_full_name"[^>]*aria-describedby="id_full_name_error"', page)
    assert 'id="id_full_name_error"' in page
    assert page.count('aria-invalid="true"') >= 2
    assert "<title>Error:" in page


def test_help_text_describes_its_field(client):
    page = client.get("/apply/").content.decode()
    assert 'aria-describedby="id_matrix_username_helptext"' in page


def test_a_field_with_an_error_is_still_described_by_its_hint(client):
    page = client.post("/apply/", form_data(matrix_username="has space")).content.decode()
    tag = _input_tag(page, "id_matrix_username")
    assert 'aria-describedby="id_matrix_username_helptext id_matrix_username_error"' in tag


def test_status_page_shows_dates_as_year_month_day(client):
    application = make_application()
    page = client.get(f"/status/{links.status_token(application)}/").content.decode()
    assert application.created_at.strftime("%Y-%m-%d") in page


@pytest.mark.parametrize("path", ["/apply/", "/privacy/", "/does-not-exist/"])
def test_public_pages_have_no_inline_script_or_style(client, path):
    page = client.get(path).content.decode()
    assert "<style" not in page
    assert " style=" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert re.search(r'<script src="/static/js/public-forms\.js" defer>', page)


def test_upload_limits_given_to_the_script_and_the_hint_are_the_servers(client, settings):
    page = client.get("/apply/").content.decode()
    assert f'data-max-size="{settings.EVIDENCE_MAX_FILE_SIZE}"' in page
    assert 'data-extensions="jpg,jpeg,png,gif,pdf,doc,docx,txt"' in page
    assert f"Allowed: {ALLOWED_EXTENSIONS_TEXT}." in page
    assert f"Up to {settings.EVIDENCE_MAX_FILES} files" in page


def test_server_error_page_renders_without_a_request_context():
    from django.template.loader import render_to_string

    page = render_to_string("500.html")
    assert "Something went wrong on our side" in page
    assert "Nothing you sent was kept half-way" in page


def test_a_server_error_shows_our_page_even_when_its_stylesheet_has_no_collected_name(
    client, settings, tmp_path, monkeypatch, caplog
):
    settings.DEBUG = False
    # Collected files without a manifest: the stylesheet's hashed name cannot be found.
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
    }

    def broken_page(*args, **kwargs):
        raise RuntimeError("a bug in a page")

    monkeypatch.setattr("vetting.views.render", broken_page)
    client.raise_request_exception = False

    response = client.get("/privacy/")

    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong on our side" in page
    assert "stylesheet" not in page
    assert "The 500 page could not be rendered with its stylesheet." in caplog.messages


def test_the_expired_confirmation_page_is_a_public_page_without_inline_code(client):
    application = make_application(status="unconfirmed", email_confirmed_at=None)
    token = links.confirm_token(application)
    application.delete()
    response = client.get(f"/confirm/{token}/")
    assert response.status_code == 410
    page = response.content.decode()
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert "<title>This link has expired" in page
    assert 'href="/apply/"' in page


def _input_tag(page: str, input_id: str) -> str:
    return re.search(rf'<(?:input|textarea)[^>]*\bid="{input_id}"[^>]*>', page).group(0)


def test_every_file_input_is_described_by_the_upload_limits(client):
    page = client.get("/apply/").content.decode()
    assert 'id="evidence-limits"' in page
    for slot in range(1, 6):
        described_by = re.search(r'aria-describedby="([^"]*)"', _input_tag(page, f"id_evidence_{slot}"))
        assert described_by and "evidence-limits" in described_by.group(1).split()


def test_a_file_input_with_an_error_is_described_by_the_limits_and_its_error(client):
    data = form_data(evidence_1=SimpleUploadedFile("notes.exe", b"MZ" + bytes(64)))
    page = client.post("/apply/", data).content.decode()
    tag = _input_tag(page, "id_evidence_1")
    assert 'aria-describedby="evidence-limits id_evidence_1_error"' in tag
    assert 'aria-invalid="true"' in tag


@pytest.mark.parametrize(("field", "limit"), [("referral", "2,000"), ("statement", "5,000")])
def test_long_answers_state_their_limit_under_the_field(client, field, limit):
    page = client.get("/apply/").content.decode()
    assert f'<p class="hint" id="id_{field}_helptext">At most {limit} characters.</p>' in page
    tag = _input_tag(page, f"id_{field}")
    assert f'aria-describedby="id_{field}_helptext"' in tag
    assert f'maxlength="{limit.replace(",", "")}"' in tag


def test_the_form_says_what_evidence_is_for_and_what_a_note_is(client):
    page = client.get("/apply/").content.decode()
    assert "Files help staff check who you are and that someone in the community knows you" in page
    assert '<p class="hint" id="id_note_1_helptext">What this file shows' in page
    assert 'aria-describedby="id_note_1_helptext"' in _input_tag(page, "id_note_1")


def test_the_phone_field_brings_up_a_phone_keypad(client):
    page = client.get("/apply/").content.decode()
    assert 'type="tel"' in _input_tag(page, "id_phone")


def test_the_done_page_says_what_to_do_about_a_mistyped_address(client, monkeypatch):
    import datetime

    monkeypatch.setattr(links, "UNCONFIRMED_LIFETIME", datetime.timedelta(days=3))
    page = client.get("/apply/done/").content.decode()
    assert "If you mistyped your address" in page
    assert 'href="/apply/">apply again</a> with the right one' in page
    assert "An application that is not confirmed is deleted after 3 days." in page
    assert "Open it within 3 days" in page


def test_a_refused_application_form_post_says_to_send_it_again_and_links_to_the_form():
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/apply/", form_data())
    assert response.status_code == 403
    page = response.content.decode()
    assert "Go back, reload the page and send it again." in page
    assert 'href="/apply/"' in page


@pytest.mark.parametrize("suffix", ["", "withdraw/", "erase/"])
def test_a_refused_status_page_post_does_not_offer_a_new_application(suffix):
    from django.test import Client

    application = make_application()
    response = Client(enforce_csrf_checks=True).post(f"/status/{links.status_token(application)}/{suffix}")
    assert response.status_code == 403
    page = response.content.decode()
    assert "Go back, reload the page and send it again." in page
    assert 'href="/apply/"' not in page
    assert "application form" not in page


def test_the_database_outage_page_has_the_structure_of_the_other_error_pages(client, monkeypatch):
    from django.db import OperationalError

    def database_down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("vetting.workflow.submit_application", database_down)
    response = client.post("/apply/", form_data())
    assert response.status_code == 503
    page = response.content.decode()
    # The upload script reads the heading and first paragraph of #main (public-forms.js).
    assert re.search(r'<main id="main"[^>]*>\s*<h1>Back in a moment</h1>\s*<p>', page)
    assert "<style" not in page and " style=" not in page and "<script" not in page
