"""/healthz for the load balancer: is the database answering, is the cache?

The answer names only which part fails, never why: no host names, no error
texts. HEAD gets the same status as GET. It goes through no rate limit and no
maintenance switch (see iama_vetting.maintenance.EXEMPT_PREFIXES), so a probe
never trips a limit.
"""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from iama_vetting import ratelimits

# Both checks together must answer within this many seconds.
TIMEOUT = 2.0

logger = logging.getLogger(__name__)


def check_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # Runs in a worker thread: give its connection back to the pool.
        connection.close()


def check_cache() -> None:
    key = f"healthz:{secrets.token_hex(8)}"
    value = secrets.token_hex(8)
    cache.set(key, value, timeout=10)
    if cache.get(key) != value:
        raise RuntimeError("the cache did not return what was stored")
    cache.delete(key)


CHECKS = {"database": check_database, "cache": check_cache}


def run_checks(timeout: float = TIMEOUT) -> dict[str, str]:
    """Each check in its own thread, so hanging servers cost at most `timeout` in all."""
    executor = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="healthz")
    deadline = time.monotonic() + timeout
    futures = {name: executor.submit(check) for name, check in CHECKS.items()}
    results = {}
    try:
        for name, future in futures.items():
            try:
                # One deadline for all: waiting `timeout` for each in turn would let a part
                # answering after it count as ok, and the probe take twice as long.
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                results[name] = "ok"
            except FutureTimeout:
                logger.error("Health check: %s did not answer within %s s.", name, timeout)
                results[name] = "error"
            except Exception as error:
                # One line, no traceback: a load balancer probes every few seconds
                # while a part is down. The error's kind only: its text may name
                # hosts or credentials, as the answer never does.
                logger.error("Health check: %s failed (%s).", name, type(error).__name__)
                results[name] = "error"
    finally:
        # A hung check's thread ends on its own connect timeout; never wait for it here.
        executor.shutdown(wait=False, cancel_futures=True)
    return results


@ratelimits.exempt
# GET and HEAD: load balancers often probe with HEAD and read only the status.
@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    results = run_checks()
    healthy = all(state == "ok" for state in results.values())
    return JsonResponse(results, status=200 if healthy else 503)
