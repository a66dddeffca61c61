"""The admin's invitation list: state, counts, expiry and the redemption check.

Everything shown here is what sync_invitations last stored: rendering the
list never calls the homeserver. The token itself is shown only to those who
may issue invitations; everyone else sees it masked. Changes go through
vetting.workflow ("Sync now", "Revoke", "Re-issue").
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import display_for_value
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from vetting import matrix, roles, workflow
from vetting.admin_readonly import ReadOnlyModelAdmin
from vetting.forms import RevokeInvitationForm
from vetting.models import Application, Invitation

ISSUE_PERMISSION = "vetting.issue_invitation"

# Why a ticked invitation that is no longer live is left alone by "Revoke selected invitations".
NOT_REVOCABLE = {
    Invitation.State.COMPLETED: _("already used"),
    Invitation.State.EXPIRED: _("expired"),
    Invitation.State.REVOKED: _("already revoked"),
}


def _may_see_tokens(request: HttpRequest) -> bool:
    return request.user.has_perm(ISSUE_PERMISSION)


def _token_column(show: bool):
    def token(invitation: Invitation) -> str:
        return invitation.token if show else invitation.masked_token

    token.short_description = _("token")
    return token


def _raw_response_field(show: bool):
    def raw_response(invitation: Invitation) -> str:
        text = json.dumps(invitation.raw_response, indent=2, sort_keys=True)
        if not show and invitation.token:
            text = text.replace(invitation.token, invitation.masked_token)
        return format_html("<pre>{}</pre>", text)

    raw_response.short_description = _("last homeserver answer")
    return raw_response


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyModelAdmin):
    """Invitations change only through the workflow (its buttons and actions)."""

    list_filter = ["state", "redemption_check", "backend"]
    list_select_related = ["application", "issued_by"]
    search_fields = ["application__reference", "matrix_username"]
    date_hierarchy = "issued_at"
    actions = ["revoke_selected", "reissue_selected"]
    change_list_template = "admin/vetting/invitation/change_list.html"

    def get_queryset(self, request):
        # An inviting admin's list: the invitations of the applications they see. Once an
        # application is reopened or rejected, its reference and Matrix username are no longer theirs.
        return roles.visible_to(request.user, super().get_queryset(request), "application__status")

    def get_list_display(self, request):
        return [
            "application_link",
            "matrix_username",
            "state",
            "uses",
            "expires_at",
            "tell_by",
            "redeemed",
            _token_column(_may_see_tokens(request)),
            "issued_by",
            "issued_at",
            "last_synced_at",
        ]

    def get_fields(self, request, obj=None):
        show = _may_see_tokens(request)
        return [
            "application_link",
            "matrix_username",
            "state",
            _token_column(show),
            "backend",
            "uses_allowed",
            "pending_uses",
            "completed_uses",
            "expires_at",
            "tell_by",
            "issued_by",
            "issued_at",
            "last_synced_at",
            "completed_at",
            "revoked_at",
            "revoked_by_whom",
            "redeemed",
            "redemption_note",
            "reminder_sent_at",
            _raw_response_field(show),
        ]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description=_("application"), ordering="application__reference")
    def application_link(self, invitation: Invitation) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:vetting_application_change", args=[invitation.application_id]),
            invitation.application.reference,
        )

    @admin.display(description=_("registrations (in progress / done)"))
    def uses(self, invitation: Invitation) -> str:
        return f"{invitation.pending_uses} / {invitation.completed_uses}"

    @admin.display(description=_("date told to the person"))
    def tell_by(self, invitation: Invitation) -> str:
        # A property, not a field: without this the detail page would print the raw datetime.
        return display_for_value(invitation.tell_by, self.get_empty_value_display())

    @admin.display(description=_("revoked by"))
    def revoked_by_whom(self, invitation: Invitation) -> str:
        if invitation.revoked_by is not None:
            return str(invitation.revoked_by)
        if invitation.revocation:
            return invitation.get_revocation_display()
        return self.get_empty_value_display()

    @admin.display(description=_("redeemed check"), ordering="redemption_check")
    def redeemed(self, invitation: Invitation) -> str:
        if invitation.redemption_check == Invitation.Check.MISMATCH:
            return format_html(
                '<strong class="invitation-flag">⚠ {}</strong>', invitation.get_redemption_check_display()
            )
        return invitation.get_redemption_check_display()

    def has_issue_permission(self, request) -> bool:
        return _may_see_tokens(request)

    def get_urls(self):
        return [
            path(
                "sync/",
                self.admin_site.admin_view(require_POST(self.sync_view)),
                name="vetting_invitation_sync",
            ),
        ] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        invitations = self.get_queryset(request)
        counts = dict(invitations.values_list("state").annotate(total=Count("pk")).order_by())
        extra_context = {
            **(extra_context or {}),
            "state_counts": [(label, counts.get(value, 0)) for value, label in Invitation.State.choices],
            "mismatch_count": invitations.filter(redemption_check=Invitation.Check.MISMATCH).count(),
            "can_sync": _may_see_tokens(request),
        }
        return super().changelist_view(request, extra_context)

    def sync_view(self, request: HttpRequest) -> HttpResponse:
        if not _may_see_tokens(request):
            raise PermissionDenied
        # With no live invitation the sync asks the homeserver nothing, so it would report success.
        problem = matrix.configuration_problem()
        if problem:
            self.message_user(request, _("Cannot sync: %(problem)s") % {"problem": problem}, messages.ERROR)
            return redirect(reverse("admin:vetting_invitation_changelist"))
        try:
            report = workflow.sync_invitations(actor=request.user)
        except matrix.MatrixError as error:
            self.message_user(request, f"{error} {error.advice}", messages.ERROR)
        else:
            self.message_user(
                request,
                _(
                    "Synced %(live)d live invitation(s): %(completed)d used, %(expired)d expired, "
                    "%(revoked)d gone, %(pending)d still waiting, %(mismatches)d account mismatch(es)."
                )
                % {
                    "live": report.live,
                    "completed": report.completed,
                    "expired": report.expired,
                    "revoked": report.revoked,
                    "pending": report.still_pending,
                    "mismatches": report.mismatches,
                },
                messages.WARNING if report.mismatches else messages.SUCCESS,
            )
        return redirect(reverse("admin:vetting_invitation_changelist"))

    def _bulk(self, request, applications, transition) -> None:
        done = 0
        for application in applications:
            try:
                transition(application, request.user, request=request)
            except workflow.WorkflowError as error:
                self.message_user(request, f"{application.reference}: {error}", messages.WARNING)
            else:
                done += 1
        if done:
            self.message_user(request, _("%(count)d invitation(s) done.") % {"count": done}, messages.SUCCESS)

    @staticmethod
    def _applications(queryset) -> list:
        # One action per application, however many of its invitations were ticked.
        return list(Application.objects.filter(pk__in=queryset.values("application_id")))

    @admin.action(description=_("Revoke selected invitations"), permissions=["issue"])
    def revoke_selected(self, request, queryset) -> HttpResponse | None:
        """Like delete_selected: a confirmation page with the reason first, then the workflow for each."""
        invitations = list(queryset.select_related("application").order_by("application__reference"))
        live = [invitation for invitation in invitations if invitation.state == Invitation.State.PENDING]
        left_alone = [
            f"{self._name(invitation)}: {NOT_REVOCABLE[invitation.state]}"
            for invitation in invitations
            if invitation.state != Invitation.State.PENDING
        ]
        if not live:
            self.message_user(
                request,
                _("Nothing was revoked: none of the selected invitations is live (%(why)s).")
                % {"why": "; ".join(left_alone)},
                messages.WARNING,
            )
            return None
        form = RevokeInvitationForm(request.POST if request.POST.get("post") == "yes" else None)
        if not form.is_valid():
            return self._revoke_confirmation(request, invitations, live, left_alone, form)
        done, refused = 0, []
        for invitation in live:
            try:
                workflow.revoke_invitation(
                    invitation.application, request.user, form.cleaned_data["reason"], request=request
                )
            except workflow.WorkflowError as error:
                refused.append(f"{self._name(invitation)}: {error}")
            else:
                done += 1
        if done:
            self.message_user(
                request, _("Revoked %(count)d invitation(s).") % {"count": done}, messages.SUCCESS
            )
        if left_alone or refused:
            self.message_user(
                request,
                # The workflow's messages end in a full stop; one at the very end is enough.
                _("Not revoked: %(names)s.")
                % {"names": "; ".join(n.rstrip(".") for n in left_alone + refused)},
                messages.WARNING,
            )
        return None

    def _revoke_confirmation(self, request, invitations, live, left_alone, form) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Revoke the selected invitations?"),
            # Every ticked id goes back, so what was left alone is named again after the revoke.
            "selected": invitations,
            "live": live,
            "left_alone": left_alone,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(
            request, "admin/vetting/invitation/revoke_selected_confirmation.html", context
        )

    @staticmethod
    def _name(invitation: Invitation) -> str:
        return f"{invitation.application.reference} ({invitation.matrix_username})"

    @admin.action(description=_("Re-issue selected invitations (expired or revoked)"), permissions=["issue"])
    def reissue_selected(self, request, queryset) -> None:
        self._bulk(request, self._applications(queryset), workflow.reissue_invitation)
