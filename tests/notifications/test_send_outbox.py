"""The outbox worker (`manage.py send_outbox`) in this process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core import mail as django_mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from notifications import outbox
from notifications.management.commands import send_outbox
from notifications.management.commands.send_outbox import EXIT_CONFIGURATION_ERROR
from notifications.models import RETRY_DELAYS, OutboundEmail
from notifications.outbox import Tally, queue_email, send_batch
from tests.factories import make_application

pytestmark = pytest.mark.django_db


def queue_mails(count: int) -> list[OutboundEmail]:
    application = make_application()
    return queue_email(
        "staff-new-application",
        [f"staff{number}@staff.example" for number in range(count)],
        {"application": application, "admin_url": "https://rvi.example.org/admin/"},
    )


def run_worker(*options: str) -> str:
    out = StringIO()
    call_command("send_outbox", *(options or ["--once"]), stdout=out)
    return out.getvalue()


def outbox_log(caplog) -> list[tuple[str, str]]:
    """What the worker logged about each mail: (level, message)."""
    return [
        (record.levelname, record.getMessage()) for record in caplog.records if record.name == outbox.__name__
    ]


def a_while_later() -> None:
    """Make every waiting mail due, as if its retry time had come."""
    OutboundEmail.objects.filter(status=OutboundEmail.Status.QUEUED).update(next_attempt_at=timezone.now())


def test_in_debug_without_relay_password_the_worker_prints_mail_to_the_console(settings, capsys):
    settings.DEBUG = True
    settings.SMTP_RELAY_AUTHPW = ""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    application = make_application()
    [queued] = queue_email("application-received", [application.email], {"application": application})

    out = run_worker()

    assert (
        f"Subject: Please confirm your e-mail address for application {application.reference}"
        in capsys.readouterr().out
    )
    assert "Outbox: 1 sent, 0 to retry later, 0 failed, 0 handed back." in out
    queued.refresh_from_db()
    assert queued.status == OutboundEmail.Status.SENT
    assert queued.sent_at is not None
    assert queued.port_used is None


def test_without_relay_password_in_production_the_worker_refuses_and_mail_stays_queued(settings):
    settings.EMAIL_BACKEND = "notifications.relay.RelayEmailBackend"
    settings.SMTP_RELAY_AUTHPW = ""
    queue_mails(1)
    with pytest.raises(CommandError, match="SMTP_RELAY_AUTHPW is not set"):
        run_worker()
    assert OutboundEmail.objects.get().status == OutboundEmail.Status.QUEUED


def test_the_loop_without_relay_password_exits_once_with_the_status_systemd_does_not_restart(tmp_path):
    """rvi-mail.service has RestartPreventExitStatus=78: no restart every 5 s for ever."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SMTP_RELAY_AUTHPW": "",
    }
    worker = subprocess.run(  # noqa: S603 - our own manage.py
        [sys.executable, "manage.py", "send_outbox", "--loop"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == EXIT_CONFIGURATION_ERROR == 78
    assert worker.stdout == ""
    assert worker.stderr.splitlines() == [
        "CommandError: SMTP_RELAY_AUTHPW is not set: the relay cannot be used without it. "
        "Mail stays queued; set it in the environment file, then start the worker again."
    ]


def test_dry_run_counts_due_mail_and_sends_nothing():
    queue_mails(3)
    assert "3 mails are due; none was sent (dry run)." in run_worker("--dry-run")
    assert django_mail.outbox == []
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {"queued"}


def test_dry_run_counts_only_what_a_run_would_send_now():
    later, much_later, sent, abandoned, due = queue_mails(5)
    in_a_while = timezone.now() + timedelta(minutes=5)
    OutboundEmail.objects.filter(pk__in=[later.pk, much_later.pk]).update(next_attempt_at=in_a_while)
    OutboundEmail.objects.filter(pk=sent.pk).update(status=OutboundEmail.Status.SENT)
    # Claimed by a worker that died: due again once its lease ran out.
    OutboundEmail.objects.filter(pk=abandoned.pk).update(
        status=OutboundEmail.Status.SENDING, claimed_by="dead-worker", lease_expires_at=timezone.now()
    )
    assert "2 mails are due; none was sent (dry run)." in run_worker("--dry-run")


@pytest.mark.parametrize("size", ["0", "10001", "99999999999999999999"])
def test_a_batch_size_outside_one_to_ten_thousand_is_refused_and_mail_stays_queued(size):
    """0 would claim nothing and report a clean run; one too large for the database's
    LIMIT failed every poll of --loop with a traceback."""
    queue_mails(1)
    with pytest.raises(CommandError) as refused:
        run_worker("--once", "--batch-size", size)
    assert (
        str(refused.value)
        == f"--batch-size must be between 1 and 10,000 (default: OUTBOX_BATCH_SIZE), not {size}."
    )
    assert django_mail.outbox == []
    assert OutboundEmail.objects.get().status == OutboundEmail.Status.QUEUED


def test_mail_not_yet_due_or_cancelled_or_sent_is_left_alone():
    later, cancelled, sent, due = queue_mails(4)
    OutboundEmail.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    OutboundEmail.objects.filter(pk=cancelled.pk).cancel()
    OutboundEmail.objects.filter(pk=sent.pk).update(status=OutboundEmail.Status.SENT)
    run_worker()
    assert [message.to for message in django_mail.outbox] == [[due.to]]


def test_a_mail_of_a_killed_worker_is_sent_again_only_after_its_lease_expires():
    [mail] = queue_mails(1)
    [claimed] = OutboundEmail.objects.claim("dead-worker", 10)  # then the worker dies
    assert claimed.status == OutboundEmail.Status.SENDING

    run_worker()
    assert django_mail.outbox == []  # the lease still holds

    OutboundEmail.objects.filter(pk=mail.pk).update(lease_expires_at=timezone.now())
    run_worker()
    assert len(django_mail.outbox) == 1
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.claimed_by != "dead-worker"


def test_the_dead_worker_cannot_record_an_outcome_after_another_took_over():
    [mail] = queue_mails(1)
    [stale] = OutboundEmail.objects.claim("slow-worker", 10)
    OutboundEmail.objects.filter(pk=mail.pk).update(lease_expires_at=timezone.now())
    run_worker()
    assert stale.mark_failed("slow-worker", "too late") is False
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT


def test_a_worker_whose_claim_lapsed_cannot_hand_back_mail_another_worker_is_sending():
    """A stalled worker that wakes with its lease run out hands back what it still holds, and only that."""
    [mail] = queue_mails(1)
    [stale] = OutboundEmail.objects.claim("slow-worker", 10)
    OutboundEmail.objects.filter(pk=mail.pk).update(lease_expires_at=timezone.now())
    [taken] = OutboundEmail.objects.claim("worker-2", 10)

    assert stale.release("slow-worker") is False
    mail.refresh_from_db()
    assert (mail.status, mail.claimed_by) == (OutboundEmail.Status.SENDING, "worker-2")
    # Nobody else may claim it while worker-2's lease holds: it is not sent twice.
    assert OutboundEmail.objects.claim("worker-3", 10) == []
    assert taken.mark_sent("worker-2", None) is True


@pytest.mark.parametrize(
    "record",
    [
        lambda mail: mail.mark_sent("slow-worker", 2525),
        lambda mail: mail.schedule_retry("slow-worker", "451 4.3.0 Try again later"),
        lambda mail: mail.mark_failed("slow-worker", "550 5.1.1 No such mailbox"),
    ],
    ids=["sent", "retry", "failed"],
)
def test_a_worker_whose_claim_lapsed_cannot_record_an_outcome_while_another_worker_sends_the_mail(record):
    """Its outcome would end or requeue the mail under worker-2, which may then send it again."""
    [mail] = queue_mails(1)
    [stale] = OutboundEmail.objects.claim("slow-worker", 10)
    OutboundEmail.objects.filter(pk=mail.pk).update(lease_expires_at=timezone.now())
    OutboundEmail.objects.claim("worker-2", 10)

    assert record(stale) is False
    mail.refresh_from_db()
    assert (mail.status, mail.claimed_by, mail.attempts) == (OutboundEmail.Status.SENDING, "worker-2", 0)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_claiming_while_another_holds_its_claim_open_takes_other_mails_at_once():
    """Workers on several machines share the outbox: locked rows are skipped, not waited for."""
    queue_mails(4)
    first: list[OutboundEmail] = []
    claimed, finish = threading.Event(), threading.Event()

    def first_worker() -> None:
        try:
            with transaction.atomic():  # its row locks are held until `finish`
                first.extend(OutboundEmail.objects.claim("worker-1", 2))
                claimed.set()
                finish.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=first_worker)
    thread.start()
    try:
        assert claimed.wait(10)
        started = time.monotonic()
        second = OutboundEmail.objects.claim("worker-2", 2)
        waited = time.monotonic() - started
    finally:
        finish.set()
        thread.join(15)

    assert len(first) == len(second) == 2
    assert {mail.pk for mail in first}.isdisjoint(mail.pk for mail in second)
    assert waited < 5


def test_the_longest_waiting_mail_is_claimed_first():
    """A backlog larger than a batch (after a relay outage) goes out oldest first."""
    newest, oldest, middle = queue_mails(3)
    now = timezone.now()
    for mail, waited in ((newest, 1), (oldest, 30), (middle, 10)):
        OutboundEmail.objects.filter(pk=mail.pk).update(next_attempt_at=now - timedelta(minutes=waited))
    claimed = OutboundEmail.objects.claim("worker-1", 2)
    assert [mail.pk for mail in claimed] == [oldest.pk, middle.pk]


def test_a_worker_whose_lease_runs_short_hands_its_mail_back_unsent(settings):
    # Too short for even one mail: 5 x SMTP_TIMEOUT is kept in hand.
    settings.OUTBOX_LEASE_SECONDS = 4
    settings.SMTP_TIMEOUT = 1
    queue_mails(3)
    out = run_worker()
    assert "Outbox: 0 sent, 0 to retry later, 0 failed, 3 handed back." in out
    assert django_mail.outbox == []
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {OutboundEmail.Status.QUEUED}
    assert set(OutboundEmail.objects.values_list("attempts", flat=True)) == {0}


def test_a_mail_another_worker_took_over_while_this_one_was_stuck_is_not_sent_twice(monkeypatch, caplog):
    # Look at which mails this worker holds before every mail, not once a second.
    monkeypatch.setattr(outbox, "HELD_CHECK_SECONDS", 0)
    first, second = queue_mails(2)
    real_send = LocmemBackend.send_messages

    def stuck_while_another_worker_takes_over(self, messages):
        if not OutboundEmail.objects.filter(claimed_by="worker-2").exists():
            # Sending the first mail took so long that the lease on the second ran out,
            # and another worker claimed it.
            OutboundEmail.objects.filter(pk=second.pk).update(lease_expires_at=timezone.now())
            assert [mail.pk for mail in OutboundEmail.objects.claim("worker-2", 10)] == [second.pk]
        return real_send(self, messages)

    monkeypatch.setattr(LocmemBackend, "send_messages", stuck_while_another_worker_takes_over)

    with caplog.at_level(logging.WARNING, logger="notifications.outbox"):
        tally = send_batch("worker-1", 10)

    assert tally == Tally(sent=1)
    assert [message.to for message in django_mail.outbox] == [[first.to]]
    second.refresh_from_db()
    assert (second.status, second.claimed_by) == (OutboundEmail.Status.SENDING, "worker-2")
    assert f"Mail {second.pk}: this worker's claim lapsed before it was sent" in caplog.text


def test_the_retry_schedule_is_1m_5m_30m_2h_6h_then_12h_within_3_days():
    assert RETRY_DELAYS[:5] == (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=6),
    )
    assert set(RETRY_DELAYS[5:]) == {timedelta(hours=12)}
    assert sum(RETRY_DELAYS, timedelta()) <= timedelta(days=3)
    assert sum(RETRY_DELAYS, timedelta()) + timedelta(hours=12) > timedelta(days=3)


@pytest.mark.smtp
def test_while_the_relay_is_down_mail_waits_by_the_schedule_and_then_fails(use_relay, closed_port, caplog):
    use_relay(closed_port)
    [mail] = queue_mails(1)
    waits = []
    for _ in range(len(RETRY_DELAYS)):
        before = timezone.now()
        with pytest.raises(CommandError):
            run_worker()
        mail.refresh_from_db()
        assert mail.status == OutboundEmail.Status.QUEUED
        waits.append(mail.next_attempt_at - before)
        a_while_later()
    for wait, expected in zip(waits, RETRY_DELAYS, strict=True):
        assert expected <= wait < expected + timedelta(seconds=5)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=outbox.__name__), pytest.raises(CommandError):
        run_worker()
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.FAILED
    assert mail.attempts == len(RETRY_DELAYS) + 1
    assert "connection refused" in mail.last_error
    assert outbox_log(caplog) == [("ERROR", f"Mail {mail.pk} failed after 11 attempts: {mail.last_error}")]


@pytest.mark.smtp
def test_while_the_relay_is_down_mail_stays_queued_and_a_later_run_delivers_it(start_smtp_server, use_relay):
    server = start_smtp_server()
    port = server.port
    server.stop()
    use_relay(port)
    [mail] = queue_mails(1)

    with pytest.raises(CommandError, match="could not be sent"):
        run_worker()
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.attempts == 1
    assert "connection refused" in mail.last_error

    back = start_smtp_server(port=port)
    a_while_later()
    out = run_worker()
    assert "1 sent" in out
    assert [received.rcpt_tos for received in back.recorder.received] == [[mail.to]]
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.attempts == 2
    assert mail.last_error == ""


@pytest.mark.smtp
def test_a_4xx_reply_is_retried_later_and_then_delivered(smtp_server, use_relay, caplog):
    smtp_server.recorder.replies.append("451 4.3.0 Please try again later")
    use_relay(smtp_server.port)
    [mail] = queue_mails(1)
    built_when_queued = bytes(mail.message)

    with caplog.at_level(logging.INFO, logger=outbox.__name__), pytest.raises(CommandError):
        run_worker()
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.last_error == "451 4.3.0 Please try again later"
    assert outbox_log(caplog) == [
        (
            "WARNING",
            f"Mail {mail.pk} not sent (451 4.3.0 Please try again later); next attempt at {mail.next_attempt_at}.",
        )
    ]
    assert mail.next_attempt_at > timezone.now() + timedelta(seconds=50)
    assert smtp_server.recorder.received == []

    a_while_later()
    run_worker()
    [received] = smtp_server.recorder.received
    # The retry is the same message, Message-ID and Date included, byte for byte.
    assert received.content.rstrip(b"\r\n") == built_when_queued.rstrip(b"\r\n")
    assert b"\r\nMessage-ID: <" in received.content
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT


@pytest.mark.smtp
def test_a_5xx_reply_fails_that_mail_at_once_and_the_batch_goes_on(smtp_server, use_relay, caplog):
    smtp_server.recorder.replies.append("550 5.1.1 No such mailbox")
    use_relay(smtp_server.port)
    rejected, delivered = queue_mails(2)

    with caplog.at_level(logging.INFO, logger=outbox.__name__), pytest.raises(CommandError):
        run_worker()
    rejected.refresh_from_db()
    delivered.refresh_from_db()
    assert rejected.status == OutboundEmail.Status.FAILED
    assert rejected.last_error == "550 5.1.1 No such mailbox"
    assert delivered.status == OutboundEmail.Status.SENT
    assert smtp_server.recorder.connections == 1
    assert outbox_log(caplog) == [
        ("ERROR", f"Mail {rejected.pk} failed for good: 550 5.1.1 No such mailbox"),
        ("INFO", f"Mail {delivered.pk} sent on port {smtp_server.port}."),
    ]


def refuses_the_first_recipient():
    """A test server refusing the first RCPT TO it is sent with a 550."""
    from tests.smtp_server import Recorder

    @dataclass
    class RefusesTheFirstRecipient(Recorder):
        refused: bool = False

        async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
            if not self.refused:
                self.refused = True
                return "550 5.1.1 No such mailbox"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    return RefusesTheFirstRecipient()


@pytest.mark.smtp
def test_a_recipient_refused_with_a_5xx_fails_that_mail_at_once_and_the_batch_goes_on(
    start_smtp_server, use_relay
):
    server = start_smtp_server(recorder=refuses_the_first_recipient())
    use_relay(server.port)
    refused, delivered = queue_mails(2)

    with pytest.raises(CommandError):
        run_worker()

    refused.refresh_from_db()
    delivered.refresh_from_db()
    assert (refused.status, refused.attempts) == (OutboundEmail.Status.FAILED, 1)
    assert refused.last_error == "recipient refused: 550 5.1.1 No such mailbox"
    assert delivered.status == OutboundEmail.Status.SENT
    assert [received.rcpt_tos for received in server.recorder.received] == [[delivered.to]]
    assert server.recorder.connections == 1


@pytest.mark.smtp
def test_a_mail_to_an_address_mail_cannot_carry_fails_at_once_and_the_batch_goes_on(smtp_server, use_relay):
    """Queued before addresses were checked: no retry for three days can make it sendable."""
    use_relay(smtp_server.port)
    unsendable, delivered = queue_mails(2)
    OutboundEmail.objects.filter(pk=unsendable.pk).update(to="staff@x\u05de.example")

    with pytest.raises(CommandError):
        run_worker()

    unsendable.refresh_from_db()
    delivered.refresh_from_db()
    assert unsendable.status == OutboundEmail.Status.FAILED
    assert unsendable.last_error.startswith("not sendable: ")
    assert delivered.status == OutboundEmail.Status.SENT
    assert [received.rcpt_tos for received in smtp_server.recorder.received] == [[delivered.to]]


@pytest.mark.smtp
def test_a_reply_of_several_lines_is_recorded_and_logged_on_one_line(smtp_server, use_relay, caplog):
    smtp_server.recorder.replies.append(
        "550-5.7.1 Message refused\r\n550 5.7.1 See https://relay.example/why"
    )
    use_relay(smtp_server.port)
    [mail] = queue_mails(1)

    with caplog.at_level(logging.INFO, logger=outbox.__name__), pytest.raises(CommandError):
        run_worker()

    mail.refresh_from_db()
    assert mail.last_error == "550 5.7.1 Message refused 5.7.1 See https://relay.example/why"
    assert outbox_log(caplog) == [("ERROR", f"Mail {mail.pk} failed for good: {mail.last_error}")]


def test_the_loop_outlives_a_database_error_and_logs_it(monkeypatch, settings, caplog):
    """A database restart or failover fails a round; the next round goes on."""
    settings.OUTBOX_POLL_SECONDS = 0
    rounds = []

    def send_due(worker: str, size: int, should_stop) -> Tally:
        rounds.append(worker)
        if len(rounds) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        signal.raise_signal(signal.SIGTERM)  # stops the loop as systemd does
        return Tally(sent=1)

    monkeypatch.setattr(send_outbox, "send_due", send_due)
    with caplog.at_level(logging.INFO, logger=send_outbox.__name__):
        out = run_worker("--loop")

    assert "Outbox: 1 sent, 0 to retry later, 0 failed, 0 handed back." in out
    assert len(rounds) == 2
    [error] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert error.getMessage() == f"Outbox worker {rounds[0]}: database error; trying again shortly."
    assert "server closed the connection unexpectedly" in caplog.text  # the traceback


@pytest.mark.smtp
def test_a_relay_reply_that_repeats_the_password_is_masked_in_the_outbox_and_the_logs(
    start_smtp_server, use_relay, relay_password, caplog, capsys
):
    from tests.smtp_server import Recorder

    # Some relays echo what they were sent in their refusal.
    server = start_smtp_server(recorder=Recorder(login_reply=f"535 5.7.8 Bad credentials: {relay_password}"))
    use_relay(server.port)
    [mail] = queue_mails(1)

    with caplog.at_level(logging.DEBUG), pytest.raises(CommandError):
        run_worker()

    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.last_error == "535 5.7.8 Bad credentials: ********"
    assert "Bad credentials: ********" in caplog.text
    # Every line but the test server's own ("mail.log", which logs what it answers).
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name != "mail.log")
    printed = capsys.readouterr()
    assert relay_password not in ours + printed.out + printed.err + mail.last_error


@pytest.mark.smtp
def test_a_batch_goes_over_one_connection_and_batches_split_at_the_batch_size(smtp_server, use_relay):
    use_relay(smtp_server.port)
    queue_mails(7)
    out = run_worker("--once", "--batch-size", "3")
    assert "Outbox: 7 sent, 0 to retry later, 0 failed, 0 handed back." in out
    assert len(smtp_server.recorder.received) == 7
    assert smtp_server.recorder.connections == 3
    assert set(OutboundEmail.objects.values_list("port_used", flat=True)) == {smtp_server.port}


def drops_the_first_message():
    """A test server that hangs up instead of answering the first message's DATA."""
    from tests.smtp_server import Recorder

    @dataclass
    class DropsTheFirstMessage(Recorder):
        dropped: bool = False

        async def handle_DATA(self, server, session, envelope) -> str:
            if not self.dropped:
                self.dropped = True
                server.transport.close()
                return "250 2.0.0 never heard"
            return await super().handle_DATA(server, session, envelope)

    return DropsTheFirstMessage()


def replies_421_first():
    """A test server closing the connection with a 421 at the first message: smtplib hangs up at once."""
    from tests.smtp_server import Recorder

    return Recorder(replies=["421 4.3.2 Service shutting down"])


@pytest.mark.smtp
@pytest.mark.parametrize(
    ("recorder", "error"),
    [(replies_421_first, "421 4.3.2 Service shutting down"), (drops_the_first_message, None)],
    ids=["421 reply", "connection dropped"],
)
def test_after_the_connection_breaks_the_rest_of_the_batch_goes_over_a_new_connection_uncharged(
    start_smtp_server, use_relay, recorder, error, caplog
):
    server = start_smtp_server(recorder=recorder())
    use_relay(server.port)
    broken, waiting = queue_mails(2)
    # On its last attempt: charged for the dead connection, it would fail untried.
    OutboundEmail.objects.filter(pk=waiting.pk).update(attempts=len(RETRY_DELAYS))

    with caplog.at_level(logging.INFO, logger=outbox.__name__), pytest.raises(CommandError):
        run_worker()

    broken.refresh_from_db()
    waiting.refresh_from_db()
    assert (broken.status, broken.attempts) == (OutboundEmail.Status.QUEUED, 1)
    if error:
        assert broken.last_error == error
    assert (waiting.status, waiting.last_error) == (OutboundEmail.Status.SENT, "")
    assert [received.rcpt_tos for received in server.recorder.received] == [[waiting.to]]
    assert server.recorder.connections == 2
    # The mail handed back is not tried on the dead connection (which would log a lapsed claim).
    assert [level for level, _ in outbox_log(caplog)] == ["WARNING", "INFO"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_loop_takes_a_new_database_connection_after_postgresql_dropped_its_own(
    settings, caplog, monkeypatch
):
    """A PostgreSQL restart closes the worker's idle connection: the next round does not fail on it."""
    settings.OUTBOX_POLL_SECONDS = 0.1
    napping, restarted, sent = threading.Event(), threading.Event(), threading.Event()
    nap = send_outbox.StopFlag.sleep

    def nap_through_the_restart(stop_flag, seconds):
        # The first nap lasts until the connections are gone: they drop while the worker is idle.
        napping.set()
        restarted.wait(timeout=10)
        nap(stop_flag, seconds)

    monkeypatch.setattr(send_outbox.StopFlag, "sleep", nap_through_the_restart)

    def restart_then_queue_a_mail() -> None:
        try:
            napping.wait(timeout=10)
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            [mail] = queue_mails(1)
            restarted.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not sent.is_set():
                mail.refresh_from_db()
                if mail.status == OutboundEmail.Status.SENT:
                    sent.set()
                time.sleep(0.1)
        finally:
            restarted.set()
            connection.close()
            signal.raise_signal(signal.SIGTERM)

    thread = threading.Thread(target=restart_then_queue_a_mail)
    thread.start()
    with caplog.at_level(logging.INFO, logger=send_outbox.__name__):
        out = run_worker("--loop")
    thread.join(15)
    assert sent.is_set()
    assert "Outbox: 1 sent" in out
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
