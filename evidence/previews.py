"""Staff previews of image evidence: small PNGs made on demand.

They are cached in the private Django cache (never in static or media
files), keyed by the evidence id, and expire on their own, so a deleted
or purged file does not live on as a thumbnail for long.
"""

from __future__ import annotations

from django.core.cache import cache

from evidence.images import IMAGE_FORMATS, preview_png
from evidence.models import Evidence

PREVIEW_CACHE_SECONDS = 60 * 60


def _key(evidence: Evidence) -> str:
    return f"evidence-preview:{evidence.pk}"


def has_preview(evidence: Evidence) -> bool:
    return evidence.content_type in IMAGE_FORMATS


def preview_for(evidence: Evidence) -> bytes:
    """The PNG preview; raises FileNotFoundError when the stored file is gone."""
    cached = cache.get(_key(evidence))
    if cached is not None:
        return cached
    with evidence.file.open("rb") as stored:
        preview = preview_png(stored, evidence.content_type)
    cache.set(_key(evidence), preview, PREVIEW_CACHE_SECONDS)
    return preview


def forget_preview(evidence: Evidence) -> None:
    cache.delete(_key(evidence))
