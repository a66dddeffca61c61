from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from vetting.audit import check_chain


class Command(BaseCommand):
    help = "Checks the audit trail's hash chain and reports the first event that was changed or removed."

    def handle(self, *args, **options) -> None:
        check = check_chain()
        if check.broken is not None:
            broken = check.broken
            where = f"event {broken.event_id}" if broken.event_id is not None else "the end of the chain"
            raise CommandError(f"Audit trail broken at {where}: {broken.reason}.")
        self.stdout.write(self.style.SUCCESS(f"Audit trail intact: {check.events_checked} event(s) checked."))
