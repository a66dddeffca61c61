from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from vetting import matrix, workflow


class Command(BaseCommand):
    help = (
        "Follows every live Matrix invitation on the homeserver (one list call per page): records used, "
        "expired and revoked tokens, marks applications joined, and mails reminders for tokens about to expire."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Ask the homeserver and count, but change and send nothing.",
        )

    def handle(self, *args, dry_run: bool, **options) -> None:
        try:
            report = workflow.sync_invitations(dry_run=dry_run)
        except matrix.MatrixError as error:
            raise CommandError(f"{error} {error.advice}") from None
        prefix = "Dry run, nothing changed: " if dry_run else ""
        self.stdout.write(
            f"{prefix}{report.live} live invitation(s): {report.completed} used, {report.expired} expired, "
            f"{report.revoked} revoked or gone, {report.still_pending} still waiting; "
            f"{report.reminders} reminder(s) sent, {report.mismatches} account mismatch(es)."
        )
        if report.mismatches:
            self.stderr.write(
                f"{report.mismatches} used token(s) did not create the assigned account: "
                "see the invitation list's redeemed check."
            )
