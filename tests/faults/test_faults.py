"""Fault injection against a real gunicorn + PostgreSQL: whatever fails, nothing is half-kept.

Run with `make faults` (also run by .ci/run). Each scenario is bounded in
requests and time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import connection

from evidence.models import Evidence
from tests.factories import HTML_BYTES, PDF_BYTES
from tests.faults.conftest import Applicant, app_server
from vetting.models import Application

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

PDF_100K = PDF_BYTES + b"%" + b"x" * 100_000 + b"\n"


def plan(count: int) -> list[tuple[int, dict, bool, bool]]:
    """(number, files, consent, valid) for `count` applicants: two thirds valid."""
    applicants = []
    for number in range(count):
        files = {f"evidence_{slot}": (f"doc{slot}.pdf", PDF_100K) for slot in range(1, number % 3 + 2)}
        kind = number % 6
        if kind == 4:  # a spoofed file among good ones
            files["evidence_3"] = ("doc3.pdf", HTML_BYTES)
        applicants.append((number, files, kind != 5, kind not in (4, 5)))
    return applicants


def files_on_disk(root: Path) -> set[str]:
    return (
        {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
        if root.exists()
        else set()
    )


def assert_all_or_nothing(applicants, evidence_root: Path) -> None:
    stored = {
        application.email: application for application in Application.objects.prefetch_related("evidence")
    }
    for number, files, _consent, valid in applicants:
        email = f"person{number}@applicant.example"
        if email in stored:
            assert valid, f"{email} was invalid but stored"
            assert stored[email].evidence.count() == len(files), f"{email} stored with missing files"
    assert files_on_disk(evidence_root) == {evidence.file.name for evidence in Evidence.objects.all()}


def test_50_concurrent_applicants_valid_and_invalid(gunicorn_on_postgres):
    base_url, evidence_root = gunicorn_on_postgres
    applicants = plan(50)

    def apply(entry):
        number, files, consent, _valid = entry
        return Applicant(base_url, number).post(files, consent).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(apply, applicants))
    expected = [302 if valid else 200 for _n, _f, _c, valid in applicants]
    assert statuses == expected
    assert Application.objects.count() == sum(valid for *_rest, valid in applicants)
    assert_all_or_nothing(applicants, evidence_root)


def test_database_connections_killed_during_load(gunicorn_on_postgres):
    base_url, evidence_root = gunicorn_on_postgres
    applicants = plan(40)
    database = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        test_pid = cursor.fetchone()[0]
    started = threading.Event()

    def apply(entry):
        number, files, consent, _valid = entry
        started.set()
        try:
            return Applicant(base_url, number).post(files, consent).status_code
        except requests.ConnectionError:
            return "connection error"

    def kill_connections():
        started.wait(timeout=30)
        try:
            for _round in range(3):
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid NOT IN (pg_backend_pid(), %s)",
                        [database, test_pid],
                    )
                threading.Event().wait(0.3)
        finally:
            connection.close()

    killer = threading.Thread(target=kill_connections)
    killer.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(apply, applicants))
    killer.join()

    assert 500 not in statuses, statuses
    assert set(statuses) <= {200, 302, 503}, statuses
    # No restart: the same server takes a new application.
    assert Applicant(base_url, 999).post({"evidence_1": ("id.pdf", PDF_BYTES)}).status_code == 302
    assert_all_or_nothing(applicants, evidence_root)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB filesystem: evidence fills it like a full production disk."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(
            f"needs permission to mount a tmpfs for the full-disk case: {result.stderr.decode().strip()}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_gives_a_clear_error_and_keeps_nothing(
    transactional_db, settings, collected_static, tmp_path, tiny_disk
):
    evidence_root = tiny_disk / "evidence"
    big = PDF_BYTES + b"%" + b"x" * 400_000 + b"\n"
    with app_server(settings, collected_static, evidence_root, tmp_path / "gunicorn.log") as base_url:
        response = Applicant(base_url, 1).post(
            {f"evidence_{slot}": (f"d{slot}.pdf", big) for slot in (1, 2, 3)}
        )
        assert response.status_code == 503
        assert "We could not store your files just now, so nothing was kept." in response.text
        assert not Application.objects.exists()
        assert files_on_disk(evidence_root) == set()
        # Space is back (nothing was left behind): a small application goes through.
        assert Applicant(base_url, 2).post({"evidence_1": ("id.pdf", PDF_BYTES)}).status_code == 302
