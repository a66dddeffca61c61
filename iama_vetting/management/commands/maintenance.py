from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from iama_vetting import maintenance


def parse_until(text: str) -> datetime:
    """An ISO date-time, or HH:MM for the next such time; either is UTC unless it gives an
    offset. Returned in UTC, as it is shown."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            clock = time.fromisoformat(text)
        except ValueError:
            raise CommandError(
                f"--until {text!r} is neither HH:MM nor a date-time like 2026-12-06T04:00Z."
            ) from None
        now = timezone.now()
        # From yesterday: at an offset far from UTC, the next such time can be on any of three dates.
        moment = datetime.combine(
            now.date() - timedelta(days=1), clock.replace(tzinfo=None), tzinfo=clock.tzinfo or UTC
        )
        while moment <= now:
            moment += timedelta(days=1)
        return moment.astimezone(UTC)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    now = timezone.now()
    if moment <= now:
        raise CommandError(f"--until {text!r} is in the past.")
    if moment - now > maintenance.LONGEST_UNTIL:
        raise CommandError(
            f"--until {text!r} is more than {maintenance.LONGEST_UNTIL.days} days ahead: surely a typo. "
            "Maintenance mode is unchanged."
        )
    return moment


class Command(BaseCommand):
    help = (
        "Switch maintenance mode on or off, or show it: while on, public pages answer 503 with "
        "Retry-After and staff can still use the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["on", "off", "status"])
        parser.add_argument(
            "--until",
            help="Expected end: HH:MM or an ISO date-time, UTC unless it gives an offset. Only with 'on'.",
        )

    def handle(self, *args, action: str, until: str | None = None, **options) -> None:
        if until and action != "on":
            raise CommandError("--until goes only with 'on'.")
        if action == "on":
            moment = parse_until(until) if until else None
            try:
                state = maintenance.switch_on(moment)
            except OSError as error:
                raise self.unchanged(error) from error
            self.stdout.write(f"Maintenance mode is on{self.until_text(state)}. Public pages answer 503.")
        elif action == "off":
            try:
                was_on = maintenance.switch_off()
            except OSError as error:
                raise self.unchanged(error) from error
            self.stdout.write("Maintenance mode is off." if was_on else "Maintenance mode was already off.")
        else:
            state = maintenance.read_state()
            if state is None:
                self.stdout.write("Maintenance mode is off.")
            else:
                self.stdout.write(
                    f"Maintenance mode is on since {state.since:%Y-%m-%d %H:%M} UTC{self.until_text(state)}."
                )
            window = maintenance.upcoming_window()
            if window:
                self.stdout.write(
                    f"Planned window announced on public pages: {window[0]:%Y-%m-%d %H:%M}–{window[1]:%H:%M} UTC."
                )

    def unchanged(self, error: OSError) -> CommandError:
        return CommandError(
            f"Cannot change MAINTENANCE_FILE {settings.MAINTENANCE_FILE}: {error.strerror}. "
            "Maintenance mode is unchanged."
        )

    def until_text(self, state: maintenance.MaintenanceState) -> str:
        return f", expected until {state.until:%Y-%m-%d %H:%M} UTC" if state.until else ""
