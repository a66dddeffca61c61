"""Project-wide middleware: request context and access log, security headers,
CSP with domain-aware reporting, the default rate limit, and the staff
middleware that the public pages skip."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject, CSPMiddleware, PolicyParts
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions_middleware
from django.core.exceptions import DisallowedHost
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotAllowed
from django.template.loader import render_to_string
from django.urls import Resolver404, ResolverMatch, resolve
from django.utils.functional import LazyObject, empty
from django_otp import middleware as otp_middleware

from iama_vetting import ratelimits
from iama_vetting.logs import escape_control_characters, request_context
from iama_vetting.settings import is_local_host

access_logger = logging.getLogger("iama_vetting.request")

# What nginx's $request_id and common tracing ids look like; anything else is replaced.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# URL parameters that are capabilities (signed status links, reset tokens): never logged.
SECRET_URL_PARAMETERS = ("token", "signed", "uidb64")
# Where our paths carry capabilities: the segments after these first segments, by
# parameter name (vetting/urls.py: status pages, their withdraw, my-data and erase
# pages, the confirmation link; iama_vetting/urls.py: the staff set-password link).
# Found by position, not by resolving: a path that resolves to no page
# ("/status/<token>" without its slash, a mistyped suffix) still carries the token.
SECRET_PATH_SEGMENTS = {"status": ("token",), "confirm": ("token",), "reset": ("uidb64", "token")}
CSP_REPORT_GROUP = "csp-endpoint"


def _path_secrets(path_info: str) -> list[tuple[int, str, str]]:
    """(segment index, parameter name, value) of each capability token in a path."""
    segments = path_info.split("/")
    first = next((index for index, segment in enumerate(segments) if segment), None)
    if first is None or (names := SECRET_PATH_SEGMENTS.get(segments[first].lower())) is None:
        return []
    match = _resolve(path_info, settings.ROOT_URLCONF)
    if match is not None and not any(
        secret in name for secret in SECRET_URL_PARAMETERS for name in match.kwargs
    ):
        return []  # a page of its own among the tokens' routes: /reset/done/
    # The non-empty segments after the route's name: Django's routes see "/status//<token>/" too.
    after = [index for index in range(first + 1, len(segments)) if segments[index]]
    return [(index, name, segments[index]) for index, name in zip(after, names, strict=False)]


def url_secrets(request: HttpRequest) -> list[tuple[str, str]]:
    """(parameter name, value) of each capability token in the request's path."""
    return [(name, value) for _index, name, value in _path_secrets(request.path_info)]


def loggable_path(request: HttpRequest) -> str:
    """The request path with capability tokens replaced by their parameter name."""
    segments = request.path_info.split("/")
    for index, name, _value in _path_secrets(request.path_info):
        segments[index] = f"<{name}>"
    # The path is the script prefix (if any) and path_info.
    prefix = request.path[: -len(request.path_info)] if request.path.endswith(request.path_info) else ""
    return escape_control_characters(prefix + "/".join(segments))


# A route's parameters by name only, as tokens are masked: "<str:token>" and "(?P<token>…)" become "<token>".
_ROUTE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


def page_route(path_info: str) -> str | None:
    """The named route a path resolves to, like '/status/<token>/'; None when it is none of our pages."""
    match = _resolve(path_info, settings.ROOT_URLCONF)
    if match is None or match.url_name is None:
        return None
    route = _ROUTE_PARAMETER.sub(lambda parameter: f"<{parameter[1] or parameter[2]}>", match.route)
    return "/" + route.replace("^", "").replace("$", "")


# Resolving costs more than the rest of the access line, and the access line
# and the default rate limit both need it before Django resolves: once per path.
@functools.lru_cache(maxsize=512)
def _resolve(path_info: str, urlconf: str) -> ResolverMatch | None:
    try:
        return resolve(path_info, urlconf)
    except Resolver404:
        return None


def _user_id(request: HttpRequest) -> int | None:
    """The signed-in user's id, if the request already looked the user up.

    Never triggers the lookup: anonymous public pages must not touch the session.
    """
    user = getattr(request, "user", None)
    if user is None or (isinstance(user, LazyObject) and user._wrapped is empty):
        return None
    return user.pk if user.is_authenticated else None


class RequestContextMiddleware:
    """Request id (from the trusted proxy or new), log context, and one access line per request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.monotonic()
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        # Only our own proxy may name the request; a client could otherwise forge log correlation.
        if settings.TRUSTED_PROXY_COUNT and REQUEST_ID_PATTERN.fullmatch(incoming):
            request.request_id = incoming
        else:
            request.request_id = uuid.uuid4().hex
        context = {
            "request_id": request.request_id,
            "user_id": None,
            "client_ip": ratelimits.client_ip(request),
            "method": escape_control_characters(request.method or ""),
            "path": loggable_path(request),
            # Not a log field: RequestContextFilter masks these wherever a line repeats them
            # (Django's "Forbidden (CSRF …): <path>", "Internal Server Error: <path>", tracebacks).
            "url_secrets": url_secrets(request),
        }
        token = request_context.set(context)
        try:
            response = self.get_response(request)
            context["user_id"] = _user_id(request)
            response["X-Request-ID"] = request.request_id
            duration_ms = round((time.monotonic() - started) * 1000, 1)
            status = response.status_code
            level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
            access_logger.log(
                level,
                "%s %s %s %sms",
                context["method"],
                context["path"],
                response.status_code,
                duration_ms,
                extra={"status": status, "duration_ms": duration_ms},
            )
            # This line replaces django.request's "Not Found: <path>" style line,
            # which comes after the context is gone and would show raw tokens.
            # (An exception is still logged, with its traceback, where it happens.)
            response._has_been_logged = True
        finally:
            request_context.reset(token)
        return response


class SecurityHeadersMiddleware:
    """The headers Django's SecurityMiddleware does not write."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        # "0" turns off the legacy XSS auditor, which could itself be abused to
        # leak data; the CSP protects instead (README, "Security headers").
        response.headers.setdefault("X-XSS-Protection", "0")
        return response


def _reports_wanted(request: HttpRequest) -> bool:
    """CSP reports only from real domains: local development would report to itself."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return False
    return _is_public_host(host)


@functools.lru_cache(maxsize=64)  # hosts have passed ALLOWED_HOSTS: a handful
def _is_public_host(host: str) -> bool:
    domain = host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
    return not is_local_host(domain)


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, adding report-uri, report-to and Reporting-Endpoints on real domains."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if _reports_wanted(request):
            parts.update = {
                **(parts.update or {}),
                "report-uri": settings.CSP_REPORT_PATH,
                "report-to": CSP_REPORT_GROUP,
            }
        return parts

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        reports_wanted = _reports_wanted(request)
        if self._same_for_every_request(request, response):
            self._add_cached_policy(request, response, reports_wanted)
        else:
            response = super().process_response(request, response)
        if reports_wanted:
            endpoint = request.build_absolute_uri(settings.CSP_REPORT_PATH)
            response.headers.setdefault("Reporting-Endpoints", f'{CSP_REPORT_GROUP}="{endpoint}"')
        return response

    def _same_for_every_request(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return (
            not settings.DEBUG
            and getattr(request, "_csp_nonce", None) is None
            and _PER_RESPONSE_POLICY.isdisjoint(vars(response))
            # Excluded paths would make the header depend on the path: leave those to django-csp.
            and not _policy_excludes_paths()
        )

    def _add_cached_policy(
        self, request: HttpRequest, response: HttpResponseBase, reports_wanted: bool
    ) -> None:
        headers = _POLICY_HEADERS.get(reports_wanted)
        if headers is None:
            built = super().process_response(request, HttpResponse())
            headers = {name: built[name] for name in (HEADER, HEADER_REPORT_ONLY) if name in built}
            _POLICY_HEADERS[reports_wanted] = headers
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        # As django-csp does: a nonce asked for after the header is written is an error.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)


# Without a nonce or a per-view policy the headers are the same on every
# response: django-csp would rebuild them each time (a measurable share of
# the busiest page, see bench/pages.py), so they are built once, with and
# without reporting, and built again only when a test changes the policy.
_POLICY_HEADERS: dict[bool, dict[str, str]] = {}
# What django-csp's decorators put on a response to change its policy.
_PER_RESPONSE_POLICY = frozenset(
    prefix + suffix
    for prefix in ("_csp_config", "_csp_update", "_csp_replace", "_csp_exempt")
    for suffix in ("", "_ro")
)


@functools.cache
def _policy_excludes_paths() -> bool:
    return any(
        (getattr(settings, name, None) or {}).get("EXCLUDE_URL_PREFIXES")
        for name in ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY")
    )


@receiver(setting_changed)
def _forget_built_policies(*, setting: str, **kwargs) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY") or setting == "CSP_REPORT_PATH":
        _POLICY_HEADERS.clear()
        _policy_excludes_paths.cache_clear()


class DefaultRateLimitMiddleware:
    """One per-minute tier, per client IP, for every view without limits of its own,
    and for every path that matches no view (a 404 page or a missing-slash redirect
    costs as much as a page).

    The staff admin is left out: it is behind sign-in, and its sign-in has its own limits.
    The refusal is decided from what this process already knows; the request
    is counted when the server closes the response, after the client has it,
    and reaches the shared store in a batch (ratelimits.DefaultTier). It sits inside the
    header middleware, so a 429 carries the headers of any page, and after
    WhiteNoise, so static files are not counted.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not settings.RATELIMIT_ENABLE or not _in_default_tier(request):
            return self.get_response(request)
        client = ratelimits.default_tier_client(request)
        seconds = ratelimits.default_tier.seconds_refused(client)
        if seconds is not None:
            # Not counted again: this process knows the client is over already.
            return ratelimits.too_many_requests(request, seconds, limit_name=ratelimits.DEFAULT_TIER_NAME)
        response = self.get_response(request)
        # Django runs these when the server closes the response, as it does to close files.
        response._resource_closers.append(functools.partial(ratelimits.default_tier.count, client))
        return response


def _in_default_tier(request: HttpRequest) -> bool:
    match = _resolve(request.path_info, settings.ROOT_URLCONF)
    if match is None:
        return True
    if getattr(match.func, "rate_limit_exempt", False):
        return False
    own_limits = getattr(match.func, "rate_limits", ())
    if any(limit.methods is None or request.method in limit.methods for limit in own_limits):
        return False
    return "admin" not in match.namespaces


class MethodNotAllowedPageMiddleware:
    """A method a view does not take gets the site's error page, not Django's empty 405.

    require_http_methods and class-based views answer with a bare HttpResponseNotAllowed;
    its Allow header stays. Rendered with neither the session nor the user, so a public
    page still starts no session.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if isinstance(response, HttpResponseNotAllowed) and not response.content:
            response.content = render_to_string("405.html", request=request)
            response["Content-Type"] = "text/html; charset=utf-8"
            # CommonMiddleware, further in, already counted the empty body; gunicorn
            # would cut the page to that length.
            response["Content-Length"] = str(len(response.content))
        return response


# The public pages are for anonymous applicants: they never have a session,
# a signed-in user or messages. Skipping the four staff middleware below on
# them is about a tenth of the busiest page's cost (bench/pages.py), and no
# public page can start a session by mistake. Any other path gets them all.
PUBLIC_PATH_PREFIXES = (
    "/apply/",
    "/confirm/",
    "/status/",
    "/privacy/",
    "/healthz",
    "/csp-report/",
    "/.well-known/",
    "/static/",
)


def is_public_path(path_info: str) -> bool:
    return path_info == "/" or path_info.startswith(PUBLIC_PATH_PREFIXES)


class _StaffPathsOnly:
    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if is_public_path(request.path_info):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_StaffPathsOnly, sessions_middleware.SessionMiddleware):
    pass


class AuthenticationMiddleware(_StaffPathsOnly, auth_middleware.AuthenticationMiddleware):
    pass


class OTPMiddleware(_StaffPathsOnly, otp_middleware.OTPMiddleware):
    pass


class MessageMiddleware(_StaffPathsOnly, messages_middleware.MessageMiddleware):
    pass
