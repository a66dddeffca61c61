"""Invitations end to end on a real Synapse homeserver (tests/synapse/server.py).

The person registers through the client-server API exactly as Element does:
the `m.login.registration_token` stage, then `m.login.dummy`.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command

from notifications.models import OutboundEmail
from tests.synapse.server import call
from tests.vetting.test_workflow import actions, assert_unchanged, recommended_by
from vetting import links, matrix, workflow
from vetting.models import Application, AuditEvent, Invitation

pytestmark = [pytest.mark.synapse, pytest.mark.django_db]
Status = Application.Status


def register(homeserver, username: str, token: str) -> tuple[int, dict]:
    """Register @username through the two interactive-auth stages; (status, body) of the last step."""
    url = f"{homeserver.url}/_matrix/client/v3/register"
    body = {"username": username, "password": secrets.token_hex(12), "inhibit_login": True}
    status, flows = call(url, "POST", body)
    assert status == 401 and ["m.login.registration_token", "m.login.dummy"] in [
        flow["stages"] for flow in flows["flows"]
    ]
    session = flows["session"]
    status, answer = call(
        url,
        "POST",
        {**body, "auth": {"type": "m.login.registration_token", "token": token, "session": session}},
    )
    if status != 401 or "m.login.registration_token" not in answer.get("completed", []):
        return status, answer
    return call(url, "POST", {**body, "auth": {"type": "m.login.dummy", "session": session}})


def approved_application(agent, server_admin, username: str) -> Application:
    application = recommended_by(agent)
    application.matrix_username = username
    application.save(update_fields=["matrix_username"])
    workflow.approve(application, server_admin)
    return application


def remote_token(homeserver, token: str) -> tuple[int, dict]:
    return call(
        f"{homeserver.url}/_synapse/admin/v1/registration_tokens/{quote(token, safe='')}",
        token=homeserver.admin_token,
    )


def test_an_approved_person_registers_with_the_issued_token_and_is_marked_joined(
    agent, server_admin, inviting_admin, synapse, caplog
):
    caplog.set_level(logging.DEBUG)
    username = f"alex{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)

    invitation = workflow.issue_invitation(application, inviting_admin)
    assert application.status == Status.INVITED
    status, remote = remote_token(synapse, invitation.token)
    assert status == 200
    assert (remote["uses_allowed"], remote["completed"]) == (1, 0)
    mailed = OutboundEmail.objects.get(template="invitation-issued")
    assert invitation.token in mailed.body_text

    status, registered = register(synapse, username, invitation.token)
    assert status == 200, registered
    assert registered["user_id"] == f"@{username}:localhost"

    report = workflow.sync_invitations()
    assert report.completed == 1
    invitation.refresh_from_db()
    application.refresh_from_db()
    assert application.status == Status.JOINED
    assert invitation.state == Invitation.State.COMPLETED
    assert invitation.redemption_check == Invitation.Check.PASSED
    assert invitation.completed_uses == 1

    # Single use: a second person cannot register with the same token.
    status, refused = register(synapse, f"{username}-second", invitation.token)
    assert status != 200
    assert call(f"{synapse.url}/_matrix/client/v3/profile/@{username}-second:localhost")[0] == 404

    # Neither the admin token nor the registration token reached a log line.
    assert synapse.admin_token not in caplog.text
    assert invitation.token not in caplog.text


def test_revoking_deletes_the_token_on_synapse_so_it_no_longer_registers(
    agent, server_admin, inviting_admin, synapse
):
    username = f"sam{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(application, inviting_admin)

    workflow.revoke_invitation(application, inviting_admin, "Wrong person")
    assert remote_token(synapse, invitation.token)[0] == 404
    assert application.status == Status.APPROVED
    status, _answer = register(synapse, username, invitation.token)
    assert status != 200

    again = workflow.reissue_invitation(application, inviting_admin)
    assert remote_token(synapse, again.token)[0] == 200
    assert register(synapse, username, again.token)[0] == 200


def test_an_invited_applicant_withdrawing_on_their_status_page_revokes_the_token_on_synapse(
    client, agent, server_admin, inviting_admin, synapse
):
    username = f"robin{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(application, inviting_admin)
    path = f"/status/{links.status_token(application)}/withdraw/"

    page = client.get(path).content.decode()
    assert "Your invitation to the Matrix server will be cancelled" in page
    assert client.post(path).status_code == 302

    application.refresh_from_db()
    assert application.status == Status.WITHDRAWN
    assert remote_token(synapse, invitation.token)[0] == 404
    assert register(synapse, username, invitation.token)[0] != 200


def test_a_token_deleted_on_synapse_is_recorded_as_revoked_and_a_new_one_can_be_issued(
    agent, server_admin, inviting_admin, synapse
):
    username = f"dana{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(application, inviting_admin)
    # A server admin deletes the token with Synapse's own admin API, not through us.
    deleted, _answer = call(
        f"{synapse.url}/_synapse/admin/v1/registration_tokens/{quote(invitation.token, safe='')}",
        "DELETE",
        token=synapse.admin_token,
    )
    assert deleted == 200

    report = workflow.sync_invitations()

    assert report.revoked == 1
    invitation.refresh_from_db()
    application.refresh_from_db()
    assert invitation.state == Invitation.State.REVOKED
    assert application.status == Status.APPROVED
    assert actions(application)[-1] == "invitation.gone_on_server"
    again = workflow.reissue_invitation(application, inviting_admin)
    assert register(synapse, username, again.token)[0] == 200


def expired_on_synapse(homeserver, token: str, within: float) -> bool:
    """Whether Synapse lists the token among its invalid ones within `within` seconds.

    Asked through the admin API, which only reads: a registration tried before
    the expiry would use the token up."""
    deadline = time.monotonic() + within
    while True:
        status, body = call(
            f"{homeserver.url}/_synapse/admin/v1/registration_tokens?valid=false",
            token=homeserver.admin_token,
        )
        assert status == 200, body
        if token in {listed["token"] for listed in body["registration_tokens"]}:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_a_token_past_its_expiry_is_refused_by_synapse_and_the_application_goes_back_for_a_reissue(
    agent, server_admin, inviting_admin, synapse
):
    username = f"eli{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(application, inviting_admin)
    # Synapse accepts no expiry in the past: make it run out in a few seconds (time enough for the
    # change to arrive on a busy machine), and wait until Synapse itself counts the token expired.
    expires_ms = int(time.time() * 1000) + 5000
    status, changed = call(
        f"{synapse.url}/_synapse/admin/v1/registration_tokens/{quote(invitation.token, safe='')}",
        "PUT",
        {"expiry_time": expires_ms},
        token=synapse.admin_token,
    )
    assert status == 200 and changed["expiry_time"] == expires_ms, changed
    assert expired_on_synapse(synapse, invitation.token, within=expires_ms / 1000 - time.time() + 30)
    assert register(synapse, username, invitation.token)[0] != 200  # Synapse's own refusal

    report = workflow.sync_invitations()

    assert report.expired == 1
    invitation.refresh_from_db()
    application.refresh_from_db()
    assert invitation.state == Invitation.State.EXPIRED
    assert application.status == Status.APPROVED
    assert [name for name, _label in workflow.allowed_actions(application, inviting_admin)] == [
        "reissue_invitation"
    ]
    again = workflow.reissue_invitation(application, inviting_admin)
    assert register(synapse, username, again.token)[0] == 200


def test_a_token_used_to_register_another_username_on_synapse_raises_the_staff_flag(
    agent, server_admin, inviting_admin, synapse
):
    username = f"fay{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(application, inviting_admin)
    assert register(synapse, f"{username}-other", invitation.token)[0] == 200

    report = workflow.sync_invitations()

    assert (report.completed, report.mismatches) == (1, 1)
    invitation.refresh_from_db()
    application.refresh_from_db()
    assert invitation.redemption_check == Invitation.Check.MISMATCH
    assert f"no account @{username}:localhost exists" in invitation.redemption_note
    assert application.status == Status.JOINED


def test_a_username_taken_on_synapse_is_refused_before_issuing(agent, server_admin, inviting_admin, synapse):
    username = f"taken{secrets.token_hex(3)}"
    first = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(first, inviting_admin)
    assert register(synapse, username, invitation.token)[0] == 200

    second = approved_application(agent, server_admin, username)
    with pytest.raises(workflow.WorkflowError, match=f"@{username}:localhost exists already"):
        workflow.issue_invitation(second, inviting_admin)
    assert_unchanged(second)


def test_a_wrong_admin_token_takes_the_configuration_error_path(
    agent, server_admin, inviting_admin, synapse, settings, caplog
):
    caplog.set_level(logging.DEBUG)
    application = approved_application(agent, server_admin, f"kim{secrets.token_hex(3)}")
    settings.MATRIX_ADMIN_TOKEN = "syt_not_a_real_admin_token"

    with pytest.raises(workflow.WorkflowError) as raised:
        workflow.issue_invitation(application, inviting_admin)
    assert "rejected our admin token: ask an operator to run “manage.py matrix_check”" in str(raised.value)
    assert "HTTP 401 M_UNKNOWN_TOKEN" in str(raised.value)
    assert_unchanged(application)
    assert actions(application)[-1] == "invitation.issue_failed"

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as check:
        call_command("matrix_check", stdout=out, stderr=err)
    assert "rejected our admin token" in str(check.value)
    for text in (str(raised.value), str(check.value), out.getvalue(), caplog.text):
        assert "syt_not_a_real_admin_token" not in text
        assert synapse.admin_token not in text


def test_a_non_admin_users_token_is_refused_as_forbidden(
    agent, server_admin, inviting_admin, synapse, settings
):
    # A real access token of an ordinary account: Synapse answers 403 M_FORBIDDEN.
    username = f"plain{secrets.token_hex(3)}"
    application = approved_application(agent, server_admin, username)
    invitation = workflow.issue_invitation(application, inviting_admin)
    password = secrets.token_hex(12)
    url = f"{synapse.url}/_matrix/client/v3/register"
    status, flows = call(url, "POST", {"username": username, "password": password})
    session = flows["session"]
    call(
        url,
        "POST",
        {
            "username": username,
            "password": password,
            "auth": {"type": "m.login.registration_token", "token": invitation.token, "session": session},
        },
    )
    status, account = call(
        url,
        "POST",
        {"username": username, "password": password, "auth": {"type": "m.login.dummy", "session": session}},
    )
    assert status == 200
    settings.MATRIX_ADMIN_TOKEN = account["access_token"]
    with pytest.raises(matrix.Unauthorised, match="HTTP 403 M_FORBIDDEN"):
        workflow.sync_invitations()
    assert not AuditEvent.objects.filter(action="invitation.completed").exists()


def test_matrix_check_reports_version_and_backend_without_the_token(synapse):
    out = io.StringIO()
    call_command("matrix_check", stdout=out)
    output = out.getvalue()
    assert "Backend: synapse" in output
    assert "Server: Synapse 1.163.2" in output
    assert "Admin credentials accepted" in output
    assert synapse.admin_token not in output
