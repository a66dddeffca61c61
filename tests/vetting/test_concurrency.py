"""Two staff deciding at once, on PostgreSQL with two real connections."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest
from django.db import connection

from tests.factories import make_application
from tests.vetting.test_invitation_concurrency import another_connection_waits_on_a_lock
from tests.vetting.test_workflow import verification
from vetting import workflow
from vetting.models import Application, AuditEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_two_admins_deciding_at_once_exactly_one_wins(agent, server_admin, second_server_admin):
    application = make_application()
    workflow.claim(application, agent)
    workflow.record_verification(application, agent, **verification())
    both_loaded = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    real_queue_email = workflow.queue_email

    def slow_queue_email(*args, **kwargs):
        # Hold the decision open so the other admin's attempt overlaps it.
        time.sleep(0.5)
        return real_queue_email(*args, **kwargs)

    def decide(name: str, user, transition) -> None:
        try:
            page_copy = Application.objects.get(pk=application.pk)  # what each admin's page showed
            both_loaded.wait(timeout=10)
            transition(page_copy, user)
            outcomes[name] = "won"
        except workflow.AlreadyDecided as error:
            outcomes[name] = str(error)
        finally:
            connection.close()

    with mock.patch.object(workflow, "queue_email", slow_queue_email):
        threads = [
            threading.Thread(target=decide, args=("approve", server_admin, workflow.approve)),
            threading.Thread(
                target=decide,
                args=("reject", second_server_admin, lambda app, user: workflow.reject(app, user, "No")),
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert sorted(outcomes) == ["approve", "reject"]
    winners = [name for name, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1
    loser = "reject" if winners == ["approve"] else "approve"
    assert "Someone else got there first" in outcomes[loser]
    application.refresh_from_db()
    assert application.status == ("approved" if winners == ["approve"] else "rejected")
    decisions = AuditEvent.objects.filter(action__in=["application.approved", "application.rejected"])
    assert decisions.count() == 1


@pytest.mark.parametrize(
    ("first", "second", "refusal"),
    [
        (("sam", "sam@staff.example"), ("Sam", "other@staff.example"), "is taken"),
        (("sam", "sam@staff.example"), ("robin", "SAM@staff.example"), "with this e-mail address exists"),
    ],
    ids=["username-in-another-case", "same-address"],
)
def test_two_staff_accounts_created_at_once_with_the_same_name_or_address_one_is_refused(
    superadmin, first, second, refusal
):
    from django.apps import apps
    from django.contrib.auth import get_user_model

    from vetting import roles

    roles.sync_role_groups(apps)  # transactional tests start without the migration's groups
    both_ready = threading.Barrier(2)
    outcomes: dict[str, str] = {}
    waited = threading.Event()
    real_queue_mail = workflow.queue_set_password_mail

    def held_mail(*args, **kwargs):
        # Hold the first account's transaction open until the other one waits on its lock,
        # however slow the machine (the second to get here finds nobody waiting: no hold).
        deadline = time.monotonic() + 10
        while not waited.is_set() and time.monotonic() < deadline:
            if another_connection_waits_on_a_lock():
                waited.set()
            else:
                time.sleep(0.01)
        return real_queue_mail(*args, **kwargs)

    def create(username: str, email: str) -> None:
        try:
            both_ready.wait(timeout=10)
            workflow.create_staff_account(username, email, roles.VETTING_AGENT, created_by=superadmin)
            outcomes[username] = "created"
        except workflow.WorkflowError as error:
            outcomes[username] = str(error)
        finally:
            connection.close()

    with mock.patch.object(workflow, "queue_set_password_mail", held_mail):
        threads = [threading.Thread(target=create, args=details) for details in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert waited.is_set(), "the two creations never overlapped"
    created = [username for username, outcome in outcomes.items() if outcome == "created"]
    assert len(created) == 1
    [loser] = {first[0], second[0]} - set(created)
    assert refusal in outcomes[loser]
    assert get_user_model().objects.filter(is_superuser=False).count() == 1
