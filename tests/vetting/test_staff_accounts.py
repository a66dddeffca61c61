from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from io import StringIO
from unittest import mock

import pytest
import time_machine
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

import iama_vetting.settings as project_settings
from notifications.models import OutboundEmail
from tests.conftest import STAFF_PASSWORD
from vetting import roles, workflow
from vetting.models import AuditEvent

pytestmark = pytest.mark.django_db
User = get_user_model()
NEW_PASSWORD = "correct horse battery staple 42"


def set_password_link(mail: OutboundEmail) -> str:
    return re.search(r"https?://\S+/reset/\S+/", mail.body_text).group(0)


def test_create_staff_makes_an_active_account_and_mails_a_set_password_link(client, settings):
    out = StringIO()
    call_command("create_staff", "sam", "sam@staff.example", "--role", "vetting_agent", stdout=out)
    user = User.objects.get(username="sam")
    assert user.is_active and user.is_staff and not user.is_superuser
    assert not user.has_usable_password()
    assert [group.name for group in user.groups.all()] == ["Vetting agent"]
    assert user.has_perm("vetting.claim_application")
    mail = OutboundEmail.objects.get(template="staff-account-created")
    assert mail.to == "sam@staff.example"
    assert "password" not in out.getvalue().lower().replace("set-password", "")

    # The link lets them choose a password once.
    link = set_password_link(mail).replace(settings.SITE_URL, "")
    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200
    set_url = form_page.redirect_chain[-1][0]
    client.post(set_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert authenticate(username="sam", password=NEW_PASSWORD) == user
    assert "This link no longer works" in client.get(link, follow=True).content.decode()


def test_the_set_password_pages_name_the_site_and_suit_a_first_password(client, settings):
    call_command("create_staff", "sam", "sam@staff.example", "--role", "vetting_agent", stdout=StringIO())
    link = set_password_link(OutboundEmail.objects.get(template="staff-account-created"))

    form_page = client.get(link.replace(settings.SITE_URL, ""), follow=True)
    page = form_page.content.decode()
    assert "<title>Choose your password | IaMA RVI staff</title>" in page
    assert '<div id="site-name"><a href="/admin/">IaMA RVI staff</a></div>' in page
    assert '<input type="submit" class="default" value="Set my password">' in page
    assert "Django" not in page and "reset" not in page.lower().replace("/reset/", "")

    done = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        follow=True,
    )
    page = done.content.decode()
    assert done.redirect_chain[-1][0] == "/reset/done/"
    assert "<title>Your password is set | IaMA RVI staff</title>" in page
    assert "<h1>Your password is set</h1>" in page
    assert "Django" not in page and "Password reset" not in page
    assert '<a href="/admin/login/">Log in</a>' in page


def test_create_staff_superadmin_is_a_superuser():
    call_command("create_staff", "root2", "root2@staff.example", "--role", "superadmin", stdout=StringIO())
    assert User.objects.get(username="root2").is_superuser


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name!", "x@staff.example"], "Enter a valid username"),
        (["okname", "not-an-email"], "Enter a valid email address"),
        # Django's validator accepts it; building a mail to it would fail (IDNA).
        (["okname", "sam@ex\u05deample.org"], "Enter a valid email address"),
    ],
)
def test_create_staff_refuses_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_staff", *args, "--role", "vetting_agent")
    assert not User.objects.exists()


def test_create_staff_refuses_a_taken_username(agent):
    with pytest.raises(CommandError, match="The username Agent is taken"):
        call_command("create_staff", "Agent", "new@staff.example", "--role", "vetting_agent")


def test_a_username_created_elsewhere_in_the_same_moment_is_refused_with_the_same_message(superadmin):
    real_create_user = User.objects.create_user

    def created_meanwhile(**fields):
        # Another request (or createsuperuser) made the account after our check, before our insert.
        User.objects.bulk_create([User(username=fields["username"], email="other@staff.example")])
        return real_create_user(**fields)

    with (
        mock.patch.object(User.objects, "create_user", side_effect=created_meanwhile),
        pytest.raises(workflow.WorkflowError, match="The username sam is taken"),
    ):
        workflow.create_staff_account("sam", "sam@staff.example", roles.VETTING_AGENT, created_by=superadmin)
    assert not AuditEvent.objects.filter(action="staff.created").exists()
    assert not OutboundEmail.objects.exists()


def test_server_admin_creates_an_agent_who_waits_for_a_superadmin(client, server_admin, superadmin):
    client.force_login(server_admin)
    page = client.get("/admin/auth/user/add/").content.decode()
    assert 'value="vetting_agent"' in page
    assert 'value="server_admin"' not in page
    assert 'type="password"' not in page

    client.post(
        "/admin/auth/user/add/",
        {"username": "newbie", "email": "newbie@staff.example", "role": "vetting_agent"},
    )
    newbie = User.objects.get(username="newbie")
    assert newbie.is_active is False
    mail = OutboundEmail.objects.get(template="staff-account-created")
    assert "becomes usable once a superadmin approves it" in mail.body_text

    # A server admin cannot activate it themselves.
    client.post(
        f"/admin/auth/user/{newbie.pk}/change/",
        {"username": "newbie", "email": "newbie@staff.example", "is_active": "on"},
    )
    newbie.refresh_from_db()
    assert newbie.is_active is False

    client.force_login(superadmin)
    client.post("/admin/auth/user/", {"action": "approve_accounts", "_selected_action": [newbie.pk]})
    newbie.refresh_from_db()
    assert newbie.is_active is True
    assert AuditEvent.objects.filter(action="staff.approved", target_id=str(newbie.pk)).exists()


def test_server_admin_cannot_create_a_server_admin(client, server_admin):
    client.force_login(server_admin)
    response = client.post(
        "/admin/auth/user/add/", {"username": "boss", "email": "boss@staff.example", "role": "server_admin"}
    )
    assert response.status_code == 200
    assert not User.objects.filter(username="boss").exists()


@pytest.mark.parametrize("role", [roles.SERVER_ADMIN, roles.INVITING_ADMIN, roles.SUPERADMIN])
def test_the_workflow_lets_a_server_admin_create_vetting_agent_accounts_only(server_admin, role):
    # The add form above offers them no other role; the workflow refuses any other caller too.
    with pytest.raises(workflow.WorkflowError, match="Server admins can create vetting agent accounts only"):
        workflow.create_staff_account("boss", "boss@staff.example", role, created_by=server_admin)
    assert not User.objects.filter(username="boss").exists()
    assert not AuditEvent.objects.filter(action="staff.created").exists()
    assert not OutboundEmail.objects.exists()


def test_server_admin_sees_and_manages_agents_only(client, server_admin, agent, second_server_admin):
    client.force_login(server_admin)
    page = client.get("/admin/auth/user/").content.decode()
    assert ">agent<" in page
    assert "second_server_admin" not in page
    assert client.get(f"/admin/auth/user/{second_server_admin.pk}/change/").status_code in (302, 403)


@pytest.mark.parametrize("extra", [[], ["vetting.decide_application", "auth.change_user"]])
def test_an_agent_given_more_than_the_agents_permissions_is_out_of_a_server_admins_hands(
    client, server_admin, agent, extra
):
    """A superadmin may give an agent a permission of its own; the account is then no longer only an agent's."""
    for name in extra:
        app_label, codename = name.split(".")
        agent.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client.force_login(server_admin)

    client.post(f"/admin/auth/user/{agent.pk}/change/", {"first_name": "Renamed", "last_name": ""})
    with pytest.raises(workflow.WorkflowError) if extra else contextlib.nullcontext():
        workflow.deactivate_staff_account(agent, server_admin)

    agent.refresh_from_db()
    assert (agent.first_name == "Renamed") is not bool(extra)
    assert agent.is_active is bool(extra)


@pytest.mark.parametrize("other_role", [roles.SERVER_ADMIN, roles.INVITING_ADMIN])
def test_an_agent_who_also_holds_another_role_is_out_of_a_server_admins_hands(
    client, server_admin, agent, other_role
):
    agent.groups.add(Group.objects.get(name=roles.group_name(other_role)))
    client.force_login(server_admin)

    client.post(f"/admin/auth/user/{agent.pk}/change/", {"first_name": "Renamed", "last_name": ""})
    with pytest.raises(workflow.WorkflowError):
        workflow.deactivate_staff_account(agent, server_admin)

    agent.refresh_from_db()
    assert (agent.first_name, agent.is_active) == ("", True)


def test_deleting_a_staff_account_deactivates_it_and_keeps_its_trail(client, superadmin, agent):
    client.post("/admin/login/", {"username": "agent", "password": STAFF_PASSWORD})
    client.force_login(superadmin)
    response = client.post(f"/admin/auth/user/{agent.pk}/delete/")
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.is_active is False
    assert AuditEvent.objects.filter(action="staff.deactivated", target_id=str(agent.pk)).exists()
    assert AuditEvent.objects.filter(actor=agent).exists()


def test_nobody_deactivates_their_own_account_not_even_a_superadmin(client, superadmin):
    # Else a superadmin, perhaps the last one, could lock themselves out.
    with pytest.raises(workflow.WorkflowError, match="You cannot deactivate your own account"):
        workflow.deactivate_staff_account(superadmin, superadmin)

    client.force_login(superadmin)
    response = client.post(f"/admin/auth/user/{superadmin.pk}/delete/", follow=True)
    assert "You cannot deactivate your own account." in response.content.decode()

    superadmin.refresh_from_db()
    assert superadmin.is_active is True
    assert not AuditEvent.objects.filter(action="staff.deactivated").exists()


def test_password_reset_mail_goes_through_the_outbox_and_only_to_staff(client, agent, django_user_model):
    django_user_model.objects.create_user("member", email="member@applicant.example", password="x" * 14)
    client.post("/admin/password_reset/", {"email": "agent@staff.example"})
    client.post("/admin/password_reset/", {"email": "member@applicant.example"})
    assert list(OutboundEmail.objects.values_list("template", "to")) == [
        ("staff-password-reset", "agent@staff.example")
    ]


def test_a_new_staff_member_whose_set_password_link_expired_gets_a_new_one_by_reset(client, settings):
    user = workflow.create_staff_account("sam", "sam@staff.example", roles.VETTING_AGENT)
    first_link = set_password_link(OutboundEmail.objects.get(template="staff-account-created"))
    later = timezone.now() + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT + 60)
    with time_machine.travel(later):
        expired = client.get(first_link.replace(settings.SITE_URL, ""), follow=True)
        assert "new_password1" not in expired.content.decode()

        client.post("/admin/password_reset/", {"email": "Sam@staff.example"})
        mail = OutboundEmail.objects.get(template="staff-password-reset")
        assert mail.to == "sam@staff.example"
        form_page = client.get(set_password_link(mail).replace(settings.SITE_URL, ""), follow=True)
        client.post(
            form_page.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
        )
    assert authenticate(username="sam", password=NEW_PASSWORD) == user


def test_no_reset_link_for_an_account_awaiting_approval_or_without_staff_status(
    client, server_admin, django_user_model
):
    workflow.create_staff_account(
        "newbie", "newbie@staff.example", roles.VETTING_AGENT, created_by=server_admin
    )
    django_user_model.objects.create_user("member", email="member@applicant.example", password=None)
    OutboundEmail.objects.all().delete()
    client.post("/admin/password_reset/", {"email": "newbie@staff.example"})
    client.post("/admin/password_reset/", {"email": "member@applicant.example"})
    assert not OutboundEmail.objects.exists()


def test_passwords_are_hashed_with_argon2_and_need_12_characters(agent):
    assert project_settings.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    with pytest.raises(ValidationError, match="at least 12 characters"):
        validate_password("Sh0rt!pass")
    with pytest.raises(ValidationError, match="too common"):
        validate_password("password1234")
    with pytest.raises(ValidationError, match="too similar"):
        validate_password("agent@staff.example", user=agent)


# Awaiting approval is not the same as deactivated ----------------------------

CHANGELIST = "/admin/auth/user/"


def staff_row(page: str, username: str) -> str:
    """The staff list's row of `username`."""
    [row] = [row for row in re.findall(r"<tr>.*?</tr>", page, re.S) if f">{username}<" in row]
    return row


def run_action(client, action: str, *users):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [user.pk for user in users]}, follow=True
    )


@pytest.fixture
def goneagent(superadmin):
    """An agent who worked here and was let go."""
    user = workflow.create_staff_account(
        "goneagent", "gone@staff.example", roles.VETTING_AGENT, created_by=superadmin
    )
    workflow.deactivate_staff_account(user, superadmin)
    return user


@pytest.fixture
def newbie(server_admin):
    """An agent a server admin just created: waiting for a superadmin."""
    return workflow.create_staff_account(
        "newbie", "newbie@staff.example", roles.VETTING_AGENT, created_by=server_admin
    )


def test_approving_a_deactivated_account_is_refused_and_changes_nothing(client, superadmin, goneagent):
    client.force_login(superadmin)
    events = AuditEvent.objects.count()

    response = run_action(client, "approve_accounts", goneagent)

    assert "Goneagent was deactivated and is not awaiting approval" in response.content.decode()
    goneagent.refresh_from_db()
    assert goneagent.is_active is False
    assert AuditEvent.objects.count() == events
    with pytest.raises(workflow.WorkflowError, match="not awaiting approval"):
        workflow.approve_staff_account(goneagent, superadmin)


def test_an_account_deactivated_before_its_approval_cannot_be_approved_either(superadmin, newbie):
    workflow.deactivate_staff_account(newbie, superadmin)
    with pytest.raises(workflow.WorkflowError, match="not awaiting approval"):
        workflow.approve_staff_account(newbie, superadmin)
    newbie.refresh_from_db()
    assert newbie.is_active is False


def test_an_account_is_approved_once(superadmin, newbie):
    workflow.approve_staff_account(newbie, superadmin)
    workflow.deactivate_staff_account(newbie, superadmin)
    with pytest.raises(workflow.WorkflowError, match="not awaiting approval"):
        workflow.approve_staff_account(newbie, superadmin)
    assert AuditEvent.objects.filter(action="staff.approved").count() == 1


@pytest.mark.parametrize("account", ["agent", "newbie"])
def test_an_account_is_deactivated_once_and_the_second_time_is_refused(request, superadmin, account):
    # An account awaiting approval is inactive too, yet deactivating it changes something: it is
    # turned down for good instead of approved. Only a deactivated account has nothing left to change.
    user = request.getfixturevalue(account)
    workflow.deactivate_staff_account(user, superadmin)

    with pytest.raises(workflow.WorkflowError, match=f"^{account} is already deactivated.$"):
        workflow.deactivate_staff_account(User.objects.get(pk=user.pk), superadmin)

    user.refresh_from_db()
    assert user.is_active is False
    assert AuditEvent.objects.filter(action="staff.deactivated").count() == 1


def test_deleting_a_deactivated_account_again_in_the_admin_says_so_and_changes_nothing(
    client, superadmin, goneagent
):
    client.force_login(superadmin)
    events = AuditEvent.objects.count()

    response = client.post(f"/admin/auth/user/{goneagent.pk}/delete/", follow=True)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Goneagent is already deactivated." in page
    assert "Goneagent was deactivated." not in page
    assert AuditEvent.objects.count() == events
    assert AuditEvent.objects.filter(action="staff.deactivated").count() == 1


def test_the_staff_list_tells_accounts_awaiting_approval_from_deactivated_ones(
    client, superadmin, agent, newbie, goneagent
):
    client.force_login(superadmin)
    page = client.get(CHANGELIST).content.decode()
    assert "awaiting approval" in staff_row(page, "newbie")
    assert "deactivated" in staff_row(page, "goneagent")
    assert "active" in staff_row(page, "agent")
    assert "approval" not in staff_row(page, "agent")

    awaiting = client.get(CHANGELIST, {"account": "awaiting"}).content.decode()
    assert ">newbie<" in awaiting and ">goneagent<" not in awaiting and ">agent<" not in awaiting
    deactivated = client.get(CHANGELIST, {"account": "deactivated"}).content.decode()
    assert ">goneagent<" in deactivated and ">newbie<" not in deactivated and ">agent<" not in deactivated


def test_a_deactivated_account_comes_back_only_by_reactivating_it(client, superadmin, newbie, goneagent):
    client.force_login(superadmin)
    refused = run_action(client, "reactivate_accounts", newbie)
    assert "Newbie was never approved; approve the account instead" in refused.content.decode()
    newbie.refresh_from_db()
    assert newbie.is_active is False

    run_action(client, "reactivate_accounts", goneagent)
    goneagent.refresh_from_db()
    assert goneagent.is_active is True
    event = AuditEvent.objects.get(action="staff.reactivated")
    assert (event.actor, event.target_id) == (superadmin, str(goneagent.pk))


def test_server_admins_can_neither_approve_nor_reactivate(client, server_admin, newbie, goneagent):
    client.force_login(server_admin)
    page = client.get(CHANGELIST).content.decode()
    assert "approve_accounts" not in page and "reactivate_accounts" not in page
    run_action(client, "approve_accounts", newbie)
    run_action(client, "reactivate_accounts", goneagent)
    assert not User.objects.filter(username__in=["newbie", "goneagent"], is_active=True).exists()
    for step in (workflow.approve_staff_account, workflow.reactivate_staff_account):
        with pytest.raises(workflow.WorkflowError, match="Only a superadmin"):
            step(newbie, server_admin)


def test_a_superadmin_creates_an_account_that_is_active_at_once(superadmin):
    user = workflow.create_staff_account(
        "sam", "sam@staff.example", roles.VETTING_AGENT, created_by=superadmin
    )
    user.refresh_from_db()
    assert user.is_active
    event = AuditEvent.objects.get(action="staff.created")
    assert (event.actor, event.details["active"]) == (superadmin, True)
    assert not workflow.with_account_state(User.objects.filter(pk=user.pk)).get().awaiting_approval


def test_an_agent_cannot_deactivate_another_agent(agent, second_agent):
    with pytest.raises(workflow.WorkflowError, match="Your role does not allow changing staff accounts."):
        workflow.deactivate_staff_account(second_agent, agent)
    second_agent.refresh_from_db()
    assert second_agent.is_active
    assert not AuditEvent.objects.filter(action="staff.deactivated").exists()


def test_a_superadmin_in_the_agents_group_is_still_out_of_a_server_admins_hands(server_admin, superadmin):
    superadmin.groups.add(Group.objects.get(name=roles.group_name(roles.VETTING_AGENT)))
    with pytest.raises(workflow.WorkflowError, match="Server admins can deactivate vetting agents only."):
        workflow.deactivate_staff_account(superadmin, server_admin)
    superadmin.refresh_from_db()
    assert superadmin.is_active


def test_an_address_taken_in_another_case_is_refused(superadmin, agent):
    with pytest.raises(workflow.WorkflowError, match="A staff account with this e-mail address exists."):
        workflow.create_staff_account(
            "sam", "AGENT@staff.example", roles.VETTING_AGENT, created_by=superadmin
        )
    assert not User.objects.filter(username="sam").exists()
