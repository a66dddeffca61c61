"""`manage.py verify_deployment`: every finding printed, the exit code says pass or fail."""

from __future__ import annotations

import io
import secrets

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


@pytest.fixture
def good(settings, tmp_path, monkeypatch):
    """A configuration as deploy/README.md leaves it."""
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
    settings.SMTP_RELAY_AUTHPW = "relay-password"
    settings.MATRIX_HOMESERVER_URL = "https://matrix.example.org"
    settings.MATRIX_ADMIN_TOKEN = "syt_admin_token"
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


def test_an_evidence_root_open_to_others_fails(good, settings):
    settings.EVIDENCE_ROOT.chmod(0o755)
    passed, output = verify()
    assert not passed
    assert "mode 0755" in output


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


def test_secrets_never_appear_in_the_output(good, settings):
    settings.SMTP_RELAY_AUTHPW = "relay-password"
    _passed, output = verify("--env-file", str(good))
    assert "relay-password" not in output and "syt_admin_token" not in output
    assert settings.SECRET_KEY not in output
