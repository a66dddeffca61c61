"""Evidence download throughput: nginx X-Accel-Redirect vs nginx static vs the app streaming.

Run: .venv/bin/python -m bench.downloads [--duration 5] [--repeat 3] [--connections 4]

Starts, on 127.0.0.1 ports chosen now, two gunicorns running the app (one
answering with X-Accel-Redirect, one streaming the file itself) on a fresh
PostgreSQL database of its own, behind Debian's nginx with the rendered site
and a self-signed certificate, and measures with `wrk` (Debian package) over
HTTPS, as a signed-in vetting agent:

- x-accel: /evidence/<uuid>/ -> app checks permission -> nginx sends the file
- static:  nginx serves the same bytes from /static/ (no app, no check): the ceiling
- stream:  /evidence/<uuid>/ -> the app reads the file and streams it through nginx

After a warm-up of each, the three alternate for --repeat rounds (the machine
is shared and its speed drifts); prints the median MB/s for 1 MB and 16 MB
files, X-Accel's ratio to static and streaming's to X-Accel. Then, one
request at a time, the p50 of nginx sending 1 MB and of the app's answer
alone (gunicorn without nginx): the time X-Accel adds to every download.
Every server stops when the run ends; nothing outside a temporary directory is touched.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
# This process only renders and orchestrates; the servers get their own production-like env.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iama_vetting.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.pop("DATABASE_URL", None)

import django  # noqa: E402

django.setup()

from bench import Target, finish  # noqa: E402
from bench.pages import fresh_database  # noqa: E402
from bench.pages import wrk as wrk_latency  # noqa: E402
from tests.deploy import servers  # noqa: E402

DATABASE = "rvi_bench_downloads"
SIZES = {"1 MB": 1024 * 1024, "16 MB": 16 * 1024 * 1024}
UNITS = {"B": 1 / 1024 / 1024, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}

STORE_CODE = """
import json
from django.core.files.uploadedfile import SimpleUploadedFile
from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.deploy.servers import pdf_bytes
from tests.factories import make_application
application = make_application()
stored = {}
for label, size in %r.items():
    evidence = Evidence.objects.store(application, validate_upload(SimpleUploadedFile("bench.pdf", pdf_bytes(size))))
    stored[label] = [str(evidence.pk), evidence.file.name]
print(json.dumps(stored))
"""


def alternate(urls: dict[str, str], session: str, args: argparse.Namespace) -> dict[str, float]:
    """Median MB/s per variant, measured A B C A B C after a second's warm-up of each."""
    for url in urls.values():
        wrk(url, session, 1, args.connections)
    speeds: dict[str, list[float]] = {variant: [] for variant in urls}
    for _ in range(args.repeat):
        for variant, url in urls.items():
            speeds[variant].append(wrk(url, session, args.duration, args.connections))
    return {variant: statistics.median(measured) for variant, measured in speeds.items()}


def check_sends_the_file(url: str, session: str, size: int, cert: Path) -> None:
    """wrk counts a redirect (to the sign-in page, say) as a success: make sure each URL sends the file."""
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=ssl.create_default_context(cafile=str(cert)), timeout=30
    )
    try:
        connection.request("GET", parts.path, headers={"Cookie": f"sessionid={session}"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200 or len(body) != size:
        raise RuntimeError(f"{url} answered {response.status} with {len(body)} bytes, not the file")


def wrk(url: str, session: str, duration: int, connections: int) -> float:
    """MB/s that wrk measured for `url`."""
    result = subprocess.run(  # noqa: S603 - Debian's wrk against 127.0.0.1
        [
            shutil.which("wrk") or "/usr/bin/wrk",
            "-t",
            "2",
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "-H",
            f"Cookie: sessionid={session}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    if "Non-2xx" in result.stdout:
        raise RuntimeError(f"wrk got error responses from {url}:\n{result.stdout}")
    match = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", result.stdout)
    if not match:
        raise RuntimeError(f"no Transfer/sec in wrk's output:\n{result.stdout}")
    return float(match[1]) * UNITS[match[2]]


def main() -> list[Target]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per cell; the median is shown")
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    for tool in ("wrk", servers.NGINX, "openssl"):
        if not shutil.which(tool) and not Path(tool).exists():
            raise SystemExit(f"{tool} is missing: apt-get install wrk nginx-light openssl")

    with tempfile.TemporaryDirectory(prefix="rvi-bench-") as directory, ExitStack() as running:
        root = Path(directory)
        fresh_database(DATABASE)
        database = {"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}"}
        # Throughput, not limits: one address downloads far more than EVIDENCE_DOWNLOAD allows.
        accel_app = servers.App(
            root / "app",
            EVIDENCE_X_ACCEL_PREFIX="/_protected_evidence/",
            RATELIMIT_ENABLE="false",
            **database,
        ).install()
        # Same database and files, but the app streams the bytes itself.
        stream_app = servers.App(
            root / "app", EVIDENCE_X_ACCEL_PREFIX="", RATELIMIT_ENABLE="false", **database
        )
        stored = accel_app.shell_json(STORE_CODE % (SIZES,))
        session = accel_app.staff_session()
        (accel_app.static_root / "bench").mkdir()
        for label, (_pk, name) in stored.items():
            shutil.copyfile(
                accel_app.evidence_root / name, accel_app.static_root / "bench" / f"{label[:-3]}mb.pdf"
            )

        cert, key = servers.self_signed_certificate(root)
        accel_port, stream_app_port, https_port, stream_port = (servers.free_port() for _ in range(4))
        rendered = accel_app.render_deploy(
            root / "rendered",
            listen_address="127.0.0.1",
            http_port=servers.free_port(),
            https_port=https_port,
            app_port=accel_port,
            tls_certificate=cert,
            tls_certificate_key=key,
            resolver="127.0.0.1",
            nginx_log_dir=root,
        )
        # A second TLS server in front of the streaming app, configured like the site's.
        stream_server = f"""
    server {{
        listen 127.0.0.1:{stream_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{stream_app_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}"""
        config = servers.nginx_wrapper(rendered / "nginx" / "iama-rvi.conf", root, extra=stream_server)
        running.enter_context(accel_app.gunicorn(rendered / "gunicorn.conf.py", accel_port))
        running.enter_context(stream_app.gunicorn(rendered / "gunicorn.conf.py", stream_app_port))
        running.enter_context(servers.nginx(config, https_port))

        rows = []
        for label, (pk, _name) in stored.items():
            urls = {
                "x-accel": f"https://localhost:{https_port}/evidence/{pk}/",
                "static": f"https://localhost:{https_port}/static/bench/{label[:-3]}mb.pdf",
                "stream": f"https://localhost:{stream_port}/evidence/{pk}/",
            }
            for url in urls.values():
                check_sends_the_file(url, session, SIZES[label], cert)
            speeds = alternate(urls, session, args)
            rows.append((label, speeds))
        # What X-Accel adds to every download, whatever its size: the app's own answer.
        one_mb_pk = stored["1 MB"][0]
        one_at_a_time = {
            "nginx static, 1 MB": wrk_latency(
                f"https://localhost:{https_port}/static/bench/1mb.pdf", args.duration, connections=1
            ),
            "the app's answer alone (gunicorn, no nginx)": wrk_latency(
                f"http://127.0.0.1:{accel_port}/evidence/{one_mb_pk}/",
                args.duration,
                connections=1,
                headers={"Cookie": f"sessionid={session}", "Host": "localhost", "X-Forwarded-Proto": "https"},
            ),
        }

    print(
        f"Evidence downloads over HTTPS, wrk {args.connections} connections, median of {args.repeat} alternating "
        f"rounds of {args.duration} s, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print()
    print(
        "| file | nginx X-Accel (MB/s) | nginx static (MB/s) | app streaming (MB/s) | X-Accel ÷ static | stream ÷ X-Accel |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, speeds in rows:
        accel = speeds["x-accel"]
        print(
            f"| {label} | {accel:.1f} | {speeds['static']:.1f} | {speeds['stream']:.1f} "
            f"| {accel / speeds['static']:.2f} | {speeds['stream'] / accel:.2f} |"
        )
    print()
    print("One download at a time: what an X-Accel download adds to nginx's own time")
    print()
    print("| request | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for name, latency in one_at_a_time.items():
        print(f"| {name} | {latency['p50']:.2f} | {latency['p99']:.2f} |")
    return [
        Target(
            f"evidence X-Accel ÷ nginx static, {label}",
            f"{speeds['x-accel'] / speeds['static']:.2f}×",
            "≥ 0.95×",
            speeds["x-accel"] / speeds["static"] >= 0.95,
        )
        for label, speeds in rows
    ]


if __name__ == "__main__":
    finish(main())
