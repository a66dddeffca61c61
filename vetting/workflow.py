"""Every change of an application's state, in one place.

Views, the admin and commands call these functions; none of them changes an
application's status itself. Each function checks its guard, changes fields
in one transaction and queues its e-mails in that same transaction.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from evidence.models import Evidence
from evidence.validation import ValidatedUpload
from notifications.outbox import queue_email
from vetting.models import Application


def submit_application(application: Application, uploads: list[ValidatedUpload]) -> Application:
    """Save a new public application with its evidence, all or nothing.

    Evidence files are written before the transaction commits; if anything
    fails, the rows roll back and the files written so far are deleted, so
    no row and no orphan file remains.
    """
    stored: list[Evidence] = []
    try:
        with transaction.atomic():
            application.status = Application.Status.SUBMITTED
            application.source = Application.Source.PUBLIC
            application.consent_given_at = timezone.now()
            application.save()
            for upload in uploads:
                stored.append(Evidence.objects.store(application, upload))
            queue_email(
                "application-received",
                [application.email],
                {"application": application, "evidence_count": len(stored)},
            )
            queue_email(
                "staff-new-application",
                settings.STAFF_NOTIFY_EMAILS,
                {
                    "application": application,
                    "admin_url": settings.SITE_URL
                    + reverse("admin:vetting_application_change", args=[application.pk]),
                },
            )
    except BaseException:
        for evidence in stored:
            evidence.file.storage.delete(evidence.file.name)
        raise
    return application
