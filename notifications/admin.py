from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.contrib import admin, messages
from django.urls import Resolver404, resolve
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from iama_vetting.middleware import SECRET_URL_PARAMETERS
from notifications.models import OutboundEmail

# Some links in mail work for whoever holds them: a set-password or reset link
# chooses the person's password (audited as their own act), an applicant's
# confirmation or status link confirms, withdraws, erases or downloads their
# data. Nobody reading the outbox needs them working, so the admin shows them
# with the token masked; the mail as stored and sent keeps it.
_LINK = re.compile(r"https?://[^\s\"'<>]+")
# A token is far longer; a shorter value (a uidb64) is no secret, and
# replacing it wherever it occurs would garble the text.
_MIN_SECRET_LENGTH = 16
# Shown instead of the stored subject and bodies.
MASKED_FIELDS = {"subject": "shown_subject", "body_text": "shown_body_text", "body_html": "shown_body_html"}


def _capability_tokens(*texts: str) -> dict[str, str]:
    """The tokens (value: parameter name) in the texts' links to this site's pages."""
    tokens = {}
    for text in texts:
        for link in _LINK.findall(text):
            path = urlsplit(link).path
            # Our pages' paths end with a slash: what follows the last one is punctuation.
            try:
                match = resolve(path[: path.rfind("/") + 1])
            except Resolver404:
                continue
            for name, value in match.kwargs.items():
                if (
                    any(part in name for part in SECRET_URL_PARAMETERS)
                    and len(str(value)) >= _MIN_SECRET_LENGTH
                ):
                    tokens[str(value)] = name
    return tokens


def without_capabilities(mail: OutboundEmail) -> dict[str, str]:
    """The mail's subject and bodies with every capability token masked, wherever it occurs."""
    shown = {"subject": mail.subject, "body_text": mail.body_text, "body_html": mail.body_html}
    tokens = _capability_tokens(*shown.values())
    for field, text in shown.items():
        for value, name in tokens.items():
            text = text.replace(value, f"<{name} hidden>")
        shown[field] = text
    return shown


@admin.register(OutboundEmail)
class OutboundEmailAdmin(admin.ModelAdmin):
    list_display = [
        "to",
        "shown_subject",
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
    readonly_fields = [
        MASKED_FIELDS.get(field.name, field.name)
        for field in OutboundEmail._meta.fields
        if field.name != "message"
    ]
    actions = ["retry_now", "cancel"]

    def get_fields(self, request, obj=None):
        # Bodies of applicant mail are personal data: superusers only.
        hidden = set() if request.user.is_superuser else {"shown_body_text", "shown_body_html"}
        return [name for name in self.readonly_fields if name not in hidden]

    @admin.display(description=_("subject"), ordering="subject")
    def shown_subject(self, mail: OutboundEmail) -> str:
        return without_capabilities(mail)["subject"]

    @admin.display(description=_("text body"))
    def shown_body_text(self, mail: OutboundEmail) -> str:
        return without_capabilities(mail)["body_text"]

    @admin.display(description=_("HTML body"))
    def shown_body_html(self, mail: OutboundEmail) -> str:
        return without_capabilities(mail)["body_html"]

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
