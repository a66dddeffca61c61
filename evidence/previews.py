"""Staff previews of image evidence: small PNGs made on demand.

They are cached in the private Django cache (never in static or media
files), keyed by the evidence id, and expire on their own, so a deleted
or purged file does not live on as a thumbnail for long. The cache is a
convenience here: while it is unreachable, previews are made afresh, and
erasure and the purge go on (one left in the cache expires on its own).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from django.core.cache import cache

from evidence.images import IMAGE_FORMATS, preview_png
from evidence.models import Evidence
from iama_vetting.cache import UNREACHABLE

logger = logging.getLogger(__name__)

PREVIEW_CACHE_SECONDS = 60 * 60


def _key(evidence: Evidence) -> str:
    return f"evidence-preview:{evidence.pk}"


@contextlib.contextmanager
def _cache_optional(evidence: Evidence, what: str) -> Iterator[None]:
    try:
        yield
    except UNREACHABLE as error:
        # The error's class, not its text: a connection error can echo the URL with its password.
        logger.warning(
            "The cache is unreachable: the preview of evidence %s could not be %s the cache (%s).",
            evidence.pk,
            what,
            type(error).__name__,
        )


def has_preview(evidence: Evidence) -> bool:
    return evidence.content_type in IMAGE_FORMATS


def preview_for(evidence: Evidence) -> bytes:
    """The PNG preview; raises FileNotFoundError when the stored file is gone."""
    cached = None
    with _cache_optional(evidence, "read from"):
        cached = cache.get(_key(evidence))
    if cached is not None:
        return cached
    with evidence.file.open("rb") as stored:
        preview = preview_png(stored, evidence.content_type)
    with _cache_optional(evidence, "kept in"):
        cache.set(_key(evidence), preview, PREVIEW_CACHE_SECONDS)
    return preview


def forget_preview(evidence: Evidence) -> None:
    with _cache_optional(evidence, "removed from"):
        cache.delete(_key(evidence))
