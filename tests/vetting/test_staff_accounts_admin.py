"""The staff accounts page: who may set passwords, e-mail addresses and activation, and how long details may be."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from django.apps import apps as global_apps
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command

from notifications.models import OutboundEmail
from tests.conftest import STAFF_PASSWORD
from tests.vetting.test_staff_accounts import NEW_PASSWORD, set_password_link
from vetting import admin_staff, audit, roles, workflow
from vetting.models import AuditEvent

pytestmark = pytest.mark.django_db
User = get_user_model()


def password_url(user) -> str:
    return f"/admin/auth/user/{user.pk}/password/"


def new_password(**extra) -> dict:
    return {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true", **extra}


def address_of_length(length: int) -> str:
    """A valid e-mail address exactly `length` characters long (DNS labels stay under 64)."""
    labels, remaining = [], length - len("x@example")
    while remaining:
        chunk = min(64, remaining)
        if remaining - chunk == 1:
            chunk -= 1  # a label needs a character besides its dot
        labels.append("b" * (chunk - 1) + ".")
        remaining -= chunk
    return "x@" + "".join(labels) + "example"


def test_a_server_admin_cannot_set_an_agents_password(client, server_admin, agent):
    client.force_login(server_admin)
    assert client.get(password_url(agent)).status_code == 403
    assert client.post(password_url(agent), new_password()).status_code == 403
    assert authenticate(username="agent", password=STAFF_PASSWORD) == agent
    assert not AuditEvent.objects.filter(action="staff.password_set").exists()


def test_a_superadmin_setting_a_password_is_audited_without_the_password(client, superadmin, agent):
    client.force_login(superadmin)
    mismatched = client.post(password_url(agent), new_password(password2="something else entirely"))
    assert mismatched.status_code == 200
    assert not AuditEvent.objects.filter(action="staff.password_set").exists()

    assert client.post(password_url(agent), new_password()).status_code == 302
    assert authenticate(username="agent", password=NEW_PASSWORD) == agent
    event = AuditEvent.objects.get(action="staff.password_set")
    assert (event.actor, event.target_type, event.target_id) == (superadmin, "user", str(agent.pk))
    assert event.details == {"usable": True}


def test_a_server_admin_cannot_redirect_an_agents_reset_link_by_changing_the_address(
    client, server_admin, agent
):
    client.force_login(server_admin)
    change_url = f"/admin/auth/user/{agent.pk}/change/"
    assert 'name="email"' not in client.get(change_url).content.decode()
    client.post(change_url, {"email": "server_admin@staff.example", "first_name": "Agent"})
    agent.refresh_from_db()
    assert (agent.email, agent.first_name) == ("agent@staff.example", "Agent")


def test_choosing_a_password_through_a_reset_link_is_audited_as_the_persons_own_act(client, agent, settings):
    client.post("/admin/password_reset/", {"email": "agent@staff.example"})
    link = set_password_link(OutboundEmail.objects.get(template="staff-password-reset"))
    form_page = client.get(link.replace(settings.SITE_URL, ""), follow=True)
    assert not AuditEvent.objects.filter(action="staff.password_reset").exists()

    client.post(
        form_page.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert authenticate(username="agent", password=NEW_PASSWORD) == agent
    event = AuditEvent.objects.get(action="staff.password_reset")
    assert (event.actor, event.target_id, event.details) == (agent, str(agent.pk), {})


def test_the_add_form_refuses_an_address_longer_than_the_column(client, server_admin):
    client.force_login(server_admin)
    response = client.post(
        "/admin/auth/user/add/",
        {"username": "newbie", "email": address_of_length(255), "role": roles.VETTING_AGENT},
    )
    assert response.status_code == 200
    assert "at most 254 characters" in response.content.decode()
    assert not User.objects.filter(username="newbie").exists()


def test_the_add_form_refuses_an_address_mail_cannot_carry_and_drops_a_pasted_bidi_mark(client, superadmin):
    client.force_login(superadmin)
    response = client.post(
        "/admin/auth/user/add/",
        {"username": "newbie", "email": "newbie@x\u05de.example", "role": roles.VETTING_AGENT},
    )
    assert response.status_code == 200
    assert "Enter a valid email address." in response.content.decode()
    assert not User.objects.filter(username="newbie").exists()
    assert not OutboundEmail.objects.exists()

    response = client.post(
        "/admin/auth/user/add/",
        {"username": "newbie", "email": "newbie@staff.example\u200f", "role": roles.VETTING_AGENT},
    )
    assert response.status_code == 302
    assert User.objects.get(username="newbie").email == "newbie@staff.example"
    assert OutboundEmail.objects.get().to == "newbie@staff.example"


@pytest.mark.parametrize(
    ("username", "email", "message"),
    [
        ("u" * 151, "long@staff.example", "The username can have at most 150 characters; this one has 151."),
        (
            "long",
            address_of_length(255),
            "The email address can have at most 254 characters; this one has 255.",
        ),
    ],
)
def test_create_staff_refuses_overlong_details_with_a_message_not_a_traceback(username, email, message):
    with pytest.raises(CommandError) as refused:
        call_command("create_staff", username, email, "--role", roles.VETTING_AGENT)
    assert str(refused.value) == message
    assert not User.objects.exists()


@pytest.mark.postgres
def test_on_postgresql_the_longest_details_fit_and_longer_ones_are_refused_not_a_database_error():
    user = workflow.create_staff_account("u" * 150, address_of_length(254), roles.VETTING_AGENT)
    assert (len(user.username), len(user.email)) == (150, 254)
    with pytest.raises(workflow.WorkflowError, match="at most 254"):
        workflow.create_staff_account("other", address_of_length(255), roles.VETTING_AGENT)
    with pytest.raises(workflow.WorkflowError, match="at most 150"):
        workflow.create_staff_account("u" * 151, "other@staff.example", roles.VETTING_AGENT)
    assert User.objects.count() == 1


def test_changing_ones_own_password_is_audited_without_the_password(client, agent):
    client.force_login(agent)
    wrong_old = {
        "old_password": "not it at all",
        "new_password1": NEW_PASSWORD,
        "new_password2": NEW_PASSWORD,
    }
    assert client.post("/admin/password_change/", wrong_old).status_code == 200
    assert not AuditEvent.objects.filter(action="staff.password_changed").exists()

    change = {"old_password": STAFF_PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    assert client.post("/admin/password_change/", change).status_code == 302
    assert authenticate(username="agent", password=NEW_PASSWORD) == agent
    event = AuditEvent.objects.get(action="staff.password_changed")
    assert (event.actor, event.target_type, event.target_id) == (agent, "user", str(agent.pk))
    assert NEW_PASSWORD not in str(event.details)


def test_not_even_a_superadmin_activates_an_account_by_ticking_a_box(client, superadmin):
    """Approving and reactivating are workflow steps: their audit events tell the two inactive states apart."""
    goneagent = workflow.create_staff_account("goneagent", "gone@staff.example", roles.VETTING_AGENT)
    workflow.deactivate_staff_account(goneagent, superadmin)
    client.force_login(superadmin)
    change_url = f"/admin/auth/user/{goneagent.pk}/change/"
    assert 'name="is_active"' not in client.get(change_url).content.decode()
    saved = client.post(
        change_url,
        {
            "username": "goneagent",
            "email": "gone@staff.example",
            "first_name": "Gone",
            "is_staff": "on",
            "is_active": "on",
            "groups": [group.pk for group in goneagent.groups.all()],
        },
    )
    assert saved.status_code == 302
    goneagent.refresh_from_db()
    assert (goneagent.first_name, goneagent.is_active) == ("Gone", False)


def test_a_superadmin_cannot_give_an_account_an_address_mail_cannot_carry(client, superadmin, agent):
    client.force_login(superadmin)
    change_url = f"/admin/auth/user/{agent.pk}/change/"
    fields = {"username": "agent", "first_name": "Agent", "is_staff": "on"}
    fields["groups"] = [group.pk for group in agent.groups.all()]
    refused = client.post(change_url, {**fields, "email": "agent@x\u05de.example"})
    assert refused.status_code == 200
    assert "Enter a valid email address." in refused.content.decode()
    agent.refresh_from_db()
    assert agent.email == "agent@staff.example"
    # A bidi mark pasted along with a good address is dropped, as on the add form.
    assert client.post(change_url, {**fields, "email": "agent@new.example\u200f"}).status_code == 302
    agent.refresh_from_db()
    assert agent.email == "agent@new.example"


def test_a_server_admin_cannot_make_an_agent_a_superuser_or_give_them_permissions(
    client, server_admin, agent
):
    client.force_login(server_admin)
    change_url = f"/admin/auth/user/{agent.pk}/change/"
    page = client.get(change_url).content.decode()
    assert 'name="is_superuser"' not in page and 'name="user_permissions"' not in page
    client.post(
        change_url,
        {
            "first_name": "Agent",
            "is_staff": "on",
            "is_superuser": "on",
            "user_permissions": _permission_pks("vetting.decide_application", "auth.change_user"),
        },
    )
    agent.refresh_from_db()
    assert agent.first_name == "Agent"
    assert not agent.is_superuser and not agent.user_permissions.exists()


def test_a_superadmin_who_also_vets_is_out_of_a_server_admins_hands(client, server_admin, superadmin):
    superadmin.groups.add(Group.objects.get(name=roles.group_name(roles.VETTING_AGENT)))
    client.force_login(server_admin)
    assert ">superadmin<" not in client.get("/admin/auth/user/").content.decode()
    client.post(f"/admin/auth/user/{superadmin.pk}/change/", {"first_name": "Renamed"})
    superadmin.refresh_from_db()
    assert superadmin.first_name == ""


def test_changing_a_staff_account_and_its_roles_is_audited(client, superadmin, agent):
    client.force_login(superadmin)
    client.post(
        f"/admin/auth/user/{agent.pk}/change/",
        {
            "username": "agent",
            "email": "agent@staff.example",
            "first_name": "Sam",
            "is_staff": "on",
            "groups": [Group.objects.get(name=roles.group_name(roles.SERVER_ADMIN)).pk],
        },
    )
    changed = AuditEvent.objects.get(action="staff.changed")
    assert (changed.actor, changed.target_id) == (superadmin, str(agent.pk))
    assert changed.details == {"fields": ["first_name", "groups"]}
    roles_changed = AuditEvent.objects.get(action="staff.roles_changed")
    assert roles_changed.details == {"added": ["Server admin"], "removed": ["Vetting agent"]}


def test_opening_a_staff_accounts_delete_page_asks_first_and_deactivates_nothing(client, superadmin, agent):
    client.force_login(superadmin)
    response = client.get(f"/admin/auth/user/{agent.pk}/delete/")
    assert response.status_code == 200
    assert "Deactivate agent?" in response.content.decode()
    agent.refresh_from_db()
    assert agent.is_active
    assert not AuditEvent.objects.filter(action="staff.deactivated").exists()


def test_staff_accounts_are_never_deleted_in_bulk_not_even_by_a_superadmin(client, superadmin, agent):
    # Deleting an account deactivates it (delete_view); Django's bulk delete would remove the row.
    client.force_login(superadmin)
    assert "delete_selected" not in client.get("/admin/auth/user/").content.decode()
    client.post(
        "/admin/auth/user/", {"action": "delete_selected", "_selected_action": [agent.pk], "post": "yes"}
    )
    assert User.objects.filter(pk=agent.pk, is_active=True).exists()


# Role groups: what every member may do ---------------------------------------------------


def _permission_pks(*dotted: str) -> list[int]:
    return [
        Permission.objects.get(content_type__app_label=name.split(".")[0], codename=name.split(".")[1]).pk
        for name in dotted
    ]


def test_changing_a_role_groups_permissions_is_audited_with_what_was_added_and_removed(client, superadmin):
    group = Group.objects.get(name=roles.group_name(roles.VETTING_AGENT))
    kept = [name for name in roles.ROLE_PERMISSIONS[roles.VETTING_AGENT] if name != "vetting.add_staffnote"]
    client.force_login(superadmin)

    response = client.post(
        f"/admin/auth/group/{group.pk}/change/",
        {"name": group.name, "permissions": _permission_pks(*kept, "vetting.decide_application")},
    )

    assert response.status_code == 302
    event = AuditEvent.objects.get(action="group.changed")
    assert (event.actor, event.target_type, event.target_id) == (superadmin, "group", str(group.pk))
    assert event.details == {
        "name": group.name,
        "added": ["vetting.decide_application"],
        "removed": ["vetting.add_staffnote"],
    }
    assert audit.check_chain().broken is None


def test_saving_a_role_group_unchanged_writes_no_event(client, superadmin):
    group = Group.objects.get(name=roles.group_name(roles.VETTING_AGENT))
    client.force_login(superadmin)
    client.post(
        f"/admin/auth/group/{group.pk}/change/",
        {"name": group.name, "permissions": _permission_pks(*roles.ROLE_PERMISSIONS[roles.VETTING_AGENT])},
    )
    assert not AuditEvent.objects.filter(action__startswith="group.").exists()


def test_a_group_change_and_its_audit_event_are_one_transaction(client, superadmin):
    group = Group.objects.get(name=roles.group_name(roles.VETTING_AGENT))
    before = set(group.permissions.all())
    client.force_login(superadmin)
    with (
        mock.patch.object(admin_staff.audit, "record", side_effect=RuntimeError("audit log unavailable")),
        pytest.raises(RuntimeError),
    ):
        client.post(
            f"/admin/auth/group/{group.pk}/change/",
            {"name": group.name, "permissions": _permission_pks("vetting.decide_application")},
        )
    assert set(group.permissions.all()) == before


def test_creating_renaming_and_deleting_groups_is_audited(client, superadmin):
    client.force_login(superadmin)
    client.post(
        "/admin/auth/group/add/",
        {"name": "Deciders", "permissions": _permission_pks("vetting.decide_application")},
    )
    group = Group.objects.get(name="Deciders")
    client.post(f"/admin/auth/group/{group.pk}/change/", {"name": "Approvers", "permissions": []})
    client.post(f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"})
    other = Group.objects.create(name="Spare")
    client.post(
        "/admin/auth/group/",
        {"action": "delete_selected", "post": "yes", "_selected_action": [str(other.pk)]},
    )

    assert not Group.objects.filter(name__in=["Approvers", "Spare"]).exists()
    events = list(AuditEvent.objects.filter(action__startswith="group.").order_by("id"))
    assert [(event.action, event.details) for event in events] == [
        ("group.created", {"name": "Deciders", "permissions": ["vetting.decide_application"]}),
        (
            "group.changed",
            {
                "name": "Approvers",
                "renamed_from": "Deciders",
                "added": [],
                "removed": ["vetting.decide_application"],
            },
        ),
        ("group.deleted", {"name": "Approvers", "permissions": [], "members": 0}),
        ("group.deleted", {"name": "Spare", "permissions": [], "members": 0}),
    ]
    assert all(event.actor == superadmin for event in events)


@pytest.mark.parametrize("role", list(roles.GROUP_NAMES))
def test_a_role_group_keeps_its_name_and_cannot_be_deleted(client, superadmin, agent, role):
    # Roles are found by their group's name: a renamed "Vetting agent" group would
    # leave server admins unable to see or manage any agent.
    group = Group.objects.get(name=roles.group_name(role))
    client.force_login(superadmin)
    page = client.get(f"/admin/auth/group/{group.pk}/change/").content.decode()
    assert 'name="name"' not in page
    assert "/delete/" not in page

    client.post(
        f"/admin/auth/group/{group.pk}/change/",
        {"name": "Renamed", "permissions": _permission_pks(*roles.ROLE_PERMISSIONS[role])},
    )
    assert client.post(f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(
        "/admin/auth/group/",
        {"action": "delete_selected", "post": "yes", "_selected_action": [str(group.pk)]},
    )

    group.refresh_from_db()
    assert group.name == roles.group_name(role)
    assert not AuditEvent.objects.filter(action="group.deleted").exists()
    assert roles.is_only_agent(agent)


def test_syncing_the_roles_takes_away_a_permission_a_role_no_longer_has():
    # What a migration calling sync_role_groups after a role was narrowed must do to existing databases.
    group = Group.objects.get(name=roles.group_name(roles.VETTING_AGENT))
    group.permissions.add(*Permission.objects.filter(codename__in=["decide_application", "delete_user"]))
    roles.sync_role_groups(global_apps)
    granted = group.permissions.values_list("content_type__app_label", "codename")
    assert sorted(f"{app_label}.{codename}" for app_label, codename in granted) == sorted(
        roles.ROLE_PERMISSIONS[roles.VETTING_AGENT]
    )


def test_the_add_form_shows_each_error_with_its_field_under_a_focused_summary(client, server_admin):
    client.force_login(server_admin)
    page = client.post("/admin/auth/user/add/", {"username": "", "email": "", "role": ""}).content.decode()
    assert (
        '<p class="errornote" id="error-summary" tabindex="-1">Please correct the errors below.</p>' in page
    )
    assert '<script src="/static/vetting/error-summary.js" defer></script>' in page
    for field in ("username", "email", "role"):
        row = page[page.index(f'<div class="form-row errors field-{field}">') :]
        row = row[: row.index("</div>\n", row.index(f'id="id_{field}"'))]
        assert f'<ul class="errorlist" id="id_{field}_error"><li>This field is required.</li></ul>' in row
        assert re.search(rf'aria-describedby="[^"]*\bid_{field}_error\b', row)


def test_a_refusal_of_the_workflow_is_said_in_the_summary(client, server_admin, agent):
    client.force_login(server_admin)
    page = client.post(
        "/admin/auth/user/add/",
        {"username": "Agent", "email": "new@staff.example", "role": roles.VETTING_AGENT},
    ).content.decode()
    summary = page[page.index('id="error-summary"') :]
    assert "The username Agent is taken." in summary[: summary.index("<fieldset")]
