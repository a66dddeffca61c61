"""The applicant's "download my data": a ZIP of what they gave us and what happened to it.

It holds their own fields and answers to staff, their evidence files as
stored, and the history of their application from the audit trail. Never
staff notes, staff reasons or staff names: a staff action shows the actor's
role only.
"""

from __future__ import annotations

import json
import tempfile
import zipfile

from django.utils.translation import gettext as _

from vetting import roles
from vetting.models import Application, AuditEvent

OWN_FIELDS = [
    "reference",
    "status",
    "full_name",
    "email",
    "matrix_username",
    "phone",
    "referral",
    "statement",
    "privacy_notice_version",
    "consent_given_at",
    "created_at",
    "email_confirmed_at",
    "information_request",
    "message_to_applicant",
    "decided_at",
]
# Details an applicant may see in their history: what they themselves wrote.
APPLICANT_DETAIL_KEYS = {"message", "evidence", "reference"}
# Staff-internal events on an application, left out of the applicant's history.
STAFF_ONLY_ACTIONS = {"note.added"}
IN_MEMORY_LIMIT = 8 * 1024 * 1024


def _actor_role(event: AuditEvent) -> str:
    if event.actor_kind == AuditEvent.ActorKind.APPLICANT:
        return str(_("You"))
    if event.actor is None:
        return str(_("System"))
    if event.actor.is_superuser:
        return roles.display_name(roles.SUPERADMIN)
    names = sorted(event.actor.groups.values_list("name", flat=True))
    return ", ".join(names) or str(_("Staff"))


def _history(application: Application) -> list[dict]:
    events = (
        AuditEvent.objects.filter(target_type="application", target_id=str(application.pk))
        .exclude(action__in=STAFF_ONLY_ACTIONS)
        .select_related("actor")
        .order_by("id")
    )
    history = []
    for event in events:
        entry = {"time": event.created_at.isoformat(), "action": event.action, "by": _actor_role(event)}
        if event.actor_kind == AuditEvent.ActorKind.APPLICANT:
            entry.update({k: v for k, v in event.details.items() if k in APPLICANT_DETAIL_KEYS})
        history.append(entry)
    return history


def _value(instance, name: str):
    value = getattr(instance, name)
    return value.isoformat() if hasattr(value, "isoformat") else value


def _answers(application: Application, paths: dict) -> list[dict]:
    """What the applicant answered to each request for information, oldest first."""
    replies = application.information_replies.order_by("created_at", "pk").prefetch_related("evidence")
    return [
        {
            "sent_at": reply.created_at.isoformat(),
            "question": reply.question,
            "answer": reply.text,
            "evidence": [paths[item.pk] for item in reply.evidence.all() if item.pk in paths],
        }
        for reply in replies
    ]


def build_archive(application: Application) -> tempfile.SpooledTemporaryFile:
    """The ZIP, at position 0; small archives stay in memory, large ones spill to disk."""
    archive_file = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_LIMIT)  # noqa: SIM115  (returned open)
    with zipfile.ZipFile(archive_file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "README.txt",
            _(
                "Your data from the IaM Alliance vetting service, application %(reference)s.\n\n"
                "application.json  what you told us and where your application stands\n"
                "evidence.json     the files you sent, with their SHA-256 checksums\n"
                "evidence/         the files as we store them (photos without their metadata)\n"
                "history.json      what happened to your application, and when\n"
            )
            % {"reference": application.reference},
        )
        listing = []
        paths = {}
        for evidence in application.evidence.all():
            entry = {
                "original_name": evidence.original_name,
                "type": evidence.content_type,
                "size": evidence.size,
                "sha256": evidence.sha256,
                # A note staff wrote on a file they added is a staff note: never exported.
                "note": evidence.note if evidence.uploaded_by_id is None else "",
                "uploaded_at": evidence.uploaded_at.isoformat(),
            }
            if not evidence.file.name:
                # Purged after the retention period: the row is kept as proof, the file is gone.
                listing.append({"file": None, **entry, "purged_at": _value(evidence, "purged_at")})
                continue
            # The number keeps two files of the same name apart.
            path = f"evidence/{len(paths) + 1}-{evidence.original_name}"
            with evidence.file.open("rb") as stored, archive.open(path, "w") as target:
                for chunk in iter(lambda stored=stored: stored.read(64 * 1024), b""):
                    target.write(chunk)
            paths[evidence.pk] = path
            listing.append({"file": path, **entry})
        archive.writestr("evidence.json", json.dumps(listing, indent=2, ensure_ascii=False))
        own = {name: _value(application, name) for name in OWN_FIELDS}
        # "status" stays the machine value; the words are the ones the status page shows.
        own["status_display"] = application.applicant_status
        own["answers"] = _answers(application, paths)
        archive.writestr("application.json", json.dumps(own, indent=2, ensure_ascii=False))
        archive.writestr("history.json", json.dumps(_history(application), indent=2, ensure_ascii=False))
    archive_file.seek(0)
    return archive_file
