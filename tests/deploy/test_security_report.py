"""`manage.py security_report`: what needs a security look, to the terminal or the superadmins."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.utils import timezone

from iama_vetting import ratelimits
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
    # Two posts more than APPLY allows a minute, in one counting window: the clock stands still
    # (at the real time, since the report reads the hourly counters up to the real now).
    with time_machine.travel(datetime.now(UTC), tick=False):
        for _attempt in range(ratelimits.APPLY.per_minute + 2):
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


def test_refusals_are_counted_by_the_hour_and_kept_for_a_week(client):
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False) as clock:
        for _attempt in range(ratelimits.APPLY.per_minute + 1):
            client.post("/apply/", {})
        clock.move_to(datetime(2026, 3, 2, 11, 30, tzinfo=UTC))
        assert "Rate-limit refusals: 0\n" in report("--since", "1h")
        clock.move_to(datetime(2026, 3, 8, 11, 30, tzinfo=UTC))
        assert "Rate-limit refusals: 1\n  apply: 1\n" in report("--since", "7d")


def test_a_sign_in_refused_for_its_username_is_reported_under_the_username_limit(client, agent, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # One account guessed at from many addresses: no address is over its own limit.
    with time_machine.travel(datetime.now(UTC), tick=False):
        for number in range(ratelimits.ADMIN_LOGIN_PER_USERNAME.per_minute + 1):
            client.post(
                "/admin/login/",
                {"username": "agent", "password": "wrong"},
                HTTP_X_FORWARDED_FOR=f"203.0.113.{number}",
            )
    assert "Rate-limit refusals: 1\n  admin-login-user: 1\n" in report()


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


def old_csp_violation() -> None:
    CSPViolation.objects.record("img-src", "https://old.example", "/apply/")
    CSPViolation.objects.update(last_seen=timezone.now() - timedelta(days=60))


def test_mail_without_a_superadmin_address_fails_and_forgets_nothing(agent):
    old_csp_violation()
    with pytest.raises(CommandError) as refused:
        report("--mail")
    assert str(refused.value) == (
        "No active superadmin has an e-mail address: nothing was sent, nothing forgotten."
    )
    assert CSPViolation.objects.count() == 1
    assert not OutboundEmail.objects.exists()


def test_dry_run_with_mail_is_refused_and_changes_nothing(superadmin):
    old_csp_violation()
    with pytest.raises(CommandError, match="give either --dry-run or --mail, not both"):
        report("--dry-run", "--mail")
    assert CSPViolation.objects.count() == 1
    assert not OutboundEmail.objects.exists()


@pytest.mark.parametrize("since", ["yesterday", "0h", "24", "1w"])
def test_a_bad_window_is_refused_clearly(since):
    with pytest.raises(CommandError, match="--since takes hours or days"):
        report("--since", since)


@pytest.mark.parametrize("since", ["999999999d", "99999999999h", "999999999999d"])
def test_a_window_reaching_before_the_calendar_is_refused_clearly(since):
    with pytest.raises(CommandError, match="reaches back before the year 1"):
        report("--since", since)


def test_a_number_too_long_for_any_window_is_refused_clearly():
    with pytest.raises(CommandError, match="--since takes hours or days"):
        report("--since", "9" * 5000 + "d")


def test_a_long_window_asks_the_cache_only_for_the_refusal_counts_still_kept(monkeypatch, settings):
    cache = caches[settings.RATELIMIT_USE_CACHE]
    asked: list[int] = []
    get_many = cache.get_many
    monkeypatch.setattr(cache, "get_many", lambda keys: asked.append(len(keys)) or get_many(keys))
    assert "IaMA RVI security report, last 3650d" in report("--since", "3650d")
    limits = 1 + len(ratelimits.ALL_LIMITS)
    assert asked and asked[0] <= limits * (ratelimits.REFUSALS_KEPT_SECONDS // 3600 + 2)
