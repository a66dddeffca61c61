from __future__ import annotations

from django.contrib import admin, messages
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from iama_vetting.admin_site import CheckedFilters
from notifications.models import OutboundEmail


@admin.register(OutboundEmail)
class OutboundEmailAdmin(CheckedFilters, admin.ModelAdmin):
    list_display = [
        "to",
        "subject",
        "template",
        "status",
        "attempts",
        "next_attempt_at",
        "short_last_error",
        "port_used",
        "sent_at",
    ]
    list_filter = ["status", "template"]
    search_fields = ["to", "subject"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    # The built message repeats the bodies as raw bytes: the bodies are what people read.
    readonly_fields = [field.name for field in OutboundEmail._meta.fields if field.name != "message"]
    actions = ["retry_now", "cancel"]

    def get_fields(self, request, obj=None):
        # Bodies of applicant mail are personal data: superusers only.
        hidden = set() if request.user.is_superuser else {"body_text", "body_html"}
        return [name for name in self.readonly_fields if name not in hidden]

    @admin.display(description=_("last error"))
    def short_last_error(self, mail: OutboundEmail) -> str:
        return Truncator(mail.last_error).chars(80)

    @admin.action(description=_("Retry now"), permissions=["change"])
    def retry_now(self, request, queryset) -> None:
        count = queryset.retry_now()
        self.message_user(
            request,
            ngettext(
                "%(count)d mail queued for sending now (mail being sent or already sent is left alone).",
                "%(count)d mails queued for sending now (mail being sent or already sent is left alone).",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )

    @admin.action(description=_("Cancel"), permissions=["change"])
    def cancel(self, request, queryset) -> None:
        count = queryset.cancel()
        self.message_user(
            request,
            ngettext(
                "%(count)d mail cancelled (mail being sent or already sent is left alone).",
                "%(count)d mails cancelled (mail being sent or already sent is left alone).",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
