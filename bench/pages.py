"""Benchmarks of the web pages, run by `make bench`.

Starts what it needs on 127.0.0.1 (a PostgreSQL database of its own, gunicorn
with 2 sync workers, Redis as the shared cache), warms up, alternates the
compared variants (A B C, B C A, …) and prints medians and ratios. Load comes from
wrk (Debian's package), never from a hand-written loop.

    .venv/bin/python bench/pages.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import requests

from bench import Target, cpu_seconds_of, finish

PROJECT_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
DATABASE = "rvi_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/7"
SIZES = [10, 1_000, 10_000]
LIMITER_ROUNDS = 31
LIMITER_SECONDS = 1
# Bytes added to a gunicorn's environment, one server per value and side (see limiter_environment).
LIMITER_LAYOUTS = (0, 16, 32)
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine_line() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def bench_environment(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "false",
        "SESSION_SECRET": "bench-only-secret-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": DATABASE_URL,
        "CACHE_URL": REDIS_URL,
        "STATIC_ROOT": str(tmp / "static"),
        "EVIDENCE_ROOT": str(tmp / "evidence"),
        "STAFF_NOTIFY_EMAILS": "",
        "STAFF_REQUIRE_2FA": "false",
        "SECURE_SSL_REDIRECT": "false",
        "BENCH_BARE_VIEW": "true",
        # Limits stay on, each counted in Redis, but high enough never to refuse wrk.
        "RATELIMIT_KEY_PREFIX": f"rvi-bench-{os.getpid()}",
        "RATELIMIT_DEFAULT_PER_MINUTE": str(10**9),
        **extra,
    }


def limiter_environment(env: dict[str, str], limits_on: bool, padding: int) -> dict[str, str]:
    """`env` with rate limits on or off, and `padding` more bytes.

    On these hosts two gunicorns started alike differ by up to a fifth in p50
    (each process gets its own memory layout; one that differs by an unused
    variable differs as much), more than the limiter costs. So each side is
    several servers, started in environments of different sizes, and the two
    sides' sizes match ("false" is a byte longer than "true"), so that
    nothing but the setting tells the sides apart.
    """
    value = "true" if limits_on else "false"
    return {**env, "RATELIMIT_ENABLE": value, "BENCH_LAYOUT_PADDING": "x" * (padding + 6 - len(value))}


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def fresh_database(name: str = DATABASE) -> None:
    for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)


@contextlib.contextmanager
def gunicorn(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    server = subprocess.Popen(
        [
            GUNICORN,
            "iama_vetting.wsgi",
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            "--timeout",
            "120",
            "--log-level",
            "warning",
        ],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/bench/bare/", timeout=5).status_code == 200:
                break
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("gunicorn did not start")
        time.sleep(0.2)
    try:
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def wrk(
    url: str, seconds: int, connections: int = 8, script: str | None = None, headers: dict | None = None
) -> dict:
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script:
        command += ["-s", script]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses from {url}:\n{output}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": _millis(re.search(r"50%\s+([\d.]+\w+)", output).group(1)),
        "p99": _millis(re.search(r"99%\s+([\d.]+\w+)", output).group(1)),
    }


def _millis(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def alternate(variants: dict[str, str], rounds: int, seconds: int, **options) -> dict[str, dict]:
    """A B A B …: each variant's median over `rounds`, after one warm-up each."""
    return {
        name: medians(results)
        for name, results in alternate_runs(variants, rounds, seconds, **options).items()
    }


def alternate_runs(
    variants: dict[str, str],
    rounds: int,
    seconds: int,
    masters: dict[str, subprocess.Popen] | None = None,
    **options,
) -> dict[str, list[dict]]:
    """A B C, B C A, C A B …: each variant's wrk result in every round, after one warm-up each.

    The order turns each round, so that no variant always runs first, or
    always right after the same other one.

    With `masters` (gunicorn per variant), each result also has the CPU time
    per request of the variant's workers and of Redis, in µs.
    """
    for url in variants.values():
        wrk(url, 2, **options)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            url = variants[name]
            before = cpu_seconds(masters[name]) if masters else None
            result = wrk(url, seconds, **options)
            if before is not None:
                served = result["rps"] * seconds
                worker, store = (
                    (after - earlier) / served * 1e6
                    for after, earlier in zip(cpu_seconds(masters[name]), before, strict=True)
                )
                result |= {"worker CPU": worker, "Redis CPU": store}
            runs[name].append(result)
    return runs


def cpu_seconds(master: subprocess.Popen) -> tuple[float, float]:
    """CPU time used so far by gunicorn's workers, and by the Redis server."""
    workers = sum(cpu_seconds_of(pid) for pid in worker_pids(master))
    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return workers, info["used_cpu_sys"] + info["used_cpu_user"]


def medians(results: list[dict]) -> dict:
    return {key: statistics.median(result[key] for result in results) for key in ("rps", "p50", "p99")}


def csrf_pair(base: str) -> tuple[str, str]:
    response = requests.get(f"{base}/apply/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.text).group(1)
    return response.cookies["csrftoken"], token


def multipart_post_script(tmp: Path, base: str, file_sizes: list[int], limit: int | None = None) -> str:
    cookie, token = csrf_pair(base)
    boundary = "rvibenchboundary"
    fields = {
        "csrfmiddlewaretoken": token,
        "full_name": "Bench Applicant",
        "email": "bench@applicant.example",
        "referral": "bench",
        "statement": "bench",
        "consent": "on",
    }
    body = bytearray()
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for slot, size in enumerate(file_sizes, start=1):
        content = b"%PDF-1.4\n" + b"x" * (size - 9)
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="evidence_{slot}"; filename="doc{slot}.pdf"\r\n'
                "Content-Type: application/pdf\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    body_path = tmp / f"body-{len(file_sizes)}x{file_sizes[0]}.bin"
    body_path.write_bytes(body)
    stop = ""
    if limit is not None:
        stop = f"""
sent = 0
request = function()
  sent = sent + 1
  if sent > {limit} then wrk.thread:stop() end
  return wrk.format()
end
"""
    script = tmp / f"post-{len(file_sizes)}x{file_sizes[0]}.lua"
    script.write_text(
        f"""
local file = io.open("{body_path}", "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
wrk.headers["Cookie"] = "csrftoken={cookie}"
{stop}
"""
    )
    return str(script)


def worker_pids(master: subprocess.Popen) -> list[int]:
    output = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in output.split()]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def upload_memory(base: str, master: subprocess.Popen, tmp: Path) -> tuple[float, float]:
    """Worker RSS (MB): idle, and peak while 20 POSTs with a 16 MB file go through."""
    pids = worker_pids(master)
    idle = max(rss_kb(pid) for pid in pids)
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(OSError):
                peak = max(peak, *(rss_kb(pid) for pid in pids))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    script = multipart_post_script(tmp, base, [16 * MB - 1024], limit=20)
    subprocess.run(
        ["wrk", "-t1", "-c1", "-d120s", "-s", script, f"{base}/apply/"], capture_output=True, check=True
    )
    done.set()
    sampler.join()
    return idle / 1024, peak / 1024


ADMIN_PROBE = """
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from vetting.models import Application
User = get_user_model()
user = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser("bench-admin", "b@x.example", None)
client = Client()
client.force_login(user)
application = Application.objects.order_by("pk").first()
counts = {}
for name, url in [("changelist", "/admin/vetting/application/"), ("change", f"/admin/vetting/application/{application.pk}/change/")]:
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    counts[name] = len(queries)
print(json.dumps({"counts": counts, "session": client.cookies["sessionid"].value, "change": f"/admin/vetting/application/{application.pk}/change/"}))
"""


def admin_pages(env: dict[str, str], base: str, seconds: int) -> list[tuple[int, str, int, float]]:
    import json

    rows = []
    for size in SIZES:
        manage(env, "bench_data", "--applications", str(size))
        probe = subprocess.run(
            [PYTHON, "-c", ADMIN_PROBE],
            cwd=PROJECT_DIR,
            env={
                **env,
                "DJANGO_SETTINGS_MODULE": "iama_vetting.settings",
                "ALLOWED_HOSTS": "127.0.0.1,testserver",
            },
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            raise SystemExit(f"admin probe failed:\n{probe.stderr[-3000:]}")
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        cookie = {"Cookie": f"sessionid={result['session']}"}
        for name, path in [("changelist", "/admin/vetting/application/"), ("change", result["change"])]:
            timing = alternate(
                {name: f"{base}{path}"}, rounds=1, seconds=seconds, connections=2, headers=cookie
            )[name]
            rows.append((size, name, result["counts"][name], timing["p50"]))
    return rows


def main() -> list[Target]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    options = parser.parse_args()

    lines = []
    with tempfile.TemporaryDirectory(prefix="rvi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        fresh_database()
        env = bench_environment(tmp)
        manage(env, "migrate", "--no-input")
        manage(env, "collectstatic", "--no-input")
        # A: the production configuration (limits counted in Redis). B: limits off,
        # for the overhead of limiting and for the POST and admin measurements,
        # which send more from one address than any real limit allows.
        unlimited = {**env, "RATELIMIT_ENABLE": "false"}
        with contextlib.ExitStack() as running:
            servers = {
                (limits_on, padding): running.enter_context(
                    gunicorn(limiter_environment(env, limits_on, padding))
                )
                for limits_on in (True, False)
                for padding in LIMITER_LAYOUTS
            }
            base, (base_off, master_off) = servers[True, 0][0], servers[False, 0]
            pages = alternate(
                {
                    "GET /apply/": f"{base}/apply/",
                    "bare view": f"{base}/bench/bare/",
                    "GET /apply/, limits off": f"{base_off}/apply/",
                },
                options.rounds,
                options.seconds,
            )
            ratio = pages["GET /apply/"]["rps"] / pages["bare view"]["rps"]
            # The limiter's latency: one request at a time, so that no queue
            # in front of the workers hides or inflates the round trip to Redis.
            # Many one-second rounds, each ratio taken within its round: this
            # machine's speed drifts, second to second, by more than the limiter
            # costs. Each side is a gunicorn in each environment size
            # (limiter_environment), and a round's ratio is the summed p50 of
            # the side with limits over that of the side without.
            limiter_servers = {
                f"limits {'on' if limits_on else 'off'}, {padding} bytes more environment": server
                for (limits_on, padding), server in servers.items()
            }
            limiter_runs = alternate_runs(
                {name: f"{url}/apply/" for name, (url, _master) in limiter_servers.items()},
                LIMITER_ROUNDS,
                LIMITER_SECONDS,
                masters={name: server for name, (_url, server) in limiter_servers.items()},
                connections=1,
            )
            cpu_per_request = {
                name: {
                    part: statistics.median(result[part] for result in results)
                    for part in ("worker CPU", "Redis CPU")
                }
                for name, results in limiter_runs.items()
            }
            one_at_a_time = {name: medians(results) for name, results in limiter_runs.items()}
            sides = {
                side: [name for name in limiter_servers if name.startswith(f"limits {side},")]
                for side in ("on", "off")
            }
            round_ratios = sorted(
                sum(limiter_runs[name][turn]["p50"] for name in sides["on"])
                / sum(limiter_runs[name][turn]["p50"] for name in sides["off"])
                for turn in range(LIMITER_ROUNDS)
            )
            overhead = statistics.median(round_ratios)
            # The same configuration in other environment sizes: the bias one size alone would carry.
            spreads = {
                side: max(one_at_a_time[name]["p50"] for name in names)
                / min(one_at_a_time[name]["p50"] for name in names)
                for side, names in sides.items()
            }
            throughput_cost = pages["GET /apply/"]["rps"] / pages["GET /apply/, limits off"]["rps"]
            lines += [
                "| page, 8 connections | req/s | p50 ms | p99 ms |",
                "| --- | --- | --- | --- |",
                *(
                    f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |"
                    for name, r in pages.items()
                ),
                "",
                "| page, 1 connection | req/s | p50 ms | p99 ms |",
                "| --- | --- | --- | --- |",
                *(
                    f"| {name} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} |"
                    for name, r in one_at_a_time.items()
                ),
                "",
                f"- rate limits on ÷ off (summed p50 of {len(LIMITER_LAYOUTS)} gunicorns each), 1 connection, in each of "
                f"{LIMITER_ROUNDS} rounds of {LIMITER_SECONDS} s: "
                + ", ".join(f"{ratio:.2f}" for ratio in round_ratios),
                "- slowest ÷ fastest environment size of one configuration (median p50s; the bias "
                "of comparing one server with one): "
                + "; ".join(f"limits {side} {spread:.2f}" for side, spread in spreads.items()),
                "- CPU time per request at 1 connection (median of the rounds): "
                + "; ".join(
                    f"{name}: workers {cpu['worker CPU']:.0f} µs, Redis {cpu['Redis CPU']:.0f} µs"
                    for name, cpu in cpu_per_request.items()
                ),
                f"- rate limits on ÷ off, req/s at 8 connections: {throughput_cost:.2f}×",
                "",
            ]

            post = wrk(
                f"{base_off}/apply/",
                options.seconds,
                connections=2,
                script=multipart_post_script(tmp, base_off, [MB, MB, MB]),
            )
            idle, peak = upload_memory(base_off, master_off, tmp)
            lines += [
                "| application POST | value |",
                "| --- | --- |",
                f"| submissions/s with 3 × 1 MB files | {post['rps']:.1f} (p50 {post['p50']:.0f} ms) |",
                f"| worker RSS idle → peak during 20 × 16 MB POSTs | {idle:.1f} MB → {peak:.1f} MB: "
                f"growth {peak - idle:.1f} MB (target ≤ 8 MB) |",
                "",
            ]

            rows = admin_pages(unlimited, base_off, options.seconds)
            lines += ["| applications | admin page | queries | p50 ms |", "| --- | --- | --- | --- |"]
            lines += [f"| {size} | {name} | {queries} | {p50:.1f} |" for size, name, queries, p50 in rows]
            lines.append("")

    print("\n".join(lines))
    # Per admin page, the query counts seen over all sizes: one count each is "constant".
    admin_queries = {
        page: sorted({queries for _size, name, queries, _p50 in rows if name == page})
        for page in ("changelist", "change")
    }
    return [
        Target("GET /apply/ ÷ bare view, req/s", f"{ratio:.2f}×", "≥ 0.5×", ratio >= 0.5),
        Target(
            f"rate limits on ÷ off, p50 at 1 connection, {len(LIMITER_LAYOUTS)} environment sizes each "
            "(median of the rounds' ratios)",
            f"{overhead:.2f}×",
            "≤ 1.1×",
            overhead <= 1.1,
        ),
        Target("worker RSS growth, 20 × 16 MB POSTs", f"{peak - idle:.1f} MB", "≤ 8 MB", peak - idle <= 8),
        Target(
            "admin queries at " + " / ".join(f"{size:,}" for size in SIZES) + " applications",
            ", ".join(f"{page} {' / '.join(map(str, counts))}" for page, counts in admin_queries.items()),
            "the same at every size, ≤ 10",
            all(len(counts) == 1 and counts[0] <= 10 for counts in admin_queries.values()),
        ),
    ]


if __name__ == "__main__":
    finish(main())
