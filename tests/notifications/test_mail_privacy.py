"""No e-mail carries evidence or the applicant's statement (DESIGN.md, E-mails).

Every mail the system sends is made here through the code that sends it in
production, for applications whose statement, referral, answers and files
carry unique markers; no marker may appear in anything a recipient can read.
"""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
import time_machine
from django.core.management import call_command

from notifications.models import OutboundEmail
from tests.factories import upload
from tests.vetting.conftest import fake_synapse, fast_retries  # noqa: F401  (fixtures)
from tests.vetting.test_apply import form_data
from tests.vetting.test_workflow import verification
from vetting import links, roles, workflow
from vetting.models import Application

pytestmark = pytest.mark.django_db

MAIL_TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "notifications"
# Sent at once by `manage.py send_test_email`, not through the outbox: test_the_test_mail_... below.
SENT_WITHOUT_THE_OUTBOX = {"test-email"}


def every_mail_name() -> set[str]:
    return {path.name.removesuffix("-subject.txt") for path in MAIL_TEMPLATES.glob("*-subject.txt")}


def readable_parts(raw: bytes) -> list[str]:
    """Everything a recipient can read in a message as sent: headers and every part, decoded."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [f"{name}: {value}" for name, value in message.items()]
    for part in message.walk():
        if part.is_multipart():
            continue
        content = part.get_content()
        parts.append(content.decode("utf-8", "replace") if isinstance(content, bytes) else content)
    return parts


def mail_parts(mail: OutboundEmail) -> list[str]:
    """The stored subject and bodies, and the message as it will go out."""
    return [mail.subject, mail.body_text, mail.body_html, *readable_parts(bytes(mail.message))]


def markers() -> dict[str, str]:
    """A unique word per private thing (letters and digits only, so escaping cannot hide it)."""
    return {name: f"{name}{uuid.uuid4().hex[:12]}" for name in ("statement", "referral", "file", "answer")}


def apply(client, secret: dict[str, str], email_address: str) -> Application:
    """The public form, with a file whose name, note and content are private too."""
    evidence = upload(f"{secret['file']}.txt", f"{secret['file']} content of the file\n".encode())
    response = client.post(
        "/apply/",
        form_data(
            email=email_address,
            matrix_username="",
            statement=f"{secret['statement']} I organise the local chapter.",
            referral=f"{secret['referral']} from the Lisbon meetup",
            evidence_1=evidence,
            note_1=f"{secret['file']} front page",
        ),
    )
    assert response.status_code == 302
    application = Application.objects.get(email=email_address)
    workflow.confirm_email(application)
    return application


@pytest.mark.usefixtures("fake_synapse", "superadmin")
def test_no_mail_carries_the_statement_the_referral_an_answer_or_evidence(
    client, settings, agent, server_admin, inviting_admin
):
    settings.STAFF_NOTIFY_EMAILS = ["queue@staff.example"]
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = True
    secret = markers()

    # One person's way from the form to a Matrix invitation.
    joining = apply(client, secret, "alex@applicant.example")
    workflow.claim(joining, agent)
    workflow.request_information(joining, server_admin, "Please send a photo of your ID.")
    answer = client.post(
        f"/status/{links.status_token(joining)}/",
        {
            "message": f"{secret['answer']} here is my ID",
            "evidence_1": upload(f"{secret['answer']}.txt", f"{secret['answer']} ID text\n".encode()),
            "note_1": f"{secret['answer']} note",
        },
    )
    assert answer.status_code == 302
    joining.refresh_from_db()
    workflow.claim(joining, agent)
    workflow.record_verification(joining, agent, **verification())
    workflow.approve(joining, server_admin)
    invitation = workflow.issue_invitation(joining, inviting_admin, matrix_username="alex")
    with time_machine.travel(invitation.expires_at - timedelta(days=4)):
        assert workflow.sync_invitations().reminders == 1
    # Then they change their mind: the inviting admin is told not to send the token.
    workflow.withdraw(joining)

    # Two more applications with the same private text: one rejected, one withdrawn.
    rejected = apply(client, secret, "sam@applicant.example")
    workflow.reject(rejected, server_admin, "Could not verify", "We could not verify your referral.")
    withdrawn = apply(client, secret, "kim@applicant.example")
    workflow.withdraw(withdrawn)
    # Entered by staff, its address unconfirmed: its mail carries a confirmation link instead.
    entered = workflow.submit_staff_application(
        Application(
            full_name="Met In Person",
            email="met@applicant.example",
            statement=f"{secret['statement']} I organise the local chapter.",
            referral=f"{secret['referral']} from the Berlin meetup",
        ),
        [],
        agent,
    )
    workflow.claim(entered, agent)
    workflow.request_information(entered, server_admin, "Please send a photo of your ID.")

    # Staff mail: a new account, a password reset, the security report.
    workflow.create_staff_account("newagent", "newagent@staff.example", roles.VETTING_AGENT)
    assert client.post("/admin/password_reset/", {"email": agent.email}).status_code == 302
    call_command("security_report", "--mail", stdout=StringIO())

    mails = list(OutboundEmail.objects.all())
    assert {mail.template for mail in mails} == every_mail_name() - SENT_WITHOUT_THE_OUTBOX, (
        "a mail is not made by this test: add the code path that sends it"
    )
    for mail in mails:
        for part in mail_parts(mail):
            leaked = [word for word in secret.values() if re.search(word, part, re.IGNORECASE)]
            assert leaked == [], f"{mail.template} mail to {mail.to} carries {leaked}"


@pytest.mark.smtp
def test_the_test_mail_carries_nothing_of_any_application(client, smtp_server, use_relay):
    secret = markers()
    apply(client, secret, "alex@applicant.example")
    use_relay(smtp_server.port)

    call_command("send_test_email", "operator@staff.example", stdout=StringIO())

    [received] = smtp_server.recorder.received
    for part in readable_parts(received.content):
        assert not [word for word in secret.values() if re.search(word, part, re.IGNORECASE)]
