"""Fault injection against a real gunicorn + PostgreSQL: whatever fails, nothing is half-kept.

Run with `make faults` (also run by .ci/run). Each scenario is bounded in
requests and time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from evidence.models import Evidence
from notifications.models import OutboundEmail
from tests.factories import HTML_BYTES, PDF_BYTES
from tests.faults.conftest import Applicant, Server, app_server, upload_temp_dir
from vetting.audit import check_chain
from vetting.models import Application, AuditEvent
from vetting.views import STORAGE_FAILED_MESSAGE

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

PDF_100K = PDF_BYTES + b"%" + b"x" * 100_000 + b"\n"
APPLICANTS = 50  # as the issue says: fifty concurrent applicants
# Bound on the waves of applicants sent while waiting for a kill to land on a request in flight.
KILL_WAVES = 5
# Upper bound on one scenario's load; each request has its own timeouts below this.
LOAD_SECONDS = 120
# What templates/database_unavailable.html (DatabaseOutageMiddleware's 503) says.
DATABASE_UNAVAILABLE_TEXT = "Nothing you sent was kept half-way"


class Planned(NamedTuple):
    number: int
    files: dict[str, tuple[str, bytes]]
    consent: bool
    valid: bool

    @property
    def email(self) -> str:
        return f"person{self.number}@applicant.example"


def plan(count: int, first: int = 0) -> list[Planned]:
    """`count` applicants numbered from `first`, two thirds valid; each file has a name and bytes
    of its own."""
    applicants = []
    for number in range(first, first + count):
        # PDFs are stored as sent (only images are re-encoded), so their hashes can be compared.
        files = {
            f"evidence_{slot}": (f"doc{number}-{slot}.pdf", PDF_100K + f"{number}-{slot}\n".encode())
            for slot in range(1, number % 3 + 2)
        }
        kind = number % 6
        if kind == 4:  # a spoofed file among good ones
            files["evidence_4"] = ("doc4.pdf", HTML_BYTES)
        applicants.append(Planned(number, files, kind != 5, kind not in (4, 5)))
    return applicants


def files_on_disk(root: Path) -> set[str]:
    return (
        {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
        if root.exists()
        else set()
    )


def wait_for(condition: Callable[[], object], timeout: float) -> object:
    """Poll `condition` until it is truthy, for at most `timeout` seconds; its last result."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Like wait_for, failing the test saying `what` was awaited if it never came."""
    result = wait_for(condition, timeout)
    if not result:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")
    return result


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# -- What "stored completely" and "left nothing" mean ---------------------------------------


def assert_stored_completely(application: Application, planned: Planned, evidence_root: Path) -> None:
    """Every file sent is kept, byte for byte, under the name it was sent with; and nothing else."""
    sent = sorted((name, len(content), sha256(content)) for name, content in planned.files.values())
    rows = list(application.evidence.all())
    kept = sorted((row.original_name, row.size, row.sha256) for row in rows)
    assert kept == sent, f"{planned.email}: evidence rows do not match the files sent"
    for row in rows:
        content = (evidence_root / row.file.name).read_bytes()
        assert (len(content), sha256(content)) == (row.size, row.sha256), (
            f"{planned.email}: {row.file.name} on disk differs from its row"
        )
    # Its "received" mail, queued in the same transaction.
    assert list(OutboundEmail.objects.filter(to=planned.email).values_list("template", flat=True)) == [
        "application-received"
    ]


def assert_nothing_kept_for(email: str) -> None:
    assert not Application.objects.filter(email=email).exists(), f"{email} was stored"
    assert not OutboundEmail.objects.filter(to=email).exists(), f"a mail to {email} was queued"


def assert_no_orphans(evidence_root: Path) -> None:
    """Every file on disk has its row and every row its file; the audit trail matches the rows."""
    assert files_on_disk(evidence_root) == {evidence.file.name for evidence in Evidence.objects.all()}
    submitted = AuditEvent.objects.filter(action="application.submitted")
    assert sorted(event.details["reference"] for event in submitted) == sorted(
        Application.objects.values_list("reference", flat=True)
    )
    assert check_chain().broken is None


def assert_upload_temp_dir_empties(directory: Path) -> None:
    """Django deletes a temporary upload when the response is closed, just after the client has it."""
    if not wait_for(lambda: not any(directory.iterdir()), 10):
        pytest.fail(f"temporary uploads left behind: {sorted(path.name for path in directory.iterdir())}")


def assert_no_traceback(log_path: Path) -> None:
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def assert_log_names(log_path: Path, error: str) -> None:
    """The server logged `error`: the fault we injected really happened."""
    log = log_path.read_text(errors="replace")
    assert error in log, f"{error!r} not in the gunicorn log: {log[-2000:]}"


def assert_outcomes(server: Server, applicants: list[Planned], statuses: list[int], faults: bool) -> None:
    """Valid -> 302 and stored completely; invalid -> 200, nothing kept; with faults, 503 and
    either nothing kept or, for a valid one, all of it: when the answer to its COMMIT is lost,
    the application was stored though the applicant sees the outage page (never half of it)."""
    stored = {application.email: application for application in Application.objects.all()}
    for planned, status in zip(applicants, statuses, strict=True):
        expected = {302 if planned.valid else 200} | ({503} if faults else set())
        assert status in expected, f"{planned.email} (valid={planned.valid}) got {status}"
        if status == 302 or (status == 503 and planned.valid and planned.email in stored):
            assert planned.email in stored, f"{planned.email} got 302 but was not stored"
            assert_stored_completely(stored[planned.email], planned, server.evidence_root)
        else:
            assert_nothing_kept_for(planned.email)
    assert stored.keys() <= {planned.email for planned in applicants}
    assert_no_orphans(server.evidence_root)
    assert_upload_temp_dir_empties(server.upload_temp_dir)
    assert_no_traceback(server.log_path)


def apply_all_at_once(base_url: str, applicants: list[Planned]) -> list[int]:
    """One thread and session per applicant: all open the form, then all post together."""
    everyone_has_the_form = threading.Barrier(len(applicants), timeout=60)

    def apply(planned: Planned) -> int:
        applicant = Applicant(base_url, planned.number)
        try:
            applicant.open_form()
        except BaseException:
            everyone_has_the_form.abort()  # don't leave the others waiting
            raise
        everyone_has_the_form.wait()
        return applicant.send(planned.files, planned.consent).status_code

    with ThreadPoolExecutor(max_workers=len(applicants)) as pool:
        return list(pool.map(apply, applicants, timeout=LOAD_SECONDS))


def assert_recovers_without_restart(server: Server) -> None:
    """The same server takes a new application."""
    planned = Planned(999, {"evidence_1": ("id.pdf", PDF_BYTES)}, True, True)
    assert Applicant(server.base_url, planned.number).post(planned.files).status_code == 302
    assert_stored_completely(Application.objects.get(email=planned.email), planned, server.evidence_root)


# -- Load without faults --------------------------------------------------------------------


def test_50_concurrent_applicants_valid_and_invalid(gunicorn_on_postgres):
    server = gunicorn_on_postgres
    applicants = plan(APPLICANTS)

    statuses = apply_all_at_once(server.base_url, applicants)

    assert statuses == [302 if planned.valid else 200 for planned in applicants]
    assert_outcomes(server, applicants, statuses, faults=False)


# -- PostgreSQL connections terminated --------------------------------------------------------


@contextmanager
def pg_connection(autocommit: bool) -> Iterator[psycopg.Connection]:
    """A connection of the test's own to the test database, outside Django and its pool."""
    database = connection.settings_dict
    with psycopg.connect(
        host=database["HOST"] or "127.0.0.1",
        port=database["PORT"] or 5432,
        user=database["USER"],
        password=database["PASSWORD"] or None,
        dbname=database["NAME"],
        autocommit=autocommit,
        connect_timeout=5,
    ) as conn:
        yield conn


def backend_waiting_for_lock_on(observer: psycopg.Connection, table: str) -> int | None:
    row = observer.execute(
        "SELECT activity.pid FROM pg_stat_activity AS activity "
        "JOIN pg_locks AS lock ON lock.pid = activity.pid "
        "WHERE activity.wait_event_type = 'Lock' AND NOT lock.granted AND lock.relation = %s::regclass",
        [table],
    ).fetchone()
    return row[0] if row else None


def backend_gone(observer: psycopg.Connection, pid: int) -> bool:
    return observer.execute(
        "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)", [pid]
    ).fetchone()[0]


def test_database_connection_killed_in_the_middle_of_a_submission(gunicorn_on_postgres):
    """Deterministic: the backend is killed after the evidence files are written, before the commit.

    submit_application writes the files, then the audit row in the same transaction; with the
    audit table locked, the request waits there, and we terminate exactly that backend.
    """
    server = gunicorn_on_postgres
    planned = Planned(1, {"evidence_1": ("a.pdf", PDF_100K), "evidence_2": ("b.pdf", PDF_BYTES)}, True, True)
    applicant = Applicant(server.base_url, planned.number)
    applicant.open_form()
    table = AuditEvent._meta.db_table

    with (
        pg_connection(autocommit=False) as holder,
        pg_connection(autocommit=True) as observer,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        try:
            submission: Future = pool.submit(applicant.send, planned.files)
            pid = wait_until(
                lambda: backend_waiting_for_lock_on(observer, table), 30, f"a submission to wait on {table}"
            )
            # The files are on disk by now: the failure must take them away again.
            assert len(files_on_disk(server.evidence_root)) == len(planned.files)
            assert observer.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
            # Gone before the lock is released, so its INSERT can never go ahead.
            wait_until(lambda: backend_gone(observer, pid), 10, f"backend {pid} to end")
        finally:
            holder.rollback()  # releases the lock
        response = submission.result(timeout=60)

    assert response.status_code == 503
    assert DATABASE_UNAVAILABLE_TEXT in response.text
    assert_nothing_kept_for(planned.email)
    assert files_on_disk(server.evidence_root) == set()
    assert_no_orphans(server.evidence_root)
    assert_upload_temp_dir_empties(server.upload_temp_dir)
    assert_no_traceback(server.log_path)
    assert_recovers_without_restart(server)


class BackendKiller:
    """Until stopped, every 50-100 ms, terminates the app's backends that are busy with a request.

    Until it has hit one it looks every 5 ms: on a fast host a whole wave of applicants is
    served between two looks 50-100 ms apart.

    A backend running a statement or inside a transaction is serving a request, so ending
    it is a fault in flight. The first time requests are seen, every backend is ended, the
    idle ones in gunicorn's pools too: "all connections terminated" during the load. Ending
    idle ones again and again would not reach a request (the pool's health check replaces
    them) but only keep the pool backing off, each request waiting DATABASE_POOL_TIMEOUT.
    """

    def __init__(self, spare_pid: int) -> None:
        self.spare_pid = spare_pid  # the test's own Django connection, for the checks afterwards
        self.terminated_busy = 0
        self.terminated_idle = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._running: Future | None = None

    def __enter__(self) -> BackendKiller:
        self._running = self._pool.submit(self._kill_until_stopped)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        try:
            self._running.result(timeout=30)  # re-raises what went wrong in the killer
        finally:
            self._pool.shutdown(wait=False)

    def _kill_until_stopped(self) -> None:
        with pg_connection(autocommit=True) as killer:
            while not self._stop.is_set():
                backends = dict(
                    killer.execute(
                        "SELECT pid, state <> 'idle' FROM pg_stat_activity "
                        "WHERE datname = current_database() AND backend_type = 'client backend' "
                        "AND pid NOT IN (pg_backend_pid(), %s)",
                        [self.spare_pid],
                    ).fetchall()
                )
                requests_seen = any(backends.values())
                everyone = requests_seen and self.terminated_busy == 0
                targets = [pid for pid, busy in backends.items() if busy or everyone]
                for pid, terminated in killer.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [targets]
                ).fetchall():
                    if terminated and backends[pid]:
                        self.terminated_busy += 1
                    elif terminated:
                        self.terminated_idle += 1
                self.rounds += 1
                # The kill rate, not a synchronisation.
                self._stop.wait(random.uniform(0.05, 0.1) if self.terminated_busy else 0.005)


def test_database_connections_killed_throughout_load(gunicorn_on_postgres):
    server = gunicorn_on_postgres
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        test_pid = cursor.fetchone()[0]

    applicants, statuses = [], []
    with BackendKiller(spare_pid=test_pid) as killer:
        # Whether a kill lands on a request in flight is chance, so waves follow until one has.
        for wave in range(KILL_WAVES):
            planned = plan(APPLICANTS, first=wave * APPLICANTS)
            statuses += apply_all_at_once(server.base_url, planned)
            applicants += planned
            if killer.terminated_busy:
                break

    # The fault really happened: backends were terminated in the middle of requests.
    assert killer.terminated_busy > 0, (
        f"no busy backend terminated in {killer.rounds} rounds, {wave + 1} waves"
    )
    assert 302 in statuses, statuses
    assert_outcomes(server, applicants, statuses, faults=True)
    assert_recovers_without_restart(server)


# -- Evidence storage failing ---------------------------------------------------------------


def mount_tmpfs(mount_point: Path, size: str) -> str | None:
    """Mount a tmpfs; None when done, else why it could not be."""
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        timeout=30,
    )
    return None if result.returncode == 0 else (result.stderr.decode().strip() or f"exit {result.returncode}")


def unmount(mount_point: Path) -> None:
    if subprocess.run(["umount", str(mount_point)], check=False, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=30)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB filesystem: evidence fills it like a full production disk."""
    mount_point = tmp_path / "tiny"
    failure = mount_tmpfs(mount_point, "1m")
    if failure:
        pytest.skip(f"needs permission to mount a tmpfs for the full-disk case: {failure}")
    try:
        yield mount_point
    finally:
        unmount(mount_point)


class UnwritableRoot(NamedTuple):
    path: Path
    make_writable: Callable[[], None]
    error: str  # what the failed write says in the log


@pytest.fixture
def unwritable_evidence_root(tmp_path):
    """An existing evidence root the app cannot write to: a read-only tmpfs, or a read-only directory."""
    mount_point = tmp_path / "read-only"
    failure = mount_tmpfs(mount_point, "16m")
    root = mount_point / "evidence"
    if failure is None:
        root.mkdir()

        def remount(mode: str) -> None:
            subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True, timeout=30)

        try:
            remount("ro")
            yield UnwritableRoot(root, lambda: remount("rw"), "Read-only file system")
        finally:
            unmount(mount_point)
        return
    # No mount: directory permissions, which bind only a process without CAP_DAC_OVERRIDE (not root).
    root.mkdir()
    root.chmod(0o555)
    try:
        probe = root / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip(
                f"cannot mount a read-only tmpfs ({failure}) and a read-only directory "
                f"does not stop this user (uid {os.geteuid()}) from writing"
            )
        yield UnwritableRoot(root, lambda: root.chmod(0o755), "Permission denied")
    finally:
        root.chmod(0o755)


def assert_storage_failure_kept_nothing(response, planned: Planned, log_path: Path, error: str) -> None:
    """The applicant reads the clear error; no row, file, mail or audit event was kept for them."""
    assert response.status_code == 503
    assert str(STORAGE_FAILED_MESSAGE) in response.text
    assert_nothing_kept_for(planned.email)
    assert not Application.objects.exists()
    assert not AuditEvent.objects.filter(action="application.submitted").exists()
    assert_log_names(log_path, error)


def test_full_disk_gives_a_clear_error_and_keeps_nothing(
    transactional_db, settings, collected_static, tmp_path, tiny_disk
):
    evidence_root = tiny_disk / "evidence"
    log_path = tmp_path / "gunicorn.log"
    temp_dir = upload_temp_dir(tmp_path)
    big = PDF_BYTES + b"%" + b"x" * 400_000 + b"\n"
    planned = Planned(1, {f"evidence_{slot}": (f"d{slot}.pdf", big) for slot in (1, 2, 3)}, True, True)
    with app_server(settings, collected_static, evidence_root, log_path, TMPDIR=str(temp_dir)) as base_url:
        response = Applicant(base_url, planned.number).post(planned.files)
        assert_storage_failure_kept_nothing(response, planned, log_path, "No space left on device")
        assert files_on_disk(evidence_root) == set()
        # Space is back (nothing was left behind): a small application goes through.
        assert_recovers_without_restart(Server(base_url, evidence_root, temp_dir, log_path))
        assert_no_orphans(evidence_root)
        assert_upload_temp_dir_empties(temp_dir)


def test_unwritable_evidence_root_gives_a_clear_error_and_keeps_nothing(
    transactional_db, settings, collected_static, tmp_path, unwritable_evidence_root
):
    evidence_root = unwritable_evidence_root.path
    log_path = tmp_path / "gunicorn.log"
    temp_dir = upload_temp_dir(tmp_path)
    planned = Planned(1, {"evidence_1": ("a.pdf", PDF_100K), "evidence_2": ("b.pdf", PDF_BYTES)}, True, True)
    with app_server(settings, collected_static, evidence_root, log_path, TMPDIR=str(temp_dir)) as base_url:
        response = Applicant(base_url, planned.number).post(planned.files)
        assert_storage_failure_kept_nothing(response, planned, log_path, unwritable_evidence_root.error)
        assert files_on_disk(evidence_root) == set()
        # Writable again: the same server stores the next application.
        unwritable_evidence_root.make_writable()
        assert_recovers_without_restart(Server(base_url, evidence_root, temp_dir, log_path))
        assert_no_orphans(evidence_root)
        assert_upload_temp_dir_empties(temp_dir)
