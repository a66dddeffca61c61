"""Fault injection on the services around the app: Redis, the SMTP relay, the homeserver.

Each scenario takes a real dependency away in the middle of real work and
brings it back; nothing may be lost, nothing done twice, no 500 shown.
Run with `make faults` (also run by .ci/run).
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from notifications.models import OutboundEmail
from tests.faults.conftest import app_server
from tests.notifications.test_worker_processes import queue_mails, start_worker
from tests.security.conftest import RedisServer
from tests.smtp_server import Recorder, SMTPTestServer, make_certificates
from tests.vetting.conftest import approved, fast_retries, synapse, synapse_homeserver  # noqa: F401
from vetting import matrix, workflow
from vetting.models import Application, Invitation

pytestmark = [pytest.mark.faults, pytest.mark.postgres]


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


# A gunicorn log record starts with its time: ours "2026-11-29 03:14:00,808 …", gunicorn's "[2026-11-29 …".
def test_redis_unreachable_during_load_falls_back_without_errors(
    transactional_db, settings, collected_static, tmp_path
):
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    log = tmp_path / "gunicorn.log"
    statuses: Counter = Counter()
    try:
        with app_server(
            settings,
            collected_static,
            tmp_path / "evidence",
            log,
            CACHE_URL=redis_server.url,
            RATELIMIT_ENABLE="true",
            LOG_FORMAT="text",
        ) as base_url:

            def visit(number: int) -> int:
                path = "/apply/" if number % 3 else "/privacy/"
                return requests.get(f"{base_url}{path}", timeout=30).status_code

            def wave(count: int) -> None:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    statuses.update(pool.map(visit, range(count)))

            wave(60)
            assert health_answers(base_url) == ALL_HEALTHY
            redis_server.stop()
            wave(60)  # Redis gone: counting goes on in each worker's memory
            # The load balancer hears which part is down.
            assert health_answers(base_url) == answers(503, database="ok", cache="error")
            redis_server.start()
            time.sleep(6)  # the fallback tries Redis again every 5 s
            wave(60)
            assert health_answers_once_healthy(base_url) == ALL_HEALTHY
        import redis

        shared_counters = redis.Redis.from_url(redis_server.url).dbsize()
    finally:
        redis_server.stop()

    assert 500 not in statuses, statuses
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] > 0
    # Shared limiting resumed: the counters are back in the restarted Redis.
    assert shared_counters > 0
    text = log.read_text()
    assert "Traceback" not in text
    assert "redis" in text.lower()  # the outage was logged, once a minute per worker at most


class CuttableProxy:
    """A TCP proxy in front of the real PostgreSQL that the test can cut, as a lost network would.

    Cut: every open connection is dropped and new ones are closed at once.
    Restored: connections pass again.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return  # closed
            if self.down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            dropped, self.open = self.open, set()
        for end in dropped:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


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
            DATABASE_URL=f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}",
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


def test_smtp_relay_down_for_the_whole_run_then_up_delivers_every_mail_once(transactional_db, tmp_path):
    certificates = make_certificates(tmp_path)
    recorder = Recorder()
    relay = SMTPTestServer(recorder, certificates)  # made, not started: the relay is down
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        relay.port = probe.getsockname()[1]
    queued = queue_mails(30)

    worker = start_worker(relay, certificates, "--once")
    _out, err = worker.communicate(timeout=120)
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
            _out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
    finally:
        relay.stop()

    delivered = Counter(address for received in recorder.received for address in received.rcpt_tos)
    assert delivered == Counter(mail.to for mail in queued)  # every mail, none twice
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {OutboundEmail.Status.SENT}


CREATE_TOKEN = "/_synapse/admin/v1/registration_tokens/new"


class LostCreateAnswerProxy:
    """Forwards every request to the real homeserver; the first token creation it forwards is
    answered 500 all the same.

    The nasty kind of failure: the homeserver did the work (the token exists),
    only the answer is lost. The client's retry of the create then meets the
    token its first attempt made.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lost_answers: list[int] = []  # the homeserver's own status of each create answered 500
        proxy = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                request = urllib.request.Request(  # noqa: S310 - our own Synapse on 127.0.0.1
                    proxy.upstream + self.path,
                    data=body,
                    method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - our Synapse
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, payload = error.code, error.read()
                with lock:
                    lose = self.command == "POST" and self.path == CREATE_TOKEN and not proxy.lost_answers
                    if lose:
                        proxy.lost_answers.append(status)
                if lose:
                    status, payload = 500, b'{"errcode": "M_UNKNOWN", "error": "Internal server error"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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

    def tokens_on_synapse() -> set[str]:
        settings.MATRIX_HOMESERVER_URL = synapse.url
        return {token.token for token in matrix.get_client().list_tokens()}

    before = tokens_on_synapse()
    proxy = LostCreateAnswerProxy(synapse.url)
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
    assert tokens_on_synapse() == before, "the failed click left a token on the homeserver"

    # The homeserver answers again: the admin clicks again.
    workflow.issue_invitation(approved, inviting_admin, matrix_username="alex")
    approved.refresh_from_db()
    assert approved.status == Application.Status.INVITED
    assert tokens_on_synapse() - before == {Invitation.objects.get().token}  # exactly one, for it
