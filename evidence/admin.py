from __future__ import annotations

from django.contrib import admin
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from evidence.models import Evidence
from evidence.previews import has_preview


class EvidenceInline(admin.TabularInline):
    """Evidence shown on the application's page, read-only, with download links."""

    model = Evidence
    extra = 0
    can_delete = False
    fields = [
        "preview",
        "download_link",
        "content_type",
        "human_size",
        "note",
        "uploaded_by",
        "uploaded_at",
        "sha256",
    ]
    readonly_fields = fields
    ordering = ["uploaded_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description=_("file"))
    def download_link(self, evidence: Evidence) -> str:
        if evidence.purged_at:
            return _("purged on %(date)s") % {"date": evidence.purged_at.date().isoformat()}
        return format_html(
            '<a href="{}">{}</a>',
            reverse("evidence:download", args=[evidence.pk]),
            evidence.original_name,
        )

    @admin.display(description=_("preview"))
    def preview(self, evidence: Evidence) -> str:
        # A purged photo keeps its type but has nothing left to show or download.
        if evidence.purged_at:
            return self.get_empty_value_display()
        # PDFs and Word files are never rendered in the staff browser: download only.
        if not has_preview(evidence):
            return _("Download to view")
        return format_html(
            '<a href="{}"><img class="evidence-preview" src="{}" alt="{}" loading="lazy"></a>',
            reverse("evidence:download", args=[evidence.pk]),
            reverse("evidence:preview", args=[evidence.pk]),
            _("Preview of %(name)s") % {"name": evidence.original_name},
        )

    @admin.display(description=_("size"))
    def human_size(self, evidence: Evidence) -> str:
        return filesizeformat(evidence.size)
