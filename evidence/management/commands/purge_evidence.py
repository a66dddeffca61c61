from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, transaction
from django.utils import timezone

from evidence.management.checks import refuse_unavailable_evidence
from evidence.models import Evidence
from evidence.storage import evidence_storage, stored_names
from vetting import audit

# A file younger than this may belong to an upload whose row is not committed
# yet (files are written first): never call it an orphan.
ORPHAN_MIN_AGE = timedelta(hours=1)

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Delete the evidence files of applications decided (approved, invited, rejected, withdrawn, "
        "joined) more than EVIDENCE_RETENTION_DAYS ago, keeping each row's SHA-256, type and size; "
        "also remove stored files that have no row, and list rows whose file is missing (removed only "
        "with --remove-missing)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be removed.")
        parser.add_argument(
            "--remove-missing",
            action="store_true",
            help="Also delete the rows of evidence whose file is missing, once you know why it is.",
        )

    def handle(self, *args, dry_run: bool = False, remove_missing: bool = False, **options) -> None:
        verb = "would be" if dry_run else "were"
        storage = evidence_storage()
        refuse_unavailable_evidence(storage)
        now = timezone.now()

        due = list(Evidence.objects.due_for_purge(now).order_by("uploaded_at").values_list("pk", flat=True))
        purged = changed = failed = 0
        if not dry_run:
            for evidence_id in due:
                try:
                    if Evidence.objects.purge_if_due(evidence_id, now):
                        purged += 1
                    else:
                        changed += 1
                except DatabaseError as error:
                    # One row's failure must not keep everyone else's files past retention.
                    failed += 1
                    logger.warning(
                        "Could not purge evidence %s (%s: %s); its row and file are kept and it is "
                        "retried next run.",
                        evidence_id,
                        type(error).__name__,
                        # The first line only: PostgreSQL's DETAIL line may quote row values.
                        str(error).strip().partition("\n")[0],
                    )
        self.stdout.write(
            f"{len(due) if dry_run else purged} evidence files of applications decided more than "
            f"{settings.EVIDENCE_RETENTION_DAYS} days ago {verb} purged."
            + (
                f" {changed} more were kept: their application was reopened, erased or changed "
                "while this ran."
                if changed
                else ""
            )
        )

        # Also what a purge above could not delete after its commit (Evidence.delete_stored_file).
        known = set(Evidence.objects.stored().values_list("file", flat=True))
        orphans, recent, stuck = [], 0, 0
        for name in stored_names(storage):
            if name in known:
                continue
            try:
                if now - storage.get_modified_time(name) < ORPHAN_MIN_AGE:
                    recent += 1
                    continue
                if not dry_run:
                    storage.delete(name)
            except OSError as error:
                stuck += 1
                logger.warning(
                    "Could not remove the stored file %s, which no evidence row names: %s", name, error
                )
                continue
            orphans.append(name)
            if not dry_run:
                audit.record("evidence.orphan_file_removed", details={"file": name})
        self.stdout.write(
            f"{len(orphans)} stored files without an evidence row {verb} removed"
            + (f" ({recent} younger than an hour left alone)." if recent else ".")
        )

        missing = [
            evidence
            for evidence in Evidence.objects.stored().only("id", "file")
            if not storage.exists(evidence.file.name)
        ]
        for evidence in missing:
            self.stdout.write(f"  evidence {evidence.pk} has no file ({evidence.file.name})")
        # A missing file means a lost disk, a partial restore or a half-mounted volume:
        # its row is the only trace left, so it goes only when an operator says so.
        if remove_missing and not dry_run:
            for evidence in missing:
                with transaction.atomic():
                    audit.record(
                        "evidence.missing_file_row_removed",
                        target=evidence,
                        details={"file": evidence.file.name},
                    )
                    evidence.delete()
        outcome = "removed" if remove_missing else "kept (see --remove-missing)"
        self.stdout.write(f"{len(missing)} evidence rows whose file is missing {verb} {outcome}.")
        problems = []
        if failed:
            problems.append(
                f"{failed} evidence files could not be purged (database errors, logged); "
                "they are kept and retried next run."
            )
        if stuck:
            problems.append(
                f"{stuck} stored files without an evidence row could not be removed (logged); "
                "they are retried next run."
            )
        if missing and not remove_missing:
            problems.append(
                f"{len(missing)} evidence rows have no file (listed above): find out why and restore "
                "the files, or delete the rows with --remove-missing."
            )
        if problems:
            raise CommandError(" ".join(problems))
