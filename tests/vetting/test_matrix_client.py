"""The homeserver client's failure handling, against local HTTP servers on 127.0.0.1 that the test controls.

The servers answer with Synapse's error shapes (errcode/error) or simply
misbehave: a 500, a 401, a request that is never answered, a port where
nothing listens.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from tests.synapse.server import free_port
from tests.vetting.homeservers import HANG, FakeMas, LocalServer
from vetting import matrix

ADMIN_TOKEN = "syt_admin_secret_value_123"
REGISTRATION_TOKEN = "Reg-Token_Secret9"


@pytest.fixture
def scripted(fast_retries):
    """A server answering from a list of (status, body), the last repeated."""
    answers: list = []

    def handler(request):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    server = LocalServer(handler)
    server.answers = answers
    yield server
    server.close()


def client_for(url: str) -> matrix.SynapseClient:
    return matrix.SynapseClient(url, ADMIN_TOKEN, "localhost")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert ADMIN_TOKEN not in text
        assert REGISTRATION_TOKEN not in text


def test_a_500_is_retried_three_times_then_reported_unavailable(scripted, caplog):
    scripted.answers.append((500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(matrix.Unavailable) as raised:
        client_for(scripted.url).get_token(REGISTRATION_TOKEN)
    assert len(scripted.requests) == 4
    assert str(raised.value) == "The homeserver did not answer reading a registration token (HTTP 500)."
    assert "try again in a few minutes" in raised.value.advice
    assert_no_secret(str(raised.value), caplog.text)


def test_a_passing_500_is_absorbed_by_a_retry(scripted):
    scripted.answers.extend(
        [(502, {}), (200, {"token": REGISTRATION_TOKEN, "uses_allowed": 1, "pending": 0, "completed": 0})]
    )
    token = client_for(scripted.url).get_token(REGISTRATION_TOKEN)
    assert token.token == REGISTRATION_TOKEN
    assert len(scripted.requests) == 2


@pytest.mark.parametrize(
    ("status", "errcode"),
    [(401, "M_UNKNOWN_TOKEN"), (401, "M_MISSING_TOKEN"), (403, "M_FORBIDDEN")],
)
def test_a_refused_admin_token_is_a_configuration_error_and_never_retried(scripted, caplog, status, errcode):
    scripted.answers.append((status, {"errcode": errcode, "error": "You are not a server admin"}))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(matrix.Unauthorised) as raised:
        list(client_for(scripted.url).list_tokens())
    assert len(scripted.requests) == 1
    assert f"HTTP {status} {errcode}" in str(raised.value)
    assert raised.value.advice == (
        "The homeserver rejected our admin token: ask an operator to run “manage.py matrix_check”."
    )
    assert_no_secret(str(raised.value), caplog.text)
    # The token went where it belongs, and only there.
    assert scripted.requests[0].headers["authorization"] == f"Bearer {ADMIN_TOKEN}"


def test_an_unanswered_request_times_out_without_a_retry(scripted, short_read_timeout):
    scripted.answers.append(HANG)
    scripted.hang_seconds = 2.0
    with pytest.raises(matrix.Unavailable, match="did not answer in time"):
        client_for(scripted.url).create_token(REGISTRATION_TOKEN, datetime.now(UTC) + timedelta(days=30))
    # A create that may have reached the server is not sent twice.
    assert len(scripted.requests) == 1


def test_a_refused_connection_is_retried_then_reported(fast_retries, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(matrix.Unavailable) as raised:
        client_for(url).revoke_token(REGISTRATION_TOKEN)
    assert (
        str(raised.value)
        == "The homeserver did not answer revoking a registration token (connection refused)."
    )
    assert caplog.text.count("retry") == 3
    assert_no_secret(str(raised.value), caplog.text)


def test_retries_stop_at_the_time_budget(scripted, monkeypatch):
    monkeypatch.setattr(matrix, "RETRY_DELAYS", (0.2, 0.2, 0.2))
    monkeypatch.setattr(matrix, "RETRY_BUDGET", 0.3)
    scripted.answers.append((503, {}))
    with pytest.raises(matrix.Unavailable):
        client_for(scripted.url).get_token(REGISTRATION_TOKEN)
    assert len(scripted.requests) == 2


def test_a_missing_token_is_not_found_and_its_name_stays_out_of_the_message(scripted):
    scripted.answers.append(
        (404, {"errcode": "M_NOT_FOUND", "error": f"No such token: {REGISTRATION_TOKEN}"})
    )
    with pytest.raises(matrix.NotFound) as raised:
        client_for(scripted.url).get_token(REGISTRATION_TOKEN)
    assert_no_secret(str(raised.value))
    # URL-encoded in the path: a token with reserved characters cannot change the request.
    assert scripted.requests[0].path == f"/_synapse/admin/v1/registration_tokens/{REGISTRATION_TOKEN}"


def test_settings_without_url_or_token_are_not_configured(settings):
    settings.MATRIX_HOMESERVER_URL = ""
    with pytest.raises(matrix.NotConfigured, match="MATRIX_HOMESERVER_URL is not set"):
        matrix.get_client()
    settings.MATRIX_HOMESERVER_URL = "https://matrix.example.org"
    settings.MATRIX_ADMIN_TOKEN = ""
    with pytest.raises(matrix.NotConfigured, match="MATRIX_ADMIN_TOKEN is not set"):
        matrix.get_client()
    settings.MATRIX_ADMIN_TOKEN = ADMIN_TOKEN
    settings.MATRIX_HOMESERVER_URL = "matrix.example.org"
    with pytest.raises(matrix.NotConfigured, match="must start with https://"):
        matrix.get_client()


@pytest.mark.parametrize(
    "url",
    ["http://rvi:S3CRETPW@127.0.0.1:99999", "http://rvi:S3CRETPW@127.0.0.1:abc", "http://rvi:S3CRETPW@[::1"],
)
def test_an_unreadable_url_is_not_configured_and_not_repeated(url):
    with pytest.raises(matrix.NotConfigured) as raised:
        client_for(url)
    assert str(raised.value) == (
        "The homeserver URL cannot be read: check its host, and that its port is a number from 1 to 65535."
    )
    assert "S3CRETPW" not in str(raised.value)


def test_the_client_repr_never_shows_the_admin_token():
    client = client_for("https://matrix.example.org")
    assert ADMIN_TOKEN not in repr(client)
    assert ADMIN_TOKEN not in repr(client.__dict__.get("http"))


# MAS ---------------------------------------------------------------------


@pytest.fixture
def mas(fast_retries):
    """A local server following MAS's admin API (MAS cannot be installed here)."""
    service = FakeMas()
    yield service
    service.close()


def mas_client(service: FakeMas, secret: str | None = None) -> matrix.MasClient:
    return matrix.MasClient(service.url, service.client_id, secret or service.client_secret, "localhost")


def test_mas_backend_creates_reads_lists_and_revokes_tokens(mas):
    client = mas_client(mas)
    expires = datetime(2027, 1, 1, tzinfo=UTC)
    created = client.create_token(REGISTRATION_TOKEN, expires)
    assert (created.token, created.uses_allowed, created.expires_at) == (REGISTRATION_TOKEN, 1, expires)
    assert created.server_id.startswith("01J")
    assert client.get_token(created.server_id).completed == 0

    mas.register(REGISTRATION_TOKEN, "alex")
    assert client.get_token(created.server_id).used_up
    assert [t.server_id for t in client.list_tokens()] == [created.server_id]
    account = client.get_account("alex")
    assert account.user_id == "@alex:localhost"
    assert client.get_account("nobody") is None

    client.revoke_token(created.server_id)
    assert client.get_token(created.server_id).revoked
    # Revoking twice: MAS answers 400, which is what we wanted anyway.
    client.revoke_token(created.server_id)
    with pytest.raises(matrix.NotFound):
        client.revoke_token("01J00000000000000000009999")


def test_mas_backend_asks_for_one_client_credentials_token_and_reuses_it(mas):
    client = mas_client(mas)
    client.server_version()
    list(client.list_tokens())
    assert mas.server.calls("POST", "/oauth2/token") == 1
    token_request = mas.server.requests[0]
    assert "scope=urn%3Amas%3Aadmin" in token_request.body.decode()
    assert "grant_type=client_credentials" in token_request.body.decode()


def test_mas_lists_page_by_page_following_the_cursor(mas, monkeypatch):
    monkeypatch.setattr(matrix, "MAS_PAGE_SIZE", 10)
    client = mas_client(mas)
    for number in range(25):
        client.create_token(f"token{number:02d}", datetime(2027, 1, 1, tzinfo=UTC))
    tokens = list(client.list_tokens())
    assert [t.token for t in tokens] == [f"token{number:02d}" for number in range(25)]
    assert mas.server.calls("GET", "/api/admin/v1/user-registration-tokens") == 3


def test_mas_refusing_our_client_credentials_is_a_configuration_error(mas, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(matrix.Unauthorised) as raised:
        mas_client(mas, secret="wrong-secret-value").server_version()
    assert "HTTP 401 invalid_client" in str(raised.value)
    assert "wrong-secret-value" not in str(raised.value) + caplog.text
