"""/.well-known/security.txt (RFC 9116)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine


def fields(response) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in response.content.decode().splitlines())


def test_names_the_security_contact_and_expires_a_year_from_the_request(client, settings):
    with time_machine.travel(datetime(2027, 5, 4, 12, 30, 15, tzinfo=UTC), tick=False):
        response = client.get("/.well-known/security.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    found = fields(response)
    assert found["Contact"] == "mailto:support@rvi.iam-alliance.com"
    assert found["Expires"] == "2028-05-03T12:30:15Z"
    # RFC 9116: the full URI the file is served at.
    assert found["Canonical"] == f"{settings.SITE_URL}/.well-known/security.txt"


@pytest.mark.parametrize(
    "configured, shown",
    [
        ("security@example.org", "mailto:security@example.org"),
        ("https://example.org/report", "https://example.org/report"),
        ("mailto:security@example.org", "mailto:security@example.org"),
        # Settings accept a telephone number, as RFC 9116 does.
        ("tel:+49-30-1234567", "tel:+49-30-1234567"),
    ],
)
def test_contact_comes_from_the_setting(client, settings, configured, shown):
    settings.SECURITY_CONTACT = configured
    assert fields(client.get("/.well-known/security.txt"))["Contact"] == shown


def test_only_get(client):
    assert client.post("/.well-known/security.txt").status_code == 405
