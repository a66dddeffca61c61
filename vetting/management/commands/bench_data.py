from __future__ import annotations

import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from evidence.models import Evidence
from vetting.models import Application, new_reference

BATCH = 1000


class Command(BaseCommand):
    help = "Fills the benchmark database with N made-up applications, each with two evidence rows (bench mode only)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--applications", type=int, required=True)

    def handle(self, *args, applications: int, **options) -> None:
        if not settings.BENCH_BARE_VIEW:
            raise CommandError("Refusing: bench_data only runs with BENCH_BARE_VIEW=true (make bench).")
        if applications < 1:
            raise CommandError(f"--applications must be at least 1, not {applications}.")
        statuses = [Application.Status.SUBMITTED, Application.Status.IN_REVIEW, Application.Status.REJECTED]
        now = timezone.now()
        existing = Application.objects.count()
        for start in range(existing, applications, BATCH):
            made = Application.objects.bulk_create(
                Application(
                    reference=new_reference(),
                    status=statuses[number % len(statuses)],
                    full_name=f"Bench Person {number}",
                    email=f"bench{number}@applicant.example",
                    referral="bench",
                    statement="bench",
                    consent_given_at=now,
                    email_confirmed_at=now,
                )
                for number in range(start, min(start + BATCH, applications))
            )
            Evidence.objects.bulk_create(
                Evidence(
                    id=uuid.uuid4(),
                    application=application,
                    file=f"00/bench-{application.reference}-{slot}.pdf",
                    original_name=f"document {slot}.pdf",
                    content_type="application/pdf",
                    size=1024,
                    sha256="0" * 64,
                )
                for application in made
                for slot in (1, 2)
            )
        self.stdout.write(f"{Application.objects.count()} applications in the benchmark database.")
