"""Issuing, revoking, re-issuing and following invitations (vetting.workflow) against a local FakeSynapse.

The fast layer, which can also script the homeserver's failures. Against a
real Synapse, test_synapse.py runs: issuing, registering with the token and
the sync to `joined` (single use, redemption check passed); revoking and
re-issuing; a username already taken; a token deleted on the server; a token
past its expiry and its re-issue; a token used for another username (the
staff flag); a wrong admin token and an ordinary user's token; matrix_check.
A homeserver error that recovers runs on the real one in the fault tests
(tests/faults/test_dependencies.py). Only here, against the fake: the
unreachable or failing homeserver, orphan tokens taken back after a failed
transaction or an unanswered create, a used token that must not be revoked,
an account older than its token, the expiry reminder, and the cost of a sync.
"""

from __future__ import annotations

import importlib
import logging
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
import time_machine
from django.apps import apps as global_apps
from django.core import mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import OutboundEmail
from tests.conftest import _staff_user
from tests.vetting.homeservers import apply_then_fail_once
from tests.vetting.test_workflow import actions, assert_unchanged, recommended_by, with_stored_address
from vetting import matrix, roles, workflow
from vetting.models import Application, AuditEvent, Invitation

pytestmark = pytest.mark.django_db
Status = Application.Status


def issue(application, user) -> Invitation:
    return workflow.issue_invitation(application, user)


def test_issuing_creates_a_single_use_token_and_mails_it_only_to_the_issuing_admin(
    approved, inviting_admin, fake_synapse, settings
):
    invitation = issue(approved, inviting_admin)

    assert approved.status == Status.INVITED
    remote = fake_synapse.tokens[invitation.token]
    assert remote["uses_allowed"] == 1
    expected_expiry = timezone.now() + timedelta(days=settings.MATRIX_TOKEN_VALID_DAYS)
    assert abs(remote["expiry_time"] / 1000 - expected_expiry.timestamp()) < 5
    assert invitation.state == Invitation.State.PENDING
    assert invitation.matrix_username == "alex"
    assert invitation.tell_by == invitation.expires_at - timedelta(hours=48)
    assert actions(approved)[-1] == "invitation.issued"

    mails = list(OutboundEmail.objects.all())
    assert [m.to for m in mails] == [inviting_admin.email]
    body = mails[0].body_text
    assert invitation.token in body
    assert "@alex:localhost" in body
    assert f"{invitation.tell_by:%Y-%m-%d %H:%M} UTC" in body
    assert "two separate messages" in body
    assert invitation.token not in str(AuditEvent.objects.values_list("details", flat=True))


def test_the_applicant_gets_the_token_by_mail_only_when_configured(
    approved, inviting_admin, fake_synapse, settings
):
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = True
    invitation = issue(approved, inviting_admin)
    to_applicant = OutboundEmail.objects.get(to=approved.email)
    assert invitation.token in to_applicant.body_text
    assert "two separate messages" not in to_applicant.body_text


def test_the_token_is_never_mailed_to_an_address_nobody_confirmed(
    approved, inviting_admin, fake_synapse, settings
):
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = True
    # Entered by staff: the address was typed in, never confirmed by its owner.
    Application.objects.filter(pk=approved.pk).update(
        source=Application.Source.STAFF, email_confirmed_at=None
    )
    approved.refresh_from_db()
    issue(approved, inviting_admin)
    assert not OutboundEmail.objects.filter(to=approved.email).exists()
    to_admin = OutboundEmail.objects.get(template="invitation-issued")
    assert "also e-mailed to the applicant" not in to_admin.body_text
    assert "two separate messages" in to_admin.body_text


@pytest.mark.parametrize("name", workflow.INVITATION_ACTIONS)
def test_no_token_is_made_when_it_must_be_mailed_to_an_address_mail_cannot_carry(
    approved, inviting_admin, fake_synapse, settings, name
):
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = True
    if name == "reissue_invitation":
        issue(approved, inviting_admin)
        workflow.revoke_invitation(approved, inviting_admin)
        fake_synapse.server.requests.clear()
        OutboundEmail.objects.all().delete()
    with_stored_address(approved, "alex@applicant.example\u200f")
    before = actions(approved)
    with pytest.raises(workflow.WorkflowError, match="U\\+200F RIGHT-TO-LEFT MARK"):
        getattr(workflow, name)(approved, inviting_admin)
    assert fake_synapse.server.requests == []  # refused before the homeserver: no token to take back
    assert_unchanged(approved)
    assert actions(approved) == before
    assert not OutboundEmail.objects.exists()
    # When the token goes to the issuing admin alone, the applicant's address is not needed.
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = False
    getattr(workflow, name)(approved, inviting_admin)
    assert approved.status == Status.INVITED


def test_the_verifier_may_not_issue_the_invitation(agent, server_admin, fake_synapse):
    application = recommended_by(agent)
    workflow.approve(application, server_admin)
    # The verifier is also an inviting admin: the four-eyes rule still holds.
    agent.user_permissions.add(*workflow_permission("issue_invitation"))
    agent = type(agent).objects.get(pk=agent.pk)
    with pytest.raises(workflow.WorkflowError, match="four-eyes"):
        workflow.issue_invitation(application, agent, "alex")
    assert fake_synapse.server.requests == []
    assert_unchanged(application)


def test_the_verifier_may_not_reissue_the_invitation_either(
    agent, server_admin, inviting_admin, fake_synapse
):
    application = recommended_by(agent)
    application.matrix_username = "alex"
    application.save(update_fields=["matrix_username"])
    workflow.approve(application, server_admin)
    workflow.issue_invitation(application, inviting_admin)
    workflow.revoke_invitation(application, inviting_admin)
    # The verifier is also an inviting admin: a re-issue is an issue, four eyes still apply.
    agent.user_permissions.add(*workflow_permission("issue_invitation"))
    agent = type(agent).objects.get(pk=agent.pk)
    fake_synapse.server.requests.clear()
    refusal = (
        "You recorded the verification of this application, so another inviting admin must issue its "
        "invitation (four-eyes rule)."
    )
    assert workflow.refusals(application, agent) == [refusal]
    with pytest.raises(workflow.WorkflowError) as refused:
        workflow.reissue_invitation(application, agent)
    assert str(refused.value) == refusal
    assert fake_synapse.server.requests == []
    assert_unchanged(application)
    workflow.reissue_invitation(application, inviting_admin)
    assert application.status == Status.INVITED


def workflow_permission(codename: str):
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(codename=codename)


def test_roles_without_the_invitation_permission_cannot_issue(approved, server_admin, agent, fake_synapse):
    for user in (server_admin, agent):
        with pytest.raises(workflow.WorkflowError, match="does not allow “Issue invitation”"):
            issue(approved, user)
    assert fake_synapse.server.requests == []


def test_a_taken_username_is_refused_before_any_token_exists(approved, inviting_admin, fake_synapse):
    fake_synapse.users["@alex:localhost"] = 1_700_000_000
    with pytest.raises(workflow.WorkflowError, match="@alex:localhost exists already"):
        issue(approved, inviting_admin)
    assert fake_synapse.tokens == {}
    assert_unchanged(approved)


@pytest.mark.parametrize("held_as", ["alex", "Alex"])
def test_a_username_another_applications_live_token_promises_is_refused(
    held_as, approved, agent, server_admin, inviting_admin, fake_synapse
):
    holder = issue(approved, inviting_admin)
    # Synapse refuses a localpart taken in another case, so a row stored as "Alex" holds "alex" too.
    Invitation.objects.filter(pk=holder.pk).update(matrix_username=held_as)
    second = recommended_by(agent)
    workflow.approve(second, server_admin)

    with pytest.raises(
        workflow.WorkflowError,
        match=f"Application {approved.reference} has a live invitation for the Matrix username alex",
    ):
        workflow.issue_invitation(second, inviting_admin, "alex")
    assert list(fake_synapse.tokens) == [holder.token]
    assert_unchanged(second)

    # Once that token is revoked the username is free again.
    workflow.revoke_invitation(approved, inviting_admin)
    assert workflow.issue_invitation(second, inviting_admin, "alex").matrix_username == "alex"


def test_without_any_username_the_admin_is_asked_for_one(agent, server_admin, inviting_admin, fake_synapse):
    application = recommended_by(agent)
    workflow.approve(application, server_admin)
    with pytest.raises(workflow.WorkflowError, match="Choose the Matrix username"):
        workflow.issue_invitation(application, inviting_admin)
    invitation = workflow.issue_invitation(application, inviting_admin, "sam.example")
    assert invitation.matrix_username == "sam.example"


def test_a_rejected_admin_token_changes_nothing_is_audited_and_says_what_to_do(
    approved, inviting_admin, fake_synapse, settings, caplog
):
    settings.MATRIX_ADMIN_TOKEN = "syt_wrong_admin_token"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(workflow.WorkflowError) as raised:
        issue(approved, inviting_admin)
    message = str(raised.value)
    assert (
        "the homeserver rejected our admin token: ask an operator to run “manage.py matrix_check”"
        in message.lower()
    )
    assert_unchanged(approved)
    assert not Invitation.objects.exists()
    assert not OutboundEmail.objects.exists()
    failure = AuditEvent.objects.get(action="invitation.issue_failed")
    assert failure.details["kind"] == "Unauthorised"
    for text in (message, caplog.text, str(failure.details)):
        assert "syt_wrong_admin_token" not in text
        assert fake_synapse.admin_token not in text


def test_an_unreachable_homeserver_changes_nothing(approved, inviting_admin, fake_synapse):
    fake_synapse.close()
    with pytest.raises(workflow.WorkflowError, match="connection refused.*try again in a few minutes"):
        issue(approved, inviting_admin)
    assert_unchanged(approved)
    assert actions(approved)[-1] == "invitation.issue_failed"


def test_a_token_made_for_a_failed_transaction_is_revoked_again(approved, inviting_admin, fake_synapse):
    with (
        mock.patch.object(workflow, "_invitation_mails", side_effect=RuntimeError("mail templates broken")),
        pytest.raises(RuntimeError),
    ):
        issue(approved, inviting_admin)
    assert fake_synapse.server.calls("POST", "/_synapse/admin/v1/registration_tokens/new") == 1
    assert fake_synapse.tokens == {}  # no orphan token on the server
    assert_unchanged(approved)
    assert not Invitation.objects.exists()


def test_at_most_one_live_invitation_per_application_is_a_database_rule(
    approved, inviting_admin, fake_synapse
):
    from django.db import IntegrityError, transaction

    invitation = issue(approved, inviting_admin)
    with pytest.raises(IntegrityError), transaction.atomic():
        Invitation.objects.create(
            application=approved,
            backend="synapse",
            token="another",
            server_id="another",
            matrix_username="alex",
            expires_at=invitation.expires_at,
            issued_by=inviting_admin,
            issued_at=timezone.now(),
        )


def test_issuing_twice_from_stale_pages_is_refused_the_second_time(approved, inviting_admin, fake_synapse):
    stale_page = Application.objects.get(pk=approved.pk)
    issue(approved, inviting_admin)
    # The same admin, from a second tab: not "someone else".
    with pytest.raises(workflow.AlreadyDecided, match=r"now invited \(by you\)"):
        issue(stale_page, inviting_admin)
    assert len(fake_synapse.tokens) == 1


def test_an_issue_overtaken_between_its_first_look_and_its_lock_makes_no_second_token(
    approved, inviting_admin, django_user_model, fake_synapse, monkeypatch
):
    # The other admin's click commits after this click's early look, before its row lock: the
    # guard must be checked again under the lock. (test_invitation_concurrency races two
    # threads, on PostgreSQL only; this runs on every database.)
    second_admin = _staff_user(django_user_model, "second_inviting_admin", roles.INVITING_ADMIN)
    real_get_client = matrix.get_client
    overtaken = []

    def get_client_after_the_other_click():
        if not overtaken:
            overtaken.append(True)
            issue(Application.objects.get(pk=approved.pk), second_admin)
        return real_get_client()

    monkeypatch.setattr(matrix, "get_client", get_client_after_the_other_click)

    with pytest.raises(workflow.AlreadyDecided, match=r"Someone else got there first.*second_inviting_admin"):
        issue(approved, inviting_admin)

    assert len(fake_synapse.tokens) == 1
    invitation = Invitation.objects.get()
    assert (invitation.issued_by, invitation.state) == (second_admin, Invitation.State.PENDING)
    assert invitation.token in fake_synapse.tokens
    assert AuditEvent.objects.filter(action="invitation.issued").count() == 1


# Revoke and re-issue --------------------------------------------------------


def test_revoking_deletes_the_token_on_the_server_and_returns_to_approved(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin, "Sent to the wrong person")
    invitation.refresh_from_db()
    assert fake_synapse.tokens == {}
    assert approved.status == Status.APPROVED
    assert (invitation.state, invitation.revoked_by, invitation.revocation) == (
        Invitation.State.REVOKED,
        inviting_admin,
        Invitation.Revocation.INVITING_ADMIN,
    )
    event = AuditEvent.objects.get(action="invitation.revoked")
    assert (event.actor_kind, event.actor) == (AuditEvent.ActorKind.USER, inviting_admin)
    assert event.details["reason"] == "Sent to the wrong person"
    assert event.details["already_gone_on_server"] is False


def test_a_token_already_gone_on_the_server_counts_as_revoked(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    del fake_synapse.tokens[invitation.token]
    workflow.revoke_invitation(approved, inviting_admin)
    assert approved.status == Status.APPROVED
    assert AuditEvent.objects.get(action="invitation.revoked").details["already_gone_on_server"] is True


def test_a_used_token_is_not_revoked(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    with pytest.raises(workflow.WorkflowError, match="already used"):
        workflow.revoke_invitation(approved, inviting_admin)
    assert invitation.token in fake_synapse.tokens
    assert_unchanged(approved)


def test_a_failed_revoke_changes_nothing_and_is_audited(approved, inviting_admin, fake_synapse, settings):
    invitation = issue(approved, inviting_admin)
    settings.MATRIX_ADMIN_TOKEN = "syt_wrong"
    with pytest.raises(workflow.WorkflowError, match="rejected our admin token"):
        workflow.revoke_invitation(approved, inviting_admin)
    invitation.refresh_from_db()
    assert invitation.state == Invitation.State.PENDING
    assert_unchanged(approved)
    assert actions(approved)[-1] == "invitation.revoke_failed"


def assert_still_live(invitation: Invitation, homeserver, application: Application) -> None:
    """Nothing changed here or on the homeserver: the token still works."""
    invitation.refresh_from_db()
    assert invitation.state == Invitation.State.PENDING
    assert invitation.token in homeserver.tokens
    assert_unchanged(application)


def test_a_homeserver_whose_admin_api_answers_a_bare_404_revokes_nothing(
    approved, inviting_admin, fake_synapse
):
    # As a proxy in front of Synapse without a location for /_synapse/admin would.
    invitation = issue(approved, inviting_admin)
    fake_synapse.server.handler = lambda request: (404, {})
    with pytest.raises(workflow.WorkflowError, match="HTTP 404"):
        workflow.revoke_invitation(approved, inviting_admin)
    with pytest.raises(workflow.WorkflowError, match="could not be cancelled on the Matrix server just now"):
        workflow.withdraw(approved)
    assert_still_live(invitation, fake_synapse, approved)


# The applicant withdraws while invited ---------------------------------------------


def test_a_reissue_keeps_the_username_staff_chose_for_the_first_invitation(
    approved, inviting_admin, fake_synapse
):
    # The applicant asked for @alex; staff chose another name when issuing.
    first = workflow.issue_invitation(approved, inviting_admin, "alex.example")
    workflow.revoke_invitation(approved, inviting_admin)
    second = workflow.reissue_invitation(approved, inviting_admin)
    assert (first.matrix_username, second.matrix_username) == ("alex.example", "alex.example")
    issued, reissued = AuditEvent.objects.filter(
        action__in=("invitation.issued", "invitation.reissued")
    ).order_by("id")
    assert issued.details["matrix_username"] == reissued.details["matrix_username"] == "alex.example"


def test_withdrawing_while_invited_revokes_the_token_then_closes_the_application(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    workflow.withdraw(approved)
    invitation.refresh_from_db()
    assert fake_synapse.tokens == {}
    assert approved.status == Status.WITHDRAWN
    assert (invitation.state, invitation.revoked_by, invitation.revocation) == (
        Invitation.State.REVOKED,
        None,
        Invitation.Revocation.WITHDRAWAL,
    )
    event = AuditEvent.objects.get(action="application.withdrawn")
    assert event.actor_kind == AuditEvent.ActorKind.APPLICANT
    assert event.details == {"invitation_revoked": invitation.pk, "already_gone_on_server": False}
    assert OutboundEmail.objects.filter(to=approved.email, template="application-withdrawn").count() == 1
    # The issuing admin, who may not have handed the token over yet, is told not to.
    told = OutboundEmail.objects.get(template="invitation-withdrawn")
    assert told.to == inviting_admin.email
    assert told.subject == f"Application {approved.reference} was withdrawn: do not send its token"
    assert f"The token for @{invitation.matrix_username}:" in told.body_text
    assert "was revoked on the server: it no longer creates an account." in told.body_text
    assert invitation.token not in told.body_text


def test_a_withdrawal_records_when_it_revoked_the_invitation(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    withdrawn_at = timezone.now() + timedelta(days=2)
    with time_machine.travel(withdrawn_at, tick=False):
        workflow.withdraw(approved)
    invitation.refresh_from_db()
    # The invitation list shows when the token stopped working, as for a staff revoke.
    assert invitation.revoked_at == withdrawn_at


def test_withdrawing_with_the_token_already_gone_on_the_server_still_withdraws(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    del fake_synapse.tokens[invitation.token]
    workflow.withdraw(approved)
    assert approved.status == Status.WITHDRAWN
    assert AuditEvent.objects.get(action="application.withdrawn").details["already_gone_on_server"] is True
    assert (
        "was already gone from the server."
        in OutboundEmail.objects.get(template="invitation-withdrawn").body_text
    )


def test_withdrawing_with_a_used_token_is_refused_in_the_applicant_s_words(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    with pytest.raises(workflow.WorkflowError, match="already used to create an account") as refusal:
        workflow.withdraw(approved)
    assert "Sync now" not in str(refusal.value)
    assert invitation.token in fake_synapse.tokens
    assert_unchanged(approved)


# The two ways an invitation ends with a revoke on the homeserver.
ENDING_AN_INVITATION = pytest.mark.parametrize(
    "end_it",
    [
        lambda application, admin: workflow.withdraw(application),
        lambda application, admin: workflow.revoke_invitation(application, admin, "Sent to the wrong person"),
    ],
    ids=["applicant withdraws", "staff revoke"],
)


@ENDING_AN_INVITATION
def test_a_failure_after_the_revoke_leaves_the_token_gone_and_the_sync_records_it(
    approved, inviting_admin, fake_synapse, end_it
):
    # The revoke comes before the audit event, so that the trail's lock is not held while the
    # homeserver answers (test_invitation_concurrency); should the event fail, the sync finds the token gone.
    invitation = issue(approved, inviting_admin)
    with (
        mock.patch.object(workflow.audit, "record", side_effect=RuntimeError("audit log unavailable")),
        pytest.raises(RuntimeError),
    ):
        end_it(approved, inviting_admin)
    invitation.refresh_from_db()
    assert invitation.token not in fake_synapse.tokens
    assert invitation.state == Invitation.State.PENDING

    assert workflow.sync_invitations().revoked == 1
    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert invitation.state == Invitation.State.REVOKED
    assert approved.status == Status.APPROVED


def test_an_invited_applicant_whose_address_cannot_be_mailed_still_withdraws_and_the_token_goes(
    approved, inviting_admin, fake_synapse
):
    issue(approved, inviting_admin)
    application = with_stored_address(approved, "alex@applicant.example\u200f")
    workflow.withdraw(application)
    assert fake_synapse.tokens == {}
    assert application.status == Status.WITHDRAWN


@pytest.mark.parametrize("failure", ["unreachable", "not configured"])
def test_withdrawing_while_the_homeserver_fails_changes_nothing(
    approved, inviting_admin, fake_synapse, settings, failure
):
    invitation = issue(approved, inviting_admin)
    if failure == "unreachable":
        settings.MATRIX_ADMIN_TOKEN = "syt_wrong"
    else:
        settings.MATRIX_HOMESERVER_URL = ""
    with pytest.raises(workflow.WorkflowError, match="could not be cancelled on the Matrix server just now"):
        workflow.withdraw(approved)
    assert_still_live(invitation, fake_synapse, approved)
    assert not AuditEvent.objects.filter(action="application.withdrawn").exists()


def test_reissue_after_revocation_gives_a_new_token_for_the_same_username(
    approved, inviting_admin, fake_synapse
):
    first = issue(approved, inviting_admin)
    with pytest.raises(workflow.WorkflowError, match="revoke it before"):
        workflow.reissue_invitation(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin)
    with pytest.raises(workflow.WorkflowError, match="use “Re-issue invitation”"):
        issue(approved, inviting_admin)
    second = workflow.reissue_invitation(approved, inviting_admin)
    assert second.token != first.token
    assert second.matrix_username == "alex"
    assert list(fake_synapse.tokens) == [second.token]
    assert approved.status == Status.INVITED
    assert actions(approved)[-1] == "invitation.reissued"


def test_reissue_is_possible_once_the_clock_has_run_out(approved, inviting_admin, fake_synapse):
    first = issue(approved, inviting_admin)
    with time_machine.travel(first.expires_at + timedelta(minutes=1)):
        second = workflow.reissue_invitation(approved, inviting_admin)
    first.refresh_from_db()
    assert first.state == Invitation.State.EXPIRED
    assert second.state == Invitation.State.PENDING


def test_reissue_after_expiry_refuses_while_the_old_token_was_used_unrecorded(
    approved, inviting_admin, fake_synapse
):
    first = issue(approved, inviting_admin)
    # They registered in time, under another name; sync_invitations has not run since.
    fake_synapse.register(first.token, "alex.b")
    with time_machine.travel(first.expires_at + timedelta(minutes=1)):
        with pytest.raises(workflow.WorkflowError, match="already used to create an account"):
            workflow.reissue_invitation(approved, inviting_admin)
        assert list(fake_synapse.tokens) == [first.token]
        assert_unchanged(approved)
        first.refresh_from_db()
        assert first.state == Invitation.State.PENDING

        # The sync the message points to records the redemption (and flags the other name).
        assert workflow.sync_invitations().completed == 1
    first.refresh_from_db()
    approved.refresh_from_db()
    assert (first.state, first.redemption_check) == (Invitation.State.COMPLETED, Invitation.Check.MISMATCH)
    assert approved.status == Status.JOINED


# Following tokens -------------------------------------------------------------


def test_sync_marks_a_used_token_joined_when_the_assigned_account_exists(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    report = workflow.sync_invitations()
    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert (report.live, report.completed) == (1, 1)
    assert approved.status == Status.JOINED
    assert invitation.state == Invitation.State.COMPLETED
    assert invitation.completed_uses == 1
    assert invitation.redemption_check == Invitation.Check.PASSED
    assert "invitation.completed" in actions(approved)


def test_erasing_a_joined_application_forgets_the_username_on_its_invitations(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    workflow.sync_invitations()
    workflow.erase_application(approved)
    invitation.refresh_from_db()
    assert invitation.state == Invitation.State.COMPLETED  # what happened stays
    assert (invitation.matrix_username, invitation.raw_response, invitation.redemption_note) == ("", {}, "")
    assert "alex" not in str(list(Invitation.objects.values_list()))
    # The invitation's events are the application's: redacted with them.
    assert "alex" not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_a_token_used_for_another_username_raises_the_staff_flag(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    fake_synapse.register(invitation.token, "someone.else")
    report = workflow.sync_invitations()
    invitation.refresh_from_db()
    assert report.mismatches == 1
    assert invitation.redemption_check == Invitation.Check.MISMATCH
    assert "no account @alex:localhost exists" in invitation.redemption_note


def test_an_account_older_than_the_token_raises_the_flag(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    fake_synapse.register(invitation.token, "someone.else")
    fake_synapse.users["@alex:localhost"] = int((datetime.now(UTC) - timedelta(days=3)).timestamp())
    workflow.sync_invitations()
    invitation.refresh_from_db()
    assert invitation.redemption_check == Invitation.Check.MISMATCH
    assert "existed before the token was issued" in invitation.redemption_note


def test_an_expired_token_sends_the_application_back_for_a_reissue(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    with time_machine.travel(invitation.expires_at + timedelta(hours=1)):
        report = workflow.sync_invitations()
    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert report.expired == 1
    assert invitation.state == Invitation.State.EXPIRED
    assert approved.status == Status.APPROVED
    assert [name for name, _label in workflow.allowed_actions(approved, inviting_admin)] == [
        "reissue_invitation"
    ]


def test_a_token_deleted_on_the_server_is_recorded_as_revoked(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    del fake_synapse.tokens[invitation.token]
    workflow.sync_invitations()
    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert (invitation.state, invitation.revoked_by, invitation.revocation) == (
        Invitation.State.REVOKED,
        None,
        Invitation.Revocation.HOMESERVER,
    )
    assert approved.status == Status.APPROVED
    assert "invitation.gone_on_server" in actions(approved)


def test_an_invitation_revoked_while_the_sync_asks_the_homeserver_stays_revoked(
    approved, inviting_admin, fake_synapse, monkeypatch
):
    # Else the sync would turn the admin's revocation into "expired", with an event nobody
    # caused (and lost-race messages name the newest status-changing event's actor).
    invitation = issue(approved, inviting_admin)
    real_get_client = matrix.get_client

    def client_whose_list_is_overtaken_by_a_revoke():
        client = real_get_client()
        real_list_tokens = client.list_tokens

        def list_tokens(*args, **kwargs):
            tokens = list(real_list_tokens(*args, **kwargs))
            # The admin's revoke commits after the homeserver answered the sync, before it writes.
            workflow.revoke_invitation(
                Application.objects.get(pk=approved.pk), inviting_admin, "Wrong person"
            )
            return tokens

        client.list_tokens = list_tokens
        return client

    monkeypatch.setattr(matrix, "get_client", client_whose_list_is_overtaken_by_a_revoke)
    with time_machine.travel(invitation.expires_at + timedelta(hours=1)):
        report = workflow.sync_invitations()

    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert (report.expired, report.revoked) == (0, 0)
    assert (invitation.state, invitation.revoked_by) == (Invitation.State.REVOKED, inviting_admin)
    assert approved.status == Status.APPROVED
    assert actions(approved)[-1] == "invitation.revoked"
    assert "invitation.expired" not in actions(approved)


def test_a_registration_still_in_progress_keeps_the_invitation_pending(
    approved, inviting_admin, fake_synapse
):
    # Synapse counts a use as pending from the token's check until the account exists.
    invitation = issue(approved, inviting_admin)
    fake_synapse.tokens[invitation.token]["pending"] = 1
    report = workflow.sync_invitations()
    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert (report.still_pending, report.completed, report.mismatches) == (1, 0, 0)
    assert (invitation.state, invitation.pending_uses) == (Invitation.State.PENDING, 1)
    assert approved.status == Status.INVITED


def test_one_reminder_goes_to_the_issuing_admin_five_days_before_expiry(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    OutboundEmail.objects.all().delete()
    with time_machine.travel(invitation.expires_at - timedelta(days=5, seconds=1), tick=False):
        assert workflow.sync_invitations().reminders == 0
    with time_machine.travel(invitation.expires_at - timedelta(days=5), tick=False):
        assert workflow.sync_invitations().reminders == 1
        assert workflow.sync_invitations().reminders == 0
    reminder = OutboundEmail.objects.get()
    assert reminder.to == inviting_admin.email
    assert reminder.template == "invitation-expiring"
    assert invitation.token not in reminder.body_text


def test_no_reminder_is_queued_for_an_issuing_admin_without_an_address(
    approved, inviting_admin, fake_synapse
):
    invitation = issue(approved, inviting_admin)
    OutboundEmail.objects.all().delete()
    type(inviting_admin).objects.filter(pk=inviting_admin.pk).update(email="")
    with time_machine.travel(invitation.expires_at - timedelta(days=4)):
        assert workflow.sync_invitations().reminders == 0
    assert not OutboundEmail.objects.exists()
    invitation.refresh_from_db()
    assert invitation.reminder_sent_at is None


def test_sync_with_nothing_live_asks_the_homeserver_nothing(fake_synapse):
    assert workflow.sync_invitations().live == 0
    assert fake_synapse.server.requests == []


def test_sync_of_200_invitations_makes_one_list_call(
    inviting_admin, fake_synapse, django_assert_max_num_queries
):
    invitations = make_invitations(200, inviting_admin, fake_synapse)
    fake_synapse.register(invitations[0].token, invitations[0].matrix_username)
    # The used token's bookkeeping (16 queries today) and one update for the rest:
    # a query per pending invitation would add 199.
    with django_assert_max_num_queries(20):
        report = workflow.sync_invitations()
    assert (report.live, report.completed, report.still_pending) == (200, 1, 199)
    assert fake_synapse.server.calls("GET", "/_synapse/admin/v1/registration_tokens") == 1
    # The one used token costs one account lookup; nothing is asked per pending token.
    assert len(fake_synapse.server.requests) == 2


def make_invitations(count: int, issuer, homeserver, backend: str = "synapse") -> list[Invitation]:
    """Invited applications with live tokens, made directly (issuing 200 through the workflow is slow)."""
    now = timezone.now()
    invitations = []
    for number in range(count):
        application = Application.objects.create(
            full_name=f"Person {number}",
            email=f"person{number}@applicant.example",
            referral="r",
            statement="s",
            consent_given_at=now,
            status=Status.INVITED,
        )
        token = f"tok{number:04d}"
        expires = now + timedelta(days=30)
        server_id = token
        if backend == "synapse":
            homeserver.tokens[token] = {
                "token": token,
                "uses_allowed": 1,
                "pending": 0,
                "completed": 0,
                "expiry_time": int(expires.timestamp() * 1000),
            }
        else:
            from vetting import matrix

            server_id = matrix.get_client().create_token(token, expires).server_id
        invitations.append(
            Invitation(
                application=application,
                backend=backend,
                token=token,
                server_id=server_id,
                matrix_username=f"person{number}",
                expires_at=expires,
                issued_by=issuer,
                issued_at=now,
            )
        )
    return Invitation.objects.bulk_create(invitations)


def test_mail_is_only_queued_never_sent_during_issue(approved, inviting_admin, fake_synapse):
    issue(approved, inviting_admin)
    assert mail.outbox == []


def test_a_create_left_unanswered_is_taken_back_on_synapse(
    approved, inviting_admin, fake_synapse, short_read_timeout
):
    """Synapse applied the create but the answer never came: the token we chose is deleted again."""
    from tests.vetting.homeservers import HANG

    answer = fake_synapse.server.handler
    fake_synapse.server.hang_seconds = 1.0

    def apply_then_hang(request):
        result = answer(request)
        return HANG if request.path.endswith("/registration_tokens/new") else result

    fake_synapse.server.handler = apply_then_hang
    with pytest.raises(workflow.WorkflowError, match="did not answer in time"):
        issue(approved, inviting_admin)
    assert fake_synapse.server.calls("DELETE", "/_synapse/admin/v1/registration_tokens/") == 1
    assert fake_synapse.tokens == {}
    assert_unchanged(approved)


def test_a_create_applied_before_a_500_is_taken_back_and_the_admin_told_so(
    approved, inviting_admin, fake_synapse
):
    apply_then_fail_once(fake_synapse, "/_synapse/admin/v1/registration_tokens/new")
    with pytest.raises(workflow.WorkflowError) as raised:
        issue(approved, inviting_admin)
    assert fake_synapse.server.calls("POST", "/_synapse/admin/v1/registration_tokens/new") == 2
    assert fake_synapse.tokens == {}  # no orphan token on the server
    assert "had made the registration token all the same; it was deleted again" in str(raised.value)
    assert_unchanged(approved)
    assert not Invitation.objects.exists()
    assert actions(approved)[-1] == "invitation.issue_failed"


def test_a_token_that_cannot_be_taken_back_is_audited_and_the_admin_told(
    approved, inviting_admin, fake_synapse
):
    apply_then_fail_once(fake_synapse, "/_synapse/admin/v1/registration_tokens/new")
    answer = fake_synapse.server.handler
    fake_synapse.server.handler = lambda request: (
        (503, {"errcode": "M_UNKNOWN"}) if request.method == "DELETE" else answer(request)
    )
    with pytest.raises(workflow.WorkflowError) as raised:
        issue(approved, inviting_admin)
    message = str(raised.value)
    assert "may have made the registration token, and it could not be deleted" in message
    assert "Nothing was changed" not in message
    [token] = fake_synapse.tokens
    assert token not in message
    failure = AuditEvent.objects.get(action="invitation.orphan_revoke_failed")
    assert token not in str(failure.details)
    assert_unchanged(approved)


# How an invitation was revoked -----------------------------------------------------


def test_only_a_revoked_invitation_says_how_it_was_revoked(approved, inviting_admin, fake_synapse):
    invitation = issue(approved, inviting_admin)
    invitation.revocation = Invitation.Revocation.WITHDRAWAL
    with pytest.raises(IntegrityError), transaction.atomic():
        invitation.save(update_fields=["revocation"])


def test_the_migration_tells_earlier_revocations_apart_by_their_audit_events(
    approved, agent, server_admin, inviting_admin, fake_synapse
):
    migration = importlib.import_module("vetting.migrations.0009_invitation_revocation")

    def approved_as(username: str) -> Application:
        application = recommended_by(agent)
        application.matrix_username = username
        application.save(update_fields=["matrix_username"])
        workflow.approve(application, server_admin)
        return application

    gone = issue(approved, inviting_admin)
    fake_synapse.tokens.clear()
    workflow.sync_invitations()
    withdrawn = workflow.reissue_invitation(approved, inviting_admin)  # the same application's second
    workflow.withdraw(approved)
    by_admin_application = approved_as("sam")
    by_admin = issue(by_admin_application, inviting_admin)
    workflow.revoke_invitation(by_admin_application, inviting_admin)
    erased_application = approved_as("robin")
    erased = issue(erased_application, inviting_admin)
    workflow.withdraw(erased_application)
    workflow.erase_application(erased_application)  # its withdrawal's details are redacted
    live = issue(approved_as("kim"), inviting_admin)
    Invitation.objects.update(revocation="")  # as the rows were before the migration

    migration.record_how_revoked_invitations_were_revoked(global_apps, None)

    revocations = dict(Invitation.objects.values_list("pk", "revocation"))
    assert revocations == {
        gone.pk: Invitation.Revocation.HOMESERVER,
        withdrawn.pk: Invitation.Revocation.WITHDRAWAL,
        by_admin.pk: Invitation.Revocation.INVITING_ADMIN,
        erased.pk: "",
        live.pk: "",
    }
