from __future__ import annotations

import datetime
import re
from io import StringIO
from pathlib import Path

import pytest
import time_machine
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, make_application, upload
from vetting.models import Application, AuditEvent

pytestmark = pytest.mark.django_db


def test_dev_superuser_is_created_once_with_a_random_password_shown_once(settings):
    settings.DEBUG = True
    out = StringIO()
    call_command("create_dev_superuser", stdout=out)
    password = re.search(r"with password (\S+)", out.getvalue()).group(1)
    assert authenticate(username="admin", password=password).is_superuser

    again = StringIO()
    call_command("create_dev_superuser", stdout=again)
    assert password not in again.getvalue()
    assert "a superuser exists" in again.getvalue()
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_dev_superuser_is_refused_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG=true"):
        call_command("create_dev_superuser")
    assert not get_user_model().objects.exists()


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("", "This field cannot be blank."),
        ("bad name!", "Enter a valid username."),
        ("a" * 300, "Ensure this value has at most 150 characters (it has 300)."),
    ],
)
def test_dev_superuser_refuses_a_username_the_admin_would_not_take(settings, username, message):
    settings.DEBUG = True
    with pytest.raises(CommandError) as refused:
        call_command("create_dev_superuser", "--username", username, stdout=StringIO())
    assert str(refused.value).startswith(f"--username: {message}")
    assert not get_user_model().objects.exists()


def test_dev_superuser_refuses_the_name_of_a_user_who_is_not_a_superuser(settings):
    settings.DEBUG = True
    get_user_model().objects.create_user("admin")
    with pytest.raises(CommandError) as refused:
        call_command("create_dev_superuser", stdout=StringIO())
    assert str(refused.value) == "A user 'admin' exists and is not a superuser: choose another --username."
    assert not get_user_model().objects.filter(is_superuser=True).exists()


@pytest.mark.parametrize("count", ["0", "-5"])
def test_bench_data_refuses_fewer_than_one_application(settings, count):
    settings.BENCH_BARE_VIEW = True
    with pytest.raises(CommandError) as refused:
        call_command("bench_data", "--applications", count, stdout=StringIO())
    assert str(refused.value) == f"--applications must be at least 1, not {count}."


def _application_created_at(moment: datetime.datetime, **fields):
    with time_machine.travel(moment):
        application = make_application(**fields)
        Evidence.objects.store(application, validate_upload(upload("id.pdf", PDF_BYTES)))
    return application


def test_purge_unconfirmed_deletes_only_stale_unconfirmed_applications_with_their_files(settings):
    now = timezone.now()
    stale = _application_created_at(
        now - datetime.timedelta(days=8), status="unconfirmed", email_confirmed_at=None
    )
    stale_file = Path(settings.EVIDENCE_ROOT) / stale.evidence.get().file.name
    recent = _application_created_at(
        now - datetime.timedelta(days=6), status="unconfirmed", email_confirmed_at=None
    )
    confirmed_old = _application_created_at(now - datetime.timedelta(days=30))

    out = StringIO()
    call_command("purge_unconfirmed", "--dry-run", stdout=out)
    assert "Would purge 1 unconfirmed application(s)" in out.getvalue()
    assert Application.objects.count() == 3
    assert stale_file.exists()

    out = StringIO()
    call_command("purge_unconfirmed", stdout=out)
    assert "Purged 1 unconfirmed application(s)" in out.getvalue()
    assert set(Application.objects.all()) == {recent, confirmed_old}
    assert not stale_file.exists()
    assert Evidence.objects.count() == 2
    event = AuditEvent.objects.get(action="application.purged_unconfirmed")
    assert event.actor_kind == "system"
    assert event.details == {"reference": stale.reference, "evidence": 1}


def test_purge_unconfirmed_deletes_an_application_withdrawn_before_its_address_was_confirmed(settings):
    # Someone applied with a stranger's address, and the stranger withdrew it from the
    # "received" mail's status link instead of ignoring the mail: staff never saw it.
    now = timezone.now()
    withdrawn = _application_created_at(
        now - datetime.timedelta(days=8), status="withdrawn", email_confirmed_at=None
    )
    withdrawn_file = Path(settings.EVIDENCE_ROOT) / withdrawn.evidence.get().file.name
    recent = _application_created_at(
        now - datetime.timedelta(days=6), status="withdrawn", email_confirmed_at=None
    )
    # Withdrawn after its address was confirmed: staff may have seen it, it stays.
    confirmed = _application_created_at(now - datetime.timedelta(days=30), status="withdrawn")
    # Entered by staff: in the queue from the start, whatever its address.
    entered = _application_created_at(
        now - datetime.timedelta(days=30), status="withdrawn", email_confirmed_at=None, source="staff"
    )

    out = StringIO()
    call_command("purge_unconfirmed", "--dry-run", stdout=out)
    assert "Would purge 1 unconfirmed application(s)" in out.getvalue()
    assert withdrawn_file.exists()

    out = StringIO()
    call_command("purge_unconfirmed", stdout=out)
    assert "Purged 1 unconfirmed application(s)" in out.getvalue()
    assert set(Application.objects.all()) == {recent, confirmed, entered}
    assert not withdrawn_file.exists()
    event = AuditEvent.objects.get(action="application.purged_unconfirmed")
    assert event.details == {"reference": withdrawn.reference, "evidence": 1}


def test_an_application_withdrawn_from_the_received_mail_is_deleted_a_week_later(client, settings):
    from tests.vetting.test_apply import files_on_disk, form_data
    from vetting import links

    assert client.post("/apply/", form_data(evidence_1=upload("id.pdf", PDF_BYTES))).status_code == 302
    application = Application.objects.get()
    assert client.post(f"/status/{links.status_token(application)}/withdraw/").status_code == 302
    with time_machine.travel(timezone.now() + datetime.timedelta(days=7, hours=1)):
        call_command("purge_unconfirmed", stdout=StringIO())
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []
