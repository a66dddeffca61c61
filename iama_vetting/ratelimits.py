"""Tiered rate limits on top of django-ratelimit.

Each protected view gets one `Limit`: a per-minute, per-hour and per-day tier
for one key (the client IP by default). Over any tier the client gets our 429
page (JSON for machine endpoints) with Retry-After, instead of
django-ratelimit's 403-type `Ratelimited`. Usage:

    @rate_limited(ratelimits.APPLY)
    def apply(request): ...

Counters live in the "ratelimit" cache (settings.RATELIMIT_USE_CACHE), which
is shared Redis in production with a per-process fallback (iama_vetting.cache).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django_ratelimit.core import get_usage

logger = logging.getLogger(__name__)

MINUTE, HOUR, DAY = "m", "h", "d"


def client_ip(request: HttpRequest) -> str:
    """The client's address, trusting X-Forwarded-For only through our own proxies.

    Each of the TRUSTED_PROXY_COUNT proxies appends the address it saw, so the
    client is that many entries from the right; anything further left was
    written by the client and is ignored. Without trusted proxies, or with a
    malformed header, the TCP peer is the client. An IPv4 client seen through
    a dual-stack listener (::ffff:a.b.c.d) is its IPv4 address: otherwise all
    of them would share one IPv6 /64, and so one bucket of every limit.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    hops = settings.TRUSTED_PROXY_COUNT
    if hops:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(forwarded) >= hops:
            try:
                return _unmapped(forwarded[-hops])
            except ValueError:
                logger.warning("Ignoring a malformed X-Forwarded-For entry from a trusted proxy.")
    if ":" in remote:
        # Only IPv6 peers are parsed: an IPv4 one is taken as the server gave it, at no cost.
        try:
            return _unmapped(remote)
        except ValueError:
            pass  # not an address (a test client's placeholder): taken as it is
    return remote or "0.0.0.0"  # noqa: S104 - a Unix-socket peer has no address; one shared bucket


def _unmapped(value: str) -> str:
    """The address in its usual form, an IPv4-mapped IPv6 address as its IPv4 address."""
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _folded(value: str) -> str:
    """NFKC, then case-folded, as Django compares e-mail addresses in its password reset:
    look-alikes that reach the same account ('ｅv_agent', 'Ev_agent') share one bucket."""
    return unicodedata.normalize("NFKC", value.strip()).casefold()


def username_key(group: str, request: HttpRequest) -> str:
    """The sign-in name: Django's UsernameField NFKC-normalises it before authenticating."""
    return _folded(request.POST.get("username", ""))[:150]


def email_key(group: str, request: HttpRequest) -> str:
    """The address a password reset is asked for."""
    return _folded(request.POST.get("email", ""))[:254]


@dataclass(frozen=True)
class Limit:
    """Three tiers for one group of requests and one key.

    A tier set to None is not counted. `key` is any django-ratelimit key: "ip", "user", or a callable
    (group, request) -> str. `methods` None means every method.
    """

    group: str
    per_minute: int
    per_hour: int | None
    per_day: int | None
    key: str | Callable[[str, HttpRequest], str] = "ip"
    methods: tuple[str, ...] | None = None
    json: bool = False

    def tiers(self) -> list[tuple[str, str]]:
        """(group, rate) of each tier, the longest first."""
        return [
            (f"{self.group}:{period}", f"{count}/{period}")
            for period, count in ((DAY, self.per_day), (HOUR, self.per_hour), (MINUTE, self.per_minute))
            if count is not None
        ]


# The limits, per view. The README's "Rate limits" section says why each is what it is.
APPLY = Limit("apply", per_minute=5, per_hour=20, per_day=50, methods=("POST",))
STATUS_PAGE = Limit("status", per_minute=30, per_hour=300, per_day=1000)
CONFIRM_EMAIL = Limit("confirm", per_minute=10, per_hour=50, per_day=200)
ADMIN_LOGIN_PER_IP = Limit("admin-login-ip", per_minute=10, per_hour=60, per_day=200, methods=("POST",))
ADMIN_LOGIN_PER_USERNAME = Limit(
    "admin-login-user", per_minute=5, per_hour=20, per_day=50, key=username_key, methods=("POST",)
)
TWO_FACTOR_PER_USER = Limit(
    "two-factor", per_minute=5, per_hour=20, per_day=50, key="user", methods=("POST",)
)
PASSWORD_RESET = Limit("password-reset", per_minute=3, per_hour=10, per_day=20, methods=("POST",))
PASSWORD_RESET_PER_ADDRESS = Limit(
    "password-reset-address", per_minute=2, per_hour=5, per_day=10, key=email_key, methods=("POST",)
)
CSP_REPORT = Limit("csp-report", per_minute=60, per_hour=600, per_day=2000, json=True)
EVIDENCE_DOWNLOAD = Limit("evidence-download", per_minute=60, per_hour=600, per_day=3000, key="user")
# Read by security_report, which counts refusals per limit.
ALL_LIMITS = (
    APPLY,
    STATUS_PAGE,
    CONFIRM_EMAIL,
    ADMIN_LOGIN_PER_IP,
    ADMIN_LOGIN_PER_USERNAME,
    TWO_FACTOR_PER_USER,
    PASSWORD_RESET,
    PASSWORD_RESET_PER_ADDRESS,
    CSP_REPORT,
    EVIDENCE_DOWNLOAD,
)
DEFAULT_TIER_NAME = "default"


def refused_by(request: HttpRequest, *limits: Limit) -> tuple[Limit, int] | None:
    """Count this request against the tiers in turn; the limit of the first one exceeded and its
    Retry-After, else None.

    A refused request is counted no further: the tiers and limits after it would only
    gain counters (one per address tried, for a keyed limit) for a request that is not
    served, and while Redis is away those would crowd the client's own counters out of
    the fallback. Tiers go longest first (Limit.tiers), so the Retry-After is the
    longest wait of the limit that refused. A request that is served is counted in every tier.
    """
    for limit in limits:
        if limit.methods is not None and request.method not in limit.methods:
            continue
        for group, rate in limit.tiers():
            usage = get_usage(request, group=group, key=limit.key, rate=rate, increment=True)
            if usage is not None and usage["should_limit"]:
                logger.warning("Rate limit %s (%s) exceeded.", group, rate)
                return limit, max(1, usage["time_left"])
    return None


# Every other anonymous view: one per-minute tier per client IP
# (settings.RATELIMIT_DEFAULT_PER_MINUTE), a guard against floods. The public
# form is the busiest page, so this tier's counting is kept off the page's
# time and mostly off the network: each process counts in its own memory and
# sends its counts to the shared store in batches, one pipelined round trip
# after a response, and reads the answers (each client's count over all
# processes) as its next request comes in. A client whose count is within a
# batch of the limit has each request sent as it is served. A process refuses
# a client once what it knows of the client's count reaches the limit, until
# the minute ends. So within one process the limit is exact, and across P
# processes at most (P - 1) × batch more requests get through in a minute.


def default_tier_batch(limit: int) -> int:
    """Requests a process counts before sending: 1 (every request) up to limits of 31, at most 8.

    The batch bounds what the other processes can let through unseen, so it
    stays a small part of the limit (a 16th); at 8 the page pays for a round
    trip once in eight requests.
    """
    return max(1, min(8, limit // 16))


class DefaultTier:
    """What this process knows of the default tier's counts in the current minute.

    Answers are read on the thread that sent the batch (its own Redis connection). In a
    threaded server (runserver), a thread that ends leaves its last answer unread and those
    counts stay among the sent ones until the minute ends: a client may then be refused a
    little early, never late. gunicorn's sync workers have one thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start_minute(0)

    def _start_minute(self, ends_at: int) -> None:
        self.ends_at = ends_at
        self.unsent: dict[str, int] = {}  # client -> requests served and not yet sent
        self.unsent_total = 0
        self.sent: dict[str, int] = {}  # client -> requests sent whose answer is not read yet
        # client -> count over all processes, as last answered; kept only near the limit.
        self.near_limit: dict[str, int] = {}

    def _current_minute(self) -> None:
        now = int(time.time())
        ends_at = now - now % 60 + 60
        if ends_at != self.ends_at:
            # Last minute's counts refuse nobody any more; answers still on their way are ignored.
            self._start_minute(ends_at)

    def seconds_refused(self, client: str) -> int | None:
        """The Retry-After if the client has reached the limit this minute, as far as this process knows."""
        if self.sent:
            # The answer to this process's last batch: long arrived, read without waiting.
            caches[settings.RATELIMIT_USE_CACHE].read_pending_hits()
        limit = settings.RATELIMIT_DEFAULT_PER_MINUTE
        with self._lock:
            self._current_minute()
            count = self.near_limit.get(client, 0) + self.sent.get(client, 0) + self.unsent.get(client, 0)
            ends_at = self.ends_at
        if count < limit:
            return None
        logger.warning("Rate limit default (%s/m) exceeded.", limit)
        return max(1, ends_at - int(time.time()))

    def count(self, client: str) -> None:
        """Count one served request; send this process's counts when a batch is full."""
        batch = default_tier_batch(settings.RATELIMIT_DEFAULT_PER_MINUTE)
        with self._lock:
            self._current_minute()
            self.unsent[client] = self.unsent.get(client, 0) + 1
            self.unsent_total += 1
            if self.unsent_total < batch and client not in self.near_limit:
                return
            counts = self.unsent
            for sent_client, requests in counts.items():
                self.sent[sent_client] = self.sent.get(sent_client, 0) + requests
            self.unsent, self.unsent_total = {}, 0
            ends_at = self.ends_at
        try:
            caches[settings.RATELIMIT_USE_CACHE].hit_many_later(
                {_store_key(client, ends_at): requests for client, requests in counts.items()},
                65,
                functools.partial(self._answered, ends_at, counts),
            )
        except Exception:
            # Called when the response closes, where Django would drop the error unseen. The
            # counts stay with those sent: this process goes on counting them until the minute ends.
            logger.exception("Counting requests in the default rate-limit tier failed.")

    def _answered(self, ends_at: int, counts: dict[str, int], totals: dict[str, int]) -> None:
        """The store's counts for a batch sent in minute `ends_at`: remember the clients near the limit."""
        batch = default_tier_batch(settings.RATELIMIT_DEFAULT_PER_MINUTE)
        with self._lock:
            if ends_at != self.ends_at:
                return
            for client, requests in counts.items():
                still_sent = self.sent.pop(client, 0) - requests
                if still_sent > 0:
                    self.sent[client] = still_sent
                total = totals.get(_store_key(client, ends_at))
                if total is not None and total + batch >= settings.RATELIMIT_DEFAULT_PER_MINUTE:
                    self.near_limit[client] = max(total, self.near_limit.get(client, 0))

    def forget(self) -> None:
        """Drop every count this process holds (tests start each with none)."""
        with self._lock:
            self._start_minute(0)


def _store_key(client: str, ends_at: int) -> str:
    """The shared store's counter of one client's minute (the minute is in the key: EXPIRE moves its end)."""
    return f"default:{client}:{ends_at}"


def default_tier_client(request: HttpRequest) -> str:
    """The default tier's key: the client's IP address."""
    client = client_ip(request)
    if ":" in client:
        # Like django-ratelimit: one IPv6 /64 is one client.
        client = str(ipaddress.ip_network(f"{client}/64", strict=False).network_address)
    return client


default_tier = DefaultTier()


REFUSALS_KEPT_SECONDS = 8 * 24 * 3600  # a week of hourly counts for security_report, and a day more


def refusals_key(limit_name: str, hour: datetime) -> str:
    return f"refusals:{limit_name}:{hour:%Y%m%d%H}"


def count_refusal(limit_name: str) -> None:
    """Hourly count of refusals per limit, in the shared store; read by `security_report`."""
    caches[settings.RATELIMIT_USE_CACHE].hit(
        refusals_key(limit_name, datetime.now(UTC)), REFUSALS_KEPT_SECONDS
    )


def too_many_requests(
    request: HttpRequest, retry_after: int, *, limit_name: str, as_json: bool = False
) -> HttpResponse:
    count_refusal(limit_name)
    if as_json:
        response = JsonResponse({"error": "rate_limited", "retry_after": retry_after}, status=429)
    else:
        response = HttpResponse(
            render_to_string("429.html", {"retry_minutes": -(-retry_after // 60)}, request=request),
            status=429,
        )
    response["Retry-After"] = str(retry_after)
    response["Cache-Control"] = "no-store"
    return response


def rate_limited(*limits: Limit) -> Callable:
    """Decorate a view with one or more limits; over any tier it answers 429."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            refusal = refused_by(request, *limits)
            if refusal is not None:
                refusing, retry_after = refusal
                # Counted under the limit that refused: security_report tells a sprayer
                # on one address from one account guessed at from many.
                return too_many_requests(
                    request,
                    retry_after,
                    limit_name=refusing.group,
                    as_json=any(limit.json for limit in limits),
                )
            return view(request, *args, **kwargs)

        # Read by DefaultRateLimitMiddleware: this view has its own limits.
        wrapped.rate_limits = limits
        return wrapped

    return decorator


def exempt(view: Callable) -> Callable:
    """Leave a view out of every limit (read by DefaultRateLimitMiddleware): /healthz."""
    view.rate_limit_exempt = True
    return view
