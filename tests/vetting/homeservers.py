"""Local HTTP servers that tests control, on 127.0.0.1 with a port chosen at run time.

- `LocalServer` runs any handler function and records every request, so a
  test can count the calls our code makes and script failures (500, 401,
  a hang, a refused connection).
- `FakeSynapse` answers the part of Synapse's admin API we use, with its
  paths, JSON shapes and error codes. It serves the fast unit tests; the
  real Synapse serves the `synapse`-marked ones.
- `FakeMas` follows the Matrix Authentication Service's published admin API
  (`/api/admin/v1/user-registration-tokens`, JSON:API documents with
  `data`/`attributes`/`links.next`, cursor pagination with `page[first]` and
  `page[after]`, `POST …/{id}/revoke`, `GET /api/admin/v1/users/by-username/…`,
  `GET /api/admin/v1/site-config`) and its OAuth2 client-credentials token
  endpoint (`POST /oauth2/token`, scope `urn:mas:admin`). MAS itself cannot
  be installed here, so this is what the MAS backend is tested against.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""  # as sent, before percent-decoding

    def json(self) -> dict:
        return json.loads(self.body or b"{}")


# A handler answers (status, JSON body); HANG makes the server sit on the request.
Response = tuple[int, dict]
HANG: Response = (0, {})


class LocalServer:
    def __init__(self, handler: Callable[[Request], Response]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.hang_seconds = 3.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command,
                    unquote(parts.path),
                    parse_qs(parts.query),
                    {key.lower(): value for key, value in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                    parts.path,
                )
                outer.requests.append(request)
                status, body = outer.handler(request)
                if (status, body) == HANG:
                    time.sleep(outer.hang_seconds)
                    return
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

            def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def calls(self, method: str, path_start: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(path_start))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


FAKE_ADMIN_TOKEN = "fake-synapse-admin-token"
FAKE_MAS_CLIENT_SECRET = "fake-mas-client-secret"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class FakeSynapse:
    """Synapse's admin API for registration tokens and users, in memory."""

    TOKENS = "/_synapse/admin/v1/registration_tokens"

    def __init__(self, admin_token: str = FAKE_ADMIN_TOKEN, server_name: str = "localhost") -> None:
        self.admin_token = admin_token
        self.server_name = server_name
        self.tokens: dict[str, dict] = {}
        # user_id -> creation time (seconds, as /_synapse/admin/v2/users/<id> gives it)
        self.users: dict[str, int] = {}
        self.server = LocalServer(self.handle)
        self.url = self.server.url

    def handle(self, request: Request) -> Response:
        if request.path == "/_synapse/admin/v1/server_version":
            return 200, {"server_version": "1.163.2 (fake)"}
        auth = request.headers.get("authorization", "")
        if not auth:
            return 401, {"errcode": "M_MISSING_TOKEN", "error": "Missing access token."}
        if auth != f"Bearer {self.admin_token}":
            return 401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unrecognised access token."}
        if request.method == "POST" and request.path == f"{self.TOKENS}/new":
            body = request.json()
            token = body["token"]
            if token in self.tokens:
                return 400, {"errcode": "M_INVALID_PARAM", "error": f"Token already in use: {token}"}
            self.tokens[token] = {
                "token": token,
                "uses_allowed": body.get("uses_allowed"),
                "pending": 0,
                "completed": 0,
                "expiry_time": body.get("expiry_time"),
            }
            return 200, self.tokens[token]
        if request.method == "GET" and request.path == self.TOKENS:
            tokens = list(self.tokens.values())
            if "valid" in request.query:
                wanted = request.query["valid"][0] == "true"
                tokens = [t for t in tokens if self._valid(t) == wanted]
            return 200, {"registration_tokens": tokens}
        if request.path.startswith(f"{self.TOKENS}/"):
            token = request.path[len(self.TOKENS) + 1 :]
            if token not in self.tokens:
                return 404, {"errcode": "M_NOT_FOUND", "error": f"No such registration token: {token}"}
            if request.method == "DELETE":
                del self.tokens[token]
                return 200, {}
            return 200, self.tokens[token]
        if request.method == "GET" and request.path.startswith("/_synapse/admin/v2/users/"):
            user_id = request.path[len("/_synapse/admin/v2/users/") :]
            if user_id not in self.users:
                return 404, {"errcode": "M_NOT_FOUND", "error": "User not found"}
            return 200, {
                "name": user_id,
                "admin": False,
                "deactivated": False,
                "creation_ts": self.users[user_id],
            }
        return 404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}

    @staticmethod
    def _valid(token: dict) -> bool:
        expired = token["expiry_time"] is not None and token["expiry_time"] <= _ms(datetime.now(UTC))
        used = (
            token["uses_allowed"] is not None
            and token["pending"] + token["completed"] >= token["uses_allowed"]
        )
        return not expired and not used

    def register(self, token: str, localpart: str, at: datetime | None = None) -> None:
        """What a person's registration does to the server's records."""
        self.tokens[token]["completed"] += 1
        self.users[f"@{localpart}:{self.server_name}"] = int((at or datetime.now(UTC)).timestamp())

    def close(self) -> None:
        self.server.close()


class FakeMas:
    """The Matrix Authentication Service's admin API for registration tokens and users."""

    API = "/api/admin/v1"

    def __init__(
        self, client_id: str = "01HFAKEMASCLIENT", client_secret: str = FAKE_MAS_CLIENT_SECRET
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_tokens: set[str] = set()
        self.tokens: dict[str, dict] = {}  # id -> attributes
        self.users: dict[str, str] = {}  # username -> created_at (RFC 3339)
        self._next_id = 0
        self.server = LocalServer(self.handle)
        self.url = self.server.url

    def _ulid(self) -> str:
        # Sortable like a ULID: the cursor order is the creation order.
        self._next_id += 1
        return f"01J{self._next_id:023d}"

    def _resource(self, token_id: str) -> dict:
        attributes = self.tokens[token_id]
        now = datetime.now(UTC)
        expires = attributes["expires_at"]
        attributes["valid"] = (
            attributes["revoked_at"] is None
            and (attributes["usage_limit"] is None or attributes["times_used"] < attributes["usage_limit"])
            and (expires is None or datetime.fromisoformat(expires.replace("Z", "+00:00")) > now)
        )
        return {
            "type": "user-registration_token",
            "id": token_id,
            "attributes": dict(attributes),
            "links": {"self": f"{self.API}/user-registration-tokens/{token_id}"},
            "meta": {"page": {"cursor": token_id}},
        }

    def _client_ok(self, request: Request) -> bool:
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
        return (
            (client_id, secret) == (self.client_id, self.client_secret)
            and form.get("grant_type") == "client_credentials"
            and "urn:mas:admin" in form.get("scope", "").split()
        )

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/oauth2/token":
            if not self._client_ok(request):
                return 401, {"error": "invalid_client", "error_description": "client authentication failed"}
            access_token = f"mat_{len(self.access_tokens)}_fake"
            self.access_tokens.add(access_token)
            return 200, {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "urn:mas:admin",
            }
        if not request.path.startswith(self.API):
            return 404, {"errors": [{"title": "Not found"}]}
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return 401, {"errors": [{"title": "Missing or invalid access token"}]}
        path = request.path[len(self.API) :]
        if path == "/site-config":
            return 200, {"server_name": "localhost", "registration_token_required": True}
        if path == "/user-registration-tokens" and request.method == "POST":
            body = request.json()
            if any(attributes["token"] == body.get("token") for attributes in self.tokens.values()):
                return 409, {"errors": [{"title": "A registration token with the same token already exists"}]}
            token_id = self._ulid()
            self.tokens[token_id] = {
                "token": body.get("token") or f"generated{token_id[-6:]}",
                "usage_limit": body.get("usage_limit"),
                "times_used": 0,
                "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "last_used_at": None,
                "expires_at": body.get("expires_at"),
                "revoked_at": None,
            }
            resource = self._resource(token_id)
            return 201, {"data": resource, "links": resource["links"]}
        if path == "/user-registration-tokens" and request.method == "GET":
            first = int(request.query.get("page[first]", ["10"])[0])
            after = request.query.get("page[after]", [""])[0]
            ids = sorted(token_id for token_id in self.tokens if token_id > after)
            if "filter[valid]" in request.query:
                wanted = request.query["filter[valid]"][0] == "true"
                ids = [
                    token_id for token_id in ids if self._resource(token_id)["attributes"]["valid"] == wanted
                ]
            page = ids[:first]
            links = {"self": request.path, "first": f"{request.path}?page[first]={first}"}
            if len(ids) > first:
                links["next"] = f"{request.path}?page[after]={page[-1]}&page[first]={first}"
            return 200, {
                "meta": {"count": len(self.tokens)},
                "data": [self._resource(i) for i in page],
                "links": links,
            }
        if path.startswith("/user-registration-tokens/"):
            token_id, _, action = path[len("/user-registration-tokens/") :].partition("/")
            if token_id not in self.tokens:
                return 404, {"errors": [{"title": f"Registration token with ID {token_id} not found"}]}
            if request.method == "POST" and action == "revoke":
                if self.tokens[token_id]["revoked_at"] is not None:
                    return 400, {
                        "errors": [{"title": f"Registration token with ID {token_id} is already revoked"}]
                    }
                self.tokens[token_id]["revoked_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            resource = self._resource(token_id)
            return 200, {"data": resource, "links": resource["links"]}
        if path.startswith("/users/by-username/"):
            username = path[len("/users/by-username/") :]
            if username not in self.users:
                return 404, {"errors": [{"title": f"User with username {username!r} not found"}]}
            return 200, {
                "data": {
                    "type": "user",
                    "id": f"01JUSER{username}",
                    "attributes": {
                        "username": username,
                        "created_at": self.users[username],
                        "locked_at": None,
                        "deactivated_at": None,
                        "admin": False,
                    },
                }
            }
        return 404, {"errors": [{"title": "Not found"}]}

    def register(self, token: str, username: str) -> None:
        token_id = next(i for i, attributes in self.tokens.items() if attributes["token"] == token)
        self.tokens[token_id]["times_used"] += 1
        self.users[username] = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def close(self) -> None:
        self.server.close()


def apply_then_fail_once(homeserver: FakeSynapse | FakeMas, create_path: str) -> None:
    """The first POST to `create_path` is applied but answered 500, as by a proxy whose upstream
    timed out: the client's retry then meets the token that first attempt made."""
    answer = homeserver.server.handler
    failed: list[Request] = []

    def apply_then_500(request: Request) -> Response:
        result = answer(request)
        if request.method == "POST" and request.path == create_path and not failed:
            failed.append(request)
            return 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}
        return result

    homeserver.server.handler = apply_then_500
