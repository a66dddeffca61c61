"""Maintenance mode (`manage.py maintenance`) and the notice of planned windows."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from evidence.models import Evidence
from evidence.validation import validate_upload
from iama_vetting import maintenance
from tests.factories import PDF_BYTES, make_application, upload

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def maintenance_file(settings, tmp_path):
    settings.MAINTENANCE_FILE = tmp_path / "state" / "maintenance.json"
    return settings.MAINTENANCE_FILE


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("maintenance", *args, stdout=out)
    return out.getvalue()


def test_public_pages_answer_503_with_retry_after_while_on(client):
    until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "Maintenance mode is on, expected until" in command("on", "--until", until)
    for path in ("/", "/apply/", "/apply/done/"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert 3500 <= int(response["Retry-After"]) <= 3600
        assert b"Down for maintenance" in response.content
    assert client.post("/apply/", {"full_name": "x"}).status_code == 503


def test_retry_after_has_a_default_without_an_end_time(client):
    command("on")
    assert client.get("/apply/")["Retry-After"] == str(maintenance.DEFAULT_RETRY_AFTER)


def test_staff_can_still_sign_in_to_the_admin_while_on(client, agent):
    command("on")
    assert client.get("/admin/login/").status_code == 200
    response = client.post("/admin/login/", {"username": "agent", "password": "a-long-test-password"})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_set_password_links_from_staff_mails_work_while_on(client, agent):
    """The admin mails these links (reset, new account) and stays open: so do they."""
    command("on")
    uid = urlsafe_base64_encode(force_bytes(agent.pk))
    link = client.get(f"/reset/{uid}/{default_token_generator.make_token(agent)}/")
    assert link.status_code == 302
    form = client.get(link["Location"])
    assert form.status_code == 200
    new_password = "a-new-and-long-test-password"
    done = client.post(link["Location"], {"new_password1": new_password, "new_password2": new_password})
    assert done["Location"] == "/reset/done/"
    assert client.get("/reset/done/").status_code == 200
    agent.refresh_from_db()
    assert agent.check_password(new_password)


def test_security_txt_and_csp_reports_answer_while_on(client, django_assert_num_queries):
    command("on")
    with django_assert_num_queries(0):
        contact = client.get("/.well-known/security.txt")
    assert contact.status_code == 200
    assert contact.content.startswith(b"Contact: ")
    report = {"csp-report": {"document-uri": "https://rvi.example.org/admin/", "blocked-uri": "inline"}}
    answer = client.post("/csp-report/", json.dumps(report), content_type="application/csp-report")
    assert answer.status_code == 204


def test_off_restores_the_public_pages(client):
    command("on")
    assert "Maintenance mode is off." in command("off")
    assert client.get("/apply/").status_code == 200
    assert "already off" in command("off")


def test_status_tells_whether_it_is_on():
    assert "Maintenance mode is off." in command("status")
    until = datetime.now(UTC) + timedelta(days=2)
    command("on", "--until", f"{until:%Y-%m-%dT%H:%M}Z")
    assert "Maintenance mode is on since" in command("status")
    assert f"expected until {until:%Y-%m-%d %H:%M} UTC" in command("status")


def test_an_end_time_with_an_offset_is_shown_in_utc_and_one_without_is_utc():
    until = datetime.now(UTC) + timedelta(hours=3)
    in_paris_summer = until.astimezone(timezone(timedelta(hours=2)))
    output = command("on", "--until", in_paris_summer.isoformat(timespec="minutes"))
    assert f"Maintenance mode is on, expected until {until:%Y-%m-%d %H:%M} UTC." in output
    assert f"expected until {until:%Y-%m-%d %H:%M} UTC" in command("status")
    output = command("on", "--until", f"{until:%Y-%m-%dT%H:%M}")
    assert f"Maintenance mode is on, expected until {until:%Y-%m-%d %H:%M} UTC." in output


@pytest.mark.parametrize(
    "until",
    [
        pytest.param("9999-12-31T23:30", id="year-9999"),
        pytest.param(f"{datetime.now(UTC) + timedelta(days=8):%Y-%m-%dT%H:%MZ}", id="in-8-days"),
    ],
)
def test_an_end_time_more_than_7_days_ahead_is_refused_and_changes_nothing(until, maintenance_file):
    with pytest.raises(CommandError) as refused:
        command("on", "--until", until)
    assert str(refused.value) == (
        f"--until {until!r} is more than 7 days ahead: surely a typo. Maintenance mode is unchanged."
    )
    assert not maintenance_file.exists()


def test_a_switch_that_cannot_be_written_is_refused_in_one_line(settings):
    settings.MAINTENANCE_FILE = Path("/sys/maintenance.json")
    with pytest.raises(CommandError) as refused:
        command("on")
    assert str(refused.value) == (
        "Cannot change MAINTENANCE_FILE /sys/maintenance.json: Permission denied. Maintenance mode is unchanged."
    )


def test_a_switch_that_cannot_be_put_in_place_leaves_no_partial_file(maintenance_file):
    # A directory where the file should be: the partial file is written, the rename fails.
    (maintenance_file / "stray").mkdir(parents=True)
    with pytest.raises(CommandError, match="Is a directory. Maintenance mode is unchanged."):
        command("on")
    assert sorted(path.name for path in maintenance_file.parent.iterdir()) == ["maintenance.json"]


@pytest.mark.parametrize("until", ["tomorrow", "25:00", "2001-01-01T00:00Z"])
def test_a_bad_or_past_end_time_is_refused_and_changes_nothing(until, maintenance_file):
    with pytest.raises(CommandError, match="--until"):
        command("on", "--until", until)
    assert not maintenance_file.exists()


def test_the_switch_is_a_file_every_worker_sees(maintenance_file):
    command("on")
    assert maintenance_file.exists()
    assert maintenance.read_state() is not None


def test_first_sunday_window_is_found_in_the_next_month():
    window = maintenance.parse_window("first sunday 02:00-04:00")
    start, end = window.next_after(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    assert start == datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
    assert end == datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    # Once it is over, the next one is January's first Sunday.
    assert window.next_after(end)[0] == datetime(2027, 1, 3, 2, 0, tzinfo=UTC)


def test_last_weekday_windows_are_supported():
    window = maintenance.parse_window("last friday 22:00-23:30")
    assert window.next_after(datetime(2026, 11, 1, tzinfo=UTC))[0] == datetime(
        2026, 11, 27, 22, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text", ["first sunday", "fifth sunday 02:00-04:00", "first sunday 04:00-02:00", "1st sun 2-4"]
)
def test_a_bad_window_setting_is_refused(text):
    with pytest.raises(ImproperlyConfigured):
        maintenance.parse_window(text)


def test_notice_shows_on_public_pages_during_the_48_hours_before_a_window(client, settings, monkeypatch):
    settings.MAINTENANCE_WINDOW = "first sunday 02:00-04:00"
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 4, 3, 0, tzinfo=UTC))
    response = client.get("/apply/")
    assert b"Planned maintenance on Sunday 6 December 2026, 02:00\xe2\x80\x9304:00 UTC" in response.content


def test_no_notice_earlier_than_48_hours_before(client, settings, monkeypatch):
    settings.MAINTENANCE_WINDOW = "first sunday 02:00-04:00"
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 4, 1, 59, tzinfo=UTC))
    assert b"Planned maintenance" not in client.get("/apply/").content


def test_no_notice_when_no_window_is_planned(client, settings, monkeypatch):
    settings.MAINTENANCE_WINDOW = ""
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 5, 3, 0, tzinfo=UTC))
    assert b"Planned maintenance" not in client.get("/apply/").content


def test_the_maintenance_page_needs_no_database(client, django_assert_num_queries):
    command("on")
    with django_assert_num_queries(0):
        assert client.get("/apply/").status_code == 503


# Jobs the timers run through `unless_maintenance` ----------------------------------------


def switched_on(maintenance_file, since: datetime, until: datetime | None) -> None:
    maintenance_file.parent.mkdir(parents=True, exist_ok=True)
    maintenance_file.write_text(
        json.dumps({"since": since.isoformat(), "until": until.isoformat() if until else None})
    )


def test_with_maintenance_off_the_job_runs_with_its_arguments(capsys):
    call_command("unless_maintenance", "purge_unconfirmed", "--dry-run")
    assert "Would purge 0 unconfirmed application(s)" in capsys.readouterr().out


def test_with_maintenance_off_a_failing_job_still_fails(settings, tmp_path):
    settings.EVIDENCE_ROOT = tmp_path / "missing-evidence-root"
    with pytest.raises(CommandError):
        call_command("unless_maintenance", "purge_evidence")


@pytest.mark.parametrize(
    ("on_for", "ends_in"),
    [
        (timedelta(hours=3), timedelta(minutes=30)),
        (timedelta(hours=5), None),
        (timedelta(hours=2), -timedelta(minutes=50)),
    ],
)
def test_during_maintenance_the_job_is_skipped(maintenance_file, capsys, caplog, on_for, ends_in):
    now = datetime.now(UTC)
    switched_on(maintenance_file, now - on_for, now + ends_in if ends_in is not None else None)
    call_command("unless_maintenance", "purge_unconfirmed", "--dry-run")
    assert "Would purge" not in capsys.readouterr().out
    assert "Maintenance mode is on: purge_unconfirmed skipped" in caplog.text


@pytest.mark.parametrize(
    ("on_for", "ends_in"),
    [(timedelta(hours=3), -timedelta(minutes=61)), (timedelta(hours=6, minutes=1), None)],
)
def test_maintenance_left_on_fails_the_job_so_the_alert_fires(maintenance_file, capsys, on_for, ends_in):
    now = datetime.now(UTC)
    switched_on(maintenance_file, now - on_for, now + ends_in if ends_in is not None else None)
    with pytest.raises(CommandError, match="Switch it off"):
        call_command("unless_maintenance", "purge_unconfirmed", "--dry-run")
    assert "Would purge" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="not-json"),
        # An end `maintenance on` refuses: written by hand, or before it refused them.
        pytest.param(
            json.dumps({"since": datetime.now(UTC).isoformat(), "until": "9999-12-31T23:30:00+00:00"}),
            id="end-in-year-9999",
        ),
    ],
)
def test_a_damaged_switch_counts_from_when_it_was_written(maintenance_file, content):
    maintenance_file.parent.mkdir(parents=True, exist_ok=True)
    maintenance_file.write_text(content)
    seven_hours_ago = (datetime.now(UTC) - timedelta(hours=7)).timestamp()
    os.utime(maintenance_file, (seven_hours_ago, seven_hours_ago))
    with pytest.raises(CommandError, match="Switch it off"):
        call_command("unless_maintenance", "purge_unconfirmed", "--dry-run")


def test_a_switch_written_by_hand_without_offsets_reads_its_times_as_utc(client, maintenance_file):
    now = datetime.now(UTC)
    naive = {"since": (now - timedelta(hours=1)).replace(tzinfo=None).isoformat()}
    maintenance_file.parent.mkdir(parents=True, exist_ok=True)
    maintenance_file.write_text(json.dumps(naive | {"until": None}))
    call_command("unless_maintenance", "purge_unconfirmed", "--dry-run")  # skipped, not a crash
    maintenance_file.write_text(
        json.dumps(naive | {"until": (now + timedelta(minutes=30)).replace(tzinfo=None).isoformat()})
    )
    response = client.get("/apply/")
    assert response.status_code == 503
    assert 1790 <= int(response["Retry-After"]) <= 1800


def test_the_maintenance_page_is_never_cached(client):
    command("on")
    assert client.get("/apply/")["Cache-Control"] == "no-store"


def test_past_the_announced_end_retry_after_falls_back_to_the_default(client, maintenance_file):
    now = datetime.now(UTC)
    switched_on(maintenance_file, now - timedelta(hours=2), now - timedelta(minutes=30))
    assert client.get("/apply/")["Retry-After"] == str(maintenance.DEFAULT_RETRY_AFTER)


def test_the_switch_is_readable_by_the_workers_whatever_the_umask(maintenance_file):
    previous = os.umask(0o077)
    try:
        command("on")
    finally:
        os.umask(previous)
    assert maintenance_file.stat().st_mode & 0o777 == 0o644


def test_notice_stays_on_public_pages_while_the_window_is_under_way(client, settings, monkeypatch):
    settings.MAINTENANCE_WINDOW = "first sunday 02:00-04:00"
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 6, 3, 0, tzinfo=UTC))
    response = client.get("/apply/")
    assert b"Planned maintenance on Sunday 6 December 2026, 02:00\xe2\x80\x9304:00 UTC" in response.content


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("14:00", "2026-12-05 14:00"),
        ("16:00", "2026-12-04 16:00"),
        # With an offset, the next such time there (17:00 UTC): not 18:00 read as UTC.
        ("18:00+01:00", "2026-12-04 17:00"),
        # 02:00 at UTC-12 is 14:00 UTC, already past today: tomorrow's.
        ("02:00-12:00", "2026-12-05 14:00"),
        # 00:30 at UTC+14 is 10:30 UTC the day before: today's has passed too.
        ("00:30+14:00", "2026-12-05 10:30"),
    ],
)
def test_an_end_given_as_hh_mm_is_the_next_such_time(monkeypatch, until, expected):
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 4, 15, 0, tzinfo=UTC))
    assert f"Maintenance mode is on, expected until {expected} UTC." in command("on", "--until", until)


def test_an_end_given_as_hh_mm_far_behind_utc_can_still_be_today_in_utc(monkeypatch):
    # At 01:00 UTC it is 13:00 the day before at UTC-12: its 23:00 comes at 11:00 UTC today.
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 4, 1, 0, tzinfo=UTC))
    assert "expected until 2026-12-04 11:00 UTC." in command("on", "--until", "23:00-12:00")


def test_status_names_the_planned_window_once_it_is_announced(settings, monkeypatch):
    settings.MAINTENANCE_WINDOW = "first sunday 02:00-04:00"
    monkeypatch.setattr(maintenance.timezone, "now", lambda: datetime(2026, 12, 4, 3, 0, tzinfo=UTC))
    assert "Planned window announced on public pages: 2026-12-06 02:00–04:00 UTC." in command("status")


def test_staff_can_still_download_evidence_while_on(client, agent):
    evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.pdf", PDF_BYTES)))
    command("on")
    client.force_login(agent)
    response = client.get(f"/evidence/{evidence.pk}/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PDF_BYTES
