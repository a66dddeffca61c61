"""`manage.py purge_evidence`: retention of evidence, orphan files, rows without files."""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from django.utils import timezone

from evidence.models import Evidence
from evidence.previews import preview_for
from evidence.storage import EvidenceStorage
from evidence.validation import validate_upload
from tests.factories import JPEG_BYTES, PDF_BYTES, files_on_disk, make_application, upload
from tests.vetting.test_invitation_concurrency import another_connection_waits_on_a_lock
from tests.vetting.test_workflow import recommended_by
from vetting import audit, workflow
from vetting.models import Application, AuditEvent

pytestmark = pytest.mark.django_db


def store_for(
    status: str, decided_days_ago: int, name: str = "passport.pdf", content: bytes = PDF_BYTES
) -> Evidence:
    application = make_application(status=status)
    evidence = Evidence.objects.store(application, validate_upload(upload(name, content, "x"), note="n"))
    # updated_at stands for the decision time until the workflow records one.
    Application.objects.filter(pk=application.pk).update(
        updated_at=timezone.now() - timedelta(days=decided_days_ago)
    )
    return evidence


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_evidence", *args, stdout=out)
    return out.getvalue()


def path_of(evidence: Evidence):
    return evidence.file.storage.path(evidence.file.name)


# As the privacy notice says: the files go N days after the decision, whichever it was,
# including an approved or invited person who never registers.
DECIDED = ("approved", "invited", "rejected", "withdrawn", "joined")
OPEN = ("submitted", "in_review", "info_requested", "recommended")


def test_purges_files_of_applications_decided_longer_ago_than_retention(settings):
    settings.EVIDENCE_RETENTION_DAYS = 180
    old = [store_for(status, 181) for status in DECIDED]
    files = [path_of(evidence) for evidence in old]
    output = purge()
    assert "5 evidence files of applications decided more than 180 days ago were purged." in output
    for evidence, path in zip(old, files, strict=True):
        assert not os.path.exists(path)
        evidence.refresh_from_db()
        assert evidence.purged_at is not None
        assert evidence.file.name == "" and evidence.original_name == "" and evidence.note == ""
        # What proves the file existed stays.
        assert len(evidence.sha256) == 64 and evidence.size == len(PDF_BYTES)
        assert evidence.content_type == "application/pdf"
        event = AuditEvent.objects.get(action="evidence.purged", target_id=str(evidence.pk))
        assert event.actor_kind == "system"
        assert event.details == {
            "application": evidence.application.reference,
            "sha256": evidence.sha256,
            "size": len(PDF_BYTES),
        }


def test_keeps_evidence_of_open_and_recently_decided_applications():
    kept = [store_for(status, 179) for status in DECIDED] + [store_for(status, 400) for status in OPEN]
    output = purge()
    assert "0 evidence files" in output
    for evidence in kept:
        assert os.path.exists(path_of(evidence))
        evidence.refresh_from_db()
        assert evidence.purged_at is None


def test_dry_run_counts_and_changes_nothing():
    evidence = store_for("rejected", 400)
    orphan = evidence.file.storage.path("ff/orphan.pdf")
    os.makedirs(os.path.dirname(orphan), exist_ok=True)
    open(orphan, "wb").close()
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    output = purge("--dry-run")
    assert "1 evidence files of applications decided more than 180 days ago would be purged." in output
    assert "1 stored files without an evidence row would be removed." in output
    assert os.path.exists(path_of(evidence)) and os.path.exists(orphan)
    evidence.refresh_from_db()
    assert evidence.purged_at is None


def test_a_second_run_purges_nothing_again():
    evidence = store_for("rejected", 400)
    purge()
    evidence.refresh_from_db()
    purged_at = evidence.purged_at
    assert "0 evidence files of applications decided more than 180 days ago were purged." in purge()
    evidence.refresh_from_db()
    assert evidence.purged_at == purged_at
    assert AuditEvent.objects.filter(action="evidence.purged").count() == 1


def test_removes_old_orphan_files_but_not_ones_that_may_be_uploading_now():
    kept = store_for("submitted", 0)
    storage = kept.file.storage
    old_orphan, new_orphan = storage.path("aa/old.pdf"), storage.path("bb/new.pdf")
    for path in (old_orphan, new_orphan):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    os.utime(old_orphan, (time.time() - 7200, time.time() - 7200))
    output = purge()
    assert (
        "1 stored files without an evidence row were removed (1 younger than an hour left alone)." in output
    )
    assert not os.path.exists(old_orphan)
    assert AuditEvent.objects.get(action="evidence.orphan_file_removed").details == {"file": "aa/old.pdf"}
    assert os.path.exists(new_orphan) and os.path.exists(path_of(kept))


def test_keeps_rows_whose_file_is_missing_and_fails_until_told_to_remove_them():
    store_for("submitted", 0)
    lost = store_for("submitted", 0)
    os.remove(path_of(lost))
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 evidence rows have no file .*--remove-missing"):
        call_command("purge_evidence", stdout=out)
    assert f"evidence {lost.pk} has no file" in out.getvalue()
    assert "1 evidence rows whose file is missing were kept (see --remove-missing)." in out.getvalue()
    assert Evidence.objects.filter(pk=lost.pk).exists()
    assert not AuditEvent.objects.filter(action="evidence.missing_file_row_removed").exists()


def test_removes_rows_whose_file_is_missing_when_told():
    kept = store_for("submitted", 0)
    lost = store_for("submitted", 0)
    os.remove(path_of(lost))
    output = purge("--remove-missing")
    assert f"evidence {lost.pk} has no file" in output
    assert "1 evidence rows whose file is missing were removed." in output
    assert not Evidence.objects.filter(pk=lost.pk).exists()
    assert Evidence.objects.filter(pk=kept.pk).exists()
    assert AuditEvent.objects.filter(
        action="evidence.missing_file_row_removed", target_id=str(lost.pk)
    ).exists()


def test_dry_run_with_remove_missing_only_counts_the_rows_whose_file_is_missing():
    lost = store_for("submitted", 0)
    store_for("submitted", 0)
    os.remove(path_of(lost))
    output = purge("--remove-missing", "--dry-run")
    assert "1 evidence rows whose file is missing would be removed." in output
    assert Evidence.objects.filter(pk=lost.pk).exists()
    assert not AuditEvent.objects.filter(action="evidence.missing_file_row_removed").exists()


def unmount(root) -> None:
    shutil.rmtree(root)


def empty(root) -> None:
    shutil.rmtree(root)
    root.mkdir()


def replace_with_a_file(root) -> None:
    shutil.rmtree(root)
    root.write_text("not a directory")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (unmount, "does not exist or is not a directory"),
        (replace_with_a_file, "does not exist or is not a directory"),
        (empty, "holds no files, but 2 evidence rows have one"),
    ],
)
@pytest.mark.parametrize("options", [[], ["--dry-run"], ["--remove-missing"]])
def test_a_missing_or_emptied_evidence_root_is_refused_and_nothing_changes(
    settings, damage, message, options
):
    old = store_for("rejected", 400)
    store_for("submitted", 0)
    damage(settings.EVIDENCE_ROOT)
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"{message}.*Nothing was changed"):
        call_command("purge_evidence", *options, stdout=out)
    assert out.getvalue() == ""
    assert Evidence.objects.stored().count() == 2
    old.refresh_from_db()
    assert old.purged_at is None
    assert not AuditEvent.objects.filter(action__startswith="evidence.").exists()


def test_an_unreadable_evidence_root_is_refused_and_nothing_changes(monkeypatch):
    store_for("submitted", 0)

    def refuse(self, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(EvidenceStorage, "listdir", refuse)
    with pytest.raises(CommandError, match="cannot be read .*Permission denied.*Nothing was changed"):
        purge()
    assert Evidence.objects.stored().count() == 1


def test_purged_evidence_cannot_be_downloaded(client, agent):
    evidence = store_for("rejected", 400)
    purge()
    client.force_login(agent)
    assert client.get(f"/evidence/{evidence.pk}/").status_code == 404


def test_the_application_page_shows_a_purged_photo_as_purged_without_a_link_or_thumbnail(client, agent):
    evidence = store_for("rejected", 400, "id card.jpg", JPEG_BYTES)
    purge()
    evidence.refresh_from_db()
    client.force_login(agent)
    page = client.get(f"/admin/vetting/application/{evidence.application.pk}/change/").content.decode()
    assert f"purged on {evidence.purged_at.date().isoformat()}" in page
    assert f"/evidence/{evidence.pk}/" not in page


def test_a_purged_photo_leaves_no_cached_preview():
    purged = store_for("rejected", 400, "id.jpg", JPEG_BYTES)
    kept = store_for("rejected", 10, "id.jpg", JPEG_BYTES)  # decided too recently to be purged
    for photo in (purged, kept):
        preview_for(photo)
        assert cache.get(f"evidence-preview:{photo.pk}") is not None
    purge()
    assert cache.get(f"evidence-preview:{purged.pk}") is None
    assert cache.get(f"evidence-preview:{kept.pk}") is not None


def test_runs_on_an_empty_installation(settings):
    # As deploy/README.md leaves it: the evidence root exists and holds nothing yet.
    settings.EVIDENCE_ROOT.mkdir(parents=True)
    assert "0 evidence files" in purge()


# While the purge runs -------------------------------------------------------
#
# The purge lists what is due, then takes its time over each file (a slow S3
# delete): people go on working meanwhile. In these tests the first file's
# delete is that slow moment, and someone acts during it.


def rejected_with_evidence(agent, server_admin, files: int = 2) -> tuple[Application, list[Evidence]]:
    """A verified application rejected long ago, so a superadmin can reopen it on appeal."""
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Could not verify")
    evidence = [
        Evidence.objects.store(application, validate_upload(upload(f"doc{i}.pdf", PDF_BYTES, "x"), note="n"))
        for i in range(files)
    ]
    Application.objects.filter(pk=application.pk).update(updated_at=timezone.now() - timedelta(days=400))
    return application, evidence


def due_first() -> Evidence:
    """Another application's evidence, due and uploaded earlier, so the purge takes it first."""
    evidence = store_for("rejected", 400)
    Evidence.objects.filter(pk=evidence.pk).update(uploaded_at=timezone.now() - timedelta(days=500))
    return evidence


def during_first_delete(monkeypatch, action) -> None:
    """Run `action` (in this thread, on this connection) when the purge deletes its first file."""
    real_delete = EvidenceStorage.delete
    pending = [action]

    def slow_delete(self, name):
        if pending:
            pending.pop()()
        return real_delete(self, name)

    monkeypatch.setattr(EvidenceStorage, "delete", slow_delete)


def test_an_application_reopened_while_the_purge_runs_keeps_its_files(
    monkeypatch, agent, server_admin, superadmin
):
    first = due_first()
    appealed, evidence = rejected_with_evidence(agent, server_admin)
    during_first_delete(
        monkeypatch, lambda: workflow.reopen(Application.objects.get(pk=appealed.pk), superadmin, "Appeal")
    )
    output = purge()
    assert "1 evidence files of applications decided more than 180 days ago were purged." in output
    assert "2 more were kept: their application was reopened, erased or changed while this ran." in output
    assert not os.path.exists(path_of(first))
    for item in evidence:
        assert os.path.exists(path_of(item))
        item.refresh_from_db()
        assert item.purged_at is None and item.original_name
        assert not AuditEvent.objects.filter(action="evidence.purged", target_id=str(item.pk)).exists()


def test_an_erasure_while_the_purge_runs_does_not_stop_it(monkeypatch, agent, server_admin):
    first = due_first()
    erased, _ = rejected_with_evidence(agent, server_admin, files=1)
    last = store_for("withdrawn", 400)
    during_first_delete(
        monkeypatch, lambda: workflow.erase_application(Application.objects.get(pk=erased.pk))
    )
    output = purge()
    assert "2 evidence files of applications decided more than 180 days ago were purged." in output
    assert "1 more were kept" in output
    for item in (first, last):
        assert not os.path.exists(path_of(item))
        item.refresh_from_db()
        assert item.purged_at is not None
    assert not Evidence.objects.filter(application=erased).exists()
    assert files_on_disk() == []


def test_a_database_error_on_one_file_keeps_that_file_and_purges_the_others(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    failing, other = store_for("rejected", 400), store_for("joined", 400)
    real_save = Evidence.save

    def save(self, *args, **kwargs):
        if self.pk == failing.pk:
            raise OperationalError("server closed the connection unexpectedly")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Evidence, "save", save)
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 evidence files could not be purged .*retried next run"):
        call_command("purge_evidence", stdout=out)
    assert "1 evidence files of applications decided more than 180 days ago were purged." in out.getvalue()
    # The orphan sweep and the missing-file check still ran.
    assert "0 stored files without an evidence row were removed." in out.getvalue()
    assert "0 evidence rows whose file is missing were kept" in out.getvalue()
    assert os.path.exists(path_of(failing))
    failing.refresh_from_db()
    assert failing.purged_at is None and failing.original_name == "passport.pdf"
    assert not AuditEvent.objects.filter(action="evidence.purged", target_id=str(failing.pk)).exists()
    assert f"Could not purge evidence {failing.pk} (OperationalError: server closed" in caplog.text
    assert not os.path.exists(path_of(other))
    other.refresh_from_db()
    assert other.purged_at is not None


def test_a_file_that_cannot_be_deleted_after_the_purge_is_left_to_the_sweep(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    evidence = store_for("rejected", 400)
    path = path_of(evidence)
    os.utime(path, (time.time() - 7200, time.time() - 7200))

    def refuse(self, name):
        raise PermissionError(13, "Permission denied", name)

    with monkeypatch.context() as patch:
        patch.setattr(EvidenceStorage, "delete", refuse)
        out = io.StringIO()
        with pytest.raises(CommandError, match="1 stored files without an evidence row could not be removed"):
            call_command("purge_evidence", stdout=out)
    # The row was purged (committed); its file waits for the next sweep, which removes it.
    assert "1 evidence files of applications decided more than 180 days ago were purged." in out.getvalue()
    evidence.refresh_from_db()
    assert evidence.purged_at is not None and os.path.exists(path)
    assert "Permission denied" in caplog.text
    assert "1 stored files without an evidence row were removed." in purge()
    assert not os.path.exists(path)


# The same on PostgreSQL, with the other person on their own connection: the purge
# runs in a thread, and its first file's delete waits until they have committed.


def purge_in_a_thread_while(monkeypatch, action) -> dict:
    """Run purge_evidence in its own thread; when it deletes its first file, `action` runs here."""
    real_delete = EvidenceStorage.delete
    reached, go = threading.Event(), threading.Event()
    result: dict = {}

    def slow_delete(self, name):
        if threading.current_thread().name == "purge" and not reached.is_set():
            reached.set()
            go.wait(30)
        return real_delete(self, name)

    def run() -> None:
        out = io.StringIO()
        try:
            call_command("purge_evidence", stdout=out)
        except Exception as error:  # noqa: BLE001 - the test reports whatever stopped the run
            result["error"] = error
        finally:
            result["out"] = out.getvalue()
            connection.close()

    monkeypatch.setattr(EvidenceStorage, "delete", slow_delete)
    purging = threading.Thread(target=run, name="purge")
    purging.start()
    try:
        assert reached.wait(30), "the purge never deleted a file"
        action()
    finally:
        go.set()
        purging.join(60)
    return result


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_postgres_an_application_reopened_while_the_purge_runs_keeps_its_files(
    monkeypatch, agent, server_admin, superadmin
):
    first = due_first()
    appealed, evidence = rejected_with_evidence(agent, server_admin)
    result = purge_in_a_thread_while(
        monkeypatch, lambda: workflow.reopen(Application.objects.get(pk=appealed.pk), superadmin, "Appeal")
    )
    assert "error" not in result
    assert "2 more were kept: their application was reopened" in result["out"]
    assert Application.objects.get(pk=appealed.pk).status == Application.Status.RECOMMENDED
    assert not os.path.exists(path_of(first))
    for item in evidence:
        assert os.path.exists(path_of(item))
        assert Evidence.objects.get(pk=item.pk).purged_at is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_postgres_an_erasure_while_the_purge_runs_does_not_stop_it(monkeypatch, agent, server_admin):
    first = due_first()
    erased, _ = rejected_with_evidence(agent, server_admin, files=1)
    last = store_for("withdrawn", 400)
    result = purge_in_a_thread_while(
        monkeypatch, lambda: workflow.erase_application(Application.objects.get(pk=erased.pk))
    )
    assert "error" not in result, result.get("error")
    assert "2 evidence files of applications decided more than 180 days ago were purged." in result["out"]
    for item in (first, last):
        assert Evidence.objects.get(pk=item.pk).purged_at is not None
    assert not Evidence.objects.filter(application=erased).exists()
    assert files_on_disk() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_postgres_a_reopen_while_a_file_is_being_purged_waits_for_it(
    monkeypatch, agent, server_admin, superadmin
):
    # The purge locks the application (first, as the workflow does) while it purges a
    # file: a reopen then waits, and finds the file purged, instead of racing it.
    appealed, (evidence,) = rejected_with_evidence(agent, server_admin, files=1)
    real_record = audit.record
    holding, go = threading.Event(), threading.Event()
    outcome: dict = {}

    def held_record(action, *args, **kwargs):
        # Inside the purge's transaction, with its locks taken.
        if threading.current_thread().name == "purge" and action == "evidence.purged":
            holding.set()
            go.wait(30)
        return real_record(action, *args, **kwargs)

    def call_purge() -> None:
        try:
            outcome["out"] = purge()
        finally:
            connection.close()

    def reopen() -> None:
        try:
            workflow.reopen(Application.objects.get(pk=appealed.pk), superadmin, "Appeal")
        finally:
            connection.close()

    monkeypatch.setattr(audit, "record", held_record)
    purging = threading.Thread(target=call_purge, name="purge")
    reopening = threading.Thread(target=reopen, name="reopen")
    purging.start()
    try:
        assert holding.wait(30), "the purge never purged a file"
        reopening.start()
        deadline = time.monotonic() + 5
        while not another_connection_waits_on_a_lock() and time.monotonic() < deadline:
            time.sleep(0.05)
        waited = another_connection_waits_on_a_lock()
    finally:
        go.set()
        purging.join(60)
        reopening.join(60)
    assert waited, "the reopen did not wait for the purge's lock"
    assert "1 evidence files" in outcome["out"]
    assert Application.objects.get(pk=appealed.pk).status == Application.Status.RECOMMENDED
    assert Evidence.objects.get(pk=evidence.pk).purged_at is not None
    purged_then_reopened = list(
        AuditEvent.objects.filter(action__in=["evidence.purged", "application.reopened"])
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert purged_then_reopened == ["evidence.purged", "application.reopened"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_postgres_a_failing_write_keeps_that_file_and_the_run_goes_on(caplog):
    caplog.set_level(logging.WARNING)
    failing, other = store_for("rejected", 400), store_for("joined", 400)
    table = Evidence._meta.db_table
    # PostgreSQL itself refuses this one row's update, as a full disk or a dropped connection would.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_purge() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file' USING DETAIL = 'Key (email)=(alex@applicant.example)'; "
            "END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            f"CREATE TRIGGER refuse_purge BEFORE UPDATE ON {table} FOR EACH ROW "  # noqa: S608 - our table name
            f"WHEN (OLD.id = '{failing.pk}') EXECUTE FUNCTION refuse_purge()"
        )
    try:
        out = io.StringIO()
        with pytest.raises(CommandError, match="1 evidence files could not be purged"):
            call_command("purge_evidence", stdout=out)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER refuse_purge ON {table}")
            cursor.execute("DROP FUNCTION refuse_purge()")
    assert "1 evidence files of applications decided more than 180 days ago were purged." in out.getvalue()
    assert os.path.exists(path_of(failing))
    assert Evidence.objects.get(pk=failing.pk).purged_at is None
    assert not os.path.exists(path_of(other))
    assert Evidence.objects.get(pk=other.pk).purged_at is not None
    assert f"Could not purge evidence {failing.pk} (" in caplog.text
    assert "could not extend file" in caplog.text
    assert "alex@applicant.example" not in caplog.text
