"""The outbox in the admin: list, filters, "Retry now", "Cancel", bodies for superusers only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from tests.factories import make_application

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/notifications/outboundemail/"


@pytest.fixture
def mail_operator(django_user_model):
    """Staff who may look after the outbox, without being superuser."""
    user = django_user_model.objects.create_user(
        username="postmaster",
        email="postmaster@staff.example",
        password="a-long-test-password",
        is_staff=True,
    )
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="notifications",
            codename__in=["view_outboundemail", "change_outboundemail"],
        )
    )
    return user


def queue_received_mail() -> OutboundEmail:
    application = make_application(full_name="Private Person")
    [mail] = queue_email("application-received", [application.email], {"application": application})
    return mail


def with_status(status: str, **fields) -> OutboundEmail:
    mail = queue_received_mail()
    OutboundEmail.objects.filter(pk=mail.pk).update(status=status, **fields)
    mail.refresh_from_db()
    return mail


def run_action(client, action: str, *mails: OutboundEmail):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [mail.pk for mail in mails]}, follow=True
    )


def test_the_list_shows_status_attempts_next_attempt_last_error_and_port(client, mail_operator):
    with_status("queued", attempts=2, last_error="451 4.3.0 Please try again later")
    with_status("sent", port_used=2525, attempts=1)
    client.force_login(mail_operator)
    page = client.get(CHANGELIST).content.decode()
    columns = ["Status", "Attempts", "Next attempt at", "Last error", "Port used"]
    for text in [*columns, "Queued", "Sent", "451 4.3.0 Please try again later", "2525"]:
        assert text in page


def test_the_list_filters_by_status(client, mail_operator):
    failed = with_status("failed", to="failed@applicant.example")
    with_status("sent", to="sent@applicant.example")
    client.force_login(mail_operator)
    page = client.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    assert failed.to in page
    assert "sent@applicant.example" not in page


def test_retry_now_queues_failed_and_waiting_mail_for_now_and_leaves_sent_mail(client, mail_operator):
    failed = with_status("failed", attempts=11)
    waiting = with_status("queued", next_attempt_at=timezone.now() + timedelta(hours=2))
    sent = with_status("sent")
    client.force_login(mail_operator)

    response = run_action(client, "retry_now", failed, waiting, sent)

    assert "2 mails queued for sending now" in response.content.decode()
    for mail in (failed, waiting):
        mail.refresh_from_db()
        assert mail.status == OutboundEmail.Status.QUEUED
        assert mail.next_attempt_at <= timezone.now()
    sent.refresh_from_db()
    assert sent.status == OutboundEmail.Status.SENT


def test_cancel_stops_queued_mail_but_not_mail_being_sent(client, mail_operator):
    queued = with_status("queued")
    sending = with_status("sending", claimed_by="worker", lease_expires_at=timezone.now())
    client.force_login(mail_operator)

    response = run_action(client, "cancel", queued, sending)

    assert "1 mail cancelled" in response.content.decode()
    queued.refresh_from_db()
    sending.refresh_from_db()
    assert queued.status == OutboundEmail.Status.CANCELLED
    assert sending.status == OutboundEmail.Status.SENDING


def test_staff_who_may_only_look_get_no_actions(client, django_user_model):
    viewer = django_user_model.objects.create_user(
        username="viewer", email="viewer@staff.example", password="a-long-test-password", is_staff=True
    )
    viewer.user_permissions.add(Permission.objects.get(codename="view_outboundemail"))
    queued = with_status("queued")
    client.force_login(viewer)
    assert "Retry now" not in client.get(CHANGELIST).content.decode()
    run_action(client, "cancel", queued)
    queued.refresh_from_db()
    assert queued.status == OutboundEmail.Status.QUEUED


def test_mail_bodies_are_shown_to_superusers_only(client, mail_operator, superadmin):
    mail = queue_received_mail()
    url = f"{CHANGELIST}{mail.pk}/change/"
    client.force_login(mail_operator)
    assert "Private Person" not in client.get(url).content.decode()
    client.force_login(superadmin)
    assert "Private Person" in client.get(url).content.decode()
