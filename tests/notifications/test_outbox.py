from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from tests.factories import make_application
from tests.vetting.test_apply import form_data

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


class Addresses(HTMLParser):
    """Every address in an HTML body, with the tag and attribute that carry it, and every tag."""

    REMOTE = re.compile(r"(?:https?:)?//[^\s\"'()<>]+|url\(|@import")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.in_style = tag == "style"
        for name, value in attrs:
            self.found += [(tag, name, url) for url in self.REMOTE.findall(value or "")]

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.found += [("style", "", url) for url in self.REMOTE.findall(data)]


def test_the_received_mail_loads_nothing_remote_and_links_to_its_confirm_and_status_pages(client, settings):
    """A mail client must fetch nothing to show it (no tracking pixel, no font); links are fine."""
    assert client.post("/apply/", form_data()).status_code == 302
    queued = OutboundEmail.objects.get(template="application-received")

    addresses = Addresses()
    addresses.feed(queued.body_html)

    assert not addresses.tags & {"img", "link", "script", "iframe", "object", "embed", "video", "audio"}
    # Any address is in a link the reader may follow, never in something the client loads.
    assert [
        (tag, attribute) for tag, attribute, _url in addresses.found if (tag, attribute) != ("a", "href")
    ] == []
    links = [url for _tag, _attribute, url in addresses.found]
    # The confirm and status links lead to this site, in both bodies.
    for path in ("/confirm/", "/status/"):
        [link] = [url for url in links if url.startswith(f"{settings.SITE_URL}{path}")]
        assert link in queued.body_text


def test_an_address_with_a_line_break_is_rejected_and_nothing_is_queued():
    application = make_application()
    with pytest.raises(ValidationError):
        queue_email(
            "staff-new-application",
            ["ok@staff.example", "eve@example.org\r\nBcc: victim@example.org"],
            {"application": application, "admin_url": "https://rvi.example.org/admin/"},
        )
    assert not OutboundEmail.objects.exists()


@pytest.mark.parametrize(
    "address",
    ["staff@example.org\u200e", "staff@x\u05de.example", "staff@" + "\u00e4" * 63 + ".de"],
    ids=["trailing-lrm", "hebrew-and-latin-label", "63-char-non-ascii-label"],
)
def test_an_address_whose_domain_mail_cannot_encode_is_refused_and_nothing_is_queued(address):
    application = make_application()
    with pytest.raises(ValidationError) as refused:
        queue_email(
            "staff-new-application",
            ["ok@staff.example", address],
            {"application": application, "admin_url": "https://rvi.example.org/admin/"},
        )
    assert refused.value.code == "invalid"
    assert not OutboundEmail.objects.exists()


def test_an_internationalised_domain_mail_can_carry_is_queued_in_punycode():
    application = make_application(email="alex@bücher.example")
    [queued] = queue_email("application-received", [application.email], {"application": application})
    assert queued.as_message().message()["To"] == "alex@xn--bcher-kva.example"


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
