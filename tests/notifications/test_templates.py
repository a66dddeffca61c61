"""Every mail under templates/notifications/ is complete and needs nothing from the network."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from notifications.outbox import render_email
from vetting.models import Application

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "notifications"
MAILS = sorted(path.name.removesuffix("-subject.txt") for path in TEMPLATES.glob("*-subject.txt"))
# Attributes through which a mail client would fetch something by itself.
FETCHING = {"src", "srcset", "background", "poster", "data", "lowsrc", "dynsrc"}


class RemoteResources(HTMLParser):
    """Collects what an HTML mail would load on opening: images, CSS, frames, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name in FETCHING and value and not value.startswith(("data:", "cid:")):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name == "style" and "url(" in value:
                self.found.append(f"<{tag} style with url()>")
        if tag == "link":
            self.found.append("<link>")
        if tag in {"script", "iframe", "object", "embed"}:
            self.found.append(f"<{tag}>")

    def handle_data(self, data: str) -> None:
        if "@import" in data or "url(" in data:
            self.found.append("CSS import or url()")


def test_there_are_mail_templates():
    assert "application-received" in MAILS


@pytest.mark.parametrize("name", MAILS)
def test_each_subject_has_its_text_and_html_body(name):
    assert (TEMPLATES / f"{name}-body.txt").is_file()
    assert (TEMPLATES / f"{name}-body.html").is_file()


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.html")), ids=lambda path: path.name)
def test_html_mail_loads_no_remote_resources(path):
    parser = RemoteResources()
    parser.feed(path.read_text())
    assert parser.found == []


def test_the_remote_resource_check_finds_images_css_and_scripts():
    parser = RemoteResources()
    parser.feed(
        '<img src="https://tracker.example/p.gif"><link rel="stylesheet" href="https://cdn.example/a.css">'
        '<td style="background:url(http://x.example/b.png)"><script src="//x.example/s.js"></script>'
        '<a href="https://rvi.example.org/status/">a link is fine</a><img src="data:image/png;base64,AA">'
    )
    assert len(parser.found) == 5


# Mails to applicants: a person may read either version, so both must tell the same.
APPLICANT_MAILS = [
    "application-received",
    "application-entered",
    "information-requested",
    "application-approved",
    "application-rejected",
    "application-withdrawn",
    "invitation-token",
]


class VisibleText(HTMLParser):
    """The text a reader sees in an HTML mail (not the <head>'s title)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._in_head = False

    def handle_starttag(self, tag: str, attrs) -> None:
        self._in_head = self._in_head or tag == "head"

    def handle_endtag(self, tag: str) -> None:
        self._in_head = self._in_head and tag != "head"

    def handle_data(self, data: str) -> None:
        if not self._in_head:
            self.parts.append(data)


def visible_text(body_html: str) -> str:
    parser = VisibleText()
    parser.feed(body_html)
    return " ".join("".join(parser.parts).split())


def applicant_mail(name: str) -> tuple[str, str, str]:
    """(subject, text, visible text of the HTML) of a mail, rendered as the workflow renders it."""
    application = Application(
        reference="K7M2Q9XD",
        full_name="Alex Example",
        information_request="Please send a photo of your ID.",
        message_to_applicant="We could not verify the referral.",
    )
    context = {
        "application": application,
        "status_url": "https://rvi.example.org/status/abc:def:ghi/",
        "confirm_url": "https://rvi.example.org/confirm/abc:def:ghi/",
        "homeserver_url": "https://matrix.example.org",
        "token": "Q3xYx9Yh2LrT0bAa",
        "invitation": SimpleNamespace(matrix_username="alex.example"),
        "tell_by": datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
    }
    subject, body_text, body_html = render_email(name, context)
    return subject, " ".join(body_text.split()), visible_text(body_html)


def words(text: str) -> set[str]:
    text = re.sub(r"https?://\S+", " ", text)  # the HTML puts its links in href
    text = re.sub(r"(^|\s)\d+\.\s", " ", text)  # the plain text numbers its list by hand
    return set(re.findall(r"[\w@’'.-]*\w", text.lower()))


@pytest.mark.parametrize("name", APPLICANT_MAILS)
def test_plain_text_and_html_of_an_applicant_mail_say_the_same(name):
    _subject, text, html = applicant_mail(name)
    assert words(text) - words(html) == set(), "only in the plain text"
    assert words(html) - words(text) == set(), "only in the HTML"


def test_the_comparison_notices_a_line_missing_from_one_version():
    assert words("Please answer, and add files if they ask for any.") - words("Please answer.") == {
        "and",
        "add",
        "files",
        "if",
        "they",
        "ask",
        "for",
        "any",
    }


def test_the_received_mail_asks_to_confirm_the_e_mail_address_in_subject_text_and_button():
    subject, text, html = applicant_mail("application-received")
    assert subject == "Please confirm your e-mail address for application K7M2Q9XD"
    assert "Please confirm your e-mail address within 7 days:" in text
    assert "Confirm my e-mail address: https://rvi.example.org/confirm/abc:def:ghi/" in text
    assert "Please confirm your e-mail address within 7 days: Confirm my e-mail address" in html
    for version in (subject, text, html):
        assert "confirm your application" not in version.lower()
        assert "confirm my application" not in version.lower()


def test_the_rejection_says_write_to_support_in_both_versions():
    _subject, text, html = applicant_mail("application-rejected")
    for version in (text, html):
        assert "If you have questions, write to support@rvi.iam-alliance.com with your reference." in version


def test_the_information_request_asks_for_files_in_both_versions():
    _subject, text, html = applicant_mail("information-requested")
    for version in (text, html):
        assert "Please answer, and add files if they ask for any, on your status page" in version


def test_the_invitation_walks_a_newcomer_through_creating_the_account():
    _subject, text, html = applicant_mail("invitation-token")
    steps = [
        "Open a Matrix app, such as Element, on your phone or computer.",
        "Choose “Create account”, then change the server to https://matrix.example.org.",
        "Choose the username alex.example and a password.",
        "Paste the registration token when you are asked for it, before 2026-12-01 12:00 UTC.",
    ]
    for number, step in enumerate(steps, start=1):
        assert f"{number}. {step}" in text
    assert "How to create your account: " + " ".join(steps) in html
    for version in (text, html):
        assert "Server: https://matrix.example.org" in version
        assert "Username to choose: alex.example" in version
        assert "Registration token: Q3xYx9Yh2LrT0bAa" in version
        assert "Please register before 2026-12-01 12:00 UTC. The token works once only." in version
