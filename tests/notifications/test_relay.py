"""The relay backend against a real SMTP server (aiosmtpd, STARTTLS and AUTH required)."""

from __future__ import annotations

import logging
import re
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from notifications.relay import RelayEmailBackend
from tests.factories import make_application

pytestmark = [pytest.mark.django_db, pytest.mark.smtp]

ATTEMPT_LOG = re.compile(r"^SMTP attempt host=127\.0\.0\.1 port=(\d+) outcome=(.+) ms=(\d+)$")


def queue_received_mail() -> OutboundEmail:
    application = make_application()
    [mail] = queue_email("application-received", [application.email], {"application": application})
    return mail


def send_outbox() -> None:
    call_command("send_outbox", "--once")


def attempts_logged(caplog) -> list[tuple[int, str]]:
    found = []
    for record in caplog.records:
        if match := ATTEMPT_LOG.match(record.getMessage()):
            found.append((int(match[1]), match[2]))
    return found


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_mail_is_delivered_on_the_first_port_over_tls_after_login(
    start_smtp_server, use_relay, relay_password, mechanism, caplog
):
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    server = start_smtp_server(exclude_auth=(other,))
    use_relay(server.port)
    mail = queue_received_mail()

    with caplog.at_level(logging.DEBUG):
        send_outbox()

    [received] = server.recorder.received
    assert received.over_tls
    assert received.login == "support@rvi.iam-alliance.com"
    assert received.rcpt_tos == [mail.to]
    assert received.mail_from == "support@rvi.iam-alliance.com"
    assert b"From: IaMA RVI Support <support@rvi.iam-alliance.com>" in received.content
    assert [(used, login) for used, login, _ in server.recorder.logins] == [(mechanism, received.login)]
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.port_used == server.port
    assert mail.attempts == 1
    assert mail.sent_at is not None
    assert f"SMTP attempt host=127.0.0.1 port={server.port} outcome=connected ms=" in caplog.text
    assert relay_password not in caplog.text


def test_an_outbox_mail_reaches_the_relay_as_built_with_its_domain_in_punycode(smtp_server, use_relay):
    use_relay(smtp_server.port)
    application = make_application(email="alex@bücher.example")
    [mail] = queue_email("application-received", [application.email], {"application": application})

    send_outbox()

    [received] = smtp_server.recorder.received
    assert received.mail_from == "support@rvi.iam-alliance.com"
    assert received.rcpt_tos == ["alex@xn--bcher-kva.example"]
    assert received.content.rstrip(b"\r\n") == bytes(mail.message).rstrip(b"\r\n")


def test_a_refused_first_port_falls_back_to_the_second(smtp_server, use_relay, closed_port, caplog):
    use_relay(closed_port, smtp_server.port)
    mail = queue_received_mail()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    assert len(smtp_server.recorder.received) == 1
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.port_used == smtp_server.port
    assert attempts_logged(caplog) == [(closed_port, "connection refused"), (smtp_server.port, "connected")]


def test_a_silent_first_port_times_out_and_the_next_delivers_within_ports_times_timeout(
    smtp_server, use_relay, silent_port, caplog
):
    use_relay(silent_port, smtp_server.port)  # SMTP_TIMEOUT is 1 s
    mail = queue_received_mail()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    elapsed = time.monotonic() - started
    assert len(smtp_server.recorder.received) == 1
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.port_used == smtp_server.port
    assert 1 <= elapsed < 2 * 1 + 1  # two ports x 1 s, and room for the work itself
    [(port, outcome), second] = attempts_logged(caplog)
    assert port == silent_port and "timed out" in outcome
    assert second == (smtp_server.port, "connected")


def test_a_server_without_starttls_gets_no_login_and_no_mail(start_smtp_server, use_relay):
    plain = start_smtp_server(tls=False)
    use_relay(plain.port)
    mail = queue_received_mail()

    with pytest.raises(CommandError):
        send_outbox()

    assert plain.recorder.connections == 1
    assert plain.recorder.logins == []
    assert plain.recorder.commands == []
    assert plain.recorder.received == []
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert "STARTTLS" in mail.last_error


@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        # A refusal greeting: a provider blocking the port.
        ({"greeting": "554 5.7.1 port blocked by provider"}, "554 5.7.1 port blocked by provider"),
        # STARTTLS refused: no login is sent without TLS.
        (
            {
                "greeting": "220 relay ESMTP",
                "starttls": "454 4.7.0 TLS not available due to temporary reason",
            },
            "454 4.7.0 TLS not available due to temporary reason",
        ),
    ],
    ids=["refusal greeting", "starttls refused"],
)
def test_a_port_that_refuses_is_a_failed_attempt_and_the_next_port_delivers(
    smtp_server, use_relay, scripted_smtp_port, caplog, script, refusal
):
    refusing = scripted_smtp_port(**script)
    use_relay(refusing, smtp_server.port)
    mail = queue_received_mail()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    [received] = smtp_server.recorder.received
    assert received.over_tls
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.port_used == smtp_server.port
    assert attempts_logged(caplog) == [(refusing, refusal), (smtp_server.port, "connected")]


def test_a_port_that_does_not_offer_starttls_gets_no_login_and_the_next_port_delivers(
    start_smtp_server, use_relay, caplog
):
    plain, secure = start_smtp_server(tls=False), start_smtp_server()
    use_relay(plain.port, secure.port)
    mail = queue_received_mail()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    assert plain.recorder.logins == [] and plain.recorder.commands == []
    [received] = secure.recorder.received
    assert received.over_tls
    mail.refresh_from_db()
    assert mail.port_used == secure.port
    [(port, outcome), second] = attempts_logged(caplog)
    assert port == plain.port and "STARTTLS" in outcome
    assert second == (secure.port, "connected")


def test_when_every_port_refuses_its_greeting_the_mail_waits_for_a_retry_with_each_port_named(
    use_relay, scripted_smtp_port
):
    first = scripted_smtp_port("554 5.7.1 port blocked by provider")
    second = scripted_smtp_port("421 4.3.2 service not available")
    use_relay(first, second)
    mail = queue_received_mail()

    with pytest.raises(CommandError):
        send_outbox()

    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.attempts == 1
    assert f"{first}: 554 5.7.1 port blocked by provider" in mail.last_error
    assert f"{second}: 421 4.3.2 service not available" in mail.last_error


def test_a_wrong_password_after_a_blocked_port_still_stops_before_the_remaining_ports(
    start_smtp_server, use_relay, scripted_smtp_port, caplog
):
    blocked = scripted_smtp_port("554 5.7.1 port blocked by provider")
    first, second = start_smtp_server(), start_smtp_server()
    use_relay(blocked, first.port, second.port, password="Wrong-Passw0rd-known-to-this-test")
    mail = queue_received_mail()

    with caplog.at_level(logging.INFO, logger="notifications.relay"), pytest.raises(CommandError):
        send_outbox()

    assert first.recorder.logins and first.recorder.accepted_logins == 0
    assert second.recorder.connections == 0  # a 535 would be the same there
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.last_error.startswith("535")
    [(port, _), (port_refusing_login, outcome)] = attempts_logged(caplog)
    assert (port, port_refusing_login) == (blocked, first.port)
    assert outcome.startswith("535")


def test_a_certificate_that_does_not_verify_is_a_failed_attempt_and_the_next_port_delivers(
    start_smtp_server, use_relay, other_certificates, caplog
):
    untrusted = start_smtp_server(certificates_=other_certificates)
    trusted = start_smtp_server()
    use_relay(untrusted.port, trusted.port)
    mail = queue_received_mail()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    assert untrusted.recorder.logins == [] and untrusted.recorder.received == []
    assert len(trusted.recorder.received) == 1
    mail.refresh_from_db()
    assert mail.port_used == trusted.port
    [(port, outcome), _] = attempts_logged(caplog)
    assert port == untrusted.port and outcome.startswith("TLS failed:")


def test_a_certificate_for_another_host_name_gets_no_login_and_no_mail(
    start_smtp_server, use_relay, misnamed_certificates, settings
):
    """Signed by a CA we trust, but not for the relay's host: anyone's valid certificate would do."""
    misnamed = start_smtp_server(certificates_=misnamed_certificates)
    use_relay(misnamed.port)
    settings.SMTP_CA_FILE = str(misnamed_certificates.ca)
    mail = queue_received_mail()

    with pytest.raises(CommandError):
        send_outbox()

    assert misnamed.recorder.logins == [] and misnamed.recorder.received == []
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.last_error.startswith(
        f"no port of 127.0.0.1 worked ({misnamed.port}: TLS failed: IP address mismatch"
    )


def test_a_wrong_password_stops_at_once_is_recorded_and_is_never_logged(
    start_smtp_server, use_relay, caplog, capsys
):
    first, second = start_smtp_server(), start_smtp_server()
    wrong = "Wrong-Passw0rd-known-to-this-test"
    use_relay(first.port, second.port, password=wrong)
    mail = queue_received_mail()

    with caplog.at_level(logging.DEBUG), pytest.raises(CommandError):
        send_outbox()

    assert first.recorder.logins and not any(accepted for *_, accepted in first.recorder.logins)
    assert second.recorder.connections == 0  # no fallback after a 535
    assert first.recorder.received == []
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.attempts == 1
    assert mail.last_error.startswith("535")
    printed = capsys.readouterr()
    everything = caplog.text + printed.out + printed.err + mail.last_error
    assert wrong not in everything
    assert "535" in caplog.text


def test_a_temporary_refusal_at_login_stops_there_and_the_mail_waits_for_a_retry(
    start_smtp_server, use_relay
):
    first, second = start_smtp_server(), start_smtp_server()
    first.recorder.login_reply = "454 4.7.0 Temporary authentication failure"
    use_relay(first.port, second.port)
    mail = queue_received_mail()

    with pytest.raises(CommandError):
        send_outbox()

    assert second.recorder.connections == 0
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.last_error == "454 4.7.0 Temporary authentication failure"


def test_the_port_that_worked_is_tried_first_next_time(smtp_server, use_relay, silent_port, caplog):
    use_relay(silent_port, smtp_server.port)
    queue_received_mail()
    send_outbox()
    queue_received_mail()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    assert attempts_logged(caplog) == [(smtp_server.port, "connected")]  # not the silent port again
    assert len(smtp_server.recorder.received) == 2


def test_a_remembered_port_that_stops_working_is_tried_once_then_the_others_in_order(
    start_smtp_server, use_relay, closed_port, caplog
):
    remembered, last = start_smtp_server(), start_smtp_server()
    use_relay(closed_port, remembered.port, last.port)
    queue_received_mail()
    send_outbox()
    remembered.stop()
    queue_received_mail()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        send_outbox()
    assert attempts_logged(caplog) == [
        (remembered.port, "connection refused"),
        (closed_port, "connection refused"),
        (last.port, "connected"),
    ]
    assert len(last.recorder.received) == 1


def test_every_attempt_is_logged_with_host_port_outcome_and_milliseconds(
    smtp_server, use_relay, closed_port, caplog
):
    use_relay(closed_port, smtp_server.port)
    with caplog.at_level(logging.INFO, logger="notifications.relay"):
        connection = RelayEmailBackend()
        connection.open()
        connection.close()
    records = [record for record in caplog.records if record.name == "notifications.relay"]
    assert all(ATTEMPT_LOG.match(record.getMessage()) for record in records)
    # A port that failed is a warning: seen with LOG_LEVEL=WARNING too.
    assert [record.levelname for record in records] == ["WARNING", "INFO"]
    assert [(attempt.port, attempt.ok) for attempt in connection.attempts] == [
        (closed_port, False),
        (smtp_server.port, True),
    ]
    assert all(attempt.milliseconds >= 0 for attempt in connection.attempts)


def test_the_relay_is_not_used_without_a_password(use_relay, smtp_server):
    use_relay(smtp_server.port, password="")
    with pytest.raises(Exception, match="SMTP_RELAY_AUTHPW is not set"):
        RelayEmailBackend()
