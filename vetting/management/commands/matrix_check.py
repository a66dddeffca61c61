from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vetting import matrix


def address(url: str) -> str:
    """scheme://host[:port] of a URL: never a user name or password that may be in it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Command(BaseCommand):
    help = (
        "Checks the Matrix homeserver settings: the URL answers, the admin credentials work (one list "
        "call), and prints the server version and backend. Never prints a token."
    )

    def handle(self, *args, **options) -> None:
        try:
            client = matrix.get_client()
            self.stdout.write(f"Backend: {client.backend}")
            self.stdout.write(
                f"Homeserver: {address(settings.MATRIX_HOMESERVER_URL)} (server name {client.server_name})"
            )
            if client.backend == matrix.MAS:
                self.stdout.write(f"Authentication service: {address(settings.MATRIX_MAS_URL)}")
            self.stdout.write(f"Server: {client.server_version()}")
            valid = sum(1 for _token in client.list_tokens(valid=True))
        except matrix.MatrixError as error:
            raise CommandError(f"{error} {error.advice}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Admin credentials accepted: {valid} valid registration token(s) on the server."
            )
        )
