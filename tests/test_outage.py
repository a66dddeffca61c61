from __future__ import annotations

from unittest import mock

import pytest
from django.db import OperationalError

from tests.vetting.test_apply import form_data

pytestmark = pytest.mark.django_db


def test_a_lost_database_connection_answers_503_with_retry_after(client):
    with mock.patch("vetting.workflow.submit_application", side_effect=OperationalError("server closed")):
        response = client.post("/apply/", form_data())
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "Nothing you sent was kept half-way" in response.content.decode()
    assert "server closed" not in response.content.decode()


def test_other_errors_are_not_disguised_as_outages(client):
    client.raise_request_exception = False
    with mock.patch("vetting.workflow.submit_application", side_effect=ValueError("bug")):
        assert client.post("/apply/", form_data()).status_code == 500
