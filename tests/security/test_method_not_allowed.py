"""A request with a method the page does not take: the site's error page with its Allow header, never a bare 405."""

from __future__ import annotations

import pytest

from tests.factories import make_application
from vetting import links
from vetting.models import AuditEvent

pytestmark = pytest.mark.django_db

ERROR_PAGE = "This page does not accept that kind of request"


def assert_error_page(response, allowed: set[str]) -> None:
    assert response.status_code == 405
    assert {method.strip() for method in response["Allow"].split(",")} == allowed
    assert response["Content-Type"] == "text/html; charset=utf-8"
    page = response.content.decode()
    # What the server sends is cut to this length.
    assert response["Content-Length"] == str(len(response.content))
    assert ERROR_PAGE in page
    assert "Please go back, reload the page and try again." in page


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_a_wrong_method_on_the_application_form_gets_the_error_page_and_no_session(client, method):
    response = getattr(client, method)("/apply/")
    assert_error_page(response, {"GET", "HEAD", "POST"})
    assert "sessionid" not in response.cookies
    assert "Cookie" not in response.get("Vary", "")


def test_a_post_to_the_health_check_gets_the_error_page(client):
    response = client.post("/healthz")
    assert_error_page(response, {"GET", "HEAD"})
    assert not response.cookies


def test_a_get_to_the_csp_report_endpoint_gets_the_error_page(client):
    assert_error_page(client.get("/csp-report/"), {"POST"})


def test_a_post_to_the_data_download_gets_the_error_page_and_exports_nothing(client):
    application = make_application()
    response = client.post(f"/status/{links.status_token(application)}/my-data/")
    assert_error_page(response, {"GET"})
    assert not AuditEvent.objects.filter(action="application.data_exported").exists()


def test_staff_opening_a_post_only_admin_address_get_the_error_page(client, agent):
    application = make_application()
    client.force_login(agent)
    assert_error_page(client.get("/admin/logout/"), {"POST", "OPTIONS"})
    assert_error_page(client.get(f"/admin/vetting/application/{application.pk}/note/"), {"POST"})
    assert_error_page(client.get(f"/admin/vetting/application/{application.pk}/action/claim/"), {"POST"})


def test_a_post_only_admin_address_still_asks_strangers_to_sign_in_first(client):
    application = make_application()
    response = client.get(f"/admin/vetting/application/{application.pk}/note/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
