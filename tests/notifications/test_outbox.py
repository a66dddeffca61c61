from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from tests.factories import make_application

pytestmark = pytest.mark.django_db


def test_mail_queued_in_a_rolled_back_transaction_is_never_sent():
    application = make_application()
    with pytest.raises(RuntimeError), transaction.atomic():
        queue_email("application-received", [application.email], {"application": application})
        raise RuntimeError("the change failed")
    assert not OutboundEmail.objects.exists()


def test_one_mail_per_recipient_without_duplicates():
    application = make_application()
    queue_email(
        "staff-new-application",
        ["a@staff.example", "b@staff.example", "a@staff.example"],
        {"application": application, "admin_url": "https://rvi.example.org/admin/"},
    )
    assert sorted(OutboundEmail.objects.values_list("to", flat=True)) == [
        "a@staff.example",
        "b@staff.example",
    ]
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {"queued"}


def test_a_name_with_a_line_break_cannot_add_headers():
    application = make_application(full_name="Eve\r\nBcc: victim@example.org")
    [queued] = queue_email("application-received", [application.email], {"application": application})
    assert "\n" not in queued.subject and "\r" not in queued.subject
    message = queued.as_message().message()
    assert message["Bcc"] is None
    assert message["From"] == "IaMA RVI Support <support@rvi.iam-alliance.com>"


def test_text_and_html_bodies_are_rendered_without_remote_resources():
    application = make_application()
    [queued] = queue_email("application-received", [application.email], {"application": application})
    assert application.reference in queued.body_text
    assert application.reference in queued.body_html
    assert "<img" not in queued.body_html
    assert "http" not in queued.body_html


def test_an_address_with_a_line_break_is_rejected_and_nothing_is_queued():
    application = make_application()
    with pytest.raises(ValidationError):
        queue_email(
            "staff-new-application",
            ["ok@staff.example", "eve@example.org\r\nBcc: victim@example.org"],
            {"application": application, "admin_url": "https://rvi.example.org/admin/"},
        )
    assert not OutboundEmail.objects.exists()


def test_queueing_sends_nothing_even_after_commit(settings, django_capture_on_commit_callbacks):
    settings.DEBUG = True
    settings.SMTP_RELAY_AUTHPW = ""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    application = make_application()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        queue_email("application-received", [application.email], {"application": application})
    assert callbacks == []
    assert OutboundEmail.objects.get().status == OutboundEmail.Status.QUEUED


def test_the_message_is_built_once_when_queued_and_a_row_without_one_cannot_be_stored():
    application = make_application()
    [queued] = queue_email("application-received", [application.email], {"application": application})
    built = bytes(queued.message)
    assert queued.as_message().message().as_bytes(linesep="\r\n") == built
    assert f"To: {application.email}\r\n".encode() in built
    assert queued.as_message().message()["Message-ID"].endswith("@rvi.iam-alliance.com>")
    with pytest.raises(IntegrityError), transaction.atomic():
        OutboundEmail.objects.create(to="a@example.org", subject="s", body_text="b", template="t")
