"""Views of the project itself: the CSP report endpoint, security.txt, the 500 and CSRF failure pages."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    HttpResponseServerError,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from iama_vetting import ratelimits
from iama_vetting.logs import escape_control_characters
from iama_vetting.middleware import loggable_path, page_route
from iama_vetting.models import CSPViolation

logger = logging.getLogger("iama_vetting.csp")

CSP_REPORT_MAX_BYTES = 64 * 1024
# A reports+json body may batch many reports; more than this in one body is
# not a browser's doing, and the rest is ignored.
CSP_REPORT_MAX_ENTRIES = 20
CSP_REPORT_TYPES = ("application/csp-report", "application/reports+json", "application/json")
# Longer than any path gunicorn accepts (its request line is at most 4094
# bytes); bounds what masking resolves and caches.
CSP_REPORT_MAX_PATH = 4096
# Stored for a reported page that is none of ours: anyone can post any page.
OTHER_PAGE = "(other)"


def _text(value: Any, limit: int) -> str:
    """A report field as safe, bounded text: control characters escaped, then cut."""
    return escape_control_characters(str(value or ""))[:limit]


def _masked_path(path: str) -> str:
    """A reported page's path with its capability tokens masked, as the access line shows it."""
    page = HttpRequest()
    page.path = page.path_info = path[:CSP_REPORT_MAX_PATH]
    return loggable_path(page)


def _loggable_uri(uri: str) -> str:
    """Scheme, host and path, tokens masked: query strings and our status and reset paths
    carry tokens. Keywords like 'inline' stay."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        bare = uri.split("?")[0].split("#")[0]
        return _masked_path(bare) if bare.startswith("/") else bare
    return f"{parts.scheme}://{parts.netloc}{_masked_path(parts.path)}"


def _blocked_origin(uri: str) -> str:
    """What the table keeps of a blocked URI: its origin, the scheme of a data: or blob:
    URL, 'self' for a bare path, or the browser's keyword ('inline', 'eval')."""
    parts = urlsplit(uri)
    if parts.scheme and parts.netloc:
        # Never a user:password@ that someone put in a URL.
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"
    if parts.scheme:
        return parts.scheme
    return "self" if uri.startswith("/") else uri


def _violations(payload: Any) -> list[dict[str, Any]]:
    """The violation bodies in any of the three formats, as (old-style) csp-report dicts.

    Raises ValueError when the JSON is not shaped like a report.
    """
    if isinstance(payload, dict) and isinstance(payload.get("csp-report"), dict):
        return [payload["csp-report"]]
    if isinstance(payload, list):
        violations = []
        for entry in payload[:CSP_REPORT_MAX_ENTRIES]:
            if not isinstance(entry, dict) or not isinstance(entry.get("body"), dict):
                raise ValueError("A report entry has no body.")
            if entry.get("type") != "csp-violation":
                continue
            body = entry["body"]
            violations.append(
                {
                    "effective-directive": body.get("effectiveDirective"),
                    "blocked-uri": body.get("blockedURL"),
                    "document-uri": body.get("documentURL") or entry.get("url"),
                }
            )
        return violations
    raise ValueError("Not a CSP report.")


def _directive(violation: dict[str, Any]) -> str:
    directive = violation.get("effective-directive") or str(violation.get("violated-directive") or "")
    return _text(str(directive).split(" ")[0], 64)


def _document_path(violation: dict[str, Any]) -> str:
    return urlsplit(str(violation.get("document-uri") or "")).path[:CSP_REPORT_MAX_PATH]


def _normalized(violation: dict[str, Any]) -> tuple[str, str, str]:
    """(directive, blocked URI, document path) for the log: bounded, tokens masked."""
    blocked = _loggable_uri(str(violation.get("blocked-uri") or ""))
    return _directive(violation), _text(blocked, 512), _text(_masked_path(_document_path(violation)), 512)


def _kind(violation: dict[str, Any]) -> tuple[str, str, str]:
    """(directive, blocked origin, page route) for the table: the log keeps the details.

    Paths of blocked files and pages that are none of ours would let one
    client add a row per report; an origin and our routes are few.
    """
    blocked = _text(_blocked_origin(str(violation.get("blocked-uri") or "")), 512)
    return _directive(violation), blocked, page_route(_document_path(violation)) or OTHER_PAGE


@csrf_exempt
@require_POST
@ratelimits.rate_limited(ratelimits.CSP_REPORT)
def csp_report(request: HttpRequest) -> HttpResponse:
    if request.content_type not in CSP_REPORT_TYPES:
        return JsonResponse({"error": "unsupported_media_type"}, status=415)
    try:
        declared_length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared_length = 0
    if declared_length > CSP_REPORT_MAX_BYTES:
        return JsonResponse({"error": "too_large"}, status=413)
    # Read at most one byte past the limit, whatever Content-Length claimed.
    body = request.read(CSP_REPORT_MAX_BYTES + 1)
    if len(body) > CSP_REPORT_MAX_BYTES:
        return JsonResponse({"error": "too_large"}, status=413)
    try:
        violations = [
            (_normalized(violation), _kind(violation)) for violation in _violations(json.loads(body))
        ]
    except (ValueError, RecursionError):
        # Not JSON, not UTF-8, nested absurdly deep, or not shaped like a report.
        return JsonResponse({"error": "invalid_report"}, status=400)
    for (directive, blocked, document_path), kind in violations:
        logger.warning(
            "CSP violation: %s blocked %s on %s",
            directive,
            blocked,
            document_path,
            extra={"csp_directive": directive, "csp_blocked_uri": blocked, "csp_document_uri": document_path},
        )
        CSPViolation.objects.record(*kind)
    return HttpResponse(status=204)


@require_GET
def security_txt(request: HttpRequest) -> HttpResponse:
    """RFC 9116. Expires is always a year ahead, so the file never goes stale."""
    contact = settings.SECURITY_CONTACT
    # Settings accept an https:// or tel: URI, or an e-mail address with or without mailto:.
    if "://" not in contact and not contact.startswith(("mailto:", "tel:")):
        contact = f"mailto:{contact}"
    expires = (timezone.now() + timedelta(days=365)).replace(microsecond=0)
    lines = [
        f"Contact: {contact}",
        f"Expires: {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "Preferred-Languages: en",
        f"Canonical: {settings.SITE_URL}/.well-known/security.txt",
    ]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")


def server_error(request: HttpRequest) -> HttpResponse:
    """Our 500 page (urls.handler500), without its stylesheet if even that fails.

    The stylesheet's name comes from the collected files' manifest; when the
    manifest lacks it, Django's own handler fails too, and gunicorn answers
    with its bare "Internal Server Error".
    """
    try:
        return HttpResponseServerError(render_to_string("500.html"))
    except Exception:
        logging.getLogger(__name__).exception("The 500 page could not be rendered with its stylesheet.")
        return HttpResponseServerError(render_to_string("500.html", {"without_stylesheet": True}))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal as our page (CSRF_FAILURE_VIEW). It offers the
    application form only to someone who was sending it: after a refused status
    page, withdrawal or erasure, a new application is the wrong way on."""
    sending_application = request.method == "POST" and request.path_info == reverse("vetting:apply")
    return HttpResponseForbidden(
        render_to_string("403_csrf.html", {"sending_application": sending_application}, request=request)
    )
