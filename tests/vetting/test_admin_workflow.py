"""The admin as the staff workplace: buttons, confirmation pages, notes, staff entry, dashboard."""

from __future__ import annotations

import re

import pytest
import time_machine
from django.utils import timezone
from django.utils.html import escape

from evidence.models import Evidence
from notifications.models import OutboundEmail
from tests.factories import PDF_BYTES, make_application, upload
from tests.notifications.test_mail_privacy import mail_parts
from tests.vetting.test_workflow import recommended_by
from vetting import links, workflow
from vetting.admin import EARLIER_APPLICATIONS_SHOWN
from vetting.models import Application, AuditEvent, StaffNote

pytestmark = pytest.mark.django_db
Status = Application.Status


def change_url(application: Application) -> str:
    return f"/admin/vetting/application/{application.pk}/change/"


def buttons(page: str) -> list[str]:
    return re.findall(r'class="workflow-button[^"]*" href="[^"]+">([^<]+)</a>', page)


def submit_action(client, application: Application, name: str, fields: dict):
    """Open the action's confirmation page and send its form filled in, as staff do in the browser."""
    url = f"/admin/vetting/application/{application.pk}/action/{name}/"
    form = client.get(url).content.decode()
    for field in fields:
        assert f'name="{field}"' in form, f"the {name} form has no {field} field"
    seen_status = re.search(r'name="seen_status" value="([^"]*)"', form).group(1)
    return client.post(url, {"seen_status": seen_status, **fields}, follow=True)


def test_agent_sees_the_claim_button_and_claims_through_a_confirmation(client, agent):
    application = make_application()
    client.force_login(agent)
    assert buttons(client.get(change_url(application)).content.decode()) == ["Claim"]

    confirm = client.get(f"/admin/vetting/application/{application.pk}/action/claim/")
    assert confirm.status_code == 200
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED  # the confirmation page changes nothing

    response = client.post(f"/admin/vetting/application/{application.pk}/action/claim/", follow=True)
    assert "Claim: done. The application is now in review." in response.content.decode()
    application.refresh_from_db()
    assert application.claimed_by == agent
    assert buttons(response.content.decode()) == ["Release", "Record verification"]


def test_record_verification_form_requires_its_fields(client, agent):
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(agent)
    url = f"/admin/vetting/application/{application.pk}/action/record_verification/"
    response = client.post(url, {"verification_method": "video"})
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.IN_REVIEW

    client.post(
        url,
        {
            "identity_verified": "on",
            "verification_method": "in-person",
            "verified_on": "2026-11-20",
            "verification_location": "Lisbon",
            "score": "5",
            "recommendation": "approve",
            "verification_notes": "Checked passport.",
        },
    )
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED
    assert (application.score, application.verification_location) == (5, "Lisbon")


def test_reject_without_a_reason_is_refused_on_the_form(client, agent, server_admin):
    application = recommended_by(agent)
    client.force_login(server_admin)
    assert buttons(client.get(change_url(application)).content.decode()) == [
        "Request information",
        "Approve",
        "Reject",
    ]
    response = client.post(f"/admin/vetting/application/{application.pk}/action/reject/", {"reason": ""})
    assert "This field is required." in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED


def test_rejecting_through_the_form_mails_the_applicant_the_shared_message_and_never_the_reason(
    client, agent, server_admin
):
    application = recommended_by(agent)
    client.force_login(server_admin)
    reason = "Their referee says they were banned from another space for harassment."
    message = "We could not verify who referred you.\nYou are welcome to apply again next year."

    response = submit_action(
        client, application, "reject", {"reason": reason, "message_to_applicant": message}
    )

    assert response.redirect_chain[-1][0] == change_url(application)
    page = response.content.decode()
    assert "Reject: done. The application is now rejected." in page
    assert reason in page  # staff read the reason on the application's page
    application.refresh_from_db()
    assert application.status == Status.REJECTED
    assert (application.decision_reason, application.message_to_applicant) == (reason, message)
    assert application.decided_by == server_admin
    [mail] = OutboundEmail.objects.all()
    assert (mail.to, mail.template) == (application.email, "application-rejected")
    for line in message.splitlines():
        assert line in mail.body_text
        assert escape(line) in mail.body_html
    for part in mail_parts(mail):
        assert "harassment" not in part and "banned" not in part


def test_a_superadmin_reopens_through_the_form_and_the_typed_reason_is_in_the_audit_trail(
    client, agent, server_admin, superadmin
):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Unclear referral", "Sorry.")
    client.force_login(superadmin)
    reason = "The referee called back and vouched for them on 2026-11-21."

    response = submit_action(client, application, "reopen", {"reason": reason})

    assert response.redirect_chain[-1][0] == change_url(application)
    assert "Reopen: done. The application is now recommended." in response.content.decode()
    application.refresh_from_db()
    assert (application.status, application.decided_by) == (Status.RECOMMENDED, None)
    event = AuditEvent.objects.get(action="application.reopened")
    assert (event.actor, event.details["reason"]) == (superadmin, reason)
    # Staff read it in the audit trail; the applicant never does.
    assert reason in client.get(f"/admin/vetting/auditevent/{event.pk}/change/").content.decode()
    for mail in OutboundEmail.objects.all():
        assert not [part for part in mail_parts(mail) if "referee" in part]


def test_requesting_information_through_the_form_stores_and_mails_exactly_the_typed_question(
    client, agent, server_admin
):
    application = recommended_by(agent)
    client.force_login(server_admin)
    question = "Please send a photo of your ID card & a recent utility bill.\nA short video call works too."

    response = submit_action(client, application, "request_information", {"question": question})

    assert response.redirect_chain[-1][0] == change_url(application)
    assert "Request information: done. The application is now more information requested." in (
        response.content.decode()
    )
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED
    assert application.information_request == question
    assert AuditEvent.objects.get(action="application.information_requested").details == {
        "question": question
    }
    [mail] = OutboundEmail.objects.all()
    assert (mail.to, mail.template) == (application.email, "information-requested")
    assert question in mail.body_text
    for line in question.splitlines():
        assert escape(line) in mail.body_html
    # The applicant's status page asks the same question.
    status_page = client.get(f"/status/{links.status_token(application)}/").content.decode()
    for line in question.splitlines():
        assert escape(line) in status_page


def test_four_eyes_refusal_is_shown_not_a_500(client, server_admin):
    application = make_application()
    workflow.claim(application, server_admin)
    workflow.record_verification(
        application,
        server_admin,
        identity_verified=True,
        method="video",
        verified_on=application.created_at.date(),
        location="Jitsi",
        score=3,
        recommendation="approve",
    )
    client.force_login(server_admin)
    assert "Approve" not in buttons(client.get(change_url(application)).content.decode())
    page = client.get(f"/admin/vetting/application/{application.pk}/action/approve/").content.decode()
    assert "four-eyes" in page
    response = client.post(f"/admin/vetting/application/{application.pk}/action/approve/", follow=True)
    assert "four-eyes" in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED


def test_an_unknown_action_is_refused(client, agent):
    application = make_application()
    client.force_login(agent)
    assert (
        client.post(f"/admin/vetting/application/{application.pk}/action/delete_everything/").status_code
        == 403
    )


def test_staff_without_a_role_cannot_open_actions(client, outsider):
    application = make_application()
    client.force_login(outsider)
    assert client.post(f"/admin/vetting/application/{application.pk}/action/claim/").status_code == 403
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED


def test_notes_thread_append_only(client, agent, inviting_admin):
    application = make_application()
    client.force_login(agent)
    client.post(f"/admin/vetting/application/{application.pk}/note/", {"text": "Met them at the meetup."})
    page = client.get(change_url(application)).content.decode()
    assert "Met them at the meetup." in page
    assert "agent ·" in page
    assert AuditEvent.objects.filter(action="note.added").count() == 1
    note = StaffNote.objects.get()
    assert client.post(f"/admin/vetting/staffnote/{note.pk}/delete/", {"post": "yes"}).status_code == 403

    client.force_login(inviting_admin)
    client.post(f"/admin/vetting/application/{application.pk}/note/", {"text": "sneaky"})
    assert StaffNote.objects.count() == 1


def test_earlier_applications_from_the_same_person_are_listed_with_outcomes(client, agent):
    earlier = make_application(status=Status.REJECTED, email="Alex@Applicant.example")
    by_username = make_application(
        status=Status.WITHDRAWN, email="other@applicant.example", matrix_username="alex"
    )
    make_application(email="stranger@applicant.example")
    current = make_application(email="alex@applicant.example", matrix_username="alex")
    client.force_login(agent)
    page = client.get(change_url(current)).content.decode()
    assert f"{earlier.reference}</a> · " in page and "Rejected" in page
    assert f"{by_username.reference}</a> · " in page and "Withdrawn" in page
    assert "stranger" not in page


def test_bulk_claim_and_release(client, agent):
    first, second = make_application(), make_application()
    rejected = make_application(status=Status.REJECTED)
    client.force_login(agent)
    client.post(
        "/admin/vetting/application/?status=all",
        {"action": "claim_selected", "_selected_action": [first.pk, second.pk, rejected.pk]},
    )
    assert list(Application.objects.filter(claimed_by=agent).order_by("pk")) == [first, second]
    client.post("/admin/vetting/application/", {"action": "release_selected", "_selected_action": [first.pk]})
    first.refresh_from_db()
    assert first.status == Status.SUBMITTED


def test_changelist_filters_claimed_by_me_and_unclaimed(client, agent, second_agent):
    mine, theirs, free = make_application(), make_application(), make_application()
    workflow.claim(mine, agent)
    workflow.claim(theirs, second_agent)
    client.force_login(agent)
    page = client.get("/admin/vetting/application/?claim=mine").content.decode()
    assert mine.reference in page and theirs.reference not in page and free.reference not in page
    page = client.get("/admin/vetting/application/?claim=unclaimed").content.decode()
    assert free.reference in page and mine.reference not in page


def test_agent_enters_an_application_for_someone_met_in_person(client, agent):
    client.force_login(agent)
    assert client.get("/admin/vetting/application/add/").status_code == 200
    response = client.post(
        "/admin/vetting/application/add/",
        {
            "full_name": "Met In Person",
            "email": "met@applicant.example",
            "referral": "Met at the Berlin meetup",
            "statement": "Organiser",
            "consent": "on",
            "evidence_1": upload("id.pdf", PDF_BYTES),
        },
    )
    assert response.status_code == 302
    application = Application.objects.get()
    assert (application.source, application.status) == ("staff", "submitted")
    assert application.email_confirmed_at is None
    assert Evidence.objects.get().uploaded_by == agent
    assert AuditEvent.objects.get(action="application.entered_by_staff").actor == agent


def test_staff_entry_is_refused_for_roles_without_it(client, inviting_admin):
    client.force_login(inviting_admin)
    assert client.get("/admin/vetting/application/add/").status_code == 403


def test_dashboard_shows_counts_oldest_waiting_and_a_chart_without_script(client, agent, server_admin):
    make_application()
    oldest = Application.objects.get()
    make_application()
    decided = recommended_by(agent)
    workflow.approve(decided, server_admin)
    client.force_login(server_admin)
    page = client.get("/admin/").content.decode()
    assert "Vetting at a glance" in page
    assert (
        '<a class="dashboard-stat" href="/admin/vetting/application/?status=submitted"><strong>2</strong>'
        in page
    )
    assert oldest.reference in page
    assert "Median time from confirmation to decision" in page
    assert page.count('<rect class="bar"') == 12
    assert "<script" not in page.split('id="vetting-dashboard"')[1].split("</svg>")[0]


def test_an_address_with_many_earlier_applications_shows_the_most_recent_and_links_to_all(client, agent):
    earlier = [
        make_application(email="flood@applicant.example") for _ in range(EARLIER_APPLICATIONS_SHOWN + 2)
    ]
    current = make_application(email="Flood@Applicant.example")
    client.force_login(agent)

    page = client.get(change_url(current)).content.decode()

    # Newest first; applications sent in the same instant, by their order of arrival.
    newest_first = sorted(
        earlier, key=lambda application: (application.created_at, application.pk), reverse=True
    )
    shown = [application for application in earlier if f"{application.reference}</a> · " in page]
    assert shown == sorted(newest_first[:EARLIER_APPLICATIONS_SHOWN], key=earlier.index)
    link = re.search(r'<a href="([^"]+)">All applications from this e-mail address</a>', page)
    listed = client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert all(application.reference in listed for application in [*earlier, current])


def test_earlier_applications_sent_in_the_same_instant_are_listed_newest_arrival_first(client, agent):
    with time_machine.travel(timezone.now(), tick=False):
        earlier = [
            make_application(email="burst@applicant.example") for _ in range(EARLIER_APPLICATIONS_SHOWN + 2)
        ]
    current = make_application(email="burst@applicant.example")
    client.force_login(agent)

    page = client.get(change_url(current)).content.decode()

    shown = re.findall(r'/change/">([0-9A-Z]+)</a> · ', page)
    assert shown == [application.reference for application in reversed(earlier)][:EARLIER_APPLICATIONS_SHOWN]


def test_the_link_to_all_applications_from_an_address_lists_the_decided_ones_too(client, agent):
    rejected = [
        make_application(email="again@applicant.example", status=Status.REJECTED)
        for _ in range(EARLIER_APPLICATIONS_SHOWN + 1)
    ]
    current = make_application(email="again@applicant.example")
    client.force_login(agent)

    page = client.get(change_url(current)).content.decode()

    link = re.search(r'<a href="([^"]+)">All applications from this e-mail address</a>', page)
    listed = client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert all(application.reference in listed for application in rejected)


def test_erased_applications_are_not_taken_for_the_same_person(client, agent):
    erased = [
        make_application(
            email="", full_name="", matrix_username="", status=Status.WITHDRAWN, erased_at=timezone.now()
        )
        for _ in range(EARLIER_APPLICATIONS_SHOWN + 1)
    ]
    client.force_login(agent)

    page = client.get(change_url(erased[0])).content.decode()

    assert not [other for other in erased[1:] if f"{other.reference}</a> · " in page]
    assert "All applications from this e-mail address" not in page
