"""Migrations that change outbox rows already in the database."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from notifications.models import OutboundEmail


@pytest.mark.django_db(transaction=True)
def test_mail_queued_before_messages_were_built_gets_its_message_and_is_sent_as_queued():
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

    mail = OutboundEmail.objects.get(pk=queued.pk)
    message = mail.as_message().message()
    assert message["To"] == "old@example.org"
    assert message["Subject"] == "Queued before"
    assert b"Text body" in mail.message and b"<p>HTML body</p>" in mail.message

    # Back to the latest schema for the tests that follow.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
