"""Two inviting admins clicking "Issue invitation" at once, on PostgreSQL with two real connections."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from tests.conftest import _staff_user
from tests.vetting.test_invitations import ENDING_AN_INVITATION
from vetting import roles, workflow
from vetting.models import Application, Invitation

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


CREATE_TOKEN = "/_synapse/admin/v1/registration_tokens/new"


def another_connection_waits_on_a_lock() -> bool:
    """Whether some other connection to the test database is waiting for a lock (a row, an advisory lock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] > 0


def issue_at_once(fake_synapse, *clicks: tuple[Application, object]) -> tuple[list[str], bool]:
    """Each (application, admin) clicks "Issue invitation" at the same moment; "won" or the refusal,
    per click, and whether the other click waited on the first one's lock.

    The first click to ask the homeserver for a token is held there, in its transaction with
    its locks, until the other click waits on one of those locks, so the two overlap however
    slow the machine. (A click that never waits ends the hold when it asks for a token too.)
    """
    both_loaded = threading.Barrier(len(clicks))
    outcomes: dict[int, str] = {}
    real_handle = fake_synapse.server.handler
    first_create = threading.Lock()
    create_held = threading.Event()
    release = threading.Event()

    def holding_homeserver(request):
        if request.method == "POST" and request.path == CREATE_TOKEN and first_create.acquire(blocking=False):
            create_held.set()
            release.wait(timeout=60)
        return real_handle(request)

    fake_synapse.server.handler = holding_homeserver

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
    other_waited = False
    try:
        if create_held.wait(timeout=30):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and fake_synapse.server.calls("POST", CREATE_TOKEN) < 2:
                if another_connection_waits_on_a_lock():
                    other_waited = True
                    break
                time.sleep(0.01)
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=60)
    return list(outcomes.values()), other_waited


def test_two_admins_issuing_at_once_create_one_token(
    approved, inviting_admin, django_user_model, fake_synapse
):
    second_admin = _staff_user(django_user_model, "second_inviting_admin", roles.INVITING_ADMIN)
    outcomes, other_waited = issue_at_once(fake_synapse, (approved, inviting_admin), (approved, second_admin))

    assert other_waited, "the second click never waited on the first one's row lock"

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
    outcomes, other_waited = issue_at_once(fake_synapse, (approved, inviting_admin), (other, second_admin))

    assert other_waited, "the second click never waited on the first one's lock on the username"

    assert outcomes.count("won") == 1
    loser = next(outcome for outcome in outcomes if outcome != "won")
    assert "has a live invitation for the Matrix username" in loser
    assert Invitation.objects.count() == 1
    assert len(fake_synapse.tokens) == 1


@ENDING_AN_INVITATION
def test_audited_writes_elsewhere_go_on_while_the_homeserver_takes_its_time_to_revoke(
    approved, inviting_admin, agent, fake_synapse, monkeypatch, end_it
):
    """Every audited write waits for the trail's lock: the revoke must not hold it while the homeserver answers."""
    from tests.factories import make_application
    from vetting import matrix

    workflow.issue_invitation(approved, inviting_admin)
    unrelated = make_application(email="someone.else@applicant.example")
    # Held far longer than the test waits, so that only the release ends the hold.
    monkeypatch.setattr(matrix, "READ_TIMEOUT", 120.0)
    real_handle = fake_synapse.server.handler
    revoke_held, release = threading.Event(), threading.Event()

    def holding_revoke(request):
        if request.method == "DELETE":
            revoke_held.set()
            release.wait(timeout=90)
        return real_handle(request)

    fake_synapse.server.handler = holding_revoke
    claimed = threading.Event()

    def end() -> None:
        try:
            end_it(Application.objects.get(pk=approved.pk), inviting_admin)
        finally:
            connection.close()

    def claim_unrelated() -> None:
        try:
            workflow.claim(Application.objects.get(pk=unrelated.pk), agent)
            claimed.set()
        finally:
            connection.close()

    ending, claiming = threading.Thread(target=end), threading.Thread(target=claim_unrelated)
    ending.start()
    try:
        assert revoke_held.wait(timeout=30), "the revoke never reached the homeserver"
        claiming.start()
        assert claimed.wait(timeout=15), "an agent's claim on another application waited for the homeserver"
    finally:
        release.set()
        ending.join(timeout=60)
        if claiming.ident is not None:
            claiming.join(timeout=60)
    assert fake_synapse.tokens == {}
    approved.refresh_from_db()
    assert approved.status in (Application.Status.WITHDRAWN, Application.Status.APPROVED)
