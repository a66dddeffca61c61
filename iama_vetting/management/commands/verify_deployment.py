from __future__ import annotations

import io
import os
import smtplib
import stat
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser, SystemCheckError

from iama_vetting.health import run_checks
from notifications.relay import RelayEmailBackend, describe


class Command(BaseCommand):
    help = (
        "Check from the inside what an operator most often gets wrong: check --deploy, the secret key, "
        "the evidence root, the database, the cache, the mail relay (it takes our login; no mail is "
        "sent), the homeserver (it takes our admin token; nothing is changed) and the env file's mode. "
        "Prints every finding; exits non-zero if any check fails."
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
        yield "mail relay accepts our login", self.mail_relay()
        yield "Matrix homeserver accepts our admin credentials", self.homeserver()
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

    def mail_relay(self) -> list[str]:
        """Connect, STARTTLS and AUTH as the outbox worker does, port fallback included; send nothing."""
        try:
            relay = RelayEmailBackend()
        except ImproperlyConfigured as error:
            return [str(error)]
        try:
            relay.open()
        except smtplib.SMTPAuthenticationError as error:
            return [
                f"the relay refused our login ({describe(error)}): check SMTP_RELAY_USER and SMTP_RELAY_AUTHPW"
            ]
        except smtplib.SMTPResponseException as error:
            return [f"the relay refused the connection ({describe(error)})"]
        except OSError as error:
            # RelayUnavailable: every port was refused, timed out or could not start TLS.
            return [describe(error)]
        finally:
            relay.close()
        return []

    def homeserver(self) -> list[str]:
        # matrix_check's own calls: the server version and one authenticated list, nothing written.
        try:
            call_command("matrix_check", stdout=io.StringIO())
        except CommandError as error:
            return [str(error)]
        return []

    def env_file_mode(self, env_file: Path) -> list[str]:
        try:
            mode = stat.S_IMODE(env_file.stat().st_mode)
        except OSError as error:
            # Missing, a file where a directory should be, or not ours to look at.
            return [f"{env_file} cannot be checked: {error.strerror}"]
        if mode & 0o077:
            return [f"{env_file} has mode {mode:04o}: it holds secrets, make it 0600 (chmod 600)"]
        return []
