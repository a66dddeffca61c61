from __future__ import annotations

from datetime import UTC
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, CharField, IntegerField, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from evidence.admin import EvidenceInline
from evidence.models import Evidence
from iama_vetting.admin_site import admin_form
from vetting import (
    admin_invitations,  # noqa: F401  (registers the invitation list)
    admin_staff,  # noqa: F401  (registers the staff accounts page)
    matrix,
    roles,
    workflow,
)
from vetting.admin_readonly import ReadOnlyModelAdmin
from vetting.forms import (
    InformationRequestForm,
    InvitationForm,
    ReasonForm,
    RejectForm,
    RevokeInvitationForm,
    StaffApplicationForm,
    VerificationForm,
    score_display,
)
from vetting.models import Application, AuditEvent, Invitation, StaffNote
from vetting.views import STORAGE_FAILED_MESSAGE


class StatusFilter(admin.SimpleListFilter):
    """Status filter whose default is the queue: the applications this person acts on (roles.work_statuses)."""

    title = _("status")
    parameter_name = "status"
    OPEN = "open"
    ALL = "all"

    def lookups(self, request, model_admin):
        statuses = [
            (value, label)
            for value, label in Application.Status.choices
            if roles.sees_status(request.user, value)
        ]
        return [(self.OPEN, _("Open (needs action)")), (self.ALL, _("All"))] + statuses

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
            return queryset.filter(status__in=roles.work_statuses(request.user))
        if value in Application.Status.values:
            return queryset.filter(status=value)
        return queryset


class ClaimFilter(admin.SimpleListFilter):
    title = _("claim")
    parameter_name = "claim"

    def lookups(self, request, model_admin):
        return [("mine", _("Claimed by me")), ("unclaimed", _("Unclaimed"))]

    def queryset(self, request, queryset):
        if self.value() == "mine":
            # Decided and closed applications keep their claimer: they are no longer anyone's work.
            return queryset.filter(claimed_by=request.user, status__in=roles.VETTING_WORK_STATUSES)
        if self.value() == "unclaimed":
            return queryset.filter(claimed_by__isnull=True)
        return queryset


class AnswerFilter(admin.SimpleListFilter):
    """Applications whose applicant answered a request for information that staff have yet to review
    (ApplicationQuerySet.with_unreviewed_answer)."""

    title = _("answers")
    parameter_name = "answer"

    def lookups(self, request, model_admin):
        return [("unreviewed", _("Answered, to review again"))]

    def queryset(self, request, queryset):
        if self.value() == "unreviewed":
            return queryset.filter(has_unreviewed_answer=True)
        return queryset


class ApplicationEvidenceInline(EvidenceInline):
    """The evidence inline with its uploaders in the same query: not one query per file."""

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("uploaded_by")


# On an application's page; an address that applied hundreds of times must not make it slow.
EARLIER_APPLICATIONS_SHOWN = 10

APPLICANT_FIELDS = [
    "reference",
    "source",
    "full_name",
    "email",
    "matrix_username",
    "phone",
    "referral",
    "statement",
    "consent_given_at",
    "privacy_notice_version",
    "created_at",
    "email_confirmed_at",
    "erased_at",
]
PROGRESS_FIELDS = [
    "status",
    "claimed_by",
    "claimed_at",
    "information_request",
    "decided_by",
    "decided_at",
    "decision_reason",
    "message_to_applicant",
]
VERIFICATION_FIELDS = [
    "identity_verified",
    "verification_method",
    "verified_on",
    "verification_location",
    "score",
    "recommendation",
    "verification_notes",
    "verification_recorded_by",
    "verification_recorded_at",
]
# An inviting admin sees what issuing a token needs: who the person is, who approved them, and
# their invitations; not the statement, the verification, the reasons or the answers of vetting.
INVITING_ADMIN_FIELDSETS = [
    (_("Applicant"), {"fields": ["reference", "full_name", "email", "matrix_username"]}),
    (_("Decision"), {"fields": ["status", "decided_by", "decided_at"]}),
    (_("Invitations"), {"fields": ["invitation_list"]}),
]
# The "All applications from this e-mail address" link's lookup (ApplicationAdmin.linked_lookups).
SAME_EMAIL_LOOKUP = "email__iexact"

# Their confirmation pages show the verification being decided on.
DECISION_ACTIONS = ("approve", "reject", "request_information")
# What each confirmation page asks; the button under it keeps DESIGN.md's label.
ACTION_QUESTIONS = {
    "record_verification": _("Record the verification of application %(reference)s (%(name)s)?"),
    "request_information": _("Ask %(name)s (application %(reference)s) for more information?"),
    "approve": _("Approve application %(reference)s (%(name)s)?"),
    "reject": _("Reject application %(reference)s (%(name)s)?"),
    "reopen": _("Reopen application %(reference)s (%(name)s)?"),
    "issue_invitation": _("Issue a Matrix invitation for application %(reference)s (%(name)s)?"),
    "revoke_invitation": _("Revoke the Matrix invitation of application %(reference)s (%(name)s)?"),
    "reissue_invitation": _("Issue a new Matrix invitation for application %(reference)s (%(name)s)?"),
}
# Taken with one click on the application's page, without a confirmation page:
# they are undone as easily (claim ↔ release) and audited like every transition.
ONE_CLICK_ACTIONS = frozenset({"claim", "release"})

# Per staff transition: the form its confirmation page asks for (None: a plain
# "are you sure", or no page at all for ONE_CLICK_ACTIONS), and how to call
# vetting.workflow with the cleaned data.
ACTION_FORMS: dict[str, type[forms.Form] | None] = {
    "claim": None,
    "release": None,
    "record_verification": VerificationForm,
    "request_information": InformationRequestForm,
    "approve": None,
    "reject": RejectForm,
    "reopen": ReasonForm,
    "issue_invitation": InvitationForm,
    "revoke_invitation": RevokeInvitationForm,
    "reissue_invitation": InvitationForm,
}


class SeenStateForm(forms.Form):
    """What the person's page showed when they chose an action (hidden fields of its form)."""

    seen_status = forms.ChoiceField(choices=Application.Status.choices, required=False)
    seen_claimed_by = forms.IntegerField(min_value=1, required=False)
    seen_verification = forms.DateTimeField(required=False)


# A hand-made or mangled POST: its hidden fields are not ones the page sent.
BAD_SEEN_STATE = _(
    "This action did not come from the application's page as it was sent: open the application "
    "again and retry. Nothing was changed."
)


def _initial(name: str, application: Application) -> dict:
    """What the confirmation form starts with: the verification recorded before, or the
    username asked for (or the one assigned before)."""
    if name == "record_verification":
        return VerificationForm.initial_from(application)
    if name not in workflow.INVITATION_ACTIONS:
        return {}
    earlier = application.invitations.order_by("-issued_at").first()
    return {"matrix_username": earlier.matrix_username if earlier else application.matrix_username}


def _run_transition(name: str, application: Application, user, data: dict, request: HttpRequest):
    """Call the workflow function for `name`; returns what it returns (the invitation, for issuing)."""
    if name == "record_verification":
        return workflow.record_verification(
            application,
            user,
            identity_verified=data["identity_verified"],
            method=data["verification_method"],
            verified_on=data["verified_on"],
            location=data["verification_location"],
            score=data["score"],
            recommendation=data["recommendation"],
            notes=data["verification_notes"],
            request=request,
        )
    if name == "request_information":
        return workflow.request_information(application, user, data["question"], request=request)
    if name == "reject":
        return workflow.reject(
            application, user, data["reason"], data["message_to_applicant"], request=request
        )
    if name == "reopen":
        return workflow.reopen(application, user, data["reason"], request=request)
    if name in workflow.INVITATION_ACTIONS:
        return getattr(workflow, name)(application, user, data["matrix_username"], request=request)
    if name == "revoke_invitation":
        return workflow.revoke_invitation(application, user, data["reason"], request=request)
    return getattr(workflow, name)(application, user, request=request)


def audit_url(application: Application) -> str:
    """The audit list showing this application's events (its own and its evidence's)."""
    query = urlencode({ApplicationEventsFilter.parameter_name: application.reference})
    return f"{reverse('admin:vetting_auditevent_changelist')}?{query}"


def _handover(invitation: Invitation, application: Application, user) -> str:
    """After issuing: the username, the date to tell the person, and where the token went."""
    parts = [
        _("Username: %(user_id)s. Tell the person the token works until %(date)s UTC.")
        % {
            "user_id": invitation.user_id(matrix.server_name()),
            "date": invitation.tell_by.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
        }
    ]
    if user.email:
        parts.append(
            _("The token and the next steps are being mailed to you at %(email)s.") % {"email": user.email}
        )
    else:
        parts.append(
            _("No mail was sent: your account has no e-mail address. The token is on the invitation's page.")
        )
    if workflow.token_mailed_to_applicant(application):
        parts.append(_("The token is also being mailed to the applicant."))
    return format_html(
        '{} <a href="{}">{}</a>',
        " ".join(str(part) for part in parts),
        reverse("admin:vetting_invitation_change", args=[invitation.pk]),
        _("Open the invitation"),
    )


@admin.register(Application)
class ApplicationAdmin(admin.ModelAdmin):
    # What a queue needs at 1280 px beside the sidebar and filters; the address, the source and
    # the evidence are a click away (search, the source filter, the application's page).
    list_display = ["reference", "full_name", "status", "applied_at", "claimed_by", "answered"]
    list_filter = [StatusFilter, ClaimFilter, AnswerFilter, "source"]
    list_select_related = ["claimed_by"]
    search_fields = ["reference", "full_name", "email"]
    date_hierarchy = "created_at"
    linked_lookups = (SAME_EMAIL_LOOKUP,)
    ordering = ["created_at"]
    inlines = [ApplicationEvidenceInline]
    actions = ["claim_selected", "release_selected"]
    change_form_template = "admin/vetting/application/change_form.html"
    fieldsets = [
        (_("Applicant"), {"fields": APPLICANT_FIELDS}),
        (_("Progress"), {"fields": PROGRESS_FIELDS}),
        (_("Verification"), {"fields": VERIFICATION_FIELDS}),
        (_("Earlier applications"), {"fields": ["earlier_applications"]}),
        (_("Invitations"), {"fields": ["invitation_list"]}),
    ]
    readonly_fields = (
        APPLICANT_FIELDS
        + PROGRESS_FIELDS
        + VERIFICATION_FIELDS
        + ["earlier_applications", "invitation_list", "invitation_list_unlinked"]
    )

    # The full-result count is a second COUNT over every row; the queue doesn't need it.
    show_full_result_count = False

    def get_queryset(self, request):
        queryset = super().get_queryset(request).with_unreviewed_answer()
        # Lists, pages, actions and search all go through here.
        return roles.visible_to(request.user, queryset)

    # Who claimed an application is who verified it, and answers belong to vetting: an
    # inviting admin's list shows neither, as their page of an application does not.
    VETTING_COLUMNS = ("claimed_by", "answered")
    VETTING_FILTERS = (ClaimFilter, AnswerFilter)

    def get_list_display(self, request):
        if roles.sees_every_application(request.user):
            return self.list_display
        return [column for column in self.list_display if column not in self.VETTING_COLUMNS]

    def get_list_filter(self, request):
        if roles.sees_every_application(request.user):
            return self.list_filter
        return [list_filter for list_filter in self.list_filter if list_filter not in self.VETTING_FILTERS]

    @admin.display(description=_("answered"), boolean=True, ordering="has_unreviewed_answer")
    def answered(self, application: Application) -> bool:
        """The applicant answered a request for information since the last verification: review it again."""
        return application.has_unreviewed_answer

    @admin.display(description=_("applied at"), ordering="created_at")
    def applied_at(self, application: Application) -> str:
        # Short enough for one line in the queue; Django's default ("Nov. 29, 2026, 9:50 a.m.") is not.
        return localtime(application.created_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description=_("from the same e-mail or Matrix username"))
    def earlier_applications(self, application: Application) -> str:
        # Erasure blanks these fields: a blank one matches every other erased application, not the person.
        same_person = Q()
        if application.email:
            same_person |= Q(email__iexact=application.email)
        if application.matrix_username:
            same_person |= Q(matrix_username=application.matrix_username)
        if not same_person:
            return _("None")
        # One more than shown tells whether there are more, without a count.
        others = list(
            Application.objects.filter(same_person)
            .exclude(pk=application.pk)
            # Applications sent in the same instant (a double submit) keep their order of arrival.
            .order_by("-created_at", "-pk")
            .only("pk", "reference", "status", "created_at")[: EARLIER_APPLICATIONS_SHOWN + 1]
        )
        if not others:
            return _("None")
        more = ""
        if len(others) > EARLIER_APPLICATIONS_SHOWN:
            others = others[:EARLIER_APPLICATIONS_SHOWN]
            shown = _("Only the %(shown)d most recent are shown.") % {"shown": EARLIER_APPLICATIONS_SHOWN}
            more = format_html("<p>{}</p>", shown)
            if application.email:
                # Every status: the list's default filter shows only open applications.
                query = {SAME_EMAIL_LOOKUP: application.email, StatusFilter.parameter_name: StatusFilter.ALL}
                more = format_html(
                    '<p>{} <a href="{}?{}">{}</a></p>',
                    shown,
                    reverse("admin:vetting_application_changelist"),
                    urlencode(query),
                    _("All applications from this e-mail address"),
                )
        return format_html(
            "<ul>{}</ul>{}",
            format_html_join(
                "",
                '<li><a href="{}">{}</a> · {} · {}</li>',
                (
                    (
                        reverse("admin:vetting_application_change", args=[other.pk]),
                        other.reference,
                        other.created_at.strftime("%Y-%m-%d"),
                        other.get_status_display(),
                    )
                    for other in others
                ),
            ),
            more,
        )

    def get_fieldsets(self, request, obj=None):
        # Earlier applications are left out too: they would name ones outside an inviting admin's list.
        fieldsets = self.fieldsets if roles.sees_every_application(request.user) else INVITING_ADMIN_FIELDSETS
        if request.user.has_perm("vetting.view_invitation"):
            return fieldsets
        # Agents may not open invitations: the same list, without links that would answer 403.
        return [*fieldsets[:-1], (_("Invitations"), {"fields": ["invitation_list_unlinked"]})]

    @admin.display(description=_("Matrix invitations (as last synced)"))
    def invitation_list(self, application: Application, linked: bool = True) -> str:
        invitations = application.invitations.order_by("-issued_at")
        if not invitations:
            return _("None")
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} · {} · {} {} · {}</li>",
                (
                    (
                        format_html(
                            '<a href="{}">@{}</a>',
                            reverse("admin:vetting_invitation_change", args=[invitation.pk]),
                            invitation.matrix_username,
                        )
                        if linked
                        else f"@{invitation.matrix_username}",
                        invitation.get_state_display(),
                        _("expires"),
                        invitation.expires_at.strftime("%Y-%m-%d %H:%M"),
                        invitation.redemption_note or invitation.get_redemption_check_display(),
                    )
                    for invitation in invitations
                ),
            ),
        )

    @admin.display(description=_("Matrix invitations (as last synced)"))
    def invitation_list_unlinked(self, application: Application) -> str:
        return self.invitation_list(application, linked=False)

    # Applications change only through the workflow's buttons.
    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        return [
            path(
                "<path:object_id>/action/<str:name>/",
                self.admin_site.admin_view(self.transition_view),
                name="vetting_application_transition",
            ),
            path(
                "<path:object_id>/note/",
                self.admin_site.admin_view(require_POST(self.add_note_view)),
                name="vetting_application_add_note",
            ),
        ] + super().get_urls()

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        # `obj` is the application the change view already loaded: no second query for it.
        if obj is not None:
            # An action the role allows but this person may not take (four-eyes, an address mail cannot
            # carry) or that cannot work here (no homeserver): said beside the buttons, not just missing.
            context["transitions"], context["refusals"] = workflow.page_actions(obj, request.user)
            context["one_click_actions"] = ONE_CLICK_ACTIONS
            context["notes"] = obj.notes.select_related("author")
            # In place of Django's History, which lists admin edits: applications are never edited here.
            context["audit_url"] = audit_url(obj) if request.user.has_perm("vetting.view_auditevent") else ""
            # Vetting material, like the fields an inviting admin does not see (INVITING_ADMIN_FIELDSETS).
            context["shows_answers"] = roles.sees_every_application(request.user)
            if context["shows_answers"]:
                # Newest first (the model's ordering); two queries whatever the number of answers.
                context["information_replies"] = obj.information_replies.prefetch_related("evidence")
            # Without it the evidence inline is hidden too: the answers then only count their files.
            context["can_view_evidence"] = request.user.has_perm("evidence.view_evidence")
            context["can_add_note"] = request.user.has_perm("vetting.add_staffnote")
        return super().render_change_form(request, context, add, change, form_url, obj)

    def history_view(self, request, object_id, extra_context=None):
        """An application's history is its audit trail (for those who may read it)."""
        application = self._application_or_404(request, object_id)
        if not request.user.has_perm("vetting.view_auditevent"):
            raise PermissionDenied
        return redirect(audit_url(application))

    def _application_or_404(self, request, object_id) -> Application:
        application = self.get_object(request, object_id)
        if application is None or not self.has_view_permission(request, application):
            raise PermissionDenied
        return application

    def transition_view(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        if name not in workflow.STAFF_TRANSITIONS:
            raise PermissionDenied
        application = self._application_or_404(request, object_id)
        if name in ONE_CLICK_ACTIONS and request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        change_url = reverse("admin:vetting_application_change", args=[application.pk])
        form_class = ACTION_FORMS[name]
        form = form_class(request.POST or None, initial=_initial(name, application)) if form_class else None
        failure = None
        if request.method == "POST" and (form is None or form.is_valid()):
            seen = SeenStateForm(request.POST)
            if not seen.is_valid():
                self.message_user(request, BAD_SEEN_STATE, messages.ERROR)
                return redirect(change_url)
            # The state the person saw when they chose the action: when someone else
            # acted in between, the workflow then says so (and by whom), not just "not possible".
            if seen.cleaned_data["seen_status"]:
                application.status = seen.cleaned_data["seen_status"]
            # And whose claim they saw (blank: none): Release must not end a claim made since.
            if "seen_claimed_by" in request.POST:
                application.claimed_by_id = seen.cleaned_data["seen_claimed_by"]
            # And when the verification it showed was recorded: a decision is taken on that one.
            if "seen_verification" in request.POST:
                application.verification_recorded_at = seen.cleaned_data["seen_verification"]
            try:
                result = _run_transition(
                    name, application, request.user, form.cleaned_data if form else {}, request
                )
            except workflow.WorkflowError as error:
                # A lost race is told on the application's page, which shows what the winner did; so
                # is a one-click action's refusal. Any other (a homeserver that failed, a username
                # taken) is said on this page, above what was typed, to correct or send again.
                if isinstance(error, workflow.AlreadyDecided) or name in ONE_CLICK_ACTIONS:
                    self.message_user(request, str(error), messages.ERROR)
                    return redirect(change_url)
                failure = str(error)
            else:
                done = _("%(action)s: done. The application is now %(status)s.") % {
                    "action": workflow.STAFF_TRANSITIONS[name].label,
                    "status": application.status_phrase,
                }
                if isinstance(result, Invitation):
                    done = format_html("{} {}", done, _handover(result, application, request.user))
                self.message_user(request, done, messages.SUCCESS)
                return redirect(change_url)
        refusal = workflow.guard_reason(name, application, request.user)
        if refusal is None and name in workflow.INVITATION_ACTIONS:
            # Said when the page opens: the workflow finds it only once the form is sent.
            refusal = matrix.configuration_problem()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": application,
            "title": workflow.STAFF_TRANSITIONS[name].label,
            "action_label": workflow.STAFF_TRANSITIONS[name].label,
            "question": ACTION_QUESTIONS[name]
            % {"reference": application.reference, "name": application.full_name},
            "form": form,
            "adminform": admin_form(form) if form else None,
            "failure": failure,
            "change_url": change_url,
            "refusal": refusal,
        }
        if name in DECISION_ACTIONS:
            context["decision"] = True
            context["score"] = score_display(application.score)
            context["warning"] = workflow.decision_warning(name, application)
        if name in DECISION_ACTIONS or name == "record_verification":
            # Newest first (the model's ordering): what the applicant last told staff.
            context["latest_answer"] = application.information_replies.prefetch_related("evidence").first()
        if name == "record_verification" and application.verification_recorded_at is not None:
            context["earlier_verification"] = True
        return TemplateResponse(request, "admin/vetting/application/transition.html", context)

    def add_note_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        application = self._application_or_404(request, object_id)
        try:
            workflow.add_note(application, request.user, request.POST.get("text", ""), request=request)
        except workflow.WorkflowError as error:
            self.message_user(request, str(error), messages.ERROR)
        else:
            self.message_user(request, _("Note added."), messages.SUCCESS)
        return redirect(reverse("admin:vetting_application_change", args=[application.pk]) + "#notes")

    def add_view(self, request, form_url="", extra_context=None):
        """Staff entry of an application for someone vetted in person, evidence included."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = StaffApplicationForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                application = workflow.submit_staff_application(
                    form.save(commit=False), form.validated_uploads, request.user, request=request
                )
            except OSError:
                form.add_error(None, STORAGE_FAILED_MESSAGE)
            else:
                self.message_user(
                    request,
                    _("Application %(reference)s was entered and is in the queue.")
                    % {"reference": application.reference},
                    messages.SUCCESS,
                )
                return redirect(reverse("admin:vetting_application_change", args=[application.pk]))
        files = [field.name for pair in form.evidence_fields() for field in pair]
        fieldsets = [
            (None, {"fields": [name for name in form.fields if name not in files]}),
            (_("Evidence"), {"fields": files}),
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Enter an application for someone you vetted in person"),
            "form": form,
            "adminform": admin_form(form, fieldsets),
        }
        return TemplateResponse(request, "admin/vetting/application/staff_add.html", context)

    def _bulk(self, request, queryset, transition) -> None:
        done, refused = 0, []
        for application in queryset:
            try:
                transition(application, request.user, request=request)
            except workflow.WorkflowError as error:
                refused.append(f"{application.reference}: {error}")
            else:
                done += 1
        if done:
            self.message_user(
                request, _("%(count)d application(s) done.") % {"count": done}, messages.SUCCESS
            )
        for refusal in refused:
            self.message_user(request, refusal, messages.WARNING)

    @admin.action(description=_("Claim selected applications"), permissions=["claim"])
    def claim_selected(self, request, queryset) -> None:
        self._bulk(request, queryset, workflow.claim)

    @admin.action(description=_("Release selected applications"), permissions=["claim"])
    def release_selected(self, request, queryset) -> None:
        self._bulk(request, queryset, workflow.release)

    def has_claim_permission(self, request) -> bool:
        return request.user.has_perm("vetting.claim_application")


def _events_of(applications) -> Q:
    """The audit events about these applications: their own, and their evidence's (downloads, previews).

    Two queries, whatever the number of events: events name their target by
    type and id as text (vetting.audit), so the ids are looked up first.
    """
    pks = [str(pk) for pk in applications.values_list("pk", flat=True)]
    evidence = [
        str(pk) for pk in Evidence.objects.filter(application_id__in=pks).values_list("pk", flat=True)
    ]
    return Q(target_type="application", target_id__in=pks) | Q(target_type="evidence", target_id__in=evidence)


def with_target_reference(events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
    """`events` with the reference of an application target, in the list's own query: no query per row."""
    # Only application targets have integer ids; the CASE keeps the cast away from the others.
    reference = Application.objects.filter(pk=Cast(OuterRef("target_id"), IntegerField())).values(
        "reference"
    )[:1]
    return events.annotate(
        target_reference=Case(
            When(target_type="application", then=Subquery(reference)), output_field=CharField()
        )
    )


def audit_target(event: AuditEvent) -> str:
    """What an event (annotated by with_target_reference) was about: a link to its application if any."""
    if event.target_type == "application" and event.target_reference:
        return format_html(
            '<a href="{}">{} {}</a>',
            reverse("admin:vetting_application_change", args=[event.target_id]),
            _("application"),
            event.target_reference,
        )
    # A purged application keeps its reference in its last event; evidence names its application.
    reference = event.details.get("reference") or event.details.get("application")
    if reference:
        return f"{event.target_type} {event.target_id} ({reference})"
    return f"{event.target_type} {event.target_id}".strip()


class ApplicationEventsFilter(admin.SimpleListFilter):
    """`?application=<reference>`: one application's trail (the link on the application's page)."""

    title = _("application")
    parameter_name = "application"

    def lookups(self, request, model_admin):
        # Never a list of every application: only the one asked for, shown so it can be cleared.
        # (As typed: the site refuses a filter value its lookups do not offer.)
        reference = request.GET.get(self.parameter_name, "")
        return [(reference, reference.strip())] if reference.strip() else []

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(_events_of(Application.objects.filter(reference=self.value().strip().upper())))


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
    """The audit trail: readable by permitted staff, changeable by nobody, superusers included."""

    list_display = ["created_at", "actor_kind", "actor_name", "action", "target", "ip"]
    list_filter = [
        ApplicationEventsFilter,
        "action",
        "actor_kind",
        ("actor", admin.RelatedOnlyFieldListFilter),
    ]
    # An application's reference finds its events too (get_search_results).
    search_fields = ["action", "actor_name", "target_id"]
    search_help_text = _("Action, staff username, target id, or an application's reference.")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in AuditEvent._meta.fields] + ["target"]

    def get_queryset(self, request):
        return with_target_reference(super().get_queryset(request))

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        references = [term.upper() for term in search_term.split()]
        if references:
            results |= queryset.filter(_events_of(Application.objects.filter(reference__in=references)))
        return results, may_have_duplicates

    @admin.display(description=_("target"), ordering="target_id")
    def target(self, event: AuditEvent) -> str:
        return audit_target(event)


@admin.register(StaffNote)
class StaffNoteAdmin(ReadOnlyModelAdmin):
    """Notes are added on the application's page; here they can only be read."""

    list_display = ["application", "author", "created_at"]
    list_select_related = ["application", "author"]
    readonly_fields = ["application", "author", "text", "created_at"]

    def get_queryset(self, request):
        # The notes of the applications on the person's own list (ApplicationAdmin.get_queryset).
        return roles.visible_to(request.user, super().get_queryset(request), "application__status")
