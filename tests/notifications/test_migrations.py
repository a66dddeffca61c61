"""Migrations that change outbox rows already in the database."""

from __future__ import annotations

import email
import email.policy
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from notifications.models import OutboundEmail


@pytest.mark.smtp
@pytest.mark.django_db(transaction=True)
def test_mail_queued_before_messages_were_built_gets_its_message_and_is_sent_as_queued(
    smtp_server, use_relay
):
    before, after = (
        ("notifications", "0002_outbox_worker"),
        ("notifications", "0003_message_built_when_queued"),
    )
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    old_model = executor.loader.project_state([before]).apps.get_model("notifications", "OutboundEmail")
    queued = old_model.objects.create(
        to="old@example.org",
        subject="Queued before",
        body_text="Text body",
        body_html="<p>HTML body</p>",
        template="t",
    )

    executor = MigrationExecutor(connection)
    executor.migrate([after])

    try:
        use_relay(smtp_server.port)
        call_command("send_outbox", "--once", stdout=StringIO())

        mail = OutboundEmail.objects.get(pk=queued.pk)
        assert mail.status == OutboundEmail.Status.SENT
        [received] = smtp_server.recorder.received
        assert received.rcpt_tos == ["old@example.org"]
        delivered = email.message_from_bytes(received.content, policy=email.policy.default)
        assert delivered["To"] == "old@example.org"
        assert delivered["Subject"] == "Queued before"
        assert delivered.get_body(("plain",)).get_content().strip() == "Text body"
        assert delivered.get_body(("html",)).get_content().strip() == "<p>HTML body</p>"
    finally:
        # Back to the latest schema for the tests that follow.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
