"""The homeserver client: registration tokens and accounts on Synapse or MAS.

Two backends behind one interface (`MATRIX_BACKEND`):

- `synapse`: Synapse's admin API with the admin access token `MATRIX_ADMIN_TOKEN`.
- `mas`: the Matrix Authentication Service's admin API
  (`/api/admin/v1/user-registration-tokens`), with an OAuth2 client-credentials
  token of scope `urn:mas:admin`. Homeservers delegating to MAS switch
  Synapse's token API off, and Element X registers only through MAS.

HTTP goes through the standard library's http.client rather than requests or
httpx: it needs no dependency, gives separate connect and read timeouts, and
logs nothing. That matters here because registration tokens travel in URL
paths, and requests' urllib3 logs every URL at DEBUG while httpx logs them at
INFO. Neither the admin token nor a registration token is ever put into a log
line or an exception message: errors name the operation, never the path.
"""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlencode, urlsplit

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

logger = logging.getLogger(__name__)

SYNAPSE = "synapse"
MAS = "mas"
BACKENDS = (SYNAPSE, MAS)

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
# Waits before the 1st, 2nd and 3rd retry; with RETRY_BUDGET they keep a
# failing call to about ten seconds in all.
RETRY_DELAYS = (1.0, 2.0, 4.0)
RETRY_BUDGET = 10.0
MAS_PAGE_SIZE = 100


class MatrixError(Exception):
    """A homeserver call failed. The message is safe to show staff: no token, no URL path."""

    advice = "Ask an operator to run “manage.py matrix_check”."


class NotConfigured(MatrixError):
    advice = "Ask an operator to configure the homeserver settings, then run “manage.py matrix_check”."


class Unauthorised(MatrixError):
    """Our admin credentials were refused (401/403): a configuration error, never retried."""

    advice = "The homeserver rejected our admin token: ask an operator to run “manage.py matrix_check”."


class NotFound(MatrixError):
    pass


class Unavailable(MatrixError):
    """No usable answer (connection, timeout, 5xx) even after retrying."""

    advice = (
        "Nothing was changed; try again in a few minutes. If it keeps failing, ask an operator "
        "to run “manage.py matrix_check”."
    )


class UnexpectedResponse(MatrixError):
    """Any other refusal or an answer we cannot read."""


@dataclass(frozen=True)
class RegistrationToken:
    """A token as the homeserver reports it. `server_id` addresses it in later calls."""

    server_id: str
    token: str = field(repr=False)
    uses_allowed: int | None
    pending: int
    completed: int
    expires_at: datetime | None
    revoked: bool
    raw: dict = field(repr=False)

    @property
    def used_up(self) -> bool:
        return self.uses_allowed is not None and self.completed >= self.uses_allowed

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def usable(self, now: datetime) -> bool:
        return not (self.revoked or self.used_up or self.expired(now))


@dataclass(frozen=True)
class MatrixAccount:
    user_id: str
    created_at: datetime | None


def new_token() -> str:
    """96 random bits in 16 characters that both Synapse and MAS accept ([A-Za-z0-9_-])."""
    return secrets.token_urlsafe(12)


def _from_ms(value) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)


def _from_iso(value) -> datetime | None:
    return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Http:
    """JSON over HTTP(S) to one base URL, with timeouts and retries."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retry_delays: tuple[float, ...] | None = None,
        retry_budget: float | None = None,
    ) -> None:
        try:
            parts = urlsplit(base_url)
            port = parts.port
        except ValueError:
            # A port out of range or no number, or a broken [IPv6] host: settings refuse these
            # at start, but not in a URL set later. Not quoted: the URL may hold a password.
            raise NotConfigured(
                "The homeserver URL cannot be read: check its host, and that its port is a number "
                "from 1 to 65535."
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotConfigured("The homeserver URL must start with https:// (or http://) and name a host.")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port
        self.prefix = parts.path.rstrip("/")
        # Module defaults are read here, not bound at import, so tests can shorten them.
        self.connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.read_timeout = READ_TIMEOUT if read_timeout is None else read_timeout
        self.retry_delays = RETRY_DELAYS if retry_delays is None else retry_delays
        self.retry_budget = RETRY_BUDGET if retry_budget is None else retry_budget

    def __repr__(self) -> str:
        return f"<_Http {self.scheme}://{self.host}>"

    @sensitive_variables("authorization", "headers")
    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        authorization: str | None,
        body: dict | None = None,
        form: dict | None = None,
    ) -> tuple[int, dict]:
        """Send one request, retrying connection failures and 5xx; return (status, JSON body).

        `what` names the operation for messages ("listing registration tokens").
        """
        headers = {"Accept": "application/json", "User-Agent": "iama-rvi"}
        if authorization:
            headers["Authorization"] = authorization
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            payload = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                status, data = self._once(method, self.prefix + path, headers, payload)
            except _Retryable as failure:
                problem = failure.problem
            else:
                if status < 500:
                    return status, data
                problem = f"HTTP {status}"
            if attempt >= len(self.retry_delays):
                break
            delay = self.retry_delays[attempt]
            if time.monotonic() - started + delay > self.retry_budget:
                break
            attempt += 1
            logger.warning("Homeserver %s failed (%s); retry %d in %.0f s.", what, problem, attempt, delay)
            time.sleep(delay)
        raise Unavailable(f"The homeserver did not answer {what} ({problem}).")

    def _once(self, method: str, path: str, headers: dict, payload: bytes | None) -> tuple[int, dict]:
        connection_class = (
            http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(self.host, self.port, timeout=self.connect_timeout)
        try:
            try:
                connection.connect()
            except TimeoutError:
                raise _Retryable("connection timed out") from None
            except OSError as error:
                raise _Retryable(_describe(error)) from None
            # Connected: from here on each read may take the longer read timeout.
            connection.sock.settimeout(self.read_timeout)
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except TimeoutError:
                # Not retried: the request may have been applied, and a
                # server that hung once rarely recovers in seconds.
                raise Unavailable(
                    "The homeserver accepted the connection but did not answer in time."
                ) from None
            except (OSError, http.client.HTTPException) as error:
                raise _Retryable(_describe(error)) from None
        finally:
            connection.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        return response.status, data if isinstance(data, dict) else {"data": data}


class _Retryable(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _status_text(status: int, code: str) -> str:
    return f"HTTP {status} {code}" if code else f"HTTP {status}"


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "host name not found"
    return type(error).__name__


class SynapseClient:
    """Synapse's admin API: /_synapse/admin/v1/registration_tokens and /_synapse/admin/v2/users."""

    backend = SYNAPSE

    def __init__(self, base_url: str, admin_token: str, server_name: str, **http_options) -> None:
        if not admin_token:
            raise NotConfigured("MATRIX_ADMIN_TOKEN is not set.")
        self.http = _Http(base_url, **http_options)
        self._authorization = f"Bearer {admin_token}"
        self.server_name = server_name

    def __repr__(self) -> str:
        return f"<SynapseClient {self.http.host}>"

    def _call(self, method: str, path: str, what: str, body: dict | None = None) -> tuple[int, dict]:
        status, data = self.http.request(
            method, path, what=what, authorization=self._authorization, body=body
        )
        errcode = data.get("errcode", "")
        if status == 401 or (status == 403 and errcode == "M_FORBIDDEN"):
            raise Unauthorised(
                f"The homeserver refused our admin token while {what} ({_status_text(status, errcode)})."
            )
        # Only Synapse's own answer says the token or account is not there; any other 404 (a
        # proxy without the admin API, an endpoint this version lacks) says nothing about it.
        if status == 404 and errcode == "M_NOT_FOUND":
            raise NotFound(f"The homeserver found nothing while {what}.")
        if status >= 400:
            raise UnexpectedResponse(f"The homeserver refused {what} ({_status_text(status, errcode)}).")
        return status, data

    @staticmethod
    def _token(data: dict) -> RegistrationToken:
        try:
            return RegistrationToken(
                server_id=data["token"],
                token=data["token"],
                uses_allowed=data.get("uses_allowed"),
                pending=int(data.get("pending") or 0),
                completed=int(data.get("completed") or 0),
                expires_at=_from_ms(data.get("expiry_time")),
                revoked=False,
                raw=data,
            )
        except (KeyError, TypeError, ValueError):
            raise UnexpectedResponse("The homeserver sent a registration token we cannot read.") from None

    def create_token(self, token: str, expires_at: datetime) -> RegistrationToken:
        _status, data = self._call(
            "POST",
            "/_synapse/admin/v1/registration_tokens/new",
            "creating a registration token",
            {"token": token, "uses_allowed": 1, "expiry_time": int(expires_at.timestamp() * 1000)},
        )
        return self._token(data)

    def get_token(self, server_id: str) -> RegistrationToken:
        _status, data = self._call(
            "GET",
            f"/_synapse/admin/v1/registration_tokens/{quote(server_id, safe='')}",
            "reading a registration token",
        )
        return self._token(data)

    def list_tokens(self, valid: bool | None = None) -> Iterator[RegistrationToken]:
        """All tokens in one call (Synapse does not paginate this list)."""
        query = "" if valid is None else f"?valid={'true' if valid else 'false'}"
        _status, data = self._call(
            "GET", f"/_synapse/admin/v1/registration_tokens{query}", "listing registration tokens"
        )
        tokens = data.get("registration_tokens")
        if not isinstance(tokens, list):
            raise UnexpectedResponse("The homeserver sent a token list we cannot read.")
        for item in tokens:
            yield self._token(item)

    def revoke_token(self, server_id: str) -> None:
        self._call(
            "DELETE",
            f"/_synapse/admin/v1/registration_tokens/{quote(server_id, safe='')}",
            "revoking a registration token",
        )

    def revoke_token_by_value(self, token: str) -> None:
        # Synapse addresses a token by its value.
        self.revoke_token(token)

    def get_account(self, localpart: str) -> MatrixAccount | None:
        user_id = f"@{localpart}:{self.server_name}"
        try:
            _status, data = self._call(
                "GET", f"/_synapse/admin/v2/users/{quote(user_id, safe='')}", "looking up a Matrix account"
            )
        except NotFound:
            return None
        # creation_ts is in seconds in this endpoint (milliseconds in the user list).
        created = data.get("creation_ts")
        return MatrixAccount(
            user_id=data.get("name", user_id),
            created_at=None if created is None else datetime.fromtimestamp(created, tz=UTC),
        )

    def server_version(self) -> str:
        _status, data = self._call("GET", "/_synapse/admin/v1/server_version", "reading the server version")
        return f"Synapse {data.get('server_version', '?')}"


class MasClient:
    """The Matrix Authentication Service's admin API (/api/admin/v1), JSON:API-shaped."""

    backend = MAS

    def __init__(
        self, base_url: str, client_id: str, client_secret: str, server_name: str, **http_options
    ) -> None:
        if not client_id or not client_secret:
            raise NotConfigured("MATRIX_MAS_CLIENT_ID and MATRIX_MAS_CLIENT_SECRET must be set.")
        self.http = _Http(base_url, **http_options)
        self._client_id = client_id
        self._client_secret = client_secret
        self.server_name = server_name
        self._access_token = ""
        self._access_token_expires = 0.0

    def __repr__(self) -> str:
        return f"<MasClient {self.http.host}>"

    @sensitive_variables("data")
    def _authorization(self) -> str:
        """A client-credentials access token of scope urn:mas:admin, reused until shortly before it expires."""
        if self._access_token and time.monotonic() < self._access_token_expires:
            return f"Bearer {self._access_token}"
        status, data = self.http.request(
            "POST",
            "/oauth2/token",
            what="requesting an admin access token",
            authorization=None,
            form={
                "grant_type": "client_credentials",
                "scope": "urn:mas:admin",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        if status in (400, 401, 403):
            raise Unauthorised(
                "The authentication service refused our client credentials "
                f"({_status_text(status, data.get('error', ''))})."
            )
        if status != 200 or not data.get("access_token"):
            raise UnexpectedResponse(f"The authentication service gave no access token (HTTP {status}).")
        self._access_token = data["access_token"]
        self._access_token_expires = time.monotonic() + max(int(data.get("expires_in", 300)) - 30, 0)
        return f"Bearer {self._access_token}"

    def _call(self, method: str, path: str, what: str, body: dict | None = None) -> dict:
        status, data = self.http.request(
            method, "/api/admin/v1" + path, what=what, authorization=self._authorization(), body=body
        )
        if status in (401, 403):
            # A cached token may have been revoked: forget it so the next call asks again.
            self._access_token = ""
            raise Unauthorised(
                f"The authentication service refused our admin token while {what} (HTTP {status})."
            )
        # MAS answers a missing resource with a JSON:API error; an unknown route has no body.
        if status == 404 and data.get("errors"):
            raise NotFound(f"The authentication service found nothing while {what}.")
        if status >= 400:
            raise UnexpectedResponse(f"The authentication service refused {what} (HTTP {status}).")
        return data

    @staticmethod
    def _token(resource: dict) -> RegistrationToken:
        try:
            attributes = resource["attributes"]
            return RegistrationToken(
                server_id=resource["id"],
                token=attributes["token"],
                uses_allowed=attributes.get("usage_limit"),
                # MAS counts a use only once the account exists: there is no pending count.
                pending=0,
                completed=int(attributes.get("times_used") or 0),
                expires_at=_from_iso(attributes.get("expires_at")),
                revoked=bool(attributes.get("revoked_at")),
                raw=resource,
            )
        except (KeyError, TypeError, ValueError):
            raise UnexpectedResponse("The authentication service sent a token we cannot read.") from None

    def create_token(self, token: str, expires_at: datetime) -> RegistrationToken:
        data = self._call(
            "POST",
            "/user-registration-tokens",
            "creating a registration token",
            {"token": token, "usage_limit": 1, "expires_at": _iso(expires_at)},
        )
        return self._token(data.get("data") or {})

    def get_token(self, server_id: str) -> RegistrationToken:
        data = self._call(
            "GET", f"/user-registration-tokens/{quote(server_id, safe='')}", "reading a registration token"
        )
        return self._token(data.get("data") or {})

    def list_tokens(self, valid: bool | None = None) -> Iterator[RegistrationToken]:
        """Every token, one call per page of MAS_PAGE_SIZE, following the cursor."""
        params = {"page[first]": str(MAS_PAGE_SIZE)}
        if valid is not None:
            params["filter[valid]"] = "true" if valid else "false"
        while True:
            data = self._call(
                "GET", f"/user-registration-tokens?{urlencode(params)}", "listing registration tokens"
            )
            page = data.get("data")
            if not isinstance(page, list):
                raise UnexpectedResponse("The authentication service sent a token list we cannot read.")
            for resource in page:
                yield self._token(resource)
            if not page or not (data.get("links") or {}).get("next"):
                return
            params["page[after]"] = page[-1]["id"]

    def revoke_token(self, server_id: str) -> None:
        try:
            self._call(
                "POST",
                f"/user-registration-tokens/{quote(server_id, safe='')}/revoke",
                "revoking a registration token",
            )
        except UnexpectedResponse:
            # MAS answers 400 for a token that is already revoked: that is what we wanted.
            if not self.get_token(server_id).revoked:
                raise

    def revoke_token_by_value(self, token: str) -> None:
        """Revoke the valid token with this value; NotFound when there is none.

        MAS addresses a token by an id of its own and cannot look one up by its
        value, so the valid tokens are searched (one call per page).
        """
        for registration_token in self.list_tokens(valid=True):
            if registration_token.token == token:
                self.revoke_token(registration_token.server_id)
                return
        raise NotFound("The authentication service has no valid registration token with that value.")

    def get_account(self, localpart: str) -> MatrixAccount | None:
        try:
            data = self._call(
                "GET", f"/users/by-username/{quote(localpart, safe='')}", "looking up a Matrix account"
            )
        except NotFound:
            return None
        attributes = (data.get("data") or {}).get("attributes") or {}
        return MatrixAccount(
            user_id=f"@{attributes.get('username', localpart)}:{self.server_name}",
            created_at=_from_iso(attributes.get("created_at")),
        )

    def server_version(self) -> str:
        data = self._call("GET", "/site-config", "reading the site configuration")
        return f"Matrix Authentication Service for {data.get('server_name', '?')}"


HomeserverClient = SynapseClient | MasClient


def server_name() -> str:
    """The part after the colon in user IDs: MATRIX_SERVER_NAME, or the homeserver URL's host."""
    return settings.MATRIX_SERVER_NAME or (urlsplit(settings.MATRIX_HOMESERVER_URL).hostname or "")


def get_client(**http_options) -> HomeserverClient:
    """The client for the configured backend; NotConfigured when settings are missing."""
    if not settings.MATRIX_HOMESERVER_URL:
        raise NotConfigured("MATRIX_HOMESERVER_URL is not set.")
    if settings.MATRIX_BACKEND == MAS:
        if not settings.MATRIX_MAS_URL:
            raise NotConfigured("MATRIX_MAS_URL is not set.")
        return MasClient(
            settings.MATRIX_MAS_URL,
            settings.MATRIX_MAS_CLIENT_ID,
            settings.MATRIX_MAS_CLIENT_SECRET,
            server_name(),
            **http_options,
        )
    return SynapseClient(
        settings.MATRIX_HOMESERVER_URL, settings.MATRIX_ADMIN_TOKEN, server_name(), **http_options
    )


def configuration_problem() -> str | None:
    """What keeps get_client() from working, with its advice, or None; asks the homeserver nothing.

    Pages that need the homeserver say it before staff fill in a form, not after.
    """
    try:
        get_client()
    except NotConfigured as error:
        return f"{error} {error.advice}"
    return None
