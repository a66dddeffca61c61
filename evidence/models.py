from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from evidence.storage import delete_left_behind, evidence_storage
from evidence.validation import ValidatedUpload


class EvidenceQuerySet(models.QuerySet):
    def stored(self) -> EvidenceQuerySet:
        """Evidence whose file is still kept (not purged)."""
        return self.filter(purged_at__isnull=True)

    def due_for_purge(self, now: datetime | None = None) -> EvidenceQuerySet:
        """Stored evidence of applications decided more than EVIDENCE_RETENTION_DAYS ago.

        Decided: approved, invited, rejected, withdrawn or joined, as the privacy
        notice says; an approved person who never registers keeps no evidence
        for ever. The decision time is the application's last change
        (updated_at): a decided application is not changed again in the normal
        course but by its next step (an invitation issued, used or ended).
        """
        from vetting.models import Application

        decided = [
            Application.Status.APPROVED,
            Application.Status.INVITED,
            Application.Status.REJECTED,
            Application.Status.WITHDRAWN,
            Application.Status.JOINED,
        ]
        cutoff = (now or timezone.now()) - timedelta(days=settings.EVIDENCE_RETENTION_DAYS)
        return self.stored().filter(application__status__in=decided, application__updated_at__lt=cutoff)


class EvidenceManager(models.Manager.from_queryset(EvidenceQuerySet)):
    def store(self, application, upload: ValidatedUpload, *, uploaded_by=None) -> Evidence:
        """Write the file under a new UUID name, then its row.

        The caller runs this inside its transaction and deletes the file
        again if that transaction fails (see vetting.workflow).
        """
        evidence_id = uuid.uuid4()
        # Two hex digits of fan-out keep directories small; no part of the
        # uploaded name is ever used in the path.
        name = f"{evidence_id.hex[:2]}/{evidence_id}.{upload.extension}"
        storage = self.model._meta.get_field("file").storage
        try:
            stored_name = storage.save(name, upload.file)
        except BaseException:
            # A write that fails half-way (disk full) leaves a partial file behind.
            delete_left_behind(storage, name)
            raise
        try:
            return self.create(
                id=evidence_id,
                application=application,
                file=stored_name,
                original_name=upload.display_name,
                content_type=upload.content_type,
                size=upload.size,
                sha256=upload.sha256,
                note=upload.note,
                uploaded_by=uploaded_by,
            )
        except BaseException:
            delete_left_behind(storage, stored_name)
            raise


class Evidence(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    application = models.ForeignKey("vetting.Application", on_delete=models.CASCADE, related_name="evidence")
    file = models.FileField(_("file"), storage=evidence_storage, max_length=200)
    original_name = models.CharField(_("original file name"), max_length=255)
    content_type = models.CharField(_("detected type"), max_length=100)
    size = models.PositiveBigIntegerField(_("size in bytes"))
    sha256 = models.CharField(_("SHA-256"), max_length=64)
    note = models.CharField(_("note"), max_length=500, blank=True)
    # Empty when the applicant uploaded it.
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("uploaded by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    uploaded_at = models.DateTimeField(_("uploaded at"), auto_now_add=True)
    # Set when retention removed the file; the row keeps its SHA-256, type and size.
    purged_at = models.DateTimeField(_("purged at"), null=True, blank=True, editable=False)

    objects = EvidenceManager()

    class Meta:
        ordering = ["uploaded_at"]
        verbose_name_plural = _("evidence")

    def __str__(self) -> str:
        return self.original_name or f"purged evidence {self.pk}"

    def purge(self) -> None:
        """Delete the stored file and everything personal about it; keep the proof it existed."""
        if self.file.name:
            self.file.storage.delete(self.file.name)
        self.file = ""
        self.original_name = ""
        self.note = ""
        self.purged_at = timezone.now()
        self.save(update_fields=["file", "original_name", "note", "purged_at"])
