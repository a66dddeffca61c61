"""The applicant's rights through the status link: a copy of their data, and erasure."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.utils import timezone

from evidence.models import Evidence
from evidence.validation import validate_upload
from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from tests.factories import ERASED_FIELDS, PDF_BYTES, make_application, upload
from tests.vetting.test_apply import form_data
from tests.vetting.test_workflow import recommended_by
from vetting import audit, links, workflow
from vetting.models import Application, AuditEvent, StaffNote
from vetting.privacy import PRIVACY_NOTICE_VERSION

pytestmark = pytest.mark.django_db


def apply_with_a_file(client) -> Application:
    response = client.post("/apply/", {**form_data(), "evidence_1": upload("passport.pdf", PDF_BYTES)})
    assert response.status_code == 302
    application = Application.objects.get()
    workflow.confirm_email(application)
    return application


def status_path(application: Application, suffix: str = "") -> str:
    return f"/status/{links.status_token(application)}/{suffix}"


def open_zip(response) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_consent_records_the_privacy_notice_version_and_time(client):
    application = apply_with_a_file(client)
    assert application.privacy_notice_version == PRIVACY_NOTICE_VERSION
    assert application.consent_given_at is not None


def test_privacy_notice_states_version_retention_and_rights(client, settings):
    settings.EVIDENCE_RETENTION_DAYS = 90
    page = client.get("/privacy/").content.decode()
    assert f"Version {PRIVACY_NOTICE_VERSION}" in page
    assert (
        "deleted 90 days after your application is decided (approved or not), or after you withdraw it"
        in page
    )
    assert "the whole application is deleted after 7 days, also if you withdrew it" in page
    assert "PDF and Word files are kept exactly as you send them" in page
    assert "download your data" in page and "erase your application" in page


def test_apply_page_links_the_privacy_notice(client):
    assert 'href="/privacy/"' in client.get("/apply/").content.decode()


def test_download_my_data_has_own_fields_files_and_history_without_staff(client, agent, server_admin):
    application = apply_with_a_file(client)
    workflow.claim(application, agent)
    workflow.add_note(application, agent, "Seemed nervous on the call")
    workflow.request_information(application, server_admin, "Please send a recent photo.")
    response = client.get(status_path(application, "my-data/"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert f"application-{application.reference}.zip" in response["Content-Disposition"]
    archive = open_zip(response)
    names = set(archive.namelist())
    assert {"README.txt", "application.json", "evidence.json", "history.json"} <= names
    own = json.loads(archive.read("application.json"))
    assert own["full_name"] == "Alex Example"
    assert own["privacy_notice_version"] == PRIVACY_NOTICE_VERSION
    assert own["information_request"] == "Please send a recent photo."
    assert archive.read("evidence/1-passport.pdf") == PDF_BYTES
    history = json.loads(archive.read("history.json"))
    actions = [entry["action"] for entry in history]
    assert actions[:3] == ["application.submitted", "application.confirmed", "application.claimed"]
    assert "note.added" not in actions
    by = {entry["action"]: entry["by"] for entry in history}
    assert by["application.submitted"] == "You"
    assert by["application.claimed"] == "Vetting agent"
    everything = b"".join(archive.read(name) for name in names).decode("utf-8", "replace")
    for secret in ["agent", "server_admin", "Seemed nervous", "127.0.0.1"]:
        assert secret not in everything.replace("Vetting agent", "").replace("Server admin", "")
    assert AuditEvent.objects.filter(action="application.data_exported").count() == 1


def test_download_my_data_leaves_out_the_notes_staff_wrote_on_files_they_added(client, agent):
    application = make_application()
    passport = validate_upload(upload("passport.pdf", PDF_BYTES), note="Seen in person")
    Evidence.objects.store(application, passport, uploaded_by=agent)
    Evidence.objects.store(application, validate_upload(upload("letter.pdf", PDF_BYTES), note="My letter"))
    listing = json.loads(open_zip(client.get(status_path(application, "my-data/"))).read("evidence.json"))
    notes = {entry["original_name"]: entry["note"] for entry in listing}
    assert notes == {"passport.pdf": "", "letter.pdf": "My letter"}


def test_no_staff_note_is_written_about_an_erased_application(agent):
    application = make_application()
    workflow.erase_application(application)
    events = AuditEvent.objects.count()
    with pytest.raises(workflow.WorkflowError, match="erased this application"):
        workflow.add_note(application, agent, "Saw them again at the meetup.")
    assert not StaffNote.objects.exists()
    assert AuditEvent.objects.count() == events


def test_erase_asks_first_then_deletes_files_and_personal_fields(client, settings, agent):
    application = apply_with_a_file(client)
    workflow.claim(application, agent)
    workflow.add_note(application, agent, "Met at the meetup")
    stored = Path(settings.EVIDENCE_ROOT) / Evidence.objects.get().file.name
    assert stored.exists()

    confirm_page = client.get(status_path(application, "erase/"))
    assert "Yes, erase my application" in confirm_page.content.decode()
    assert Application.objects.get().erased_at is None

    response = client.post(status_path(application, "erase/"))
    assert response.status_code == 302
    application.refresh_from_db()
    assert application.erased_at is not None
    assert application.status == Application.Status.WITHDRAWN
    assert application.reference
    for field in ("full_name", "email", "matrix_username", "phone", "referral", "statement"):
        assert getattr(application, field) == ""
    assert not stored.exists()
    assert not Evidence.objects.exists()
    assert not StaffNote.objects.exists()
    assert not OutboundEmail.objects.filter(to="alex@applicant.example").exists()

    page = client.get(status_path(application)).content.decode()
    assert "You erased this application" in page
    assert "Alex Example" not in page


def test_erasure_blanks_every_field_the_applicant_gave_or_staff_wrote_about_them(agent, server_admin):
    application = recommended_by(agent)
    Application.objects.filter(pk=application.pk).update(matrix_username="alex", phone="+351 900 000 000")
    application.refresh_from_db()
    workflow.request_information(application, server_admin, "Please send a photo of your ID.")
    workflow.reject(application, server_admin, "The referee could not vouch.", "We could not confirm you.")
    application.refresh_from_db()
    assert all(getattr(application, name) for name in ERASED_FIELDS)

    workflow.erase_application(application)

    application.refresh_from_db()
    kept = {name: getattr(application, name) for name in ERASED_FIELDS}
    assert kept == dict.fromkeys(ERASED_FIELDS, "")
    assert application.status == Application.Status.REJECTED


def test_erasure_keeps_an_anonymised_audit_trail_that_still_verifies(client, agent):
    application = apply_with_a_file(client)
    workflow.claim(application, agent)
    client.post(status_path(application, "erase/"))
    events = AuditEvent.objects.filter(target_type="application", target_id=str(application.pk))
    actions = list(events.order_by("id").values_list("action", flat=True))
    assert actions == [
        "application.submitted",
        "application.confirmed",
        "application.claimed",
        "application.erased",
    ]
    for event in events.exclude(action="application.erased"):
        assert event.ip is None and event.details == {}
    assert audit.check_chain().broken is None
    assert "Alex" not in json.dumps(list(events.values("details", "ip")))


def test_a_changed_redacted_event_still_breaks_the_chain(client):
    application = apply_with_a_file(client)
    client.post(status_path(application, "erase/"))
    AuditEvent.objects.filter(action="application.confirmed").update(action="application.approved")
    assert audit.check_chain().broken is not None


def test_erasure_is_refused_during_review_when_the_community_says_so(client, settings, agent):
    settings.ERASURE_BLOCKED_DURING_REVIEW = True
    application = apply_with_a_file(client)
    workflow.claim(application, agent)
    page = client.get(status_path(application, "erase/")).content.decode()
    assert "Staff are deciding on your application" in page
    response = client.post(status_path(application, "erase/"))
    assert response.status_code == 409
    application.refresh_from_db()
    assert application.erased_at is None and application.full_name == "Alex Example"
    assert Evidence.objects.count() == 1


def test_erasure_is_allowed_during_review_by_default(client, agent):
    application = apply_with_a_file(client)
    workflow.claim(application, agent)
    assert client.post(status_path(application, "erase/")).status_code == 302


def test_blocked_policy_still_allows_erasing_a_closed_application(settings):
    settings.ERASURE_BLOCKED_DURING_REVIEW = True
    application = make_application(status=Application.Status.WITHDRAWN)
    workflow.erase_application(application)
    assert application.erased_at is not None


@pytest.mark.parametrize(
    ("status", "blocked"),
    [
        (Application.Status.SUBMITTED, True),
        (Application.Status.IN_REVIEW, True),
        (Application.Status.INFO_REQUESTED, True),
        (Application.Status.RECOMMENDED, True),
        (Application.Status.APPROVED, False),
        (Application.Status.REJECTED, False),
    ],
)
def test_the_review_policy_blocks_erasure_until_staff_have_decided(settings, status, blocked):
    settings.ERASURE_BLOCKED_DURING_REVIEW = True
    application = make_application(status=status)
    refusal = workflow.erasure_refusal(application)
    if blocked:
        assert refusal.startswith("Staff are deciding on your application")
        with pytest.raises(workflow.WorkflowError, match="Staff are deciding"):
            workflow.erase_application(application)
        application.refresh_from_db()
        assert application.erased_at is None
    else:
        assert refusal is None
        workflow.erase_application(application)
        assert application.erased_at is not None


def test_erasure_waits_while_an_invitation_token_is_live(client):
    application = make_application(status=Application.Status.INVITED)
    response = client.post(status_path(application, "erase/"))
    assert response.status_code == 409
    assert "Your invitation to the Matrix server is still open" in response.content.decode()
    application.refresh_from_db()
    assert application.erased_at is None


def test_erasing_twice_is_refused_and_download_is_gone(client):
    application = apply_with_a_file(client)
    client.post(status_path(application, "erase/"))
    assert client.post(status_path(application, "erase/")).status_code == 409
    assert client.get(status_path(application, "my-data/")).status_code == 404


def test_data_links_need_a_valid_status_link(client):
    assert client.get("/status/forged/my-data/").status_code == 404
    assert client.post("/status/forged/erase/").status_code == 404


def test_the_data_download_is_never_kept_by_a_browser_or_shared_cache(client):
    application = apply_with_a_file(client)
    response = client.get(status_path(application, "my-data/"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"


def test_erasure_removes_every_mail_about_the_application_the_one_being_sent_too():
    application = make_application(full_name="Robin Erasable", status=Application.Status.REJECTED)
    other = make_application(full_name="Kim Staying", email="kim@applicant.example")
    # Signed days before the erasure: a status link's token changes every second.
    with time_machine.travel(timezone.now() - timedelta(days=3), tick=False):
        status_url = links.status_url(application)
    admin_url = "https://rvi.example.org/admin/"
    queue_email(
        "staff-new-application", ["queue@staff.example"], {"application": application, "admin_url": admin_url}
    )
    [reminder] = queue_email(
        "invitation-expiring", ["inviter@staff.example"], {"application": application, "admin_url": admin_url}
    )
    # The token mail names no reference, only the status link.
    [token_mail] = queue_email(
        "invitation-token", [application.email], {"application": application, "status_url": status_url}
    )
    [in_flight] = queue_email(
        "application-rejected", [application.email], {"application": application, "status_url": status_url}
    )
    [unrelated] = queue_email(
        "invitation-expiring", ["inviter@staff.example"], {"application": other, "admin_url": admin_url}
    )
    assert "Robin Erasable" in reminder.body_text and "Robin Erasable" in token_mail.body_text
    OutboundEmail.objects.filter(pk=reminder.pk).update(status=OutboundEmail.Status.SENT)
    OutboundEmail.objects.filter(pk=in_flight.pk).update(
        status=OutboundEmail.Status.SENDING,
        claimed_by="worker-1",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )

    workflow.erase_application(application)

    assert set(OutboundEmail.objects.values_list("pk", flat=True)) == {unrelated.pk}
    # Whatever the attempt in hand ends in, nothing comes back to be sent again or kept.
    assert not in_flight.schedule_retry("worker-1", "451 4.3.0 Try again later")
    assert not in_flight.release("worker-1")
    assert not in_flight.mark_sent("worker-1", None)
    assert set(OutboundEmail.objects.values_list("pk", flat=True)) == {unrelated.pk}


def test_the_erase_page_links_the_data_download_without_the_download_attribute(client):
    # With `download`, Chromium would save a 503 or 429 page as a file and show nothing.
    application = make_application()
    # One token for both: a status link signed a second later differs from this one.
    status = status_path(application)
    page = client.get(status + "erase/").content.decode()
    assert f'<a href="{status}my-data/">' in page


def test_the_export_keeps_the_real_status_and_words_it_as_the_status_page_does(client, agent):
    application = make_application(
        status=Application.Status.RECOMMENDED,
        recommendation=Application.Recommendation.REJECT,
        verification_recorded_by=agent,
    )
    own = json.loads(open_zip(client.get(status_path(application, "my-data/"))).read("application.json"))
    assert own["status"] == "recommended"
    assert own["status_display"] == "Being checked"


def test_the_export_holds_the_message_shared_on_rejection_but_never_the_staff_reason(
    client, agent, server_admin
):
    application = recommended_by(agent)
    workflow.reject(
        application, server_admin, "The referee has never met them.", "We could not vouch for you."
    )
    archive = open_zip(client.get(status_path(application, "my-data/")))
    own = json.loads(archive.read("application.json"))
    assert own["message_to_applicant"] == "We could not vouch for you."
    history = json.loads(archive.read("history.json"))
    assert [entry["by"] for entry in history if entry["action"] == "application.rejected"] == ["Server admin"]
    everything = b"".join(archive.read(name) for name in archive.namelist()).decode("utf-8", "replace")
    assert "never met them" not in everything


def test_the_export_names_a_superadmin_by_role_and_leaves_out_why_they_reopened(
    client, agent, server_admin, superadmin
):
    application = recommended_by(agent)
    workflow.reject(application, server_admin, "Wrong person.")
    workflow.reopen(application, superadmin, "Mixed up two applicants with the same name.")
    archive = open_zip(client.get(status_path(application, "my-data/")))
    history = json.loads(archive.read("history.json"))
    assert [entry["by"] for entry in history if entry["action"] == "application.reopened"] == ["Superadmin"]
    everything = b"".join(archive.read(name) for name in archive.namelist()).decode("utf-8", "replace")
    assert "Mixed up" not in everything and "superadmin" not in everything


def test_the_export_history_holds_no_event_of_another_application(client, agent):
    mine = make_application()
    theirs = make_application(email="robin@applicant.example")
    workflow.claim(mine, agent)
    workflow.claim(theirs, agent)
    workflow.release(theirs, agent)
    history = json.loads(open_zip(client.get(status_path(mine, "my-data/"))).read("history.json"))
    assert [entry["action"] for entry in history] == ["application.claimed"]
