"""Benchmarks, run by `make bench` (`python -m bench`); each module also runs on its own."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

# Set by `python -m bench`: where each benchmark hands over its targets.
TARGETS_FILE = "BENCH_TARGETS_FILE"


@dataclasses.dataclass(frozen=True)
class Target:
    """One figure the README promises, as measured."""

    name: str
    result: str
    target: str
    met: bool


def finish(targets: list[Target]) -> None:
    """Print a benchmark's targets, and hand them to `make bench`'s table when it runs."""
    for target in targets:
        print(f"- {target.name}: {target.result} (target {target.target})")
    if path := os.environ.get(TARGETS_FILE):
        with open(path, "a") as out:
            for target in targets:
                out.write(json.dumps(dataclasses.asdict(target)) + "\n")


def cpu_seconds_of(pid: int) -> float:
    """CPU time (user and system) used so far by process `pid`, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
