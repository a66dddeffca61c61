"""nginx (Debian's) in front of gunicorn running the app, both as deploy/ renders them."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.deploy import servers

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not Path(servers.NGINX).exists(), reason="needs nginx (Debian package nginx-light)"),
    pytest.mark.skipif(not servers.OPENSSL, reason="needs openssl to make a self-signed certificate"),
]


# The site's gunicorn runs this many (sync) workers; every_worker_takes_a_new_connection holds each once.
GUNICORN_WORKERS = 2


@dataclass
class Site:
    app: servers.App
    app_url: str
    http_url: str
    https_url: str
    https_port: int
    cert: Path
    key: Path
    config: Path
    acme_webroot: Path
    session_key: str
    evidence_id: str
    evidence_bytes: bytes

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        return requests.get(self.https_url + path, verify=str(self.cert), timeout=30, **kwargs)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("nginx-site")
    app = servers.App(
        root / "app",
        EVIDENCE_X_ACCEL_PREFIX="/_protected_evidence/",
        TRUSTED_PROXY_COUNT="1",
        # As in production: evidence only for a session past both sign-in steps.
        STAFF_REQUIRE_2FA="true",
    ).install()
    cert, key = servers.self_signed_certificate(root)
    acme_webroot = root / "acme"
    app_port, http_port, https_port = servers.free_port(), servers.free_port(), servers.free_port()
    rendered = app.render_deploy(
        root / "rendered",
        listen_address="127.0.0.1",
        http_port=http_port,
        https_port=https_port,
        app_port=app_port,
        tls_certificate=cert,
        tls_certificate_key=key,
        resolver="127.0.0.1",
        nginx_log_dir=root,
        acme_webroot=acme_webroot,
    )
    config = servers.nginx_wrapper(rendered / "nginx" / "iama-rvi.conf", root)
    https_url = f"https://localhost:{https_port}"
    with (
        app.gunicorn(rendered / "gunicorn.conf.py", app_port, workers=GUNICORN_WORKERS) as app_url,
        servers.nginx(config, https_port),
    ):
        evidence = servers.pdf_bytes(300_000)
        answer = servers.submit_application(https_url, {"proof": ("proof.pdf", evidence)}, verify=str(cert))
        assert answer.status_code == 302, answer.text
        evidence_id = app.shell_json(
            "import json; from evidence.models import Evidence; print(json.dumps(str(Evidence.objects.get().pk)))"
        )
        yield Site(
            app=app,
            app_url=app_url,
            http_url=f"http://127.0.0.1:{http_port}",
            https_url=https_url,
            https_port=https_port,
            cert=cert,
            key=key,
            config=config,
            acme_webroot=acme_webroot,
            session_key=app.staff_session(),
            evidence_id=evidence_id,
            evidence_bytes=evidence,
        )


def test_rendered_config_passes_nginx_t(site):
    result = servers.nginx_test(site.config)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_plain_http_is_sent_to_https_with_301(site):
    response = requests.get(site.http_url + "/apply/?x=1", allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://127.0.0.1:{site.https_port}/apply/?x=1"
    # Neither server tells its version.
    assert response.headers["Server"] == "nginx"
    assert site.get("/apply/").headers["Server"] == "nginx"


def test_an_acme_challenge_file_is_served_over_plain_http_without_a_redirect(site):
    """certbot --webroot renews while nginx runs: Let's Encrypt fetches this over port 80."""
    challenges = site.acme_webroot / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True, exist_ok=True)
    (challenges / "Jk7Qp2token").write_text("Jk7Qp2token.account-thumbprint")
    response = requests.get(
        site.http_url + "/.well-known/acme-challenge/Jk7Qp2token", allow_redirects=False, timeout=10
    )
    assert response.status_code == 200
    assert response.text == "Jk7Qp2token.account-thumbprint"
    assert response.headers["Server"] == "nginx"
    missing = requests.get(
        site.http_url + "/.well-known/acme-challenge/gone", allow_redirects=False, timeout=10
    )
    assert missing.status_code == 404
    # No listing of the challenge directory either.
    listing = requests.get(site.http_url + "/.well-known/acme-challenge/", allow_redirects=False, timeout=10)
    assert listing.status_code == 404
    assert "Jk7Qp2token" not in listing.text


@pytest.mark.parametrize(
    "path",
    [
        "/outside-the-challenges.txt",
        "/.well-known/outside-the-challenges.txt",
        "/.well-known/security.txt",
        "/.well-known/acme-challenge/../outside-the-challenges.txt",
        "/.well-known/acme-challengeX/outside-the-challenges.txt",
    ],
)
def test_nothing_else_of_the_webroot_is_served_over_plain_http(site, path):
    (site.acme_webroot / ".well-known").mkdir(parents=True, exist_ok=True)
    for directory in (site.acme_webroot, site.acme_webroot / ".well-known"):
        (directory / "outside-the-challenges.txt").write_text("leak")
    connection = http.client.HTTPConnection("127.0.0.1", int(site.http_url.rsplit(":", 1)[1]), timeout=10)
    try:
        # http.client sends the path as written: no client-side removal of "..".
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 301
    assert response.getheader("Location").startswith(f"https://127.0.0.1:{site.https_port}/")
    assert b"leak" not in body


@pytest.mark.parametrize(("path", "status"), [("/apply/", 200), ("/no-such-page/", 404)])
def test_public_page_over_https_carries_hsts_exactly_once(site, path, status):
    # An error page from the app as well (add_header's "always").
    response = site.get(path)
    assert response.status_code == status
    hsts = [
        value for name, value in response.raw.headers.items() if name.lower() == "strict-transport-security"
    ]
    assert hsts == ["max-age=31536000; includeSubDomains"]
    for name in ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"):
        assert len(response.raw.headers.getlist(name)) <= 1, name


def test_staff_download_arrives_through_x_accel_with_the_right_bytes_and_headers(site):
    response = site.get(f"/evidence/{site.evidence_id}/", cookies={"sessionid": site.session_key})
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(site.evidence_bytes).hexdigest()
    headers = response.raw.headers
    assert headers.getlist("Content-Disposition") == [
        "attachment; filename=\"proof.pdf\"; filename*=UTF-8''proof.pdf"
    ]
    assert headers.getlist("Content-Type") == ["application/pdf"]
    assert headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert headers.getlist("Content-Security-Policy") == ["sandbox; default-src 'none'"]
    assert headers.getlist("Strict-Transport-Security") == ["max-age=31536000; includeSubDomains"]
    assert headers.getlist("Cache-Control") == ["private, no-store"]
    # The bytes came from nginx, not the app: the app never names the file path.
    assert "X-Accel-Redirect" not in headers


def test_staff_downloading_at_the_same_time_all_get_their_files(site):
    """Each download writes an audit event: concurrent writers must wait their turn, not fail."""

    def download(_number: int) -> int:
        return site.get(f"/evidence/{site.evidence_id}/", cookies={"sessionid": site.session_key}).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(download, range(30)))
    assert statuses == [200] * 30


def test_download_without_a_staff_session_gets_no_bytes(site):
    response = site.get(f"/evidence/{site.evidence_id}/")
    assert response.status_code == 302
    assert site.evidence_bytes[:8] not in response.content


def test_internal_evidence_location_requested_directly_is_404(site):
    stored = next(path for path in site.app.evidence_root.rglob("*.pdf"))
    name = stored.relative_to(site.app.evidence_root).as_posix()
    response = site.get(f"/_protected_evidence/{name}")
    assert response.status_code == 404
    assert site.evidence_bytes[:8] not in response.content


@pytest.mark.parametrize(
    "path",
    ["/static/.env", "/static/.well-known/security.txt", "/.env", "/.git/config", "/.well-known/.env"],
)
def test_dotfiles_are_never_served(site, path):
    (site.app.static_root / ".env").write_text("SESSION_SECRET=leak")
    (site.app.static_root / ".well-known").mkdir(exist_ok=True)
    (site.app.static_root / ".well-known" / "security.txt").write_text("Contact: leak")
    response = site.get(path)
    assert response.status_code in (403, 404)
    assert b"leak" not in response.content
    # nginx's own answer: the server's headers, as on every response over HTTPS.
    assert response.raw.headers.getlist("Strict-Transport-Security") == [
        "max-age=31536000; includeSubDomains"
    ]
    assert response.raw.headers.getlist("X-Content-Type-Options") == ["nosniff"]


def test_security_txt_is_served_by_the_app_through_nginx(site):
    response = site.get("/.well-known/security.txt")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("Contact: mailto:")
    assert "Canonical: " in response.text


def test_static_files_are_served_by_nginx_with_long_expiry(site):
    css = next(path for path in site.app.static_root.glob("css/site.*.css"))
    response = site.get(f"/static/css/{css.name}")
    assert response.status_code == 200
    assert "max-age=31536000" in response.headers["Cache-Control"]


def test_nothing_beside_the_static_root_is_served(site):
    """/static/ maps onto the static root alone: "/static../" must not reach the directory above it."""
    database = site.app.root / "db.sqlite3"
    assert database.parent == site.app.static_root.parent
    response = site.get("/static../db.sqlite3")
    assert response.status_code == 404
    assert b"SQLite format" not in response.content


# The safety headers the app sends on every response, which a location with its
# own add_header lines must repeat (it drops the server's).
APP_SAFETY_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Permissions-Policy",
    "Cross-Origin-Opener-Policy",
    "X-XSS-Protection",
)


def test_static_files_carry_the_security_headers_the_app_sends(site):
    """A location's add_header drops the server's: /static/ must repeat every one, once."""
    css = next(path for path in site.app.static_root.glob("css/site.*.css"))
    static = site.get(f"/static/css/{css.name}").raw.headers
    app = site.get("/.well-known/security.txt").raw.headers
    for name in APP_SAFETY_HEADERS:
        assert len(app.getlist(name)) == 1, name
        assert static.getlist(name) == app.getlist(name), name
    # The same policy as the app's, whose directives come in no fixed order.
    [static_policy] = static.getlist("Content-Security-Policy")
    [app_policy] = app.getlist("Content-Security-Policy")
    assert sorted(static_policy.split("; ")) == sorted(app_policy.split("; "))


def test_evidence_sent_by_nginx_carries_the_security_headers_the_app_sends(site):
    """nginx's internal location sends the bytes: its headers are all the browser gets."""
    evidence = site.get(f"/evidence/{site.evidence_id}/", cookies={"sessionid": site.session_key}).raw.headers
    app = site.get("/.well-known/security.txt").raw.headers
    for name in APP_SAFETY_HEADERS:
        assert evidence.getlist(name) == app.getlist(name), name


def test_upload_over_client_max_body_size_is_refused_by_nginx_with_413(site):
    context = ssl.create_default_context(cafile=str(site.cert))
    connection = http.client.HTTPSConnection("localhost", site.https_port, context=context, timeout=30)
    try:
        connection.putrequest("POST", "/apply/")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(200 * 1024 * 1024))
        connection.endheaders()
        connection.send(b"--x\r\n")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 413
    # nginx's own page: the request never reached the app.
    assert b"nginx" in body.lower()


def test_healthz_answers_through_nginx(site):
    response = site.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "cache": "ok"}


def access_log_with(site: Site, *expected: str) -> str:
    """nginx writes a request's log line just after answering it: wait a moment for it."""
    log_file = site.config.parent / "iama-rvi-access.log"
    for _attempt in range(50):
        log = log_file.read_text()
        if all(text in log for text in expected):
            break
        time.sleep(0.05)
    return log


def test_the_access_log_keeps_pages_but_not_the_secret_links(site):
    secret = "ImRlYWRiZWVmIg:1xXJAT:not-a-real-signature"
    site.get(f"/status/{secret}/")
    # A page reached from a status page names it in its Referer.
    site.get(f"/confirm/{secret}/", headers={"Referer": f"{site.https_url}/status/{secret}/"})
    site.get(f"/apply/done/?r={secret}")
    log = access_log_with(site, "/status/<token>/", "/confirm/<token>/", "/apply/done/?<query>")
    assert "/status/<token>/" in log
    assert "/confirm/<token>/" in log
    assert "/apply/done/?<query>" in log
    assert secret not in log


def test_the_access_log_masks_a_token_with_or_without_a_slash_after_it(site):
    # A link cut short, or with a query added, reaches the app too (Django redirects it).
    secret = "ImRlYWRiZWVmIg:1xXJAT:unslashed-canary-signature"
    logged = {
        f"/status/{secret}": "/status/<token>",
        f"/status/{secret}?utm_source=mail": "/status/<token>?<query>",
        f"/status/{secret}/?utm_source=mail": "/status/<token>/?<query>",
        f"/status/{secret}/withdraw/": "/status/<token>/withdraw/",
        f"/confirm/{secret}": "/confirm/<token>",
        f"/reset/MQ/{secret}": "/reset/<uidb64>/<token>",
        f"/reset/MQ/{secret}/": "/reset/<uidb64>/<token>/",
        "/reset/done/": "/reset/done/",
        # What the app also reads as these pages: another case, doubled slashes, percent-encoding.
        f"/Status/{secret}/": "/Status/<token>/",
        f"//status/{secret}/": "/status/<token>/",
        f"/status//{secret}/": "/status/<token>/",
        # (requests decodes an encoded letter itself, so the colons are the ones encoded here).
        f"/status/{secret.replace(':', '%3A')}/": "/<percent-encoded>",
    }
    for path in logged:
        site.get(path)
    lines = [f'"GET {page}" ' for page in logged.values()]
    log = access_log_with(site, *lines)
    assert all(line in log for line in lines), log
    assert secret not in log


def every_worker_takes_a_new_connection(app_url: str) -> None:
    """Return once each gunicorn worker has taken a connection opened now, and answered it.

    A sync worker writes all it writes about a request (an access line, were one configured)
    before it takes its next connection: every request answered before this call is then in
    the log in full. One listening socket hands out connections in the order they were opened,
    and a connection waiting for the end of its headers holds its worker, so the workers take
    one each; finishing them last first lets no worker answer one before the others took theirs.
    """
    address = urlsplit(app_url)
    held: list[socket.socket] = []
    try:
        for _worker in range(GUNICORN_WORKERS):
            held.append(socket.create_connection((address.hostname, address.port), timeout=30))
            held[-1].sendall(b"GET /healthz HTTP/1.0\r\n")
        for connection in reversed(held):
            connection.sendall(b"Host: localhost\r\n\r\n")
            while connection.recv(65536):  # until the worker closes the connection: answered
                pass
    finally:
        for connection in held:
            connection.close()


def log_lines_of(log_file: Path, request_ids: list[str], timeout: float = 30.0) -> dict[str, str]:
    """The app's line for each request id, waiting for them up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for line in log_file.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("request_id") in request_ids:
                    found[entry["request_id"]] = line
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_gunicorn_writes_no_token_to_its_output(site):
    """What gunicorn prints goes to the journal: no request line or Referer with a token."""
    secret = "ImRlYWRiZWVmIg:1xXJAT:gunicorn-canary-signature"
    referer = {"Referer": f"https://localhost:{site.https_port}/status/{secret}/"}
    masked = {
        f"/status/{secret}/": "/status/<token>/",
        f"/confirm/{secret}/": "/confirm/<token>/",
        f"/reset/MQ/{secret}/": "/reset/<uidb64>/<token>/",
    }
    # Each request's own line, known by the id nginx gave it: not one an earlier test left.
    request_ids = {
        site.get(path, headers=referer).headers["X-Request-ID"]: page for path, page in masked.items()
    }
    # Whatever gunicorn itself would write about these requests is written by then.
    every_worker_takes_a_new_connection(site.app_url)
    [log_file] = site.app.root.glob("gunicorn-*.log")
    lines = log_lines_of(log_file, list(request_ids))
    log = log_file.read_text()
    assert sorted(lines) == sorted(request_ids), log[-2000:]
    for request_id, page in request_ids.items():
        assert json.loads(lines[request_id])["path"] == page
    assert secret not in log


def test_nginx_gives_each_request_an_id_the_app_echoes(site):
    response = site.get("/apply/")
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32
    log = access_log_with(site, f"id={request_id}")
    assert f"id={request_id}" in log


def test_the_app_sees_the_clients_address_not_one_the_client_wrote(site):
    """nginx appends the address it saw to X-Forwarded-For: the last entry, where TRUSTED_PROXY_COUNT=1 looks.

    The client connects from 127.0.0.2, so its address differs from nginx's own (127.0.0.1).
    """
    context = ssl.create_default_context(cafile=str(site.cert))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", site.https_port, context=context, timeout=30, source_address=("127.0.0.2", 0)
    )
    try:
        # What a client dodging the rate limits would send.
        connection.request("GET", "/apply/", headers={"X-Forwarded-For": "203.0.113.9"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 200
    request_id = response.getheader("X-Request-ID")
    [log_file] = site.app.root.glob("gunicorn-*.log")
    line = log_lines_of(log_file, [request_id])[request_id]
    assert json.loads(line)["client_ip"] == "127.0.0.2"


# The guide's TLS 1.2 ciphers that go with an RSA certificate: ECDHE key exchange, AEAD only.
GUIDE_TLS12_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
)


def tls12_cipher(site: Site, ciphers: str) -> str:
    """The cipher nginx agrees on with a TLS 1.2 client offering only `ciphers`."""
    context = ssl.create_default_context(cafile=str(site.cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    # Security level 0: the client offers even what OpenSSL's defaults leave out.
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", site.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.cipher()[0]


def test_tls_1_2_takes_only_the_guides_ciphers(site):
    for cipher in GUIDE_TLS12_CIPHERS:
        assert tls12_cipher(site, cipher) == cipher
    # Every other cipher this OpenSSL knows: CBC, SHA-1, static RSA key exchange, NULL, export.
    with pytest.raises(ssl.SSLError):
        tls12_cipher(site, "ALL:COMPLEMENTOFALL:" + ":".join(f"!{cipher}" for cipher in GUIDE_TLS12_CIPHERS))


def test_by_default_nginx_answers_on_ipv4_and_ipv6_alike(site, tmp_path):
    """Without --listen-address, as in production: each port for both address families, TLS on HTTPS."""
    http_port, https_port = servers.free_port(), servers.free_port()
    rendered = site.app.render_deploy(
        tmp_path / "rendered",
        http_port=http_port,
        https_port=https_port,
        app_port=urlsplit(site.app_url).port,
        tls_certificate=site.cert,
        tls_certificate_key=site.key,
        resolver="127.0.0.1",
        nginx_log_dir=tmp_path,
        acme_webroot=site.acme_webroot,
    )
    config = servers.nginx_wrapper(rendered / "nginx" / "iama-rvi.conf", tmp_path)
    context = ssl.create_default_context(cafile=str(site.cert))
    headers = {"Host": f"localhost:{https_port}"}
    with servers.nginx(config, https_port):
        for address in ("127.0.0.1", "::1"):
            plain = http.client.HTTPConnection(address, http_port, timeout=10)
            secure = http.client.HTTPSConnection(address, https_port, context=context, timeout=10)
            try:
                plain.request("GET", "/healthz", headers=headers)
                redirect = plain.getresponse()
                secure.request("GET", "/healthz", headers=headers)
                health = secure.getresponse()
                assert json.loads(health.read()) == {"database": "ok", "cache": "ok"}
            finally:
                plain.close()
                secure.close()
            assert redirect.status == 301, address
            assert redirect.getheader("Location") == f"https://localhost:{https_port}/healthz"
            assert health.status == 200, address
