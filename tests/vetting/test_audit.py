from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.conftest import STAFF_PASSWORD
from tests.factories import make_application
from vetting import audit, workflow
from vetting.models import AuditChainHead, AuditEvent

pytestmark = pytest.mark.django_db


def make_trail(agent) -> list[AuditEvent]:
    application = make_application()
    workflow.claim(application, agent)
    workflow.add_note(application, agent, "one")
    workflow.release(application, agent)
    return list(AuditEvent.objects.order_by("id"))


def test_each_event_links_to_the_previous_one(agent):
    events = make_trail(agent)
    assert events[0].previous_hash == audit.GENESIS_HASH
    for previous, event in zip(events, events[1:], strict=False):
        assert event.previous_hash == previous.hash
    assert audit.check_chain().broken is None
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert "Audit trail intact: 3 event(s) checked." in out.getvalue()


def test_verify_audit_reports_an_edited_row(agent):
    events = make_trail(agent)
    AuditEvent.objects.filter(pk=events[1].pk).update(details={"note": 999})
    with pytest.raises(CommandError, match=f"broken at event {events[1].pk}: its content does not match"):
        call_command("verify_audit")


@pytest.mark.parametrize(
    "columns", [("actor", "actor_name"), ("actor",), ("actor_name",)], ids=["both", "actor", "actor_name"]
)
def test_verify_audit_reports_a_rewritten_actor(agent, second_agent, columns):
    events = make_trail(agent)
    rewritten = {"actor": second_agent, "actor_name": "second_agent"}
    AuditEvent.objects.filter(pk=events[0].pk).update(**{column: rewritten[column] for column in columns})
    assert audit.check_chain().broken.event_id == events[0].pk


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("created_at", datetime(2020, 1, 1, tzinfo=UTC)),
        ("actor_kind", AuditEvent.ActorKind.SYSTEM),
        ("action", "application.released"),
        ("target_type", "evidence"),
        ("target_id", "999999"),
        ("ip", "10.6.6.6"),
    ],
    ids=["created_at", "actor_kind", "action", "target_type", "target_id", "ip"],
)
def test_verify_audit_reports_any_one_column_rewritten(agent, column, value):
    events = make_trail(agent)
    AuditEvent.objects.filter(pk=events[1].pk).update(**{column: value})
    broken = audit.check_chain().broken
    assert broken.event_id == events[1].pk
    assert "its content does not match its hash" in broken.reason


def test_verify_audit_reports_a_removed_row(agent):
    events = make_trail(agent)
    AuditEvent.objects.filter(pk=events[1].pk).delete()
    broken = audit.check_chain().broken
    assert broken.event_id == events[2].pk
    assert "an event was removed" in broken.reason


def test_verify_audit_reports_a_removed_row_even_when_the_next_one_was_relinked_past_it(agent):
    events = make_trail(agent)
    AuditEvent.objects.filter(pk=events[1].pk).delete()
    AuditEvent.objects.filter(pk=events[2].pk).update(previous_hash=events[0].hash)
    broken = audit.check_chain().broken
    assert broken.event_id == events[2].pk
    assert "its content does not match its hash" in broken.reason


def test_verify_audit_reports_the_newest_row_removed(agent):
    events = make_trail(agent)
    AuditEvent.objects.filter(pk=events[-1].pk).delete()
    with pytest.raises(CommandError, match="the end of the chain"):
        call_command("verify_audit")


def test_verify_audit_reports_details_rewritten_behind_a_copied_digest(agent):
    """An erased row's hash covers its stored digest, not its details: rewritten ones must still show."""
    events = make_trail(agent)
    event = events[1]
    AuditEvent.objects.filter(pk=event.pk).update(
        details={"note": "rewritten"}, redacted_digest=audit.personal_digest(event)
    )
    with pytest.raises(CommandError, match=f"broken at event {event.pk}: it is marked as erased"):
        call_command("verify_audit")
    AuditEvent.objects.filter(pk=event.pk).update(details={}, ip="10.6.6.6")
    assert audit.check_chain().broken.event_id == event.pk


def test_verify_audit_reports_a_missing_chain_head(agent):
    events = make_trail(agent)
    AuditEvent.objects.filter(pk=events[-1].pk).delete()
    AuditChainHead.objects.all().delete()
    with pytest.raises(CommandError, match="the end of the chain: the chain head is missing"):
        call_command("verify_audit")


def test_an_empty_trail_without_a_chain_head_verifies():
    assert not AuditChainHead.objects.exists()
    assert audit.check_chain().broken is None


def test_verify_audit_reports_a_chain_head_naming_an_event_the_chain_never_reaches(agent):
    make_trail(agent)
    AuditChainHead.objects.update(last_hash="f" * 64)
    with pytest.raises(CommandError, match="the end of the chain: the newest events are missing"):
        call_command("verify_audit")


# Verifying while the site is in use: another connection commits events mid-check ----


def build_chain(count: int) -> None:
    """`count` genuine events, hashed as audit.record hashes them but stored in bulk (fast)."""
    previous = audit.GENESIS_HASH
    events = []
    for number in range(count):
        event = AuditEvent(
            created_at=timezone.now(),
            actor_kind=AuditEvent.ActorKind.SYSTEM,
            action="test.history",
            details={"n": number},
            previous_hash=previous,
        )
        event.hash = audit.content_hash(event)
        previous = event.hash
        events.append(event)
    AuditEvent.objects.bulk_create(events, batch_size=2000)
    AuditChainHead.objects.create(pk=1, last_hash=previous)


def record_from_another_connection() -> None:
    """Commit one event through a second connection, as a request served meanwhile does."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            audit.record("user.login")
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive() and not errors, errors


def an_event_is_written_during_the_check(monkeypatch, *, after: int) -> None:
    """Once the check has walked `after` events (0: before the walk begins), another
    connection commits a new event: at a known point, not a race won by timing."""
    walk = audit._events_in_order

    def walk_while_the_site_is_in_use():
        if after == 0:
            record_from_another_connection()
        for walked, event in enumerate(walk(), start=1):
            yield event
            if walked == after:
                record_from_another_connection()

    monkeypatch.setattr(audit, "_events_in_order", walk_while_the_site_is_in_use)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "after",
    [0, 1, 2000, 4500],
    ids=["before-the-walk", "after-the-first-event", "between-two-fetches", "after-the-last-event"],
)
def test_verify_audit_reports_no_break_when_events_are_written_while_it_checks(monkeypatch, after):
    build_chain(4500)  # more than one fetch of the walk (2000 at a time)
    an_event_is_written_during_the_check(monkeypatch, after=after)
    out = StringIO()
    call_command("verify_audit", stdout=out)
    # The count is of the events walked: the walk's snapshot, taken as it begins, holds
    # the new event only when it was written before.
    walked = 4501 if after == 0 else 4500
    assert f"Audit trail intact: {walked} event(s) checked." in out.getvalue()
    assert AuditEvent.objects.count() == 4501  # the event was written during the check
    monkeypatch.undo()
    assert audit.check_chain().broken is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_first_event_of_a_fresh_trail_written_while_verify_audit_checks_is_no_break(monkeypatch):
    an_event_is_written_during_the_check(monkeypatch, after=0)  # after the (missing) head was read
    call_command("verify_audit", stdout=StringIO())
    assert AuditEvent.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("after", "reported"),
    [
        # The new event links to the removed one.
        (0, "broken at event .*: its link to the previous event does not match"),
        # The head read before the walk still names the removed event.
        (1, "broken at the end of the chain: the newest events are missing"),
    ],
    ids=["written-before-the-walk", "written-during-the-walk"],
)
def test_the_newest_event_removed_is_still_reported_while_events_are_written(monkeypatch, after, reported):
    build_chain(10)
    AuditEvent.objects.order_by("-id").first().delete()
    an_event_is_written_during_the_check(monkeypatch, after=after)
    with pytest.raises(CommandError, match=reported):
        call_command("verify_audit")


def test_secret_looking_details_are_masked():
    event = audit.record(
        "test.secrets",
        details={"password": "hunter2-hunter2", "nested": {"access_token": "syt_abc"}, "username": "alex"},
    )
    assert event.details == {
        "password": "********",
        "nested": {"access_token": "********"},
        "username": "alex",
    }


@pytest.mark.parametrize(
    "key", ["Password", "SMTP_RELAY_AUTHPW", "client_secret", "api_key", "registration_token"]
)
def test_a_secret_looking_key_is_masked_whatever_its_case(key):
    event = audit.record("test.secrets", details={key: "canary-value-0f3e"})
    event.refresh_from_db()
    assert event.details == {key: "********"}


def test_details_that_json_cannot_hold_are_stored_as_text_and_the_chain_still_verifies():
    when = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    evidence_id = uuid.UUID("6f1c1f4e-8a51-4a53-9d0e-3f2b8c1d7e20")
    event = audit.record("test.values", details={"when": when, "evidence": evidence_id})
    event.refresh_from_db()
    assert event.details == {"when": str(when), "evidence": str(evidence_id)}
    assert audit.check_chain().broken is None


def test_sign_in_failure_records_the_username_but_never_the_password(client, agent):
    client.post("/admin/login/", {"username": "agent", "password": "wrong-password-123"})
    event = AuditEvent.objects.get(action="user.login_failed")
    assert event.details == {"username": "agent"}
    assert "wrong-password-123" not in str(AuditEvent.objects.values_list("details", flat=True))


def test_sign_in_and_out_are_recorded(client, agent):
    client.post("/admin/login/", {"username": "agent", "password": STAFF_PASSWORD})
    client.post("/admin/logout/")
    assert list(AuditEvent.objects.order_by("id").values_list("action", "actor_name")) == [
        ("user.login", "agent"),
        ("user.logout", "agent"),
    ]


def test_events_record_the_client_behind_our_proxy_not_the_proxy(client, agent, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # nginx appends the peer it saw; the entry before it was written by the client and is not trusted.
    client.post(
        "/admin/login/",
        {"username": "agent", "password": STAFF_PASSWORD},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="198.51.100.7, 203.0.113.5",
    )
    assert AuditEvent.objects.get(action="user.login").ip == "203.0.113.5"


def test_nobody_can_change_or_delete_an_event_in_the_admin_not_even_a_superadmin(client, superadmin, agent):
    make_trail(agent)
    event = AuditEvent.objects.order_by("id").first()
    client.force_login(superadmin)
    assert client.get("/admin/vetting/auditevent/").status_code == 200
    page = client.get(f"/admin/vetting/auditevent/{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.post(f"/admin/vetting/auditevent/{event.pk}/change/", {"action": "x"}).status_code == 403
    assert client.post(f"/admin/vetting/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/vetting/auditevent/add/").status_code == 403
    event.refresh_from_db()
    assert audit.check_chain().broken is None


def test_evidence_download_is_audited(client, agent):
    from evidence.models import Evidence
    from evidence.validation import validate_upload
    from tests.factories import PDF_BYTES, upload

    evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.pdf", PDF_BYTES)))
    client.force_login(agent)
    client.get(f"/evidence/{evidence.pk}/")
    event = AuditEvent.objects.get(action="evidence.downloaded")
    assert (event.actor, event.target_type, event.target_id) == (agent, "evidence", str(evidence.pk))
    assert event.details == {"application": evidence.application.reference}


# The audit list, reached from an application ----------------------------------------


def audit_list(client, **query) -> str:
    response = client.get("/admin/vetting/auditevent/", query)
    assert response.status_code == 200
    return response.content.decode()


def rows(page: str) -> list[str]:
    """The audit list's result rows."""
    if 'id="result_list"' not in page:
        return []
    body = page.split('id="result_list"')[1].split("<tbody>")[1].split("</tbody>")[0]
    return re.findall(r"<tr.*?</tr>", body, re.S)


def test_an_applications_trail_holds_its_events_and_its_evidences_and_nobody_elses(client, agent, superadmin):
    from evidence.models import Evidence
    from evidence.validation import validate_upload
    from tests.factories import PDF_BYTES, upload

    wanted, other = make_application(), make_application()
    workflow.claim(wanted, agent)
    workflow.claim(other, agent)
    evidence = Evidence.objects.store(wanted, validate_upload(upload("id.pdf", PDF_BYTES)))
    client.force_login(agent)
    client.get(f"/evidence/{evidence.pk}/")
    client.force_login(superadmin)

    page = audit_list(client, application=wanted.reference)

    listed = rows(page)
    assert len(listed) == 2
    assert "application.claimed" in listed[1] and "evidence.downloaded" in listed[0]
    assert (
        f'<a href="/admin/vetting/application/{wanted.pk}/change/">application {wanted.reference}</a>' in page
    )
    assert f"evidence {evidence.pk} ({wanted.reference})" in page
    assert other.reference not in "".join(listed)


def test_the_audit_list_finds_events_by_an_applications_reference(client, agent, superadmin):
    wanted, other = make_application(), make_application()
    workflow.claim(wanted, agent)
    workflow.claim(other, agent)
    client.force_login(superadmin)
    listed = rows(audit_list(client, q=wanted.reference.lower()))
    assert len(listed) == 1 and wanted.reference in listed[0]
    assert len(rows(audit_list(client, q="application.claimed"))) == 2  # the usual search still works


def test_a_purged_application_is_still_named_by_its_last_event(client, superadmin):
    from datetime import timedelta

    from django.utils import timezone

    application = make_application(status="unconfirmed", email_confirmed_at=None)
    workflow.purge_unconfirmed(timezone.now() + timedelta(days=1))
    client.force_login(superadmin)
    assert f"application {application.pk} ({application.reference})" in audit_list(client)


def test_the_audit_list_costs_the_same_queries_at_5_and_50_application_events(client, agent, superadmin):
    def cost(**query) -> int:
        with CaptureQueriesContext(connection) as queries:
            audit_list(client, **query)
        return len(queries)

    applications = [make_application() for _ in range(50)]
    for application in applications[:5]:
        workflow.claim(application, agent)
    client.force_login(superadmin)
    reference = applications[0].reference
    at_five = cost(), cost(application=reference), cost(q=reference)
    for application in applications[5:]:
        workflow.claim(application, agent)
    assert (cost(), cost(application=reference), cost(q=reference)) == at_five
