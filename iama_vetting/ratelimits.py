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
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
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
    malformed header, the TCP peer is the client.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    hops = settings.TRUSTED_PROXY_COUNT
    if hops:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(forwarded) >= hops:
            candidate = forwarded[-hops]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                logger.warning("Ignoring a malformed X-Forwarded-For entry from a trusted proxy.")
    return remote or "0.0.0.0"  # noqa: S104 - a Unix-socket peer has no address; one shared bucket


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


def seconds_until_allowed(request: HttpRequest, *limits: Limit) -> int | None:
    """Count this request against the tiers in turn; the Retry-After of the first one exceeded, else None.

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
                return max(1, usage["time_left"])
    return None


# Every other anonymous view: one per-minute tier (settings.RATELIMIT_DEFAULT_PER_MINUTE).
# The public form is the busiest page and this tier only guards against floods,
# so its count is kept off the page's time: a request is counted in the shared
# store once its response is sent, and the answer is read as the process's
# next request comes in. A process refuses a client once a count it made
# reached the limit, until that minute ends. So within one process the limit
# is exact, and across P worker processes at most P - 1 more requests get
# through in a minute (each process learns from its own next count).
clients_over_default_tier = LocMemCache(
    "rvi-clients-over-default-tier", {"TIMEOUT": 60, "OPTIONS": {"MAX_ENTRIES": 10_000}}
)


@dataclass(frozen=True)
class DefaultTierMinute:
    """A client's current minute in the default tier."""

    key: str
    ends_at: int

    @classmethod
    def of(cls, request: HttpRequest) -> DefaultTierMinute:
        client = client_ip(request)
        if ":" in client:
            # Like django-ratelimit: one IPv6 /64 is one client.
            client = str(ipaddress.ip_network(f"{client}/64", strict=False).network_address)
        now = int(time.time())
        ends_at = now - now % 60 + 60
        return cls(f"default:{client}:{ends_at}", ends_at)

    def seconds_refused(self) -> int | None:
        """The Retry-After if this process has counted the client to the limit this minute, else None."""
        caches[settings.RATELIMIT_USE_CACHE].read_pending_hit()
        if clients_over_default_tier.get(self.key, 0) < settings.RATELIMIT_DEFAULT_PER_MINUTE:
            return None
        logger.warning("Rate limit default (%s/m) exceeded.", settings.RATELIMIT_DEFAULT_PER_MINUTE)
        return max(1, self.ends_at - int(time.time()))

    def count(self) -> None:
        """Count one request in the shared store, without waiting for its answer."""
        try:
            caches[settings.RATELIMIT_USE_CACHE].hit_later(self.key, 65, self._remember)
        except Exception:
            # Called when the response closes, where Django would drop the error unseen.
            logger.exception("Counting a request in the default rate-limit tier failed.")

    def _remember(self, count: int) -> None:
        """At the limit, this process refuses the client until the minute ends."""
        if count >= settings.RATELIMIT_DEFAULT_PER_MINUTE:
            clients_over_default_tier.set(self.key, count, max(1, self.ends_at - int(time.time())))


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
            retry_after = seconds_until_allowed(request, *limits)
            if retry_after is not None:
                return too_many_requests(
                    request,
                    retry_after,
                    limit_name=limits[0].group,
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
