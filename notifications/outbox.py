"""Queueing mail into the outbox (notifications.OutboundEmail).

Mail is rendered from three templates per message under
templates/notifications/: <name>-subject.txt, <name>-body.txt, <name>-body.html.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string

from notifications.models import OutboundEmail

logger = logging.getLogger(__name__)


def render_email(name: str, context: dict) -> tuple[str, str, str]:
    subject = render_to_string(f"notifications/{name}-subject.txt", context)
    # One line only: a newline in a header would let a value inject headers.
    subject = " ".join(subject.split())
    body_text = render_to_string(f"notifications/{name}-body.txt", context)
    body_html = render_to_string(f"notifications/{name}-body.html", context)
    return subject, body_text, body_html


def queue_email(name: str, to: Iterable[str], context: dict) -> list[OutboundEmail]:
    """Queue one mail per recipient, inside the caller's transaction.

    A rolled-back change therefore sends nothing. In DEBUG without a relay
    password the mails are printed to the console once the transaction commits.
    """
    subject, body_text, body_html = render_email(name, context)
    queued = [
        OutboundEmail.objects.create(
            to=address,
            subject=subject,
            body_text=body_text,
            body_html=body_html,
            template=name,
        )
        for address in dict.fromkeys(to)
    ]
    if settings.DEBUG and not settings.SMTP_RELAY_AUTHPW:
        transaction.on_commit(lambda: _print_to_console(queued))
    return queued


def _print_to_console(mails: list[OutboundEmail]) -> None:
    for mail in mails:
        mail.deliver()
        logger.info("Printed queued mail %s to the console (DEBUG, no relay).", mail.pk)
