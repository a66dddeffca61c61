from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from vetting import workflow
from vetting.models import Application


class Command(BaseCommand):
    help = (
        "Corrects the e-mail address stored with an application, e.g. one stored with an invisible "
        "character that mail cannot carry (the application's page in the admin says so). The new "
        "address is checked as a typed one is, and the change is audited with both addresses."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("reference", help="The application's reference, e.g. K7M2QX9D.")
        parser.add_argument("address", help="The address to store instead.")

    def handle(self, *args, reference: str, address: str, **options) -> None:
        application = Application.objects.filter(reference=reference.strip().upper()).first()
        if application is None:
            raise CommandError(f"No application has the reference {reference!r}.")
        try:
            stored = workflow.correct_email(application, address)
        except workflow.WorkflowError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            self.style.SUCCESS(f"Application {application.reference} now has the address {stored}.")
        )
