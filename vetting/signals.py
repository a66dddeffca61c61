"""Audit events for Django's own sign-in events (the only hook Django offers for them)."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from vetting import audit
from vetting.models import AuditEvent


@receiver(user_logged_in)
def record_login(sender, request, user, **kwargs) -> None:
    audit.record("user.login", actor=user, target=user, request=request)


@receiver(user_login_failed)
def record_login_failure(sender, credentials, request=None, **kwargs) -> None:
    # Only the username tried; Django has already masked the password, and we drop it anyway.
    audit.record(
        "user.login_failed",
        actor_kind=AuditEvent.ActorKind.SYSTEM,
        request=request,
        details={"username": str(credentials.get("username", ""))[:150]},
    )


@receiver(user_logged_out)
def record_logout(sender, request, user, **kwargs) -> None:
    if user is not None:
        audit.record("user.logout", actor=user, target=user, request=request)
