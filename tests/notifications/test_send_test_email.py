"""`manage.py send_test_email <to>`: one mail through the relay, now."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from notifications.models import OutboundEmail

pytestmark = [pytest.mark.django_db, pytest.mark.smtp]

PORT_LINE = re.compile(r"^127\.0\.0\.1:(\d+)  (.+)  \((\d+) ms\)$", re.MULTILINE)


def send_test_email(*arguments: str) -> tuple[str, CommandError | None]:
    """What the command printed, and the error it exited with (None: exit 0)."""
    out = StringIO()
    try:
        call_command("send_test_email", *arguments, stdout=out)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def ports_shown(out: str) -> list[tuple[int, str]]:
    return [(int(port), outcome) for port, outcome, _ in PORT_LINE.findall(out)]


def test_delivers_now_and_shows_each_port_tried(smtp_server, use_relay, closed_port):
    use_relay(closed_port, smtp_server.port)
    out, error = send_test_email("operator@staff.example")

    assert error is None
    assert ports_shown(out) == [(closed_port, "connection refused"), (smtp_server.port, "connected")]
    assert f"The relay accepted the mail to operator@staff.example on port {smtp_server.port}." in out
    [received] = smtp_server.recorder.received
    assert received.rcpt_tos == ["operator@staff.example"]
    assert b"Subject: IaMA RVI test mail" in received.content
    assert b"Content-Type: text/html" in received.content  # the HTML body, as every mail has
    assert not OutboundEmail.objects.exists()  # not through the outbox


def test_fails_with_every_port_shown_when_nothing_was_delivered(use_relay, closed_port, silent_port):
    use_relay(closed_port, silent_port)
    out, error = send_test_email("operator@staff.example")
    assert str(error).startswith("Not delivered: no port of 127.0.0.1 worked")
    [(first, refused), (second, timed_out)] = ports_shown(out)
    assert (first, refused) == (closed_port, "connection refused")
    assert second == silent_port and "timed out" in timed_out
    # The time each port took: the silent one, all of SMTP_TIMEOUT (1 s).
    [_, waited] = [int(milliseconds) for _, _, milliseconds in PORT_LINE.findall(out)]
    assert 900 <= waited < 3000


def test_a_wrong_password_fails_without_showing_the_password(smtp_server, use_relay):
    use_relay(smtp_server.port, password="Wrong-Passw0rd-known-to-this-test")
    out, error = send_test_email("operator@staff.example")
    assert str(error).startswith("Not delivered: 535")
    assert "Wrong-Passw0rd" not in out + str(error)
    assert smtp_server.recorder.received == []


def test_dry_run_logs_in_and_sends_nothing(smtp_server, use_relay):
    use_relay(smtp_server.port)
    out, error = send_test_email("operator@staff.example", "--dry-run")
    assert error is None
    assert f"Logged in to 127.0.0.1 on port {smtp_server.port}; no mail sent (dry run)." in out
    assert smtp_server.recorder.accepted_logins == 1
    assert smtp_server.recorder.received == []


def test_refuses_what_is_not_an_address(use_relay, smtp_server):
    use_relay(smtp_server.port)
    _, error = send_test_email("operator@staff.example\r\nBcc: victim@example.org")
    assert "is not an e-mail address" in str(error)
    assert smtp_server.recorder.connections == 0


def test_refuses_an_address_its_mail_could_not_be_built_for_before_connecting(use_relay, smtp_server):
    # Passes validate_email, but the domain is too long for IDNA once encoded.
    address = "a@" + "ü" * 60 + ".org"
    use_relay(smtp_server.port)
    _, error = send_test_email(address)
    assert str(error) == f"{address!r} is not an e-mail address mail can be sent to."
    assert smtp_server.recorder.connections == 0
    assert smtp_server.recorder.accepted_logins == 0


def test_refuses_without_a_relay_password(use_relay, smtp_server):
    use_relay(smtp_server.port, password="")
    _, error = send_test_email("operator@staff.example")
    assert "SMTP_RELAY_AUTHPW is not set" in str(error)
