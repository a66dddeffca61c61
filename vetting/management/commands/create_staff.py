from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from vetting import roles, workflow


class Command(BaseCommand):
    help = (
        "Creates an active staff account with a role and e-mails the person a link to choose "
        "their password (no password is ever printed)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("email")
        parser.add_argument("--role", required=True, choices=roles.ROLE_NAMES)

    def handle(self, *args, username: str, email: str, role: str, **options) -> None:
        try:
            user = workflow.create_staff_account(username, email, role)
        except workflow.WorkflowError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            self.style.SUCCESS(
                f"Created {roles.display_name(role)} {user.username} <{user.email}>; "
                "a set-password link is queued in the outbox."
            )
        )
