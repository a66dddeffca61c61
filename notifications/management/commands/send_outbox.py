from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import get_connection
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from notifications.models import OutboundEmail
from notifications.outbox import Tally, send_due

logger = logging.getLogger(__name__)

# sysexits.h's EX_CONFIG. rvi-mail.service does not restart on it
# (RestartPreventExitStatus=): a missing setting stays missing however often
# the worker starts, while a relay that is down only delays the mail.
EXIT_CONFIGURATION_ERROR = os.EX_CONFIG
# Far more than one SMTP connection should carry; a huge number would also
# overflow the database's LIMIT and fail on every poll of --loop.
MAX_BATCH_SIZE = 10_000


class StopFlag:
    """Set by SIGTERM or SIGINT; the worker checks it between mails.

    A plain attribute, not a threading.Event: a signal handler that takes a
    lock the interrupted code holds would deadlock.
    """

    def __init__(self) -> None:
        self.stopping = False

    def set(self, signum: int, frame: object) -> None:
        self.stopping = True

    def is_set(self) -> bool:
        return self.stopping

    def sleep(self, seconds: float) -> None:
        # Short naps: time.sleep resumes after a signal, so one long nap would
        # delay the stop by up to `seconds`.
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)


class Command(BaseCommand):
    help = (
        "Sends the mail waiting in the outbox: every due mail once (--once), or for as long as it runs "
        "(--loop, stopped cleanly by SIGTERM or Ctrl-C after the mail in hand). Exits with status 78 "
        "(EX_CONFIG) when the relay is not configured."
    )

    def add_arguments(self, parser) -> None:
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--once", action="store_true", help="Send what is due now, then exit.")
        mode.add_argument("--loop", action="store_true", help="Keep sending until stopped.")
        mode.add_argument("--dry-run", action="store_true", help="Count the due mail; send nothing.")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=settings.OUTBOX_BATCH_SIZE,
            help="Mails sent over one SMTP connection (default: OUTBOX_BATCH_SIZE).",
        )

    def handle(self, *args, once: bool, loop: bool, dry_run: bool, batch_size: int, **options) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise CommandError(
                f"--batch-size must be between 1 and {MAX_BATCH_SIZE:,} (default: OUTBOX_BATCH_SIZE), "
                f"not {batch_size}."
            )
        if dry_run:
            due = OutboundEmail.objects.due(timezone.now()).count()
            self.stdout.write(f"{due} mails are due; none was sent (dry run).")
            return
        try:
            get_connection()
        except ImproperlyConfigured as error:
            raise CommandError(
                f"{error} Mail stays queued; set it in the environment file, then start the worker again.",
                returncode=EXIT_CONFIGURATION_ERROR,
            ) from error

        worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        stopping = StopFlag()
        previous = {signum: signal.signal(signum, stopping.set) for signum in (signal.SIGTERM, signal.SIGINT)}
        tally = Tally()
        try:
            if once:
                tally = send_due(worker, batch_size, stopping.is_set)
            else:
                logger.info("Outbox worker %s started.", worker)
                while not stopping.is_set():
                    tally += self._round(worker, batch_size, stopping)
                    stopping.sleep(settings.OUTBOX_POLL_SECONDS)
                logger.info("Outbox worker %s stopped.", worker)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write(f"Outbox: {tally}.")
        if once and (tally.retrying or tally.failed):
            raise CommandError("Some mail could not be sent; see the log and the outbox in the admin.")

    @staticmethod
    def _round(worker: str, batch_size: int, stopping: StopFlag) -> Tally:
        # Drop connections the database has closed meanwhile (restart, failover).
        close_old_connections()
        try:
            return send_due(worker, batch_size, stopping.is_set)
        except DatabaseError:
            # The worker outlives a database outage; claimed mail comes back
            # to the outbox when its lease runs out.
            logger.exception("Outbox worker %s: database error; trying again shortly.", worker)
            return Tally()
