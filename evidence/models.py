from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models, transaction
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

    def purge_if_due(self, evidence_id: uuid.UUID, now: datetime) -> bool:
        """Purge one evidence that due_for_purge(now) listed, if it is still due; False if not.

        purge_evidence lists what is due without locks, and purging takes a while (a slow
        S3 delete): meanwhile a superadmin may reopen the application on appeal, staff take
        its next step or the applicant erase it. So the rows are locked, the application
        first as vetting.workflow locks it, and the condition is checked again: whoever
        commits first wins, and a reopened application keeps its files.
        """
        from vetting.models import Application

        with transaction.atomic():
            # An evidence row never moves to another application: reading this unlocked is safe.
            application_id = self.filter(pk=evidence_id).values_list("application_id", flat=True).first()
            if application_id is None:
                return False
            application = Application.objects.select_for_update().filter(pk=application_id).first()
            if application is None:
                return False
            evidence = self.due_for_purge(now).select_for_update(of=("self",)).filter(pk=evidence_id).first()
            if evidence is None:
                return False
            evidence.application = application
            name = evidence.forget_file()
        evidence.delete_stored_file(name)
        return True


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

    def forget_file(self) -> str:
        """Clear the row's file and personal fields and audit it, in the caller's transaction:
        what retention leaves is the proof the file existed (SHA-256, type, size).

        Returns the file's name, for delete_stored_file once that transaction has committed,
        as erasure does: a failed write leaves row and file together, never a stored row
        without its file.
        """
        from vetting import audit

        name = self.file.name
        self.file = ""
        self.original_name = ""
        self.note = ""
        self.purged_at = timezone.now()
        self.save(update_fields=["file", "original_name", "note", "purged_at"])
        audit.record(
            "evidence.purged",
            target=self,
            details={"application": self.application.reference, "sha256": self.sha256, "size": self.size},
        )
        return name

    def delete_stored_file(self, name: str) -> None:
        """Delete the file forget_file returned, and its cached preview, once the purge has committed."""
        from evidence.previews import forget_preview  # here: evidence.previews imports this module

        # A file that cannot be deleted now is logged and has no row any more:
        # purge_evidence's sweep of files without a row removes it.
        if name:
            delete_left_behind(self.file.storage, name)
        # As erasure does: a purged photo does not live on as a thumbnail until the cache expires it.
        forget_preview(self)
