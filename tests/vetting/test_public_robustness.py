"""Public pages in odd states and with odd requests: no 500s, no bare errors, nothing misleading."""

from __future__ import annotations

import datetime

import pytest
import time_machine
from django.utils import timezone

from tests.factories import make_application
from tests.vetting.test_status_page import status_path
from vetting import links
from vetting.models import Application

pytestmark = pytest.mark.django_db
Status = Application.Status


@pytest.mark.parametrize(
    ("status", "erased"),
    [
        (Status.REJECTED, False),
        (Status.JOINED, False),
        (Status.WITHDRAWN, False),
        (Status.WITHDRAWN, True),
    ],
)
def test_the_withdraw_page_of_a_closed_application_explains_instead_of_offering_the_button(
    client, status, erased
):
    application = make_application(status=status, erased_at=timezone.now() if erased else None)
    response = client.get(f"{status_path(application)}withdraw/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "can no longer be withdrawn" in page
    assert "Yes, withdraw my application" not in page
    assert "will be closed and staff will stop working on it" not in page
    # The reason takes focus and the way back is there.
    assert 'class="error-summary" role="alert" tabindex="-1" autofocus' in page
    assert "Back to your application" in page


def test_a_stale_withdraw_page_posted_after_the_decision_explains_without_the_button(client):
    application = make_application(status=Status.REJECTED)
    response = client.post(f"{status_path(application)}withdraw/")
    assert response.status_code == 409
    page = response.content.decode()
    assert "can no longer be withdrawn" in page
    assert "Yes, withdraw my application" not in page


def test_an_open_application_still_offers_the_withdraw_button(client):
    application = make_application(status=Status.APPROVED)
    page = client.get(f"{status_path(application)}withdraw/").content.decode()
    assert "Yes, withdraw my application" in page
    assert "error-summary" not in page


@pytest.mark.parametrize("suffix", ["", "withdraw/", "erase/"])
@pytest.mark.parametrize("status", [Status.SUBMITTED, Status.INFO_REQUESTED, Status.INVITED])
def test_head_on_a_status_link_answers_like_get_and_changes_nothing(client, status, suffix):
    application = make_application(status=status, information_request="Send your ID.")
    response = client.head(f"{status_path(application)}{suffix}")
    assert response.status_code == 200
    application.refresh_from_db()
    assert application.status == status
    assert application.erased_at is None


@pytest.mark.parametrize("path", ["/", "/apply/", "/apply/done/", "/privacy/"])
def test_head_on_the_public_pages_answers_like_get(client, path):
    assert client.head(path).status_code == 200
    assert not Application.objects.exists()


def test_an_expired_confirm_link_clicked_again_after_confirming_leads_to_the_status_page(client):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        token = links.confirm_token(application)
        assert client.get(f"/confirm/{token}/").status_code == 302
    with time_machine.travel(datetime.datetime(2026, 11, 20, tzinfo=datetime.UTC)):
        response = client.get(f"/confirm/{token}/")
    assert response.status_code == 302
    status_token = response["Location"].removeprefix("/status/").removesuffix("/")
    assert links.application_for_status_token(status_token) == application
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED


def test_an_expired_confirm_link_of_an_unconfirmed_application_is_gone_and_confirms_nothing(client):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        token = links.confirm_token(application)
    with time_machine.travel(datetime.datetime(2026, 11, 20, tzinfo=datetime.UTC)):
        assert client.get(f"/confirm/{token}/").status_code == 410
        assert client.get(f"/confirm/{token}x/").status_code == 404
    application.refresh_from_db()
    assert application.status == Status.UNCONFIRMED
