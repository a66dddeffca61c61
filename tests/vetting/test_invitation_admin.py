"""Invitations in the admin: the three buttons, the list, masking, "Sync now", and no homeserver call per row."""

from __future__ import annotations

import logging
import re

import pytest
from django.utils import timezone
from django.utils.formats import date_format

from notifications.models import OutboundEmail
from tests.vetting.test_admin_workflow import buttons, change_url, unmailable_refusal
from tests.vetting.test_invitations import make_invitations
from tests.vetting.test_workflow import with_stored_address
from vetting import workflow
from vetting.models import Application, AuditEvent, Invitation

pytestmark = pytest.mark.django_db
Status = Application.Status
LIST_URL = "/admin/vetting/invitation/"


def action_url(application: Application, name: str) -> str:
    return f"/admin/vetting/application/{application.pk}/action/{name}/"


def test_inviting_admin_issues_through_the_button_with_the_username_prefilled(
    client, approved, inviting_admin, fake_synapse
):
    client.force_login(inviting_admin)
    assert buttons(client.get(change_url(approved)).content.decode()) == ["Issue invitation"]
    form = client.get(action_url(approved, "issue_invitation")).content.decode()
    assert 'value="alex"' in form

    response = client.post(action_url(approved, "issue_invitation"), {"matrix_username": "alex"}, follow=True)
    page = response.content.decode()
    assert "Issue invitation: done. The application is now invited." in page
    assert buttons(page) == ["Revoke invitation"]
    assert len(fake_synapse.tokens) == 1


def test_the_reissue_form_starts_from_the_username_assigned_last(
    client, approved, inviting_admin, fake_synapse
):
    workflow.issue_invitation(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin)
    workflow.reissue_invitation(approved, inviting_admin, "alex.smith")
    workflow.revoke_invitation(approved, inviting_admin)
    client.force_login(inviting_admin)
    form = client.get(action_url(approved, "reissue_invitation")).content.decode()
    assert 'value="alex.smith"' in form and 'value="alex"' not in form


def test_a_bad_username_is_refused_on_the_form(client, approved, inviting_admin, fake_synapse):
    client.force_login(inviting_admin)
    response = client.post(action_url(approved, "issue_invitation"), {"matrix_username": "Alex Smith"})
    assert response.status_code == 200
    assert "Use only lowercase letters" in response.content.decode()
    assert fake_synapse.server.requests == []


def test_a_homeserver_failure_is_said_on_the_form_keeping_what_was_typed(
    client, approved, inviting_admin, fake_synapse, settings
):
    settings.MATRIX_ADMIN_TOKEN = "syt_wrong_token_value"
    client.force_login(inviting_admin)
    response = client.post(
        action_url(approved, "issue_invitation"), {"seen_status": "approved", "matrix_username": "alex.smith"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    summary = re.search(r'<p class="errornote" id="error-summary" tabindex="-1">([^<]*)</p>', page).group(1)
    assert summary.endswith(
        "The homeserver rejected our admin token: ask an operator to run “manage.py matrix_check”."
    )
    assert 'name="matrix_username" value="alex.smith"' in page
    assert '<input type="submit" class="default" value="Issue invitation">' in page
    assert "syt_wrong_token_value" not in page
    approved.refresh_from_db()
    assert approved.status == Status.APPROVED
    assert buttons(client.get(change_url(approved)).content.decode()) == ["Issue invitation"]


@pytest.mark.parametrize("name", ["issue_invitation", "reissue_invitation"])
def test_the_issue_pages_say_at_once_that_no_homeserver_is_configured(
    client, approved, inviting_admin, settings, name
):
    settings.MATRIX_HOMESERVER_URL = ""
    if name == "reissue_invitation":
        expired_invitation(approved, inviting_admin)
    client.force_login(inviting_admin)
    page = client.get(action_url(approved, name)).content.decode()
    assert (
        '<p class="errornote">MATRIX_HOMESERVER_URL is not set. Ask an operator to configure the homeserver '
        "settings, then run “manage.py matrix_check”.</p>"
    ) in page
    assert 'name="matrix_username"' not in page  # nothing to fill in that could not be sent
    assert not AuditEvent.objects.filter(action="invitation.issue_failed").exists()


def expired_invitation(application: Application, issued_by) -> Invitation:
    return Invitation.objects.create(
        application=application,
        token="expired-token",
        matrix_username="alex",
        expires_at=timezone.now(),
        state=Invitation.State.EXPIRED,
        issued_by=issued_by,
        issued_at=timezone.now(),
    )


@pytest.mark.parametrize(
    ("name", "label"),
    [("issue_invitation", "Issue invitation"), ("reissue_invitation", "Re-issue invitation")],
)
def test_without_a_homeserver_the_application_page_says_why_instead_of_offering_the_button(
    client, approved, inviting_admin, settings, name, label
):
    if name == "reissue_invitation":
        expired_invitation(approved, inviting_admin)
    settings.MATRIX_HOMESERVER_URL = ""
    client.force_login(inviting_admin)
    page = client.get(change_url(approved)).content.decode()
    assert buttons(page) == []
    assert f"/action/{name}/" not in page
    assert (
        '<ul class="messagelist workflow-refusals">\n  <li class="warning">Invitations cannot be issued: '
        "MATRIX_HOMESERVER_URL is not set. Ask an operator to configure the homeserver settings, then run "
        "“manage.py matrix_check”.</li>\n</ul>"
    ) in page
    # Configured, the same page offers the button and says nothing about it.
    settings.MATRIX_HOMESERVER_URL = "https://matrix.example.org"
    settings.MATRIX_ADMIN_TOKEN = "syt_configured"
    page = client.get(change_url(approved)).content.decode()
    assert buttons(page) == [label]
    assert "workflow-refusals" not in page


def test_an_issue_whose_token_would_be_mailed_to_an_address_mail_cannot_carry_is_refused_not_a_500(
    client, approved, inviting_admin, fake_synapse, settings
):
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = True
    with_stored_address(approved, "alex@applicant.example\u200f")
    client.force_login(inviting_admin)
    page = client.get(change_url(approved)).content.decode()
    assert buttons(page) == []
    assert f'<li class="warning">{unmailable_refusal(approved)}</li>' in page
    response = client.post(
        action_url(approved, "issue_invitation"), {"seen_status": "approved", "matrix_username": "alex"}
    )
    assert response.status_code == 200
    assert f'<p class="errornote">{unmailable_refusal(approved)}</p>' in response.content.decode()
    assert fake_synapse.server.requests == []
    approved.refresh_from_db()
    assert approved.status == Status.APPROVED
    assert not OutboundEmail.objects.exists()


def test_sync_now_without_a_homeserver_says_it_cannot_sync(client, inviting_admin, settings):
    settings.MATRIX_HOMESERVER_URL = ""
    client.force_login(inviting_admin)
    page = client.post(f"{LIST_URL}sync/", follow=True).content.decode()
    assert (
        '<li class="error">Cannot sync: MATRIX_HOMESERVER_URL is not set. Ask an operator to configure the '
        "homeserver settings, then run “manage.py matrix_check”.</li>"
    ) in page
    assert "Synced" not in page


def test_revoke_then_reissue_through_the_buttons(client, approved, inviting_admin, fake_synapse):
    workflow.issue_invitation(approved, inviting_admin)
    client.force_login(inviting_admin)
    response = client.post(action_url(approved, "revoke_invitation"), {"reason": "Lost phone"}, follow=True)
    assert "Revoke invitation: done. The application is now approved." in response.content.decode()
    assert buttons(response.content.decode()) == ["Re-issue invitation"]
    response = client.post(
        action_url(approved, "reissue_invitation"), {"matrix_username": "alex"}, follow=True
    )
    assert "Re-issue invitation: done. The application is now invited." in response.content.decode()
    assert Invitation.objects.filter(state=Invitation.State.PENDING).count() == 1


def test_other_roles_see_no_invitation_buttons(client, approved, server_admin, agent):
    for user in (server_admin, agent):
        client.force_login(user)
        assert (
            "invitation" not in " ".join(buttons(client.get(change_url(approved)).content.decode())).lower()
        )


def test_the_token_is_shown_to_inviting_admins_and_masked_for_everyone_else(
    client, approved, inviting_admin, server_admin, fake_synapse
):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    detail = f"{LIST_URL}{invitation.pk}/change/"

    client.force_login(inviting_admin)
    assert invitation.token in client.get(LIST_URL).content.decode()
    assert invitation.token in client.get(detail).content.decode()

    client.force_login(server_admin)
    for page in (client.get(LIST_URL), client.get(detail), client.get(change_url(approved))):
        assert page.status_code == 200
        assert invitation.token not in page.content.decode()
    # Its first two characters tell two tokens apart; no more of it is shown.
    masked = invitation.token[:2] + "•" * (len(invitation.token) - 2)
    assert masked in client.get(LIST_URL).content.decode()


def test_an_inviting_admin_no_longer_lists_invitations_of_an_application_taken_off_their_list(
    client, approved, inviting_admin, server_admin, superadmin, fake_synapse
):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin, "Approved by mistake")
    workflow.reopen(approved, superadmin, "Approved by mistake")  # back to recommended: not theirs
    detail = f"{LIST_URL}{invitation.pk}/change/"

    client.force_login(inviting_admin)
    page = client.get(LIST_URL).content.decode()
    assert approved.reference not in page and 'field-matrix_username">alex<' not in page
    assert "<strong>0</strong>Revoked" in page
    assert client.get(detail).status_code == 302  # "doesn't exist", to the index

    client.force_login(server_admin)
    page = client.get(LIST_URL).content.decode()
    assert approved.reference in page and 'field-matrix_username">alex<' in page
    assert "<strong>1</strong>Revoked" in page
    assert client.get(detail).status_code == 200


def test_agents_cannot_see_the_invitation_list(client, agent):
    client.force_login(agent)
    assert client.get(LIST_URL).status_code == 403


def test_the_list_of_200_invitations_makes_no_homeserver_call(
    client, inviting_admin, fake_synapse, django_assert_max_num_queries
):
    make_invitations(200, inviting_admin, fake_synapse)
    client.force_login(inviting_admin)
    with django_assert_max_num_queries(15):
        response = client.get(f"{LIST_URL}?all=")  # all 200 rows on one page
    assert response.status_code == 200
    assert response.content.decode().count('class="field-matrix_username"') == 200
    assert fake_synapse.server.requests == []


def test_sync_now_follows_the_tokens_and_reports_counts(
    client, approved, inviting_admin, fake_synapse, caplog
):
    caplog.set_level(logging.DEBUG)
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    client.force_login(inviting_admin)
    assert "Sync now" in client.get(LIST_URL).content.decode()
    response = client.post(f"{LIST_URL}sync/", follow=True)
    assert "Synced 1 live invitation(s): 1 used" in response.content.decode()
    approved.refresh_from_db()
    assert approved.status == Status.JOINED
    assert invitation.token not in caplog.text


def test_sync_now_is_for_inviting_admins_only(client, server_admin, fake_synapse):
    client.force_login(server_admin)
    assert "Sync now" not in client.get(LIST_URL).content.decode()
    assert client.post(f"{LIST_URL}sync/").status_code == 403
    assert fake_synapse.server.requests == []


def test_opening_sync_now_by_its_address_syncs_nothing(client, approved, inviting_admin, fake_synapse):
    # A GET can come from a link or an image on another site: only the button's POST syncs.
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_synapse.register(invitation.token, "alex")
    fake_synapse.server.requests.clear()
    client.force_login(inviting_admin)
    assert client.get(f"{LIST_URL}sync/").status_code == 405
    assert fake_synapse.server.requests == []
    approved.refresh_from_db()
    assert approved.status == Status.INVITED


def test_a_mismatch_is_flagged_on_the_list(client, approved, inviting_admin, fake_synapse):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    fake_synapse.register(invitation.token, "not.alex")
    workflow.sync_invitations()
    client.force_login(inviting_admin)
    page = client.get(LIST_URL).content.decode()
    assert "⚠ Account does not match" in page
    assert "no account @alex:localhost exists" in client.get(change_url(approved)).content.decode()


def test_only_inviting_admins_are_offered_bulk_revoke_and_reissue(
    client, server_admin, inviting_admin, fake_synapse
):
    make_invitations(1, inviting_admin, fake_synapse)
    client.force_login(inviting_admin)
    page = client.get(LIST_URL).content.decode()
    assert 'value="revoke_selected"' in page and 'value="reissue_selected"' in page

    client.force_login(server_admin)
    page = client.get(LIST_URL).content.decode()
    assert "revoke_selected" not in page and "reissue_selected" not in page


def test_bulk_reissue_acts_once_per_application_however_many_of_its_invitations_are_ticked(
    client, approved, inviting_admin, fake_synapse
):
    first = workflow.issue_invitation(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin)
    second = workflow.reissue_invitation(approved, inviting_admin)
    workflow.revoke_invitation(approved, inviting_admin)
    client.force_login(inviting_admin)

    response = client.post(
        LIST_URL,
        {"action": "reissue_selected", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )

    messages = [str(message) for message in response.context["messages"]]
    assert messages == ["1 invitation(s) done."]
    assert approved.invitations.filter(state=Invitation.State.PENDING).count() == 1


def revoke_selected(client, invitations: list[Invitation], **confirmation) -> str:
    """Tick the rows, choose "Revoke selected invitations" and Go (and, given fields, confirm)."""
    data = {"action": "revoke_selected", "_selected_action": [invitation.pk for invitation in invitations]}
    if confirmation:
        data |= {"post": "yes", **confirmation}
    return client.post(LIST_URL, data, follow=True).content.decode()


def test_bulk_revoke_asks_for_confirmation_before_touching_a_token(client, inviting_admin, fake_synapse):
    invitations = make_invitations(2, inviting_admin, fake_synapse)
    client.force_login(inviting_admin)

    page = revoke_selected(client, invitations)

    for invitation in invitations:
        assert invitation.application.reference in page
        assert f"<td>{invitation.matrix_username}</td>" in page
        assert f'name="_selected_action" value="{invitation.pk}"' in page
    assert page.count(f"<td>{date_format(invitations[0].expires_at, 'DATETIME_FORMAT')}</td>") == 2
    assert '<textarea name="reason"' in page
    assert 'value="Yes, revoke"' in page
    assert '<input type="hidden" name="post" value="yes">' in page
    assert len(fake_synapse.tokens) == 2
    assert not Invitation.objects.filter(state=Invitation.State.REVOKED).exists()
    assert not AuditEvent.objects.filter(action="invitation.revoked").exists()


def test_confirmed_bulk_revoke_records_the_reason_and_names_what_was_left_alone(
    client, inviting_admin, fake_synapse
):
    live, used, gone = make_invitations(3, inviting_admin, fake_synapse)
    Invitation.objects.filter(pk=used.pk).update(state=Invitation.State.COMPLETED)
    Invitation.objects.filter(pk=gone.pk).update(state=Invitation.State.REVOKED)
    client.force_login(inviting_admin)

    page = revoke_selected(client, [live, used, gone])
    assert live.application.reference in page
    assert f"{used.application.reference} (person1): already used" in page  # named before, too
    page = revoke_selected(client, [live, used, gone], reason="Asked twice by mistake")

    assert "Revoked 1 invitation(s)." in page
    # Named in the order of the list: by application reference.
    left_alone = sorted(
        [
            (used.application.reference, f"{used.application.reference} (person1): already used"),
            (gone.application.reference, f"{gone.application.reference} (person2): already revoked"),
        ]
    )
    assert f"Not revoked: {'; '.join(text for _reference, text in left_alone)}.</li>" in page
    assert live.token not in fake_synapse.tokens and used.token in fake_synapse.tokens
    live.refresh_from_db()
    assert (live.state, live.revoked_by) == (Invitation.State.REVOKED, inviting_admin)
    event = AuditEvent.objects.get(action="invitation.revoked")
    assert event.details["reason"] == "Asked twice by mistake"


def test_bulk_revoke_names_an_invitation_the_workflow_refuses(client, inviting_admin, fake_synapse):
    fine, used_unsynced = make_invitations(2, inviting_admin, fake_synapse)
    fake_synapse.register(used_unsynced.token, "person1")
    client.force_login(inviting_admin)

    page = revoke_selected(client, [fine, used_unsynced], reason="")

    assert "Revoked 1 invitation(s)." in page
    assert (
        f"Not revoked: {used_unsynced.application.reference} (person1): This invitation was already "
        "used to create an account: choose “Sync now” on the invitation list to record it.</li>" in page
    )
    assert used_unsynced.token in fake_synapse.tokens
    assert AuditEvent.objects.get(action="invitation.revoked").details["reason"] == ""


def test_bulk_revoke_with_nothing_live_says_so(client, inviting_admin, fake_synapse):
    (expired,) = make_invitations(1, inviting_admin, fake_synapse)
    Invitation.objects.filter(pk=expired.pk).update(state=Invitation.State.EXPIRED)
    client.force_login(inviting_admin)

    page = revoke_selected(client, [expired])

    assert (
        "Nothing was revoked: none of the selected invitations is live "
        f"({expired.application.reference} (person0): expired)." in page
    )
    assert 'value="Yes, revoke"' not in page
    assert fake_synapse.server.requests == []


def _revoked_by_the_admin(application, admin, homeserver) -> None:
    workflow.revoke_invitation(application, admin, "Sent to the wrong person")


def _withdrawn(application, admin, homeserver) -> None:
    workflow.withdraw(application)


def _gone_from_the_homeserver(application, admin, homeserver) -> None:
    homeserver.tokens.clear()
    workflow.sync_invitations()


@pytest.mark.parametrize(
    ("revoke", "revoked_by"),
    [
        (_revoked_by_the_admin, "inviting_admin"),
        (_withdrawn, "The applicant, by withdrawing"),
        (_gone_from_the_homeserver, "Nobody here: the token was gone from the homeserver"),
    ],
    ids=["admin", "withdrawal", "homeserver"],
)
def test_the_detail_page_says_who_revoked_an_invitation(
    client, approved, inviting_admin, server_admin, fake_synapse, revoke, revoked_by
):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    revoke(approved, inviting_admin, fake_synapse)
    client.force_login(server_admin)  # a withdrawn application is off the inviting admin's list
    page = client.get(f"{LIST_URL}{invitation.pk}/change/").content.decode()
    shown = re.search(r'<label>Revoked by:</label>\s*<div class="readonly">([^<]*)</div>', page)
    assert shown is not None, "no revoked-by field"
    assert shown.group(1) == revoked_by


def test_the_detail_page_shows_the_date_told_to_the_person_like_the_other_dates(
    client, approved, inviting_admin, fake_synapse
):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    client.force_login(inviting_admin)
    page = client.get(f"{LIST_URL}{invitation.pk}/change/").content.decode()
    for value in (invitation.expires_at, invitation.tell_by):
        assert f'<div class="readonly">{date_format(value, "DATETIME_FORMAT")}</div>' in page
    assert str(invitation.tell_by) not in page
