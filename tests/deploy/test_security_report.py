"""`manage.py security_report`: what needs a security look, to the terminal or the superadmins."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from iama_vetting.models import CSPViolation
from notifications.models import OutboundEmail
from tests.conftest import STAFF_PASSWORD
from tests.factories import make_application
from vetting import audit
from vetting.models import AuditEvent

pytestmark = pytest.mark.django_db


def report(*args: str) -> str:
    out = io.StringIO()
    call_command("security_report", *args, stdout=out)
    return out.getvalue()


def test_summarises_failed_sign_ins_refusals_csp_mails_and_homeserver_errors(client, agent, settings):
    for _attempt in range(3):
        client.post("/admin/login/", {"username": "agent", "password": "not-the-password"})
    client.post("/admin/login/", {"username": "ghost", "password": "guess"})
    settings.RATELIMIT_ENABLE = True
    for _attempt in range(7):  # APPLY allows 5 a minute
        client.post("/apply/", {})
    CSPViolation.objects.record("script-src-elem", "https://evil.example/x.js", "/apply/")
    failed = OutboundEmail.compose("a@x.example", "s", "b", "", template="t")
    failed.status = OutboundEmail.Status.FAILED
    failed.save()
    audit.record("invitation.issue_failed", target=make_application(), details={"reason": "unauthorised"})

    text = report()
    assert "Failed staff sign-ins: 4\n  agent: 3\n  ghost: 1\n" in text
    assert "Rate-limit refusals: 2\n  apply: 2\n" in text
    assert "script-src-elem blocked https://evil.example/x.js on /apply/: 1 report(s)" in text
    assert "Mails that failed for good: 1\n" in text
    assert "Homeserver errors: 1\n  invitation.issue_failed: 1\n" in text
    assert "not-the-password" not in text and STAFF_PASSWORD not in text


def test_older_events_fall_outside_the_window(agent):
    event = audit.record("user.login_failed", details={"username": "agent"})
    AuditEvent.objects.filter(pk=event.pk).update(created_at=timezone.now() - timedelta(days=2))
    assert "Failed staff sign-ins: 0\n" in report("--since", "24h")
    assert "Failed staff sign-ins: 1\n" in report("--since", "7d")


def test_mail_goes_to_every_active_superadmin(superadmin, django_user_model):
    django_user_model.objects.create_superuser("retired", "retired@staff.example", "x" * 14, is_active=False)
    output = report("--mail")
    assert "Queued to 1 superadmin(s)." in output
    mail = OutboundEmail.objects.get(template="security-report")
    assert mail.to == "super@staff.example"
    assert "Failed staff sign-ins: 0" in mail.body_text


@pytest.mark.parametrize("since", ["yesterday", "0h", "24", "1w"])
def test_a_bad_window_is_refused_clearly(since):
    with pytest.raises(CommandError, match="--since takes hours or days"):
        report("--since", since)
