"""`send_outbox` as real processes, sharing a PostgreSQL outbox and a real SMTP server.

The processes read the test database, so these tests commit their data
(transactional_db) and run on PostgreSQL only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from tests.factories import make_application

pytestmark = [pytest.mark.postgres, pytest.mark.smtp]

PROJECT_DIR = Path(__file__).resolve().parents[2]
# Longer than the test server holds a mail (Recorder.hold_timeout, 30 s): a mail held while the
# test waits for something else (the other worker, a signal, a kill) is never given up by the
# worker, however long a busy machine makes that wait. (At most OUTBOX_LEASE_SECONDS / 6 with
# one port, or the worker refuses to start.)
SMTP_TIMEOUT_SECONDS = "45"


def database_url() -> str:
    """The URL of the test database this test runs in."""
    db = connection.settings_dict
    credentials = quote(db["USER"], safe="") + (
        f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    )
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def start_worker(server, certificates, *options: str, **environment: str) -> subprocess.Popen:
    from tests.smtp_server import RELAY_PASSWORD, RELAY_USER

    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "SMTP_RELAY_HOST": "127.0.0.1",
        "SMTP_RELAY_PORTS": str(server.port),
        "SMTP_RELAY_USER": RELAY_USER,
        "SMTP_RELAY_AUTHPW": RELAY_PASSWORD,
        "SMTP_TIMEOUT": SMTP_TIMEOUT_SECONDS,
        "SMTP_CA_FILE": str(certificates.ca),
        "OUTBOX_POLL_SECONDS": "1",
        "LOG_LEVEL": "INFO",
        **environment,
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "send_outbox", *options],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def queue_mails(count: int) -> list[OutboundEmail]:
    application = make_application()
    return queue_email(
        "staff-new-application",
        [f"staff{number}@staff.example" for number in range(count)],
        {"application": application, "admin_url": "https://rvi.example.org/admin/"},
    )


def sigterm_once_logged(worker: subprocess.Popen, text: str, timeout: float) -> tuple[str, str]:
    """Stop the worker with SIGTERM once its log says `text`: its stdout and stderr."""
    try:
        line = worker.stderr.readline()
        while text not in line:
            line = worker.stderr.readline()
            assert line, f"the worker exited before it logged {text!r}"
        worker.send_signal(signal.SIGTERM)
        return worker.communicate(timeout=timeout)
    finally:
        if worker.poll() is None:
            worker.kill()


def test_two_workers_deliver_200_mails_each_exactly_once(transactional_db, smtp_server, certificates):
    recorder = smtp_server.recorder
    # The first mails wait until both workers have logged in, so both
    # really work the outbox at the same time.
    recorder.hold = lambda: recorder.accepted_logins < 2
    queued = queue_mails(200)

    workers = [
        start_worker(smtp_server, certificates, "--once", "--batch-size", "10"),
        start_worker(smtp_server, certificates, "--once", "--batch-size", "10"),
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]

    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    delivered = Counter(address for received in recorder.received for address in received.rcpt_tos)
    assert delivered == Counter(mail.to for mail in queued)  # each of the 200 once, none twice
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {OutboundEmail.Status.SENT}
    assert OutboundEmail.objects.values("claimed_by").distinct().count() == 2


@pytest.mark.parametrize("mode", ["--loop", "--once"])
def test_sigterm_finishes_the_mail_in_hand_and_hands_the_rest_back(
    transactional_db, smtp_server, certificates, mode
):
    recorder = smtp_server.recorder
    signalled = threading.Event()
    # The first mail is answered only after the signal was sent: it arrives while that mail is in hand.
    recorder.hold = lambda: not signalled.is_set()
    queue_mails(5)
    worker = start_worker(smtp_server, certificates, mode, "--batch-size", "5")
    assert recorder.data_started.wait(30), "the worker never sent a mail"

    worker.send_signal(signal.SIGTERM)
    signalled.set()
    out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    assert "Outbox: 1 sent, 0 to retry later, 0 failed, 4 handed back." in out
    assert len(recorder.received) == 1
    statuses = Counter(OutboundEmail.objects.values_list("status", flat=True))
    assert statuses == {OutboundEmail.Status.SENT: 1, OutboundEmail.Status.QUEUED: 4}


def test_sigterm_stops_an_idle_worker_at_once(transactional_db, smtp_server, certificates):
    worker = start_worker(smtp_server, certificates, "--loop", OUTBOX_POLL_SECONDS="60")
    # Up and idle: its start is logged on stderr.
    out, err = sigterm_once_logged(worker, "started", timeout=10)
    assert worker.returncode == 0, err
    assert "Outbox: 0 sent" in out


def test_a_mail_in_the_hands_of_a_killed_worker_is_sent_by_another_after_the_lease(
    transactional_db, smtp_server, certificates, use_relay
):
    recorder = smtp_server.recorder
    recorder.hold = lambda: True  # the relay never answers this worker's mail
    [mail] = queue_mails(1)
    worker = start_worker(smtp_server, certificates, "--loop")
    assert recorder.data_started.wait(30), "the worker never sent a mail"
    worker.kill()
    worker.wait(10)
    worker.stdout.close()
    worker.stderr.close()

    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENDING
    dead_worker = mail.claimed_by
    recorder.hold = None
    use_relay(smtp_server.port)

    call_command("send_outbox", "--once")  # the lease still holds: hands off
    assert recorder.received == []

    OutboundEmail.objects.filter(pk=mail.pk).update(lease_expires_at=timezone.now())  # time passes
    call_command("send_outbox", "--once")
    assert [received.rcpt_tos for received in recorder.received] == [[mail.to]]
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.SENT
    assert mail.claimed_by != dead_worker


def test_while_the_relay_is_down_the_loop_keeps_running_and_the_mail_stays_queued(
    transactional_db, smtp_server, certificates, closed_port
):
    """Unlike a missing setting (exit 78, no restart), a relay that is down is waited out."""
    [mail] = queue_mails(1)
    worker = start_worker(smtp_server, certificates, "--loop", SMTP_RELAY_PORTS=str(closed_port))
    out, err = sigterm_once_logged(worker, "connection refused", timeout=30)
    assert worker.returncode == 0, err
    assert "Outbox: 0 sent, 1 to retry later, 0 failed, 0 handed back." in out
    mail.refresh_from_db()
    assert mail.status == OutboundEmail.Status.QUEUED
    assert mail.attempts == 1
