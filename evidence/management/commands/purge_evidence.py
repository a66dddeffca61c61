from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from evidence.management.checks import refuse_unavailable_evidence
from evidence.models import Evidence
from evidence.storage import evidence_storage, stored_names
from vetting import audit

# A file younger than this may belong to an upload whose row is not committed
# yet (files are written first): never call it an orphan.
ORPHAN_MIN_AGE = timedelta(hours=1)


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

        due = list(Evidence.objects.due_for_purge(now).select_related("application").order_by("uploaded_at"))
        failed = 0
        if not dry_run:
            for evidence in due:
                try:
                    with transaction.atomic():
                        evidence.purge()
                        audit.record(
                            "evidence.purged",
                            target=evidence,
                            details={
                                "application": evidence.application.reference,
                                "sha256": evidence.sha256,
                                "size": evidence.size,
                            },
                        )
                except OSError as error:
                    failed += 1
                    self.stderr.write(f"Could not purge evidence {evidence.pk}: {error}")
        self.stdout.write(
            f"{len(due) - failed} evidence files of applications decided more than "
            f"{settings.EVIDENCE_RETENTION_DAYS} days ago {verb} purged."
        )

        known = set(Evidence.objects.stored().values_list("file", flat=True))
        orphans, recent = [], 0
        for name in stored_names(storage):
            if name in known:
                continue
            if now - storage.get_modified_time(name) < ORPHAN_MIN_AGE:
                recent += 1
                continue
            orphans.append(name)
            if not dry_run:
                storage.delete(name)
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
                f"{failed} evidence files could not be purged; they are kept and retried next run."
            )
        if missing and not remove_missing:
            problems.append(
                f"{len(missing)} evidence rows have no file (listed above): find out why and restore "
                "the files, or delete the rows with --remove-missing."
            )
        if problems:
            raise CommandError(" ".join(problems))
