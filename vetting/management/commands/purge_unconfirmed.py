from __future__ import annotations

from django.core.management.base import BaseCommand
from django.utils import timezone

from vetting import links, workflow


class Command(BaseCommand):
    help = (
        "Deletes public applications whose e-mail address was not confirmed within 7 days, "
        "whether still waiting for it or withdrawn before it, with their evidence files."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")

    def handle(self, *args, dry_run: bool, **options) -> None:
        cutoff = timezone.now() - links.UNCONFIRMED_LIFETIME
        if dry_run:
            count = workflow.never_confirmed(cutoff).count()
            self.stdout.write(f"Would purge {count} unconfirmed application(s) older than 7 days.")
            return
        count = workflow.purge_unconfirmed(cutoff)
        self.stdout.write(f"Purged {count} unconfirmed application(s) older than 7 days.")
