"""Staff admin pages given odd input: a bad filter is refused, never a server error."""

from __future__ import annotations

import html
import re

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, make_application, upload
from tests.vetting.test_workflow import recommended_by
from vetting import workflow
from vetting.admin import EARLIER_APPLICATIONS_SHOWN
from vetting.models import Application, AuditEvent, StaffNote

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "query",
    [
        "created_at__year=9999",
        "created_at__year=9999&created_at__month=12",
        "created_at__year=9999&created_at__month=12&created_at__day=31",
    ],
)
@pytest.mark.parametrize("changelist", ["/admin/vetting/application/", "/admin/vetting/auditevent/"])
def test_date_hierarchy_past_year_9999_is_a_bad_filter_not_a_500(client, superadmin, changelist, query):
    make_application()
    client.force_login(superadmin)
    client.raise_request_exception = False
    response = client.get(f"{changelist}?{query}")
    assert response.status_code == 302
    # The list again with Django's "bad filter" flag, not the sign-in page.
    assert response["Location"] == f"{changelist}?e=1"


@pytest.mark.parametrize(
    ("changelist", "date_field"),
    [("/admin/iama_vetting/cspviolation/", "last_seen"), ("/admin/vetting/invitation/", "issued_at")],
    ids=["csp-violations", "invitations"],
)
def test_date_hierarchy_past_year_9999_is_a_bad_filter(client, superadmin, changelist, date_field):
    client.force_login(superadmin)
    client.raise_request_exception = False
    response = client.get(f"{changelist}?{date_field}__year=9999&{date_field}__month=12")
    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?e=1"


def test_date_hierarchy_in_range_still_filters(client, agent):
    application = make_application(full_name="Dated Person")
    client.force_login(agent)
    created = application.created_at
    page = client.get(
        "/admin/vetting/application/",
        {
            "created_at__year": created.year,
            "created_at__month": created.month,
            "created_at__day": created.day,
        },
    ).content.decode()
    assert application.reference in page
    other_year = client.get("/admin/vetting/application/", {"created_at__year": created.year - 1})
    assert application.reference not in other_year.content.decode()


def change_page_query_count(client, application) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/admin/vetting/application/{application.pk}/change/")
    assert response.status_code == 200
    return len(queries)


def test_change_page_costs_the_same_queries_at_1_and_6_evidence_files(client, agent, django_user_model):
    application = make_application()
    client.force_login(agent)

    def add_evidence(count: int) -> None:
        for number in range(count):
            # Each file from a different staff member, as when several enter evidence.
            uploader = django_user_model.objects.create_user(username=f"uploader{Evidence.objects.count()}")
            evidence = Evidence.objects.store(
                application, validate_upload(upload(f"id{number}.pdf", PDF_BYTES))
            )
            Evidence.objects.filter(pk=evidence.pk).update(uploaded_by=uploader)

    add_evidence(1)
    change_page_query_count(client, application)  # warms the content-type cache
    at_one = change_page_query_count(client, application)
    add_evidence(5)
    assert change_page_query_count(client, application) == at_one


@pytest.mark.parametrize(
    "query",
    [
        "/admin/vetting/application/?source=%00",
        "/admin/vetting/application/?email__iexact=a%00b",
        "/admin/vetting/auditevent/?action__exact=%00",
    ],
)
def test_a_nul_character_in_a_filter_is_a_bad_filter(client, superadmin, query):
    """PostgreSQL refuses NUL in text: the list says the filter is bad instead of failing."""
    make_application()
    client.force_login(superadmin)
    client.raise_request_exception = False
    response = client.get(query)
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_a_note_with_a_nul_character_is_refused_with_a_message(client, agent):
    application = make_application()
    client.force_login(agent)
    client.raise_request_exception = False
    response = client.post(
        f"/admin/vetting/application/{application.pk}/note/", {"text": "pasted\x00text"}, follow=True
    )
    assert response.status_code == 200
    assert not StaffNote.objects.exists()
    assert "null character" in response.content.decode()


def test_second_of_two_agents_claiming_at_once_is_told_who_got_there_first(client, agent, second_agent):
    application = make_application()
    client.force_login(second_agent)
    page = client.get(f"/admin/vetting/application/{application.pk}/change/").content.decode()
    assert 'name="seen_status" value="submitted">' in page
    assert '<button type="submit" class="workflow-button workflow-claim">' in page
    workflow.claim(application, agent)  # the first agent, a moment earlier

    response = client.post(
        f"/admin/vetting/application/{application.pk}/action/claim/",
        {"seen_status": "submitted"},
        follow=True,
    )
    page = response.content.decode()
    assert "Someone else got there first: the application is now in review (by agent)." in page
    application.refresh_from_db()
    assert application.claimed_by == agent


def test_a_forged_seen_status_changes_only_the_message_never_the_guard(client, agent):
    application = make_application(status=Application.Status.REJECTED)
    client.force_login(agent)
    client.post(f"/admin/vetting/application/{application.pk}/action/claim/", {"seen_status": "submitted"})
    client.post(f"/admin/vetting/application/{application.pk}/action/claim/", {"seen_status": "bogus"})
    application.refresh_from_db()
    assert application.status == Application.Status.REJECTED
    assert application.claimed_by is None


def test_invitations_on_the_application_page_link_only_for_those_who_may_open_them(
    client, approved, agent, inviting_admin, fake_synapse
):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    invitation_url = f"/admin/vetting/invitation/{invitation.pk}/change/"
    page_url = f"/admin/vetting/application/{approved.pk}/change/"

    client.force_login(inviting_admin)
    assert f'href="{invitation_url}"' in client.get(page_url).content.decode()

    client.force_login(agent)
    assert client.get(invitation_url).status_code == 403
    page = client.get(page_url).content.decode()
    assert "@alex" in page
    assert f'href="{invitation_url}"' not in page


# Hand-made bulk actions and filter values --------------------------------------------

NO_VALID_SELECTION = "Items must be selected in order to perform actions on them. No items have been changed."
BAD_FILTER = "The list cannot be shown that way"


@pytest.mark.parametrize("bad_id", ["abc", "1 OR 1=1", "1.5", "99999999999999999999999", ""])
@pytest.mark.parametrize(
    ("changelist", "action"),
    [
        ("/admin/vetting/application/", "claim_selected"),
        ("/admin/vetting/invitation/", "reissue_selected"),
        ("/admin/auth/user/", "approve_accounts"),
        ("/admin/notifications/outboundemail/", "cancel"),
        ("/admin/iama_vetting/cspviolation/", "delete_selected"),
        ("/admin/auth/group/", "delete_selected"),
    ],
)
def test_a_bulk_action_on_a_selection_that_is_no_id_says_so_and_changes_nothing(
    client, superadmin, changelist, action, bad_id
):
    from iama_vetting.models import CSPViolation
    from notifications.models import OutboundEmail
    from notifications.outbox import queue_email

    application = make_application()
    [mail] = queue_email("application-received", [application.email], {"application": application})
    violation = CSPViolation.objects.create(
        directive="script-src",
        blocked="inline",
        document_path="/apply/",
        first_seen=timezone.now(),
        last_seen=timezone.now(),
    )
    groups = Group.objects.count()
    client.force_login(superadmin)
    client.raise_request_exception = False
    before = AuditEvent.objects.count()

    response = client.post(
        changelist, {"action": action, "index": "0", "_selected_action": [str(application.pk), bad_id]}
    )

    assert response.status_code == 302
    assert response["Location"] == changelist
    page = client.get(changelist).content.decode()
    assert NO_VALID_SELECTION in page
    application.refresh_from_db()
    mail.refresh_from_db()
    assert (application.status, application.claimed_by) == (Application.Status.SUBMITTED, None)
    assert mail.status == OutboundEmail.Status.QUEUED
    assert CSPViolation.objects.filter(pk=violation.pk).exists()
    assert Group.objects.count() == groups
    assert AuditEvent.objects.count() == before


def test_a_valid_selection_still_runs_the_action(client, agent):
    application = make_application()
    client.force_login(agent)
    client.post(
        "/admin/vetting/application/",
        {"action": "claim_selected", "index": "0", "_selected_action": [str(application.pk)]},
    )
    application.refresh_from_db()
    assert application.claimed_by == agent


def test_a_list_without_actions_ignores_a_hand_made_action_post(client, superadmin):
    client.force_login(superadmin)
    client.raise_request_exception = False
    before = AuditEvent.objects.count()
    response = client.post(
        "/admin/vetting/auditevent/", {"action": "delete_selected", "index": "0", "_selected_action": ["abc"]}
    )
    assert response.status_code == 200
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize(
    ("changelist", "query"),
    [
        ("/admin/vetting/application/", "status=bogus"),
        ("/admin/vetting/application/", "claim=everyone"),
        ("/admin/vetting/application/", "answer=maybe"),
        ("/admin/vetting/application/", "status=all&claim=bogus"),
        ("/admin/auth/user/", "account=bogus"),
    ],
)
def test_an_unknown_value_of_our_own_filters_is_a_bad_filter_not_the_whole_list(
    client, superadmin, changelist, query
):
    make_application(full_name="Rejected Person", status=Application.Status.REJECTED)
    client.force_login(superadmin)
    response = client.get(f"{changelist}?{query}")
    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?e=1"
    page = client.get(response["Location"]).content.decode()
    assert BAD_FILTER in page
    assert "Rejected Person" not in page  # the list as it opens: the open queue


def test_an_inviting_admin_cannot_filter_by_a_state_they_do_not_see(client, inviting_admin):
    make_application(full_name="Rejected Person", status=Application.Status.REJECTED)
    client.force_login(inviting_admin)
    response = client.get("/admin/vetting/application/?status=rejected")
    assert response["Location"] == "/admin/vetting/application/?e=1"


def test_a_known_filter_value_is_no_bad_filter(client, agent):
    make_application(full_name="Rejected Person", status=Application.Status.REJECTED)
    client.force_login(agent)
    page = client.get("/admin/vetting/application/?status=rejected&claim=unclaimed").content.decode()
    assert "Rejected Person" in page
    assert BAD_FILTER not in page


# Lookups in the query string: only those the list's own filters and links offer ----------


def test_a_masked_token_cannot_be_found_letter_by_letter_from_the_invitation_list(
    client, approved, inviting_admin, server_admin, fake_synapse
):
    invitation = workflow.issue_invitation(approved, inviting_admin)
    client.force_login(server_admin)
    assert invitation.token not in client.get("/admin/vetting/invitation/").content.decode()
    for lookup, value in [
        ("token__startswith", invitation.token[:2]),
        ("token", invitation.token),
        ("token__exact", invitation.token),
        ("raw_response__contains", invitation.token[:2]),
        ("server_id__gte", invitation.token[:2]),
    ]:
        response = client.get("/admin/vetting/invitation/", {lookup: value})
        assert response.status_code == 302, lookup
        assert response["Location"] == "/admin/vetting/invitation/?e=1"
    assert BAD_FILTER in client.get("/admin/vetting/invitation/?e=1").content.decode()


@pytest.mark.parametrize(
    "url",
    [
        # PostgreSQL refused these with a server error (an address, JSON): now no filter offers them.
        "/admin/vetting/auditevent/?ip=abc",
        "/admin/vetting/auditevent/?details__contains=x",
        "/admin/vetting/auditevent/?details__has_key=x",
        "/admin/vetting/auditevent/?target_id__gt=1",
        "/admin/vetting/application/?status=all&public_id=abc",
        "/admin/vetting/application/?status=all&score__gt=99999999999999999999",
        "/admin/notifications/outboundemail/?port_used=abc",
        "/admin/auth/user/?password__startswith=md5",
        "/admin/auth/group/?name__startswith=S",
    ],
)
def test_a_lookup_none_of_the_lists_filters_offers_is_a_bad_filter_not_a_server_error(
    client, superadmin, url
):
    application = make_application()
    workflow.claim(application, superadmin)
    client.force_login(superadmin)
    client.raise_request_exception = False
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == url.split("?")[0] + "?e=1"


def _list_links(page: str, list_path: str) -> set[str]:
    """The links of a page to a list with a query string, relative ones ("?status=all") resolved."""
    links = set()
    for href in re.findall(r'href="([^"]*\?[^"]*)"', page):
        href = html.unescape(href)
        if href.startswith("?"):
            links.add(list_path + href)
        elif re.fullmatch(r"/admin/[a-z_]+/[a-z_]+/\?.*", href):
            links.add(href)
    return links


def test_every_link_the_app_and_django_build_to_a_list_still_filters(
    client, approved, inviting_admin, superadmin, fake_synapse
):
    from iama_vetting.models import CSPViolation

    workflow.issue_invitation(approved, inviting_admin)  # an invitation, and its mail in the outbox
    # More earlier applications than the page shows: it links to all of them.
    for _ in range(EARLIER_APPLICATIONS_SHOWN + 1):
        make_application(email=approved.email.upper())
    workflow.add_note(approved, superadmin, "A note.")
    CSPViolation.objects.record("script-src", "inline", "/apply/")
    client.force_login(superadmin)
    lists = [
        "/admin/vetting/application/?status=all",  # every status, not only the open queue
        "/admin/vetting/auditevent/",
        "/admin/vetting/invitation/",
        "/admin/vetting/staffnote/",
        "/admin/notifications/outboundemail/",
        "/admin/iama_vetting/cspviolation/",
        "/admin/auth/user/",
        "/admin/auth/group/",
    ]
    links = _list_links(client.get("/admin/").content.decode(), "/admin/")
    links |= _list_links(client.get(f"/admin/vetting/application/{approved.pk}/change/").content.decode(), "")
    assert f"/admin/vetting/auditevent/?application={approved.reference}" in links
    assert any("email__iexact=" in link for link in links)
    assert "/admin/vetting/application/?status=approved" in links  # the dashboard's
    for list_url in lists:
        links |= _list_links(client.get(list_url).content.decode(), list_url.split("?")[0])
    assert any("created_at__year=" in link for link in links)  # date hierarchies
    assert any("actor__id__exact=" in link for link in links)  # a related filter
    assert any("state__exact=" in link for link in links)  # a choices filter

    for link in sorted(links):
        response = client.get(link)
        assert response.status_code == 200, link
        assert BAD_FILTER not in response.content.decode(), link


# What the page showed when the action was chosen (seen_status, seen_claimed_by) -----------


def claimed_by(agent) -> Application:
    application = make_application()
    workflow.claim(application, agent)
    return application


@pytest.mark.parametrize(
    ("make", "action", "seen"),
    [
        *(
            (claimed_by, "release", {"seen_status": "in_review", "seen_claimed_by": claimer})
            for claimer in ["1" * 5000, "abc", "-1", "1.5"]
        ),
        *(
            (recommended_by, "approve", {"seen_status": "recommended", "seen_verification": recorded})
            for recorded in ["yesterday", "2026-13-45T99:00:00+00:00", "9" * 5000]
        ),
    ],
)
def test_a_mangled_view_of_the_page_changes_nothing_and_says_so(
    client, agent, server_admin, make, action, seen
):
    application = make(agent)
    before = (application.status, application.claimed_by_id)
    client.force_login(agent if action == "release" else server_admin)
    client.raise_request_exception = False
    response = client.post(f"/admin/vetting/application/{application.pk}/action/{action}/", seen, follow=True)
    assert response.status_code == 200
    assert "did not come from the application&#x27;s page as it was sent" in response.content.decode()
    application.refresh_from_db()
    assert (application.status, application.claimed_by_id) == before
    assert not AuditEvent.objects.filter(action__in=["application.released", "application.approved"]).exists()
