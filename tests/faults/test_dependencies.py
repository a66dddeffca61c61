"""Fault injection on the services around the app: Redis, the SMTP relay, the homeserver.

Each scenario takes a real dependency away in the middle of real work and
brings it back; nothing may be lost, nothing done twice, no 500 shown.
Run with `make faults` (also run by .ci/run).
"""

from __future__ import annotations

import http.server
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
            redis_server.stop()
            wave(60)  # Redis gone: counting goes on in each worker's memory
            redis_server.start()
            time.sleep(6)  # the fallback tries Redis again every 5 s
            wave(60)
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


class FlakyProxy:
    """Forwards to the real homeserver, but answers 500 to the first `failures` requests.

    The first failure is the nasty kind: the homeserver did the work (the token
    exists), only the answer is lost.
    """

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        proxy = self

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
                    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - our Synapse
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, payload = error.code, error.read()
                if proxy.failures > 0:
                    proxy.failures -= 1
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
    fast_retries,  # noqa: F811
    inviting_admin,
    settings,
):
    before = {token.token for token in matrix.get_client().list_tokens()}
    proxy = FlakyProxy(synapse.url, failures=1 + len(matrix.RETRY_DELAYS))  # more than one call's retries
    settings.MATRIX_HOMESERVER_URL = proxy.url
    try:
        with pytest.raises(workflow.WorkflowError):
            workflow.issue_invitation(approved, inviting_admin, matrix_username="alex")
        approved.refresh_from_db()
        assert approved.status == Application.Status.APPROVED  # nothing changed locally
        assert not Invitation.objects.exists()

        # The homeserver is back: the admin clicks again.
        workflow.issue_invitation(approved, inviting_admin, matrix_username="alex")
    finally:
        proxy.close()
    approved.refresh_from_db()
    assert approved.status == Application.Status.INVITED
    settings.MATRIX_HOMESERVER_URL = synapse.url
    new_tokens = {token.token for token in matrix.get_client().list_tokens()} - before
    assert new_tokens == {Invitation.objects.get().token}  # exactly one token exists for it
