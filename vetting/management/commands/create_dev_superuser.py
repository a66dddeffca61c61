from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Creates a local superuser with a random password, printed once (DEBUG only; used by make run)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("Refusing: create_dev_superuser works only with DEBUG=true.")
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "Admin: http://127.0.0.1:8000/admin/ (a superuser exists; "
                "`.venv/bin/python manage.py changepassword <name>` sets a new password)."
            )
            return
        password = secrets.token_urlsafe(16)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created local superuser {username!r} with password {password}\n"
                "It is shown only this once. Admin: http://127.0.0.1:8000/admin/"
            )
        )
