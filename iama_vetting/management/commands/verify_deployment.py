from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser, SystemCheckError

from iama_vetting.health import run_checks


class Command(BaseCommand):
    help = (
        "Check from the inside what an operator most often gets wrong: check --deploy, the secret key, "
        "the evidence root, the database, the cache, the mail relay, the homeserver and the env file's "
        "mode. Prints every finding; exits non-zero if any check fails."
    )
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--env-file", type=Path, help="The environment file; it must be chmod 600.")

    def handle(self, *args, env_file: Path | None = None, **options) -> None:
        failures = 0
        for name, problems in self.checks(env_file):
            if problems:
                failures += 1
                self.stdout.write(self.style.ERROR(f"FAIL {name}"))
                for problem in problems:
                    self.stdout.write(f"     {problem}")
            else:
                self.stdout.write(self.style.SUCCESS(f"ok   {name}"))
        if failures:
            raise CommandError(f"{failures} deployment checks failed.")
        self.stdout.write("All deployment checks passed.")

    def checks(self, env_file: Path | None):
        yield "check --deploy", self.django_checks()
        yield "SESSION_SECRET", self.secret_key()
        yield "evidence storage", self.evidence_root()
        health = run_checks()
        yield (
            "database reachable",
            [] if health["database"] == "ok" else ["the database did not answer (see the log)"],
        )
        yield "cache reachable", [] if health["cache"] == "ok" else ["the cache did not answer (see the log)"]
        yield "mail relay configured", self.missing("SMTP_RELAY_HOST", "SMTP_RELAY_USER", "SMTP_RELAY_AUTHPW")
        yield "Matrix homeserver configured", self.missing("MATRIX_HOMESERVER_URL", "MATRIX_ADMIN_TOKEN")
        if env_file is not None:
            yield f"env file {env_file}", self.env_file_mode(env_file)

    def django_checks(self) -> list[str]:
        out = io.StringIO()
        try:
            call_command("check", deploy=True, fail_level="WARNING", stdout=out, stderr=out)
        except SystemCheckError as error:
            return [line for line in str(error).splitlines() if line.strip().startswith(("?:", "("))] or [
                str(error)
            ]
        return []

    def secret_key(self) -> list[str]:
        problems = []
        if settings.DEBUG:
            problems.append("DEBUG is on: set DEBUG=false")
        if not os.environ.get("SESSION_SECRET"):
            problems.append("SESSION_SECRET is not set in the environment")
        return problems

    def evidence_root(self) -> list[str]:
        if settings.EVIDENCE_STORAGE != "local":
            return []
        root = Path(settings.EVIDENCE_ROOT)
        if not root.is_dir():
            return [f"EVIDENCE_ROOT {root} does not exist"]
        problems = []
        mode = stat.S_IMODE(root.stat().st_mode)
        # 0750 as the guide says; stricter is fine, anything for others is not.
        if mode & 0o027:
            problems.append(f"EVIDENCE_ROOT {root} has mode {mode:04o}: make it 0750 (chmod 750)")
        real_root, real_static = Path(os.path.realpath(root)), Path(os.path.realpath(settings.STATIC_ROOT))
        if real_root == real_static or real_static in real_root.parents:
            problems.append(
                f"EVIDENCE_ROOT {root} is inside STATIC_ROOT {settings.STATIC_ROOT}: evidence would be public"
            )
        return problems

    def missing(self, *names: str) -> list[str]:
        return [f"{name} is not set" for name in names if not getattr(settings, name)]

    def env_file_mode(self, env_file: Path) -> list[str]:
        try:
            mode = stat.S_IMODE(env_file.stat().st_mode)
        except FileNotFoundError:
            return [f"{env_file} does not exist"]
        if mode & 0o077:
            return [f"{env_file} has mode {mode:04o}: it holds secrets, make it 0600 (chmod 600)"]
        return []
