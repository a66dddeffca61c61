"""The queue as each role meets it: what "Open" lists, "Claimed by me", answers to review again, the dashboard."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.factories import make_application
from tests.vetting.test_workflow import recommended_by, verification
from vetting import workflow
from vetting.models import Application

pytestmark = pytest.mark.django_db
Status = Application.Status
CHANGELIST = "/admin/vetting/application/"


def one_of_each_state() -> dict[str, Application]:
    return {status: make_application(full_name=f"Person {status}", status=status) for status in Status.values}


def listed(client, query: str = "") -> set[str]:
    """The references on the list's page (one row each)."""
    page = client.get(f"{CHANGELIST}{query}").content.decode()
    return set(re.findall(r'<th class="field-reference"><a href="[^"]+">([^<]+)</a>', page))


def references(applications: dict[str, Application], *statuses: str) -> set[str]:
    return {applications[status].reference for status in statuses}


VETTING_WORK = (Status.SUBMITTED, Status.IN_REVIEW, Status.INFO_REQUESTED, Status.RECOMMENDED)
INVITING_WORK = (Status.APPROVED, Status.INVITED)


@pytest.mark.parametrize("role", ["agent", "server_admin"])
def test_vetting_staff_open_the_queue_on_the_states_they_work_on(client, request, role):
    applications = one_of_each_state()
    client.force_login(request.getfixturevalue(role))
    assert listed(client) == references(applications, *VETTING_WORK)


def test_inviting_admins_open_the_list_on_what_awaits_or_holds_an_invitation(client, inviting_admin):
    applications = one_of_each_state()
    client.force_login(inviting_admin)
    assert listed(client) == references(applications, *INVITING_WORK)


def test_a_superadmin_opens_the_list_on_all_work_still_to_do(client, superadmin):
    applications = one_of_each_state()
    client.force_login(superadmin)
    assert listed(client) == references(applications, *VETTING_WORK, *INVITING_WORK)


def test_claimed_by_me_leaves_out_decided_and_closed_applications(client, agent, server_admin):
    working = make_application()
    workflow.claim(working, agent)
    approved = recommended_by(agent)
    workflow.approve(approved, server_admin)
    rejected = make_application()
    workflow.claim(rejected, agent)
    workflow.reject(rejected, server_admin, "Could not be verified", "")
    assert approved.claimed_by == agent and rejected.claimed_by == agent  # decisions keep the claimer
    client.force_login(agent)
    assert listed(client, "?claim=mine") == {working.reference}
    assert listed(client, "?claim=mine&status=all") == {working.reference}


def answered_after_review(agent, server_admin) -> Application:
    """Verified, then asked for more, then answered by the applicant: back in the queue, unclaimed."""
    application = recommended_by(agent)
    workflow.request_information(application, server_admin, "Please send your ID.")
    workflow.add_information(application, [], "Here it is.")
    return application


def answered_column(client, application: Application, query: str = "?status=all") -> bool:
    page = client.get(f"{CHANGELIST}{query}").content.decode()
    row = re.search(rf"<tr>(?:(?!</tr>).)*>{application.reference}</a>(?:(?!</tr>).)*</tr>", page, re.S)
    assert row, f"{application.reference} is not listed"
    cell = re.search(r'<td class="field-answered">(.*?)</td>', row.group(0), re.S).group(1)
    return 'alt="True"' in cell


def test_an_answer_since_the_last_review_is_marked_until_a_verification_is_recorded_again(
    client, agent, server_admin
):
    answered = answered_after_review(agent, server_admin)
    untouched = make_application()
    client.force_login(agent)
    assert answered.status == Status.SUBMITTED
    assert answered_column(client, answered) is True
    assert answered_column(client, untouched) is False
    assert listed(client, "?answer=unreviewed") == {answered.reference}

    workflow.claim(answered, agent)  # claiming is not reviewing: still to look at
    assert listed(client, "?answer=unreviewed") == {answered.reference}

    workflow.record_verification(answered, agent, **verification())
    assert answered_column(client, answered) is False
    assert listed(client, "?answer=unreviewed&status=all") == set()


def test_an_answer_to_a_request_made_before_any_verification_is_marked(client, agent, server_admin):
    application = make_application()
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Who referred you?")
    workflow.add_information(application, [], "Sam did.")
    client.force_login(agent)
    assert listed(client, "?answer=unreviewed") == {application.reference}


def test_decided_applications_carry_no_answer_marker(client, agent, server_admin):
    application = answered_after_review(agent, server_admin)
    workflow.reject(application, server_admin, "Not the person", "")
    client.force_login(server_admin)
    assert listed(client, "?answer=unreviewed&status=all") == set()


def test_a_reopened_decision_shows_the_answer_nobody_reviewed_to_the_next_decider(
    client, agent, server_admin, superadmin
):
    # Rejected after the answer, without a new verification: the reopen brings it back
    # "recommended" on the old verification, and the applicant has said something since.
    application = answered_after_review(agent, server_admin)
    workflow.reject(application, server_admin, "Not the person", "")
    workflow.reopen(application, superadmin, "Rejected before anyone read the applicant's answer.")
    assert application.status == Status.RECOMMENDED

    client.force_login(server_admin)
    assert answered_column(client, application) is True
    assert listed(client, "?answer=unreviewed") == {application.reference}


def test_a_new_question_after_the_answer_leaves_the_applicant_to_answer_not_staff(
    client, agent, server_admin
):
    application = answered_after_review(agent, server_admin)
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "And a second document, please.")
    client.force_login(agent)
    assert listed(client, "?answer=unreviewed&status=all") == set()


def queries_for(client, query: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"{CHANGELIST}{query}")
    assert response.status_code == 200
    return len(queries)


@pytest.mark.parametrize("query", ["", "?claim=mine", "?answer=unreviewed"])
def test_the_queue_costs_the_same_queries_with_2_and_12_answered_applications(
    client, agent, server_admin, query
):
    def answered(count: int) -> None:
        for _number in range(count):
            application = answered_after_review(agent, server_admin)
            workflow.claim(application, agent)

    client.force_login(agent)
    answered(2)
    at_two = queries_for(client, query)
    answered(10)
    assert queries_for(client, query) == at_two


# The dashboard on the admin's front page -------------------------------------------


def dashboard(client) -> str:
    page = client.get("/admin/").content.decode()
    return page.split('id="vetting-dashboard"')[1].split("</svg>")[0] if "vetting-dashboard" in page else ""


def counted_states(page: str) -> dict[str, int]:
    return {
        status: int(count)
        for status, count in re.findall(
            r'href="/admin/vetting/application/\?status=(\w+)"><strong>(\d+)', page
        )
    }


def test_inviting_admins_are_shown_counts_of_their_own_work_only(client, inviting_admin):
    one_of_each_state()
    make_application(status=Status.APPROVED)
    client.force_login(inviting_admin)
    page = dashboard(client)
    assert counted_states(page) == {"approved": 2, "invited": 1, "joined": 1}
    # Nothing about the queue they never see: its oldest application, decision times, arrivals.
    assert "Oldest waiting" not in page and "Nobody is waiting" not in page
    assert "Median time" not in page
    assert '<rect class="bar"' not in page


def test_staff_without_a_role_are_shown_no_dashboard(client, outsider):
    make_application(status=Status.APPROVED)
    client.force_login(outsider)
    assert dashboard(client) == ""


def test_the_oldest_waiting_is_the_oldest_in_the_queue_not_the_oldest_decided(client, agent):
    now = timezone.now()
    make_application(status=Status.REJECTED, email_confirmed_at=now - timedelta(days=30))
    waiting = make_application(email_confirmed_at=now - timedelta(days=3))
    client.force_login(agent)
    assert f">{waiting.reference}</a>, waiting 3 day(s)." in dashboard(client)


def test_the_chart_counts_confirmed_applications_per_week_up_to_this_one(client, agent):
    make_application()
    make_application()
    last_week = make_application()
    Application.objects.filter(pk=last_week.pk).update(created_at=timezone.now() - timedelta(weeks=1))
    make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    client.force_login(agent)
    page = dashboard(client)
    bars = re.findall(
        r'<rect class="bar" x="\d+" y="(\d+)" width="\d+" height="(\d+)"><title>([\d-]+): (\d+)<', page
    )
    assert [int(total) for *_, total in bars] == [0] * 10 + [1, 2]
    now = timezone.now()
    assert bars[-1][2] == f"{now - timedelta(days=now.weekday()):%Y-%m-%d}"
    # The busiest week fills the plot; the others stand on the same baseline, to scale.
    assert [(int(y), int(height)) for y, height, *_ in bars[-3:]] == [(140, 0), (80, 60), (20, 120)]
    assert "last 12 weeks: 3 in all" in page


def test_the_median_decision_time_is_in_hours_over_the_last_twelve_weeks(client, agent):
    now = timezone.now()
    queued = now - timedelta(days=10)
    for hours in (1, 2, 9):
        make_application(
            status=Status.APPROVED, email_confirmed_at=queued, decided_at=queued + timedelta(hours=hours)
        )
    # Decided before the twelve weeks: not counted.
    make_application(
        status=Status.REJECTED,
        email_confirmed_at=now - timedelta(days=200),
        decided_at=now - timedelta(days=100),
    )
    client.force_login(agent)
    assert "Median time from entering the queue to decision (12 weeks): 2.0 hours." in dashboard(client)


def test_vetting_staff_are_shown_the_count_of_every_state(client, agent):
    one_of_each_state()
    client.force_login(agent)
    page = dashboard(client)
    assert counted_states(page) == dict.fromkeys(Status.values, 1)
    assert "Oldest waiting in the queue" in page
