from __future__ import annotations

from django.contrib import admin

from notifications.models import OutboundEmail


@admin.register(OutboundEmail)
class OutboundEmailAdmin(admin.ModelAdmin):
    list_display = [
        "subject",
        "to",
        "template",
        "status",
        "attempts",
        "next_attempt_at",
        "port_used",
        "sent_at",
    ]
    list_filter = ["status", "template"]
    search_fields = ["to", "subject"]
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in OutboundEmail._meta.fields]

    def get_fields(self, request, obj=None):
        # Bodies of applicant mail are personal data: superusers only.
        hidden = set() if request.user.is_superuser else {"body_text", "body_html"}
        return [name for name in self.readonly_fields if name not in hidden]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
