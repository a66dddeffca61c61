from __future__ import annotations

from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class CSPViolationManager(models.Manager):
    def record(self, directive: str, blocked: str, document_path: str) -> None:
        """Count one report: a flood of the same violation grows a counter, not the table."""
        now = timezone.now()
        same = self.filter(directive=directive, blocked=blocked, document_path=document_path)
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
