"""The applicant's private links: signed, carrying no database id.

The status link never expires (it is the applicant's way back for months);
it is mailed only to a confirmed address (workflow._applicant_mail). A public
application's confirmation link expires with the unconfirmed application
itself (confirmation_expired); a staff-entered application's does not: it is
that person's way in, however late they come, and the application stays in
the queue meanwhile.
"""

from __future__ import annotations

import uuid
import zlib
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils import timezone

from vetting.models import Application

STATUS_SALT = "vetting.status-link"
CONFIRM_SALT = "vetting.confirm-link"
UNCONFIRMED_LIFETIME = timedelta(days=7)


def status_token(application: Application) -> str:
    return signing.dumps(application.public_id.hex, salt=STATUS_SALT)


def status_link_stem(application: Application) -> str:
    """What every status link of this application contains, whenever it was signed.

    The signed token is "<payload>:<time>:<signature>": the time changes every second.
    """
    return reverse("vetting:status", args=[status_token(application).split(":", 1)[0] + ":"]).rstrip("/")


def confirm_token(application: Application) -> str:
    return signing.dumps(application.public_id.hex, salt=CONFIRM_SALT)


def status_url(application: Application) -> str:
    return settings.SITE_URL + reverse("vetting:status", args=[status_token(application)])


def confirm_url(application: Application) -> str:
    return settings.SITE_URL + reverse("vetting:confirm", args=[confirm_token(application)])


def admin_url(application: Application) -> str:
    return settings.SITE_URL + reverse("admin:vetting_application_change", args=[application.pk])


def confirmation_expired(application: Application) -> bool:
    """Whether a public application's address went unconfirmed for UNCONFIRMED_LIFETIME after
    applying: its confirmation link confirms nothing any more, and purge_unconfirmed deletes
    it (workflow.never_confirmed)."""
    return (
        application.source == Application.Source.PUBLIC
        and application.email_confirmed_at is None
        and timezone.now() - application.created_at > UNCONFIRMED_LIFETIME
    )


def _signed_public_id(token: str, salt: str) -> uuid.UUID | None:
    """The application id a link of ours carries, or None for a link we did not sign.

    We only ever sign an application's public_id as a string. Any other payload under our
    salt (a number, a list, "zz", or bytes that are not compressed JSON at all) can only come
    from someone holding a current or retired secret key: it is not one of our links, and it
    never reaches the database lookup, which would raise on it.
    """
    try:
        payload = signing.loads(token, salt=salt)
    except (signing.BadSignature, ValueError, zlib.error, RecursionError):
        # Signed bytes that are not base64 or not JSON (ValueError), not compressed data
        # (zlib.error), or JSON nested deeper than the parser goes (RecursionError).
        return None
    if not isinstance(payload, str):
        return None
    try:
        return uuid.UUID(payload)
    except ValueError:
        return None


def _is_genuine(token: str, salt: str) -> bool:
    """Whether we signed this link, however old it is (a tampered one is not)."""
    return _signed_public_id(token, salt) is not None


def _application_for(token: str, salt: str) -> Application | None:
    public_id = _signed_public_id(token, salt)
    if public_id is None:
        return None
    return Application.objects.filter(public_id=public_id).first()


def application_for_status_token(token: str) -> Application | None:
    return _application_for(token, STATUS_SALT)


def is_genuine_status_token(token: str) -> bool:
    return _is_genuine(token, STATUS_SALT)


def is_genuine_confirm_token(token: str) -> bool:
    return _is_genuine(token, CONFIRM_SALT)


def application_for_confirm_token(token: str) -> Application | None:
    """The application of a live confirmation link. A public application's expired link only
    leads back to an address confirmed in time (a second click, days later): it never
    confirms anything. A staff-entered application's link does not expire."""
    application = _application_for(token, CONFIRM_SALT)
    if application is None or confirmation_expired(application):
        return None
    return application
