"""Structured logs: JSON lines with the request's context, request ids, and no secrets anywhere."""

from __future__ import annotations

import io
import json
import logging
from base64 import b32encode
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import OperationalError
from django.http import HttpRequest
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from evidence.models import Evidence
from iama_vetting.logs import JSONFormatter, RequestContextFilter, TextFormatter, request_context
from iama_vetting.middleware import loggable_path
from tests.factories import PDF_BYTES, make_application, upload
from tests.vetting.test_apply import form_data
from vetting.links import status_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_log():
    """Everything logged at DEBUG and up, formatted exactly as production writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous_level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def access_lines(stream: io.StringIO) -> list[dict]:
    return [line for line in lines(stream) if line["logger"] == "iama_vetting.request"]


def test_each_request_writes_one_json_access_line_with_its_context(client, agent, json_log, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    client.force_login(agent)
    response = client.get("/admin/vetting/application/", HTTP_X_FORWARDED_FOR="203.0.113.5")
    [line] = access_lines(json_log)
    assert set(line) >= {
        "time",
        "level",
        "logger",
        "message",
        "request_id",
        "user_id",
        "client_ip",
        "method",
        "path",
        "status",
        "duration_ms",
    }
    assert line["level"] == "INFO"
    assert line["user_id"] == agent.pk
    assert line["client_ip"] == "203.0.113.5"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/admin/vetting/application/", 200)
    assert line["request_id"] == response["X-Request-ID"]
    assert line["duration_ms"] >= 0


def test_the_access_line_never_loads_the_user_a_request_did_not_look_at(
    client, agent, json_log, django_assert_num_queries
):
    # A staff path (sessions run) whose 404 page never asks who is signed in.
    client.force_login(agent)
    with django_assert_num_queries(0):
        response = client.get("/no-such-page/")
    assert response.status_code == 404
    [line] = access_lines(json_log)
    assert line["user_id"] is None


def test_a_server_error_writes_its_access_line_as_an_error(settings, json_log):
    settings.ROOT_URLCONF = "tests.security.urls"
    Client(raise_request_exception=False).get("/fails/")
    [line] = access_lines(json_log)
    assert (line["status"], line["level"]) == (500, "ERROR")


def test_control_characters_a_client_sends_in_the_path_or_method_are_escaped_in_the_access_line(
    client, json_log
):
    # A percent-encoded newline or terminal escape reaches the path decoded; a development
    # server passes such a method on as it came.
    client.get("/apply/%0AFAKE%1B[2J")
    client.generic("GE\x1bT", "/apply/")
    paths_and_methods = [(line["path"], line["method"]) for line in access_lines(json_log)]
    assert paths_and_methods == [("/apply/\\nFAKE\\x1b[2J", "GET"), ("/apply/", "GE\\x1bT")]
    assert access_lines(json_log)[0]["message"].startswith("GET /apply/\\nFAKE\\x1b[2J ")


def test_lines_written_during_a_request_carry_its_id(client, json_log):
    # Six posts in one stopped minute: the sixth is refused, and the limiter says so in the log.
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False):
        for _ in range(6):
            client.post("/apply/", {})
    warning = next(line for line in lines(json_log) if line["logger"] == "iama_vetting.ratelimits")
    refused = access_lines(json_log)[-1]
    assert refused["status"] == 429
    assert refused["level"] == "WARNING"
    assert warning["request_id"] == refused["request_id"]


def test_request_id_from_the_trusted_proxy_is_kept_and_echoed(client, settings, json_log):
    settings.TRUSTED_PROXY_COUNT = 1
    response = client.get("/apply/", HTTP_X_REQUEST_ID="3f2a9c0d8e7b4a61")
    assert response["X-Request-ID"] == "3f2a9c0d8e7b4a61"
    assert access_lines(json_log)[0]["request_id"] == "3f2a9c0d8e7b4a61"


@pytest.mark.parametrize(
    "trusted, sent", [(0, "chosen-by-the-client"), (1, "bad id\nwith newline"), (1, "x" * 200)]
)
def test_request_id_is_generated_when_absent_untrusted_or_malformed(client, settings, trusted, sent):
    settings.TRUSTED_PROXY_COUNT = trusted
    first = client.get("/apply/", HTTP_X_REQUEST_ID=sent)["X-Request-ID"]
    second = client.get("/apply/")["X-Request-ID"]
    assert first != sent
    assert len(first) == 32 and len(second) == 32 and first != second


def test_capability_tokens_in_paths_are_not_logged(client, settings, json_log):
    settings.ROOT_URLCONF = "tests.security.urls"
    client.get("/status/SECRET-STATUS-TOKEN-123/")
    client.get("/status/SECRET-STATUS-TOKEN-123/", {"x": 1}, HTTP_HOST="nope.invalid")
    assert "SECRET-STATUS-TOKEN-123" not in json_log.getvalue()
    assert access_lines(json_log)[0]["path"] == "/status/<token>/"


SECRET = "ImRlYWRiZWVmIg:1xXJAT:unresolved-path-canary"


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        # CommonMiddleware answers these 301 (the slash is missing) ...
        (f"/status/{SECRET}", "/status/<token>"),
        (f"/status/{SECRET}/withdraw", "/status/<token>/withdraw"),
        (f"/status/{SECRET}/my-data", "/status/<token>/my-data"),
        (f"/status/{SECRET}/erase", "/status/<token>/erase"),
        (f"/confirm/{SECRET}", "/confirm/<token>"),
        (f"/reset/MQ/{SECRET}", "/reset/<uidb64>/<token>"),
        # ... and these 404: no route, but the token is still there.
        (f"/status/{SECRET}/)", "/status/<token>/)"),
        (f"/status/{SECRET}/.", "/status/<token>/."),
        (f"/confirm/{SECRET}/x/", "/confirm/<token>/x/"),
        (f"/reset/MQ/{SECRET}/x", "/reset/<uidb64>/<token>/x"),
        (f"/Status/{SECRET}/", "/Status/<token>/"),
    ],
)
def test_tokens_in_paths_that_resolve_to_no_page_are_masked_too(client, json_log, path, logged):
    client.get(path)
    [line] = access_lines(json_log)
    assert line["status"] in (301, 404)
    assert line["path"] == logged
    assert line["message"].startswith(f"GET {logged} ")
    assert SECRET not in json_log.getvalue()


def test_a_token_a_line_repeats_is_masked_each_time_by_one_filter():
    # Production has one handler, so one pass of the filter (the json_log fixture adds a second).
    context = request_context.set({"url_secrets": [("token", SECRET)]})
    try:
        record = logging.makeLogRecord(
            {
                "name": "django.security.csrf",
                "msg": "Forbidden (Referer checking failed - %s does not match any trusted origins.): %s",
                "args": (f"https://elsewhere.example/status/{SECRET}/", f"/status/{SECRET}/withdraw/"),
            }
        )
        RequestContextFilter().filter(record)
    finally:
        request_context.reset(context)
    assert record.getMessage() == (
        "Forbidden (Referer checking failed - https://elsewhere.example/status/<token>/ does not match any "
        "trusted origins.): /status/<token>/withdraw/"
    )


def request_for(path: str, script_name: str = "") -> HttpRequest:
    """As the WSGI handler makes it (the test client would read "//status" as a host name)."""
    request = HttpRequest()
    request.path, request.path_info = script_name + path, path
    return request


def test_a_doubled_slash_or_a_script_prefix_does_not_hide_a_token():
    assert loggable_path(request_for(f"//status/{SECRET}/x")) == "//status/<token>/x"
    assert loggable_path(request_for(f"/status//{SECRET}/x")) == "/status//<token>/x"
    assert loggable_path(request_for(f"/reset//MQ//{SECRET}/")) == "/reset//<uidb64>//<token>/"
    assert loggable_path(request_for(f"/status/{SECRET}/", "/rvi")) == "/rvi/status/<token>/"


def test_pages_beside_the_token_routes_keep_their_names(client, json_log):
    client.get("/reset/done/")
    client.get("/status/")
    assert [line["path"] for line in access_lines(json_log)] == ["/reset/done/", "/status/"]


def test_development_lines_are_readable_text():
    record = logging.makeLogRecord(
        {"name": "vetting", "levelname": "INFO", "msg": "Stored %s", "args": ("x",)}
    )
    RequestContextFilter().filter(record)
    line = TextFormatter().format(record)
    assert line.endswith("INFO vetting [-] Stored x")


def test_no_secret_appears_in_logs_or_pages_over_a_full_flow(client, settings, json_log, django_user_model):
    secrets = {
        "SESSION_SECRET": "canary-session-secret-5d1f0e9a7c3b2a14e8f6d0c9b7a5e3f1",
        "SMTP_RELAY_AUTHPW": "canary-smtp-password-8b2e",
        "MATRIX_ADMIN_TOKEN": "syt_canary_matrix_admin_token_41c7",
        "staff password": "canary-staff-password-93ad",
    }
    settings.SECRET_KEY = secrets["SESSION_SECRET"]
    settings.SMTP_RELAY_AUTHPW = secrets["SMTP_RELAY_AUTHPW"]
    settings.MATRIX_ADMIN_TOKEN = secrets["MATRIX_ADMIN_TOKEN"]
    settings.STAFF_REQUIRE_2FA = True
    settings.ROOT_URLCONF = "tests.security.urls"
    staff = django_user_model.objects.create_superuser(
        "lead", "lead@staff.example", secrets["staff password"]
    )
    pages: list[bytes] = []

    def seen(response):
        pages.append(response.content if not response.streaming else b"".join(response.streaming_content))
        pages.append(str(response.headers).encode())
        return response

    # An applicant applies with evidence.
    done = seen(client.post("/apply/", form_data(evidence_1=upload("passport.pdf", PDF_BYTES))))
    seen(client.get(done["Location"]))
    # Staff sign in: a wrong password first, then the right one, then the second factor.
    staff_client = Client()
    seen(
        staff_client.post("/admin/login/", {"username": "lead", "password": secrets["staff password"] + "x"})
    )
    seen(staff_client.post("/admin/login/", {"username": "lead", "password": secrets["staff password"]}))
    seen(staff_client.get("/admin/two-factor/setup/"))
    device = TOTPDevice.objects.get(user=staff)
    # The setup page shows this key to its owner, once; logs never do.
    totp_key = {device.key, b32encode(device.bin_key).decode()}
    code = f"{totp(device.bin_key, device.step, device.t0, device.digits):06d}"
    seen(staff_client.post("/admin/two-factor/setup/", {"token": code}))
    # They review and download the evidence.
    evidence = Evidence.objects.get()
    seen(staff_client.get("/admin/vetting/application/"))
    seen(staff_client.get(f"/admin/vetting/application/{evidence.application_id}/change/"))
    seen(staff_client.get(f"/evidence/{evidence.pk}/"))
    seen(staff_client.get("/admin/notifications/outboundemail/"))
    # A browser reports a violation, and something fails on the server.
    seen(
        client.post(
            "/csp-report/", '{"csp-report": {"blocked-uri": "inline"}}', content_type="application/csp-report"
        )
    )
    seen(Client(raise_request_exception=False).get("/fails/"))

    captured = json_log.getvalue()
    assert len(access_lines(json_log)) >= 12
    assert "Traceback" in captured, "the failure itself is logged"
    everything_shown = b"".join(pages).decode("utf-8", "replace")
    for name, secret in secrets.items():
        assert secret not in captured, f"{name} leaked into the logs"
        assert secret not in everything_shown, f"{name} leaked into a page"
    for form in totp_key:
        assert form not in captured, "the TOTP key leaked into the logs"


def fail_with(error):
    def withdraw(application, request=None):
        raise error

    return withdraw


@pytest.mark.parametrize(
    ("send", "logger", "message"),
    [
        (
            lambda path, token: Client(enforce_csrf_checks=True).post(path),
            "django.security.csrf",
            "Forbidden (CSRF cookie not set.): /status/<token>/withdraw/",
        ),
        (
            lambda path, token: Client(enforce_csrf_checks=True).post(
                path, secure=True, HTTP_REFERER=f"https://elsewhere.example/status/{token}/"
            ),
            "django.security.csrf",
            "Forbidden (Referer checking failed - https://elsewhere.example/status/<token>/ does not "
            "match any trusted origins.): /status/<token>/withdraw/",
        ),
        (
            lambda path, token: Client(raise_request_exception=False).post(path),
            "django.request",
            "Internal Server Error: /status/<token>/withdraw/",
        ),
        (
            lambda path, token: Client().post(path),
            "iama_vetting.outage",
            "Database unavailable for POST /status/<token>/withdraw/: OperationalError",
        ),
    ],
    ids=["csrf-cookie", "csrf-referer", "server-error", "database-down"],
)
def test_other_loggers_show_the_masked_path_never_the_token(json_log, monkeypatch, send, logger, message):
    token = status_token(make_application())
    error = OperationalError("gone") if logger == "iama_vetting.outage" else RuntimeError(f"no {token}")
    monkeypatch.setattr("vetting.workflow.withdraw", fail_with(error))
    send(f"/status/{token}/withdraw/", token)
    [line] = [line for line in lines(json_log) if line["logger"] == logger]
    assert line["message"] == message
    assert line["path"] == "/status/<token>/withdraw/"
    assert token not in json_log.getvalue()
    if logger == "django.request":
        assert "Traceback" in line["exception"] and "no <token>" in line["exception"]
