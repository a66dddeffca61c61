"""The applicant's data rights still work once retention has purged some of their evidence."""

from __future__ import annotations

import datetime
import io
import json
import zipfile
from pathlib import Path

import pytest
import time_machine
from django.core.cache import cache
from django.core.management import call_command

from evidence.models import Evidence
from evidence.previews import preview_for
from tests.factories import JPEG_BYTES, PDF_BYTES, purge, upload
from tests.vetting.test_apply import files_on_disk, form_data
from vetting import links, workflow
from vetting.models import Application, AuditEvent

pytestmark = pytest.mark.django_db


def apply_with_two_files(client) -> Application:
    files = {"evidence_1": upload("old-id.pdf", PDF_BYTES), "evidence_2": upload("photo.jpg", JPEG_BYTES)}
    assert client.post("/apply/", {**form_data(), **files}).status_code == 302
    application = Application.objects.get()
    workflow.confirm_email(application)
    return application


def purge_the_first_file() -> Evidence:
    """What the retention purge leaves: the row without its file."""
    purge(Evidence.objects.get(original_name="old-id.pdf"))
    return Evidence.objects.get(original_name="photo.jpg")


def status_path(application: Application, suffix: str = "") -> str:
    return f"/status/{links.status_token(application)}/{suffix}"


def test_download_my_data_after_a_purge_has_the_kept_file_and_lists_the_purged_one(client):
    application = apply_with_two_files(client)
    purge_the_first_file()
    response = client.get(status_path(application, "my-data/"))
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert [name for name in archive.namelist() if name.startswith("evidence/")] == ["evidence/1-photo.jpg"]
    with Evidence.objects.get(original_name="photo.jpg").file.open("rb") as stored:
        assert archive.read("evidence/1-photo.jpg") == stored.read()
    purged, kept = json.loads(archive.read("evidence.json"))
    assert purged["file"] is None and purged["purged_at"] and purged["sha256"]
    assert kept["file"] == "evidence/1-photo.jpg"


def test_erase_after_a_purge_deletes_the_remaining_files_and_their_previews(client, settings):
    application = apply_with_two_files(client)
    kept = purge_the_first_file()
    preview_for(kept)
    preview_key = f"evidence-preview:{kept.pk}"
    assert cache.get(preview_key) is not None
    kept_path = Path(settings.EVIDENCE_ROOT) / kept.file.name
    assert kept_path.exists()

    response = client.post(status_path(application, "erase/"))
    assert response.status_code == 302
    assert "You erased this application" in client.get(response["Location"]).content.decode()
    assert not kept_path.exists()
    assert files_on_disk(settings) == []
    assert cache.get(preview_key) is None
    assert not Evidence.objects.exists()
    erased = AuditEvent.objects.get(action="application.erased")
    assert erased.details == {"previous_status": "submitted", "evidence": 2}


def test_download_and_erase_after_the_purge_command_removed_every_file(client, settings, server_admin):
    application = apply_with_two_files(client)
    workflow.reject(application, server_admin, "Could not verify", "")
    later = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(
        days=settings.EVIDENCE_RETENTION_DAYS + 1
    )
    with time_machine.travel(later):
        call_command("purge_evidence", stdout=io.StringIO())
    assert not Evidence.objects.stored().exists() and Evidence.objects.count() == 2

    response = client.get(status_path(application, "my-data/"))
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert not [name for name in archive.namelist() if name.startswith("evidence/")]

    response = client.post(status_path(application, "erase/"))
    assert response.status_code == 302
    application.refresh_from_db()
    assert application.erased_at is not None and application.full_name == ""
    assert not Evidence.objects.exists()
    assert files_on_disk(settings) == []
