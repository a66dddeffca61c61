from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from django.core.files.base import ContentFile
from django.db import OperationalError

from evidence.models import Evidence
from evidence.storage import S3EvidenceStorage
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, files_on_disk, make_application, upload
from vetting.models import Application

pytestmark = pytest.mark.django_db


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_directories_are_0750_and_files_0640_whatever_the_umask(settings, umask):
    previous = os.umask(umask)
    try:
        evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.pdf", PDF_BYTES)))
    finally:
        os.umask(previous)
    root = Path(settings.EVIDENCE_ROOT)
    stored = root / evidence.file.name
    assert mode(stored) == 0o640
    assert mode(stored.parent) == 0o750
    assert mode(root) == 0o750


def test_file_is_named_by_uuid_not_by_the_uploaded_name(settings):
    evidence = Evidence.objects.store(
        make_application(), validate_upload(upload("../../etc/cron.d/x.pdf", PDF_BYTES))
    )
    assert evidence.file.name == f"{evidence.pk.hex[:2]}/{evidence.pk}.pdf"
    assert "cron" not in evidence.file.name
    assert evidence.original_name == "x.pdf"


def test_evidence_has_no_public_url():
    evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.pdf", PDF_BYTES)))
    with pytest.raises(ValueError, match="not accessible via a URL"):
        evidence.file.url  # noqa: B018


# What boto3 raises when S3 is down, refuses, or the server has no credentials.
S3_ERRORS = [
    S3UploadFailedError("Failed to upload ab/x.pdf to evidence/ab/x.pdf: An error occurred (NoSuchBucket)"),
    ClientError(
        {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "PutObject",
    ),
    EndpointConnectionError(endpoint_url="https://s3.example.invalid/evidence"),
    NoCredentialsError(),
]
S3_ERROR_IDS = ["upload-failed", "access-denied", "no-connection", "no-credentials"]


class FailingS3Storage(S3EvidenceStorage):
    """The real S3 evidence store, but every call it makes to S3 fails with `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__(bucket_name="evidence", region_name="us-east-1")
        self.error = error

    @property
    def connection(self):
        raise self.error

    @property
    def bucket(self):
        raise self.error


@pytest.mark.parametrize("error", S3_ERRORS, ids=S3_ERROR_IDS)
@pytest.mark.parametrize(
    "call",
    [
        lambda storage: storage.save("ab/x.pdf", ContentFile(PDF_BYTES)),
        lambda storage: storage.delete("ab/x.pdf"),
        lambda storage: storage.exists("ab/x.pdf"),
        lambda storage: storage.listdir(""),
        lambda storage: storage.size("ab/x.pdf"),
        lambda storage: storage.open_stream("ab/x.pdf"),
    ],
    ids=["save", "delete", "exists", "listdir", "size", "open_stream"],
)
def test_s3_failures_reach_callers_as_os_error_like_a_full_disk(error, call):
    with pytest.raises(OSError) as caught:
        call(FailingS3Storage(error))
    assert caught.value.__cause__ is error


def test_a_failed_submission_deletes_every_file_it_can_and_keeps_its_own_error(monkeypatch, caplog):
    from vetting import workflow

    stored_names = []
    real_store = Evidence.objects.store

    def store_and_note(*args, **kwargs):
        evidence = real_store(*args, **kwargs)
        stored_names.append(evidence.file.name)
        return evidence

    def database_gone(*args, **kwargs):
        raise RuntimeError("database gone")

    storage = Evidence._meta.get_field("file").storage
    real_delete = type(storage).delete

    def first_delete_fails(self, name):
        if name == stored_names[0]:
            raise PermissionError(13, "Permission denied", name)
        real_delete(self, name)

    monkeypatch.setattr(Evidence.objects, "store", store_and_note)
    monkeypatch.setattr(workflow.audit, "record", database_gone)
    monkeypatch.setattr(type(storage), "delete", first_delete_fails)
    uploads = [validate_upload(upload(f"{n}.pdf", PDF_BYTES)) for n in range(3)]

    with pytest.raises(RuntimeError, match="database gone"):
        workflow.submit_application(
            Application(full_name="Alex Example", email="alex@applicant.example", statement="Hello."), uploads
        )

    assert [storage.exists(name) for name in stored_names] == [True, False, False]
    assert f"Could not delete the evidence file {stored_names[0]}" in caplog.text
    assert not Evidence.objects.exists() and not Application.objects.exists()


class DiskFullHalfway(ContentFile):
    """A copy whose writing stops with ENOSPC after its first bytes, as on a full disk."""

    def chunks(self, chunk_size=None):
        yield PDF_BYTES[:20]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_half_way_leaves_no_partial_file():
    validated = validate_upload(upload("id.pdf", PDF_BYTES))
    half_written = dataclasses.replace(validated, file=DiskFullHalfway(PDF_BYTES, name="id.pdf"))

    with pytest.raises(OSError, match="No space left on device"):
        Evidence.objects.store(make_application(), half_written)

    assert files_on_disk() == []
    assert not Evidence.objects.exists()


def test_a_submission_whose_second_row_cannot_be_written_leaves_no_file(monkeypatch):
    from vetting import workflow

    real_create = Evidence.objects.create
    created = []

    def second_row_fails(**fields):
        created.append(fields["file"])
        if len(created) == 2:
            raise OperationalError("disk I/O error")
        return real_create(**fields)

    monkeypatch.setattr(Evidence.objects, "create", second_row_fails)
    uploads = [validate_upload(upload(f"{number}.pdf", PDF_BYTES)) for number in range(2)]

    with pytest.raises(OperationalError):
        workflow.submit_application(
            Application(full_name="Alex Example", email="alex@applicant.example", statement="Hello."), uploads
        )

    assert len(created) == 2  # both files were written before the second row failed
    assert files_on_disk() == []
    assert not Application.objects.exists() and not Evidence.objects.exists()
