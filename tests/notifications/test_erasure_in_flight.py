"""A mail the worker is sending when its applicant erases the application.

The worker runs in a thread with its own database connection and talks to a
real SMTP server, which holds the mail at DATA until the erasure has committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from notifications.models import OutboundEmail
from notifications.outbox import HELD_CHECK_SECONDS, Tally, queue_email, send_batch, send_due
from tests.factories import make_application
from vetting import links, workflow
from vetting.models import Application

pytestmark = [pytest.mark.smtp, pytest.mark.django_db(transaction=True)]


def rejected_with_its_mail(**fields) -> tuple[Application, OutboundEmail]:
    application = make_application(status=Application.Status.REJECTED, **fields)
    [mail] = queue_email(
        "application-rejected",
        [application.email],
        {"application": application, "status_url": links.status_url(application)},
    )
    assert application.reference in mail.body_text and application.full_name in mail.body_text
    return application, mail


def mail_about(application: Application, email: str, full_name: str):
    """Every outbox row that still names the applicant (read before erasure blanked them)."""
    return OutboundEmail.objects.filter(
        Q(to=email)
        | Q(subject__contains=application.reference)
        | Q(body_text__contains=application.reference)
        | Q(body_text__contains=full_name)
    )


def holding_relay(start_smtp_server, use_relay, settings, reply: str | None = None):
    """A relay that holds every mail at DATA until the returned event is set, then answers `reply` or 250."""
    from tests.smtp_server import Recorder

    answer = threading.Event()
    recorder = Recorder(replies=[reply] if reply else [], hold=lambda: not answer.is_set())
    server = start_smtp_server(recorder=recorder)
    use_relay(server.port)
    # Room for the erasure while the relay holds the mail (use_relay allows 1 s).
    settings.SMTP_TIMEOUT = 20
    return recorder, answer


def send_in_background(
    executor: ThreadPoolExecutor, should_stop: Callable[[], bool] = lambda: False
) -> Future[Tally | None]:
    def work() -> Tally | None:
        try:
            return send_batch("worker-1", 10, should_stop)
        finally:
            connection.close()

    return executor.submit(work)


def a_later_round() -> Tally:
    """What the next worker round does once every waiting mail's time has come."""
    OutboundEmail.objects.filter(status=OutboundEmail.Status.QUEUED).update(next_attempt_at=timezone.now())
    return send_due("worker-2", 10)


@pytest.mark.parametrize(
    "reply",
    ["451 4.3.0 Try again later", "550 5.1.1 No such mailbox", None],
    ids=["temporary-refusal", "permanent-refusal", "accepted"],
)
def test_a_mail_being_sent_when_its_applicant_erases_is_neither_sent_again_nor_kept(
    reply, start_smtp_server, use_relay, settings, caplog
):
    application, mail = rejected_with_its_mail()
    email, full_name = application.email, application.full_name
    recorder, answer = holding_relay(start_smtp_server, use_relay, settings, reply)

    with ThreadPoolExecutor(1) as executor, caplog.at_level(logging.INFO, logger="notifications.outbox"):
        try:
            sending = send_in_background(executor)
            assert recorder.data_started.wait(10), "the worker never reached DATA"
            assert OutboundEmail.objects.get(pk=mail.pk).status == OutboundEmail.Status.SENDING
            workflow.erase_application(application)
        finally:
            answer.set()
        tally = sending.result(30)

    # Whatever the relay said, nothing about the erased applicant is left to send or to read.
    assert not mail_about(application, email, full_name).exists()
    # Nothing recorded: the row is gone, and the worker does not count it as retried or failed.
    assert tally == Tally()
    assert f"Mail {mail.pk} was erased while being sent" in caplog.text
    assert "lapsed" not in caplog.text

    recorder.hold = None
    assert a_later_round() == Tally()
    # The relay has at most the one copy it accepted while the erasure ran.
    assert [received.rcpt_tos for received in recorder.received] == ([] if reply else [[email]])


@pytest.mark.parametrize("stop", [False, True], ids=["the batch goes on", "the worker is told to stop"])
def test_a_claimed_mail_whose_applicant_erased_is_neither_sent_nor_queued_again(
    start_smtp_server, use_relay, settings, caplog, stop
):
    staff = make_application(full_name="Kim Staying", email="kim@applicant.example")
    [first] = queue_email(
        "staff-new-application",
        ["queue@staff.example"],
        {"application": staff, "admin_url": "https://rvi.example.org/admin/"},
    )
    application, mail = rejected_with_its_mail()
    email, full_name = application.email, application.full_name
    recorder, answer = holding_relay(start_smtp_server, use_relay, settings)
    stopping = threading.Event()

    with ThreadPoolExecutor(1) as executor, caplog.at_level(logging.INFO, logger="notifications.outbox"):
        try:
            # Both mails are claimed; the relay holds the first while the applicant erases.
            sending = send_in_background(executor, stopping.is_set)
            assert recorder.data_started.wait(10), "the worker never reached DATA"
            assert OutboundEmail.objects.get(pk=mail.pk).status == OutboundEmail.Status.SENDING
            workflow.erase_application(application)
            if stop:
                # SIGTERM: the worker finishes the mail in hand and hands the rest back.
                stopping.set()
            else:
                # The worker looks again at which mails it holds once a second, not before each one.
                time.sleep(HELD_CHECK_SECONDS)
        finally:
            answer.set()
        tally = sending.result(30)

    assert not mail_about(application, email, full_name).exists()
    if not stop:
        assert f"Mail {mail.pk} was erased before it was sent." in caplog.text
    assert tally == Tally(sent=1)
    assert list(OutboundEmail.objects.values_list("pk", "status")) == [(first.pk, OutboundEmail.Status.SENT)]

    recorder.hold = None
    assert a_later_round() == Tally()
    assert [received.rcpt_tos for received in recorder.received] == [["queue@staff.example"]]
