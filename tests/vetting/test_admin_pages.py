"""What staff read on the admin's own pages: forms and their errors, questions, the queue, the dashboard."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import localtime

from tests.factories import PDF_BYTES, TEXT_BYTES, make_application, upload
from tests.vetting.test_admin_workflow import change_url
from tests.vetting.test_workflow import recommended_by
from vetting import workflow
from vetting.admin import ACTION_QUESTIONS, ONE_CLICK_ACTIONS
from vetting.models import Application

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/vetting/application/add/"
ERROR_SUMMARY = '<p class="errornote" id="error-summary" tabindex="-1">'


def action_url(application: Application, name: str) -> str:
    return f"/admin/vetting/application/{application.pk}/action/{name}/"


def form_row(page: str, field: str) -> str:
    """One field's row of the admin's form layout: its errors, label, input and help."""
    row = re.search(
        rf'<div class="form-row[^"]*\bfield-{field}\b.*?(?=<div class="form-row|</fieldset>)', page, re.S
    )
    assert row, f"no form row for {field}"
    return row.group(0)


def inline_scripts(page: str) -> list[str]:
    return re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page)


# Enter an application -----------------------------------------------------------


def test_staff_entry_with_an_error_names_the_files_to_choose_again(client, agent):
    client.force_login(agent)
    response = client.post(
        ADD_URL,
        {
            "full_name": "Frank Staffentered",
            "email": "frank@applicant.example",
            "referral": "Met at the meetup",
            "statement": "Vetted in person",
            # No consent ticked, a good file and a text file calling itself a PDF.
            "evidence_1": upload("passport.pdf", PDF_BYTES),
            "evidence_2": upload("fake.pdf", TEXT_BYTES),
        },
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert (
        '<p class="errornote" id="choose-files-again">Choose the files again before entering the application: '
        "they are not kept when the form has a problem. You had chosen: passport.pdf, fake.pdf.</p>"
    ) in page
    assert ERROR_SUMMARY in page
    assert "The applicant must agree to the privacy notice first." in form_row(page, "consent")
    assert "does not contain what its name says" in form_row(page, "evidence_2")
    assert not Application.objects.exists()


def test_staff_entry_asks_about_the_applicant_not_as_the_applicant(client, agent):
    client.force_login(agent)
    page = client.get(ADD_URL).content.decode()
    assert "Why do they want to join?" in page
    assert "Who referred them, or how do they know the community?" in page
    assert "Matrix username they would like (optional)" in page
    assert "Why do you want to join?" not in page

    refused = client.post(ADD_URL, {"consent": "on"}).content.decode()
    assert "Enter the applicant&#x27;s full name." in form_row(refused, "full_name")
    assert "Say why they want to join." in form_row(refused, "statement")
    assert "Tell us" not in refused
    assert 'id="choose-files-again"' not in refused  # no files were chosen


def test_staff_entry_has_no_honeypot_field_for_staff_to_fill_in(client, agent):
    client.force_login(agent)
    page = client.get(ADD_URL).content.decode()
    assert 'name="website"' not in page
    assert "Leave this field empty" not in page


# Record verification ---------------------------------------------------------------


def test_each_verification_error_is_shown_with_its_own_field_under_a_focused_summary(client, agent):
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(agent)

    page = client.post(
        action_url(application, "record_verification"), {"seen_status": "in_review"}
    ).content.decode()

    assert "errorlist" not in form_row(page, "identity_verified")
    for field in ("verification_method", "verified_on", "verification_location", "score", "recommendation"):
        row = form_row(page, field)
        assert row.startswith(f'<div class="form-row errors field-{field}">')
        assert f'<ul class="errorlist" id="id_{field}_error"><li>This field is required.</li></ul>' in row
        assert re.search(rf'aria-describedby="[^"]*\bid_{field}_error\b', row)
    assert f"{ERROR_SUMMARY}Please correct the errors below.</p>" in page
    # The summary takes the focus from a static file: the admin's CSP allows no inline script.
    assert '<script src="/static/vetting/error-summary.js" defer></script>' in page
    assert inline_scripts(page) == []


def test_a_page_without_errors_moves_no_focus(client, agent):
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(agent)
    page = client.get(action_url(application, "record_verification")).content.decode()
    assert 'id="error-summary"' not in page
    assert "error-summary.js" not in page


def test_the_verification_date_is_labelled_without_a_format_the_date_picker_does_not_show(client, agent):
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(agent)
    page = client.get(action_url(application, "record_verification")).content.decode()
    assert '<label class="required" for="id_verified_on">Date:</label>' in page
    assert "YYYY" not in page


# Wording ------------------------------------------------------------------------------


def test_every_confirmation_page_asks_its_own_question(client, agent, server_admin):
    assert set(ACTION_QUESTIONS) == set(workflow.STAFF_TRANSITIONS) - ONE_CLICK_ACTIONS
    application = make_application(full_name="Alex Applicant")
    workflow.claim(application, agent)
    client.force_login(agent)
    page = client.get(action_url(application, "record_verification")).content.decode()
    assert f"<p>Record the verification of application {application.reference} (Alex Applicant)?</p>" in page
    assert '<input type="submit" class="default" value="Record verification">' in page

    decided = recommended_by(agent)
    client.force_login(server_admin)
    page = client.get(action_url(decided, "request_information")).content.decode()
    assert f"<p>Ask {decided.full_name} (application {decided.reference}) for more information?</p>" in page
    assert '<input type="submit" class="default" value="Request information">' in page


def test_every_status_has_a_phrase_for_staff_sentences():
    assert set(Application.STATUS_PHRASES) == set(Application.Status)


def test_a_refusal_names_the_status_as_a_sentence_not_as_a_list_heading(server_admin):
    waiting = make_application(status=Application.Status.INFO_REQUESTED)
    assert workflow.guard_reason("approve", waiting, server_admin) == (
        "“Approve” is not possible while the application is waiting for more information."
    )


# The queue -----------------------------------------------------------------------------


def test_the_queue_shows_applied_at_beside_the_status_and_leaves_out_what_it_can(client, agent):
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(agent)
    page = client.get("/admin/vetting/application/").content.decode()
    columns = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', page)
    assert columns == ["reference", "full_name", "status", "applied_at", "claimed_by", "answered"]
    assert f'<td class="field-applied_at">{localtime(application.created_at):%Y-%m-%d %H:%M}</td>' in page


def test_the_queue_costs_the_benchmarks_six_queries(client, superadmin):
    # bench/results.md: 6 queries for the changelist, at every size.
    for _ in range(3):
        make_application()
    client.force_login(superadmin)
    client.get("/admin/vetting/application/")
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/admin/vetting/application/").status_code == 200
    assert len(queries) == 6


# The dashboard ---------------------------------------------------------------------------


def recent_actions(page: str) -> str:
    return page.split('id="recent-actions-module"')[1].split("</div>")[0]


def test_the_dashboard_lists_the_persons_own_latest_actions(client, agent, second_agent):
    mine = make_application()
    theirs = make_application()
    workflow.claim(mine, agent)
    workflow.claim(theirs, second_agent)
    client.force_login(agent)

    actions = recent_actions(client.get("/admin/").content.decode())

    assert "None available" not in actions
    assert f'application.claimed · <a href="{change_url(mine)}">application {mine.reference}</a>' in actions
    assert theirs.reference not in actions


def test_the_dashboards_recent_actions_cost_one_query_and_show_ten(client, agent):
    applications = [make_application() for _ in range(6)]
    client.force_login(agent)
    workflow.claim(applications[0], agent)
    client.get("/admin/")
    with CaptureQueriesContext(connection) as queries:
        client.get("/admin/")
    with_one = len(queries)
    for application in applications[1:]:
        workflow.claim(application, agent)
        workflow.release(application, agent)

    with CaptureQueriesContext(connection) as queries:
        page = client.get("/admin/").content.decode()

    assert len(queries) == with_one
    assert recent_actions(page).count("<li>") == 10
    # The latest ten: the first claim is the one left out.
    assert applications[0].reference not in recent_actions(page)


@pytest.mark.parametrize(("role", "linked"), [("agent", False), ("server_admin", True)])
def test_only_staff_who_may_read_the_audit_trail_are_linked_to_their_actions_in_it(
    client, request, role, linked
):
    user = request.getfixturevalue(role)
    workflow.claim(make_application(), user)
    client.force_login(user)
    actions = recent_actions(client.get("/admin/").content.decode())
    assert ("All my actions in the audit trail" in actions) is linked


def test_a_person_who_has_done_nothing_yet_is_told_so(client, agent):
    client.force_login(agent)
    actions = recent_actions(client.get("/admin/").content.decode())
    assert "Nothing yet: what you do on applications and accounts is listed here." in actions
