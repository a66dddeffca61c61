"""Deployment checks (`manage.py check --deploy`, and so verify_deployment) for values that start
quietly but leave production unprotected."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"


@register(Tags.security, deploy=True)
def check_staff_two_factor(app_configs, **kwargs) -> list[CheckMessage]:
    if settings.STAFF_REQUIRE_2FA:
        return []
    return [
        Warning(
            "STAFF_REQUIRE_2FA is off: staff sign in to the admin with a password alone.",
            hint="Remove STAFF_REQUIRE_2FA=false from the environment file (it is on without DEBUG).",
            id="iama_vetting.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_rate_limits_enabled(app_configs, **kwargs) -> list[CheckMessage]:
    if settings.RATELIMIT_ENABLE:
        return []
    return [
        Warning(
            "RATELIMIT_ENABLE is off: no request is ever refused for coming too often.",
            hint="Remove RATELIMIT_ENABLE=false from the environment file; it is for load tests only.",
            id="iama_vetting.W002",
        )
    ]


@register(Tags.security, Tags.caches, deploy=True)
def check_rate_limits_shared(app_configs, **kwargs) -> list[CheckMessage]:
    # settings.py gives the rate-limit cache a Redis primary only when the default cache is Redis.
    primary = settings.CACHES.get("ratelimit", {}).get("OPTIONS", {}).get("PRIMARY", {})
    if primary.get("BACKEND") == REDIS_CACHE:
        return []
    return [
        Warning(
            "Rate limits are counted in each worker process's memory: every worker allows the whole "
            "limit, and a restart forgets it.",
            hint="Set REDIS_URL (or CACHE_URL) to the Redis server, e.g. redis://127.0.0.1:6379/0.",
            id="iama_vetting.W003",
        )
    ]
