from __future__ import annotations

import pytest
from django.db import OperationalError

from evidence import views
from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, make_application, upload
from vetting.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def evidence() -> Evidence:
    return Evidence.objects.store(
        make_application(), validate_upload(upload("Paßport scan ÿ.pdf", PDF_BYTES))
    )


def test_anonymous_visitor_is_sent_to_the_admin_login(client, evidence):
    response = client.get(f"/evidence/{evidence.pk}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/evidence/")


def test_staff_without_evidence_permission_gets_403(client, outsider, evidence):
    client.force_login(outsider)
    response = client.get(f"/evidence/{evidence.pk}/")
    assert response.status_code == 403
    assert b"%PDF" not in response.content


def test_non_staff_user_is_sent_to_login(client, django_user_model, evidence):
    client.force_login(django_user_model.objects.create_user("member", password="x" * 12))
    assert client.get(f"/evidence/{evidence.pk}/").status_code == 302


def test_permitted_staff_gets_the_file_as_a_safe_attachment(client, agent, evidence):
    client.force_login(agent)
    response = client.get(f"/evidence/{evidence.pk}/")
    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == PDF_BYTES
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == (
        "attachment; filename=\"Pa_port scan _.pdf\"; filename*=UTF-8''Pa%C3%9Fport%20scan%20%C3%BF.pdf"
    )
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"] == "private, no-store"
    assert response["Content-Length"] == str(len(PDF_BYTES))


def test_quotes_in_the_name_cannot_break_the_header(client, agent):
    evidence = Evidence.objects.store(make_application(), validate_upload(upload('a";b.pdf', PDF_BYTES)))
    client.force_login(agent)
    header = client.get(f"/evidence/{evidence.pk}/")["Content-Disposition"]
    assert header == "attachment; filename=\"a_;b.pdf\"; filename*=UTF-8''a%22%3Bb.pdf"


def test_superuser_may_download(client, superadmin, evidence):
    client.force_login(superadmin)
    assert client.get(f"/evidence/{evidence.pk}/").status_code == 200


def test_behind_nginx_the_answer_is_an_x_accel_redirect_without_the_bytes(client, agent, evidence, settings):
    settings.EVIDENCE_X_ACCEL_PREFIX = "/_protected_evidence/"
    client.force_login(agent)
    response = client.get(f"/evidence/{evidence.pk}/")
    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == f"/_protected_evidence/{evidence.file.name}"
    assert response.content == b""
    assert response["Content-Disposition"].startswith("attachment; ")
    assert response["X-Content-Type-Options"] == "nosniff"
    # nginx sends the bytes, so this answer is the look to audit.
    assert AuditEvent.objects.filter(action="evidence.downloaded", target_id=str(evidence.pk)).count() == 1


def test_unknown_evidence_is_404(client, agent):
    client.force_login(agent)
    assert client.get("/evidence/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_each_download_is_audited_with_who_and_which_application(client, agent, evidence):
    client.force_login(agent)
    client.get(f"/evidence/{evidence.pk}/")
    client.get(f"/evidence/{evidence.pk}/")
    events = AuditEvent.objects.filter(action="evidence.downloaded", target_id=str(evidence.pk))
    assert [(event.actor, event.details) for event in events] == [
        (agent, {"application": evidence.application.reference})
    ] * 2


def test_missing_file_is_404_not_500_and_no_download_is_recorded(client, agent, evidence):
    evidence.file.storage.delete(evidence.file.name)
    client.force_login(agent)
    assert client.get(f"/evidence/{evidence.pk}/").status_code == 404
    assert not AuditEvent.objects.filter(action="evidence.downloaded").exists()


def test_a_download_whose_audit_fails_sends_nothing_and_closes_the_file(client, agent, evidence, monkeypatch):
    opened = []
    storage_class = type(evidence.file.storage)
    real_open_stream = storage_class.open_stream

    def tracked_open_stream(storage, name):
        opened.append(real_open_stream(storage, name))
        return opened[-1]

    def audit_fails(*args, **kwargs):
        raise OperationalError("database is locked")

    client.force_login(agent)
    monkeypatch.setattr(storage_class, "open_stream", tracked_open_stream)
    monkeypatch.setattr(views.audit, "record", audit_fails)
    client.raise_request_exception = False
    response = client.get(f"/evidence/{evidence.pk}/")
    assert response.status_code == 503  # the database outage page
    assert b"%PDF" not in response.content
    assert len(opened) == 1 and opened[0].closed


def test_post_is_refused(client, agent, evidence):
    client.force_login(agent)
    assert client.post(f"/evidence/{evidence.pk}/").status_code == 405
