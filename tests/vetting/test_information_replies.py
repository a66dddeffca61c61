"""The applicant's answers to requests for information: stored, shown to staff, exported and erased."""

from __future__ import annotations

import datetime
import importlib
import io
import json
import zipfile

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, TEXT_BYTES, make_application, purge, upload
from vetting import audit, links, workflow
from vetting.models import Application, AuditEvent, InformationReply

pytestmark = pytest.mark.django_db
Status = Application.Status


def asking(question: str = "Please send a photo of your ID.", **fields) -> Application:
    return make_application(status=Status.INFO_REQUESTED, information_request=question, **fields)


def status_path(application: Application, suffix: str = "") -> str:
    return f"/status/{links.status_token(application)}/{suffix}"


def change_page(client, application: Application) -> str:
    response = client.get(f"/admin/vetting/application/{application.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def answer(client, application: Application, message: str, **files) -> None:
    response = client.post(status_path(application), {"message": message, **files})
    assert response.status_code == 302, response.content.decode()


def test_an_answer_sent_on_the_status_page_is_kept_with_its_question_and_files(client):
    application = asking()
    answer(client, application, "  Here is my passport.  ", evidence_1=upload("passport.pdf", PDF_BYTES))
    reply = InformationReply.objects.get(application=application)
    assert reply.text == "Here is my passport."
    assert reply.question == "Please send a photo of your ID."
    assert [item.original_name for item in reply.evidence.all()] == ["passport.pdf"]


def test_staff_read_the_answer_on_the_applications_page(client, agent):
    application = asking()
    answer(client, application, "Here is my passport.", evidence_1=upload("passport.pdf", PDF_BYTES))
    evidence = Evidence.objects.get()
    client.force_login(agent)
    page = change_page(client, application)
    section = page[page.index('id="answers"') :]
    assert "Here is my passport." in section
    assert "Please send a photo of your ID." in section
    assert f'<a href="/evidence/{evidence.pk}/">passport.pdf</a>' in section


@pytest.mark.parametrize("persona", ["agent", "server_admin", "superadmin"])
def test_everyone_who_vets_applications_sees_the_answers(client, request, persona):
    application = asking()
    answer(client, application, "I am on the board of the Porto chapter.")
    client.force_login(request.getfixturevalue(persona))
    assert "I am on the board of the Porto chapter." in change_page(client, application)


def test_inviting_admins_do_not_see_the_answers_of_vetting(client, inviting_admin):
    application = asking()
    answer(client, application, "I am on the board of the Porto chapter.")
    Application.objects.filter(pk=application.pk).update(status=Status.APPROVED)  # on their list
    client.force_login(inviting_admin)
    page = change_page(client, application)
    assert "I am on the board of the Porto chapter." not in page
    assert 'id="answers"' not in page


def test_staff_without_the_evidence_permission_see_how_many_files_but_not_their_names(
    client, django_user_model
):
    application = asking()
    answer(client, application, "Here is my passport.", evidence_1=upload("passport.pdf", PDF_BYTES))
    # A role of the site's own making: it vets applications but may not open evidence.
    reader = django_user_model.objects.create_user("reader", "reader@example.org", is_staff=True)
    reader.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="vetting", codename__in=["view_application", "claim_application"]
        )
    )
    client.force_login(reader)
    page = change_page(client, application)
    assert "Here is my passport." in page
    assert "passport.pdf" not in page
    assert 'href="/evidence/' not in page


def test_a_purged_file_of_an_answer_shows_as_purged(client, agent):
    application = asking()
    answer(client, application, "Here is my passport.", evidence_1=upload("passport.pdf", PDF_BYTES))
    purge(Evidence.objects.get())
    client.force_login(agent)
    section = change_page(client, application).split('id="answers"')[1]
    assert "purged on" in section
    assert 'href="/evidence/' not in section.split('id="notes"')[0]


def test_answers_are_listed_newest_first_with_the_question_each_one_answered(
    client, agent, server_admin, time_machine
):
    time_machine.move_to(datetime.datetime(2026, 11, 20, 9, 30, tzinfo=datetime.UTC))
    application = asking("Who referred you?")
    answer(client, application, "Sam did.")
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Which Sam?")
    time_machine.move_to(datetime.datetime(2026, 11, 21, 14, 5, tzinfo=datetime.UTC))
    answer(client, application, "Sam Ferreira, the Lisbon organiser.")
    client.force_login(agent)
    page = change_page(client, application)
    newer, older = page.index("Sam Ferreira, the Lisbon organiser."), page.index("Sam did.")
    assert newer < older
    assert page.index("Which Sam?") < newer < page.index("Who referred you?") < older
    assert "2026-11-21 14:05" in page and "2026-11-20 09:30" in page


def test_an_answer_is_shown_as_text_not_html(client, agent):
    application = asking()
    answer(client, application, '<script>alert("hi")</script>')
    client.force_login(agent)
    page = change_page(client, application)
    assert "&lt;script&gt;alert(&quot;hi&quot;)&lt;/script&gt;" in page
    assert '<script>alert("hi")' not in page


def test_the_change_page_costs_the_same_queries_with_one_answer_or_many(client, agent, server_admin):
    def answer_and_ask_again(application: Application, rounds: int) -> None:
        for number in range(rounds):
            files = {"evidence_1": upload("id.pdf", PDF_BYTES), "evidence_2": upload("notes.txt", TEXT_BYTES)}
            answer(client, application, f"Answer {number}", **files)
            workflow.claim(application, agent)
            workflow.request_information(application, server_admin, f"Question {number + 1}")

    def query_count(application: Application) -> int:
        with CaptureQueriesContext(connection) as queries:
            change_page(client, application)
        return len(queries)

    one, many = asking(), asking(email="many@applicant.example")
    answer_and_ask_again(one, 1)
    answer_and_ask_again(many, 5)
    client.force_login(agent)
    change_page(client, one)  # the first request also loads the session
    assert InformationReply.objects.filter(application=many).count() == 5
    assert query_count(one) == query_count(many)


def test_a_refused_answer_keeps_no_reply(client):
    application = make_application()
    with pytest.raises(workflow.WorkflowError, match="not waiting for information"):
        workflow.add_information(application, [], "Hello")
    assert not InformationReply.objects.exists()


def test_an_answer_is_not_kept_when_its_transaction_fails(monkeypatch, settings):
    application = asking()

    def broken_record(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(audit, "record", broken_record)
    with pytest.raises(RuntimeError):
        workflow.add_information(application, [validate_upload(upload("id.pdf", PDF_BYTES))], "Here it is.")
    assert not InformationReply.objects.exists()
    assert not Evidence.objects.exists()
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED


def test_download_my_data_holds_the_answers_with_their_files(client):
    application = asking()
    answer(client, application, "Here is my passport.", evidence_1=upload("passport.pdf", PDF_BYTES))
    response = client.get(status_path(application, "my-data/"))
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    answers = json.loads(archive.read("application.json"))["answers"]
    assert len(answers) == 1
    assert answers[0]["question"] == "Please send a photo of your ID."
    assert answers[0]["answer"] == "Here is my passport."
    assert answers[0]["evidence"] == ["evidence/1-passport.pdf"]
    assert archive.read("evidence/1-passport.pdf") == PDF_BYTES


def test_erasure_deletes_the_answers_and_the_audit_trail_keeps_no_copy(client):
    application = asking()
    answer(client, application, "My secret answer.", evidence_1=upload("passport.pdf", PDF_BYTES))
    assert client.post(status_path(application, "erase/")).status_code == 302
    assert not InformationReply.objects.exists()
    assert not Evidence.objects.exists()
    added = AuditEvent.objects.get(action="application.information_added")
    assert added.details == {} and added.ip is None
    assert audit.check_chain().broken is None
    everything = json.dumps(list(AuditEvent.objects.values("details")))
    assert "My secret answer." not in everything


def test_the_migration_copies_earlier_answers_from_the_audit_trail_but_not_erased_ones():
    migration = importlib.import_module("vetting.migrations.0008_information_reply")
    kept = asking("Who referred you?")
    erased = asking("Who referred you?", email="erased@applicant.example")
    for application, message in [(kept, "Sam did."), (erased, "Erased answer.")]:
        # What add_information wrote before answers had their own rows.
        audit.record(
            "application.information_requested",
            target=application,
            details={"question": application.information_request},
        )
        audit.record(
            "application.information_added",
            actor_kind=AuditEvent.ActorKind.APPLICANT,
            target=application,
            details={"evidence": 0, "message": message},
        )
    workflow.erase_application(erased)
    sent_at = AuditEvent.objects.get(
        action="application.information_added", target_id=str(kept.pk)
    ).created_at

    migration.copy_answers_from_audit_trail(global_apps, None)

    reply = InformationReply.objects.get()
    assert reply.application == kept
    assert (reply.question, reply.text, reply.created_at) == ("Who referred you?", "Sam did.", sent_at)


@pytest.mark.django_db(transaction=True)
def test_the_migration_applies_and_reverses_on_a_database_with_answers():
    before, after = ("vetting", "0007_application_email_upper_index"), ("vetting", "0008_information_reply")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    old_apps = executor.loader.project_state([before]).apps
    application = old_apps.get_model("vetting", "Application").objects.create(
        reference="OLD00001",
        full_name="Alex Example",
        email="alex@applicant.example",
        referral="Sam",
        statement="Hello",
        consent_given_at=datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC),
        status=Status.SUBMITTED,
    )
    old_apps.get_model("vetting", "AuditEvent").objects.create(
        created_at=datetime.datetime(2026, 11, 2, 8, 0, tzinfo=datetime.UTC),
        actor_kind="applicant",
        action="application.information_added",
        target_type="application",
        target_id=str(application.pk),
        details={"evidence": 0, "message": "Sent before the upgrade."},
        previous_hash="0" * 64,
        hash="1" * 64,
    )

    executor = MigrationExecutor(connection)
    executor.migrate([after])
    reply = InformationReply.objects.get()
    assert reply.text == "Sent before the upgrade."
    assert reply.created_at == datetime.datetime(2026, 11, 2, 8, 0, tzinfo=datetime.UTC)

    executor = MigrationExecutor(connection)
    executor.migrate([before])
    assert InformationReply._meta.db_table not in connection.introspection.table_names()

    # Back to the latest schema for the tests that follow.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
