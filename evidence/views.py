from __future__ import annotations

import logging
from urllib.parse import quote

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from evidence.models import Evidence
from iama_vetting.ratelimits import EVIDENCE_DOWNLOAD, rate_limited

logger = logging.getLogger(__name__)


def attachment_header(filename: str) -> str:
    """RFC 6266 Content-Disposition: an ASCII fallback plus the exact UTF-8 name."""
    fallback = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    fallback = fallback.replace("\\", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _get_evidence_for_user(request: HttpRequest, evidence_id) -> Evidence:
    if not request.user.has_perm("evidence.view_evidence"):
        raise PermissionDenied
    return get_object_or_404(Evidence, pk=evidence_id)


@require_GET
@staff_member_required
@rate_limited(EVIDENCE_DOWNLOAD)
def download(request: HttpRequest, evidence_id) -> HttpResponse:
    evidence = _get_evidence_for_user(request, evidence_id)
    if settings.EVIDENCE_X_ACCEL_PREFIX:
        # nginx serves the bytes from its internal location; the app only decides.
        response = HttpResponse(content_type=evidence.content_type)
        response["X-Accel-Redirect"] = settings.EVIDENCE_X_ACCEL_PREFIX.rstrip("/") + "/" + evidence.file.name
    else:
        try:
            stored_file = evidence.file.open("rb")
        except FileNotFoundError:
            logger.error("Evidence %s has a row but no file on disk.", evidence.pk)
            raise Http404("This evidence file is missing from storage.") from None
        response = FileResponse(stored_file, content_type=evidence.content_type)
    response["Content-Disposition"] = attachment_header(evidence.original_name)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response
