"""The outbox in the admin: list, filters, "Retry now", "Cancel", bodies for superusers only, links masked."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone

from notifications.admin import without_capabilities
from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from tests.factories import make_application
from vetting import links, roles, workflow

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


def test_retry_now_queues_failed_and_waiting_mail_for_now_and_leaves_sent_and_cancelled_mail(
    client, mail_operator
):
    failed = with_status("failed", attempts=11)
    waiting = with_status("queued", next_attempt_at=timezone.now() + timedelta(hours=2))
    sent = with_status("sent")
    cancelled = with_status("cancelled")
    client.force_login(mail_operator)

    response = run_action(client, "retry_now", failed, waiting, sent, cancelled)

    assert "2 mails queued for sending now" in response.content.decode()
    for mail in (failed, waiting):
        mail.refresh_from_db()
        assert mail.status == OutboundEmail.Status.QUEUED
        assert mail.next_attempt_at <= timezone.now()
    sent.refresh_from_db()
    assert sent.status == OutboundEmail.Status.SENT
    # A mail someone cancelled is never sent after all.
    cancelled.refresh_from_db()
    assert cancelled.status == OutboundEmail.Status.CANCELLED


def test_cancel_stops_queued_and_failed_mail_but_not_mail_being_sent(client, mail_operator):
    queued = with_status("queued")
    failed = with_status("failed", attempts=11)
    sending = with_status("sending", claimed_by="worker", lease_expires_at=timezone.now())
    already_cancelled = with_status("cancelled")
    client.force_login(mail_operator)

    response = run_action(client, "cancel", queued, failed, sending, already_cancelled)

    assert "2 mails cancelled" in response.content.decode()
    for mail in (queued, failed, already_cancelled):
        mail.refresh_from_db()
        assert mail.status == OutboundEmail.Status.CANCELLED
    sending.refresh_from_db()
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


def test_nobody_adds_or_deletes_mail_in_the_outbox(client, superadmin):
    mail = queue_received_mail()
    client.force_login(superadmin)
    assert client.get(f"{CHANGELIST}add/").status_code == 403
    assert client.get(f"{CHANGELIST}{mail.pk}/delete/").status_code == 403
    assert "delete_selected" not in client.get(CHANGELIST).content.decode()
    run_action(client, "delete_selected", mail)
    assert OutboundEmail.objects.filter(pk=mail.pk).exists()


def test_mail_bodies_are_shown_to_superusers_only(client, mail_operator, superadmin):
    mail = queue_received_mail()
    url = f"{CHANGELIST}{mail.pk}/change/"
    client.force_login(mail_operator)
    assert "Private Person" not in client.get(url).content.decode()
    client.force_login(superadmin)
    assert "Private Person" in client.get(url).content.decode()


# Links that work for whoever holds them -------------------------------------


def link_tokens(mail: OutboundEmail, route: str) -> list[str]:
    """The tokens of the mail's links to `route` ("reset/<uidb64>", "status", "confirm")."""
    tokens = re.findall(rf"https?://[^\s\"<>]+/{route}/([^/\s\"<>]+)/", mail.body_text)
    assert tokens, mail.body_text
    return tokens


def reset_mail(kind: str, client, agent) -> OutboundEmail:
    if kind == "staff-account-created":
        workflow.create_staff_account("sam", "sam@staff.example", roles.VETTING_AGENT)
    else:
        client.post("/admin/password_reset/", {"email": agent.email})
    return OutboundEmail.objects.get(template=kind)


@pytest.mark.parametrize("kind", ["staff-account-created", "staff-password-reset"])
def test_the_outbox_never_shows_a_working_set_password_link(client, superadmin, agent, kind):
    mail = reset_mail(kind, client, agent)
    [token] = link_tokens(mail, "reset/[^/]+")
    assert token in mail.body_html
    client.force_login(superadmin)

    page = client.get(f"{CHANGELIST}{mail.pk}/change/").content.decode()
    assert token not in page
    assert "/reset/" in page and "&lt;token hidden&gt;" in page  # the rest of the link still reads
    assert token not in client.get(CHANGELIST).content.decode()
    # Only the page: the stored mail is what goes out.
    mail.refresh_from_db()
    assert token in mail.body_text and token in mail.body_html


def test_searching_the_outbox_never_finds_a_mail_by_its_link(client, mail_operator, agent):
    # Else a search for the link, a character at a time, would spell out its token.
    mail = reset_mail("staff-password-reset", client, agent)
    [token] = link_tokens(mail, "reset/[^/]+")
    client.force_login(mail_operator)
    assert agent.email in client.get(CHANGELIST, {"q": agent.email}).content.decode()
    assert agent.email not in client.get(CHANGELIST, {"q": token[:8]}).content.decode()


def test_a_link_followed_by_punctuation_is_masked_too():
    application = make_application()
    status_url = links.status_url(application)
    mail = OutboundEmail(
        subject="Your application",
        body_text=f"Your status page ({status_url}).",
        body_html=f"<p>Your status page: {status_url}.</p>",
    )
    shown = without_capabilities(mail)
    token = links.status_token(application)
    assert token not in shown["body_text"] and token not in shown["body_html"]
    assert "/status/<token hidden>/)." in shown["body_text"]


def test_the_outbox_masks_applicants_status_and_confirmation_links_too(client, superadmin):
    application = make_application(full_name="Private Person")
    [mail] = queue_email(
        "application-received",
        [application.email],
        {
            "application": application,
            "status_url": links.status_url(application),
            "confirm_url": links.confirm_url(application),
        },
    )
    tokens = link_tokens(mail, "status") + link_tokens(mail, "confirm")
    client.force_login(superadmin)
    page = client.get(f"{CHANGELIST}{mail.pk}/change/").content.decode()
    assert "Private Person" in page
    for token in tokens:
        assert token not in page


@pytest.mark.smtp
def test_the_mail_as_sent_keeps_the_link_the_outbox_page_hides(client, superadmin, smtp_server, use_relay):
    workflow.create_staff_account("sam", "sam@staff.example", roles.VETTING_AGENT)
    mail = OutboundEmail.objects.get(template="staff-account-created")
    [token] = link_tokens(mail, "reset/[^/]+")
    client.force_login(superadmin)
    assert token not in client.get(f"{CHANGELIST}{mail.pk}/change/").content.decode()

    use_relay(smtp_server.port)
    call_command("send_outbox", "--once", stdout=StringIO())

    [received] = smtp_server.recorder.received
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert token in text and token in html
    # And it still works: it opens the form where sam chooses a password.
    client.logout()
    link = re.search(rf"https?://\S+/reset/[^/]+/{re.escape(token)}/", text).group(0)
    assert "new_password1" in client.get(urlsplit(link).path, follow=True).content.decode()
