from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Creates a local superuser with a random password, printed once (DEBUG only; used by make run)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("Refusing: create_dev_superuser works only with DEBUG=true.")
        User = get_user_model()
        try:
            # What the admin's user form would refuse: blank, too long, or odd characters.
            User._meta.get_field(User.USERNAME_FIELD).clean(username, None)
        except ValidationError as error:
            raise CommandError(f"--username: {' '.join(error.messages)}") from error
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "Admin: http://127.0.0.1:8000/admin/ (a superuser exists; "
                "`.venv/bin/python manage.py changepassword <name>` sets a new password)."
            )
            return
        if User.objects.filter(**{User.USERNAME_FIELD: username}).exists():
            raise CommandError(
                f"A user {username!r} exists and is not a superuser: choose another --username."
            )
        password = secrets.token_urlsafe(16)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created local superuser {username!r} with password {password}\n"
                "It is shown only this once. Admin: http://127.0.0.1:8000/admin/"
            )
        )
