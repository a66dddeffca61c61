"""`manage.py verify_deployment`: every finding printed, the exit code says pass or fail.

The relay and the homeserver it checks are real servers on 127.0.0.1: the
suite's aiosmtpd (STARTTLS and AUTH required) and the fake Synapse, plus the
real Synapse for the `synapse`-marked test.
"""

from __future__ import annotations

import io
import secrets

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError

from iama_vetting import health
from notifications.relay import RelayEmailBackend

pytestmark = pytest.mark.django_db

REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"


@pytest.fixture
def good(settings, tmp_path, monkeypatch, smtp_server, use_relay, fake_synapse):
    """A configuration as deploy/README.md leaves it, with a relay and a homeserver that answer."""
    secret = secrets.token_urlsafe(50)
    monkeypatch.setenv("SESSION_SECRET", secret)
    # Set by the browser tests' fixture for this test process, never in a deployment.
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    settings.SECRET_KEY = secret
    # nginx redirects to HTTPS and sends HSTS; the app says so to check --deploy.
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Production's defaults the suite turns off: staff 2FA, and rate limits counted in Redis
    # (only the setting is read; nothing here talks to Redis).
    settings.STAFF_REQUIRE_2FA = True
    settings.RATELIMIT_ENABLE = True
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "iama_vetting.cache.FallbackCache",
            "OPTIONS": {"PRIMARY": {"BACKEND": REDIS_CACHE, "LOCATION": "redis://127.0.0.1:6379/0"}},
        },
    }
    # Each run starts as a fresh process would: no relay port remembered.
    monkeypatch.setattr(RelayEmailBackend, "working_port", {})
    use_relay(smtp_server.port)
    settings.EVIDENCE_ROOT.mkdir(mode=0o750)
    settings.EVIDENCE_ROOT.chmod(0o750)
    env_file = tmp_path / "env"
    env_file.write_text("SESSION_SECRET=...\n")
    env_file.chmod(0o600)
    return env_file


def verify(*args: str) -> tuple[bool, str]:
    out = io.StringIO()
    try:
        call_command("verify_deployment", *args, stdout=out)
    except CommandError:
        return False, out.getvalue()
    return True, out.getvalue()


def test_a_good_deployment_passes(good):
    passed, output = verify("--env-file", str(good))
    assert passed, output
    assert "All deployment checks passed." in output
    assert "FAIL" not in output


def test_missing_relay_password_and_homeserver_are_named(good, settings):
    settings.SMTP_RELAY_AUTHPW = ""
    settings.MATRIX_HOMESERVER_URL = ""
    passed, output = verify()
    assert not passed
    assert "SMTP_RELAY_AUTHPW is not set" in output
    assert "MATRIX_HOMESERVER_URL is not set" in output
    assert "MATRIX_ADMIN_TOKEN is not set" not in output


def test_an_env_file_readable_by_others_fails(good):
    good.chmod(0o644)
    passed, output = verify("--env-file", str(good))
    assert not passed
    assert "has mode 0644" in output and "chmod 600" in output


def test_an_env_file_path_through_a_file_fails_plainly(good):
    passed, output = verify("--env-file", str(good / "env"))
    assert not passed
    assert f"{good / 'env'} cannot be checked: Not a directory" in output


@pytest.mark.parametrize("mode", [0o755, 0o770], ids=["open to others", "writable by its group"])
def test_an_evidence_root_open_beyond_its_owner_and_group_reading_fails(good, settings, mode):
    settings.EVIDENCE_ROOT.chmod(mode)
    passed, output = verify()
    assert not passed
    assert f"mode 0{mode:o}" in output


def test_a_missing_evidence_root_fails(good, settings, tmp_path):
    settings.EVIDENCE_ROOT = tmp_path / "nowhere"
    passed, output = verify()
    assert not passed
    assert "does not exist" in output


def test_evidence_root_reached_through_a_symlink_into_static_fails(good, settings, tmp_path):
    inside = settings.STATIC_ROOT / "evidence"
    inside.mkdir(mode=0o750)
    link = tmp_path / "evidence-link"
    link.symlink_to(inside)
    settings.EVIDENCE_ROOT = link
    passed, output = verify()
    assert not passed
    assert "inside STATIC_ROOT" in output


def test_check_deploy_warnings_fail_the_run(good, settings):
    settings.SECURE_HSTS_SECONDS = 0
    passed, output = verify()
    assert not passed
    assert "security.W004" in output


@pytest.mark.parametrize(
    ("unsafe", "finding"),
    [
        ({"STAFF_REQUIRE_2FA": False}, "(iama_vetting.W001) STAFF_REQUIRE_2FA is off"),
        ({"RATELIMIT_ENABLE": False}, "(iama_vetting.W002) RATELIMIT_ENABLE is off"),
        (
            {"CACHES": {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}},
            "(iama_vetting.W003) Rate limits are counted in each worker process's memory",
        ),
    ],
)
def test_values_that_leave_production_unprotected_fail_the_run(good, settings, unsafe, finding):
    for name, value in unsafe.items():
        setattr(settings, name, value)
    passed, output = verify()
    assert not passed
    assert "FAIL check --deploy" in output
    assert finding in output


def test_secrets_never_appear_in_the_output(good, settings):
    _passed, output = verify("--env-file", str(good))
    assert settings.SMTP_RELAY_AUTHPW not in output and settings.MATRIX_ADMIN_TOKEN not in output
    assert settings.SECRET_KEY not in output


@pytest.mark.smtp
def test_the_relay_is_logged_into_over_tls_and_no_mail_is_sent(good, smtp_server):
    passed, output = verify()
    assert passed, output
    assert "ok   mail relay accepts our login" in output
    assert smtp_server.recorder.accepted_logins == 1
    assert smtp_server.recorder.commands == []
    assert smtp_server.recorder.received == []


@pytest.mark.smtp
def test_a_wrong_relay_password_fails_and_is_not_shown(good, smtp_server, use_relay):
    wrong = "wrong-relay-password-Xy9!"
    use_relay(smtp_server.port, password=wrong)
    passed, output = verify()
    assert not passed
    assert "FAIL mail relay accepts our login" in output
    assert "the relay refused our login (535" in output
    assert wrong not in output
    # smtplib tries each mechanism the server offers; the relay refused them all.
    assert smtp_server.recorder.logins
    assert smtp_server.recorder.accepted_logins == 0


@pytest.mark.smtp
def test_a_relay_that_answers_on_no_port_fails_naming_each_port(good, use_relay, closed_port):
    use_relay(closed_port)
    passed, output = verify()
    assert not passed
    assert "FAIL mail relay accepts our login" in output
    assert f"no port of 127.0.0.1 worked ({closed_port}: connection refused)" in output


@pytest.mark.smtp
def test_a_relay_without_tls_fails_before_the_password_is_sent(good, start_smtp_server, use_relay):
    plain = start_smtp_server(tls=False)
    use_relay(plain.port)
    passed, output = verify()
    assert not passed
    assert "STARTTLS extension not supported" in output
    assert plain.recorder.logins == []


def test_the_homeserver_is_asked_with_the_admin_token_and_nothing_is_changed(good, fake_synapse):
    passed, output = verify()
    assert passed, output
    assert "ok   Matrix homeserver accepts our admin credentials" in output
    assert fake_synapse.server.calls("GET", "/_synapse/admin/v1/registration_tokens") == 1
    assert all(request.method == "GET" for request in fake_synapse.server.requests)


def test_a_refused_admin_token_fails_and_is_not_shown(good, settings):
    settings.MATRIX_ADMIN_TOKEN = "syt_wrong_admin_token_Qz8"
    passed, output = verify()
    assert not passed
    assert "FAIL Matrix homeserver accepts our admin credentials" in output
    assert "refused our admin token" in output
    assert "syt_wrong_admin_token_Qz8" not in output


def test_a_homeserver_that_does_not_answer_fails(good, settings, closed_port):
    settings.MATRIX_HOMESERVER_URL = f"http://127.0.0.1:{closed_port}"
    passed, output = verify()
    assert not passed
    assert "The homeserver did not answer" in output and "connection refused" in output


@pytest.mark.synapse
def test_the_real_synapse_takes_our_admin_token_and_refuses_a_wrong_one(good, synapse, settings):
    passed, output = verify()
    assert passed, output
    settings.MATRIX_ADMIN_TOKEN = "syt_not_a_token_of_this_server"
    passed, output = verify()
    assert not passed
    assert "refused our admin token" in output
    assert "syt_not_a_token_of_this_server" not in output and synapse.admin_token not in output


def test_an_env_file_readable_by_its_group_fails(good):
    good.chmod(0o640)
    passed, output = verify("--env-file", str(good))
    assert not passed
    assert "has mode 0640" in output and "chmod 600" in output


def test_a_cache_that_does_not_answer_fails(good, settings, closed_port):
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": REDIS_CACHE, "LOCATION": f"redis://127.0.0.1:{closed_port}/0"},
    }
    passed, output = verify()
    assert not passed
    assert "FAIL cache reachable" in output


def test_a_database_that_does_not_answer_fails(good, monkeypatch):
    def refuse():
        raise OperationalError("could not connect to server at db.internal")

    monkeypatch.setitem(health.CHECKS, "database", refuse)
    passed, output = verify()
    assert not passed
    assert "FAIL database reachable" in output
