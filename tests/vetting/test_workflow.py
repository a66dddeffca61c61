from __future__ import annotations

import datetime
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.forms.models import model_to_dict
from django.utils import timezone

from evidence.validation import validate_upload
from notifications.models import OutboundEmail
from tests.factories import PDF_BYTES, make_application, upload
from vetting import models, workflow
from vetting.models import Application, AuditEvent, StaffNote

pytestmark = pytest.mark.django_db
Status = Application.Status


def verification(**overrides) -> dict:
    values = {
        "identity_verified": True,
        "method": Application.VerificationMethod.VIDEO,
        "verified_on": datetime.date(2026, 11, 20),
        "location": "Jitsi",
        "score": 4,
        "recommendation": Application.Recommendation.APPROVE,
        "notes": "Matched the passport photo on video.",
    }
    values.update(overrides)
    return values


def recommended_by(agent) -> Application:
    application = make_application()
    workflow.claim(application, agent)
    workflow.record_verification(application, agent, **verification())
    return application


def actions(application: Application) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="application", target_id=str(application.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def assert_unchanged(application: Application) -> None:
    before = model_to_dict(application)
    application.refresh_from_db()
    assert model_to_dict(application) == before


# Confirmation ---------------------------------------------------------------


def test_confirming_the_email_puts_the_application_in_the_queue_and_tells_staff():
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    assert workflow.confirm_email(application) is True
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED
    assert application.email_confirmed_at is not None
    staff_mail = OutboundEmail.objects.filter(template="staff-new-application")
    assert sorted(staff_mail.values_list("to", flat=True)) == ["lead@staff.example", "queue@staff.example"]
    assert f"/admin/vetting/application/{application.pk}/change/" in staff_mail.first().body_text
    assert actions(application) == ["application.confirmed"]


def test_confirming_twice_changes_nothing_the_second_time():
    application = make_application(status=Status.UNCONFIRMED, email_confirmed_at=None)
    workflow.confirm_email(application)
    assert workflow.confirm_email(application) is False
    assert OutboundEmail.objects.filter(template="staff-new-application").count() == 2  # two recipients, once
    assert actions(application) == ["application.confirmed"]


# Claim and release ----------------------------------------------------------


def test_agent_claims_a_submitted_application(agent):
    application = make_application()
    workflow.claim(application, agent)
    application.refresh_from_db()
    assert application.status == Status.IN_REVIEW
    assert application.claimed_by == agent
    assert actions(application) == ["application.claimed"]


@pytest.mark.parametrize("role", ["inviting_admin", "outsider"])
def test_staff_without_the_claim_permission_cannot_claim(request, role):
    application = make_application()
    with pytest.raises(workflow.WorkflowError, match="Your role does not allow “Claim”"):
        workflow.claim(application, request.getfixturevalue(role))
    assert_unchanged(application)
    assert actions(application) == []


def test_claiming_a_claimed_application_is_refused_with_who_has_it(agent, second_agent):
    application = make_application()
    workflow.claim(application, agent)
    stale_copy = Application.objects.get(pk=application.pk)
    stale_copy.status = Status.SUBMITTED  # what the second agent's page still showed
    with pytest.raises(workflow.AlreadyDecided, match=r"now in review \(by agent\)"):
        workflow.claim(stale_copy, second_agent)
    application.refresh_from_db()
    assert application.claimed_by == agent


def test_an_unverified_identity_may_still_be_recommended_for_rejection_or_more_checks(agent):
    for recommendation in (
        Application.Recommendation.REJECT,
        Application.Recommendation.FURTHER_VERIFICATION,
    ):
        application = make_application()
        workflow.claim(application, agent)
        workflow.record_verification(
            application, agent, **verification(identity_verified=False, recommendation=recommendation)
        )
        application.refresh_from_db()
        assert (application.status, application.recommendation) == (Status.RECOMMENDED, recommendation)


def test_a_second_tab_is_told_the_claim_was_its_own_not_someone_elses(agent):
    application = make_application()
    stale_tab = Application.objects.get(pk=application.pk)
    workflow.claim(application, agent)
    with pytest.raises(workflow.AlreadyDecided) as refusal:
        workflow.claim(stale_tab, agent)
    assert str(refusal.value) == (
        "Already done in another tab or window: the application is now in review (by you). Nothing was changed."
    )


def test_a_lost_race_names_who_made_the_new_state_not_who_decided_earlier(
    approved, superadmin, inviting_admin
):
    # After a reopen decided_by is empty and claimed_by is the agent: neither reopened it.
    stale_page = Application.objects.get(pk=approved.pk)
    workflow.reopen(approved, superadmin, "Second look")
    with pytest.raises(
        workflow.AlreadyDecided,
        match=r"^Someone else got there first: the application is now recommended \(by superadmin\)\.",
    ):
        workflow.issue_invitation(stale_page, inviting_admin)


def test_a_role_that_may_not_take_the_action_is_told_so_even_from_a_stale_page(approved, inviting_admin):
    stale_page = Application.objects.get(pk=approved.pk)
    stale_page.status = Status.IN_REVIEW  # a page from before the decision
    with pytest.raises(workflow.WorkflowError) as refusal:
        workflow.release(stale_page, inviting_admin)
    assert not isinstance(refusal.value, workflow.AlreadyDecided)
    assert str(refusal.value) == "Your role does not allow “Release”."


def test_a_withdrawal_while_staff_look_is_put_down_to_the_applicant(agent, server_admin):
    application = recommended_by(agent)
    stale_tab = Application.objects.get(pk=application.pk)
    workflow.withdraw(application)
    with pytest.raises(workflow.AlreadyDecided, match=r"now withdrawn \(by the applicant\)"):
        workflow.approve(stale_tab, server_admin)


def test_only_the_claimer_or_a_server_admin_may_release(agent, second_agent, server_admin):
    application = make_application()
    workflow.claim(application, agent)
    with pytest.raises(workflow.WorkflowError, match="Only the person who claimed"):
        workflow.release(application, second_agent)
    workflow.release(application, server_admin)
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED
    assert application.claimed_by is None
    assert actions(application) == ["application.claimed", "application.released"]


# Verification ----------------------------------------------------------------


def test_the_claimer_records_the_verification(agent):
    application = recommended_by(agent)
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED
    assert application.identity_verified is True
    assert application.verification_method == "video"
    assert application.score == 4
    assert application.recommendation == "approve"
    assert application.verification_recorded_by == agent
    assert application.verification_recorded_at is not None
    assert actions(application)[-1] == "application.verification_recorded"


def test_another_agent_cannot_record_a_verification_on_someone_elses_claim(agent, second_agent):
    application = make_application()
    workflow.claim(application, agent)
    with pytest.raises(workflow.WorkflowError, match="Only the person who claimed"):
        workflow.record_verification(application, second_agent, **verification())
    assert_unchanged(application)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"score": 6}, "between 1 and 5"),
        ({"score": 0}, "between 1 and 5"),
        ({"method": "telepathy"}, "how the person was verified"),
        ({"recommendation": "maybe"}, "Choose a recommendation"),
        ({"verified_on": datetime.date(2999, 1, 1)}, "cannot be in the future"),
        ({"identity_verified": False}, "cannot recommend approval when the identity was not verified"),
    ],
)
def test_invalid_verification_is_refused_and_changes_nothing(agent, bad, message):
    application = make_application()
    workflow.claim(application, agent)
    with pytest.raises(workflow.WorkflowError, match=message):
        workflow.record_verification(application, agent, **verification(**bad))
    assert_unchanged(application)


def test_a_verification_dated_tomorrow_is_refused_and_one_dated_today_is_recorded(agent):
    # The admin's verification form has no date check of its own: this is the only guard.
    application = make_application()
    workflow.claim(application, agent)
    tomorrow = timezone.localdate() + datetime.timedelta(days=1)

    with pytest.raises(workflow.WorkflowError, match="cannot be in the future"):
        workflow.record_verification(application, agent, **verification(verified_on=tomorrow))
    assert_unchanged(application)

    workflow.record_verification(application, agent, **verification(verified_on=timezone.localdate()))
    assert application.status == Status.RECOMMENDED
    assert application.verified_on == timezone.localdate()


# Requests for information ----------------------------------------------------


def test_server_admin_requests_information_and_the_applicant_is_mailed(agent, server_admin):
    application = recommended_by(agent)
    workflow.add_note(application, agent, "Private: the referee sounded unsure.")
    workflow.request_information(application, server_admin, "Please send a photo of your ID.")
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED
    mail = OutboundEmail.objects.get(template="information-requested")
    assert mail.to == application.email
    assert "Please send a photo of your ID." in mail.body_text
    assert "/status/" in mail.body_text
    assert "referee sounded unsure" not in mail.body_text + mail.body_html


def test_agents_cannot_request_information(agent):
    application = make_application()
    workflow.claim(application, agent)
    with pytest.raises(workflow.WorkflowError, match="does not allow “Request information”"):
        workflow.request_information(application, agent, "Who are you?")


def test_an_empty_question_is_refused(agent, server_admin):
    application = recommended_by(agent)
    with pytest.raises(workflow.WorkflowError, match="Write the question"):
        workflow.request_information(application, server_admin, "   ")
    assert_unchanged(application)


def test_applicant_adding_information_puts_the_application_back_in_the_queue(agent, server_admin):
    application = recommended_by(agent)
    workflow.request_information(application, server_admin, "Send your ID.")
    workflow.add_information(application, [validate_upload(upload("id.pdf", PDF_BYTES))], "Here it is.")
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED
    assert application.claimed_by is None
    assert application.evidence.get().uploaded_by is None
    event = AuditEvent.objects.get(action="application.information_added")
    assert event.actor_kind == "applicant"
    assert event.details == {"evidence": 1, "message": "Here it is."}


def test_an_empty_answer_is_refused_by_the_workflow_and_changes_nothing(agent, server_admin):
    # The status page's form refuses it too; the workflow is the rule for every other caller.
    application = make_application()
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Who referred you?")
    with pytest.raises(workflow.WorkflowError, match="Add a file or write a message"):
        workflow.add_information(application, [], "   ")
    assert_unchanged(application)
    assert application.status == Status.INFO_REQUESTED
    assert not application.information_replies.exists()


def test_adding_information_when_none_was_asked_is_refused():
    application = make_application()
    with pytest.raises(workflow.WorkflowError, match="not waiting for information"):
        workflow.add_information(application, [], "Hello")
    assert_unchanged(application)


# Decisions -------------------------------------------------------------------


def test_server_admin_approves_a_recommended_application(agent, server_admin):
    application = recommended_by(agent)
    workflow.approve(application, server_admin)
    application.refresh_from_db()
    assert application.status == Status.APPROVED
    assert application.decided_by == server_admin
    mail = OutboundEmail.objects.get(template="application-approved")
    assert mail.to == application.email
    assert "an admin will contact you" in mail.body_text
    assert actions(application)[-1] == "application.approved"


def test_four_eyes_the_verifier_cannot_approve_or_reject(server_admin):
    application = make_application()
    workflow.claim(application, server_admin)
    workflow.record_verification(application, server_admin, **verification())
    with pytest.raises(workflow.WorkflowError, match="four-eyes"):
        workflow.approve(application, server_admin)
    with pytest.raises(workflow.WorkflowError, match="four-eyes"):
        workflow.reject(application, server_admin, "Changed my mind")
    assert_unchanged(application)


def test_four_eyes_the_verifier_cannot_send_their_recommendation_back_for_information(
    server_admin, second_server_admin
):
    application = make_application()
    workflow.claim(application, server_admin)
    workflow.record_verification(application, server_admin, **verification())
    with pytest.raises(workflow.WorkflowError, match="four-eyes"):
        workflow.request_information(application, server_admin, "Who referred you?")
    assert_unchanged(application)
    # Another server admin deciding may ask.
    workflow.request_information(application, second_server_admin, "Who referred you?")
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED


def test_the_claimer_still_asks_for_information_while_verifying(server_admin):
    application = make_application()
    workflow.claim(application, server_admin)
    workflow.request_information(application, server_admin, "Which chapter?")
    application.refresh_from_db()
    assert application.status == Status.INFO_REQUESTED


def test_the_verifier_is_told_why_they_cannot_decide(server_admin, second_server_admin):
    application = make_application()
    workflow.claim(application, server_admin)
    workflow.record_verification(application, server_admin, **verification())
    assert workflow.refusals(application, server_admin) == [
        "You recorded the verification of this application, so another server admin must decide it "
        "(four-eyes rule)."
    ]
    assert workflow.refusals(application, second_server_admin) == []


@pytest.mark.parametrize(
    ("name", "recommendation", "identity_verified", "warned"),
    [
        ("approve", "approve", True, None),
        ("approve", "reject", True, "The verification recommended “Reject”: approving goes against"),
        ("approve", "further-verification", True, "recommended “Further verification”: approving goes"),
        ("reject", "approve", True, "The verification recommended “Approve”: rejecting goes against"),
        ("reject", "reject", True, None),
        ("reject", "", None, None),
    ],
)
def test_a_decision_against_the_recommendation_is_warned_about(
    name, recommendation, identity_verified, warned
):
    application = Application(recommendation=recommendation, identity_verified=identity_verified)
    warning = workflow.decision_warning(name, application)
    assert (warning is None) if warned is None else warned in warning


def test_an_agent_cannot_decide(agent, second_agent):
    application = recommended_by(agent)
    with pytest.raises(workflow.WorkflowError, match="does not allow “Approve”"):
        workflow.approve(application, second_agent)


def test_approve_needs_a_recommendation_first(server_admin):
    application = make_application()
    with pytest.raises(workflow.WorkflowError, match="not possible while the application is in the queue"):
        workflow.approve(application, server_admin)
    assert_unchanged(application)


def test_reject_needs_a_reason_and_shares_only_the_chosen_message(agent, server_admin):
    application = recommended_by(agent)
    with pytest.raises(workflow.WorkflowError, match="A reason is required"):
        workflow.reject(application, server_admin, "  ")
    assert_unchanged(application)

    workflow.reject(
        application,
        server_admin,
        "Referee could not vouch (internal).",
        "We could not confirm your referral.",
    )
    application.refresh_from_db()
    assert application.status == Status.REJECTED
    assert application.decision_reason == "Referee could not vouch (internal)."
    mail = OutboundEmail.objects.get(template="application-rejected")
    assert "We could not confirm your referral." in mail.body_text
    assert "internal" not in mail.body_text + mail.body_html


def test_obvious_junk_can_be_rejected_straight_from_the_queue(server_admin):
    application = make_application()
    workflow.reject(application, server_admin, "Spam")
    application.refresh_from_db()
    assert application.status == Status.REJECTED
    assert "A note from staff" not in OutboundEmail.objects.get(template="application-rejected").body_text


def test_only_a_superadmin_reopens_a_decision_with_a_reason(agent, server_admin, superadmin):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Unclear")
    with pytest.raises(workflow.WorkflowError, match="does not allow “Reopen”"):
        workflow.reopen(application, server_admin, "Second look")
    with pytest.raises(workflow.WorkflowError, match="A reason is required"):
        workflow.reopen(application, superadmin, "")
    workflow.reopen(application, superadmin, "The referee called back.")
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED
    assert application.decided_by is None
    event = AuditEvent.objects.get(action="application.reopened")
    assert event.details["reason"] == "The referee called back."
    assert event.details["previous_status"] == "rejected"


def test_reopening_clears_the_old_decision_and_keeps_it_in_the_audit_trail(agent, server_admin, superadmin):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Referee could not be reached", "Please apply again.")
    rejected_at = Application.objects.get(pk=application.pk).decided_at

    workflow.reopen(application, superadmin, "The referee called back.")

    application.refresh_from_db()
    assert (application.decided_by, application.decided_at) == (None, None)
    assert (application.decision_reason, application.message_to_applicant) == ("", "")
    assert AuditEvent.objects.get(action="application.rejected").details["reason"] == (
        "Referee could not be reached"
    )
    assert AuditEvent.objects.get(action="application.reopened").details == {
        "reason": "The referee called back.",
        "previous_status": "rejected",
        "previous_decided_by": "server_admin",
        "previous_decided_at": rejected_at.isoformat(),
        "previous_decision_reason": "Referee could not be reached",
        "previous_message_to_applicant": "Please apply again.",
    }


def test_reopening_a_decision_taken_without_a_verification_puts_it_back_in_the_queue_unclaimed(
    agent, server_admin, superadmin
):
    application = make_application()
    workflow.claim(application, agent)
    workflow.reject(application, server_admin, "Could not be verified", "")
    workflow.reopen(application, superadmin, "Rejected too fast.")
    application.refresh_from_db()
    assert application.status == Status.SUBMITTED
    assert (application.claimed_by, application.claimed_at) == (None, None)


def test_an_erased_application_cannot_be_reopened(agent, server_admin, superadmin):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Unclear")
    workflow.erase_application(application)
    assert "reopen" not in dict(workflow.allowed_actions(application, superadmin))
    with pytest.raises(workflow.WorkflowError, match="erased at the applicant's request"):
        workflow.reopen(application, superadmin, "Second look")
    application.refresh_from_db()
    assert application.status == Status.REJECTED
    assert not AuditEvent.objects.filter(action="application.reopened").exists()


def test_an_erased_application_reopened_before_that_was_refused_is_decided_without_mail(agent, server_admin):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Unclear")
    workflow.erase_application(application)
    # What a superadmin's reopen used to leave behind.
    Application.objects.filter(pk=application.pk).update(
        status=Status.RECOMMENDED, decided_by=None, decided_at=None
    )
    application.refresh_from_db()
    workflow.approve(application, server_admin)
    application.refresh_from_db()
    assert application.status == Status.APPROVED
    assert not OutboundEmail.objects.filter(template="application-approved").exists()


# An address stored before it was checked as mail uses it -------------------------

# Each with what the refusal says is wrong with it, and the way out it names: an operator
# removes an invisible character (correct_email); nothing mends a domain IDNA cannot encode.
CORRECTED_BY_AN_OPERATOR = (
    "can be done until it is corrected. It cannot be changed here: ask an operator to run "
    "“manage.py correct_email {reference} <address>”, then try again."
)
APPLIES_AGAIN = (
    "can be done with it, and no correction can make it an address the applicant gave: they need to "
    "apply again with another one."
)
UNMAILABLE_ADDRESSES = {
    "rlm": (
        "alex@applicant.example\u200f",
        "it contains an invisible character, U+200F RIGHT-TO-LEFT MARK",
        CORRECTED_BY_AN_OPERATOR,
    ),
    "64-char-non-ascii-label": (
        "alex@" + "\u00e4" * 64 + ".de",
        "its domain cannot be written in the form mail needs (IDNA)",
        APPLIES_AGAIN,
    ),
}


def with_stored_address(application: Application, address: str) -> Application:
    """As a row written before validate_sendable_address existed: past every form's check."""
    Application.objects.filter(pk=application.pk).update(email=address)
    application.refresh_from_db()
    return application


DECISIONS_THAT_MAIL = {
    "request_information": lambda application, user: workflow.request_information(
        application, user, "Which meetup was it?"
    ),
    "approve": lambda application, user: workflow.approve(application, user),
    "reject": lambda application, user: workflow.reject(application, user, "No referee", "Sorry."),
}


@pytest.mark.parametrize(
    ("address", "why", "way_out"), UNMAILABLE_ADDRESSES.values(), ids=UNMAILABLE_ADDRESSES.keys()
)
@pytest.mark.parametrize("name", DECISIONS_THAT_MAIL)
def test_a_change_that_would_mail_an_address_mail_cannot_carry_is_refused_and_changes_nothing(
    agent, server_admin, name, address, why, way_out
):
    application = with_stored_address(recommended_by(agent), address)
    before = actions(application)
    with pytest.raises(workflow.WorkflowError) as refused:
        DECISIONS_THAT_MAIL[name](application, server_admin)
    assert str(refused.value) == (
        f"The applicant's stored e-mail address, “{address}”, cannot be mailed: {why}. Nothing that mails "
        "the applicant (a request for information, a decision, the token) "
        + way_out.format(reference=application.reference)
    )
    assert_unchanged(application)
    assert actions(application) == before
    assert not OutboundEmail.objects.exists()


def test_staff_are_told_before_choosing_that_the_applicant_cannot_be_mailed(agent, server_admin):
    application = with_stored_address(make_application(), "alex@applicant.example\u200f")
    # What mails nobody goes on: the claim, the verification.
    workflow.claim(application, agent)
    workflow.record_verification(application, agent, **verification())
    application.refresh_from_db()
    assert application.status == Status.RECOMMENDED
    # Request information, approve and reject would mail the applicant: not offered, and said once.
    assert workflow.allowed_actions(application, server_admin) == []
    [refusal] = workflow.refusals(application, server_admin)
    assert refusal.startswith("The applicant's stored e-mail address, “alex@applicant.example\u200f”, cannot")


def test_correct_email_cannot_mend_a_domain_idna_cannot_encode(agent):
    address, _why, _way_out = UNMAILABLE_ADDRESSES["64-char-non-ascii-label"]
    application = with_stored_address(recommended_by(agent), address)
    with pytest.raises(CommandError, match="The new address must be the stored one without"):
        call_command("correct_email", application.reference, "alex@example.de")
    assert_unchanged(application)


def test_an_operator_corrects_the_address_and_the_refused_decision_goes_through(agent, server_admin):
    application = with_stored_address(recommended_by(agent), "alex@applicant.example\u200f")
    out = io.StringIO()
    call_command("correct_email", application.reference.lower(), "alex@applicant.example", stdout=out)
    assert (
        f"Application {application.reference} now has the address alex@applicant.example." in out.getvalue()
    )
    application.refresh_from_db()
    assert application.email == "alex@applicant.example"
    event = AuditEvent.objects.get(action="application.email_corrected")
    assert event.actor_kind == AuditEvent.ActorKind.SYSTEM
    assert event.details == {
        "previous": "alex@applicant.example\u200f",
        "corrected": "alex@applicant.example",
    }
    workflow.approve(application, server_admin)
    assert OutboundEmail.objects.get(template="application-approved").to == "alex@applicant.example"


@pytest.mark.parametrize(
    ("reference", "address", "message"),
    [
        ("NOSUCHRF", "alex@applicant.example", "No application has the reference 'NOSUCHRF'."),
        (None, "alex@applicant.example\u200f", "is not an address mail can be sent to."),
        (None, "not an address", "is not an address mail can be sent to."),
        # An operator asked to put another address would hand it the applicant's status link.
        (
            None,
            "stranger@elsewhere.example",
            "The new address must be the stored one without the characters mail cannot carry "
            "(“alex@applicant.example”): any other would receive the applicant's status link.",
        ),
        (None, "alex@applicant.exampl", "The new address must be the stored one without"),
    ],
)
def test_correct_email_refuses_what_it_cannot_do_and_changes_nothing(agent, reference, address, message):
    application = with_stored_address(recommended_by(agent), "alex@applicant.example\u200f")
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("correct_email", reference or application.reference, address)
    assert_unchanged(application)
    assert not AuditEvent.objects.filter(action="application.email_corrected").exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("stranger@elsewhere.example", "stored address can be mailed: correct_email only corrects"),
        ("alex@applicant.example", "already has this address."),
    ],
)
def test_correct_email_leaves_an_address_mail_can_carry_alone(agent, address, message):
    application = recommended_by(agent)
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("correct_email", application.reference, address)
    assert_unchanged(application)
    assert not AuditEvent.objects.filter(action="application.email_corrected").exists()


def test_an_applicant_with_such_an_address_still_withdraws_without_the_confirmation_mail(caplog):
    # Their own act, on the page that shows the result: a refusal worded for staff would
    # leave them with an application they cannot close.
    application = with_stored_address(make_application(), "alex@applicant.example\u200f")
    workflow.withdraw(application)
    application.refresh_from_db()
    assert application.status == Status.WITHDRAWN
    assert not OutboundEmail.objects.exists()
    assert f"Application {application.reference} was withdrawn without its confirmation mail" in caplog.text


def test_a_bad_address_does_not_hold_up_an_erased_application_which_mails_nobody(agent, server_admin):
    application = recommended_by(agent)
    workflow.erase_application(application)
    # Erasure blanks the address, which is no address at all; nobody is mailed anyway.
    Application.objects.filter(pk=application.pk).update(status=Status.RECOMMENDED)
    application.refresh_from_db()
    assert workflow.refusals(application, server_admin) == []
    workflow.approve(application, server_admin)
    application.refresh_from_db()
    assert application.status == Status.APPROVED


# Withdrawal ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        Status.UNCONFIRMED,
        Status.SUBMITTED,
        Status.IN_REVIEW,
        Status.INFO_REQUESTED,
        Status.RECOMMENDED,
        Status.APPROVED,
    ],
)
def test_applicant_withdraws_an_open_application(status):
    application = make_application(status=status)
    workflow.withdraw(application)
    application.refresh_from_db()
    assert application.status == Status.WITHDRAWN
    assert OutboundEmail.objects.get(template="application-withdrawn").to == application.email
    assert AuditEvent.objects.get(action="application.withdrawn").actor_kind == "applicant"


@pytest.mark.parametrize("status", [Status.REJECTED, Status.WITHDRAWN, Status.JOINED])
def test_a_closed_application_cannot_be_withdrawn(status):
    application = make_application(status=status)
    with pytest.raises(workflow.WorkflowError, match="can no longer be withdrawn"):
        workflow.withdraw(application)
    assert_unchanged(application)
    assert not OutboundEmail.objects.exists()


# Notes and roles ---------------------------------------------------------------


def test_notes_are_appended_with_author_and_audited(agent):
    application = make_application()
    workflow.add_note(application, agent, "Met at the Lisbon meetup.")
    note = StaffNote.objects.get()
    assert (note.author, note.text) == (agent, "Met at the Lisbon meetup.")
    assert actions(application) == ["note.added"]


def test_inviting_admins_cannot_add_notes(inviting_admin):
    with pytest.raises(workflow.WorkflowError, match="does not allow adding notes"):
        workflow.add_note(make_application(), inviting_admin, "Hi")


ROLE_ACTIONS = [
    # (status, role, labels the role sees)
    (Status.SUBMITTED, "agent", ["Claim"]),
    (Status.SUBMITTED, "server_admin", ["Claim", "Reject"]),
    (Status.SUBMITTED, "inviting_admin", []),
    (Status.SUBMITTED, "superadmin", ["Claim", "Reject"]),
    (Status.IN_REVIEW, "agent", ["Release", "Record verification"]),
    (Status.IN_REVIEW, "second_agent", []),
    (Status.IN_REVIEW, "server_admin", ["Release", "Request information", "Reject"]),
    (Status.RECOMMENDED, "agent", []),
    (Status.RECOMMENDED, "server_admin", ["Request information", "Approve", "Reject"]),
    (Status.RECOMMENDED, "inviting_admin", []),
    (Status.APPROVED, "server_admin", []),
    (Status.APPROVED, "superadmin", ["Reopen", "Issue invitation"]),
    (Status.APPROVED, "inviting_admin", ["Issue invitation"]),
    (Status.INVITED, "inviting_admin", ["Revoke invitation"]),
    (Status.INVITED, "server_admin", []),
    (Status.REJECTED, "superadmin", ["Reopen"]),
    (Status.WITHDRAWN, "superadmin", []),
]


@pytest.mark.parametrize(("status", "role", "labels"), ROLE_ACTIONS)
def test_each_role_sees_exactly_its_actions(request, agent, status, role, labels):
    application = make_application(status=status)
    if status == Status.IN_REVIEW:
        application.claimed_by = agent
        application.claimed_at = timezone.now()
        application.save()
    user = request.getfixturevalue(role)
    assert [label for _name, label in workflow.allowed_actions(application, user)] == labels


def test_references_are_eight_characters_that_cannot_be_misread():
    # Crockford's base32: without I, L, O or U, easy to read aloud or type.
    references = [make_application().reference for _ in range(100)]
    assert {len(reference) for reference in references} == {8}
    assert set("".join(references)) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_a_reference_drawn_twice_is_drawn_again_not_an_error(monkeypatch):
    taken = make_application().reference
    draws = iter([taken, "7K3M9QXZ"])
    monkeypatch.setattr(models, "new_reference", lambda: next(draws))
    assert make_application(email="robin@applicant.example").reference == "7K3M9QXZ"


def test_the_audit_trail_says_whose_claim_was_released_what_was_verified_and_what_was_shared(
    agent, second_agent, server_admin
):
    application = make_application()
    workflow.claim(application, agent)
    workflow.release(application, server_admin)  # the agent is on leave
    workflow.claim(application, second_agent)
    workflow.record_verification(application, second_agent, **verification(score=2))
    workflow.reject(application, server_admin, "Could not vouch", "Please apply again next year.")
    events = AuditEvent.objects.filter(target_id=str(application.pk)).order_by("id")
    released, verified, rejected = (
        events.get(action=action)
        for action in ("application.released", "application.verification_recorded", "application.rejected")
    )
    assert (released.actor, released.details) == (server_admin, {"claimed_by": "agent"})
    assert (verified.actor, verified.details) == (
        second_agent,
        {
            "identity_verified": True,
            "method": Application.VerificationMethod.VIDEO,
            "score": 2,
            "recommendation": Application.Recommendation.APPROVE,
        },
    )
    assert (rejected.actor, rejected.details) == (
        server_admin,
        {"reason": "Could not vouch", "shared_with_applicant": True},
    )


def test_a_blank_message_to_the_applicant_is_not_shared(agent, server_admin):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Could not vouch", "  \n ")
    application.refresh_from_db()
    assert application.message_to_applicant == ""
    event = AuditEvent.objects.get(action="application.rejected")
    assert event.details["shared_with_applicant"] is False
