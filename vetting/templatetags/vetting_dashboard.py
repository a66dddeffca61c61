"""The admin index dashboard: the queue at a glance, drawn on the server (no script, no CDN),
and the person's own recent actions."""

from __future__ import annotations

import statistics
from datetime import timedelta

from django import template
from django.db.models import Count
from django.db.models.functions import TruncWeek
from django.utils import timezone

from vetting import roles
from vetting.admin import audit_target, with_target_reference
from vetting.models import Application, AuditEvent

register = template.Library()

WEEKS = 12
RECENT_ACTIONS = 10
CHART_WIDTH = 600
CHART_HEIGHT = 160
CHART_LABEL_SPACE = 20


@register.inclusion_tag("admin/vetting/dashboard.html", takes_context=True)
def vetting_dashboard(context) -> dict:
    user = context["request"].user
    if not user.has_perm("vetting.view_application"):
        return {"visible": False}
    counts = dict(Application.objects.values_list("status").annotate(total=Count("id")).order_by())
    # Each role counts only the applications on its own list (an inviting admin: approved, invited, joined).
    per_state = [
        (label, counts.get(value, 0), value)
        for value, label in Application.Status.choices
        if roles.sees_status(user, value)
    ]
    if not roles.sees_every_application(user):
        # The queue's age, decision times and weekly arrivals are about applications they never see.
        return {"visible": True, "per_state": per_state, "sees_queue": False}

    now = timezone.now()
    oldest = (
        Application.objects.filter(status=Application.Status.SUBMITTED)
        .with_queued_at()
        .order_by("queued_at", "pk")
        .only("pk", "reference")
        .first()
    )

    this_week = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    first_week = this_week - timedelta(weeks=WEEKS - 1)
    weekly = dict(
        Application.objects.filter(created_at__gte=first_week)
        .exclude(status=Application.Status.UNCONFIRMED)
        .annotate(week=TruncWeek("created_at"))
        .values_list("week")
        .annotate(total=Count("id"))
        .order_by()
    )
    weeks = [first_week + timedelta(weeks=offset) for offset in range(WEEKS)]
    totals = [weekly.get(week, 0) for week in weeks]

    decided = Application.objects.filter(decided_at__gte=first_week).with_queued_at()
    durations = [
        decided_at - queued_at for decided_at, queued_at in decided.values_list("decided_at", "queued_at")
    ]
    return {
        "visible": True,
        "per_state": per_state,
        "sees_queue": True,
        "oldest": oldest,
        "oldest_age": now - oldest.queued_at if oldest else None,
        "median_decision_hours": (
            round(statistics.median(durations).total_seconds() / 3600, 1) if durations else None
        ),
        "chart": _bar_chart(weeks, totals),
    }


def _bar_chart(weeks, totals) -> dict:
    peak = max(totals) or 1
    slot = CHART_WIDTH / len(totals)
    plot_height = CHART_HEIGHT - CHART_LABEL_SPACE * 2
    bars = []
    for index, (week, total) in enumerate(zip(weeks, totals, strict=True)):
        height = round(plot_height * total / peak)
        bars.append(
            {
                "x": round(index * slot + slot * 0.15),
                "width": round(slot * 0.7),
                "y": CHART_LABEL_SPACE + plot_height - height,
                "height": height,
                "total": total,
                "label_x": round(index * slot + slot / 2),
                "week": week,
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bars": bars,
        "label_y": CHART_HEIGHT - 4,
        "total": sum(totals),
    }


@register.inclusion_tag("admin/vetting/recent_actions.html", takes_context=True)
def my_recent_actions(context) -> dict:
    """The person's own latest audit events, in place of Django's LogEntry list, which the workflow never writes."""
    user = context["request"].user
    # Signing in and out is the person's own session, not work they did.
    events = with_target_reference(AuditEvent.objects.filter(actor=user).exclude(action__startswith="user."))
    return {
        "actions": [(event, audit_target(event)) for event in events.order_by("-id")[:RECENT_ACTIONS]],
        "can_view_trail": user.has_perm("vetting.view_auditevent"),
        "actor": user,
    }
