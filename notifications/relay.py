"""The SMTP relay (SMTP2GO): STARTTLS and AUTH on the first of several ports that works.

Some networks block one port or another, so the relay listens on several.
RelayEmailBackend tries SMTP_RELAY_PORTS in order, starting with the port
that worked last in this process. It moves on to the next port whenever a
port cannot carry a secure connection (refused, timed out, a refusal
greeting such as "554 port blocked", STARTTLS refused or not offered, a
certificate that does not verify, the connection dropped): that is the
port's doing, or the network's in front of it. A refusal of our login is
the relay's verdict on the account and would be the same on every port, so
it stops at once; so do refused senders or recipients, which come later,
in send_messages. Nothing is ever sent, AUTH included, before TLS is up.
"""

from __future__ import annotations

import functools
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass
from typing import ClassVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.message import sanitize_address
from django.core.mail.utils import DNS_NAME
from django.utils.functional import cached_property

from notifications.models import BuiltEmail

logger = logging.getLogger(__name__)


class RelayUnavailable(smtplib.SMTPException):
    """No port of the relay could carry a secure, authenticated connection."""


@dataclass(frozen=True)
class Attempt:
    host: str
    port: int
    outcome: str
    milliseconds: int
    ok: bool


def reply_code(error: BaseException) -> int | None:
    """The SMTP reply code behind an error, if the server gave one."""
    if isinstance(error, smtplib.SMTPResponseException):
        return error.smtp_code
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return max(code for code, _ in error.recipients.values())
    return None


# Every outbox mail has the same sender: its envelope address is worked out
# once, not once a mail (parsing it cost a tenth of the worker's time per batched mail).
_envelope_sender = functools.lru_cache(maxsize=4)(sanitize_address)


def describe(error: BaseException) -> str:
    """One line for logs, `last_error` and the operator; never the relay password."""
    code = reply_code(error)
    if isinstance(error, smtplib.SMTPResponseException):
        reply = error.smtp_error
        text = f"{code} {reply.decode(errors='replace') if isinstance(reply, bytes) else reply}"
    elif isinstance(error, smtplib.SMTPRecipientsRefused):
        text = "recipient refused: " + "; ".join(
            f"{code} {reply.decode(errors='replace')}" for code, reply in error.recipients.values()
        )
    elif isinstance(error, ssl.SSLCertVerificationError):
        text = f"TLS failed: {error.verify_message}"
    elif isinstance(error, ssl.SSLError):
        text = f"TLS failed: {error.reason or error}"
    elif isinstance(error, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(error, TimeoutError):
        text = "timed out"
    else:
        text = str(error) or type(error).__name__
    text = " ".join(text.split())
    # A server may echo what it was sent; the password must not travel on.
    if settings.SMTP_RELAY_AUTHPW:
        text = text.replace(settings.SMTP_RELAY_AUTHPW, "********")
    return text


class RelayEmailBackend(EmailBackend):
    """Django's SMTP backend, opened on the first relay port that works."""

    # Per relay host, the port of the last good connection in this process.
    working_port: ClassVar[dict[str, int]] = {}

    def __init__(self, fail_silently: bool = False, **kwargs) -> None:
        if not settings.SMTP_RELAY_AUTHPW:
            raise ImproperlyConfigured("SMTP_RELAY_AUTHPW is not set: the relay cannot be used without it.")
        super().__init__(
            host=settings.SMTP_RELAY_HOST,
            username=settings.SMTP_RELAY_USER,
            password=settings.SMTP_RELAY_AUTHPW,
            use_tls=True,
            use_ssl=False,
            timeout=settings.SMTP_TIMEOUT,
            fail_silently=fail_silently,
            **kwargs,
        )
        self.ports: list[int] = list(settings.SMTP_RELAY_PORTS)
        # Set by open() to the port in use; the outbox records it per mail.
        self.port: int | None = None
        self.attempts: list[Attempt] = []

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        # Verifies the certificate and the host name; SMTP_CA_FILE replaces
        # the system's trust store for a relay with a private certificate.
        return ssl.create_default_context(cafile=settings.SMTP_CA_FILE or None)

    def ports_in_order(self) -> list[int]:
        remembered = self.working_port.get(self.host)
        if remembered in self.ports:
            return [remembered, *(port for port in self.ports if port != remembered)]
        return list(self.ports)

    def open(self) -> bool | None:
        if self.connection:
            return False
        failures: list[str] = []
        for port in self.ports_in_order():
            started = time.monotonic()
            connection: smtplib.SMTP | None = None
            try:
                connection = smtplib.SMTP(
                    self.host, port, local_hostname=DNS_NAME.get_fqdn(), timeout=self.timeout
                )
                connection.starttls(context=self.ssl_context)
                connection.login(self.username, self.password)
            except smtplib.SMTPAuthenticationError as error:
                # The relay refused our login: the same on every port, and trying
                # each would only hammer it with a wrong password. The outbox retries later.
                self._record(port, started, describe(error), ok=False)
                self._discard(connection)
                if self.fail_silently:
                    return None
                raise
            except OSError as error:
                # This port's doing (or the network's in front of it): a refusal
                # greeting (SMTPConnectError), STARTTLS refused or not offered, a TLS
                # handshake that failed, a dropped connection, a timeout. Try the next.
                failures.append(f"{port}: {describe(error)}")
                self._record(port, started, describe(error), ok=False)
                self._discard(connection)
                continue
            self._record(port, started, "connected", ok=True)
            self.connection, self.port = connection, port
            self.working_port[self.host] = port
            return True
        if self.fail_silently:
            return None
        raise RelayUnavailable(f"no port of {self.host} worked ({'; '.join(failures)})")

    def close(self) -> None:
        try:
            super().close()
        except OSError as error:
            # The mail went through before; a failed QUIT changes nothing.
            logger.info("SMTP %s:%s closing failed: %s", self.host, self.port, describe(error))
        self.port = None

    def _send(self, email_message) -> bool:
        """Send an outbox mail as the bytes built when it was queued; any other mail as Django does.

        Django's own _send would parse the built headers back into a message
        only to turn them into the same bytes, and parse the sender again for
        every mail; the envelope is what it would be.
        """
        if not isinstance(email_message, BuiltEmail):
            return super()._send(email_message)
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        recipients = [sanitize_address(address, encoding) for address in email_message.recipients()]
        try:
            self.connection.sendmail(
                _envelope_sender(email_message.from_email, encoding), recipients, email_message.built
            )
        except smtplib.SMTPException:
            if not self.fail_silently:
                raise
            return False
        return True

    def _record(self, port: int, started: float, outcome: str, ok: bool) -> None:
        attempt = Attempt(self.host, port, outcome, round((time.monotonic() - started) * 1000), ok)
        self.attempts.append(attempt)
        logger.log(
            logging.INFO if ok else logging.WARNING,
            "SMTP attempt host=%s port=%s outcome=%s ms=%d",
            attempt.host,
            attempt.port,
            attempt.outcome,
            attempt.milliseconds,
        )

    @staticmethod
    def _discard(connection: smtplib.SMTP | None) -> None:
        if connection is not None:
            connection.close()
