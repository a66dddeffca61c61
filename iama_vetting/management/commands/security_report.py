from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from iama_vetting import ratelimits
from iama_vetting.models import KEPT_DAYS, CSPViolation
from notifications.models import OutboundEmail
from notifications.outbox import queue_email
from vetting.models import AuditEvent

HOMESERVER_ERRORS = ["invitation.issue_failed", "invitation.revoke_failed", "invitation.orphan_revoke_failed"]
TOP = 10


def window_start(text: str, now: datetime) -> datetime:
    """`now` less the --since window (24h, 7d, …)."""
    # At most 12 digits: int() refuses numbers of thousands of digits with a ValueError of its own.
    match = re.fullmatch(r"(\d{1,12})([hd])", text.strip())
    if not match or int(match[1]) == 0:
        raise CommandError(f"--since takes hours or days, like 24h or 7d, not {text!r}.")
    amount, unit = int(match[1]), match[2]
    try:
        return now - (timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
    except OverflowError:
        raise CommandError(
            f"--since {text.strip()} reaches back before the year 1: give a shorter window, like 30d."
        ) from None


def rate_limit_refusals(since: datetime, now: datetime) -> dict[str, int]:
    """Refusals per limit, from the hourly counters the limiter keeps in the shared store."""
    names = [ratelimits.DEFAULT_TIER_NAME, *(limit.group for limit in ratelimits.ALL_LIMITS)]
    # Older counters have expired: a long --since must not ask the cache for every hour of years.
    since = max(since, now - timedelta(seconds=ratelimits.REFUSALS_KEPT_SECONDS))
    hours = []
    hour = since.replace(minute=0, second=0, microsecond=0)
    while hour <= now:
        hours.append(hour)
        hour += timedelta(hours=1)
    keys = {ratelimits.refusals_key(name, hour): name for name in names for hour in hours}
    counts = caches[settings.RATELIMIT_USE_CACHE].get_many(list(keys))
    totals: dict[str, int] = {}
    for key, value in counts.items():
        totals[keys[key]] = totals.get(keys[key], 0) + int(value)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


class Command(BaseCommand):
    help = (
        "Summarises what needs a security look: failed staff sign-ins, rate-limit refusals, CSP "
        "violations, failed mails and homeserver errors; --mail sends it to the superadmins. "
        f"Kinds of CSP violation not reported for {KEPT_DAYS} days are forgotten on each run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", default="24h", help="How far back: 24h (default), 7d, …")
        parser.add_argument(
            "--mail", action="store_true", help="Queue the report to every active superadmin."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only print the report: forget nothing, send nothing."
        )

    def handle(self, *args, since: str, mail: bool, dry_run: bool, **options) -> None:
        if dry_run and mail:
            raise CommandError("--dry-run sends nothing: give either --dry-run or --mail, not both.")
        now = timezone.now()
        start = window_start(since, now)
        report = self.gather(start, now.astimezone(UTC))
        text = self.render(report, since)
        self.stdout.write(text)
        if dry_run:
            return
        recipients = self.superadmin_addresses() if mail else []
        # Before forgetting: a run that fails changes nothing.
        if mail and not recipients:
            raise CommandError(
                "No active superadmin has an e-mail address: nothing was sent, nothing forgotten."
            )
        # Run daily by its timer: keeps the table to what browsers still report (models.MAX_KINDS).
        forgotten = CSPViolation.objects.forget_unseen_since(now - timedelta(days=KEPT_DAYS))
        self.stdout.write(f"Forgot {forgotten} kind(s) of CSP violation not reported for {KEPT_DAYS} days.")
        if recipients:
            with transaction.atomic():
                queue_email("security-report", recipients, {"report_text": text, "since": since})
            self.stdout.write(f"Queued to {len(recipients)} superadmin(s).")

    def superadmin_addresses(self) -> list[str]:
        return list(
            get_user_model()
            .objects.filter(is_superuser=True, is_active=True)
            .exclude(email="")
            .values_list("email", flat=True)
        )

    def gather(self, start: datetime, now: datetime) -> dict:
        events = AuditEvent.objects.filter(created_at__gte=start)
        failed_logins = events.filter(action="user.login_failed")
        return {
            "failed_logins": failed_logins.count(),
            "failed_logins_by_username": list(
                failed_logins.values_list("details__username")
                .annotate(total=Count("id"))
                .order_by("-total")[:TOP]
            ),
            "failed_second_factor": events.filter(action="user.second_factor_failed").count(),
            "rate_limit_refusals": rate_limit_refusals(start, now),
            "csp_violations": list(
                CSPViolation.objects.filter(last_seen__gte=start)
                .order_by("-count")
                .values_list("directive", "blocked", "document_path", "count")[:TOP]
            ),
            "failed_mails": OutboundEmail.objects.filter(
                status=OutboundEmail.Status.FAILED, next_attempt_at__gte=start
            ).count(),
            "homeserver_errors": list(
                events.filter(action__in=HOMESERVER_ERRORS)
                .values_list("action")
                .annotate(total=Count("id"))
                .order_by("-total")
            ),
        }

    def render(self, report: dict, since: str) -> str:
        lines = [f"IaMA RVI security report, last {since}", ""]
        lines.append(f"Failed staff sign-ins: {report['failed_logins']}")
        lines += [
            f"  {username or '(empty)'}: {total}" for username, total in report["failed_logins_by_username"]
        ]
        lines.append(f"Wrong second-step codes: {report['failed_second_factor']}")
        refusals = report["rate_limit_refusals"]
        lines.append(f"Rate-limit refusals: {sum(refusals.values())}")
        lines += [f"  {name}: {total}" for name, total in refusals.items()]
        lines.append(f"CSP violations (kinds seen): {len(report['csp_violations'])}")
        lines += [
            f"  {directive} blocked {blocked} on {path}: {count} report(s)"
            for directive, blocked, path, count in report["csp_violations"]
        ]
        lines.append(f"Mails that failed for good: {report['failed_mails']}")
        lines.append(f"Homeserver errors: {sum(total for _action, total in report['homeserver_errors'])}")
        lines += [f"  {action}: {total}" for action, total in report["homeserver_errors"]]
        return "\n".join(lines) + "\n"
