from __future__ import annotations

from django.contrib import admin

from iama_vetting.models import CSPViolation


@admin.register(CSPViolation)
class CSPViolationAdmin(admin.ModelAdmin):
    """Read-only: the rows are what browsers reported."""

    list_display = ["directive", "blocked", "document_path", "count", "first_seen", "last_seen"]
    list_filter = ["directive"]
    search_fields = ["blocked", "document_path"]
    date_hierarchy = "last_seen"
    readonly_fields = list_display

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
