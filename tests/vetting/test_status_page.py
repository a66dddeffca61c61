from __future__ import annotations

import datetime
import re

import pytest
import time_machine
from botocore.exceptions import NoCredentialsError
from django.core import signing
from django.utils import timezone

from evidence.models import Evidence
from notifications.models import OutboundEmail
from tests.evidence.test_storage import FailingS3Storage
from tests.factories import HTML_BYTES, PDF_BYTES, make_application, upload
from vetting import links, workflow
from vetting.models import Application, Invitation

pytestmark = pytest.mark.django_db
Status = Application.Status


def status_path(application: Application) -> str:
    return f"/status/{links.status_token(application)}/"


def test_each_status_link_shows_its_own_application_never_another(client):
    first = make_application(status=Status.APPROVED)
    second = make_application(status=Status.REJECTED, full_name="Robin Other")
    page = client.get(status_path(second)).content.decode()
    assert second.reference in page and "Your application was not approved." in page
    assert first.reference not in page
    # Acting through the link withdraws that application, not the other one.
    third = make_application()
    client.post(f"{status_path(third)}withdraw/")
    first.refresh_from_db()
    third.refresh_from_db()
    assert (first.status, third.status) == (Status.APPROVED, Status.WITHDRAWN)


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (Status.UNCONFIRMED, "Please confirm your e-mail address"),
        (Status.SUBMITTED, "Your application is in the queue."),
        (Status.IN_REVIEW, "A vetting agent is checking your application."),
        (Status.RECOMMENDED, "A vetting agent is checking your application."),
        (Status.APPROVED, "Your application was approved. An admin will contact you"),
        (Status.REJECTED, "Your application was not approved."),
        (Status.WITHDRAWN, "You withdrew this application."),
    ],
)
def test_status_page_says_where_the_application_stands_in_plain_words(client, status, words):
    application = make_application(status=status)
    response = client.get(status_path(application))
    assert response.status_code == 200
    page = response.content.decode()
    assert words in page
    assert application.reference in page


def test_status_page_never_shows_staff_notes_or_internal_reasons(client, server_admin):
    application = make_application(
        status=Status.REJECTED, decision_reason="Internal: referee unreliable", message_to_applicant="Sorry."
    )
    page = client.get(status_path(application)).content.decode()
    assert "Sorry." in page
    assert "referee unreliable" not in page


@pytest.mark.parametrize(
    "token",
    [
        "nonsense",
        "",
        "a" * 500,
        "abc:def:ghi",
        # Well signed but for another purpose: a confirmation link, the done page's reference.
        signing.dumps("0" * 32, salt=links.CONFIRM_SALT),
        signing.dumps("0" * 32),
    ],
)
def test_tampered_or_unknown_status_links_are_404(client, token):
    make_application()
    response = client.get(f"/status/{token}/") if token else client.get("/status//")
    assert response.status_code == 404


def test_a_status_token_with_one_character_changed_is_404(client):
    token = links.status_token(make_application())
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client.get(f"/status/{tampered}/").status_code == 404


def test_a_confirm_token_is_not_a_status_token(client):
    application = make_application()
    assert client.get(f"/status/{links.confirm_token(application)}/").status_code == 404


def test_the_confirm_link_confirms_and_shows_the_status_page_saying_so(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    # One second for both: a status link signed in another second differs.
    with time_machine.travel(datetime.datetime.now(datetime.UTC), tick=False):
        response = client.get(f"/confirm/{links.confirm_token(application)}/")
        assert response.status_code == 302
        assert response["Location"] == f"{status_path(application)}?confirmed=1"
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert "Thank you: your e-mail address is confirmed." in page.content.decode()


def test_the_confirm_link_clicked_again_shows_the_status_page_without_news(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    with time_machine.travel(datetime.datetime.now(datetime.UTC), tick=False):
        client.get(f"/confirm/{links.confirm_token(application)}/")
        response = client.get(f"/confirm/{links.confirm_token(application)}/")
        assert response["Location"] == status_path(application)
    assert "your e-mail address is confirmed" not in client.get(response["Location"]).content.decode()


def test_the_confirmed_notice_is_not_shown_for_an_address_nobody_confirmed(client):
    application = make_application(source="staff", email_confirmed_at=None)
    page = client.get(f"{status_path(application)}?confirmed=1").content.decode()
    assert "your e-mail address is confirmed" not in page


def test_a_staff_entered_application_s_confirm_link_says_the_address_is_confirmed(client):
    application = make_application(source="staff", email_confirmed_at=None)
    response = client.get(f"/confirm/{links.confirm_token(application)}/", follow=True)
    assert "Thank you: your e-mail address is confirmed." in response.content.decode()
    assert "Your application is in the queue." in response.content.decode()


def test_the_confirm_link_expires_after_7_days(client):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        token = links.confirm_token(application)
    with time_machine.travel(datetime.datetime(2026, 11, 8, 0, 1, tzinfo=datetime.UTC)):
        assert client.get(f"/confirm/{token}/").status_code == 410
    application.refresh_from_db()
    assert application.status == Status.UNCONFIRMED


def test_a_tampered_confirm_link_is_404(client):
    token = links.confirm_token(make_application(status=Status.UNCONFIRMED))
    assert client.get(f"/confirm/{token}x/").status_code == 404


def test_a_confirm_link_confirms_only_when_clicked_not_when_posted_to(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    response = client.post(f"/confirm/{links.confirm_token(application)}/")
    assert response.status_code == 405
    application.refresh_from_db()
    assert application.status == Status.UNCONFIRMED
    assert application.email_confirmed_at is None


def test_when_information_is_requested_the_page_shows_the_question_and_an_upload_form(client):
    application = make_application(
        status=Status.INFO_REQUESTED, information_request="Send a photo of your ID."
    )
    page = client.get(status_path(application)).content.decode()
    assert "Send a photo of your ID." in page
    assert 'name="evidence_1"' in page
    assert 'name="message"' in page


def test_applicant_answers_with_a_file(client, settings):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    path = status_path(application)
    response = client.post(path, {"message": "Here you go", "evidence_1": upload("id.pdf", PDF_BYTES)})
    assert response.status_code == 302
    assert response["Location"] == f"{path}?sent=1"
    assert "your answer was sent to staff" in client.get(response["Location"]).content.decode()
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED
    assert Evidence.objects.get(application=application).original_name == "id.pdf"


def test_after_answering_the_page_says_staff_have_the_answer_and_shows_the_question(client):
    application = make_application(
        status=Status.INFO_REQUESTED, information_request="Who at the Lisbon meetup knows you?"
    )
    path = status_path(application)
    with time_machine.travel(datetime.datetime(2026, 11, 20, 10, tzinfo=datetime.UTC)):
        response = client.post(path, {"message": "Sam does."})
    page = client.get(response["Location"]).content.decode()
    assert "Thank you: your answer was sent to staff." in page
    assert "Staff have your answer and will look at your application again; we will e-mail you." in page
    assert "Who at the Lisbon meetup knows you?" in page
    assert "You answered on 2026-11-20." in page
    # Not the words for an application nobody has looked at yet.
    assert "A vetting agent will pick it up" not in page
    # Still so later, without the notice (the mail's link, a bookmark).
    assert "Who at the Lisbon meetup knows you?" in client.get(path).content.decode()


def test_the_answered_application_shows_its_last_question(client, server_admin):
    application = make_application(status=Status.INFO_REQUESTED, information_request="First question?")
    workflow.add_information(application, [], "First answer.")
    Application.objects.filter(pk=application.pk).update(status=Status.IN_REVIEW)
    application.refresh_from_db()
    workflow.request_information(application, server_admin, "Second question?")
    workflow.add_information(application, [], "Second answer.")
    page = client.get(status_path(application)).content.decode()
    assert "Second question?" in page and "First question?" not in page


def test_once_a_vetting_agent_has_the_answered_application_the_page_says_it_is_being_checked(client, agent):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Who knows you?")
    workflow.add_information(application, [], "Sam does.")
    workflow.claim(application, agent)
    page = client.get(status_path(application)).content.decode()
    assert "A vetting agent is checking your application." in page
    assert "Staff have your answer" not in page


def test_a_spoofed_file_on_the_status_page_is_refused_and_nothing_changes(client, settings):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    response = client.post(status_path(application), {"evidence_1": upload("id.pdf", HTML_BYTES)})
    assert response.status_code == 200
    assert "“id.pdf” does not contain what its name says" in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED
    assert not Evidence.objects.exists()


def test_the_answer_form_posts_to_the_status_page_itself_not_to_the_address_bar(client):
    # The upload script posts to the form's action: a #fragment in the address bar must not reach it.
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    # One token: a signed link made in another second differs.
    path = status_path(application)
    page = client.get(path).content.decode()
    assert f'<form method="post" action="{path}"' in page


def test_an_s3_failure_on_the_status_page_gets_the_friendly_message_and_nothing_changes(client, monkeypatch):
    monkeypatch.setattr(Evidence._meta.get_field("file"), "storage", FailingS3Storage(NoCredentialsError()))
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    response = client.post(
        status_path(application), {"message": "Here", "evidence_1": upload("id.pdf", PDF_BYTES)}
    )
    assert "We could not store your files just now, so nothing was kept." in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED
    assert not Evidence.objects.exists()


def test_an_empty_answer_is_refused(client):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    response = client.post(status_path(application), {"message": "  "})
    assert "Add a file or write an answer." in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED


def test_posting_to_a_status_page_that_asks_nothing_changes_nothing(client):
    application = make_application(status=Status.SUBMITTED)
    response = client.post(status_path(application), {"evidence_1": upload("id.pdf", PDF_BYTES)})
    assert response.status_code == 302
    assert not Evidence.objects.exists()


def test_withdraw_asks_for_confirmation_then_withdraws(client):
    application = make_application()
    path = status_path(application)
    assert "Withdraw my application" in client.get(path).content.decode()
    confirm_page = client.get(f"{path}withdraw/")
    assert "Yes, withdraw my application" in confirm_page.content.decode()
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED  # a GET changes nothing

    response = client.post(f"{path}withdraw/")
    assert response.status_code == 302
    application.refresh_from_db()
    assert application.status == Status.WITHDRAWN
    assert OutboundEmail.objects.filter(template="application-withdrawn").exists()
    assert "Withdraw my application" not in client.get(path).content.decode()


def test_withdrawing_a_rejected_application_explains_why_not(client):
    application = make_application(status=Status.REJECTED)
    response = client.post(f"{status_path(application)}withdraw/")
    assert response.status_code == 409
    assert "can no longer be withdrawn" in response.content.decode()


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (Status.REJECTED, "Not approved"),
        (Status.JOINED, "Joined the Matrix server"),
        (Status.WITHDRAWN, "Withdrawn by you"),
    ],
)
def test_the_refused_withdrawal_names_the_status_in_the_applicants_words(client, status, words):
    application = make_application(status=status)
    page = client.get(f"{status_path(application)}withdraw/").content.decode()
    assert f"This application can no longer be withdrawn. Its status: {words}." in page
    assert f"it is {application.get_status_display().lower()}" not in page


def test_an_answer_with_a_note_but_no_file_asks_for_the_file_and_changes_nothing(client):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    response = client.post(status_path(application), {"message": "Here", "note_1": "my passport"})
    assert response.status_code == 200
    assert "Note 1 has no file: choose the file it describes, or clear the note." in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED


def test_after_an_error_the_answer_form_asks_to_choose_the_files_again(client):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    response = client.post(
        status_path(application),
        {"message": "x" * 5001, "evidence_1": upload("passport.pdf", PDF_BYTES), "note_1": "my passport"},
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Choose your files again before sending" in page and "You had chosen: passport.pdf." in page
    assert not Evidence.objects.exists()


def test_the_download_link_lets_the_browser_show_an_error_page_instead_of_saving_it(client):
    # With a `download` attribute Chromium saves a 503 or 429 page as a file, unseen;
    # the archive itself comes with Content-Disposition: attachment.
    application = make_application()
    page = client.get(status_path(application)).content.decode()
    link = re.search(r'<a href="[^"]*/my-data/"[^>]*>', page).group(0)
    assert "download" not in link.removesuffix('/my-data/">')


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (Status.UNCONFIRMED, "Waiting for you to confirm your e-mail address"),
        (Status.SUBMITTED, "Received, waiting for a vetting agent"),
        (Status.IN_REVIEW, "Being checked"),
        (Status.RECOMMENDED, "Being checked"),
        (Status.INFO_REQUESTED, "We need more information from you"),
        (Status.APPROVED, "Approved, invitation being prepared"),
        (Status.INVITED, "Invitation issued"),
        (Status.JOINED, "Joined the Matrix server"),
        (Status.REJECTED, "Not approved"),
        (Status.WITHDRAWN, "Withdrawn by you"),
    ],
)
def test_the_status_page_names_the_status_in_the_applicants_words(client, status, label):
    application = make_application(status=status, information_request="Send your ID.")
    page = client.get(status_path(application)).content.decode()
    assert f'<strong class="status status-{status}">{label}</strong>' in page


def test_a_recommendation_to_reject_is_not_shown_to_the_applicant_as_recommended(client, agent):
    application = make_application(
        status=Status.RECOMMENDED,
        recommendation=Application.Recommendation.REJECT,
        verification_recorded_by=agent,
    )
    page = client.get(status_path(application)).content.decode()
    assert '<strong class="status status-recommended">Being checked</strong>' in page
    visible = re.sub(r"<[^>]*>", " ", page).lower()
    assert "recommend" not in visible and "reject" not in visible


def test_every_status_has_words_for_the_applicant():
    assert set(Application.APPLICANT_STATUS_LABELS) == set(Status)
    for status in Status:
        assert make_application(status=status).applicant_status


def test_the_status_page_explains_why_an_invited_application_cannot_be_erased_instead_of_linking(client):
    application = make_application(status=Status.INVITED)
    path = status_path(application)
    page = client.get(path).content.decode()
    assert f'href="{path}erase/"' not in page
    assert "Your invitation to the Matrix server is still open" in page


def test_the_invited_page_says_until_when_the_invitation_works_and_whom_to_write_to(
    client, settings, inviting_admin
):
    settings.DEFAULT_FROM_EMAIL = "Community Help <help@community.example>"
    application = make_application(status=Status.INVITED)
    Invitation.objects.create(
        application=application,
        backend="synapse",
        token="abcdefgh",
        server_id="abcdefgh",
        matrix_username="alex",
        expires_at=datetime.datetime(2026, 12, 30, 12, tzinfo=datetime.UTC),
        issued_by=inviting_admin,
        issued_at=timezone.now(),
    )
    page = client.get(status_path(application)).content.decode()
    # The date the person is told (the token really works 48 hours longer).
    assert "Your invitation works until 2026-12-28 12:00 UTC: create your account before then." in page
    assert (
        'No message yet? Write to <a href="mailto:help@community.example">help@community.example</a> '
        f"with your reference {application.reference}."
    ) in page


def test_the_invited_page_offers_withdrawal_and_says_what_it_does_to_the_invitation(client):
    application = make_application(status=Status.INVITED)
    path = status_path(application)
    page = client.get(path).content.decode()
    assert f'href="{path}withdraw/"' in page
    assert (
        "Your invitation to the Matrix server will be cancelled"
        in client.get(f"{path}withdraw/").content.decode()
    )
    assert "Withdraw your application first (that cancels the invitation); then you can erase it." in page


def test_the_withdrawn_page_does_not_repeat_that_it_cannot_be_withdrawn(client):
    page = client.get(status_path(make_application(status=Status.WITHDRAWN))).content.decode()
    assert "You withdrew this application." in page
    assert "can no longer be withdrawn" not in page


def test_the_status_page_explains_the_erasure_policy_during_review_instead_of_linking(client, settings):
    settings.ERASURE_BLOCKED_DURING_REVIEW = True
    application = make_application(status=Status.IN_REVIEW)
    path = status_path(application)
    page = client.get(path).content.decode()
    assert f'href="{path}erase/"' not in page
    assert "Staff are deciding on your application" in page
    # Withdrawing stays possible: the refusal tells the applicant to do that first.
    assert f'href="{path}withdraw/"' in page


@pytest.mark.parametrize("status", [Status.IN_REVIEW, Status.REJECTED, Status.WITHDRAWN])
def test_the_status_page_links_erasure_when_it_is_allowed(client, settings, status):
    settings.ERASURE_BLOCKED_DURING_REVIEW = status != Status.IN_REVIEW
    application = make_application(status=status)
    path = status_path(application)
    page = client.get(path).content.decode()
    assert f'href="{path}erase/"' in page
    assert "Erasing your application is not possible" not in page


@pytest.mark.parametrize("purged", [True, False], ids=["after-the-purge", "before-the-purge"])
def test_an_expired_confirm_link_says_the_application_is_or_will_soon_be_deleted(client, purged):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        token = links.confirm_token(application)
    # The purge runs daily: for up to a day after expiry the application is still there.
    with time_machine.travel(datetime.datetime(2026, 11, 8, 1, tzinfo=datetime.UTC)):
        if purged:
            workflow.purge_unconfirmed(timezone.now() - links.UNCONFIRMED_LIFETIME)
        assert Application.objects.exists() is not purged
        response = client.get(f"/confirm/{token}/")
    assert response.status_code == 410
    page = response.content.decode()
    assert (
        "This link has expired. E-mail addresses must be confirmed within 7 days; an application not "
        "confirmed in time is deleted within a day after that."
    ) in page
    assert "was deleted" not in page
    assert 'href="/apply/"' in page
    assert "copy it again from the e-mail" not in page


def test_a_genuine_confirm_link_of_an_application_that_is_gone_is_410(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    token = links.confirm_token(application)
    application.delete()
    response = client.get(f"/confirm/{token}/")
    assert response.status_code == 410
    assert "Apply again" in response.content.decode()


def test_a_tampered_confirm_link_of_an_application_that_is_gone_stays_404(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    token = links.confirm_token(application)
    application.delete()
    assert client.get(f"/confirm/{token}x/").status_code == 404
    assert client.get(f"/confirm/{links.status_token(application)}/").status_code == 404


def test_an_answer_sent_twice_shows_the_page_as_it_is_now_saying_the_first_was_received(client, monkeypatch):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    path = status_path(application)
    # The second request (a double click, a second tab) read the application before the first committed.
    stale = Application.objects.get(pk=application.pk)
    answer = {"message": "Here it is", "evidence_1": upload("id.pdf", PDF_BYTES)}
    assert client.post(path, answer)["Location"] == f"{path}?sent=1"
    monkeypatch.setattr(links, "application_for_status_token", lambda token: stale)
    response = client.post(path, {**answer, "evidence_1": upload("id.pdf", PDF_BYTES)})
    assert response.status_code == 302
    assert response["Location"] == f"{path}?not_waiting=1"
    monkeypatch.undo()

    page = client.get(response["Location"]).content.decode()
    assert "Received, waiting for a vetting agent" in page
    assert "Your answer was already received, on " in page
    assert (
        "Staff are no longer waiting for information from you, so what you sent just now was not kept."
        in page
    )
    assert "Staff need more information" not in page and 'name="message"' not in page
    assert application.information_replies.count() == 1
    assert Evidence.objects.count() == 1


def test_an_answer_from_a_tab_opened_before_the_withdrawal_says_it_was_not_kept(client):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    path = status_path(application)
    workflow.withdraw(application)
    response = client.post(path, {"message": "Here it is"})
    assert response["Location"] == f"{path}?not_waiting=1"
    page = client.get(response["Location"]).content.decode()
    assert "You withdrew this application." in page
    assert (
        "Staff are no longer waiting for information from you, so what you sent just now was not kept."
        in page
    )
    assert "already received" not in page  # there was no answer
    assert not application.information_replies.exists()


def test_the_not_waiting_notice_is_not_shown_while_staff_are_waiting(client):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    page = client.get(f"{status_path(application)}?not_waiting=1").content.decode()
    assert "no longer waiting" not in page
    assert 'name="message"' in page


def test_an_answer_the_browser_allowed_with_crlf_line_breaks_is_kept_with_lf(client):
    application = make_application(status=Status.INFO_REQUESTED, information_request="Send your ID.")
    # A textarea with maxlength="5000" counts each line break as one character; browsers send CRLF.
    typed = "\n".join(["x" * 97] * 50 + ["x" * 100])
    assert len(typed) == 5000
    response = client.post(status_path(application), {"message": typed.replace("\n", "\r\n")})
    assert response.status_code == 302
    assert application.information_replies.get().text == typed


def test_the_status_page_of_an_application_not_confirmed_in_time_says_it_expired(client):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        path = status_path(application)
        page = client.get(path).content.decode()
        assert "Please confirm your e-mail address" in page
    # Past the 7 days, before the daily purge: the confirmation link answers 410.
    with time_machine.travel(datetime.datetime(2026, 11, 8, 0, 1, tzinfo=datetime.UTC)):
        page = client.get(path).content.decode()
    assert "Please confirm your e-mail address" not in page
    assert "Expired: your e-mail address was not confirmed in time" in page
    assert "This application has expired: e-mail addresses must be confirmed within 7 days" in page
    assert 'href="/apply/">Apply again</a>' in page
    # Nothing to withdraw: staff never saw it, and it is about to be deleted.
    assert f'href="{path}withdraw/"' not in page
    assert "This application can no longer be withdrawn: it expired" in page


def test_an_application_not_confirmed_in_time_cannot_be_withdrawn(client):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        path = status_path(application)
    with time_machine.travel(datetime.datetime(2026, 11, 8, 0, 1, tzinfo=datetime.UTC)):
        response = client.post(f"{path}withdraw/")
        with pytest.raises(workflow.WorkflowError, match="it expired because your e-mail address"):
            workflow.withdraw(application)
    assert response.status_code == 409
    assert "This application can no longer be withdrawn: it expired" in response.content.decode()
    application.refresh_from_db()
    assert application.status == Status.UNCONFIRMED
    assert not OutboundEmail.objects.filter(template="application-withdrawn").exists()


def test_an_unconfirmed_application_can_be_withdrawn_within_the_confirmation_window(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    path = status_path(application)
    assert f'href="{path}withdraw/"' in client.get(path).content.decode()
    assert workflow.withdrawal_refusal(application) is None


def test_a_staff_entered_application_never_expires_on_its_status_page(client):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(source="staff", email_confirmed_at=None)
        path = status_path(application)
    with time_machine.travel(datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)):
        page = client.get(path).content.decode()
    assert "expired" not in page.lower()
    assert "Your application is in the queue." in page


@pytest.mark.parametrize("suffix", ["", "withdraw/", "erase/", "my-data/"])
def test_the_status_link_of_a_purged_application_is_gone_not_mistyped(client, suffix):
    with time_machine.travel(datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)):
        application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
        path = status_path(application)
    with time_machine.travel(datetime.datetime(2026, 11, 8, 1, tzinfo=datetime.UTC)):
        assert workflow.purge_unconfirmed(timezone.now() - links.UNCONFIRMED_LIFETIME) == 1
        response = client.get(f"{path}{suffix}")
    assert response.status_code == 410
    page = response.content.decode()
    assert "This link has expired. E-mail addresses must be confirmed within 7 days" in page
    assert 'href="/apply/"' in page
    assert "copy it again from the e-mail" not in page


def test_a_tampered_status_link_of_a_purged_application_stays_404(client):
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    path = status_path(application)
    application.delete()
    assert client.get(f"{path[:-1]}x/").status_code == 404
    assert client.get(f"/status/{links.confirm_token(application)}/").status_code == 404


def test_a_stale_answer_form_never_claims_an_earlier_answer_was_this_one(client, agent, server_admin):
    application = make_application()
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Who referred you?")
    workflow.add_information(application, [], "Sam did.")
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Please send a photo of your ID.")
    token = links.status_token(application)
    workflow.withdraw(application)  # in another tab, with the answer form still open here
    page = client.post(f"/status/{token}/", {"message": "Here is the photo."}, follow=True).content.decode()
    assert "Staff are no longer waiting for information from you" in page
    assert "already received" not in page
