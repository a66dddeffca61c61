"""Two inviting admins clicking "Issue invitation" at once, on PostgreSQL with two real connections."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from tests.conftest import _staff_user
from vetting import roles, workflow
from vetting.models import Application, Invitation

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def issue_at_once(fake_synapse, *clicks: tuple[Application, object]) -> list[str]:
    """Each (application, admin) clicks "Issue invitation" at the same moment; "won" or the refusal, per click."""
    both_loaded = threading.Barrier(len(clicks))
    outcomes: dict[int, str] = {}
    real_handle = fake_synapse.server.handler

    def slow_homeserver(request):
        # Hold each issue open (row locked) so the other click overlaps it.
        time.sleep(0.3)
        return real_handle(request)

    fake_synapse.server.handler = slow_homeserver

    def issue(number: int, application: Application, user) -> None:
        try:
            page_copy = Application.objects.get(pk=application.pk)
            both_loaded.wait(timeout=10)
            workflow.issue_invitation(page_copy, user)
            outcomes[number] = "won"
        except workflow.WorkflowError as error:
            outcomes[number] = str(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=issue, args=(number, *click)) for number, click in enumerate(clicks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return list(outcomes.values())


def test_two_admins_issuing_at_once_create_one_token(
    approved, inviting_admin, django_user_model, fake_synapse
):
    second_admin = _staff_user(django_user_model, "second_inviting_admin", roles.INVITING_ADMIN)
    outcomes = issue_at_once(fake_synapse, (approved, inviting_admin), (approved, second_admin))

    assert outcomes.count("won") == 1
    loser = next(outcome for outcome in outcomes if outcome != "won")
    assert "Someone else got there first" in loser
    assert len(fake_synapse.tokens) == 1
    assert fake_synapse.server.calls("POST", "/_synapse/admin/v1/registration_tokens/new") == 1
    assert Invitation.objects.count() == 1


def test_two_applications_asking_for_one_username_get_one_token_for_it(
    approved, agent, server_admin, inviting_admin, django_user_model, fake_synapse
):
    from tests.vetting.test_workflow import recommended_by

    other = recommended_by(agent)
    other.matrix_username = "alex"
    other.save(update_fields=["matrix_username"])
    workflow.approve(other, server_admin)
    second_admin = _staff_user(django_user_model, "second_inviting_admin", roles.INVITING_ADMIN)
    outcomes = issue_at_once(fake_synapse, (approved, inviting_admin), (other, second_admin))

    assert outcomes.count("won") == 1
    loser = next(outcome for outcome in outcomes if outcome != "won")
    assert "has a live invitation for the Matrix username" in loser
    assert Invitation.objects.count() == 1
    assert len(fake_synapse.tokens) == 1
