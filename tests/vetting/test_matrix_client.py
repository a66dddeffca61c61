"""The homeserver client's failure handling, against local HTTP servers on 127.0.0.1 that the test controls.

The servers answer with Synapse's error shapes (errcode/error) or simply
misbehave: a 500, a 401, a request that is never answered, a port where
nothing listens.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

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


@pytest.mark.parametrize(
    "answer", [{}, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}], ids=["proxy", "synapse"]
)
def test_a_404_that_is_not_synapses_not_found_says_nothing_of_the_token_or_account(scripted, answer):
    # A proxy without the admin API, or an endpoint this Synapse lacks: read as "not found",
    # a revoke would be recorded while the token still works, and an account would look missing.
    scripted.answers.extend([(404, answer)] * 3)
    client = client_for(scripted.url)
    for call in (
        lambda: client.revoke_token(REGISTRATION_TOKEN),
        lambda: client.get_token(REGISTRATION_TOKEN),
        lambda: client.get_account("alex"),
    ):
        with pytest.raises(matrix.UnexpectedResponse, match=r"HTTP 404"):
            call()


def test_a_username_or_token_with_a_slash_stays_one_path_segment(scripted):
    # Usernames may hold "/": unencoded, Synapse would route it elsewhere and a taken name look free.
    scripted.answers.append((404, {"errcode": "M_NOT_FOUND", "error": "Not found"}))
    client = client_for(scripted.url)
    assert client.get_account("a/b") is None
    with pytest.raises(matrix.NotFound):
        client.revoke_token("to/ken")
    assert [request.raw_path for request in scripted.requests] == [
        "/_synapse/admin/v2/users/%40a%2Fb%3Alocalhost",
        "/_synapse/admin/v1/registration_tokens/to%2Fken",
    ]


def test_a_token_with_a_field_we_cannot_read_is_reported_not_a_crash(scripted):
    scripted.answers.append(
        (200, {"token": REGISTRATION_TOKEN, "uses_allowed": 1, "pending": 0, "expiry_time": "next week"})
    )
    with pytest.raises(matrix.UnexpectedResponse, match="sent a registration token we cannot read"):
        client_for(scripted.url).get_token(REGISTRATION_TOKEN)


def test_a_connection_not_made_in_time_is_retried_then_reported(fast_retries, monkeypatch, caplog):
    monkeypatch.setattr(matrix, "CONNECT_TIMEOUT", 0.2)
    caplog.set_level(logging.DEBUG)
    # A listener that never accepts, its queue (one connection) already full: new connections get no answer.
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    host, port = listener.getsockname()
    with (
        listener,
        socket.create_connection((host, port)),
        pytest.raises(matrix.Unavailable) as raised,
    ):
        list(client_for(f"http://{host}:{port}").list_tokens())
    # Nothing was sent, so trying again cannot apply anything twice.
    assert str(raised.value) == (
        "The homeserver did not answer listing registration tokens (connection timed out)."
    )
    assert caplog.text.count("retry") == 3


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


def test_a_url_without_a_host_is_not_configured():
    # Else every later call would crash inside http.client instead of saying what to fix.
    for url in ("https://", "https:///_matrix"):
        with pytest.raises(matrix.NotConfigured, match="must start with https://"):
            client_for(url)


def test_a_homeserver_behind_a_path_prefix_is_called_under_that_prefix(scripted):
    scripted.answers.append((200, {"token": REGISTRATION_TOKEN, "uses_allowed": 1}))
    client_for(f"{scripted.url}/matrix/").get_token(REGISTRATION_TOKEN)
    assert scripted.requests[0].path == f"/matrix/_synapse/admin/v1/registration_tokens/{REGISTRATION_TOKEN}"


@pytest.fixture
def raw_server(fast_retries):
    """A server that answers every connection with the same bytes, whatever was asked; counts connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = SimpleNamespace(answer=b"", connections=0, url=f"http://127.0.0.1:{listener.getsockname()[1]}")

    def serve():
        while True:
            try:
                connection, _address = listener.accept()
            except OSError:
                return
            with connection:
                server.connections += 1
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                connection.sendall(server.answer)

    threading.Thread(target=serve, daemon=True).start()
    yield server
    listener.close()


def test_an_answer_that_is_not_http_is_retried_then_reported_unavailable(raw_server):
    raw_server.answer = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
    with pytest.raises(matrix.Unavailable) as raised:
        list(client_for(raw_server.url).list_tokens())
    assert raw_server.connections == 4
    assert str(raised.value).startswith("The homeserver did not answer listing registration tokens (")


def test_a_proxy_error_page_instead_of_json_is_retried_then_reported_unavailable(raw_server):
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    raw_server.answer = (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
        b"Content-Length: " + str(len(page)).encode() + b"\r\n\r\n" + page
    )
    with pytest.raises(matrix.Unavailable) as raised:
        list(client_for(raw_server.url).list_tokens())
    assert raw_server.connections == 4
    assert str(raised.value) == "The homeserver did not answer listing registration tokens (HTTP 502)."


def test_a_json_answer_that_is_not_an_object_is_unreadable_not_a_crash(scripted):
    scripted.answers.append((200, ["not", "a", "token", "list"]))
    with pytest.raises(matrix.UnexpectedResponse, match="token list we cannot read"):
        list(client_for(scripted.url).list_tokens())


def test_a_403_without_synapses_forbidden_code_is_not_blamed_on_the_admin_token(scripted):
    # A reverse proxy keeping /_synapse/admin from the outside answers so: the token was never seen.
    scripted.answers.append((403, {}))
    with pytest.raises(matrix.UnexpectedResponse) as raised:
        list(client_for(scripted.url).list_tokens())
    assert str(raised.value) == "The homeserver refused listing registration tokens (HTTP 403)."


def test_a_token_the_homeserver_already_has_is_refused_without_naming_it(fake_synapse):
    client = matrix.get_client()
    expires = datetime.now(UTC) + timedelta(days=30)
    client.create_token(REGISTRATION_TOKEN, expires)
    # Synapse's own message repeats the token ("Token already in use: ...").
    with pytest.raises(matrix.UnexpectedResponse) as raised:
        client.create_token(REGISTRATION_TOKEN, expires)
    assert str(raised.value) == (
        "The homeserver refused creating a registration token (HTTP 400 M_INVALID_PARAM)."
    )


def test_synapse_token_counts_and_limit_are_read_as_reported(scripted):
    # A registration in progress is pending; a token changed on the server may allow any number of uses.
    scripted.answers.append(
        (200, {"token": REGISTRATION_TOKEN, "uses_allowed": None, "pending": 1, "completed": 2})
    )
    token = client_for(scripted.url).get_token(REGISTRATION_TOKEN)
    assert (token.uses_allowed, token.pending, token.completed, token.expires_at) == (None, 1, 2, None)
    assert not token.used_up


def test_a_new_token_is_16_unguessable_url_safe_characters():
    tokens = {matrix.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", token) for token in tokens)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("MATRIX_MAS_URL", "MATRIX_MAS_URL is not set."),
        ("MATRIX_MAS_CLIENT_ID", "MATRIX_MAS_CLIENT_ID and MATRIX_MAS_CLIENT_SECRET must be set."),
        ("MATRIX_MAS_CLIENT_SECRET", "MATRIX_MAS_CLIENT_ID and MATRIX_MAS_CLIENT_SECRET must be set."),
    ],
)
def test_a_missing_mas_setting_is_named_before_anything_is_asked(fake_mas, settings, setting, message):
    setattr(settings, setting, "")
    assert matrix.configuration_problem() == f"{message} {matrix.NotConfigured.advice}"
    assert fake_mas.server.requests == []


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


def test_mas_refusing_the_admin_scope_is_a_configuration_error(mas):
    # OAuth2 answers 400 invalid_scope to a client that may not have urn:mas:admin.
    answer = mas.server.handler
    mas.server.handler = lambda request: (
        (400, {"error": "invalid_scope"}) if request.path == "/oauth2/token" else answer(request)
    )
    with pytest.raises(
        matrix.Unauthorised, match="refused our client credentials \\(HTTP 400 invalid_scope\\)"
    ):
        mas_client(mas).server_version()


def test_a_mas_access_token_refused_later_is_forgotten_and_a_new_one_asked_for(mas):
    client = mas_client(mas)
    client.server_version()
    mas.access_tokens.clear()  # MAS restarted, or an operator revoked our session
    with pytest.raises(matrix.Unauthorised):
        client.server_version()
    # The next call does not keep sending the dead token until it would have expired.
    assert client.server_version() == "Matrix Authentication Service for localhost"
    assert mas.server.calls("POST", "/oauth2/token") == 2


def test_a_mas_access_token_is_renewed_shortly_before_it_expires(mas, monkeypatch):
    clock = SimpleNamespace(now=1000.0, sleep=lambda seconds: None)
    clock.monotonic = lambda: clock.now
    monkeypatch.setattr(matrix, "time", clock)
    client = mas_client(mas)
    client.server_version()  # FakeMas grants 300 seconds
    clock.now += 260
    client.server_version()
    assert mas.server.calls("POST", "/oauth2/token") == 1
    # Not used in its last 30 seconds: it could expire on its way.
    clock.now += 15
    client.server_version()
    assert mas.server.calls("POST", "/oauth2/token") == 2


def test_a_mas_refusal_to_revoke_a_live_token_is_not_taken_for_success(mas):
    client = mas_client(mas)
    created = client.create_token(REGISTRATION_TOKEN, datetime(2027, 1, 1, tzinfo=UTC))
    answer = mas.server.handler
    mas.server.handler = lambda request: (
        (400, {"errors": [{"title": "Cannot revoke"}]})
        if request.path.endswith("/revoke")
        else answer(request)
    )
    with pytest.raises(matrix.UnexpectedResponse, match="refused revoking a registration token"):
        client.revoke_token(created.server_id)
    assert not client.get_token(created.server_id).revoked


def test_a_mas_refusal_names_the_operation_and_status_only(mas):
    client = mas_client(mas)
    expires = datetime(2027, 1, 1, tzinfo=UTC)
    client.create_token(REGISTRATION_TOKEN, expires)
    with pytest.raises(matrix.UnexpectedResponse) as raised:
        client.create_token(REGISTRATION_TOKEN, expires)
    assert str(raised.value) == "The authentication service refused creating a registration token (HTTP 409)."


@pytest.mark.parametrize("status", [401, 403])
def test_mas_refusing_our_access_token_is_a_configuration_error(mas, status):
    # 403: the token lacks the admin scope, as for a client MAS does not list as an admin.
    answer = mas.server.handler
    mas.server.handler = lambda request: (
        (status, {"errors": [{"title": "Forbidden"}]})
        if request.path.startswith(mas.API)
        else answer(request)
    )
    with pytest.raises(matrix.Unauthorised) as raised:
        list(mas_client(mas).list_tokens())
    assert str(raised.value) == (
        f"The authentication service refused our admin token while listing registration tokens (HTTP {status})."
    )
    assert mas.server.calls("GET", "/api/admin/v1/user-registration-tokens") == 1


def test_a_mas_404_without_its_error_body_says_nothing_of_the_token_or_account(mas):
    # A route MAS does not have (an older version, a proxy) answers 404 with no JSON:API error.
    client = mas_client(mas)
    created = client.create_token(REGISTRATION_TOKEN, datetime(2027, 1, 1, tzinfo=UTC))
    answer = mas.server.handler
    mas.server.handler = lambda request: (404, {}) if request.path.startswith(mas.API) else answer(request)
    for call in (
        lambda: client.revoke_token(created.server_id),
        lambda: client.get_token(created.server_id),
        lambda: client.get_account("alex"),
    ):
        with pytest.raises(matrix.UnexpectedResponse, match=r"HTTP 404"):
            call()


def test_mas_looks_up_a_username_with_a_slash_as_one_path_segment(mas):
    mas.users["a/b"] = "2026-01-01T00:00:00Z"
    assert mas_client(mas).get_account("a/b").user_id == "@a/b:localhost"
    assert mas.server.requests[-1].raw_path == "/api/admin/v1/users/by-username/a%2Fb"


def test_mas_answers_we_cannot_read_are_reported_not_a_crash(mas):
    unreadable = {
        "/api/admin/v1/user-registration-tokens/01JUNREADABLE": {
            "data": {
                "id": "01JUNREADABLE",
                "attributes": {"token": REGISTRATION_TOKEN, "expires_at": "next week"},
            }
        },
        "/api/admin/v1/user-registration-tokens": {"data": None},
    }
    answer = mas.server.handler
    mas.server.handler = lambda request: (
        (200, unreadable[request.path]) if request.path in unreadable else answer(request)
    )
    client = mas_client(mas)
    with pytest.raises(matrix.UnexpectedResponse, match="sent a token we cannot read"):
        client.get_token("01JUNREADABLE")
    with pytest.raises(matrix.UnexpectedResponse, match="sent a token list we cannot read"):
        list(client.list_tokens())
