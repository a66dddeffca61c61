"""`manage.py purge_evidence`: retention of evidence, orphan files, rows without files."""

from __future__ import annotations

import io
import os
import shutil
import time
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from evidence.models import Evidence
from evidence.storage import EvidenceStorage
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, make_application, upload
from vetting.models import Application, AuditEvent

pytestmark = pytest.mark.django_db


def store_for(status: str, decided_days_ago: int) -> Evidence:
    application = make_application(status=status)
    evidence = Evidence.objects.store(
        application, validate_upload(upload("passport.pdf", PDF_BYTES, "x"), note="n")
    )
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


def test_runs_on_an_empty_installation(settings):
    # As deploy/README.md leaves it: the evidence root exists and holds nothing yet.
    settings.EVIDENCE_ROOT.mkdir(parents=True)
    assert "0 evidence files" in purge()
