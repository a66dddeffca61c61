"""The admin's staff accounts page: roles instead of raw permissions, no passwords.

Server admins manage vetting agents; superadmins manage everyone and approve
accounts that server admins created. Every change goes through vetting.workflow.
People choose their own password through a mailed link; only a superadmin may
set someone else's, and both are audited. So are changes to the role groups
themselves (RoleGroupAdmin).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.contrib.auth.views import PasswordResetConfirmView
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from iama_vetting.admin_site import admin_form
from vetting import audit, roles, workflow
from vetting.forms import EmailAddressField, StaffAccountForm

User = get_user_model()

SERVER_ADMIN_FIELDSETS = [
    (None, {"fields": ["username", "email", "first_name", "last_name"]}),
    (_("Status"), {"fields": ["is_active", "groups", "last_login", "date_joined"]}),
]
# The e-mail address receives the password-reset link: whoever could change it could take the account.
SERVER_ADMIN_READONLY = ["username", "email", "is_active", "groups", "last_login", "date_joined"]
# Approving, deactivating and reactivating are workflow steps with their own
# audit events, which tell an account awaiting approval from a deactivated one:
# so is_active is never a checkbox, not even for superadmins.
SUPERADMIN_READONLY = ["is_active", "last_login", "date_joined"]


class AccountStateFilter(admin.SimpleListFilter):
    title = _("account")
    parameter_name = "account"

    def lookups(self, request, model_admin):
        return [
            ("active", _("Active")),
            ("awaiting", _("Awaiting approval")),
            ("deactivated", _("Deactivated")),
        ]

    def queryset(self, request, queryset):
        # The queryset carries StaffUserAdmin.get_queryset's `awaiting_approval`.
        if self.value() == "active":
            return queryset.filter(is_active=True)
        if self.value() == "awaiting":
            return queryset.filter(awaiting_approval=True)
        if self.value() == "deactivated":
            return queryset.filter(is_active=False, awaiting_approval=False)
        return queryset


class StaffUserAdmin(UserAdmin):
    list_display = [
        "username",
        "email",
        "account_state",
        "second_factor",
        "is_superuser",
        "role_names",
        "last_login",
    ]
    list_filter = [AccountStateFilter, "is_superuser", "groups"]
    actions = ["approve_accounts", "reactivate_accounts", "reset_second_factor"]

    def get_queryset(self, request):
        queryset = workflow.with_account_state(super().get_queryset(request)).annotate(
            # As django_otp.user_has_device: a confirmed device of any kind.
            has_second_factor=ExpressionWrapper(
                Q(Exists(TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)))
                | Q(Exists(StaticDevice.objects.filter(user=OuterRef("pk"), confirmed=True))),
                output_field=BooleanField(),
            )
        )
        queryset = queryset.prefetch_related("groups")
        if request.user.is_superuser:
            return queryset
        return queryset.filter(groups__name=roles.group_name(roles.VETTING_AGENT), is_superuser=False)

    @admin.display(description=_("roles"))
    def role_names(self, user) -> str:
        return ", ".join(group.name for group in user.groups.all())

    @admin.display(description=_("account"))
    def account_state(self, user) -> str:
        if user.is_active:
            return _("active")
        return _("awaiting approval") if user.awaiting_approval else _("deactivated")

    @admin.display(description=_("second factor"))
    def second_factor(self, user) -> str:
        return _("set up") if user.has_second_factor else _("not set up")

    def get_fieldsets(self, request, obj=None):
        if request.user.is_superuser:
            return super().get_fieldsets(request, obj)
        return SERVER_ADMIN_FIELDSETS

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "email":
            # As when the account was created: an address our mail can be sent to.
            kwargs["form_class"] = EmailAddressField
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if request.user.is_superuser:
            return SUPERADMIN_READONLY
        # Activating is approval, which only a superadmin gives.
        return SERVER_ADMIN_READONLY

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and not request.user.is_superuser and not roles.is_only_agent(obj):
            return False
        return super().has_change_permission(request, obj)

    def user_change_password(self, request, id, form_url=""):
        """Django's set-password page: superadmins only, and audited.

        Whoever sets a password can sign in as that person, and so defeat the
        four-eyes rule; everyone else gets a set-password link by e-mail.
        """
        if not request.user.is_superuser:
            raise PermissionDenied
        user = self.get_object(request, unquote(id))
        before = user.password if user is not None else None
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if user is not None and request.method == "POST":
                user.refresh_from_db(fields=["password"])
                if user.password != before:
                    audit.record(
                        "staff.password_set",
                        actor=request.user,
                        target=user,
                        request=request,
                        details={"usable": user.has_usable_password()},
                    )
        return response

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        audit.record(
            "staff.changed",
            actor=request.user,
            target=obj,
            request=request,
            details={"fields": sorted(form.changed_data)},
        )

    def save_related(self, request, form, formsets, change) -> None:
        before = set(form.instance.groups.values_list("name", flat=True))
        super().save_related(request, form, formsets, change)
        after = set(form.instance.groups.values_list("name", flat=True))
        if before != after:
            audit.record(
                "staff.roles_changed",
                actor=request.user,
                target=form.instance,
                request=request,
                details={"added": sorted(after - before), "removed": sorted(before - after)},
            )

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        allowed = [(roles.VETTING_AGENT, roles.display_name(roles.VETTING_AGENT))]
        if request.user.is_superuser:
            allowed = [(role, roles.display_name(role)) for role in roles.ROLE_NAMES]
        form = StaffAccountForm(request.POST or None, allowed_roles=allowed)
        if request.method == "POST" and form.is_valid():
            try:
                user = workflow.create_staff_account(
                    form.cleaned_data["username"],
                    form.cleaned_data["email"],
                    form.cleaned_data["role"],
                    created_by=request.user,
                    request=request,
                )
            except workflow.WorkflowError as error:
                form.add_error(None, str(error))
            else:
                message = _("%(username)s was created and will get a set-password link by e-mail.")
                if not user.is_active:
                    message += " " + _("The account waits for a superadmin's approval.")
                self.message_user(request, message % {"username": user.username}, messages.SUCCESS)
                return redirect(reverse("admin:auth_user_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Add a staff account"),
            "form": form,
            "adminform": admin_form(form),
        }
        return TemplateResponse(request, "admin/auth/user/staff_add.html", context)

    def delete_view(self, request, object_id, extra_context=None):
        """Deleting a staff account deactivates it, so its audit trail keeps its actor."""
        user = self.get_object(request, object_id)
        if user is None or not self.has_delete_permission(request, user):
            raise PermissionDenied
        if request.method == "POST":
            try:
                workflow.deactivate_staff_account(user, request.user, request=request)
            except workflow.WorkflowError as error:
                self.message_user(request, str(error), messages.ERROR)
            else:
                self.message_user(
                    request,
                    _("%(username)s was deactivated.") % {"username": user.username},
                    messages.SUCCESS,
                )
            return redirect(reverse("admin:auth_user_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Deactivate %(username)s?") % {"username": user.username},
            "object": user,
        }
        return TemplateResponse(request, "admin/auth/user/deactivate.html", context)

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("auth.change_user") and (
            obj is None or self.has_change_permission(request, obj)
        )

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def _each(self, request, queryset, step, done: str) -> None:
        """Run a workflow step for each selected account, with a message for each."""
        for user in queryset:
            try:
                step(user, request.user, request=request)
            except workflow.WorkflowError as error:
                self.message_user(request, str(error), messages.WARNING)
            else:
                self.message_user(request, done % {"username": user.username})

    @admin.action(description=_("Approve selected accounts"), permissions=["superadmin"])
    def approve_accounts(self, request, queryset) -> None:
        self._each(request, queryset, workflow.approve_staff_account, _("%(username)s approved."))

    @admin.action(description=_("Reactivate selected accounts"), permissions=["superadmin"])
    def reactivate_accounts(self, request, queryset) -> None:
        self._each(request, queryset, workflow.reactivate_staff_account, _("%(username)s reactivated."))

    @admin.action(description=_("Reset second factor"), permissions=["superadmin"])
    def reset_second_factor(self, request, queryset) -> None:
        self._each(
            request,
            queryset,
            workflow.reset_second_factor,
            _("%(username)s's second factor was reset: they set up a new one at their next sign-in."),
        )

    def has_superadmin_permission(self, request) -> bool:
        # Approving, reactivating, resetting a second factor (the workflow checks too).
        return request.user.is_superuser


admin.site.unregister(User)
admin.site.register(User, StaffUserAdmin)


def _permission_names(group: Group) -> set[str]:
    return {
        f"{app_label}.{codename}"
        for app_label, codename in group.permissions.values_list("content_type__app_label", "codename")
    }


class RoleGroupAdmin(GroupAdmin):
    """The role groups (vetting.roles): their permissions are what each member may do, so a change
    to them is audited like a change to someone's roles. Django's add, change and delete pages
    run in one transaction, which the audit events join.

    A role group keeps its name and cannot be deleted: the code finds each role by its
    group's name (roles.GROUP_NAMES). Its permissions can still be changed."""

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.name in roles.GROUP_NAMES.values():
            return ("name",)
        return super().get_readonly_fields(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.name in roles.GROUP_NAMES.values():
            return False
        return super().has_delete_permission(request, obj)

    def save_related(self, request, form, formsets, change) -> None:
        group = form.instance
        before = _permission_names(group) if change else set()
        super().save_related(request, form, formsets, change)
        after = _permission_names(group)
        if not change:
            audit.record(
                "group.created",
                actor=request.user,
                target=group,
                request=request,
                details={"name": group.name, "permissions": sorted(after)},
            )
            return
        details = {"name": group.name, "added": sorted(after - before), "removed": sorted(before - after)}
        if "name" in form.changed_data:
            details["renamed_from"] = form.initial["name"]
        if details["added"] or details["removed"] or "renamed_from" in details:
            audit.record("group.changed", actor=request.user, target=group, request=request, details=details)

    def delete_model(self, request, obj) -> None:
        self._record_deletion(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        # "Delete selected groups" runs outside the page transaction Django gives the others.
        with transaction.atomic():
            for group in queryset:
                self._record_deletion(request, group)
            super().delete_queryset(request, queryset)

    @staticmethod
    def _record_deletion(request, group: Group) -> None:
        # Before the row goes: the event names it by its id.
        audit.record(
            "group.deleted",
            actor=request.user,
            target=group,
            request=request,
            details={
                "name": group.name,
                "permissions": sorted(_permission_names(group)),
                "members": group.user_set.count(),
            },
        )


admin.site.unregister(Group)
admin.site.register(Group, RoleGroupAdmin)


class StaffPasswordResetConfirmView(PasswordResetConfirmView):
    """The page behind set-password and reset links; the chosen password is audited as the user's act."""

    # A new account's first password as much as a reset one (templates/registration/).
    title = _("Choose your password")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if context["form"] is not None:
            context["adminform"] = admin_form(context["form"])
        return context

    def form_valid(self, form):
        with transaction.atomic():
            response = super().form_valid(form)
            audit.record("staff.password_reset", actor=form.user, target=form.user, request=self.request)
        return response
