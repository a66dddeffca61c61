"""Signed links whose signature is right but whose payload we never sign.

Only a holder of SECRET_KEY or of a retired key in SECRET_KEY_FALLBACKS can
make one, so the risk is small; the page must still answer like for a tampered
link (404), never 500. Our own payload is an application's public_id as a string.
"""

from __future__ import annotations

import uuid
import zlib

import pytest
from django.core import signing

from tests.factories import make_application
from vetting import links
from vetting.views import DONE_SALT

pytestmark = pytest.mark.django_db

NOT_AN_APPLICATION_ID = ["zz", "", ["x"], 5, {"a": 1}, None, True, 1.5, [], "x" * 32]
# Signed bytes that signing.loads cannot even turn into a value.
NOT_A_SIGNED_VALUE = [
    "",
    "!!!",
    signing.b64_encode(b'{"a').decode(),  # not JSON
    "." + signing.b64_encode(b"not compressed").decode(),
    "." + signing.b64_encode(zlib.compress(b"[" * 200_000)).decode(),  # nested deeper than the parser goes
]
# Every route that takes a status token, and the methods it answers.
STATUS_ROUTES = [
    ("get", "/status/{}/"),
    ("post", "/status/{}/"),
    ("get", "/status/{}/withdraw/"),
    ("post", "/status/{}/withdraw/"),
    ("get", "/status/{}/my-data/"),
    ("get", "/status/{}/erase/"),
    ("post", "/status/{}/erase/"),
]


@pytest.fixture(autouse=True)
def no_rate_limits(settings):
    settings.RATELIMIT_ENABLE = False


def request(client, method: str, route: str, token: str):
    return getattr(client, method)(route.format(token))


@pytest.mark.parametrize("payload", NOT_AN_APPLICATION_ID, ids=repr)
@pytest.mark.parametrize(("method", "route"), STATUS_ROUTES)
def test_a_status_link_signed_over_something_other_than_an_application_id_is_404(
    client, method, route, payload
):
    make_application()
    token = signing.dumps(payload, salt=links.STATUS_SALT)
    assert request(client, method, route, token).status_code == 404


@pytest.mark.parametrize("payload", NOT_AN_APPLICATION_ID, ids=repr)
def test_a_confirm_link_signed_over_something_other_than_an_application_id_is_404(client, payload):
    make_application(status="unconfirmed", email_confirmed_at=None)
    token = signing.dumps(payload, salt=links.CONFIRM_SALT)
    assert client.get(f"/confirm/{token}/").status_code == 404


@pytest.mark.parametrize("raw", NOT_A_SIGNED_VALUE, ids=range(len(NOT_A_SIGNED_VALUE)))
@pytest.mark.parametrize(
    ("salt", "method", "route"),
    [(links.STATUS_SALT, method, route) for method, route in STATUS_ROUTES]
    + [(links.CONFIRM_SALT, "get", "/confirm/{}/")],
)
def test_a_link_signing_bytes_that_are_no_value_at_all_is_404(client, salt, method, route, raw):
    token = signing.TimestampSigner(salt=salt).sign(raw)
    assert request(client, method, route, token).status_code == 404


def test_a_retired_key_signing_something_other_than_an_application_id_is_404(client, settings):
    application = make_application()
    retired = "a retired secret key, still in SECRET_KEY_FALLBACKS"
    settings.SECRET_KEY_FALLBACKS = [retired]
    genuine = signing.dumps(application.public_id.hex, key=retired, salt=links.STATUS_SALT)
    assert client.get(f"/status/{genuine}/").status_code == 200
    for payload in NOT_AN_APPLICATION_ID:
        for salt, route in [(links.STATUS_SALT, "/status/{}/"), (links.CONFIRM_SALT, "/confirm/{}/")]:
            token = signing.dumps(payload, key=retired, salt=salt)
            assert client.get(route.format(token)).status_code == 404, (payload, route)


@pytest.mark.parametrize("payload", NOT_AN_APPLICATION_ID, ids=repr)
def test_links_signed_over_something_other_than_an_application_id_are_not_genuine(payload):
    make_application()
    status = signing.dumps(payload, salt=links.STATUS_SALT)
    confirm = signing.dumps(payload, salt=links.CONFIRM_SALT)
    assert links.application_for_status_token(status) is None
    assert not links.is_genuine_status_token(status)
    assert links.application_for_confirm_token(confirm) is None
    assert not links.is_genuine_confirm_token(confirm)


@pytest.mark.parametrize("form", [str, lambda public_id: public_id.hex], ids=["dashed", "hex"])
def test_a_link_of_ours_to_no_application_still_says_it_expired(client, form):
    # What purge_unconfirmed leaves behind: a genuine id whose application is gone (410).
    gone = form(uuid.uuid4())
    status = signing.dumps(gone, salt=links.STATUS_SALT)
    confirm = signing.dumps(gone, salt=links.CONFIRM_SALT)
    for method, route in STATUS_ROUTES:
        assert request(client, method, route, status).status_code == 410, (method, route)
    assert client.get(f"/confirm/{confirm}/").status_code == 410


@pytest.mark.parametrize(
    "payload", [5, None, True, "AB", ["ABCDEFGH"], [1, 2], ["ABCDEFGH", 2], {"a": 1}], ids=repr
)
def test_the_done_page_signed_over_anything_but_a_reference_and_address_shows_neither(client, payload):
    response = client.get(f"/apply/done/?r={signing.dumps(payload, salt=DONE_SALT)}")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Your reference" not in page
    assert "We sent it to" not in page


@pytest.mark.parametrize("raw", NOT_A_SIGNED_VALUE, ids=range(len(NOT_A_SIGNED_VALUE)))
def test_the_done_page_signing_bytes_that_are_no_value_at_all_shows_no_reference(client, raw):
    response = client.get(f"/apply/done/?r={signing.TimestampSigner(salt=DONE_SALT).sign(raw)}")
    assert response.status_code == 200
    assert "Your reference" not in response.content.decode()
