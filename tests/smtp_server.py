"""A real SMTP server for tests and benchmarks: aiosmtpd on 127.0.0.1.

STARTTLS and AUTH (LOGIN and PLAIN) are required, as on the relay; the
certificate comes from `make_certificates`, trusted through SMTP_CA_FILE.
Each server listens on a port the kernel picks and runs its own event loop
in a thread until `stop()`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class _WithoutLoginDataNotice(logging.Filter):
    """aiosmtpd warns about its own legacy attribute on every login; that says nothing about us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_WithoutLoginDataNotice())

RELAY_USER = "support@rvi.iam-alliance.com"
RELAY_PASSWORD = "relay-password-Zq7!not-for-logs"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what the client trusts (SMTP_CA_FILE)
    certificate: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, self.key)
        return context


def make_certificates(
    directory: Path, name: str = "Test", hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> Certificates:
    """A private CA and a certificate it signed for `hosts` (names or IP addresses)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([_subject_alternative_name(host) for host in hosts]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _subject_alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    over_tls: bool
    login: str


@dataclass
class Recorder:
    """What the server saw, and how it answers.

    `replies` are answered to the next messages instead of 250, in order
    (e.g. "451 4.3.0 try later"); `login_reply`, if set, to every AUTH.
    `hold`, while it returns True, keeps each message waiting before its
    answer (at most `hold_timeout` seconds).
    """

    user: str = RELAY_USER
    password: str = RELAY_PASSWORD
    login_reply: str | None = None
    replies: list[str] = field(default_factory=list)
    delay: float = 0.0
    hold: Callable[[], bool] | None = None
    hold_timeout: float = 30.0
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # mechanism, login, accepted
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    data_started: threading.Event = field(default_factory=threading.Event)

    def authenticate(self, server, session: Session, envelope: Envelope, mechanism: str, auth_data):
        assert isinstance(auth_data, LoginPassword)
        accepted = auth_data.login == self.user.encode() and auth_data.password == self.password.encode()
        self.logins.append((mechanism, auth_data.login.decode(), accepted))
        if self.login_reply:
            return AuthResult(success=False, handled=False, message=self.login_reply)
        if accepted:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    @property
    def accepted_logins(self) -> int:
        return sum(accepted for _, _, accepted in self.logins)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.commands.append("MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        started = time.monotonic()
        while self.hold is not None and self.hold() and time.monotonic() - started < self.hold_timeout:
            await asyncio.sleep(0.01)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.replies:
            return self.replies.pop(0)
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content or b"",
                over_tls=session.ssl is not None,
                login=session.auth_data.login.decode() if session.auth_data else "",
            )
        )
        return "250 2.0.0 OK"


class CountingSMTP(SMTP):
    def connection_made(self, transport) -> None:
        # Called again when STARTTLS wraps the same connection: count once.
        if self._original_transport is None:
            self.event_handler.connections += 1
        super().connection_made(transport)


class SMTPTestServer:
    """An SMTP server on 127.0.0.1 in a thread of its own.

    With `certificates`, STARTTLS and then AUTH are required before MAIL;
    without, it speaks only in clear (offering AUTH all the same), the case a
    client must refuse. `exclude_auth` hides a mechanism ("PLAIN", "LOGIN").
    """

    def __init__(
        self,
        recorder: Recorder,
        certificates: Certificates | None,
        *,
        port: int = 0,
        exclude_auth: tuple[str, ...] = (),
    ) -> None:
        self.recorder = recorder
        self.tls_context = certificates.server_context() if certificates else None
        self.port = port
        self.exclude_auth = exclude_auth
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    def _protocol(self) -> SMTP:
        secure = self.tls_context is not None
        return CountingSMTP(
            self.recorder,
            hostname="localhost",
            tls_context=self.tls_context,
            require_starttls=secure,
            auth_required=secure,
            auth_require_tls=secure,
            auth_exclude_mechanism=self.exclude_auth,
            authenticator=self.recorder.authenticate,
            loop=self.loop,
        )

    def start(self) -> SMTPTestServer:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self._server = self.loop.run_until_complete(
                self.loop.create_server(self._protocol, "127.0.0.1", self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self._server.close()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self._server.wait_closed())
            self.loop.close()

        self._thread = threading.Thread(target=run, name=f"smtp-test-server-{id(self)}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test SMTP server did not start")
        return self

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
