"""Staff see image evidence as thumbnails, through the audited preview view only."""

from __future__ import annotations

import io
import logging
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone
from PIL import Image

from evidence.models import Evidence
from evidence.previews import forget_preview, preview_for
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, TEXT_BYTES, docx_bytes, jpeg_bytes, make_application, upload
from vetting import links
from vetting.models import Application, AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def photo() -> Evidence:
    return Evidence.objects.store(
        make_application(), validate_upload(upload("id card.jpg", jpeg_bytes((1200, 800))))
    )


def test_permitted_staff_get_a_small_png_and_it_is_audited(client, agent, photo, monkeypatch):
    client.force_login(agent)
    response = client.get(f"/evidence/{photo.pk}/preview/")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert max(Image.open(io.BytesIO(response.content)).size) <= 480
    event = AuditEvent.objects.get(action="evidence.previewed")
    assert event.actor == agent and event.target_id == str(photo.pk)
    # A second look comes from the cache, without reading the stored file again, and is audited again.
    opened = []
    storage_class = type(photo.file.storage)
    read = storage_class.open

    def counted_open(storage, name, *args, **kwargs):
        opened.append(name)
        return read(storage, name, *args, **kwargs)

    monkeypatch.setattr(storage_class, "open", counted_open)
    assert client.get(f"/evidence/{photo.pk}/preview/").content == response.content
    assert opened == []
    assert AuditEvent.objects.filter(action="evidence.previewed").count() == 2
    # Once the cached preview is gone, the file is read again.
    forget_preview(photo)
    assert client.get(f"/evidence/{photo.pk}/preview/").content == response.content
    assert opened == [photo.file.name]


def test_preview_is_not_for_outsiders_or_anonymous(client, outsider, photo):
    assert client.get(f"/evidence/{photo.pk}/preview/").status_code == 302
    client.force_login(outsider)
    assert client.get(f"/evidence/{photo.pk}/preview/").status_code == 403
    assert not AuditEvent.objects.filter(action="evidence.previewed").exists()


def test_pdfs_have_no_preview_and_the_admin_offers_a_download(client, agent):
    pdf = Evidence.objects.store(make_application(), validate_upload(upload("passport.pdf", PDF_BYTES)))
    client.force_login(agent)
    assert client.get(f"/evidence/{pdf.pk}/preview/").status_code == 404
    page = client.get(f"/admin/vetting/application/{pdf.application.pk}/change/").content.decode()
    assert "Download to view" in page
    assert f'href="/evidence/{pdf.pk}/"' in page


@pytest.mark.parametrize(("name", "content"), [("letter.docx", docx_bytes()), ("notes.txt", TEXT_BYTES)])
def test_word_and_text_files_have_no_preview_either(client, agent, name, content):
    evidence = Evidence.objects.store(make_application(), validate_upload(upload(name, content)))
    client.force_login(agent)
    assert client.get(f"/evidence/{evidence.pk}/preview/").status_code == 404
    page = client.get(f"/admin/vetting/application/{evidence.application.pk}/change/").content.decode()
    assert "Download to view" in page
    assert f"/evidence/{evidence.pk}/preview/" not in page


def test_a_stored_image_that_cannot_be_decoded_has_no_preview_and_no_audited_look(client, agent, photo):
    Path(photo.file.path).write_bytes(jpeg_bytes((64, 64))[:300])
    client.force_login(agent)
    assert client.get(f"/evidence/{photo.pk}/preview/").status_code == 404
    assert not AuditEvent.objects.filter(action="evidence.previewed").exists()


def test_a_photo_whose_file_is_missing_has_no_preview_and_no_audited_look(client, agent, photo):
    photo.file.storage.delete(photo.file.name)
    client.force_login(agent)
    response = client.get(f"/evidence/{photo.pk}/preview/")
    assert response.status_code == 404
    assert "cannot be reached" not in response.content.decode()
    assert not AuditEvent.objects.filter(action="evidence.previewed").exists()


def test_a_cached_preview_expires_after_an_hour(photo, time_machine):
    time_machine.move_to(timezone.now())
    preview_for(photo)
    time_machine.shift(timedelta(minutes=59))
    assert cache.get(f"evidence-preview:{photo.pk}") is not None
    time_machine.shift(timedelta(minutes=2))
    assert cache.get(f"evidence-preview:{photo.pk}") is None


def test_admin_page_shows_the_thumbnail_through_the_preview_view(client, agent, photo):
    client.force_login(agent)
    page = client.get(f"/admin/vetting/application/{photo.application.pk}/change/").content.decode()
    assert f'src="/evidence/{photo.pk}/preview/"' in page
    assert 'alt="Preview of id card.jpg"' in page


def test_unreadable_storage_gets_a_503_saying_so_and_no_audited_look(client, agent, photo, monkeypatch):
    def unreachable(self, name, mode="rb"):
        raise OSError("S3 _open of 'x.jpg' failed: Could not connect to the endpoint URL")

    monkeypatch.setattr(type(photo.file.storage), "open", unreachable)
    client.force_login(agent)
    response = client.get(f"/evidence/{photo.pk}/preview/")
    assert response.status_code == 503
    assert "The evidence storage cannot be reached right now" in response.content.decode()
    assert not AuditEvent.objects.filter(action="evidence.previewed").exists()


@pytest.fixture
def preview_cache_unreachable(settings, caplog):
    """The default cache (Redis in production, where previews live) refuses every connection."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port}/0",
        },
    }
    caplog.set_level(logging.WARNING, logger="evidence.previews")
    return caplog


def test_with_the_cache_unreachable_previews_are_made_afresh(client, agent, photo, preview_cache_unreachable):
    client.force_login(agent)
    response = client.get(f"/evidence/{photo.pk}/preview/")
    assert response.status_code == 200
    assert max(Image.open(io.BytesIO(response.content)).size) <= 480
    assert (
        f"the preview of evidence {photo.pk} could not be read from the cache (ConnectionError)"
        in preview_cache_unreachable.text
    )


def test_with_the_cache_unreachable_an_applicant_still_erases_and_the_purge_goes_on(
    client, photo, preview_cache_unreachable
):
    application = photo.application
    response = client.post(f"/status/{links.status_token(application)}/erase/")
    assert response.status_code == 302
    application.refresh_from_db()
    assert application.erased_at is not None
    assert not Evidence.objects.filter(pk=photo.pk).exists()
    assert (
        f"the preview of evidence {photo.pk} could not be removed from the cache"
        in preview_cache_unreachable.text
    )

    due = Evidence.objects.store(
        make_application(status=Application.Status.REJECTED),
        validate_upload(upload("id.jpg", jpeg_bytes((40, 40)))),
    )
    Application.objects.filter(pk=due.application.pk).update(updated_at=timezone.now() - timedelta(days=400))
    call_command("purge_evidence", stdout=io.StringIO())
    assert not Evidence.objects.stored().filter(pk=due.pk).exists()
    assert not Path(due.file.path).exists()
