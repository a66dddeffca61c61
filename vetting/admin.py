from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from django.utils.translation import gettext_lazy as _

from evidence.admin import EvidenceInline
from vetting.models import Application


class StatusFilter(admin.SimpleListFilter):
    """Status filter whose default is the queue: applications staff still act on."""

    title = _("status")
    parameter_name = "status"
    OPEN = "open"
    ALL = "all"

    def lookups(self, request, model_admin):
        return [(self.OPEN, _("Open (needs action)")), (self.ALL, _("All"))] + list(
            Application.Status.choices
        )

    def value(self):
        return super().value() or self.OPEN

    def choices(self, changelist):
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.OPEN:
            return queryset.open()
        if value in Application.Status.values:
            return queryset.filter(status=value)
        return queryset


APPLICANT_FIELDS = [
    "reference",
    "status",
    "source",
    "full_name",
    "email",
    "matrix_username",
    "phone",
    "referral",
    "statement",
    "consent_given_at",
    "created_at",
]


@admin.register(Application)
class ApplicationAdmin(admin.ModelAdmin):
    list_display = ["reference", "full_name", "email", "status", "source", "evidence_count", "created_at"]
    list_filter = [StatusFilter, "source"]
    search_fields = ["reference", "full_name", "email"]
    date_hierarchy = "created_at"
    ordering = ["created_at"]
    inlines = [EvidenceInline]
    fieldsets = [(_("Applicant"), {"fields": APPLICANT_FIELDS})]
    readonly_fields = APPLICANT_FIELDS

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(evidence_total=Count("evidence"))

    @admin.display(description=_("evidence"), ordering="evidence_total")
    def evidence_count(self, application: Application) -> int:
        return application.evidence_total

    def has_add_permission(self, request) -> bool:
        # Applications come from the public form; staff entry arrives with the workflow.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
