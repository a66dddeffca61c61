"""Staff roles: Django Groups with model permissions.

A superadmin is a Django superuser, not a group. The role names are what
`create_staff --role` takes. Migrations call `sync_role_groups` so every
database has the same groups; change a role here, then add a migration that
calls it again.
"""

from __future__ import annotations

VETTING_AGENT = "vetting_agent"
SERVER_ADMIN = "server_admin"
INVITING_ADMIN = "inviting_admin"
SUPERADMIN = "superadmin"

GROUP_NAMES = {
    VETTING_AGENT: "Vetting agent",
    SERVER_ADMIN: "Server admin",
    INVITING_ADMIN: "Inviting admin",
}
ROLE_NAMES = [VETTING_AGENT, SERVER_ADMIN, INVITING_ADMIN, SUPERADMIN]

_AGENT = [
    "vetting.view_application",
    "vetting.add_application",
    "vetting.claim_application",
    "vetting.record_verification",
    "vetting.view_staffnote",
    "vetting.add_staffnote",
    "evidence.view_evidence",
]
ROLE_PERMISSIONS: dict[str, list[str]] = {
    VETTING_AGENT: _AGENT,
    SERVER_ADMIN: _AGENT
    + [
        "vetting.request_information",
        "vetting.decide_application",
        "vetting.view_auditevent",
        # Managing agents' accounts (new accounts wait for a superadmin).
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        # Invitations: their list and state; the token itself stays masked.
        "vetting.view_invitation",
    ],
    INVITING_ADMIN: [
        "vetting.view_application",
        "vetting.view_staffnote",
        "vetting.issue_invitation",
        "vetting.view_invitation",
    ],
}


# What an inviting admin works on (Application.Status values): people a server
# admin approved and what became of their invitation; not the queue, not rejections.
INVITING_ADMIN_STATUSES = frozenset({"approved", "invited", "joined"})

# The states in which someone still has to act (Application.Status values), by kind of work:
# vetting (claim, verify, ask, decide) and inviting (issue, revoke, re-issue).
VETTING_WORK_STATUSES = frozenset({"submitted", "in_review", "info_requested", "recommended"})
INVITING_WORK_STATUSES = frozenset({"approved", "invited"})


def sees_every_application(user) -> bool:
    """Agents, server admins and superadmins work the whole queue; an inviting admin alone does not.

    By permission, not by group name: someone who is both an agent and an
    inviting admin sees what an agent sees.
    """
    return user.has_perm("vetting.claim_application")


def visible_to(user, queryset, status_lookup: str = "status"):
    """`queryset` without the applications `user` does not see, nor the rows that belong to them.

    `status_lookup` leads from the queryset's model to its application's status
    ("application__status" for invitations and notes).
    """
    if sees_every_application(user):
        return queryset
    return queryset.filter(**{f"{status_lookup}__in": INVITING_ADMIN_STATUSES})


def sees_status(user, status: str) -> bool:
    """Whether applications in this state are on `user`'s list (and counted on their dashboard)."""
    return sees_every_application(user) or status in INVITING_ADMIN_STATUSES


def work_statuses(user) -> frozenset[str]:
    """The states of the applications `user` acts on: their "Open (needs action)" queue."""
    statuses = frozenset()
    if sees_every_application(user):
        statuses |= VETTING_WORK_STATUSES
    if user.has_perm("vetting.issue_invitation"):
        statuses |= INVITING_WORK_STATUSES
    return statuses


def sync_role_groups(apps) -> None:
    """Create the role groups and give each exactly its permissions (for migrations)."""
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    # Permissions are normally made after all migrations; make them now.
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, apps=apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, group_name in GROUP_NAMES.items():
        group, _created = Group.objects.get_or_create(name=group_name)
        permissions = []
        for dotted in ROLE_PERMISSIONS[role]:
            app_label, codename = dotted.split(".")
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is None and not _model_exists_yet(apps, app_label, codename):
                # The permission of a model a later migration creates; that migration calls this again.
                continue
            if permission is None:
                raise LookupError(f"Role {role} names an unknown permission {dotted}.")
            permissions.append(permission)
        group.permissions.set(permissions)


def _model_exists_yet(apps, app_label: str, codename: str) -> bool:
    """Whether the model a default permission (view_x, add_x...) is about exists in this migration state."""
    model_name = codename.split("_", 1)[-1]
    return model_name in {model._meta.model_name for model in apps.get_app_config(app_label).get_models()}


def group_name(role: str) -> str:
    return GROUP_NAMES[role]


def display_name(role: str) -> str:
    return "Superadmin" if role == SUPERADMIN else GROUP_NAMES[role]


def is_only_agent(user) -> bool:
    """True when the account is a vetting agent and nothing more (what server admins may manage).

    A permission given to the account itself, outside the agent's, makes it more:
    whoever may decide or manage accounts is out of a server admin's hands, whatever
    their group. Read from the database, so an inactive account counts the same.
    """
    names = set(user.groups.values_list("name", flat=True))
    own_permissions = {
        f"{app_label}.{codename}"
        for app_label, codename in user.user_permissions.values_list("content_type__app_label", "codename")
    }
    return names == {GROUP_NAMES[VETTING_AGENT]} and own_permissions <= set(ROLE_PERMISSIONS[VETTING_AGENT])
