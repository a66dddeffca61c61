from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from notifications.models import validate_sendable_address
from notifications.outbox import render_email
from notifications.relay import RelayEmailBackend, describe


class Command(BaseCommand):
    help = (
        "Sends one test mail through the SMTP relay now (not through the outbox), shows each port tried "
        "with its outcome and time, and exits 0 only when the relay accepted the mail."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("to", help="Address to send the test mail to.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Connect, start TLS and log in, but send no mail.",
        )

    def handle(self, *args, to: str, dry_run: bool, **options) -> None:
        # Before connecting: an address the mail cannot be built for would fail
        # only after logging in to the relay.
        try:
            validate_sendable_address(to)
        except ValidationError as error:
            raise CommandError(f"{to!r} is not an e-mail address mail can be sent to.") from error
        try:
            connection = RelayEmailBackend()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        subject, body_text, body_html = render_email(
            "test-email", {"site_url": settings.SITE_URL, "sent_at": timezone.now()}
        )
        message = EmailMultiAlternatives(subject, body_text, settings.DEFAULT_FROM_EMAIL, [to])
        message.attach_alternative(body_html, "text/html")
        try:
            connection.open()
            if not dry_run:
                connection.send_messages([message])
        except OSError as error:
            self._show_attempts(connection)
            raise CommandError(f"Not delivered: {describe(error)}") from error
        else:
            self._show_attempts(connection)
            port = connection.port
        finally:
            connection.close()
        if dry_run:
            self.stdout.write(f"Logged in to {connection.host} on port {port}; no mail sent (dry run).")
        else:
            self.stdout.write(self.style.SUCCESS(f"The relay accepted the mail to {to} on port {port}."))

    def _show_attempts(self, connection: RelayEmailBackend) -> None:
        for attempt in connection.attempts:
            self.stdout.write(
                f"{attempt.host}:{attempt.port}  {attempt.outcome}  ({attempt.milliseconds} ms)"
            )
