"""Mail settings read from the environment: which backend, and loud failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
PRINT_MAIL_SETTINGS = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps({name: getattr(settings, name) for name in "
    "['EMAIL_BACKEND', 'SMTP_RELAY_HOST', 'SMTP_RELAY_USER', 'SMTP_RELAY_PORTS', 'SMTP_TIMEOUT', "
    "'OUTBOX_LEASE_SECONDS', 'STAFF_NOTIFY_EMAILS']}))"
)
PRODUCTION = {"DEBUG": "false", "SESSION_SECRET": "s" * 50, "ALLOWED_HOSTS": "rvi.example.org"}


def load(**environment: str) -> subprocess.CompletedProcess:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("SMTP_", "OUTBOX_", "DEBUG", "SESSION_SECRET", "ALLOWED_HOSTS", "DATABASE_URL")
        )
    }
    return subprocess.run(
        [sys.executable, "-c", PRINT_MAIL_SETTINGS],
        cwd=PROJECT_DIR,
        env={**clean, "DJANGO_SETTINGS_MODULE": "iama_vetting.settings", **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


def loaded(**environment: str) -> dict:
    result = load(**environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_development_without_relay_password_prints_mail_to_the_console():
    assert loaded(DEBUG="true")["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"


def test_development_with_relay_password_uses_the_relay():
    settings = loaded(DEBUG="true", SMTP_RELAY_AUTHPW="pw")
    assert settings["EMAIL_BACKEND"] == "notifications.relay.RelayEmailBackend"


def test_production_uses_the_relay_with_its_four_ports_and_a_10_second_timeout():
    settings = loaded(**PRODUCTION)
    assert settings["EMAIL_BACKEND"] == "notifications.relay.RelayEmailBackend"
    assert settings["SMTP_RELAY_HOST"] == "mail.smtp2go.com"
    assert settings["SMTP_RELAY_USER"] == "support@rvi.iam-alliance.com"
    assert settings["SMTP_RELAY_PORTS"] == [2525, 8025, 587, 80]
    assert settings["SMTP_TIMEOUT"] == 10
    assert settings["OUTBOX_LEASE_SECONDS"] == 300


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"SMTP_RELAY_PORTS": "2525,smtp"}, "SMTP_RELAY_PORTS must be port numbers"),
        *(
            ({"SMTP_RELAY_PORTS": ports}, "SMTP_RELAY_PORTS must list at least one port between 1 and 65535.")
            for ports in ["0", "2525,65536", ","]
        ),
        ({"SMTP_TIMEOUT": "0"}, "SMTP_TIMEOUT must be more than 0 seconds."),
        (
            {"SMTP_CA_FILE": "/nonexistent/ca.pem"},
            "SMTP_CA_FILE '/nonexistent/ca.pem' is not a readable file.",
        ),
        ({"OUTBOX_LEASE_SECONDS": "60"}, "OUTBOX_LEASE_SECONDS must be at least"),
    ],
)
def test_bad_mail_settings_stop_the_app_with_a_message(environment, message):
    result = load(**PRODUCTION, **environment)
    assert result.returncode != 0
    assert message in result.stderr


def test_staff_notify_emails_may_have_spaces_after_the_commas():
    settings = loaded(**PRODUCTION, STAFF_NOTIFY_EMAILS="queue@x.org, lead@x.org ,")
    assert settings["STAFF_NOTIFY_EMAILS"] == ["queue@x.org", "lead@x.org"]


@pytest.mark.parametrize(
    ("value", "bad_entry"),
    [
        ("queue@x.org, Staff <s@x.org>", "Staff <s@x.org>"),
        ("queue@x.org;lead@x.org", "queue@x.org;lead@x.org"),
        # Django's validator accepts it; IDNA cannot encode the domain, so no mail could carry it.
        ("queue@x.org, lead@x\u05de.org", "lead@x\u05de.org"),
    ],
)
def test_an_entry_in_staff_notify_emails_that_is_no_address_refuses_to_start(value, bad_entry):
    result = load(**PRODUCTION, STAFF_NOTIFY_EMAILS=value)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"STAFF_NOTIFY_EMAILS: {bad_entry!r} is not an e-mail address" in result.stderr


@pytest.mark.parametrize(
    "value",
    [
        "IaMA, RVI Support <support@rvi.iam-alliance.com>",
        "support@rvi.iam-alliance.com, lead@rvi.iam-alliance.com",
        "support",
        "IaMA RVI Support <support@rvi>",
    ],
)
def test_a_sender_that_is_not_one_address_with_a_domain_refuses_to_start(value):
    # Started anyway, the worker would fail every queued mail for good as "not sendable".
    result = load(**PRODUCTION, DEFAULT_FROM_EMAIL=value)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DEFAULT_FROM_EMAIL must be one address with its domain" in result.stderr


@pytest.mark.parametrize(
    "value",
    [
        "IaMA RVI Support <support@rvi.iam-alliance.com>",
        '"IaMA, RVI Support" <support@rvi.iam-alliance.com>',
        "support@rvi.iam-alliance.com",
    ],
)
def test_a_sender_with_or_without_a_name_is_accepted(value):
    assert load(**PRODUCTION, DEFAULT_FROM_EMAIL=value).returncode == 0
