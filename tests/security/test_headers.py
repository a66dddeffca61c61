"""Security headers on every kind of response, and the CSP in each environment."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.test import Client

from tests.security.conftest import run_python

pytestmark = pytest.mark.django_db

COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-XSS-Protection": "0",
}
PRODUCTION_DIRECTIVES = {
    "default-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'self'",
    "upgrade-insecure-requests": "",
}


def directives(header: str) -> dict[str, str]:
    parsed = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        parsed[name] = value
    return parsed


def rate_limited_response(client):
    # A stopped clock: six posts must not straddle the start of a new minute window.
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False):
        for _ in range(6):
            response = client.post("/apply/", {})
    assert response.status_code == 429
    return response


def maintenance_response(client, settings):
    from iama_vetting import maintenance

    # Beside the test's own static root (tests/conftest.py): a private directory.
    settings.MAINTENANCE_FILE = settings.STATIC_ROOT.parent / "maintenance.json"
    maintenance.switch_on(until=None)
    return client.get("/apply/", secure=True)


def static_response(client, settings):
    # WhiteNoise reads the static root when the client's first request loads the middleware.
    (settings.STATIC_ROOT / "site.css").write_text("body {}")
    return client.get("/static/site.css", secure=True)


def failing_response(settings):
    settings.ROOT_URLCONF = "tests.security.urls"
    return Client(raise_request_exception=False).get("/fails/", secure=True)


def csrf_refused(client, settings):
    return Client(enforce_csrf_checks=True).post("/apply/", {}, secure=True)


RESPONSES = {
    "public page": lambda client, settings: client.get("/apply/", secure=True),
    "maintenance page": maintenance_response,
    "static file (WhiteNoise)": static_response,
    "404 page": lambda client, settings: client.get("/no-such-page/", secure=True),
    "400 page (unknown host)": lambda client, settings: client.get(
        "/apply/", HTTP_HOST="nope.invalid", secure=True
    ),
    "403 page": csrf_refused,
    "429 page": lambda client, settings: rate_limited_response(client),
    "500 page": lambda client, settings: failing_response(settings),
    "CSP report (JSON, 400)": lambda client, settings: client.post(
        "/csp-report/", "{}", content_type="application/json", secure=True
    ),
    "security.txt": lambda client, settings: client.get("/.well-known/security.txt", secure=True),
    "admin sign-in": lambda client, settings: client.get("/admin/login/", secure=True),
}


STATUSES = {
    "maintenance page": 503,
    "404 page": 404,
    "400 page (unknown host)": 400,
    "403 page": 403,
    "429 page": 429,
    "500 page": 500,
    "CSP report (JSON, 400)": 400,
}


@pytest.mark.parametrize("kind", RESPONSES)
def test_every_kind_of_response_carries_the_security_headers(client, settings, kind):
    response = RESPONSES[kind](client, settings)
    assert response.status_code == STATUSES.get(kind, 200)
    for header, value in COMMON_HEADERS.items():
        assert response[header] == value, header
    policy = directives(response["Content-Security-Policy"])
    for name, value in PRODUCTION_DIRECTIVES.items():
        assert policy[name] == value, name
    assert response["X-Request-ID"]


def test_hsts_is_one_year_with_subdomains_on_https(client):
    response = client.get("/apply/", secure=True)
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_error_pages_leak_nothing(settings, client):
    failed = failing_response(settings)
    assert failed.status_code == 500
    assert "do-not-show-this" not in failed.content.decode()
    assert "Traceback" not in failed.content.decode()
    missing = client.get("/evidence/not-a-uuid/")
    assert missing.status_code == 404
    assert "urlpatterns" not in missing.content.decode()


def test_production_script_src_is_self_plus_a_fresh_nonce_and_nothing_unsafe(client):
    first = directives(client.get("/admin/login/")["Content-Security-Policy"])
    second = directives(client.get("/admin/login/")["Content-Security-Policy"])
    for policy in (first, second):
        sources = policy.get("script-src", "'self'").split()
        assert sources[0] == "'self'"
        assert all(source == "'self'" or source.startswith("'nonce-") for source in sources)
    whole = client.get("/apply/")["Content-Security-Policy"]
    for forbidden in ("unsafe-inline", "unsafe-eval", "*", "http:", "https:"):
        assert forbidden not in whole


def test_policy_reports_only_on_a_real_domain(client, settings):
    settings.ALLOWED_HOSTS = ["rvi.example.org", "localhost", "127.0.0.1", "[::1]"]
    public = client.get("/apply/", HTTP_HOST="rvi.example.org", secure=True)
    policy = directives(public["Content-Security-Policy"])
    assert policy["report-uri"] == "/csp-report/"
    assert policy["report-to"] == "csp-endpoint"
    assert public["Reporting-Endpoints"] == 'csp-endpoint="https://rvi.example.org/csp-report/"'

    # The development server's own addresses come with a port.
    for local in ("localhost", "127.0.0.1", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        response = client.get("/apply/", HTTP_HOST=local)
        assert "report-uri" not in response["Content-Security-Policy"]
        assert "report-to" not in response["Content-Security-Policy"]
        assert "Reporting-Endpoints" not in response, local


def test_development_enforces_a_permissive_policy_and_reports_the_strict_one(tmp_path):
    script = (
        "import json, django; from django.conf import settings; django.setup(); "
        "print(json.dumps([settings.CONTENT_SECURITY_POLICY, settings.CONTENT_SECURITY_POLICY_REPORT_ONLY,"
        " settings.SECURE_HSTS_SECONDS, settings.SESSION_COOKIE_SECURE], default=str))"
    )
    result = run_python(["-c", script], tmp_path, DEBUG="true")
    assert result.returncode == 0, result.stderr
    enforced, report_only, hsts, secure_cookie = json.loads(result.stdout)
    assert "'unsafe-inline'" in enforced["DIRECTIVES"]["default-src"]
    assert report_only["DIRECTIVES"]["script-src"][0] == "'self'"
    assert report_only["DIRECTIVES"]["style-src"] == ["'self'"]
    assert hsts == 0
    assert secure_cookie is False


def test_production_cookies_are_secure_httponly_and_samesite(client, superadmin):
    signed_in = client.post(
        "/admin/login/", {"username": "superadmin", "password": "a-long-test-password"}, secure=True
    )
    assert signed_in.status_code == 302
    session_cookie = signed_in.cookies["sessionid"]
    assert session_cookie["secure"]
    assert session_cookie["httponly"]
    assert session_cookie["samesite"] == "Lax"
    form = Client().get("/admin/login/", secure=True)
    csrf_cookie = form.cookies["csrftoken"]
    assert csrf_cookie["secure"]
    assert csrf_cookie["httponly"]
    assert csrf_cookie["samesite"] == "Lax"
    # Kept until the browser closes, not for a year.
    assert csrf_cookie["max-age"] == "" and csrf_cookie["expires"] == ""


def test_staff_sessions_last_eight_hours_and_end_with_the_browser(settings):
    assert settings.SESSION_COOKIE_AGE == 8 * 60 * 60
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE is True


def test_requests_over_plain_http_are_redirected_to_https_in_production(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/apply/")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/apply/"
    behind_nginx = client.get("/apply/", HTTP_X_FORWARDED_PROTO="https")
    assert behind_nginx.status_code == 200


def test_the_health_check_answers_over_plain_http_without_a_redirect(client, settings):
    # The load balancer may check over plain HTTP on the private side.
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200


def test_the_policy_built_once_is_the_one_django_csp_builds(client, settings):
    from csp.utils import build_policy

    first = client.get("/apply/")["Content-Security-Policy"]
    second = client.get("/privacy/")["Content-Security-Policy"]
    reporting = {"report-uri": "/csp-report/", "report-to": "csp-endpoint"}  # testserver is a real domain
    assert first == second == build_policy(update=reporting)
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'none'"]}}
    assert client.get("/apply/")["Content-Security-Policy"] == build_policy(update=reporting)
    assert client.get("/apply/")["Content-Security-Policy"].startswith("default-src 'none'")


def test_an_inline_script_gets_a_fresh_nonce_in_its_pages_policy_only(client, settings):
    settings.ROOT_URLCONF = "tests.security.urls"
    client.get("/apply/")  # the policy shared by pages without a nonce is built first
    nonces = []
    for _ in range(2):
        response = client.get("/inline-script/")
        nonce = re.search(r'nonce="([^"]+)"', response.content.decode())[1]
        assert f"'nonce-{nonce}'" in directives(response["Content-Security-Policy"])["script-src"].split()
        nonces.append(nonce)
    assert nonces[0] != nonces[1]
    assert "nonce-" not in client.get("/apply/")["Content-Security-Policy"]


def test_a_view_with_a_policy_of_its_own_gets_it_and_other_pages_do_not(client, settings):
    settings.ROOT_URLCONF = "tests.security.urls"
    client.get("/apply/")
    own = directives(client.get("/own-policy/")["Content-Security-Policy"])
    assert own["img-src"].split() == ["'self'", "data:", "https://images.example"]
    assert "https://images.example" not in client.get("/apply/")["Content-Security-Policy"]


def test_every_public_page_is_sessionless_and_staff_pages_are_not(client, superadmin):
    from django.urls import URLPattern, get_resolver

    from iama_vetting.middleware import is_public_path

    public_patterns = [
        "/" + str(pattern.pattern).replace("<str:token>", "t")
        for pattern in get_resolver("vetting.urls").url_patterns
        if isinstance(pattern, URLPattern)
    ]
    assert "/apply/" in public_patterns
    # A new applicant page must be added to PUBLIC_PATH_PREFIXES, or it would carry staff sessions.
    assert [path for path in public_patterns if not is_public_path(path)] == []
    for staff_path in ("/admin/", "/admin/login/", "/evidence/1/", "/reset/x/y/", "/unknown/"):
        assert not is_public_path(staff_path)

    client.force_login(superadmin)
    assert client.get("/admin/").wsgi_request.user == superadmin
    public = client.get("/privacy/")
    assert public.status_code == 200
    assert not hasattr(public.wsgi_request, "user")
    assert not hasattr(public.wsgi_request, "session")
    # The project's own public addresses, a missing static file included, skip them too.
    for response in (
        client.get("/healthz"),
        client.get("/.well-known/security.txt"),
        client.get("/static/no-such-file.css"),
        client.post("/csp-report/", "{}", content_type="application/json"),
    ):
        assert not hasattr(response.wsgi_request, "user"), response.wsgi_request.path
        assert not hasattr(response.wsgi_request, "session"), response.wsgi_request.path
