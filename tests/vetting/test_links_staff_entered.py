"""Status links go only to confirmed addresses; a staff-typed one gets a confirmation link.

An agent enters the application of someone met in person and types their
address: nobody confirmed it, and a typo would hand the status page, the data
export and erasure to a stranger.
"""

from __future__ import annotations

import datetime
import re

import pytest
import time_machine

from notifications.models import OutboundEmail
from notifications.outbox import render_email
from tests.notifications.test_templates import visible_text, words
from tests.vetting.test_workflow import actions, verification
from vetting import links, workflow
from vetting.models import Application, AuditEvent

pytestmark = pytest.mark.django_db
Status = Application.Status


def entered_by(staff) -> Application:
    application = Application(
        full_name="Met In Person",
        email="met@applicant.example",
        referral="Met at the Berlin meetup",
        statement="Organiser",
    )
    return workflow.submit_staff_application(application, [], staff)


def asked_for_information(agent, server_admin) -> Application:
    application = entered_by(agent)
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Please send a photo of your ID.")
    return application


def mail_to_applicant(template: str) -> OutboundEmail:
    return OutboundEmail.objects.get(template=template, to="met@applicant.example")


def confirm_path(mail: OutboundEmail) -> str:
    [path] = set(re.findall(r"https?://[^/\s]+(/confirm/[^/\s]+/)", mail.body_text))
    return path


def test_entering_an_application_mails_the_person_a_confirmation_link_and_a_way_out(client, agent):
    application = entered_by(agent)

    mail = mail_to_applicant("application-entered")
    assert application.reference in mail.subject
    for body in (mail.body_text, mail.body_html):
        assert "/status/" not in body
        assert "please ignore it and do not follow the link" in " ".join(body.split())
    # The link is the person's way in: it confirms the address and opens the status page.
    response = client.get(confirm_path(mail))
    assert response.status_code == 302
    assert links.application_for_status_token(response["Location"].split("/")[2]) == application
    application.refresh_from_db()
    assert application.email_confirmed_at is not None
    assert application.status == Status.SUBMITTED


def test_the_mail_to_a_staff_typed_address_carries_a_confirmation_link_not_the_status_link(
    agent, server_admin
):
    application = asked_for_information(agent, server_admin)
    mail = mail_to_applicant("information-requested")
    for body in (mail.body_text, mail.body_html):
        assert links.status_link_stem(application) not in body
        assert "/status/" not in body
        assert links.confirm_url(application).rsplit(":", 2)[0] in body
    assert "It opens once you confirm that this e-mail address is yours:" in mail.body_text
    assert "Confirm my e-mail address: " in mail.body_text


def test_following_it_confirms_the_address_and_opens_the_status_page(client, agent, server_admin, settings):
    settings.STAFF_NOTIFY_EMAILS = ["queue@staff.example"]
    application = asked_for_information(agent, server_admin)
    response = client.get(confirm_path(mail_to_applicant("information-requested")))
    assert response.status_code == 302
    assert response["Location"].startswith("/status/")
    page = client.get(response["Location"]).content.decode()
    assert "Please send a photo of your ID." in page
    assert 'name="message"' in page

    application.refresh_from_db()
    assert application.email_confirmed_at is not None
    assert application.status == Status.INFO_REQUESTED
    event = AuditEvent.objects.get(action="application.email_confirmed")
    assert event.actor_kind == AuditEvent.ActorKind.APPLICANT
    # Staff hear of applications entering the queue; this one was in it all along.
    assert not OutboundEmail.objects.filter(template="staff-new-application").exists()


def test_a_second_click_is_harmless(client, agent, server_admin):
    application = asked_for_information(agent, server_admin)
    path = confirm_path(mail_to_applicant("information-requested"))
    client.get(path)
    application.refresh_from_db()
    confirmed_at = application.email_confirmed_at

    response = client.get(path)
    assert response.status_code == 302
    assert client.get(response["Location"]).status_code == 200
    application.refresh_from_db()
    assert application.email_confirmed_at == confirmed_at
    assert actions(application).count("application.email_confirmed") == 1


def test_the_link_of_a_staff_typed_address_still_works_months_later(client, agent, server_admin):
    # The application stays in the queue meanwhile: no dead end for a late reader.
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = entered_by(agent)
        path = confirm_path(mail_to_applicant("application-entered"))
    with time_machine.travel(datetime.datetime(2027, 2, 1, tzinfo=datetime.UTC)):
        response = client.get(path)
    assert response.status_code == 302
    assert links.application_for_status_token(response["Location"].split("/")[2]) == application
    application.refresh_from_db()
    assert application.email_confirmed_at is not None
    assert actions(application).count("application.email_confirmed") == 1


def test_an_expired_link_still_opens_the_status_page_of_an_address_confirmed_in_time(
    client, agent, server_admin
):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = asked_for_information(agent, server_admin)
        path = confirm_path(mail_to_applicant("information-requested"))
        client.get(path)
    with time_machine.travel(datetime.datetime(2026, 11, 20, tzinfo=datetime.UTC)):
        response = client.get(path)
    assert response.status_code == 302
    assert links.application_for_status_token(response["Location"].split("/")[2]) == application


def test_after_confirming_later_mails_carry_the_status_link(client, agent, server_admin):
    application = asked_for_information(agent, server_admin)
    client.get(confirm_path(mail_to_applicant("information-requested")))
    application.refresh_from_db()
    workflow.add_information(application, [], "Here is my ID.")
    workflow.claim(application, agent)
    workflow.record_verification(application, agent, **verification())
    workflow.approve(application, server_admin)

    mail = mail_to_applicant("application-approved")
    for body in (mail.body_text, mail.body_html):
        assert links.status_link_stem(application) in body
        assert "/confirm/" not in body


def test_an_erased_application_has_no_address_left_to_confirm(client, agent, server_admin):
    application = asked_for_information(agent, server_admin)
    path = confirm_path(mail_to_applicant("information-requested"))
    workflow.erase_application(application)

    response = client.get(path)
    assert response.status_code == 302
    assert "You erased this application" in client.get(response["Location"]).content.decode()
    application.refresh_from_db()
    assert application.email_confirmed_at is None
    assert "application.email_confirmed" not in actions(application)


@pytest.mark.parametrize("name", ["information-requested", "application-approved"])
def test_plain_text_and_html_say_the_same_with_a_confirmation_link(name):
    application = Application(
        reference="K7M2Q9XD", full_name="Alex Example", information_request="Please send a photo of your ID."
    )
    context = {"application": application, "confirm_url": "https://rvi.example.org/confirm/abc:def:ghi/"}
    _subject, body_text, body_html = render_email(name, context)
    text, html = " ".join(body_text.split()), visible_text(body_html)
    assert words(text) == words(html)
    for version in (text, html):
        assert "It opens once you confirm that this e-mail address is yours:" in version
        assert "status/" not in version
    assert 'href="https://rvi.example.org/confirm/abc:def:ghi/"' in body_html
