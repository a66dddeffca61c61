from __future__ import annotations

import argparse
import logging

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from iama_vetting import maintenance

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Runs another command, as the timers do, unless maintenance mode is on: then it logs one line "
        "and exits 0, so a job that may wait for its next run does not fail (and raise an alert) while "
        "the database may be stopped. Maintenance mode left on an hour past its end (six hours when it has "
        "none) fails the job instead, so the alert says it was forgotten."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", help="The command to run, e.g. sync_invitations.")
        parser.add_argument("job_args", nargs=argparse.REMAINDER, help="Its arguments and options.")

    def handle(self, *args, job: str, job_args: list[str], **options) -> None:
        state = maintenance.read_state()
        if state is not None and maintenance.forgotten(state):
            # Skipping on would stop the job for good, unseen: /healthz stays up during maintenance.
            raise CommandError(
                f"Maintenance mode has been on since {state.since:%Y-%m-%d %H:%M} UTC, past any maintenance: "
                f"{job} not run. Switch it off (rvi-manage maintenance off) once the work is done."
            )
        if state is not None:
            logger.warning("Maintenance mode is on: %s skipped; its timer runs it again.", job)
            return
        call_command(job, *job_args)
