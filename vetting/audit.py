"""Writing and checking the audit trail (vetting.AuditEvent).

Each event stores the SHA-256 of its predecessor and of its own content, so a
row changed in the database breaks the chain; `verify_audit` finds the link.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from iama_vetting.ratelimits import client_ip
from vetting.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64
SECRET_KEY_PARTS = ("password", "secret", "token", "authpw", "key")
MASK = "********"


def mask_secrets(details: dict) -> dict:
    """Replace the value of every secret-looking key, at any depth."""
    masked = {}
    for key, value in details.items():
        if any(part in key.lower() for part in SECRET_KEY_PARTS):
            masked[key] = MASK
        elif isinstance(value, dict):
            masked[key] = mask_secrets(value)
        else:
            masked[key] = value
    return masked


def _target(target: models.Model | None) -> tuple[str, str]:
    if target is None:
        return "", ""
    return target._meta.model_name, str(target.pk)


def _digest(content: dict) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def personal_digest(event: AuditEvent) -> str:
    """The digest of the parts that may hold personal data (IP, details).

    The event hash covers this digest rather than the values themselves, so
    an applicant's erasure can remove them (`redact`) and keep the digest:
    the chain still verifies, and who did what when stays checkable.
    """
    if event.redacted_digest:
        return event.redacted_digest
    return _digest({"ip": event.ip, "details": event.details})


def content_hash(event: AuditEvent) -> str:
    return _digest(
        {
            "previous_hash": event.previous_hash,
            "created_at": event.created_at.isoformat(),
            "actor_kind": event.actor_kind,
            "actor_id": event.actor_id,
            "actor_name": event.actor_name,
            "action": event.action,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "personal": personal_digest(event),
        }
    )


def redact(events: models.QuerySet) -> int:
    """Erase the IP and details of `events`, keeping their place in the chain. Returns how many."""
    redacted = 0
    for event in events.filter(redacted_digest=""):
        event.redacted_digest = personal_digest(event)
        event.ip = None
        event.details = {}
        event.save(update_fields=["redacted_digest", "ip", "details"])
        redacted += 1
    return redacted


def record(
    action: str,
    *,
    actor=None,
    actor_kind: str | None = None,
    target: models.Model | None = None,
    request: HttpRequest | None = None,
    details: dict | None = None,
) -> AuditEvent:
    """Append one event. `actor` is a user; without one the actor is `actor_kind`."""
    if actor_kind is None:
        actor_kind = AuditEvent.ActorKind.USER if actor is not None else AuditEvent.ActorKind.SYSTEM
    target_type, target_id = _target(target)
    with transaction.atomic():
        head, _created = AuditChainHead.objects.select_for_update().get_or_create(
            pk=1, defaults={"last_hash": GENESIS_HASH}
        )
        event = AuditEvent(
            created_at=timezone.now(),
            actor_kind=actor_kind,
            actor=actor,
            actor_name=actor.get_username() if actor is not None else "",
            action=action,
            target_type=target_type,
            target_id=target_id,
            # The client behind our proxies, as the request logs record it.
            ip=client_ip(request) if request is not None else None,
            details=mask_secrets(details or {}),
            previous_hash=head.last_hash,
        )
        # Round-trip the details through JSON first, so the hash is computed
        # over exactly what the database gives back when verifying.
        event.details = json.loads(json.dumps(event.details, default=str))
        event.hash = content_hash(event)
        event.save()
        head.last_hash = event.hash
        head.save(update_fields=["last_hash"])
    return event


@dataclass(frozen=True)
class BrokenLink:
    event_id: int | None
    reason: str


@dataclass(frozen=True)
class ChainCheck:
    events_checked: int
    broken: BrokenLink | None


def check_chain() -> ChainCheck:
    """How many events hold, walking from the first, up to the first whose hash or link does not."""
    # The head is read before the events, not after: verify_audit runs while the site is
    # in use, and a head read after the walk would name events committed since it began
    # (a false "missing" alarm). Each event commits together with the head (record), so
    # every event this head covers is in the walk's later snapshot; events written since
    # only extend the chain past it. The head must name a hash the walk reaches.
    head_hash = _head_hash()
    head_reached = head_hash in (None, GENESIS_HASH)
    expected_previous = GENESIS_HASH
    checked = 0
    for event in _events_in_order():
        reason = _why_broken(event, expected_previous)
        if reason is not None:
            return ChainCheck(checked, BrokenLink(event.pk, reason))
        checked += 1
        expected_previous = event.hash
        head_reached = head_reached or event.hash == head_hash
    if not head_reached:
        reason = "the newest events are missing (the chain head points past the last event)"
        return ChainCheck(checked, BrokenLink(None, reason))
    # Events without a head mean it was removed, as every event writes one (record). Looked
    # at again: the trail may have been empty when the head was read, its first events
    # written since.
    if head_hash is None and expected_previous != GENESIS_HASH and _head_hash() is None:
        reason = "the chain head is missing (it records the newest event's hash)"
        return ChainCheck(checked, BrokenLink(None, reason))
    return ChainCheck(checked, None)


def _why_broken(event: AuditEvent, expected_previous: str) -> str | None:
    if event.previous_hash != expected_previous:
        return "its link to the previous event does not match (an event was removed)"
    # The hash covers a redacted row's stored digest in place of its IP and details
    # (personal_digest), so only their absence shows that they were not rewritten.
    if event.redacted_digest and (event.ip is not None or event.details != {}):
        return "it is marked as erased but has details or an address (the row was changed)"
    if content_hash(event) != event.hash:
        return "its content does not match its hash (the row was changed)"
    return None


def _head_hash() -> str | None:
    return AuditChainHead.objects.filter(pk=1).values_list("last_hash", flat=True).first()


def _events_in_order() -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("id").iterator(chunk_size=2000)
