"""Outbox benchmark: 1,000 queued mails, batched versus one SMTP connection per mail.

The relay is a local aiosmtpd server in a process of its own that requires
STARTTLS and AUTH, as SMTP2GO does, so a new connection costs what it costs
in production minus the network's round trips: TCP, TLS handshake, EHLO
twice, AUTH. Both runs go through the real worker (`send_outbox --once`) on
a fresh PostgreSQL database of its own on 127.0.0.1 (or BENCH_DATABASE_URL,
a scratch database: the benchmark refuses one that holds real mail); "one
connection per mail" is the worker with --batch-size 1. After a warm-up of
each, the two alternate for ROUNDS rounds; the target is checked against
the median of the rounds' ratios, each taken within its round. The CPU time
per mail of the worker, the relay and PostgreSQL shows where a mail's time
goes: the three take turns, so their sum is about that time.
Run with `make bench`.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from io import StringIO
from multiprocessing.connection import Connection
from pathlib import Path

from bench import Target, cpu_seconds_of, finish

MAILS = 1_000
ROUNDS = 5
WARM_UP_MAILS = 100
BATCH_SIZE = 100
DATABASE = "rvi_bench_outbox"


CPU_PARTS = ("worker", "relay", "PostgreSQL")


def cpu_seconds_by_process(relay_pid: int) -> dict[tuple[str, int], float]:
    """CPU time used so far by the worker (this process), the relay, and each PostgreSQL process."""
    postgres = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout.split()
    processes = [
        ("worker", os.getpid()),
        ("relay", relay_pid),
        *(("PostgreSQL", int(pid)) for pid in postgres),
    ]
    seconds = {}
    for part, pid in processes:
        with contextlib.suppress(OSError):  # a PostgreSQL backend that ended meanwhile
            seconds[part, pid] = cpu_seconds_of(pid)
    return seconds


def serve(certificates, control: Connection) -> None:
    """The SMTP server's process: answers "reset", "count" and "stop" on `control`."""
    from tests.smtp_server import Recorder, SMTPTestServer

    server = SMTPTestServer(Recorder(), certificates).start()
    control.send(server.port)
    while (command := control.recv()) != "stop":
        if command == "reset":
            server.recorder.received.clear()
            server.recorder.connections = 0
        control.send((len(server.recorder.received), server.recorder.connections))
    server.stop()


def main() -> list[Target]:
    from bench.pages import fresh_database
    from tests.smtp_server import RELAY_PASSWORD, RELAY_USER, make_certificates

    workdir = Path(tempfile.mkdtemp(prefix="rvi-bench-"))
    database_url = os.environ.get("BENCH_DATABASE_URL")
    if not database_url:
        fresh_database(DATABASE)
        database_url = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    certificates = make_certificates(workdir / "tls")
    control, server_end = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(certificates, server_end), daemon=True)
    server.start()
    port = control.recv()
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "iama_vetting.settings",
            "DEBUG": "false",
            "SESSION_SECRET": "benchmark-only-secret",
            "ALLOWED_HOSTS": "localhost",
            "DATABASE_URL": database_url,
            "EVIDENCE_ROOT": str(workdir / "evidence"),
            "STATIC_ROOT": str(workdir / "static"),
            "SMTP_RELAY_HOST": "127.0.0.1",
            "SMTP_RELAY_PORTS": str(port),
            "SMTP_RELAY_USER": RELAY_USER,
            "SMTP_RELAY_AUTHPW": RELAY_PASSWORD,
            "SMTP_CA_FILE": str(certificates.ca),
            "SMTP_TIMEOUT": "5",
            # One log line per mail would time the terminal, not the worker.
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from notifications.models import OutboundEmail

    call_command("migrate", verbosity=0)
    if OutboundEmail.objects.exclude(template="benchmark").exists():
        sys.exit("BENCH_DATABASE_URL holds real mail; the benchmark needs a scratch database.")
    variants = {"batched": BATCH_SIZE, "one connection per mail": 1}

    def send(label: str, mails: int) -> dict[str, float]:
        """Queue `mails` mails and send them with the worker.

        Returns the seconds it took, and the CPU time per mail (ms) of the
        worker, the relay and PostgreSQL: they take turns, so their sum is
        about a mail's time.
        """
        OutboundEmail.objects.filter(template="benchmark").delete()
        # Every run starts from the same table: without this, the dead rows of
        # earlier runs slow each claim's scan, more with every round, and mostly
        # for one connection per mail (1,000 claims against 10).
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {OutboundEmail._meta.db_table}")
        OutboundEmail.objects.bulk_create(
            OutboundEmail.compose(
                f"bench{number}@example.org",
                f"Benchmark mail {number}",
                "A benchmark mail.\n" * 20,
                "<p>A benchmark mail.</p>" * 20,
                template="benchmark",
            )
            for number in range(mails)
        )
        control.send("reset")
        control.recv()
        cpu_before = cpu_seconds_by_process(server.pid)
        started = time.perf_counter()
        call_command("send_outbox", "--once", "--batch-size", str(variants[label]), stdout=StringIO())
        elapsed = time.perf_counter() - started
        cpu_used = dict.fromkeys(CPU_PARTS, 0.0)
        for (part, pid), used in cpu_seconds_by_process(server.pid).items():
            cpu_used[part] += used - cpu_before.get((part, pid), 0.0)
        control.send("count")
        delivered, connections = control.recv()
        expected_connections = math.ceil(mails / variants[label])
        if (delivered, connections) != (mails, expected_connections):
            sys.exit(
                f"{label}: the server received {delivered} of {mails} mails on {connections} connections"
            )
        return {"seconds": elapsed} | {part: cpu / mails * 1000 for part, cpu in cpu_used.items()}

    try:
        for label in variants:
            send(label, WARM_UP_MAILS)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in variants}
        # A B A B: the machine's speed drifts, and both variants see the drift.
        for _ in range(ROUNDS):
            for label in variants:
                runs[label].append(send(label, MAILS))
        seconds = {label: [run["seconds"] for run in label_runs] for label, label_runs in runs.items()}
        for label, batch_size in variants.items():
            median = statistics.median(seconds[label])
            print(
                f"outbox, {label:<24} {MAILS} mails in {median:6.2f} s, median of {ROUNDS} "
                f"({MAILS / median:6.1f} mails/s, {math.ceil(MAILS / batch_size)} SMTP connections)"
            )
        print(
            "outbox, CPU time per mail (median of the rounds): "
            + "; ".join(
                f"{label}: "
                + ", ".join(
                    f"{part} {statistics.median(run[part] for run in label_runs):.2f} ms"
                    for part in CPU_PARTS
                )
                for label, label_runs in runs.items()
            )
        )
        # Each round's ratio within the round: the machine's speed drifts between rounds.
        round_ratios = sorted(
            one / batched
            for one, batched in zip(seconds["one connection per mail"], seconds["batched"], strict=True)
        )
        print("outbox, ratio in each round: " + ", ".join(f"{ratio:.1f}×" for ratio in round_ratios))
        ratio = statistics.median(round_ratios)
        name = f"outbox, batched ({BATCH_SIZE} per connection) ÷ one connection per mail (median of the rounds' ratios)"
        return [Target(name, f"{ratio:.1f}×", "≥ 5×", ratio >= 5)]
    finally:
        OutboundEmail.objects.filter(template="benchmark").delete()
        control.send("stop")
        server.join(10)


if __name__ == "__main__":
    finish(main())
