"""The outbox (notifications.OutboundEmail): queueing mail, and sending it.

Mail is rendered from three templates per message under
templates/notifications/: <name>-subject.txt, <name>-body.txt, <name>-body.html.
`queue_email` writes it inside the caller's transaction; the worker
(`manage.py send_outbox`) sends it with `send_batch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.mail import get_connection
from django.template.loader import render_to_string
from django.utils import timezone

from notifications.models import OutboundEmail, validate_sendable_address
from notifications.relay import describe, reply_code

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

    A rolled-back change therefore sends nothing. An address that is not one
    (a line break in it, say) or that mail cannot carry (a domain IDNA cannot
    encode) raises ValidationError before anything is written.
    """
    addresses = list(dict.fromkeys(to))
    for address in addresses:
        validate_sendable_address(address)
    subject, body_text, body_html = render_email(name, context)
    mails = [
        OutboundEmail.compose(address, subject, body_text, body_html, template=name) for address in addresses
    ]
    for mail in mails:
        mail.save()
    return mails


@dataclass
class Tally:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    # Claimed but handed back unsent (stopping, lease running out, lost connection).
    released: int = 0

    def __iadd__(self, other: Tally) -> Tally:
        self.sent += other.sent
        self.retrying += other.retrying
        self.failed += other.failed
        self.released += other.released
        return self

    def __str__(self) -> str:
        return (
            f"{self.sent} sent, {self.retrying} to retry later, {self.failed} failed, "
            f"{self.released} handed back"
        )


# How old the worker's knowledge of which claimed mails it still holds may be when it sends
# one: erasure deletes claimed mail, and no mail is sent more than this after its erasure.
HELD_CHECK_SECONDS = 1.0


def _lease_running_out(mail: OutboundEmail) -> bool:
    # Room for one more mail: MAIL, RCPT, DATA, the message, RSET, each
    # allowed SMTP_TIMEOUT. Past that another worker may take the mail over.
    margin = timedelta(seconds=5 * settings.SMTP_TIMEOUT)
    return timezone.now() >= mail.lease_expires_at - margin


def send_batch(worker: str, size: int, should_stop: Callable[[], bool] = lambda: False) -> Tally | None:
    """Claim up to `size` due mails and send them over one connection.

    Returns None when no mail was due. Each mail ends sent, queued for a
    retry (connection failures, 4xx), failed (5xx, an impossible address) or,
    when the worker stops, its lease runs short or the connection is lost,
    handed back unsent. A mail erase_application deleted after the claim is
    not sent (the worker checks which mails it still holds once a second);
    one it deleted while it was being sent has no row left to record the
    outcome in: it is only logged.
    """
    mails = OutboundEmail.objects.claim(worker, size)
    if not mails:
        return None
    tally = Tally()
    connection = get_connection()
    try:
        connection.open()
    except OSError as error:
        # The mails are not at fault (relay down, wrong password): all retry.
        reason = describe(error)
        for mail in mails:
            _retry(mail, worker, reason, tally)
        return tally
    held, checked_at = {mail.pk for mail in mails}, time.monotonic()
    try:
        for index, mail in enumerate(mails):
            if should_stop() or _lease_running_out(mail):
                tally.released += sum(rest.release(worker) for rest in mails[index:])
                break
            if time.monotonic() - checked_at >= HELD_CHECK_SECONDS:
                # One query a second, not one a mail: a batch goes out at hundreds a second.
                held, checked_at = OutboundEmail.objects.held_by(worker, mails[index:]), time.monotonic()
            if mail.pk not in held:
                _not_sent(mail)
                continue
            try:
                mail.as_message(connection).send()
            except ValueError as error:
                # Django's refusal of a header with a line break, a bad address.
                _fail(mail, worker, f"not sendable: {error}", tally)
            except OSError as error:
                code = reply_code(error)
                if code is not None and 500 <= code < 600:
                    _fail(mail, worker, describe(error), tally)
                    continue
                _retry(mail, worker, describe(error), tally)
                # No reply code: the connection broke. 421: the relay is closing it,
                # and smtplib has already hung up. Either way the next mail would
                # fail unsent and be charged an attempt; the rest wait for the next batch.
                if code is None or code == 421:
                    tally.released += sum(rest.release(worker) for rest in mails[index + 1 :])
                    break
            else:
                # The relay tells its port; console and test backends have none.
                port = getattr(connection, "port", None)
                if mail.mark_sent(worker, port):
                    tally.sent += 1
                    logger.info("Mail %s sent%s.", mail.pk, f" on port {port}" if port else "")
                else:
                    _unrecorded(mail, "delivery")
    finally:
        connection.close()
    return tally


def _not_sent(mail: OutboundEmail) -> None:
    if OutboundEmail.objects.filter(pk=mail.pk).exists():
        logger.warning(
            "Mail %s: this worker's claim lapsed before it was sent; it is not sent here.", mail.pk
        )
    else:
        logger.info("Mail %s was erased before it was sent.", mail.pk)


def _unrecorded(mail: OutboundEmail, outcome: str) -> None:
    """Log an attempt's outcome ("delivery", "failure") that this worker could not record."""
    if OutboundEmail.objects.filter(pk=mail.pk).exists():
        logger.warning("Mail %s: claim lapsed before its %s could be recorded.", mail.pk, outcome)
    else:
        # erase_application deletes mail being sent too (the admin cannot delete mail): with
        # no row left, the attempt is neither retried nor kept, whatever the relay said. The
        # relay's reply is not logged, as it may name the erased person's address.
        logger.info("Mail %s was erased while being sent; its %s is not recorded.", mail.pk, outcome)


def _retry(mail: OutboundEmail, worker: str, reason: str, tally: Tally) -> None:
    if not mail.schedule_retry(worker, reason):
        _unrecorded(mail, "failure")
    elif mail.status == OutboundEmail.Status.FAILED:
        tally.failed += 1
        logger.error("Mail %s failed after %s attempts: %s", mail.pk, mail.attempts, reason)
    else:
        tally.retrying += 1
        logger.warning("Mail %s not sent (%s); next attempt at %s.", mail.pk, reason, mail.next_attempt_at)


def _fail(mail: OutboundEmail, worker: str, reason: str, tally: Tally) -> None:
    if mail.mark_failed(worker, reason):
        tally.failed += 1
        logger.error("Mail %s failed for good: %s", mail.pk, reason)
    else:
        _unrecorded(mail, "failure")


def send_due(worker: str, size: int, should_stop: Callable[[], bool] = lambda: False) -> Tally:
    """Send batches until no mail is due or the worker is asked to stop."""
    tally = Tally()
    while not should_stop():
        batch = send_batch(worker, size, should_stop)
        if batch is None:
            break
        tally += batch
        if batch.released and not (batch.sent or batch.retrying or batch.failed):
            # Nothing moved (stopping, or the lease ran short): no point in spinning.
            break
    return tally
