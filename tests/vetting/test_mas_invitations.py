"""The workflow on a homeserver that delegates to MAS (MATRIX_BACKEND=mas).

MAS cannot be installed here: FakeMas (tests/vetting/homeservers.py) follows
its published admin API: paths, JSON:API shapes and status codes.
"""

from __future__ import annotations

import pytest

from tests.vetting.homeservers import apply_then_fail_once
from vetting import workflow
from vetting.models import Application, Invitation

pytestmark = pytest.mark.django_db


def test_issue_register_sync_and_join_on_mas(approved, inviting_admin, fake_mas):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    assert invitation.backend == "mas"
    assert invitation.server_id != invitation.token
    attributes = fake_mas.tokens[invitation.server_id]
    assert (attributes["token"], attributes["usage_limit"]) == (invitation.token, 1)

    fake_mas.register(invitation.token, "alex")
    report = workflow.sync_invitations()
    invitation.refresh_from_db()
    approved.refresh_from_db()
    assert report.completed == 1
    assert approved.status == Application.Status.JOINED
    assert invitation.redemption_check == Invitation.Check.PASSED


def test_revoke_on_mas_revokes_the_token_by_its_id(approved, inviting_admin, fake_mas):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin)
    assert fake_mas.tokens[invitation.server_id]["revoked_at"] is not None
    assert approved.status == Application.Status.APPROVED


def test_a_token_revoked_in_mas_itself_is_noticed_by_sync(approved, inviting_admin, fake_mas):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_mas.tokens[invitation.server_id]["revoked_at"] = "2026-01-01T00:00:00Z"
    assert workflow.sync_invitations().revoked == 1
    invitation.refresh_from_db()
    assert invitation.state == Invitation.State.REVOKED


def test_wrong_mas_client_credentials_change_nothing(approved, inviting_admin, fake_mas, settings):
    settings.MATRIX_MAS_CLIENT_SECRET = "not-the-secret"
    with pytest.raises(workflow.WorkflowError, match="refused our client credentials"):
        workflow.issue_invitation(approved, inviting_admin)
    assert fake_mas.tokens == {}
    assert not Invitation.objects.exists()


def test_a_create_applied_before_a_500_is_taken_back_on_mas(approved, inviting_admin, fake_mas):
    apply_then_fail_once(fake_mas, "/api/admin/v1/user-registration-tokens")
    with pytest.raises(workflow.WorkflowError, match="it was deleted again"):
        workflow.issue_invitation(approved, inviting_admin)
    [token] = fake_mas.tokens.values()
    assert token["revoked_at"] is not None  # MAS keeps a revoked token; it no longer works
    assert not Invitation.objects.exists()
    approved.refresh_from_db()
    assert approved.status == Application.Status.APPROVED


def test_an_account_older_than_the_token_raises_the_flag_on_mas(approved, inviting_admin, fake_mas):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_mas.register(invitation.token, "someone.else")
    fake_mas.users["alex"] = "2020-01-01T00:00:00Z"
    workflow.sync_invitations()
    invitation.refresh_from_db()
    assert invitation.redemption_check == Invitation.Check.MISMATCH
    assert "existed before the token was issued (2020-01-01 00:00 UTC)" in invitation.redemption_note
