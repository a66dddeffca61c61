"""`make bench`: every benchmark, then one table of the targets with the machine's description.

Each benchmark runs in a process of its own (each sets up Django its own
way) and prints its measurements as it goes; all of it, and the table, is
also written to bench/results.md (git-ignored). Another benchmark is one more
module in BENCHMARKS that ends with `finish(main())`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import TARGETS_FILE, Target
from bench.pages import PROJECT_DIR, machine_line

BENCHMARKS = ["bench.outbox", "bench.pages", "bench.downloads"]


def run(module: str, targets_file: Path, copy: list[str]) -> None:
    """Run one benchmark, showing its output as it comes and keeping a copy."""
    process = subprocess.Popen(  # noqa: S603 - our own modules
        [sys.executable, "-m", module],
        cwd=PROJECT_DIR,
        env={**os.environ, TARGETS_FILE: str(targets_file), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        print(line, end="", flush=True)
        copy.append(line)
    if process.wait() != 0:
        raise SystemExit(f"{module} failed (exit code {process.returncode}).")


def main() -> None:
    copy = [f"Machine: {machine_line()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"]
    print(copy[0], end="")
    with tempfile.TemporaryDirectory(prefix="rvi-bench-") as directory:
        targets_file = Path(directory) / "targets.jsonl"
        targets_file.touch()
        for module in BENCHMARKS:
            run(module, targets_file, copy)
            copy.append("\n")
            print()
        targets = [Target(**json.loads(line)) for line in targets_file.read_text().splitlines()]
    table = ["| target | result | wanted | met |\n", "| --- | --- | --- | --- |\n"]
    table += [f"| {t.name} | {t.result} | {t.target} | {'yes' if t.met else 'NO'} |\n" for t in targets]
    print("".join(table), end="")
    (PROJECT_DIR / "bench" / "results.md").write_text("".join(copy + table))


if __name__ == "__main__":
    main()
