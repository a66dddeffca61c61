"""Fault injection on the services around the app: Redis, PostgreSQL, the SMTP relay, the homeserver.

Each scenario takes a real dependency away in the middle of real work and
brings it back; nothing may be lost, nothing done twice, no 500 shown.
Run with `make faults` (also run by .ci/run).
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import requests
from django_ratelimit.core import _get_window

from evidence.models import Evidence
from iama_vetting import ratelimits
from notifications.models import OutboundEmail
from tests.factories import PDF_BYTES
from tests.faults.conftest import Applicant, app_server
from tests.faults.test_faults import files_on_disk, plan
from tests.notifications.test_worker_processes import queue_mails, start_worker
from tests.security.conftest import RedisServer
from tests.smtp_server import Recorder, SMTPTestServer, make_certificates
from tests.vetting.conftest import approved, fast_retries, synapse, synapse_homeserver  # noqa: F401
from vetting import matrix, workflow
from vetting.models import Application, Invitation

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

T = TypeVar("T")


def wait_until(condition: Callable[[], T], within: float, what: str, every: float = 0.2) -> T:
    """Ask `condition` until it gives something true, for at most `within` seconds; that value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:.0f} s for {what}")
        time.sleep(every)


def health(base_url: str) -> tuple[int, dict]:
    response = requests.get(f"{base_url}/healthz", timeout=30)
    return response.status_code, response.json()


def health_answers(base_url: str) -> set[tuple[int, str]]:
    """The distinct answers to /healthz asked six times, as a load balancer keeps asking.

    The two gunicorn workers share the socket, so the answers come from either.
    """
    return {(status, str(sorted(body.items()))) for status, body in (health(base_url) for _ in range(6))}


def answers(status: int, **states: str) -> set[tuple[int, str]]:
    return {(status, str(sorted(states.items())))}


ALL_HEALTHY = answers(200, database="ok", cache="ok")


def health_answers_once_healthy(base_url: str, within: float = 90.0) -> set[tuple[int, str]]:
    """The answers once all are healthy, or the last ones when that took too long.

    Reconnecting has a backoff (PostgreSQL's pool grows back with one), so it takes a while.
    """
    deadline = time.monotonic() + within
    while True:
        seen = health_answers(base_url)
        if seen == ALL_HEALTHY or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


WORKERS = 2  # app_server's gunicorn


def workers_booted(log: Path) -> int:
    """gunicorn's own count: more than its 2 workers means one died or timed out and was replaced."""
    return log.read_text().count("Booting worker with pid:")


# Redis ---------------------------------------------------------------------------------------


def from_client(applicant: Applicant, address: str) -> Applicant:
    """The applicant's requests come from `address`, as the trusted proxy in front would say."""
    applicant.session.headers["X-Forwarded-For"] = address
    return applicant


class SteadyLoad:
    """Page views and applications refused as invalid, from a few threads until the block ends:
    the traffic a fault lands in.

    Each request comes from a client address of its own (X-Forwarded-For), so
    none reaches a limit, while each still passes through the limits: the page
    view through the default tier, the application through the apply limit.
    Every answer is counted by status; a request that gets none counts under its error's name.
    """

    def __init__(self, base_url: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.statuses: Counter = Counter()
        self._sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._visit, daemon=True) for _ in range(threads)]

    @property
    def answered(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def _visit(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._sent += 1
                number = self._sent
            address = f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
            try:
                if number % 2:
                    answer = requests.get(
                        f"{self.base_url}/privacy/", headers={"X-Forwarded-For": address}, timeout=30
                    )
                else:  # no evidence and no consent: answered 200 with the form's errors, never stored
                    answer = from_client(Applicant(self.base_url, 100_000 + number), address).post({}, False)
                status = answer.status_code
            except (requests.RequestException, AttributeError) as error:
                # AttributeError: the form page came without a CSRF token (an error page).
                status = type(error).__name__
            with self._lock:
                self.statuses[status] += 1
            self._stop.wait(0.01)  # pacing, so the scenario's own requests are not starved

    def wait_for_answers(self, count: int, within: float = 30.0) -> None:
        wait_until(lambda: self.answered >= count, within, f"{count} answers to the steady load")

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)  # each request has its own 30 s timeout
        assert not any(thread.is_alive() for thread in self._threads), "the load did not stop"


def cache_log_lines(log: Path, url: str) -> tuple[int, int]:
    """How often a worker logged the shared cache (iama_vetting.cache) lost, and found again.

    Each worker logs the loss at its first failure (then at most once a minute)
    and the return once, when Redis answers it again.
    """
    text = log.read_text()
    prefix = rf"^\S+ \S+ \w+ iama_vetting\.cache \[[^\]]*\] Shared cache {re.escape(url)} "
    lost = re.findall(
        prefix + r"is unreachable \(\w+\); counting in this process's memory until it returns\.$",
        text,
        re.MULTILINE,
    )
    found = re.findall(prefix + r"answers again; shared counting resumed\.$", text, re.MULTILINE)
    return len(lost), len(found)


def resumed_everywhere(lost: int, found: int) -> bool:
    # A worker may lose Redis again on a connection left from before and find it again: more
    # "answers again" lines than "unreachable" ones (each logged at most once a minute).
    return 1 <= lost <= found


def kill(redis_server: RedisServer) -> None:
    """SIGKILL: Redis vanishes mid-conversation, with no goodbye on its connections."""
    redis_server.process.kill()
    redis_server.process.wait(timeout=10)
    redis_server.process = None


def rate_limit_counters(redis_server: RedisServer) -> list[bytes]:
    """The rate-limit keys in this Redis (settings: RATELIMIT_KEY_PREFIX, by default "rvi-ratelimit")."""
    client = redis.Redis(port=redis_server.port, socket_timeout=5)
    return list(client.scan_iter(match="rvi-ratelimit:*", count=500))


APPLYING_CLIENT = "203.0.113.9"  # the one client that applies again and again during the outage


def wait_for_an_apply_minute_with(seconds: float) -> None:
    """Wait, if need be, until the apply limit's current minute for APPLYING_CLIENT has `seconds` left.

    django-ratelimit counts in fixed windows, each client's ending at its own
    offset (core._get_window); a burst across a window's end would be counted
    in two windows, and let twice as many through.
    """
    wait_until(
        lambda: _get_window(APPLYING_CLIENT, 60) - time.time() >= seconds,
        within=seconds + 5,
        what=f"an apply-limit minute with {seconds} s left",
    )


def test_redis_killed_during_load_limits_per_process_without_errors_then_shares_again(
    transactional_db, settings, collected_static, tmp_path
):
    """Redis is killed under load: no 500 anywhere; limiting goes on in each worker's memory (one
    client applying 15 times gets 429s, at most the limit through per worker); the loss and the
    return are logged; once Redis is back, counting is shared again."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    log = tmp_path / "gunicorn.log"
    posts = 15  # from one client during the outage, three times the apply limit's minute
    per_minute = ratelimits.APPLY.per_minute
    try:
        with (
            app_server(
                settings,
                collected_static,
                tmp_path / "evidence",
                log,
                CACHE_URL=redis_server.url,
                RATELIMIT_ENABLE="true",  # off by default in the faults suite
                TRUSTED_PROXY_COUNT="1",  # the client's address is the one X-Forwarded-For names
                LOG_FORMAT="text",
            ) as base_url,
            SteadyLoad(base_url) as load,
        ):
            load.wait_for_answers(30)
            assert health_answers(base_url) == ALL_HEALTHY
            assert cache_log_lines(log, redis_server.url) == (0, 0)

            kill(redis_server)  # while the load's threads are sending
            killed_at = load.answered
            wait_until(
                lambda: cache_log_lines(log, redis_server.url)[0],
                within=30,
                what="a worker to log that Redis is unreachable",
            )
            load.wait_for_answers(killed_at + 30)  # the load goes on through the outage

            # One client applies again and again: each worker counts in its own memory.
            wait_for_an_apply_minute_with(15)
            statuses = [
                from_client(Applicant(base_url, number), APPLYING_CLIENT)
                .post({"evidence_1": ("id.pdf", PDF_BYTES)})
                .status_code
                for number in range(posts)
            ]
            # The load balancer hears which part is down.
            assert health_answers(base_url) == answers(503, database="ok", cache="error")

            redis_server.start()
            wait_until(
                lambda: resumed_everywhere(*cache_log_lines(log, redis_server.url)),
                within=30,
                what="every worker that lost Redis to log that it answers again",
            )
            # Counting is shared again: the restarted (empty) Redis holds the load's counters.
            wait_until(
                lambda: rate_limit_counters(redis_server),
                within=10,
                what="rate-limit counters in the restarted Redis",
            )
            assert health_answers_once_healthy(base_url) == ALL_HEALTHY
    finally:
        redis_server.stop()

    assert set(statuses) <= {302, 429}, statuses
    # Never unlimited: at most the limit per worker got through, so the rest were refused.
    assert statuses.count(302) <= WORKERS * per_minute, statuses
    assert statuses.count(429) >= posts - WORKERS * per_minute, statuses
    assert statuses.count(302) >= per_minute, statuses  # and limited, not shut
    assert Application.objects.count() == statuses.count(302)
    assert set(load.statuses) == {200}, load.statuses  # no 500, no refusal, no dropped connection
    lost, found = cache_log_lines(log, redis_server.url)
    assert 1 <= lost <= WORKERS and resumed_everywhere(lost, found), (lost, found)
    assert "Traceback" not in log.read_text()


# PostgreSQL ----------------------------------------------------------------------------------


# PostgreSQL's simple-query message for COMMIT, as psycopg sends it when Django commits.
COMMIT_MESSAGE = b"COMMIT\x00"


@dataclass(eq=False)
class _Link:
    """One connection through the proxy: the app's end and PostgreSQL's."""

    app: socket.socket
    server: socket.socket
    # A COMMIT went towards the server and no answer came back yet: if the link is cut now,
    # the server may commit while the app hears only that the connection broke.
    commit_unanswered: bool = False


class CuttableProxy:
    """A TCP proxy in front of the real PostgreSQL that the test can cut, as a lost network would.

    Cut: every open connection is dropped and new ones are closed at once.
    Restored: connections pass again. `cut_when_sent(pattern)` makes it cut
    itself as soon as the app sends `pattern`, so a cut can land mid-transaction.
    `commit_answers_lost` counts the connections cut between a COMMIT and its answer.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.links: set[_Link] = set()
        self.cut_at: float | None = None
        self.commit_answers_lost = 0
        self._cut_on: bytes | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                app, _address = self.listener.accept()
            except OSError:
                return  # closed
            if self.down.is_set():
                app.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                app.close()
                continue
            server.settimeout(None)
            link = _Link(app, server)
            with self.lock:
                self.links.add(link)
            for towards_server in (True, False):
                threading.Thread(target=self._pump, args=(link, towards_server), daemon=True).start()

    def _pump(self, link: _Link, towards_server: bool) -> None:
        source, target = (link.app, link.server) if towards_server else (link.server, link.app)
        try:
            while data := source.recv(65536):
                if towards_server and COMMIT_MESSAGE in data:
                    link.commit_unanswered = True  # set before it leaves: the count may only overstate
                target.sendall(data)
                if not towards_server:
                    link.commit_unanswered = False
                elif self._cut_on is not None and self._cut_on in data:
                    self._cut_on = None
                    self.cut()
        except OSError:
            pass
        finally:
            with self.lock:
                self.links.discard(link)
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def cut_when_sent(self, pattern: bytes) -> None:
        self._cut_on = pattern

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            dropped, self.links = self.links, set()
            self.commit_answers_lost += sum(link.commit_unanswered for link in dropped)
            self.cut_at = time.monotonic()
        for link in dropped:
            for end in (link.app, link.server):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def database_url_through(proxy: CuttableProxy, database: dict) -> str:
    return f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}"


def test_postgresql_unreachable_makes_healthz_name_the_database_until_it_is_back(
    transactional_db, settings, collected_static, tmp_path
):
    database = settings.DATABASES["default"]
    proxy = CuttableProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432))
    try:
        with app_server(
            settings,
            collected_static,
            tmp_path / "evidence",
            tmp_path / "gunicorn.log",
            DATABASE_URL=database_url_through(proxy, database),
            LOG_FORMAT="text",
        ) as base_url:
            assert health_answers(base_url) == ALL_HEALTHY
            proxy.cut()
            assert health_answers(base_url) == answers(503, database="error", cache="ok")
            proxy.restore()
            assert health_answers_once_healthy(base_url) == ALL_HEALTHY
    finally:
        proxy.close()
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log
    # One line per failed probe, naming the part (it may fail or time out).
    assert "Health check: database " in log


@dataclass(frozen=True)
class Outcome:
    number: int
    files: int
    valid: bool
    status: int | str  # the HTTP status, or the name of the error when no answer came
    started: float
    ended: float


# What templates/database_unavailable.html, DatabaseOutageMiddleware's 503 page, tells the applicant.
DATABASE_UNAVAILABLE_TEXT = "Nothing you sent was kept half-way: please send it again in a minute."


class ApplicantLoad:
    """Applicants from `plan` posting from `threads` threads, until told to stop or the plan runs out."""

    def __init__(self, base_url: str, applicants: list[tuple[int, dict, bool, bool]], threads: int) -> None:
        self.base_url = base_url
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self._waiting = iter(applicants)
        self._stop_after: int | None = None  # stop once this many more have started
        self.started = 0
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._runs = [self._pool.submit(self._apply) for _ in range(threads)]

    def answered(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def stop_after(self, more: int) -> None:
        with self.lock:
            self._stop_after = self.started + more

    def _apply(self) -> None:
        while True:
            with self.lock:
                if self._stop_after is not None and self.started >= self._stop_after:
                    return
                entry = next(self._waiting, None)
                if entry is None:
                    return
                self.started += 1
            number, files, consent, valid = entry
            started = time.monotonic()
            try:
                answer = Applicant(self.base_url, number).post(files, consent)
                status = answer.status_code
                if status == 503 and DATABASE_UNAVAILABLE_TEXT not in answer.text:
                    status = "a 503 that is not our page"
            except (requests.RequestException, AttributeError) as error:
                # AttributeError: the form page came without a CSRF token (an error page).
                status = type(error).__name__
            with self.lock:
                self.outcomes.append(Outcome(number, len(files), valid, status, started, time.monotonic()))

    def finish(self, within: float = 120.0) -> list[Outcome]:
        deadline = time.monotonic() + within
        for run in self._runs:
            run.result(timeout=max(0.1, deadline - time.monotonic()))
        self._pool.shutdown()
        return sorted(self.outcomes, key=lambda outcome: outcome.number)


CUT_SECONDS = 2.0
# The last statement of a valid application's transaction (its "received" mail), after its
# files and rows and before the COMMIT: cut there, everything written so far must go.
OUTBOX_INSERT = b'INSERT INTO "notifications_outboundemail"'


def test_postgresql_cut_during_a_load_of_applicants_keeps_all_or_nothing_and_recovers(
    transactional_db, settings, collected_static, tmp_path
):
    """Applicants keep posting while the database's network is cut for two seconds and restored:
    each valid one is stored completely (302) or not at all (our 503), no invalid one is stored,
    no file is left without its row, and the same gunicorn serves again afterwards."""
    database = settings.DATABASES["default"]
    proxy = CuttableProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432))
    evidence_root = tmp_path / "evidence"
    log = tmp_path / "gunicorn.log"
    try:
        with app_server(
            settings,
            collected_static,
            evidence_root,
            log,
            DATABASE_URL=database_url_through(proxy, database),
            LOG_FORMAT="text",
        ) as base_url:
            load = ApplicantLoad(base_url, plan(300), threads=8)
            try:
                wait_until(lambda: load.answered() >= 12, within=60, what="the load to be under way")
                # The cut lands inside an application's transaction, its files already on disk.
                proxy.cut_when_sent(OUTBOX_INSERT)
                assert proxy.down.wait(timeout=30), "no application was being written"
                cut_at = proxy.cut_at
                time.sleep(CUT_SECONDS)  # how long the outage lasts: a duration, not a wait for something
                proxy.restore()
                restored_at = time.monotonic()
                load.stop_after(16)  # a few more once the network is back
            finally:
                outcomes = load.finish()
            # No restart: the same server takes a new application, once its pool has reconnected.
            wait_until(
                lambda: (
                    Applicant(base_url, 10_000).post({"evidence_1": ("id.pdf", PDF_BYTES)}).status_code == 302
                ),
                within=60,
                what="a new application to be stored after the cut",
            )
            assert health_answers_once_healthy(base_url) == ALL_HEALTHY
    finally:
        proxy.close()

    statuses = Counter(outcome.status for outcome in outcomes)
    assert set(statuses) <= {200, 302, 503}, statuses  # no 500; every request answered
    in_flight = [outcome for outcome in outcomes if outcome.started < cut_at < outcome.ended]
    assert in_flight and statuses[503] >= 1, ("the cut met no request", in_flight, statuses)
    assert any(outcome.started > restored_at for outcome in outcomes), "no applicant came after the cut"

    stored = {
        application.email: application.evidence.count()
        for application in Application.objects.prefetch_related("evidence")
    }
    told_to_retry_but_stored = []
    for outcome in outcomes:
        email = f"person{outcome.number}@applicant.example"
        if not outcome.valid:
            assert outcome.status in (200, 503), outcome
            assert email not in stored, f"{outcome}: invalid but stored"
        elif outcome.status == 302:
            assert stored.get(email) == outcome.files, f"{outcome}: stored with {stored.get(email)} files"
        else:
            assert outcome.status == 503, outcome
            if email in stored:
                assert stored[email] == outcome.files, f"{outcome}: half stored, {stored[email]} files"
                told_to_retry_but_stored.append(outcome)
    # Only where the cut took the answer to a COMMIT the server may have carried out
    # can a 503 ("please send it again") stand beside a stored application.
    assert len(told_to_retry_but_stored) <= proxy.commit_answers_lost, told_to_retry_but_stored
    assert files_on_disk(evidence_root) == {evidence.file.name for evidence in Evidence.objects.all()}

    assert "Traceback" not in log.read_text()
    assert workers_booted(log) == WORKERS, "a worker was replaced: not the same server"


# SMTP ----------------------------------------------------------------------------------------


def finished(worker: subprocess.Popen, timeout: float = 120.0) -> str:
    """The outbox worker's log once it exits; killed, and the test failed, if it runs longer."""
    try:
        _out, err = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.communicate(timeout=30)
        raise
    return err


def test_smtp_relay_down_for_the_whole_run_then_up_delivers_every_mail_once(transactional_db, tmp_path):
    certificates = make_certificates(tmp_path)
    recorder = Recorder()
    relay = SMTPTestServer(recorder, certificates)  # made, not started: the relay is down
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        relay.port = probe.getsockname()[1]
    queued = queue_mails(30)

    worker = start_worker(relay, certificates, "--once")
    err = finished(worker)
    assert worker.returncode == 1, err  # retries scheduled: not a clean run
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {OutboundEmail.Status.QUEUED}
    assert all(mail.attempts == 1 and mail.last_error for mail in OutboundEmail.objects.all())
    assert recorder.received == []

    relay.start()
    try:
        # The backoff has run out (1 minute, here simulated by making the mail due now).
        OutboundEmail.objects.update(next_attempt_at=OutboundEmail.objects.first().created_at)
        for _run in range(2):  # a second run finds nothing left to send
            worker = start_worker(relay, certificates, "--once")
            err = finished(worker)
            assert worker.returncode == 0, err
    finally:
        relay.stop()

    delivered = Counter(address for received in recorder.received for address in received.rcpt_tos)
    assert delivered == Counter(mail.to for mail in queued)  # every mail, none twice
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {OutboundEmail.Status.SENT}


# Homeserver ----------------------------------------------------------------------------------

CREATE_TOKEN = "/_synapse/admin/v1/registration_tokens/new"
INTERNAL_ERROR = b'{"errcode": "M_UNKNOWN", "error": "Internal server error"}'


class HomeserverProxy:
    """Between the app and the real homeserver; `mode` (changeable at any time) says what it does.

    FORWARD: passes every request on.
    LOSE_FIRST_CREATE_ANSWER: the first token creation is forwarded, so the homeserver
      makes the token, but answered 500 all the same. The nasty kind of failure: only
      the answer is lost, and the client's retry of the create meets the token its
      first attempt made.
    FAIL_CREATES: every token creation is answered 500 without being forwarded: the
      homeserver does nothing, however often the client retries.
    """

    FORWARD = "forward"
    LOSE_FIRST_CREATE_ANSWER = "lose the first create's answer"
    FAIL_CREATES = "fail every create"

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream = upstream
        self.mode = mode
        self.lost_answers: list[int] = []  # the homeserver's own status of each create answered 500
        self.failed_creates = 0  # answered 500 without forwarding
        self.forwarded_creates = 0
        proxy = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                create = self.command == "POST" and self.path == CREATE_TOKEN
                with lock:
                    fail = create and proxy.mode == proxy.FAIL_CREATES
                    if fail:
                        proxy.failed_creates += 1
                    elif create:
                        proxy.forwarded_creates += 1
                if fail:
                    self._answer(500, INTERNAL_ERROR)
                    return
                status, payload = self._forward(body)
                with lock:
                    lose = create and proxy.mode == proxy.LOSE_FIRST_CREATE_ANSWER and not proxy.lost_answers
                    if lose:
                        proxy.lost_answers.append(status)
                self._answer(*((500, INTERNAL_ERROR) if lose else (status, payload)))

            def _forward(self, body: bytes | None) -> tuple[int, bytes]:
                request = urllib.request.Request(  # noqa: S310 - our own Synapse on 127.0.0.1
                    proxy.upstream + self.path,
                    data=body,
                    method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - our Synapse
                        return answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    return error.code, error.read()

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tokens_on(homeserver) -> set[str]:
    """The registration tokens on the homeserver, asked through Synapse's admin API (not our client)."""
    response = requests.get(
        f"{homeserver.url}/_synapse/admin/v1/registration_tokens",
        headers={"Authorization": f"Bearer {homeserver.admin_token}"},
        timeout=30,
    )
    response.raise_for_status()
    return {item["token"] for item in response.json()["registration_tokens"]}


@pytest.mark.synapse
def test_homeserver_500_then_recovering_leaves_exactly_one_token(
    synapse,  # noqa: F811
    approved,  # noqa: F811
    fast_retries,  # noqa: F811 - no waits between retries
    inviting_admin,
    settings,
    monkeypatch,
):
    """The homeserver makes the token but its answer is lost: the failed click leaves no token
    behind, and the next click makes the one token the invitation names."""
    # A real read timeout: a slow Synapse must not turn into a timeout, which is another failure.
    monkeypatch.setattr(matrix, "READ_TIMEOUT", 10.0)

    before = tokens_on(synapse)
    proxy = HomeserverProxy(synapse.url, HomeserverProxy.LOSE_FIRST_CREATE_ANSWER)
    settings.MATRIX_HOMESERVER_URL = proxy.url
    try:
        with pytest.raises(workflow.WorkflowError):
            workflow.issue_invitation(approved, inviting_admin, matrix_username="alex")
    finally:
        proxy.close()
    assert proxy.lost_answers == [200], "the homeserver made the token and only its answer was lost"
    approved.refresh_from_db()
    assert approved.status == Application.Status.APPROVED  # nothing changed locally
    assert not Invitation.objects.exists()
    assert tokens_on(synapse) == before, "the failed click left a token on the homeserver"

    # The homeserver answers again: the admin clicks again.
    settings.MATRIX_HOMESERVER_URL = synapse.url
    workflow.issue_invitation(approved, inviting_admin, matrix_username="alex")
    approved.refresh_from_db()
    assert approved.status == Application.Status.INVITED
    assert tokens_on(synapse) - before == {Invitation.objects.get().token}  # exactly one, for it


def error_summary(page: str) -> str:
    """The message above an admin form that failed (templates/admin/vetting/application/transition.html)."""
    found = re.search(r'<p class="errornote" id="error-summary" tabindex="-1">([^<]*)</p>', page)
    assert found, "no error summary on the page"
    return found.group(1)


@pytest.mark.synapse
def test_homeserver_answering_500_without_doing_anything_then_recovering_issues_one_token(
    client,
    synapse,  # noqa: F811
    approved,  # noqa: F811
    fast_retries,  # noqa: F811 - no waits between retries
    inviting_admin,
    settings,
):
    """The issue's case: the homeserver answers 500 to every try of the create, doing nothing.

    The staff member's click in the admin fails with a message saying so (not a
    500); once the homeserver works again the next click makes exactly one token,
    the one the invitation row names.
    """
    before = tokens_on(synapse)
    proxy = HomeserverProxy(synapse.url, HomeserverProxy.FAIL_CREATES)
    settings.MATRIX_HOMESERVER_URL = proxy.url
    issue = f"/admin/vetting/application/{approved.pk}/action/issue_invitation/"
    form = {"seen_status": Application.Status.APPROVED, "matrix_username": "alex"}
    client.force_login(inviting_admin)
    try:
        failed = client.post(issue, form)  # the test client raises what would be a 500
        assert failed.status_code == 200
        assert error_summary(failed.content.decode()).endswith(
            "The homeserver did not answer creating a registration token (HTTP 500). "
            + matrix.Unavailable.advice
        )
        assert (proxy.failed_creates, proxy.forwarded_creates) == (1 + len(matrix.RETRY_DELAYS), 0), (
            "the homeserver must fail every try of the client, and be asked nothing it could do"
        )
        assert tokens_on(synapse) == before
        approved.refresh_from_db()
        assert approved.status == Application.Status.APPROVED
        assert not Invitation.objects.exists()

        proxy.mode = HomeserverProxy.FORWARD  # the homeserver works again; the same button
        done = client.post(issue, form)
        assert done.status_code == 302, done.content.decode()[-2000:]
        assert (
            "Issue invitation: done. The application is now invited." in client.get(done.url).content.decode()
        )
        assert proxy.forwarded_creates == 1
    finally:
        proxy.close()

    new_tokens = tokens_on(synapse) - before
    assert len(new_tokens) == 1, new_tokens
    invitation = Invitation.objects.get()
    assert (invitation.application_id, invitation.token) == (approved.pk, *new_tokens)
    approved.refresh_from_db()
    assert approved.status == Application.Status.INVITED
