"""Maintenance mode and the notice of planned maintenance windows.

The switch is a JSON file at MAINTENANCE_FILE, written by `manage.py
maintenance on|off`. A file, not a database row: every gunicorn worker (and
every process on the host) sees the same state, and it still works while
the database is stopped for the maintenance it announces. Each request costs
one stat() and, only while the file exists, one small read.
"""

from __future__ import annotations

import calendar
import functools
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import timezone

# Paths that keep working in maintenance mode: staff sign in to the admin,
# download evidence and follow the set-password links the admin mails them
# (/reset/); the load balancer still gets an honest health answer,
# security.txt still names the contact, and browsers still report CSP
# violations (the admin is in use). With the database stopped those needing
# it answer DatabaseOutageMiddleware's 503, as the admin does; a CSP report
# is logged before it is stored.
EXEMPT_PREFIXES = (
    "/admin/",
    "/evidence/",
    "/reset/",
    "/healthz",
    "/static/",
    "/.well-known/",
    "/csp-report/",
)
NOTICE_BEFORE = timedelta(hours=48)
# Retry-After when the end is unknown or already past.
DEFAULT_RETRY_AFTER = 600
# Past these, maintenance mode counts as forgotten (`forgotten`): the jobs it holds back
# (unless_maintenance) fail, and so alert, instead of skipping quietly for ever.
FORGOTTEN_AFTER_END = timedelta(hours=1)
LONGEST_WITHOUT_END = timedelta(hours=6)
# The furthest end `maintenance on --until` accepts: the jobs it holds back (the purges
# among them) would be skipped all that while, and a longer one is surely a typo.
LONGEST_UNTIL = timedelta(days=7)

_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_WEEKDAYS = [day.lower() for day in calendar.day_name]
_WINDOW_RE = re.compile(
    r"^(?P<ordinal>first|second|third|fourth|last)\s+(?P<weekday>[a-z]+)\s+"
    r"(?P<start>\d{2}:\d{2})\s*-\s*(?P<end>\d{2}:\d{2})$"
)


@dataclass(frozen=True)
class Window:
    """A monthly maintenance window in UTC, e.g. the first Sunday 02:00-04:00."""

    ordinal: int
    weekday: int
    start: tuple[int, int]
    end: tuple[int, int]

    def _day(self, year: int, month: int) -> date:
        days = [
            week[self.weekday]
            for week in calendar.Calendar().monthdatescalendar(year, month)
            if week[self.weekday].month == month
        ]
        return days[-1] if self.ordinal == -1 else days[self.ordinal - 1]

    def occurrence(self, year: int, month: int) -> tuple[datetime, datetime]:
        return _occurrence(self, year, month)

    def next_after(self, moment: datetime) -> tuple[datetime, datetime]:
        """The first window that has not ended yet at `moment`."""
        year, month = moment.year, moment.month
        while True:
            start, end = self.occurrence(year, month)
            if end > moment:
                return start, end
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)


# Asked on every public page: each month's window is worked out once.
@functools.lru_cache(maxsize=16)
def _occurrence(window: Window, year: int, month: int) -> tuple[datetime, datetime]:
    day = window._day(year, month)
    start = datetime(day.year, day.month, day.day, *window.start, tzinfo=UTC)
    end = datetime(day.year, day.month, day.day, *window.end, tzinfo=UTC)
    return start, end


@functools.lru_cache(maxsize=4)  # read on every public page: parse each setting once
def parse_window(text: str) -> Window | None:
    """Parse MAINTENANCE_WINDOW; empty means no planned window."""
    text = " ".join(text.lower().split())
    if not text:
        return None
    match = _WINDOW_RE.match(text)
    if not match or match["weekday"] not in _WEEKDAYS:
        raise ImproperlyConfigured(
            f"MAINTENANCE_WINDOW {text!r} is not like 'first sunday 02:00-04:00' (UTC) or empty."
        )
    try:
        start = datetime.strptime(match["start"], "%H:%M")
        end = datetime.strptime(match["end"], "%H:%M")
    except ValueError as error:
        raise ImproperlyConfigured(f"MAINTENANCE_WINDOW {text!r} has an impossible time.") from error
    if end <= start:
        raise ImproperlyConfigured(f"MAINTENANCE_WINDOW {text!r} must end after it starts, on the same day.")
    return Window(
        ordinal=_ORDINALS[match["ordinal"]],
        weekday=_WEEKDAYS.index(match["weekday"]),
        start=(start.hour, start.minute),
        end=(end.hour, end.minute),
    )


def upcoming_window(now: datetime | None = None) -> tuple[datetime, datetime] | None:
    """The planned window if it starts within 48 hours or is under way."""
    window = parse_window(settings.MAINTENANCE_WINDOW)
    if window is None:
        return None
    now = now or timezone.now()
    start, end = window.next_after(now)
    return (start, end) if start - NOTICE_BEFORE <= now else None


@dataclass(frozen=True)
class MaintenanceState:
    since: datetime
    until: datetime | None


def read_state() -> MaintenanceState | None:
    """The switch as the file says; None when maintenance mode is off."""
    try:
        raw = settings.MAINTENANCE_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        since = _utc(data["since"])
        until = _utc(data["until"]) if data.get("until") else None
        # An end further off than `maintenance on` accepts was not written by it (and one near
        # the year 9999 would overflow in `forgotten`): the file counts as damaged.
        plausible = until is None or until - since <= LONGEST_UNTIL
    except (ValueError, KeyError, TypeError):
        plausible = False
    if not plausible:
        # A damaged file still means "someone switched maintenance on", when it was written.
        written = datetime.fromtimestamp(settings.MAINTENANCE_FILE.stat().st_mtime, tz=UTC)
        return MaintenanceState(since=written, until=None)
    return MaintenanceState(since=since, until=until)


def _utc(text: str) -> datetime:
    """A time from the file; one written by hand without an offset is UTC, as `--until` reads it."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def forgotten(state: MaintenanceState, now: datetime | None = None) -> bool:
    """Whether maintenance mode has outlived any maintenance: past its end by FORGOTTEN_AFTER_END,
    or on for LONGEST_WITHOUT_END when no end was given. Someone forgot to switch it off."""
    now = now or timezone.now()
    if state.until is not None:
        return now > state.until + FORGOTTEN_AFTER_END
    return now > state.since + LONGEST_WITHOUT_END


def switch_on(until: datetime | None) -> MaintenanceState:
    state = MaintenanceState(since=timezone.now(), until=until)
    path = settings.MAINTENANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"since": state.since.isoformat(), "until": until.isoformat() if until else None}
    # Written aside and renamed, so a worker never reads half a file.
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(data), encoding="utf-8")
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    return state


def switch_off() -> bool:
    """Remove the switch; False if maintenance mode was already off."""
    try:
        settings.MAINTENANCE_FILE.unlink()
    except FileNotFoundError:
        return False
    return True


def retry_after(state: MaintenanceState, now: datetime | None = None) -> int:
    if state.until is None:
        return DEFAULT_RETRY_AFTER
    seconds = int((state.until - (now or timezone.now())).total_seconds())
    return seconds if seconds > 0 else DEFAULT_RETRY_AFTER


class MaintenanceModeMiddleware:
    """Public pages answer 503 with Retry-After while maintenance mode is on."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(EXEMPT_PREFIXES):
            return self.get_response(request)
        state = read_state()
        if state is None:
            return self.get_response(request)
        # Rendered without a RequestContext: no session, no database.
        body = render_to_string("503.html", {"maintenance": state})
        response = HttpResponse(body, status=503)
        response["Retry-After"] = str(retry_after(state))
        response["Cache-Control"] = "no-store"
        return response


def maintenance_notice(request: HttpRequest) -> dict:
    """Context processor: the planned window for the notice in base.html."""
    if request.path.startswith("/admin/"):
        return {}
    window = upcoming_window()
    if window is None:
        return {}
    return {"maintenance_window": {"start": window[0], "end": window[1]}}
