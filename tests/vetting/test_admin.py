from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, TEXT_BYTES, make_application, upload
from vetting.models import Application

pytestmark = pytest.mark.django_db


def make_applications(count: int) -> None:
    for number in range(count):
        application = make_application(full_name=f"Person {number}", email=f"p{number}@applicant.example")
        Evidence.objects.store(application, validate_upload(upload("id.pdf", PDF_BYTES)))
        Evidence.objects.store(application, validate_upload(upload("notes.txt", TEXT_BYTES)))


def changelist_query_count(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/vetting/application/")
    assert response.status_code == 200
    return len(queries)


def test_changelist_costs_the_same_queries_at_5_and_50_applications(client, agent):
    client.force_login(agent)
    make_applications(5)
    at_five = changelist_query_count(client)
    make_applications(45)
    at_fifty = changelist_query_count(client)
    assert at_five == at_fifty


def test_changelist_shows_open_applications_by_default_oldest_first(client, agent):
    first = make_application(full_name="First Person")
    second = make_application(full_name="Second Person", email="second@applicant.example")
    make_application(full_name="Rejected Person", status=Application.Status.REJECTED)
    client.force_login(agent)
    page = client.get("/admin/vetting/application/").content.decode()
    assert page.index(first.reference) < page.index(second.reference)
    assert "Rejected Person" not in page
    assert "Rejected Person" in client.get("/admin/vetting/application/?status=all").content.decode()
    assert "Rejected Person" in client.get("/admin/vetting/application/?status=rejected").content.decode()


@pytest.mark.parametrize("term", ["Findable", "findme@applicant.example"])
def test_changelist_search_by_name_email_and_reference(client, agent, term):
    wanted = make_application(full_name="Findable Person", email="findme@applicant.example")
    make_application(full_name="Other Person", email="other@applicant.example")
    client.force_login(agent)
    page = client.get("/admin/vetting/application/", {"q": term}).content.decode()
    assert wanted.reference in page
    assert "Other Person" not in page
    by_reference = client.get("/admin/vetting/application/", {"q": wanted.reference}).content.decode()
    assert "Findable Person" in by_reference
    assert "Other Person" not in by_reference


def test_change_page_shows_applicant_read_only_with_evidence_links(client, agent):
    application = make_application(full_name="Alex Example")
    evidence = Evidence.objects.store(
        application, validate_upload(upload('"><img src=x onerror=alert(1)>.pdf', PDF_BYTES))
    )
    client.force_login(agent)
    page = client.get(f"/admin/vetting/application/{application.pk}/change/").content.decode()
    assert f'href="/evidence/{evidence.pk}/"' in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.pdf" in page
    assert "<img src=x" not in page
    assert 'name="full_name"' not in page  # read-only: shown, not editable


def test_staff_without_permission_cannot_see_the_queue(client, outsider):
    make_application()
    client.force_login(outsider)
    assert client.get("/admin/vetting/application/").status_code == 403


def test_the_change_page_loads_the_application_once(client, agent):
    application = make_application()
    client.force_login(agent)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/admin/vetting/application/{application.pk}/change/")
    assert response.status_code == 200
    by_pk = f'WHERE "vetting_application"."id" = {application.pk} LIMIT'
    assert sum(by_pk in query["sql"] for query in queries) == 1
