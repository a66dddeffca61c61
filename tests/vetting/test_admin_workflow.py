"""The admin as the staff workplace: buttons, confirmation pages, notes, staff entry, dashboard."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from django.utils.html import escape

from evidence.models import Evidence
from notifications.models import OutboundEmail
from tests.factories import PDF_BYTES, make_application, upload
from tests.notifications.test_mail_privacy import mail_parts
from tests.vetting.test_links_staff_entered import entered_by
from tests.vetting.test_workflow import actions, recommended_by, verification, with_stored_address
from vetting import links, workflow
from vetting.admin import EARLIER_APPLICATIONS_SHOWN
from vetting.models import Application, AuditEvent, InformationReply, StaffNote

pytestmark = pytest.mark.django_db
Status = Application.Status


def change_url(application: Application) -> str:
    return f"/admin/vetting/application/{application.pk}/change/"


def buttons(page: str) -> list[str]:
    """The workflow buttons' labels in page order: links to a confirmation page, or one-click forms."""
    return re.findall(r'class="workflow-button[^"]*"(?: href="[^"]+")?>([^<]+)</(?:a|button)>', page)


def claimed_and_signed_in(client, agent) -> Application:
    """A new application claimed by `agent`, who is signed in."""
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(agent)
    return application


def submit_action(client, application: Application, name: str, fields: dict):
    """Open the action's confirmation page and send its form filled in, as staff do in the browser."""
    url = f"/admin/vetting/application/{application.pk}/action/{name}/"
    form = client.get(url).content.decode()
    for field in fields:
        assert f'name="{field}"' in form, f"the {name} form has no {field} field"
    return client.post(url, {**seen_fields(form), **fields}, follow=True)


def seen_fields(form: str) -> dict:
    """The hidden fields that tell the workflow what the page showed (seen_status, seen_verification)."""
    return dict(re.findall(r'<input type="hidden" name="(seen_[a-z_]+)" value="([^"]*)"', form))


def one_click_form(page: str, name: str) -> dict:
    """The action and fields of the application page's form for a one-click action (Claim, Release)."""
    form = re.search(
        rf'<form method="post" action="([^"]+/action/{name}/)" class="workflow-form">(.*?)</form>', page
    )
    assert form, f"no one-click {name} form on the page"
    return {
        "url": form.group(1),
        "fields": dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2))),
    }


def test_agent_claims_and_releases_with_one_click_on_the_application_page(client, agent):
    application = make_application()
    client.force_login(agent)
    page = client.get(change_url(application)).content.decode()
    assert buttons(page) == ["Claim"]

    claim = one_click_form(page, "claim")
    assert claim["fields"]["seen_status"] == "submitted"
    response = client.post(claim["url"], claim["fields"], follow=True)
    page = response.content.decode()
    assert "Claim: done. The application is now in review." in page
    application.refresh_from_db()
    assert application.claimed_by == agent
    assert buttons(page) == ["Release", "Record verification"]
    assert AuditEvent.objects.filter(action="application.claimed", actor=agent).count() == 1

    release = one_click_form(page, "release")
    page = client.post(release["url"], release["fields"], follow=True).content.decode()
    assert "Release: done. The application is now in the queue." in page
    application.refresh_from_db()
    assert (application.status, application.claimed_by) == (Status.SUBMITTED, None)
    assert AuditEvent.objects.filter(action="application.released", actor=agent).count() == 1


def test_release_clicked_on_an_old_page_leaves_a_claim_made_since_alone(
    client, agent, second_agent, server_admin
):
    application = make_application()
    workflow.claim(application, agent)
    client.force_login(server_admin)
    release = one_click_form(client.get(change_url(application)).content.decode(), "release")
    # Meanwhile the agent releases it and a colleague claims it: the status is the same again.
    workflow.release(application, agent)
    workflow.claim(application, second_agent)

    page = client.post(release["url"], release["fields"], follow=True).content.decode()

    assert "Someone else got there first: the application is now in review (by second_agent)." in page
    application.refresh_from_db()
    assert application.claimed_by == second_agent
    assert AuditEvent.objects.filter(action="application.released").count() == 1


@pytest.mark.parametrize(
    "name, fields",
    [
        ("approve", {}),
        ("reject", {"reason": "Not a member.", "message_to_applicant": ""}),
        ("request_information", {"question": "Please send a second document."}),
    ],
)
def test_a_decision_sent_from_a_page_opened_before_a_new_verification_is_refused(
    client, agent, second_agent, server_admin, second_server_admin, name, fields
):
    application = recommended_by(agent)  # identity verified, recommends approving
    client.force_login(server_admin)
    url = f"/admin/vetting/application/{application.pk}/action/{name}/"
    form = client.get(url).content.decode()
    # Meanwhile it goes round the loop and is verified again, the other way: the status is the same again.
    workflow.request_information(application, second_server_admin, "Please send a second document.")
    workflow.add_information(application, [], "I have no other document.")
    workflow.claim(application, second_agent)
    workflow.record_verification(
        application,
        second_agent,
        **verification(identity_verified=False, score=1, recommendation=Application.Recommendation.REJECT),
    )

    page = client.post(url, {**seen_fields(form), **fields}, follow=True).content.decode()

    assert (
        "A new verification was recorded by second_agent while this page was open: read it before "
        "deciding. Nothing was changed." in page
    )
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED
    assert application.decided_by is None
    assert not AuditEvent.objects.filter(action__in=["application.approved", "application.rejected"]).exists()
    assert AuditEvent.objects.filter(action="application.information_requested").count() == 1


@pytest.mark.parametrize("name", ["claim", "release"])
def test_claim_and_release_have_no_confirmation_page_to_open(client, agent, name):
    application = make_application()
    if name == "release":
        workflow.claim(application, agent)
    client.force_login(agent)
    response = client.get(f"/admin/vetting/application/{application.pk}/action/{name}/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert AuditEvent.objects.filter(action__in=["application.claimed", "application.released"]).count() == (
        1 if name == "release" else 0
    )


def test_the_other_actions_keep_their_confirmation_page(client, agent):
    application = claimed_and_signed_in(client, agent)
    page = client.get(change_url(application)).content.decode()
    assert 'class="workflow-button workflow-record_verification" href=' in page
    confirmation = client.get(f"/admin/vetting/application/{application.pk}/action/record_verification/")
    assert confirmation.status_code == 200
    assert (
        '<input type="submit" class="default" value="Record verification">' in confirmation.content.decode()
    )


def test_record_verification_form_requires_its_fields(client, agent):
    application = claimed_and_signed_in(client, agent)
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
    assert "Request information: done. The application is now waiting for more information." in (
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
    application = recommended_by(server_admin)
    client.force_login(server_admin)
    assert "Approve" not in buttons(client.get(change_url(application)).content.decode())
    page = client.get(f"/admin/vetting/application/{application.pk}/action/approve/").content.decode()
    assert "four-eyes" in page
    response = client.post(f"/admin/vetting/application/{application.pk}/action/approve/", follow=True)
    assert "four-eyes" in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED


def unmailable_refusal(application: Application) -> str:
    """What staff read about an application stored with "alex@applicant.example" and a bidi mark after it."""
    return escape(
        "The applicant's stored e-mail address, “alex@applicant.example\u200f”, cannot be mailed: it contains "
        "an invisible character, U+200F RIGHT-TO-LEFT MARK. Nothing that mails the applicant (a request for "
        "information, a decision, the token) can be done until it is corrected. It cannot be changed here: "
        f"ask an operator to run “manage.py correct_email {application.reference} <address>”, then "
        "try again."
    )


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("request_information", {"question": "Which meetup was it?"}),
        ("approve", {}),
        ("reject", {"reason": "No referee", "message_to_applicant": "Sorry."}),
    ],
)
def test_an_action_that_would_mail_an_address_mail_cannot_carry_is_refused_not_a_500(
    client, agent, server_admin, name, fields
):
    application = with_stored_address(recommended_by(agent), "alex@applicant.example\u200f")
    before = actions(application)
    client.force_login(server_admin)
    # Sent from a page opened before (or by hand): the workflow refuses it, as the page would have.
    response = client.post(
        f"/admin/vetting/application/{application.pk}/action/{name}/",
        {"seen_status": "recommended", **fields},
    )
    assert response.status_code == 200
    assert f'<p class="errornote">{unmailable_refusal(application)}</p>' in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED
    assert not OutboundEmail.objects.exists()
    assert actions(application) == before


def test_an_address_mail_cannot_carry_is_said_beside_the_buttons_it_takes_away(client, agent, server_admin):
    application = with_stored_address(recommended_by(agent), "alex@applicant.example\u200f")
    client.force_login(server_admin)
    page = client.get(change_url(application)).content.decode()
    assert buttons(page) == []  # request information, approve and reject would all mail the applicant
    assert f'<li class="warning">{unmailable_refusal(application)}</li>' in page


def test_nobody_deletes_an_application_in_the_admin_not_even_a_superadmin(client, superadmin):
    application = make_application()
    client.force_login(superadmin)
    page = client.get("/admin/vetting/application/?status=all").content.decode()
    assert "delete_selected" not in page
    assert (
        client.post(f"/admin/vetting/application/{application.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    client.post(
        "/admin/vetting/application/?status=all",
        {"action": "delete_selected", "_selected_action": [application.pk], "post": "yes"},
    )
    assert Application.objects.filter(pk=application.pk).exists()


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


def test_staff_without_a_role_cannot_open_the_actions_of_an_approved_application(client, outsider):
    # Approved is a state an inviting admin's list holds: the lookup alone would find it.
    application = make_application(full_name="Alex Approved", status=Status.APPROVED)
    client.force_login(outsider)
    for name in ("issue_invitation", "reopen"):
        response = client.get(f"/admin/vetting/application/{application.pk}/action/{name}/")
        assert response.status_code == 403, name
        assert "Alex Approved" not in response.content.decode()


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


def test_inviting_admins_are_offered_no_claim_or_release_action(client, agent, inviting_admin):
    make_application(status=Status.APPROVED)
    client.force_login(agent)
    page = client.get("/admin/vetting/application/?status=all").content.decode()
    assert 'value="claim_selected"' in page and 'value="release_selected"' in page

    client.force_login(inviting_admin)
    page = client.get("/admin/vetting/application/?status=all").content.decode()
    assert "claim_selected" not in page and "release_selected" not in page


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


@pytest.mark.parametrize("role", ["inviting_admin", "outsider"])
def test_staff_without_the_add_permission_cannot_enter_an_application(request, role):
    # The admin's add page checks the permission itself; the workflow guards every other caller.
    with pytest.raises(workflow.WorkflowError, match="Your role does not allow entering applications"):
        entered_by(request.getfixturevalue(role))
    assert not Application.objects.exists()
    assert not AuditEvent.objects.exists()
    assert not OutboundEmail.objects.exists()


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
    assert "Median time from entering the queue to decision" in page
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


# The verification form ------------------------------------------------------------


def verification_form(client, application: Application) -> str:
    return client.get(
        f"/admin/vetting/application/{application.pk}/action/record_verification/"
    ).content.decode()


def selected(form: str, name: str) -> str:
    """The value of the option chosen in select `name` ("" when none is marked)."""
    select = re.search(rf'<select name="{name}".*?</select>', form, re.S).group(0)
    chosen = re.search(r'<option value="([^"]*)" selected>', select)
    return chosen.group(1) if chosen else ""


def test_the_verification_form_chooses_nothing_for_the_agent_but_the_date(client, agent):
    application = claimed_and_signed_in(client, agent)

    with time_machine.travel(timezone.now(), tick=False):  # the form's today and ours are one day
        form = verification_form(client, application)
        today = timezone.localdate()

    for name in ("verification_method", "score", "recommendation"):
        # A browser shows (and sends) the marked option, else the first one.
        first = re.search(rf'<select name="{name}"[^>]*>\s*<option value="([^"]*)"', form).group(1)
        assert (first, selected(form, name)) == ("", "")
    assert 'name="identity_verified"' in form and "checked" not in form
    assert f'name="verified_on" value="{today:%Y-%m-%d}"' in form
    assert "from 1, serious doubts, to 5, fully confident" in form
    assert '<option value="2">2 – some doubts</option>' in form


def test_a_verification_sent_with_only_date_and_place_is_refused_and_saves_nothing(client, agent):
    application = claimed_and_signed_in(client, agent)

    # What a browser sends: each select's shown option, whether or not the agent touched it.
    # Today's date, sent on the day the server reads it.
    with time_machine.travel(timezone.now(), tick=False):
        form = verification_form(client, application)
        shown = {
            name: (
                re.search(r'<option value="([^"]*)" selected>', options)
                or re.search(r'value="([^"]*)"', options)
            ).group(1)
            for name, options in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', form, re.S)
        }
        response = submit_action(
            client,
            application,
            "record_verification",
            {**shown, "verified_on": f"{timezone.localdate():%Y-%m-%d}", "verification_location": "Lisbon"},
        )

    assert response.content.decode().count("This field is required.") == 3
    application.refresh_from_db()
    assert (application.status, application.score, application.recommendation) == (Status.IN_REVIEW, None, "")


def test_recommending_approval_of_an_unverified_identity_is_refused_on_the_form(client, agent):
    application = claimed_and_signed_in(client, agent)
    fields = {
        "verification_method": "video",
        "verified_on": "2026-11-20",
        "verification_location": "Jitsi",
        "score": "4",
        "recommendation": "approve",
    }

    response = submit_action(client, application, "record_verification", fields)

    assert response.redirect_chain == []  # the form again, with the error beside the field
    assert (
        '<ul class="errorlist" id="id_recommendation_error"><li>You cannot recommend approval when the '
        "identity was not verified" in response.content.decode()
    )
    application.refresh_from_db()
    assert application.status == Status.IN_REVIEW
    submit_action(client, application, "record_verification", {**fields, "recommendation": "reject"})
    application.refresh_from_db()
    assert (application.status, application.identity_verified) == (Status.RECOMMENDED, False)


def test_a_location_longer_than_the_200_characters_kept_is_refused_on_the_form(client, agent):
    application = claimed_and_signed_in(client, agent)
    fields = {
        "identity_verified": "on",
        "verification_method": "in-person",
        "verified_on": "2026-11-20",
        "verification_location": "L" * 201,
        "score": "4",
        "recommendation": "approve",
    }

    response = submit_action(client, application, "record_verification", fields)

    assert response.redirect_chain == []
    assert (
        '<ul class="errorlist" id="id_verification_location_error"><li>Ensure this value has at most 200 '
        "characters (it has 201).</li>" in response.content.decode()
    )
    application.refresh_from_db()
    assert (application.status, application.verification_location) == (Status.IN_REVIEW, "")


def answered(application: Application, server_admin, text: str) -> None:
    """A server admin asks for more, and the applicant answers: back in the queue."""
    workflow.request_information(application, server_admin, "Please send a photo of your ID.")
    workflow.add_information(application, [], text)


def test_a_verification_done_again_after_an_answer_starts_from_the_one_recorded(client, agent, server_admin):
    application = recommended_by(agent)
    answered(application, server_admin, "My ID is attached now.")
    workflow.claim(application, agent)
    client.force_login(agent)

    form = verification_form(client, application)

    assert (selected(form, "verification_method"), selected(form, "score")) == ("video", "4")
    assert selected(form, "recommendation") == "approve"
    assert 'name="verified_on" value="2026-11-20"' in form
    assert 'value="Jitsi"' in form
    assert "Matched the passport photo on video." in form
    assert 'name="identity_verified" id="id_identity_verified" checked' in form.replace(
        'type="checkbox" ', ""
    )
    assert "The form starts from the verification agent recorded on" in form
    assert "My ID is attached now." in form


# Deciding with the verification in view -------------------------------------------


def recommend_rejection(application: Application, agent, **notes) -> None:
    workflow.record_verification(
        application,
        agent,
        identity_verified=False,
        method="video",
        verified_on=application.created_at.date(),
        location="Jitsi",
        score=2,
        recommendation="reject",
        **notes,
    )


def recommended_for_rejection(agent) -> Application:
    application = make_application()
    workflow.claim(application, agent)
    recommend_rejection(application, agent, notes="The referee does not know them.")
    return application


def test_the_approve_page_shows_the_verification_and_warns_against_the_recommendation(
    client, agent, server_admin
):
    application = recommended_for_rejection(agent)
    answered(application, server_admin, "Ask Sam, she knows me from the meetup.")
    workflow.claim(application, agent)
    recommend_rejection(application, agent)
    client.force_login(server_admin)

    page = client.get(f"/admin/vetting/application/{application.pk}/action/approve/").content.decode()

    summary = page[page.index('id="verification-summary"') :]
    assert "<td>Reject</td>" in summary
    assert "<td>2 – some doubts</td>" in summary
    assert "<td>no</td>" in summary  # identity verified
    assert "<td>agent · Video call · " in summary
    assert "Ask Sam, she knows me from the meetup." in page
    assert (
        '<li class="warning">The verification recommended “Reject”: approving goes against that '
        "recommendation.</li>" in page
    )


def test_rejecting_what_was_recommended_for_approval_is_warned_about_and_agreeing_is_not(
    client, agent, server_admin
):
    application = recommended_by(agent)
    client.force_login(server_admin)
    reject_page = client.get(f"/admin/vetting/application/{application.pk}/action/reject/").content.decode()
    approve_page = client.get(f"/admin/vetting/application/{application.pk}/action/approve/").content.decode()
    assert "rejecting goes against that recommendation" in reject_page
    assert "<td>4 – confident</td>" in reject_page
    assert 'class="warning"' not in approve_page
    assert "latest-answer" not in approve_page  # no answer: no empty box


def test_answers_and_notes_come_before_the_read_only_record(client, agent, server_admin):
    application = recommended_by(agent)
    answered(application, server_admin, "Here is my answer.")
    workflow.add_note(application, agent, "Called them back.")
    client.force_login(agent)
    page = client.get(change_url(application)).content.decode()
    first_fieldset = page.index("<fieldset")
    assert page.index("Here is my answer.") < first_fieldset
    assert page.index("Called them back.") < first_fieldset


def test_the_change_page_costs_what_the_benchmark_expects(client, superadmin):
    # README's benchmark: 8 queries for a superadmin, at every size.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    application = make_application()
    client.force_login(superadmin)
    client.get(change_url(application))
    with CaptureQueriesContext(connection) as queries:
        assert client.get(change_url(application)).status_code == 200
    assert len(queries) == 8


def test_the_verifier_is_told_beside_the_buttons_why_they_cannot_decide(client, server_admin):
    application = recommended_by(server_admin)
    client.force_login(server_admin)
    page = client.get(change_url(application)).content.decode()
    # Sending it back for more information is one of the decisions too (DESIGN's diagram).
    assert buttons(page) == []
    assert (
        '<li class="warning">You recorded the verification of this application, so another server admin '
        "must decide it (four-eyes rule).</li>" in page
    )


def test_nothing_is_explained_when_the_role_or_the_state_already_says_it(client, agent, server_admin):
    application = recommended_by(agent)
    for user in (agent, server_admin):
        client.force_login(user)
        assert "workflow-refusals" not in client.get(change_url(application)).content.decode()


def test_a_reopened_application_no_longer_shows_the_old_rejection(client, agent, server_admin, superadmin):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Referee unreachable", "You may apply again.")
    client.force_login(superadmin)
    submit_action(client, application, "reopen", {"reason": "The referee called back."})
    page = client.get(change_url(application)).content.decode()
    assert "Referee unreachable" not in page
    assert "You may apply again." not in page


# Invitations: who got there first, and what to tell the person -----------------


def test_an_issue_sent_twice_from_two_tabs_names_the_admin_as_you(
    client, approved, inviting_admin, fake_synapse
):
    client.force_login(inviting_admin)
    url = f"/admin/vetting/application/{approved.pk}/action/issue_invitation/"
    client.post(url, {"seen_status": "approved", "matrix_username": "alex"})

    response = client.post(url, {"seen_status": "approved", "matrix_username": "alex"}, follow=True)

    page = response.content.decode()
    assert "Already done in another tab or window: the application is now invited (by you)." in page
    assert "server_admin" not in page.split('class="messagelist"')[1].split("</ul>")[0]
    assert len(fake_synapse.tokens) == 1


def test_after_issuing_the_admin_reads_the_username_the_date_to_tell_and_where_the_token_went(
    client, approved, inviting_admin, fake_synapse
):
    client.force_login(inviting_admin)
    response = submit_action(client, approved, "issue_invitation", {"matrix_username": "alex"})
    invitation = approved.invitations.get()
    page = response.content.decode()
    assert "Issue invitation: done. The application is now invited." in page
    assert "Username: @alex:localhost." in page
    assert f"Tell the person the token works until {invitation.tell_by:%Y-%m-%d %H:%M} UTC." in page
    assert "The token and the next steps are being mailed to you at inviting_admin@staff.example." in page
    assert f'<a href="/admin/vetting/invitation/{invitation.pk}/change/">Open the invitation</a>' in page
    assert OutboundEmail.objects.get(template="invitation-issued").to == "inviting_admin@staff.example"


@pytest.mark.parametrize("send_to_applicant", [True, False])
def test_after_issuing_the_admin_is_told_whether_the_applicant_was_mailed_the_token_too(
    client, approved, inviting_admin, fake_synapse, settings, send_to_applicant
):
    settings.MATRIX_SEND_TOKEN_TO_APPLICANT = send_to_applicant
    client.force_login(inviting_admin)
    page = submit_action(client, approved, "issue_invitation", {"matrix_username": "alex"}).content.decode()
    assert ("The token is also being mailed to the applicant." in page) is send_to_applicant
    assert OutboundEmail.objects.filter(to=approved.email).exists() is send_to_applicant


def test_an_issuing_admin_without_an_address_is_told_no_mail_went(
    client, approved, inviting_admin, fake_synapse
):
    inviting_admin.email = ""
    inviting_admin.save(update_fields=["email"])
    client.force_login(inviting_admin)
    page = submit_action(client, approved, "issue_invitation", {"matrix_username": "alex"}).content.decode()
    assert (
        escape("No mail was sent: your account has no e-mail address. The token is on the invitation's page.")
        in page
    )
    assert not OutboundEmail.objects.filter(template="invitation-issued").exists()


# What inviting admins see -----------------------------------------------------------


def test_inviting_admins_see_only_approved_invited_and_joined_applications(client, inviting_admin):
    shown = [make_application(status=status) for status in (Status.APPROVED, Status.INVITED, Status.JOINED)]
    hidden = [
        make_application(status=status, decision_reason="Known troll", statement="Private statement")
        for status in (
            Status.SUBMITTED,
            Status.IN_REVIEW,
            Status.RECOMMENDED,
            Status.REJECTED,
            Status.WITHDRAWN,
        )
    ]
    client.force_login(inviting_admin)

    listed = client.get("/admin/vetting/application/?status=all").content.decode()

    assert all(application.reference in listed for application in shown)
    assert not [application for application in hidden if application.reference in listed]
    for application in hidden:
        assert client.get(change_url(application)).status_code == 302  # "doesn't exist", to the index
        assert client.get(f"/admin/vetting/application/{application.pk}/action/claim/").status_code == 403
        searched = client.get("/admin/vetting/application/", {"q": application.reference, "status": "all"})
        assert f">{application.reference}</a>" not in searched.content.decode()
    assert client.get(change_url(shown[0])).status_code == 200


def test_inviting_admins_are_not_shown_earlier_applications_they_may_not_open(client, agent, inviting_admin):
    earlier = make_application(status=Status.REJECTED, email="alex@applicant.example")
    current = make_application(status=Status.APPROVED, email="alex@applicant.example")
    client.force_login(agent)
    assert earlier.reference in client.get(change_url(current)).content.decode()
    client.force_login(inviting_admin)
    assert earlier.reference not in client.get(change_url(current)).content.decode()


VETTING_SECRETS = {
    "statement": "SECRET-STATEMENT",
    "referral": "SECRET-REFERRAL",
    "phone": "+44 7700 900555",
    "verification_notes": "SECRET-VERIFICATION-NOTES",
    "verification_location": "SECRET-LOCATION",
    "decision_reason": "SECRET-DECISION-REASON",
    "message_to_applicant": "SECRET-SHARED-MESSAGE",
    "information_request": "SECRET-QUESTION",
}


def test_inviting_admins_see_only_what_issuing_a_token_needs(client, approved, agent, inviting_admin):
    Application.objects.filter(pk=approved.pk).update(**VETTING_SECRETS)
    InformationReply.objects.create(application=approved, question="Which city?", text="SECRET-ANSWER")
    secrets = [*VETTING_SECRETS.values(), "SECRET-ANSWER"]
    client.force_login(agent)
    page = client.get(change_url(approved)).content.decode()
    assert all(secret in page for secret in secrets)  # what vetting staff read

    client.force_login(inviting_admin)
    page = client.get(change_url(approved)).content.decode()

    for shown in (approved.reference, approved.full_name, approved.email, "alex", "Approved", "server_admin"):
        assert shown in page
    assert not [secret for secret in secrets if secret in page]
    assert "Answers from the applicant" not in page
    assert "Score" not in page and "Recommendation" not in page
    # Nor on any action's page, the ones their role refuses included.
    for name in workflow.STAFF_TRANSITIONS:
        action_page = client.get(f"/admin/vetting/application/{approved.pk}/action/{name}/")
        assert not [secret for secret in secrets if secret in action_page.content.decode()], name
    # Nor by filtering the list on them.
    for lookup in ("statement__icontains", "verification_notes__startswith", "decision_reason"):
        response = client.get("/admin/vetting/application/", {"status": "all", lookup: "SECRET"})
        assert response["Location"] == "/admin/vetting/application/?e=1", lookup


def test_inviting_admins_list_does_not_name_who_verified(client, agent, server_admin, inviting_admin):
    application = recommended_by(agent)
    workflow.approve(application, server_admin)
    client.force_login(agent)
    assert ">agent<" in client.get("/admin/vetting/application/?status=all").content.decode()

    client.force_login(inviting_admin)
    listed = client.get("/admin/vetting/application/?status=all").content.decode()

    assert application.reference in listed
    assert ">agent<" not in listed  # the claimer is the verifier
    assert "Claimed by me" not in listed and "Answered, to review again" not in listed
    # Nor by filtering on the claim.
    response = client.get("/admin/vetting/application/", {"status": "all", "claim": "mine"})
    assert response["Location"] == "/admin/vetting/application/?e=1"


def test_inviting_admins_read_notes_only_on_applications_they_may_see(client, agent, inviting_admin):
    visible = make_application(status=Status.APPROVED)
    rejected = make_application(status=Status.REJECTED)
    workflow.add_note(visible, agent, "Prefers Signal.")
    private = workflow.add_note(rejected, agent, "Banned elsewhere for harassment.")
    client.force_login(inviting_admin)
    notes = client.get("/admin/vetting/staffnote/").content.decode()
    assert visible.reference in notes and rejected.reference not in notes
    assert client.get(f"/admin/vetting/staffnote/{private.pk}/change/").status_code == 302


def test_staff_who_also_vet_see_every_application(client, django_user_model, inviting_admin):
    from django.contrib.auth.models import Group

    from vetting import roles

    inviting_admin.groups.add(Group.objects.get(name=roles.group_name(roles.VETTING_AGENT)))
    submitted = make_application()
    client.force_login(django_user_model.objects.get(pk=inviting_admin.pk))
    assert submitted.reference in client.get("/admin/vetting/application/").content.decode()


# The audit trail from the application ------------------------------------------------


def test_the_application_page_links_to_its_audit_trail_instead_of_django_history(client, agent, server_admin):
    application = recommended_by(agent)
    client.force_login(server_admin)
    page = client.get(change_url(application)).content.decode()
    assert f'href="/admin/vetting/auditevent/?application={application.reference}"' in page
    assert "/history/" not in page
    response = client.get(f"/admin/vetting/application/{application.pk}/history/")
    assert response.status_code == 302
    assert response["Location"] == f"/admin/vetting/auditevent/?application={application.reference}"

    client.force_login(agent)  # agents do not read the audit log
    page = client.get(change_url(application)).content.decode()
    assert "/admin/vetting/auditevent/" not in page and "/history/" not in page
    assert client.get(f"/admin/vetting/application/{application.pk}/history/").status_code == 403


def test_dashboard_counts_a_staff_entered_application_as_waiting_from_its_entry(client, agent):
    # Its applicant confirmed their address only today; staff could act on it ten days ago.
    now = timezone.now()
    entered = make_application(source=Application.Source.STAFF, email_confirmed_at=now)
    Application.objects.filter(pk=entered.pk).update(created_at=now - timedelta(days=10))
    public = make_application(email_confirmed_at=now - timedelta(days=5))
    Application.objects.filter(pk=public.pk).update(created_at=now - timedelta(days=6))
    client.force_login(agent)

    page = client.get("/admin/").content.decode()

    assert f">{entered.reference}</a>, waiting 10 day(s)." in page
