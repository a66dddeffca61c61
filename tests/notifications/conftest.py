"""Fixtures for mail tests: real SMTP servers on 127.0.0.1 and the relay settings."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notifications.relay import RelayEmailBackend

RELAY_BACKEND = "notifications.relay.RelayEmailBackend"


def _smtp_server_module():
    return pytest.importorskip(
        "tests.smtp_server", reason="needs aiosmtpd and cryptography (pip install -r requirements-dev.txt)"
    )


@pytest.fixture(autouse=True)
def forget_working_ports(monkeypatch):
    """Each test starts as a fresh process would: no port remembered."""
    monkeypatch.setattr(RelayEmailBackend, "working_port", {})


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    return _smtp_server_module().make_certificates(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture(scope="session")
def other_certificates(tmp_path_factory):
    """Signed by a CA the client does not trust."""
    return _smtp_server_module().make_certificates(tmp_path_factory.mktemp("smtp-other-tls"), name="Other")


@pytest.fixture(scope="session")
def misnamed_certificates(tmp_path_factory):
    """A valid certificate for mail.example.org, not for 127.0.0.1 (trust its own CA to use it)."""
    return _smtp_server_module().make_certificates(
        tmp_path_factory.mktemp("smtp-misnamed-tls"), name="Misnamed", hosts=("mail.example.org",)
    )


@pytest.fixture
def start_smtp_server(certificates) -> Iterator[Callable]:
    """Start SMTP servers; every one is stopped when the test ends.

    start_smtp_server() requires STARTTLS and AUTH; pass tls=False for one
    that speaks only in clear, or certificates=... for another certificate.
    """
    module = _smtp_server_module()
    servers = []

    def start(*, tls: bool = True, certificates_=None, port: int = 0, recorder=None, exclude_auth=()):
        server = module.SMTPTestServer(
            recorder or module.Recorder(),
            (certificates_ or certificates) if tls else None,
            port=port,
            exclude_auth=exclude_auth,
        )
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(start_smtp_server):
    return start_smtp_server()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def scripted_smtp_port() -> Iterator[Callable[..., int]]:
    """A port whose SMTP server says a fixed greeting and fixed replies, then hangs up.

    scripted_smtp_port("554 5.7.1 port blocked by provider") refuses at the
    greeting; scripted_smtp_port("220 ready", starttls="454 4.7.0 TLS not available")
    offers STARTTLS and refuses it. Returns the port; it serves until the test ends.
    """
    listeners: list[tuple[socket.socket, threading.Thread]] = []

    def serve(listener: socket.socket, greeting: str, starttls: str) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            with client, client.makefile("rwb") as stream:
                stream.write(f"{greeting}\r\n".encode())
                stream.flush()
                if not greeting.startswith("220"):
                    continue
                for line in stream:
                    verb = line.split(maxsplit=1)[0].upper() if line.strip() else b""
                    if verb == b"EHLO":
                        reply = "250-localhost\r\n250 STARTTLS"
                    elif verb == b"STARTTLS":
                        reply = starttls
                    elif verb == b"QUIT":
                        reply = "221 bye"
                    else:
                        reply = "503 5.5.1 not in this script"
                    stream.write(f"{reply}\r\n".encode())
                    stream.flush()
                    if verb == b"QUIT":
                        break

    def start(greeting: str, *, starttls: str = "454 4.7.0 TLS not available") -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        thread = threading.Thread(target=serve, args=(listener, greeting, starttls), daemon=True)
        thread.start()
        listeners.append((listener, thread))
        return listener.getsockname()[1]

    yield start
    for listener, thread in listeners:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the thread waits in
        listener.close()
        thread.join(5)


@pytest.fixture
def relay_password() -> str:
    """The password the test servers accept, and `use_relay` configures."""
    return _smtp_server_module().RELAY_PASSWORD


@pytest.fixture
def use_relay(settings, certificates, relay_password) -> Callable:
    """Point the relay settings at local ports, with a 1 s timeout."""

    def configure(*ports: int, password: str | None = None) -> None:
        settings.EMAIL_BACKEND = RELAY_BACKEND
        settings.SMTP_RELAY_HOST = "127.0.0.1"
        settings.SMTP_RELAY_PORTS = list(ports)
        settings.SMTP_RELAY_USER = _smtp_server_module().RELAY_USER
        settings.SMTP_RELAY_AUTHPW = relay_password if password is None else password
        settings.SMTP_TIMEOUT = 1
        settings.SMTP_CA_FILE = str(Path(certificates.ca))

    return configure
