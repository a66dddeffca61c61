"""Public pages: errors linked to their fields, plain dates, no inline code (strict CSP)."""

from __future__ import annotations

import re

import pytest

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


def test_upload_limits_given_to_the_script_are_the_servers(client, settings):
    page = client.get("/apply/").content.decode()
    assert f'data-max-size="{settings.EVIDENCE_MAX_FILE_SIZE}"' in page
    assert 'data-extensions="jpg,jpeg,png,gif,pdf,doc,docx,txt"' in page


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
