from __future__ import annotations

import email.message
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.utils import make_msgid, parseaddr

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.message import sanitize_address
from django.core.validators import validate_email
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# Waits after the 1st, 2nd, ... failed attempt. Five growing steps, then every
# 12 hours while the retry still falls within 3 days of the first attempt
# (68 h 36 min in all); a mail that fails once more is given up as failed.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),
    *[timedelta(hours=12)] * 5,
)


def validate_sendable_address(address: str) -> None:
    """validate_email, and what building the mail needs besides: a domain IDNA can encode.

    Django's validator lets through domains its mail then fails on with a UnicodeError:
    a bidi mark pasted along with the address, a label mixing Hebrew and Latin letters,
    a non-ASCII label too long once encoded. Raises ValidationError (code "invalid").
    """
    validate_email(address)
    try:
        # What Django's mail does with the address, in the To header and at the relay.
        sanitize_address(address, settings.DEFAULT_CHARSET)
    except ValueError as error:  # UnicodeError is a ValueError
        raise ValidationError(validate_email.message, code=validate_email.code) from error


def build_message(to: str, subject: str, body_text: str, body_html: str) -> bytes:
    """The whole message, headers and MIME parts, as the relay receives it (CRLF line ends)."""
    # The sender's domain, not this host's name (Django's default), which may
    # be "localhost" and counts against the mail with spam filters.
    sender_domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2]
    message = EmailMultiAlternatives(
        subject,
        body_text,
        settings.DEFAULT_FROM_EMAIL,
        [to],
        headers={"Message-ID": make_msgid(domain=sender_domain)},
    )
    if body_html:
        message.attach_alternative(body_html, "text/html")
    return message.message().as_bytes(linesep="\r\n")


class _BuiltMIME(email.message.Message):
    """Headers parsed for reading; as_bytes() gives back the built bytes unchanged."""

    built: bytes

    # The signature of Django's SafeMIME classes, which is what its mail backends call.
    def as_bytes(self, unixfrom: bool = False, linesep: str = "\n") -> bytes:
        return self.built.replace(b"\r\n", linesep.encode())


class BuiltEmail(EmailMessage):
    """An outbox mail for Django's mail backends, sent as the bytes built when it was queued."""

    def __init__(self, mail: OutboundEmail, connection=None) -> None:
        super().__init__(
            subject=mail.subject, from_email=settings.DEFAULT_FROM_EMAIL, to=[mail.to], connection=connection
        )
        self.built = bytes(mail.message)

    def message(self) -> _BuiltMIME:
        mime = BytesHeaderParser(_class=_BuiltMIME).parsebytes(self.built)
        mime.built = self.built
        return mime


class OutboundEmailQuerySet(models.QuerySet):
    def due(self, now: datetime) -> OutboundEmailQuerySet:
        """Queued mail whose time has come, and mail whose sender's lease ran out."""
        return self.filter(
            Q(status=OutboundEmail.Status.QUEUED, next_attempt_at__lte=now)
            | Q(status=OutboundEmail.Status.SENDING, lease_expires_at__lte=now)
        )

    def held_by(self, worker: str, mails: list[OutboundEmail]) -> set[int]:
        """The ids of `mails` this worker still holds: erase_application deletes mail a worker
        has claimed and not sent yet, and a lapsed claim may be another worker's now."""
        return set(
            self.filter(
                pk__in=[mail.pk for mail in mails], status=OutboundEmail.Status.SENDING, claimed_by=worker
            ).values_list("pk", flat=True)
        )

    def claim(self, worker: str, limit: int) -> list[OutboundEmail]:
        """Mark up to `limit` due mails as being sent by `worker`, and return them.

        Rows another worker has locked are skipped, so workers on several
        machines share the outbox without sending one mail twice. The UPDATE
        repeats the `due` condition, which keeps this safe on SQLite too,
        where SELECT ... FOR UPDATE does not exist.
        """
        now = timezone.now()
        lease_expires_at = now + timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)
        with transaction.atomic():
            ids = list(
                self.due(now)
                .select_for_update(skip_locked=True)
                .order_by("next_attempt_at", "pk")
                .values_list("pk", flat=True)[:limit]
            )
            self.due(now).filter(pk__in=ids).update(
                status=OutboundEmail.Status.SENDING, claimed_by=worker, lease_expires_at=lease_expires_at
            )
        return list(
            self.filter(pk__in=ids, status=OutboundEmail.Status.SENDING, claimed_by=worker).order_by(
                "next_attempt_at", "pk"
            )
        )

    def retry_now(self) -> int:
        """Queue queued and failed mail for an attempt at once (admin action)."""
        return self.filter(status__in=[OutboundEmail.Status.QUEUED, OutboundEmail.Status.FAILED]).update(
            status=OutboundEmail.Status.QUEUED, next_attempt_at=timezone.now()
        )

    def cancel(self) -> int:
        """Never send these; mail being sent or already sent is left alone."""
        return self.filter(status__in=[OutboundEmail.Status.QUEUED, OutboundEmail.Status.FAILED]).update(
            status=OutboundEmail.Status.CANCELLED
        )


class OutboundEmail(models.Model):
    """One mail to one recipient, written in the same transaction as its cause."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    to = models.EmailField(_("to"), max_length=254)
    subject = models.CharField(_("subject"), max_length=255)
    body_text = models.TextField(_("text body"))
    body_html = models.TextField(_("HTML body"), blank=True)
    # Built once, when queued: every attempt sends the same bytes, Message-ID
    # and Date included, so a receiving server can tell a retry from a new mail.
    message = models.BinaryField(_("message as sent"))
    # Template name, so the admin can tell applicant mail from staff mail.
    template = models.CharField(_("template"), max_length=100)
    status = models.CharField(
        _("status"), max_length=10, choices=Status, default=Status.QUEUED, db_index=True
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), default=timezone.now)
    last_error = models.TextField(_("last error"), blank=True)
    port_used = models.PositiveIntegerField(_("port used"), null=True, blank=True)
    # The worker (host:pid:random) that claimed the mail last, and until when
    # its claim holds; read by OutboundEmailQuerySet.due.
    claimed_by = models.CharField(_("claimed by"), max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    created_at = models.DateTimeField(_("queued at"), auto_now_add=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    objects = OutboundEmailQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        verbose_name = _("outbound e-mail")
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        constraints = [
            # A row made without compose() would send an empty mail.
            models.CheckConstraint(condition=~Q(message=b""), name="outboundemail_message_built"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} → {self.to}"

    @classmethod
    def compose(cls, to: str, subject: str, body_text: str, body_html: str, template: str) -> OutboundEmail:
        """An unsaved mail with its message built."""
        return cls(
            to=to,
            subject=subject,
            body_text=body_text,
            body_html=body_html,
            template=template,
            message=build_message(to, subject, body_text, body_html),
        )

    def as_message(self, connection=None) -> BuiltEmail:
        return BuiltEmail(self, connection)

    def _finish(self, worker: str, **fields) -> bool:
        """Record an attempt's outcome, unless this worker's claim was lost meanwhile.

        Lost also when erase_application deleted the mail while it was being sent:
        with no row left, no outcome brings it back to the queue or keeps it.
        """
        fields |= {"attempts": self.attempts + 1, "lease_expires_at": None}
        updated = OutboundEmail.objects.filter(
            pk=self.pk, status=self.Status.SENDING, claimed_by=worker
        ).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)
        return bool(updated)

    def mark_sent(self, worker: str, port: int | None) -> bool:
        return self._finish(
            worker, status=self.Status.SENT, sent_at=timezone.now(), port_used=port, last_error=""
        )

    def mark_failed(self, worker: str, error: str) -> bool:
        """Give up at once: the relay refused this mail for good."""
        return self._finish(worker, status=self.Status.FAILED, last_error=error)

    def schedule_retry(self, worker: str, error: str) -> bool:
        """Try again after the next wait of RETRY_DELAYS, or give up when none is left."""
        if self.attempts >= len(RETRY_DELAYS):
            return self._finish(worker, status=self.Status.FAILED, last_error=error)
        return self._finish(
            worker,
            status=self.Status.QUEUED,
            next_attempt_at=timezone.now() + RETRY_DELAYS[self.attempts],
            last_error=error,
        )

    def release(self, worker: str) -> bool:
        """Hand an unsent claimed mail back to the outbox, due now, no attempt counted (not an erased one)."""
        return bool(
            OutboundEmail.objects.filter(pk=self.pk, status=self.Status.SENDING, claimed_by=worker).update(
                status=self.Status.QUEUED, lease_expires_at=None
            )
        )
