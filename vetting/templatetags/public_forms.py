"""Form rendering helpers for the public pages (accessibility)."""

from __future__ import annotations

from django import template
from django.conf import settings
from django.forms import BoundField

from evidence.validation import ALLOWED_EXTENSIONS_TEXT, ALLOWED_TYPES
from vetting import links

register = template.Library()


@register.filter
def accessible_widget(field: BoundField, extra_described_by: str = "") -> str:
    """The widget, described by its hint and its errors, and marked invalid when it has errors.

    `extra_described_by` names more hints by id, space-separated: one text above
    several fields (the evidence limits above every file input).
    """
    described_by = (extra_described_by or "").split()
    if field.help_text:
        described_by.append(f"{field.auto_id}_helptext")
    attrs = {}
    if field.errors:
        described_by.append(f"{field.auto_id}_error")
        attrs["aria-invalid"] = "true"
    if described_by:
        attrs["aria-describedby"] = " ".join(described_by)
    return field.as_widget(attrs=attrs)


@register.simple_tag
def upload_limits() -> dict:
    """The server's upload limits, for the hint text and for the script's checks (same numbers)."""
    return {
        "max_files": settings.EVIDENCE_MAX_FILES,
        "max_size": settings.EVIDENCE_MAX_FILE_SIZE,
        "max_size_mb": settings.EVIDENCE_MAX_FILE_SIZE // (1024 * 1024),
        "extensions": ",".join(ALLOWED_TYPES),
        "allowed_text": ALLOWED_EXTENSIONS_TEXT,
    }


@register.simple_tag
def unconfirmed_days() -> int:
    """Days before an unconfirmed application is deleted (what purge_unconfirmed and the link use)."""
    return links.UNCONFIRMED_LIFETIME.days
