from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class OutboundEmail(models.Model):
    """One mail to one recipient, written in the same transaction as its cause."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")

    to = models.EmailField(_("to"), max_length=254)
    subject = models.CharField(_("subject"), max_length=255)
    body_text = models.TextField(_("text body"))
    body_html = models.TextField(_("HTML body"), blank=True)
    # Template name, so the admin can tell applicant mail from staff mail.
    template = models.CharField(_("template"), max_length=100)
    status = models.CharField(
        _("status"), max_length=10, choices=Status, default=Status.QUEUED, db_index=True
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), default=timezone.now)
    last_error = models.TextField(_("last error"), blank=True)
    port_used = models.PositiveIntegerField(_("port used"), null=True, blank=True)
    created_at = models.DateTimeField(_("queued at"), auto_now_add=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        verbose_name = _("outbound e-mail")
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.subject} → {self.to}"

    def as_message(self, connection=None) -> EmailMultiAlternatives:
        message = EmailMultiAlternatives(
            subject=self.subject,
            body=self.body_text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[self.to],
            connection=connection,
        )
        if self.body_html:
            message.attach_alternative(self.body_html, "text/html")
        return message

    def deliver(self, connection=None) -> None:
        """Send now through the configured backend and record the result."""
        self.as_message(connection or get_connection()).send()
        self.status = self.Status.SENT
        self.attempts += 1
        self.sent_at = timezone.now()
        self.save(update_fields=["status", "attempts", "sent_at"])
