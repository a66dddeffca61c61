"""The operator commands matrix_check and sync_invitations, against local homeservers."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from tests.synapse.server import free_port
from tests.vetting.test_invitations import make_invitations
from vetting import matrix, workflow
from vetting.models import Application, Invitation

pytestmark = pytest.mark.django_db


def run(name: str, *args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_matrix_check_prints_backend_version_and_a_working_token(fake_synapse):
    out, _err = run("matrix_check")
    assert "Backend: synapse" in out
    assert f"Homeserver: {fake_synapse.url} (server name localhost)" in out
    assert "Server: Synapse 1.163.2 (fake)" in out
    assert "Admin credentials accepted: 0 valid registration token(s)" in out
    assert fake_synapse.admin_token not in out
    assert fake_synapse.server.calls("GET", "/_synapse/admin/v1/registration_tokens") == 1


def test_matrix_check_fails_plainly_without_settings(settings):
    settings.MATRIX_HOMESERVER_URL = ""
    with pytest.raises(CommandError, match="MATRIX_HOMESERVER_URL is not set"):
        run("matrix_check")


def test_matrix_check_fails_plainly_when_nothing_answers(settings, fast_retries):
    settings.MATRIX_HOMESERVER_URL = f"http://127.0.0.1:{free_port()}"
    settings.MATRIX_ADMIN_TOKEN = "syt_secret_never_printed"
    with pytest.raises(CommandError) as raised:
        run("matrix_check")
    assert "connection refused" in str(raised.value)
    assert "syt_secret_never_printed" not in str(raised.value)


def test_matrix_check_on_mas(fake_mas):
    out, _err = run("matrix_check")
    assert "Backend: mas" in out
    assert "Matrix Authentication Service for localhost" in out
    assert fake_mas.client_secret not in out


def test_matrix_check_shows_scheme_host_and_port_but_never_a_password(fake_mas, settings):
    settings.MATRIX_HOMESERVER_URL = "https://rvi:S3CRETPW@matrix.localhost:8448"
    settings.MATRIX_MAS_URL = fake_mas.url.replace("http://", "http://rvi:S3CRETPW@")
    out, _err = run("matrix_check")
    assert "Homeserver: https://matrix.localhost:8448 (server name localhost)" in out
    assert f"Authentication service: {fake_mas.url}\n" in out
    assert "S3CRETPW" not in out


def test_sync_invitations_prints_counts(approved, inviting_admin, fake_synapse):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    out, err = run("sync_invitations", "--dry-run")
    assert out.startswith("Dry run, nothing changed: 1 live invitation(s): 1 used")
    approved.refresh_from_db()
    assert approved.status == Application.Status.INVITED

    out, err = run("sync_invitations")
    assert "1 live invitation(s): 1 used, 0 expired, 0 revoked or gone, 0 still waiting" in out
    approved.refresh_from_db()
    assert approved.status == Application.Status.JOINED
    assert err == ""


def test_sync_invitations_reports_mismatches_on_stderr(approved, inviting_admin, fake_synapse):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_synapse.register(invitation.token, "somebody")
    _out, err = run("sync_invitations")
    assert "1 used token(s) did not create the assigned account" in err


def test_sync_invitations_exits_non_zero_when_the_token_is_refused(
    approved, inviting_admin, fake_synapse, settings
):
    workflow.issue_invitation(approved, inviting_admin)
    settings.MATRIX_ADMIN_TOKEN = "syt_bad"
    with pytest.raises(CommandError, match="rejected our admin token"):
        run("sync_invitations")
    assert Invitation.objects.get().state == Invitation.State.PENDING


def test_sync_invitations_on_mas_makes_one_list_call_per_page(inviting_admin, fake_mas):
    """200 invitations on the MAS backend: pages of 100, so two list calls, and nothing per invitation."""
    invitations = make_invitations(200, inviting_admin, fake_mas, backend="mas")
    fake_mas.register(invitations[5].token, invitations[5].matrix_username)
    fake_mas.server.requests.clear()
    out, _err = run("sync_invitations")
    assert "200 live invitation(s): 1 used" in out
    assert fake_mas.server.calls("GET", "/api/admin/v1/user-registration-tokens") == 2
    # Plus one access token and one account check for the used token.
    assert len(fake_mas.server.requests) == 4
    assert (
        invitations[5].application.__class__.objects.get(pk=invitations[5].application_id).status == "joined"
    )


def test_matrix_check_counts_only_the_tokens_that_still_work(fake_synapse):
    client = matrix.get_client()
    now = datetime.now(UTC)
    client.create_token("still-valid", now + timedelta(days=30))
    client.create_token("already-used", now + timedelta(days=30))
    fake_synapse.register("already-used", "sam")
    fake_synapse.tokens["past-expiry"] = {**fake_synapse.tokens["still-valid"], "token": "past-expiry"}
    fake_synapse.tokens["past-expiry"]["expiry_time"] = int((now - timedelta(days=1)).timestamp() * 1000)
    out, _err = run("matrix_check")
    assert "Admin credentials accepted: 1 valid registration token(s)" in out
