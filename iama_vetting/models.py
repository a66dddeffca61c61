from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# Anyone can post reports: past this many kinds, new ones are counted in one
# overflow row (the log still names each). security_report forgets kinds not
# seen for KEPT_DAYS, which makes room again.
MAX_KINDS = 1000
OVERFLOW = "(overflow)"
KEPT_DAYS = 30


class CSPViolationManager(models.Manager):
    def record(self, directive: str, blocked: str, document_path: str) -> None:
        """Count one report: a flood of the same violation grows a counter, not the table."""
        now = timezone.now()
        same = self.filter(directive=directive, blocked=blocked, document_path=document_path)
        if same.update(count=F("count") + 1, last_seen=now):
            return
        if self.count() >= MAX_KINDS:
            directive = blocked = document_path = OVERFLOW
            same = self.filter(directive=OVERFLOW, blocked=OVERFLOW, document_path=OVERFLOW)
            if same.update(count=F("count") + 1, last_seen=now):
                return
        try:
            with transaction.atomic():
                self.create(
                    directive=directive,
                    blocked=blocked,
                    document_path=document_path,
                    count=1,
                    first_seen=now,
                    last_seen=now,
                )
        except IntegrityError:
            # Another worker created the row between our update and insert.
            same.update(count=F("count") + 1, last_seen=now)

    def forget_unseen_since(self, moment: datetime) -> int:
        """Delete the kinds not reported since `moment`; how many."""
        deleted, _by_model = self.filter(last_seen__lt=moment).delete()
        return deleted


class CSPViolation(models.Model):
    """One kind of Content Security Policy violation, as browsers reported it."""

    directive = models.CharField(_("directive"), max_length=64)
    blocked = models.CharField(_("blocked"), max_length=512)
    document_path = models.CharField(_("page"), max_length=512)
    count = models.PositiveBigIntegerField(_("reports"), default=0)
    first_seen = models.DateTimeField(_("first seen"))
    last_seen = models.DateTimeField(_("last seen"))

    objects = CSPViolationManager()

    class Meta:
        verbose_name = _("CSP violation")
        verbose_name_plural = _("CSP violations")
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["directive", "blocked", "document_path"], name="csp_violation_unique_kind"
            )
        ]

    def __str__(self) -> str:
        return f"{self.directive} blocked {self.blocked} on {self.document_path}"
