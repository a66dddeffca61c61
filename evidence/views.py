from __future__ import annotations

import logging
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from evidence.models import Evidence
from evidence.previews import has_preview, preview_for
from iama_vetting.admin_site import admin_access_required
from iama_vetting.ratelimits import EVIDENCE_DOWNLOAD, rate_limited
from vetting import audit

logger = logging.getLogger(__name__)


def attachment_header(filename: str) -> str:
    """RFC 6266 Content-Disposition: an ASCII fallback plus the exact UTF-8 name."""
    fallback = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    fallback = fallback.replace("\\", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _get_evidence_for_user(request: HttpRequest, evidence_id) -> Evidence:
    if not request.user.has_perm("evidence.view_evidence"):
        raise PermissionDenied
    # Purged evidence has no file any more: like any other unknown id.
    return get_object_or_404(Evidence.objects.stored().select_related("application"), pk=evidence_id)


def _record_look(request: HttpRequest, evidence: Evidence, action: str) -> None:
    """Every look at evidence is audited, whoever looks."""
    audit.record(
        action,
        actor=request.user,
        target=evidence,
        request=request,
        details={"application": evidence.application.reference},
    )


def _storage_unreachable(evidence: Evidence) -> HttpResponse:
    """S3 down or a disk error: the file may well be there, so not a 404, and not a bug."""
    logger.exception("Evidence %s could not be read from storage.", evidence.pk)
    response = HttpResponse(
        "The evidence storage cannot be reached right now. Try again in a minute.",
        content_type="text/plain; charset=utf-8",
        status=503,
    )
    response["Retry-After"] = "60"
    return _private(response)


def _private(response: HttpResponse) -> HttpResponse:
    """Evidence is never sniffed into something else, and never kept by a cache."""
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@admin_access_required
@rate_limited(EVIDENCE_DOWNLOAD)
def download(request: HttpRequest, evidence_id) -> HttpResponse:
    evidence = _get_evidence_for_user(request, evidence_id)
    if settings.EVIDENCE_X_ACCEL_PREFIX and settings.EVIDENCE_STORAGE == "local":
        # nginx serves the bytes from its internal location; the app only decides,
        # so the look is recorded when it is allowed.
        _record_look(request, evidence, "evidence.downloaded")
        response = HttpResponse(content_type=evidence.content_type)
        response["X-Accel-Redirect"] = settings.EVIDENCE_X_ACCEL_PREFIX.rstrip("/") + "/" + evidence.file.name
    else:
        # Streamed by the app, from disk or from S3 chunk by chunk. On S3 this
        # is chosen over a presigned URL: the bytes leave only through this
        # permission check with our headers, and no bearer link to the bucket
        # ever reaches a browser, its history or a proxy log.
        try:
            stored_file = evidence.file.storage.open_stream(evidence.file.name)
        except FileNotFoundError:
            logger.error("Evidence %s has a row but no file in storage.", evidence.pk)
            raise Http404("This evidence file is missing from storage.") from None
        except OSError:
            return _storage_unreachable(evidence)
        # Recorded once the file is open: a missing file or unreachable storage
        # sends nothing, so it is no look at the evidence.
        try:
            _record_look(request, evidence, "evidence.downloaded")
        except BaseException:
            stored_file.close()
            raise
        response = FileResponse(stored_file, content_type=evidence.content_type)
        if not response.has_header("Content-Length"):
            response["Content-Length"] = str(evidence.size)
    response["Content-Disposition"] = attachment_header(evidence.original_name)
    return _private(response)


@require_GET
@admin_access_required
@rate_limited(EVIDENCE_DOWNLOAD)
def preview(request: HttpRequest, evidence_id) -> HttpResponse:
    """A small PNG of image evidence for the admin page; looking at it is audited like a download."""
    evidence = _get_evidence_for_user(request, evidence_id)
    if not has_preview(evidence):
        raise Http404("Only images have a preview.")
    try:
        image = preview_for(evidence)
    except FileNotFoundError:
        logger.error("Evidence %s has a row but no file on disk.", evidence.pk)
        raise Http404("This evidence file is missing from storage.") from None
    except OSError:
        return _storage_unreachable(evidence)
    except ValidationError:
        logger.error("Evidence %s cannot be decoded for a preview.", evidence.pk)
        raise Http404("This image cannot be previewed; download it instead.") from None
    _record_look(request, evidence, "evidence.previewed")
    response = HttpResponse(image, content_type="image/png")
    response["Content-Disposition"] = "inline"
    return _private(response)
