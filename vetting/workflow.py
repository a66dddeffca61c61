"""Every change of an application's state, in one place.

Views, the admin and commands call these functions; none of them changes an
application's status itself. Each function checks its guard, changes fields
inside one transaction on a locked row, writes its audit event and queues its
e-mails in that same transaction: it applies completely or not at all.

    unconfirmed ──confirm_email──▶ submitted ──claim──▶ in_review (other states: only the address is confirmed)
    in_review ──release──▶ submitted
    in_review ──record_verification──▶ recommended
    in_review, recommended ──request_information──▶ info_requested
    info_requested ──add_information (applicant)──▶ submitted
    recommended ──approve──▶ approved
    submitted, in_review, info_requested, recommended ──reject──▶ rejected
    approved, rejected ──reopen (superadmin)──▶ recommended, or submitted without a verification
    any open state, approved, invited ──withdraw (applicant; an invited one's token is revoked)──▶ withdrawn
    approved ──issue_invitation / reissue_invitation──▶ invited
    invited ──revoke_invitation──▶ approved
    invited ──sync_invitations: token used──▶ joined
    invited ──sync_invitations: token expired or gone──▶ approved
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import BooleanField, CharField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_otp import devices_for_user

from evidence.models import Evidence
from evidence.previews import forget_preview
from evidence.storage import delete_left_behind
from evidence.validation import ValidatedUpload
from notifications.models import OutboundEmail, validate_sendable_address
from notifications.outbox import queue_email
from vetting import audit, links, matrix, roles
from vetting.models import (
    Application,
    AuditEvent,
    InformationReply,
    Invitation,
    StaffNote,
    validate_matrix_localpart,
)
from vetting.privacy import PRIVACY_NOTICE_VERSION

Status = Application.Status

logger = logging.getLogger(__name__)


class WorkflowError(Exception):
    """A transition that may not happen now; the message is for the person who tried."""


class AlreadyDecided(WorkflowError):
    """Someone else changed the application first (a lost race)."""


@dataclass(frozen=True)
class Transition:
    label: str
    sources: frozenset[str]
    # Whether `user` may take this transition at all, whatever the state.
    allowed_for: Callable


def _has(permission: str) -> Callable:
    return lambda user: user.has_perm(permission)


def _is_superadmin(user) -> bool:
    return user.is_active and user.is_superuser


# Staff transitions, by the name the admin uses for its buttons and URLs.
# The labels are what staff see and learn (DESIGN.md); keep them exact.
STAFF_TRANSITIONS: dict[str, Transition] = {
    "claim": Transition(
        gettext_lazy("Claim"), frozenset({Status.SUBMITTED}), _has("vetting.claim_application")
    ),
    "release": Transition(
        gettext_lazy("Release"), frozenset({Status.IN_REVIEW}), _has("vetting.claim_application")
    ),
    "record_verification": Transition(
        gettext_lazy("Record verification"),
        frozenset({Status.IN_REVIEW}),
        _has("vetting.record_verification"),
    ),
    "request_information": Transition(
        gettext_lazy("Request information"),
        frozenset({Status.IN_REVIEW, Status.RECOMMENDED}),
        _has("vetting.request_information"),
    ),
    "approve": Transition(
        gettext_lazy("Approve"), frozenset({Status.RECOMMENDED}), _has("vetting.decide_application")
    ),
    "reject": Transition(
        gettext_lazy("Reject"),
        frozenset({Status.SUBMITTED, Status.IN_REVIEW, Status.INFO_REQUESTED, Status.RECOMMENDED}),
        _has("vetting.decide_application"),
    ),
    "reopen": Transition(
        gettext_lazy("Reopen"), frozenset({Status.APPROVED, Status.REJECTED}), _is_superadmin
    ),
    "issue_invitation": Transition(
        gettext_lazy("Issue invitation"), frozenset({Status.APPROVED}), _has("vetting.issue_invitation")
    ),
    "revoke_invitation": Transition(
        gettext_lazy("Revoke invitation"), frozenset({Status.INVITED}), _has("vetting.issue_invitation")
    ),
    "reissue_invitation": Transition(
        gettext_lazy("Re-issue invitation"),
        frozenset({Status.APPROVED, Status.INVITED}),
        _has("vetting.issue_invitation"),
    ),
}
# The transitions that make a registration token on the homeserver.
INVITATION_ACTIONS = ("issue_invitation", "reissue_invitation")
# The staff transitions that mail the applicant (_applicant_mail); issuing does only when the
# token goes to them too (token_mailed_to_applicant).
APPLICANT_MAILED = frozenset({"request_information", "approve", "reject"})
# DESIGN: "any open state ──applicant withdraws──▶ withdrawn". An invited person's
# withdrawal takes their live token back from the homeserver (withdraw).
APPLICANT_WITHDRAWABLE = frozenset(
    {
        Status.UNCONFIRMED,
        Status.SUBMITTED,
        Status.IN_REVIEW,
        Status.INFO_REQUESTED,
        Status.RECOMMENDED,
        Status.APPROVED,
        Status.INVITED,
    }
)


def guard_reason(name: str, application: Application, user) -> str | None:
    """Why `user` may not take transition `name` now, or None when they may."""
    transition = STAFF_TRANSITIONS[name]
    if not transition.allowed_for(user):
        return _("Your role does not allow “%(action)s”.") % {"action": transition.label}
    if application.status not in transition.sources:
        return _("“%(action)s” is not possible while the application is %(status)s.") % {
            "action": transition.label,
            "status": application.status_phrase,
        }
    reason = _personal_refusal(name, application, user)
    if reason is None and name in INVITATION_ACTIONS:
        reason = _invitation_guard(name, application)
    if reason is None:
        reason = _mail_refusal(name, application)
    return reason


def _personal_refusal(name: str, application: Application, user) -> str | None:
    """Why this person may not take an action their role allows in this state (four-eyes, claim, erasure).

    Unlike the other refusals these are not obvious from the role or the
    state, so the application's page says them beside the buttons (`refusals`).
    """
    # A server admin may release someone else's claim (say, an agent on leave).
    may_release_any = name == "release" and user.has_perm("vetting.decide_application")
    if (
        name in ("release", "record_verification")
        and application.claimed_by_id != user.pk
        and not may_release_any
    ):
        return _("Only the person who claimed this application can release it or record its verification.")
    if name == "reopen" and application.erased_at is not None:
        # Erasure is final: the person asked us to forget them, and nobody is left to tell.
        return _("This application was erased at the applicant's request, so it cannot be reopened.")
    if _decides(name, application) and application.verification_recorded_by_id == user.pk:
        return _(
            "You recorded the verification of this application, so another server admin must decide it "
            "(four-eyes rule)."
        )
    if name in INVITATION_ACTIONS and application.verification_recorded_by_id == user.pk:
        return _(
            "You recorded the verification of this application, so another inviting admin must issue its "
            "invitation (four-eyes rule)."
        )
    return None


def _decides(name: str, application: Application) -> bool:
    """Whether `name` is a decision on the verification: approve, reject, or sending a
    recommended application back for more information (DESIGN's diagram draws all three
    out of "recommended")."""
    return name in ("approve", "reject") or (
        name == "request_information" and application.status == Status.RECOMMENDED
    )


def refusals(application: Application, user) -> list[str]:
    """Why `user` cannot take actions their role allows in this state: said, not just left out.

    The personal refusals, and an applicant's address that mail cannot carry.
    """
    reasons: list[str] = []
    for name, transition in STAFF_TRANSITIONS.items():
        if not transition.allowed_for(user) or application.status not in transition.sources:
            continue
        for reason in (_personal_refusal(name, application, user), _mail_refusal(name, application)):
            if reason is not None and reason not in reasons:
                reasons.append(reason)
    return reasons


def _mails_applicant(name: str, application: Application) -> bool:
    return name in APPLICANT_MAILED or (name in INVITATION_ACTIONS and token_mailed_to_applicant(application))


def _mail_refusal(name: str, application: Application) -> str | None:
    return unmailable_address(application) if _mails_applicant(name, application) else None


def unmailable_address(application: Application) -> str | None:
    """Why no mail can be queued to the applicant's stored address, or None when it can (or none is sent).

    Addresses are checked as mail uses them when they are typed (validate_sendable_address),
    but rows stored before that check may hold one queue_email refuses: a bidi mark pasted
    with it, a domain IDNA cannot encode. A change that must mail the applicant is then
    refused, like any other, rather than made without the mail that tells them.
    """
    if application.erased_at is not None:
        return None  # Erasure blanked the address: _applicant_mail tells nobody.
    address = application.email
    try:
        validate_sendable_address(address)
    except ValidationError:
        pass
    else:
        return None
    values = {"address": address, "why": _why_unmailable(address), "reference": application.reference}
    if _correctable(address):
        return (
            _(
                "The applicant's stored e-mail address, “%(address)s”, cannot be mailed: %(why)s. Nothing that "
                "mails the applicant (a request for information, a decision, the token) can be done until it "
                "is corrected. It cannot be changed here: ask an operator to run “manage.py correct_email "
                "%(reference)s <address>”, then try again."
            )
            % values
        )
    return (
        _(
            "The applicant's stored e-mail address, “%(address)s”, cannot be mailed: %(why)s. Nothing that "
            "mails the applicant (a request for information, a decision, the token) can be done with it, and "
            "no correction can make it an address the applicant gave: they need to apply again with another one."
        )
        % values
    )


def _correctable(address: str) -> bool:
    """Whether correct_email can mend the address: without its invisible characters, mail can carry it."""
    try:
        validate_sendable_address(_without_invisible(address))
    except ValidationError:
        return False
    return True


def correct_email(application: Application, address: str) -> str:
    """An operator corrects the applicant's stored address (`manage.py correct_email`): the
    way out for one mail cannot carry (unmailable_address). Checked as a typed address is,
    audited with both. Only the stored address without the characters mail cannot carry is
    taken (letter case aside): the confirmation, and the status link every mail carries,
    stand for the applicant's own address, never for one an operator was asked to put
    instead. Returns the address stored."""
    address = address.strip()
    try:
        validate_sendable_address(address)
    except ValidationError as error:
        raise WorkflowError(
            _("“%(address)s” is not an address mail can be sent to.") % {"address": address}
        ) from error
    with transaction.atomic():
        locked = _lock(application)
        if locked.erased_at is not None:
            raise WorkflowError(
                _("This application was erased at the applicant's request: it keeps no address.")
            )
        previous = locked.email
        if previous == address:
            raise WorkflowError(
                _("Application %(reference)s already has this address.") % {"reference": locked.reference}
            )
        if unmailable_address(locked) is None:
            raise WorkflowError(
                _(
                    "Application %(reference)s's stored address can be mailed: correct_email only corrects "
                    "one that mail cannot carry. Nothing was changed."
                )
                % {"reference": locked.reference}
            )
        visible = _without_invisible(previous)
        if address.casefold() != visible.casefold():
            raise WorkflowError(
                _(
                    "The new address must be the stored one without the characters mail cannot carry "
                    "(“%(visible)s”): any other would receive the applicant's status link. Nothing was "
                    "changed. An applicant whose address is otherwise wrong applies again."
                )
                % {"visible": visible}
            )
        locked.email = address
        locked.save(update_fields=["email", "updated_at"])
        audit.record(
            "application.email_corrected",
            actor_kind=AuditEvent.ActorKind.SYSTEM,
            target=locked,
            details={"previous": previous, "corrected": address},
        )
    _refresh(application, locked)
    return address


# Format and control characters: a bidi mark, a zero-width joiner, a line break.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _without_invisible(address: str) -> str:
    """The address without the characters mail cannot carry, and the spaces around it."""
    return "".join(
        character for character in address if unicodedata.category(character) not in INVISIBLE_CATEGORIES
    ).strip()


def _why_unmailable(address: str) -> str:
    for character in address:
        if unicodedata.category(character) in INVISIBLE_CATEGORIES:
            return _("it contains an invisible character, U+%(code)04X %(name)s") % {
                "code": ord(character),
                "name": unicodedata.name(character, ""),
            }
    try:
        # What Django's mail does with the domain (sanitize_address).
        address.rpartition("@")[2].encode("idna")
    except UnicodeError:
        return _("its domain cannot be written in the form mail needs (IDNA)")
    return _("it is not an address mail can be sent to")


def unavailable_reason(name: str) -> str | None:
    """Why a transition the guard allows cannot work on this installation now, or None.

    Not part of the guard: issuing meets a missing homeserver setting itself, and audits
    it (invitation.issue_failed). Pages use this so as not to offer a button that cannot
    work; the confirmation page checks again, as the settings may differ by then.
    """
    if name in INVITATION_ACTIONS:
        problem = matrix.configuration_problem()
        if problem:
            return _("Invitations cannot be issued: %(problem)s") % {"problem": problem}
    return None


def _invitation_guard(name: str, application: Application) -> str | None:
    had_one = application.invitations.exists()
    if name == "issue_invitation" and had_one:
        return _("This application had an invitation before: use “Re-issue invitation”.")
    if name == "reissue_invitation":
        if not had_one:
            return _("This application has no earlier invitation: use “Issue invitation”.")
        live = application.invitations.live().first()
        if live is not None and live.expires_at > timezone.now():
            return _(
                "The current invitation is valid until %(date)s: revoke it before issuing a new one."
            ) % {"date": f"{live.expires_at:%Y-%m-%d %H:%M} UTC"}
    return None


def allowed_actions(application: Application, user) -> list[tuple[str, str]]:
    """(name, label) of every staff transition `user` may take on `application` now."""
    return [
        (name, str(transition.label))
        for name, transition in STAFF_TRANSITIONS.items()
        if guard_reason(name, application, user) is None
    ]


def page_actions(application: Application, user) -> tuple[list[tuple[str, str]], list[str]]:
    """The application page's buttons, and why an action the role allows in this state is missing.

    An allowed action that cannot work here (no homeserver configured) gets no button:
    its reason is said with the refusals instead.
    """
    offered, reasons = [], refusals(application, user)
    for name, label in allowed_actions(application, user):
        unavailable = unavailable_reason(name)
        if unavailable is None:
            offered.append((name, label))
        elif unavailable not in reasons:
            reasons.append(unavailable)
    return offered, reasons


def _lock(application: Application) -> Application:
    """Re-read the row under a lock, so two people acting at once are serialised."""
    return Application.objects.select_for_update().get(pk=application.pk)


def _check(name: str, locked: Application, seen_status: str, user) -> None:
    reason = guard_reason(name, locked, user)
    if reason is None:
        return
    # A race is lost only by someone whose role allows the action at all.
    if locked.status != seen_status and STAFF_TRANSITIONS[name].allowed_for(user):
        raise AlreadyDecided(_lost_race_message(locked, user))
    raise WorkflowError(reason)


def _check_verification_seen(name: str, locked: Application, seen_verification) -> None:
    """A decision is taken on the verification its decider saw. One recorded since (the
    application went back for information and was verified again while their page was
    open) is theirs to read first, though the status is the same again."""
    if not _decides(name, locked) or locked.verification_recorded_at == seen_verification:
        return
    event = (
        AuditEvent.objects.filter(
            target_type="application", target_id=str(locked.pk), action="application.verification_recorded"
        )
        .order_by("-id")
        .only("actor_name")
        .first()
    )
    by = _(" by %(name)s") % {"name": event.actor_name} if event is not None else ""
    raise AlreadyDecided(
        _(
            "A new verification was recorded%(by)s while this page was open: read it before "
            "deciding. Nothing was changed."
        )
        % {"by": by}
    )


# The audit actions that change an application's status: the newest one names who made its state.
STATUS_CHANGE_ACTIONS = frozenset(
    {
        "application.confirmed",
        "application.claimed",
        "application.released",
        "application.verification_recorded",
        "application.information_requested",
        "application.information_added",
        "application.approved",
        "application.rejected",
        "application.reopened",
        "application.withdrawn",
        "application.erased",
        "invitation.issued",
        "invitation.reissued",
        "invitation.revoked",
        "invitation.completed",
        "invitation.expired",
        "invitation.gone_on_server",
    }
)


def _lost_race_message(locked: Application, user) -> str:
    """Who moved the application on while `user` looked at the old state, in the words they need.

    Read from the audit event the winner wrote with the change, not from a
    field like decided_by: that one names the approver after an invitation
    was issued or revoked, and nobody after a reopen or a release.
    """
    status = locked.status_phrase
    event = (
        AuditEvent.objects.filter(
            target_type="application", target_id=str(locked.pk), action__in=STATUS_CHANGE_ACTIONS
        )
        .order_by("-id")
        .only("actor_kind", "actor_id", "actor_name")
        .first()
    )
    if event is not None and event.actor_kind == AuditEvent.ActorKind.USER and event.actor_id == user.pk:
        # A double submit, or a second tab: nobody else was involved.
        return _(
            "Already done in another tab or window: the application is now %(status)s (by you). "
            "Nothing was changed."
        ) % {"status": status}
    by = ""
    if event is not None and event.actor_kind == AuditEvent.ActorKind.USER:
        by = _(" (by %(name)s)") % {"name": event.actor_name}
    elif event is not None and event.actor_kind == AuditEvent.ActorKind.APPLICANT:
        by = _(" (by the applicant)")
    return _(
        "Someone else got there first: the application is now %(status)s%(by)s. Nothing was changed."
    ) % {"status": status, "by": by}


def _refresh(application: Application, locked: Application) -> None:
    """Copy the locked row's state back into the caller's instance."""
    for field in locked._meta.concrete_fields:
        setattr(application, field.attname, getattr(locked, field.attname))


def _applicant_mail(name: str, application: Application, **context) -> None:
    # Erasure blanked the address. An erased application reopened before reopening
    # was refused can still be decided; it just tells nobody.
    if application.erased_at is not None:
        return
    # The status link opens the application, its data export and its erasure: it goes
    # only to an address its owner confirmed. One that staff typed (a typo hands all
    # that to a stranger) gets the confirmation link instead, which leads to the
    # status page once followed (confirm_email), and warns a stranger off.
    if application.email_confirmed_at is not None:
        link = {"status_url": links.status_url(application)}
    else:
        link = {"confirm_url": links.confirm_url(application)}
    try:
        queue_email(name, [application.email], {"application": application, **link, **context})
    except ValidationError as error:
        # An address stored before it was checked as mail uses it. The staff transitions
        # refuse it in their guard already; this covers every other caller (withdraw).
        raise WorkflowError(unmailable_address(application) or " ".join(error.messages)) from error


def _store_uploads(
    application: Application, uploads: list[ValidatedUpload], uploaded_by, stored: list
) -> None:
    for upload in uploads:
        stored.append(Evidence.objects.store(application, upload, uploaded_by=uploaded_by))


def _delete_files(stored: list[Evidence]) -> None:
    for evidence in stored:
        delete_left_behind(evidence.file.storage, evidence.file.name)


def _save_with_evidence(application: Application, stored: list[Evidence], save: Callable[[], None]) -> None:
    """Run `save` (which writes evidence files into `stored`) in one transaction; the files
    stay only with a committed row.

    A failure before the commit rolls everything back, so the files go. A failed commit
    is ambiguous: the server may have committed before the connection broke. So the row
    is looked for: found, the application was stored and this is a success (telling the
    applicant to send it again would make a duplicate); not found, the files go; while
    the database cannot say, the error stands and the files stay, for purge_evidence to
    remove if no row names them.
    """
    committing = False
    try:
        with transaction.atomic():
            save()
            committing = True
    except BaseException as error:
        found = _row_found(application) if committing else False
        if found and isinstance(error, DatabaseError):
            logger.warning(
                "The answer to storing application %s was lost (%s); it was stored.",
                application.reference,
                type(error).__name__,
            )
            return
        if found is False:
            _delete_files(stored)
        raise


def _row_found(application: Application) -> bool | None:
    """Whether the application's row is in the database; None when the database cannot say."""
    try:
        return Application.objects.filter(pk=application.pk).exists()
    except DatabaseError:
        logger.warning(
            "Could not tell whether application %s was stored; its evidence files stay until "
            "purge_evidence finds them without a row.",
            application.reference,
        )
        return None


# Applicant side ------------------------------------------------------------


def submit_application(
    application: Application, uploads: list[ValidatedUpload], request: HttpRequest | None = None
) -> Application:
    """Save a new public application with its evidence, all or nothing.

    It waits as `unconfirmed` until the applicant follows the link in the
    "received" mail. Evidence files are written before the transaction
    commits; if anything fails, the rows roll back and the files written so
    far are deleted, so no row and no orphan file remains.
    """
    stored: list[Evidence] = []

    def save() -> None:
        application.status = Status.UNCONFIRMED
        application.source = Application.Source.PUBLIC
        application.consent_given_at = timezone.now()
        application.privacy_notice_version = PRIVACY_NOTICE_VERSION
        application.save()
        _store_uploads(application, uploads, None, stored)
        audit.record(
            "application.submitted",
            actor_kind=AuditEvent.ActorKind.APPLICANT,
            target=application,
            request=request,
            details={"reference": application.reference, "evidence": len(stored)},
        )
        # The one status link to an unconfirmed address: the applicant typed it
        # themselves, and the confirmation link beside it opens the same page anyway.
        _applicant_mail(
            "application-received",
            application,
            status_url=links.status_url(application),
            evidence_count=len(stored),
        )

    _save_with_evidence(application, stored, save)
    return application


def submit_staff_application(
    application: Application, uploads: list[ValidatedUpload], user, request: HttpRequest | None = None
) -> Application:
    """An application entered by an agent who met the person: in the queue at once, same four-eyes.

    The person is mailed a confirmation link: their address was typed by staff, and
    until they confirm it no mail carries their status link (_applicant_mail).
    """
    if not user.has_perm("vetting.add_application"):
        raise WorkflowError(_("Your role does not allow entering applications."))
    stored: list[Evidence] = []

    def save() -> None:
        application.status = Status.SUBMITTED
        application.source = Application.Source.STAFF
        application.consent_given_at = timezone.now()
        application.privacy_notice_version = PRIVACY_NOTICE_VERSION
        application.email_confirmed_at = None
        application.save()
        _store_uploads(application, uploads, user, stored)
        audit.record(
            "application.entered_by_staff",
            actor=user,
            target=application,
            request=request,
            details={"reference": application.reference, "evidence": len(stored)},
        )
        _applicant_mail("application-entered", application)

    _save_with_evidence(application, stored, save)
    return application


def confirm_email(application: Application, request: HttpRequest | None = None) -> bool:
    """The applicant followed the confirmation link: their address is confirmed.

    An unconfirmed application then enters the queue; any other (one entered by
    staff, whose mails carry this link until then) keeps its status. Returns False
    when there was nothing to confirm: a second click, or an erased application.
    """
    with transaction.atomic():
        locked = _lock(application)
        if locked.email_confirmed_at is not None or locked.erased_at is not None:
            _refresh(application, locked)
            return False
        locked.email_confirmed_at = timezone.now()
        if locked.status == Status.UNCONFIRMED:
            locked.status = Status.SUBMITTED
            locked.save(update_fields=["status", "email_confirmed_at", "updated_at"])
            audit.record(
                "application.confirmed",
                actor_kind=AuditEvent.ActorKind.APPLICANT,
                target=locked,
                request=request,
            )
            queue_email(
                "staff-new-application",
                settings.STAFF_NOTIFY_EMAILS,
                {"application": locked, "admin_url": links.admin_url(locked)},
            )
        else:
            locked.save(update_fields=["email_confirmed_at", "updated_at"])
            # Not "application.confirmed": that one moved the status (STATUS_CHANGE_ACTIONS).
            audit.record(
                "application.email_confirmed",
                actor_kind=AuditEvent.ActorKind.APPLICANT,
                target=locked,
                request=request,
            )
    _refresh(application, locked)
    return True


def add_information(
    application: Application, uploads: list[ValidatedUpload], message: str, request: HttpRequest | None = None
) -> None:
    """The applicant answered a request for information; the application goes back to the queue."""
    stored: list[Evidence] = []
    try:
        with transaction.atomic():
            locked = _lock(application)
            if locked.status != Status.INFO_REQUESTED:
                refusal = _("Staff are not waiting for information from you at the moment.")
                if application.status == Status.INFO_REQUESTED:
                    # A lost race: answered meanwhile (a second click, another tab), withdrawn or decided.
                    raise AlreadyDecided(refusal)
                raise WorkflowError(refusal)
            if not uploads and not message.strip():
                raise WorkflowError(_("Add a file or write a message."))
            _store_uploads(locked, uploads, None, stored)
            # Staff read the answer on the application's page (the audit trail is not theirs to read).
            reply = InformationReply.objects.create(
                application=locked, question=locked.information_request, text=message.strip()
            )
            reply.evidence.set(stored)
            locked.status = Status.SUBMITTED
            locked.claimed_by = None
            locked.claimed_at = None
            locked.save(update_fields=["status", "claimed_by", "claimed_at", "updated_at"])
            audit.record(
                "application.information_added",
                actor_kind=AuditEvent.ActorKind.APPLICANT,
                target=locked,
                request=request,
                details={"evidence": len(stored), "message": message.strip()},
            )
    except BaseException:
        _delete_files(stored)
        raise
    _refresh(application, locked)


def withdrawal_refusal(application: Application) -> str | None:
    """Why the applicant may not withdraw their application now, or None (in the applicant's words)."""
    if application.status not in APPLICANT_WITHDRAWABLE:
        return _("This application can no longer be withdrawn. Its status: %(status)s.") % {
            "status": application.applicant_status
        }
    if links.confirmation_expired(application):
        # Staff never saw it and purge_unconfirmed deletes it: there is nothing left to stop.
        return _(
            "This application can no longer be withdrawn: it expired because your e-mail address was "
            "not confirmed in time, and it will be deleted within a day."
        )
    return None


def answer_awaiting_staff(application: Application) -> InformationReply | None:
    """The applicant's last answer to a request for information when it put the application
    back in the queue (submitted), or None: the status page says staff will look again."""
    if application.status != Status.SUBMITTED:
        return None
    return application.information_replies.first()


def answer_to_last_request(application: Application) -> InformationReply | None:
    """The applicant's answer to the last request for information, if they sent one: not
    an answer to an earlier request (each answer keeps the question it answered)."""
    reply = application.information_replies.first()
    if reply is None or reply.question != application.information_request:
        return None
    return reply


def withdraw(application: Application, request: HttpRequest | None = None) -> None:
    """The applicant closes their application. An invited one's live token is revoked on the
    homeserver after every check and row change and before the audit event (see
    revoke_invitation): a refusal or failure before it changes nothing anywhere, and a
    failed revoke rolls the withdrawal back."""
    with transaction.atomic():
        locked = _lock(application)
        refusal = withdrawal_refusal(locked)
        if refusal:
            raise WorkflowError(refusal)
        revoke_on_server = None
        details = {}
        if locked.status == Status.INVITED:
            revoke_on_server, details = _invitation_to_revoke_on_withdrawal(locked)
        locked.status = Status.WITHDRAWN
        locked.save(update_fields=["status", "updated_at"])
        if revoke_on_server is not None:
            revoke_on_server()
        audit.record(
            "application.withdrawn",
            actor_kind=AuditEvent.ActorKind.APPLICANT,
            target=locked,
            request=request,
            details=details,
        )
        # The applicant is on the page that shows the result: an address stored before
        # mail could be checked (unmailable_address) costs only this confirmation.
        if unmailable_address(locked) is None:
            _applicant_mail("application-withdrawn", locked)
        else:
            logger.warning(
                "Application %s was withdrawn without its confirmation mail: its stored address "
                "cannot be mailed.",
                locked.reference,
            )
    _refresh(application, locked)


WITHDRAWAL_REVOKE_FAILED = gettext_lazy(
    "Your invitation could not be cancelled on the Matrix server just now, so nothing was changed. "
    "Try again in a few minutes, or write to support."
)
WITHDRAWAL_TOKEN_USED = gettext_lazy(
    "Your invitation was already used to create an account, so this application can no longer be "
    "withdrawn. To leave, write to support."
)


def _invitation_to_revoke_on_withdrawal(locked: Application) -> tuple[Callable[[], None] | None, dict]:
    """Mark the live invitation revoked by the applicant; the homeserver call to make before the
    audit event, and what the event says of it. Refused, in the applicant's words, if the token was used."""
    invitation = locked.invitations.live().select_for_update().first()
    if invitation is None:
        return None, {}
    try:
        client = matrix.get_client()
        on_server = _token_on_server(client, invitation, WITHDRAWAL_TOKEN_USED)
    except matrix.MatrixError as error:
        _withdrawal_revoke_failed(locked, error)
    invitation.state = Invitation.State.REVOKED
    invitation.revoked_at = timezone.now()
    invitation.revocation = Invitation.Revocation.WITHDRAWAL
    invitation.save(update_fields=["state", "revoked_at", "revocation"])
    _tell_issuer_of_withdrawal(invitation, locked, already_gone=not on_server)

    def revoke() -> None:
        try:
            _revoke_on_server(client, invitation)
        except matrix.MatrixError as error:
            _withdrawal_revoke_failed(locked, error)

    details = {"invitation_revoked": invitation.pk, "already_gone_on_server": not on_server}
    return (revoke if on_server else None), details


def _tell_issuer_of_withdrawal(
    invitation: Invitation, application: Application, *, already_gone: bool
) -> None:
    """The inviting admin who holds the token may not have handed it over yet; the
    application has left their list, so they are told not to send it."""
    issuer = invitation.issued_by
    if not issuer.email:  # a superuser made by createsuperuser may have none
        return
    try:
        queue_email(
            "invitation-withdrawn",
            [issuer.email],
            {
                "application": application,
                "user_id": invitation.user_id(matrix.server_name()),
                "already_gone": already_gone,
            },
        )
    except ValidationError:
        # A staff address stored before addresses were checked as mail uses them: the
        # applicant's withdrawal does not wait for it.
        logger.warning(
            "Could not tell the issuer of application %s's invitation of its withdrawal.",
            application.reference,
        )


def _withdrawal_revoke_failed(application: Application, error: matrix.MatrixError) -> None:
    logger.warning(
        "Could not revoke the invitation of application %s, whose applicant is withdrawing it: %s",
        application.reference,
        error,
    )
    raise WorkflowError(WITHDRAWAL_REVOKE_FAILED) from error


# While staff are deciding, the community may forbid erasure (ERASURE_BLOCKED_DURING_REVIEW).
DECISION_PENDING = frozenset({Status.SUBMITTED, Status.IN_REVIEW, Status.INFO_REQUESTED, Status.RECOMMENDED})
# What erasure blanks: everything the applicant told us and everything staff wrote about them.
ERASED_FIELDS = [
    "full_name",
    "email",
    "matrix_username",
    "phone",
    "referral",
    "statement",
    "information_request",
    "verification_location",
    "verification_notes",
    "decision_reason",
    "message_to_applicant",
]


def erasure_refusal(application: Application) -> str | None:
    """Why the applicant may not erase their application now, or None."""
    if application.erased_at is not None:
        return _("This application was already erased.")
    if application.status == Status.INVITED:
        # A live registration token would outlive the data it was issued for.
        return _(
            "Your invitation to the Matrix server is still open. Withdraw your application first (that "
            "cancels the invitation); then you can erase it."
        )
    if settings.ERASURE_BLOCKED_DURING_REVIEW and application.status in DECISION_PENDING:
        return _(
            "Staff are deciding on your application, and this community's policy is to finish that "
            "first. You can withdraw it now and erase it once it is closed, or write to support."
        )
    return None


def erase_application(application: Application, request: HttpRequest | None = None) -> None:
    """The applicant's right to erasure: their evidence, answers, personal fields, staff notes
    and the Matrix username on their invitations go.

    Kept: the reference, the status, the dates and an anonymised audit trail
    (the events without their IP addresses and details, still verifiable;
    vetting.audit.redact). An open application is withdrawn first. Files are
    deleted after the commit, so a failure leaves rows and files together.
    """
    with transaction.atomic():
        locked = _lock(application)
        refusal = erasure_refusal(locked)
        if refusal:
            raise WorkflowError(refusal)
        evidence = list(locked.evidence.all())
        # Evidence purged under retention keeps its row but has no file left to delete.
        files = [(item.file.storage, item.file.name) for item in evidence if item.file.name]
        previous = locked.status
        if locked.status in APPLICANT_WITHDRAWABLE:
            locked.status = Status.WITHDRAWN
        for name in ERASED_FIELDS:
            setattr(locked, name, "")
        locked.erased_at = timezone.now()
        locked.save()
        locked.evidence.all().delete()
        locked.information_replies.all().delete()
        locked.notes.all().delete()
        # Their invitations keep state and dates, not the Matrix username or what
        # the homeserver said about it (erasure waits for any live token to end).
        locked.invitations.update(matrix_username="", raw_response={}, redemption_note="")
        # Every mail about this application holds their name, staff mail included:
        # mail not yet sent is never sent, a sent copy is not kept. Applicant mail
        # names the reference or carries the status link (the token mail only the
        # link). Mail a worker is sending goes too: that attempt may still reach the
        # relay, but whatever it ends in finds no row to re-queue or keep (outbox._unrecorded).
        OutboundEmail.objects.filter(
            Q(subject__contains=locked.reference)
            | Q(body_text__contains=locked.reference)
            | Q(body_text__contains=links.status_link_stem(locked))
        ).delete()
        audit.redact(AuditEvent.objects.filter(target_type="application", target_id=str(locked.pk)))
        audit.record(
            "application.erased",
            actor_kind=AuditEvent.ActorKind.APPLICANT,
            target=locked,
            details={"previous_status": previous, "evidence": len(evidence)},
        )
    for storage, name in files:
        delete_left_behind(storage, name)
    for item in evidence:
        forget_preview(item)
    _refresh(application, locked)


def record_data_export(application: Application, request: HttpRequest | None = None) -> None:
    """The applicant downloaded their data (vetting.data_export builds the archive)."""
    audit.record(
        "application.data_exported",
        actor_kind=AuditEvent.ActorKind.APPLICANT,
        target=application,
        request=request,
    )


# Staff side ----------------------------------------------------------------


def claim(application: Application, user, request: HttpRequest | None = None) -> None:
    seen = application.status
    with transaction.atomic():
        locked = _lock(application)
        _check("claim", locked, seen, user)
        locked.status = Status.IN_REVIEW
        locked.claimed_by = user
        locked.claimed_at = timezone.now()
        locked.save(update_fields=["status", "claimed_by", "claimed_at", "updated_at"])
        audit.record("application.claimed", actor=user, target=locked, request=request)
    _refresh(application, locked)


def release(application: Application, user, request: HttpRequest | None = None) -> None:
    """Hand a claimed application back to the queue: the claim `application` shows, not a newer one."""
    seen = application.status
    seen_claimer = application.claimed_by_id
    with transaction.atomic():
        locked = _lock(application)
        _check("release", locked, seen, user)
        if locked.claimed_by_id != seen_claimer:
            # Released and claimed again meanwhile: the same status, but someone else's claim.
            raise AlreadyDecided(_lost_race_message(locked, user))
        previous = locked.claimed_by.get_username() if locked.claimed_by else ""
        locked.status = Status.SUBMITTED
        locked.claimed_by = None
        locked.claimed_at = None
        locked.save(update_fields=["status", "claimed_by", "claimed_at", "updated_at"])
        audit.record(
            "application.released",
            actor=user,
            target=locked,
            request=request,
            details={"claimed_by": previous},
        )
    _refresh(application, locked)


def recommendation_refusal(identity_verified: bool, recommendation: str) -> str | None:
    """Why this recommendation may not be recorded with this identity check, or None (the form says it too)."""
    if recommendation == Application.Recommendation.APPROVE and not identity_verified:
        return _(
            "You cannot recommend approval when the identity was not verified: verify it first, "
            "or recommend further verification or rejection."
        )
    return None


def record_verification(
    application: Application,
    user,
    *,
    identity_verified: bool,
    method: str,
    verified_on: date,
    location: str,
    score: int,
    recommendation: str,
    notes: str = "",
    request: HttpRequest | None = None,
) -> None:
    if method not in Application.VerificationMethod.values:
        raise WorkflowError(_("Choose how the person was verified."))
    if recommendation not in Application.Recommendation.values:
        raise WorkflowError(_("Choose a recommendation."))
    if not 1 <= score <= 5:
        raise WorkflowError(_("The score must be between 1 and 5."))
    if verified_on > timezone.localdate():
        raise WorkflowError(_("The verification date cannot be in the future."))
    refusal = recommendation_refusal(identity_verified, recommendation)
    if refusal:
        raise WorkflowError(refusal)
    seen = application.status
    with transaction.atomic():
        locked = _lock(application)
        _check("record_verification", locked, seen, user)
        locked.identity_verified = identity_verified
        locked.verification_method = method
        locked.verified_on = verified_on
        locked.verification_location = location
        locked.score = score
        locked.recommendation = recommendation
        locked.verification_notes = notes
        locked.verification_recorded_by = user
        locked.verification_recorded_at = timezone.now()
        locked.status = Status.RECOMMENDED
        locked.save()
        audit.record(
            "application.verification_recorded",
            actor=user,
            target=locked,
            request=request,
            details={
                "identity_verified": identity_verified,
                "method": method,
                "score": score,
                "recommendation": recommendation,
            },
        )
    _refresh(application, locked)


def request_information(
    application: Application, user, question: str, request: HttpRequest | None = None
) -> None:
    question = question.strip()
    if not question:
        raise WorkflowError(_("Write the question the applicant should answer."))
    seen, seen_verification = application.status, application.verification_recorded_at
    with transaction.atomic():
        locked = _lock(application)
        _check("request_information", locked, seen, user)
        _check_verification_seen("request_information", locked, seen_verification)
        locked.status = Status.INFO_REQUESTED
        locked.information_request = question
        locked.save(update_fields=["status", "information_request", "updated_at"])
        audit.record(
            "application.information_requested",
            actor=user,
            target=locked,
            request=request,
            details={"question": question},
        )
        _applicant_mail("information-requested", locked)
    _refresh(application, locked)


def _record_decision(locked: Application, user, status: str, reason: str = "", message: str = "") -> None:
    locked.status = status
    locked.decided_by = user
    locked.decided_at = timezone.now()
    locked.decision_reason = reason
    locked.message_to_applicant = message
    locked.save(
        update_fields=[
            "status",
            "decided_by",
            "decided_at",
            "decision_reason",
            "message_to_applicant",
            "updated_at",
        ]
    )


def decision_warning(name: str, application: Application) -> str | None:
    """What a decider should know before deciding against the verification, or None.

    Deciding against the recommendation is allowed (that is what a second pair
    of eyes is for), but never by oversight: the confirmation page says it.
    """
    recommendation = application.recommendation
    if name == "approve" and recommendation and recommendation != Application.Recommendation.APPROVE:
        return _(
            "The verification recommended “%(recommendation)s”: approving goes against that recommendation."
        ) % {"recommendation": application.get_recommendation_display()}
    if name == "approve" and not application.identity_verified:
        return _("The person's identity was not verified.")
    if name == "reject" and recommendation == Application.Recommendation.APPROVE:
        return _(
            "The verification recommended “%(recommendation)s”: rejecting goes against that recommendation."
        ) % {"recommendation": application.get_recommendation_display()}
    return None


def approve(application: Application, user, request: HttpRequest | None = None) -> None:
    seen, seen_verification = application.status, application.verification_recorded_at
    with transaction.atomic():
        locked = _lock(application)
        _check("approve", locked, seen, user)
        _check_verification_seen("approve", locked, seen_verification)
        _record_decision(locked, user, Status.APPROVED)
        audit.record("application.approved", actor=user, target=locked, request=request)
        _applicant_mail("application-approved", locked)
    _refresh(application, locked)


def reject(
    application: Application,
    user,
    reason: str,
    message_to_applicant: str = "",
    request: HttpRequest | None = None,
) -> None:
    """Reject with a reason for the record; `message_to_applicant` is what staff choose to share."""
    reason = reason.strip()
    if not reason:
        raise WorkflowError(_("A reason is required to reject an application."))
    seen, seen_verification = application.status, application.verification_recorded_at
    with transaction.atomic():
        locked = _lock(application)
        _check("reject", locked, seen, user)
        _check_verification_seen("reject", locked, seen_verification)
        _record_decision(locked, user, Status.REJECTED, reason, message_to_applicant.strip())
        audit.record(
            "application.rejected",
            actor=user,
            target=locked,
            request=request,
            details={"reason": reason, "shared_with_applicant": bool(locked.message_to_applicant)},
        )
        _applicant_mail("application-rejected", locked)
    _refresh(application, locked)


def reopen(application: Application, user, reason: str, request: HttpRequest | None = None) -> None:
    """Undo a decision (superadmins only): back to recommended, or to the queue without a verification."""
    reason = reason.strip()
    if not reason:
        raise WorkflowError(_("A reason is required to reopen a decision."))
    seen = application.status
    with transaction.atomic():
        locked = _lock(application)
        _check("reopen", locked, seen, user)
        # The undone decision lives on in this event only: the application's page
        # must not show an old rejection's reason as if it were current.
        details = {
            "reason": reason,
            "previous_status": locked.status,
            "previous_decided_by": locked.decided_by.get_username() if locked.decided_by_id else "",
            "previous_decided_at": locked.decided_at.isoformat() if locked.decided_at else "",
            "previous_decision_reason": locked.decision_reason,
            "previous_message_to_applicant": locked.message_to_applicant,
        }
        locked.status = Status.RECOMMENDED if locked.verification_recorded_at else Status.SUBMITTED
        if locked.status == Status.SUBMITTED:
            locked.claimed_by = None
            locked.claimed_at = None
        locked.decided_by = None
        locked.decided_at = None
        locked.decision_reason = ""
        locked.message_to_applicant = ""
        locked.save()
        audit.record("application.reopened", actor=user, target=locked, request=request, details=details)
    _refresh(application, locked)


def add_note(application: Application, user, text: str, request: HttpRequest | None = None) -> StaffNote:
    text = text.strip()
    if not text:
        raise WorkflowError(_("A note cannot be empty."))
    if "\x00" in text:
        # What a form field would refuse; PostgreSQL cannot store it in text.
        raise WorkflowError(_("The note contains a null character; remove it and try again."))
    if not user.has_perm("vetting.add_staffnote"):
        raise WorkflowError(_("Your role does not allow adding notes."))
    with transaction.atomic():
        # Locked, so a note cannot slip in while the applicant's erasure commits.
        locked = _lock(application)
        if locked.erased_at is not None:
            raise WorkflowError(
                _("The applicant erased this application: nothing more is written about them.")
            )
        note = StaffNote.objects.create(application=locked, author=user, text=text)
        audit.record("note.added", actor=user, target=locked, request=request, details={"note": note.pk})
    return note


def never_confirmed(older_than) -> QuerySet:
    """Public applications created before `older_than` whose address was never confirmed:
    still waiting for it, or withdrawn before it. Staff never saw them.

    Past UNCONFIRMED_LIFETIME these are the ones links.confirmation_expired calls expired.
    """
    return Application.objects.filter(
        source=Application.Source.PUBLIC,
        email_confirmed_at__isnull=True,
        status__in=[Status.UNCONFIRMED, Status.WITHDRAWN],
        created_at__lt=older_than,
    )


def purge_unconfirmed(older_than) -> int:
    """Delete the never_confirmed applications created before `older_than`, files included."""
    purged = 0
    for application in never_confirmed(older_than):
        files = [(evidence.file.storage, evidence.file.name) for evidence in application.evidence.all()]
        with transaction.atomic():
            # Confirmed meanwhile: it stays.
            locked = never_confirmed(older_than).select_for_update().filter(pk=application.pk)
            if not locked.exists():
                continue
            audit.record(
                "application.purged_unconfirmed",
                target=application,
                details={"reference": application.reference, "evidence": len(files)},
            )
            locked.delete()
        # After the commit: a failed delete leaves rows and files together.
        for storage, name in files:
            delete_left_behind(storage, name)
        purged += 1
    return purged


# Staff accounts ------------------------------------------------------------


def _set_password_url(user) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return settings.SITE_URL + reverse("password_reset_confirm", args=[uid, token])


def queue_set_password_mail(name: str, user, **context) -> None:
    """Mail a one-time set-password link (Django's reset token): never a password."""
    queue_email(
        name,
        [user.email],
        {
            "user": user,
            "set_password_url": _set_password_url(user),
            "admin_url": settings.SITE_URL + reverse("admin:index"),
            "link_valid_days": settings.PASSWORD_RESET_TIMEOUT // 86400,
            **context,
        },
    )


def create_staff_account(username: str, email: str, role: str, *, created_by=None, request=None):
    """Create a staff account; `created_by` None means an operator on the command line.

    Accounts created by a server admin stay inactive until a superadmin
    approves them; a superadmin's (and an operator's) are active at once.
    """
    User = get_user_model()
    if role not in roles.ROLE_NAMES:
        raise WorkflowError(_("Unknown role %(role)s.") % {"role": role})
    if created_by is not None:
        if not created_by.has_perm("auth.add_user"):
            raise WorkflowError(_("Your role does not allow creating staff accounts."))
        if not created_by.is_superuser and role != roles.VETTING_AGENT:
            raise WorkflowError(_("Server admins can create vetting agent accounts only."))
    username = username.strip()
    email = User.objects.normalize_email(email.strip())
    # Past the columns' limits PostgreSQL refuses the row with a DataError.
    for name, value in (("username", username), ("email", email)):
        field = User._meta.get_field(name)
        if len(value) > field.max_length:
            raise WorkflowError(
                _("The %(field)s can have at most %(limit)d characters; this one has %(length)d.")
                % {"field": field.verbose_name, "limit": field.max_length, "length": len(value)}
            )
    try:
        User.username_validator(username)
        validate_sendable_address(email)
    except ValidationError as error:
        raise WorkflowError(" ".join(error.messages)) from error
    taken = _("The username %(username)s is taken.") % {"username": username}
    active = created_by is None or created_by.is_superuser
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Two accounts created at once take turns, so each sees the other's username and
            # address below: the database's own rule ignores case and knows no e-mail.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext('staff-account'))")
        if User.objects.filter(username__iexact=username).exists():
            raise WorkflowError(taken)
        if User.objects.filter(email__iexact=email).exists():
            raise WorkflowError(_("A staff account with this e-mail address exists."))
        try:
            with transaction.atomic():
                user = User.objects.create_user(
                    username=username,
                    email=email,
                    password=None,
                    is_staff=True,
                    is_active=active,
                    is_superuser=role == roles.SUPERADMIN,
                )
        except IntegrityError as error:
            # Made meanwhile by a creator that took no lock (SQLite, or `createsuperuser`).
            raise WorkflowError(taken) from error
        if role != roles.SUPERADMIN:
            user.groups.add(Group.objects.get(name=roles.group_name(role)))
        audit.record(
            "staff.created",
            actor=created_by,
            target=user,
            request=request,
            details={"username": username, "role": role, "active": active},
        )
        queue_set_password_mail("staff-account-created", user, role_name=roles.display_name(role))
    return user


def _user_event(*actions: str, **details) -> Exists:
    """Whether the user of the outer query is the target of an audit event of `actions` with `details`."""
    return Exists(
        AuditEvent.objects.filter(
            target_type="user",
            target_id=Cast(OuterRef("pk"), CharField()),
            action__in=actions,
            **{f"details__{key}": value for key, value in details.items()},
        )
    )


def with_account_state(users: QuerySet) -> QuerySet:
    """Annotate `awaiting_approval`: the account has never been active.

    is_active alone cannot tell an account waiting for its approval from a
    deactivated one. The audit trail can: only the staff functions here change
    is_active (the admin shows it read-only), each with its event, and an
    account a server admin made starts inactive ("staff.created", active false).
    Accounts made any other way (createsuperuser) never await approval.
    """
    return users.annotate(
        awaiting_approval=ExpressionWrapper(
            Q(is_active=False)
            & Q(_user_event("staff.created", active=False))
            & ~Q(_user_event("staff.approved", "staff.deactivated", "staff.reactivated")),
            output_field=BooleanField(),
        )
    )


def _lock_user(user):
    return get_user_model().objects.select_for_update().get(pk=user.pk)


def _awaits_approval(user) -> bool:
    return (
        with_account_state(get_user_model().objects.filter(pk=user.pk))
        .filter(awaiting_approval=True)
        .exists()
    )


def approve_staff_account(user, approver, request=None) -> None:
    """Let an account a server admin made sign in, once; a deactivated account is not approved back."""
    if not _is_superadmin(approver):
        raise WorkflowError(_("Only a superadmin can approve staff accounts."))
    username = {"username": user.get_username()}
    with transaction.atomic():
        locked = _lock_user(user)
        if locked.is_active:
            raise WorkflowError(_("%(username)s is already active.") % username)
        if not _awaits_approval(locked):
            raise WorkflowError(
                _(
                    "%(username)s was deactivated and is not awaiting approval; "
                    "to let them back in, reactivate the account."
                )
                % username
            )
        locked.is_active = True
        locked.save(update_fields=["is_active"])
        audit.record("staff.approved", actor=approver, target=locked, request=request)
    user.is_active = True


def reactivate_staff_account(user, actor, request=None) -> None:
    """Let a deactivated account sign in again: a superadmin's explicit act, not an approval."""
    if not _is_superadmin(actor):
        raise WorkflowError(_("Only a superadmin can reactivate staff accounts."))
    username = {"username": user.get_username()}
    with transaction.atomic():
        locked = _lock_user(user)
        if locked.is_active:
            raise WorkflowError(_("%(username)s is already active.") % username)
        if _awaits_approval(locked):
            raise WorkflowError(_("%(username)s was never approved; approve the account instead.") % username)
        locked.is_active = True
        locked.save(update_fields=["is_active"])
        audit.record("staff.reactivated", actor=actor, target=locked, request=request)
    user.is_active = True


def reset_second_factor(user, actor, request=None) -> None:
    """A lost phone: delete all of the person's devices, so their next sign-in enrols again.

    Their sessions lose the second step with the device, whatever it was.
    """
    if not _is_superadmin(actor):
        raise WorkflowError(_("Only a superadmin can reset a second factor."))
    with transaction.atomic():
        devices = list(devices_for_user(user, confirmed=None))
        if not devices:
            raise WorkflowError(
                _("%(username)s has no second factor to reset.") % {"username": user.get_username()}
            )
        for device in devices:
            device.delete()
        # The devices' kinds, never a key or a code.
        audit.record(
            "staff.second_factor_reset",
            actor=actor,
            target=user,
            request=request,
            details={"devices": sorted(device.name for device in devices)},
        )


def deactivate_staff_account(user, actor, request=None) -> None:
    """What "delete" means for staff: the account can no longer sign in; its audit trail stays."""
    if not actor.has_perm("auth.change_user"):
        raise WorkflowError(_("Your role does not allow changing staff accounts."))
    if not actor.is_superuser and (user.is_superuser or not roles.is_only_agent(user)):
        raise WorkflowError(_("Server admins can deactivate vetting agents only."))
    if user.pk == actor.pk:
        raise WorkflowError(_("You cannot deactivate your own account."))
    with transaction.atomic():
        locked = _lock_user(user)
        # An account still awaiting approval is inactive too, but not yet deactivated: a
        # superadmin may deactivate it instead of approving it.
        if not locked.is_active and not _awaits_approval(locked):
            raise WorkflowError(_("%(username)s is already deactivated.") % {"username": user.get_username()})
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        audit.record("staff.deactivated", actor=actor, target=locked, request=request)
    user.is_active = False


# Invitations ---------------------------------------------------------------
#
# Homeserver calls happen inside the transaction, on the locked application
# row: two admins clicking at once are serialised, so one token is created.
# A failed call changes nothing locally and is audited; a token created for a
# transaction that then fails is revoked again, so no orphan token remains.

# Invitations expiring this soon, still unused, earn one reminder to the issuing admin.
REMINDER_BEFORE_EXPIRY = timedelta(days=5)
# Homeserver and app clocks differ a little; an account this much older than
# the token still counts as created with it.
CLOCK_SLACK = timedelta(minutes=2)


# In place of a failed create's own advice: the homeserver made the token all the same, and
# it was taken back, or it could not be (invitation.orphan_revoke_failed). See _revoke_orphan.
ORPHAN_REVOKED_ADVICE = gettext_lazy(
    "The homeserver had made the registration token all the same; it was deleted again, and no "
    "invitation was issued. Try again in a few minutes; if it keeps failing, ask an operator to run "
    "“manage.py matrix_check”."
)
ORPHAN_LEFT_ADVICE = gettext_lazy(
    "No invitation was issued, but the homeserver may have made the registration token, and it could "
    "not be deleted: ask an operator to delete it (the audit trail records "
    "“invitation.orphan_revoke_failed”) and to run “manage.py matrix_check”."
)


def _matrix_failure(
    action: str, error: matrix.MatrixError, application: Application, user, request, advice: str | None = None
) -> None:
    """Audit a failed homeserver call (in its own transaction) and raise what staff should read."""
    audit.record(
        action,
        actor=user,
        target=application,
        request=request,
        details={"error": str(error), "kind": type(error).__name__},
    )
    raise WorkflowError(f"{error} {advice or error.advice}")


def _assigned_username(application: Application, requested: str | None) -> str:
    username = (requested or "").strip()
    if not username:
        earlier = application.invitations.order_by("-issued_at").first()
        username = earlier.matrix_username if earlier else application.matrix_username
    if not username:
        raise WorkflowError(_("Choose the Matrix username this person will register."))
    try:
        validate_matrix_localpart(username)
    except ValidationError as error:
        raise WorkflowError(" ".join(error.messages)) from error
    return username


def issue_invitation(
    application: Application, user, matrix_username: str | None = None, request: HttpRequest | None = None
) -> Invitation:
    """Create a single-use registration token for an approved application (approved → invited)."""
    return _issue("issue_invitation", application, user, matrix_username, request)


def reissue_invitation(
    application: Application, user, matrix_username: str | None = None, request: HttpRequest | None = None
) -> Invitation:
    """A new token after the earlier one expired or was revoked."""
    return _issue("reissue_invitation", application, user, matrix_username, request)


def _issue(name: str, application: Application, user, matrix_username: str | None, request) -> Invitation:
    seen = application.status
    # A refusal costs no homeserver call and is not blamed on the homeserver settings.
    _check(name, Application.objects.get(pk=application.pk), seen, user)
    username = _assigned_username(application, matrix_username)
    created: matrix.RegistrationToken | None = None
    attempted = ""
    client = None
    try:
        client = matrix.get_client()
        with transaction.atomic():
            locked = _lock(application)
            _check(name, locked, seen, user)
            now = timezone.now()
            # Re-issuing after the clock ran out, before sync_invitations noticed.
            for stale in locked.invitations.live().select_for_update():
                # A token gone from the server has no use left to record (the sync treats it alike).
                _token_on_server(client, stale)
                stale.state = Invitation.State.EXPIRED
                stale.save(update_fields=["state"])
            account = client.get_account(username)
            if account is not None:
                raise WorkflowError(
                    _("The Matrix account %(user_id)s exists already: choose another username.")
                    % {"user_id": account.user_id}
                )
            _refuse_username_held_elsewhere(username, locked)
            expires_at = now + timedelta(days=settings.MATRIX_TOKEN_VALID_DAYS)
            attempted = matrix.new_token()
            created = client.create_token(attempted, expires_at)
            invitation = Invitation.objects.create(
                application=locked,
                backend=client.backend,
                token=created.token,
                server_id=created.server_id,
                matrix_username=username,
                uses_allowed=created.uses_allowed or 1,
                expires_at=created.expires_at or expires_at,
                issued_by=user,
                issued_at=now,
                last_synced_at=now,
                raw_response=created.raw,
            )
            locked.status = Status.INVITED
            locked.save(update_fields=["status", "updated_at"])
            audit.record(
                "invitation.reissued" if name == "reissue_invitation" else "invitation.issued",
                actor=user,
                target=locked,
                request=request,
                details={
                    "invitation": invitation.pk,
                    "matrix_username": username,
                    "backend": client.backend,
                    "expires_at": invitation.expires_at.isoformat(),
                },
            )
            _invitation_mails(invitation, locked, user, client.server_name)
    except BaseException as error:
        # Once the create was sent, a token may exist on the homeserver with no invitation here.
        advice = _revoke_orphan(client, application, created, attempted) if attempted else None
        if isinstance(error, matrix.MatrixError):
            _matrix_failure("invitation.issue_failed", error, application, user, request, advice)
        if isinstance(error, IntegrityError):
            # The one-live-invitation constraint caught a race the row lock could not (SQLite).
            raise AlreadyDecided(
                _(
                    "Someone else issued an invitation for this application at the same moment. Nothing was changed."
                )
            ) from error
        raise
    _refresh(application, locked)
    return invitation


def _refuse_username_held_elsewhere(username: str, application: Application) -> None:
    """Refuse a username that another application's live token already promises.

    Case-insensitive, as Synapse refuses a localpart taken in another case.
    On PostgreSQL a lock on the name, held to the end of the transaction, makes
    two admins issuing it for two applications take turns: the second sees the
    first one's invitation. (SQLite, for development only, has no such lock.)
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"matrix-username:{username.casefold()}"]
            )
    holder = (
        Invitation.objects.live()
        .filter(matrix_username__iexact=username)
        .exclude(application=application)
        .select_related("application")
        .first()
    )
    if holder is not None:
        raise WorkflowError(
            _(
                "Application %(reference)s has a live invitation for the Matrix username %(username)s: "
                "choose another username, or revoke that invitation first."
            )
            % {"reference": holder.application.reference, "username": username}
        )


TOKEN_USED_FOR_STAFF = gettext_lazy(
    "This invitation was already used to create an account: choose “Sync now” on the invitation list "
    "to record it."
)


def _token_on_server(client, invitation: Invitation, used_message=TOKEN_USED_FOR_STAFF) -> bool:
    """Whether the homeserver still has the invitation's token; refused (`used_message`) when it
    was used: sync_invitations must record that, and the token must not be let go of."""
    try:
        token = client.get_token(invitation.server_id)
    except matrix.NotFound:
        return False
    if token.used_up:
        raise WorkflowError(str(used_message))
    return True


def _revoke_on_server(client, invitation: Invitation) -> None:
    """Revoke the token; one gone meanwhile counts as revoked."""
    with contextlib.suppress(matrix.NotFound):
        client.revoke_token(invitation.server_id)


def token_mailed_to_applicant(application: Application) -> bool:
    """Whether issuing mails the token to the applicant too (the admin's page says so afterwards)."""
    # Off by default: the token then travels only through the admin's two messages.
    # Never to an address nobody confirmed (staff-entered): a typo would hand the
    # token to a stranger; the admin hands it over as usual instead.
    return settings.MATRIX_SEND_TOKEN_TO_APPLICANT and application.email_confirmed_at is not None


def _invitation_mails(invitation: Invitation, application: Application, user, server_name: str) -> None:
    to_applicant = token_mailed_to_applicant(application)
    context = {
        "invitation": invitation,
        "token": invitation.token,
        "user_id": invitation.user_id(server_name),
        "homeserver_url": settings.MATRIX_HOMESERVER_URL,
        "tell_by": invitation.tell_by,
        "admin_url": links.admin_url(application),
        "token_sent_to_applicant": to_applicant,
    }
    if user.email:
        queue_email("invitation-issued", [user.email], {"application": application, **context})
    if to_applicant:
        _applicant_mail("invitation-token", application, **context)


def _revoke_orphan(
    client, application: Application, created: matrix.RegistrationToken | None, attempted: str
) -> str | None:
    """Issuing failed after the create was sent: take back the token.

    `created` when the homeserver answered. Without an answer the create may
    still have been applied: the answer was lost, or a retry of it was refused
    because the first attempt had made the token. We chose the token
    (`attempted`), so it can be found by its value; not finding it means it
    was never made (or is gone already).

    Returns what the admin is told about the token in place of the failed
    call's own advice, or None when the homeserver has no such token.
    """
    try:
        if created is not None:
            client.revoke_token(created.server_id)
        else:
            client.revoke_token_by_value(attempted)
    except matrix.NotFound:
        return None
    except matrix.MatrixError as error:
        # Leave a trace for an operator: a token on the server without an
        # invitation here is the orphan. No part of the token goes in the trail.
        audit.record("invitation.orphan_revoke_failed", target=application, details={"error": str(error)})
        return str(ORPHAN_LEFT_ADVICE)
    return str(ORPHAN_REVOKED_ADVICE)


def revoke_invitation(
    application: Application, user, reason: str = "", request: HttpRequest | None = None
) -> None:
    """Delete the live token on the homeserver (invited → approved); a token already gone counts as revoked.

    The homeserver's revoke comes after every check and row change, so a refusal or a
    failure before it changes nothing anywhere, and before the audit event: the trail's
    lock, which every audited write on the site waits for, is never held while the
    homeserver answers (it may take READ_TIMEOUT). Should the event or the commit then
    fail, the token is gone with the invitation still live here; sync_invitations finds
    it gone and records it, as it does a token deleted on the server by hand.
    """
    seen = application.status
    reason = reason.strip()
    try:
        client = matrix.get_client()
        with transaction.atomic():
            locked = _lock(application)
            _check("revoke_invitation", locked, seen, user)
            invitation = locked.invitations.live().select_for_update().first()
            already_gone = False
            if invitation is not None:
                already_gone = not _token_on_server(client, invitation)
                invitation.state = Invitation.State.REVOKED
                invitation.revoked_at = timezone.now()
                invitation.revoked_by = user
                invitation.revocation = Invitation.Revocation.INVITING_ADMIN
                invitation.save(update_fields=["state", "revoked_at", "revoked_by", "revocation"])
            locked.status = Status.APPROVED
            locked.save(update_fields=["status", "updated_at"])
            if invitation is not None and not already_gone:
                _revoke_on_server(client, invitation)
            audit.record(
                "invitation.revoked",
                actor=user,
                target=locked,
                request=request,
                details={
                    "invitation": invitation.pk if invitation else None,
                    "reason": reason,
                    "already_gone_on_server": already_gone,
                },
            )
    except matrix.MatrixError as error:
        _matrix_failure("invitation.revoke_failed", error, application, user, request)
    _refresh(application, locked)


@dataclass
class SyncReport:
    live: int = 0
    still_pending: int = 0
    completed: int = 0
    expired: int = 0
    revoked: int = 0
    mismatches: int = 0
    reminders: int = 0


def sync_invitations(actor=None, *, dry_run: bool = False) -> SyncReport:
    """Follow every live invitation with one list call per page of the homeserver's token list.

    Used tokens make the application `joined` (after checking the account has
    the assigned username); expired or vanished ones send it back to
    `approved` for a re-issue; unused ones near expiry get one reminder.
    Nothing is asked of the homeserver when no invitation is live. A dry run
    makes the list call and counts what would change, writing and sending nothing.
    """
    report = SyncReport()
    live = list(Invitation.objects.live().select_related("application", "issued_by"))
    report.live = len(live)
    if not live:
        return report
    client = matrix.get_client()
    remote = {token.server_id: token for token in client.list_tokens()}
    now = timezone.now()
    untouched: list[int] = []
    for invitation in live:
        token = remote.get(invitation.server_id)
        if dry_run:
            outcome = _outcome(token, now)
            setattr(report, outcome, getattr(report, outcome) + 1)
            continue
        if token is not None and token.usable(now):
            report.still_pending += 1
            changed = _note_pending(invitation, token, actor, now)
            if changed == "reminded":
                report.reminders += 1
            elif changed is None:
                untouched.append(invitation.pk)
            continue
        outcome = _close(invitation, token, client, actor, now)
        if outcome is not None:
            setattr(report, outcome, getattr(report, outcome) + 1)
            if invitation.redemption_check == Invitation.Check.MISMATCH:
                report.mismatches += 1
    Invitation.objects.filter(pk__in=untouched).update(last_synced_at=now)
    return report


def _outcome(remote: matrix.RegistrationToken | None, now) -> str:
    if remote is None or remote.revoked:
        return "revoked"
    if remote.used_up:
        return "completed"
    return "expired" if remote.expired(now) else "still_pending"


def _close(invitation: Invitation, remote: matrix.RegistrationToken | None, client, actor, now) -> str | None:
    """The token was used, expired or vanished: record it and move the application on."""
    account = (
        client.get_account(invitation.matrix_username) if remote is not None and remote.used_up else None
    )
    with transaction.atomic():
        application = _lock(invitation.application)
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if locked.state != Invitation.State.PENDING:
            # An admin revoked it while we were asking the homeserver.
            return None
        locked.last_synced_at = now
        if remote is not None:
            locked.pending_uses, locked.completed_uses = remote.pending, remote.completed
            locked.raw_response = remote.raw
        outcome = _outcome(remote, now)
        if outcome == "completed":
            action, next_status = "invitation.completed", Status.JOINED
            locked.state = Invitation.State.COMPLETED
            locked.completed_at = now
            locked.redemption_check, locked.redemption_note = _redemption_check(locked, account, client)
        elif outcome == "revoked":
            action, next_status = "invitation.gone_on_server", Status.APPROVED
            locked.state = Invitation.State.REVOKED
            locked.revoked_at = now
            locked.revocation = Invitation.Revocation.HOMESERVER
        else:
            action, next_status = "invitation.expired", Status.APPROVED
            locked.state = Invitation.State.EXPIRED
        locked.save()
        if application.status == Status.INVITED:
            application.status = next_status
            application.save(update_fields=["status", "updated_at"])
        audit.record(
            action,
            actor=actor,
            target=application,
            details={
                "invitation": locked.pk,
                "redemption_check": locked.redemption_check,
                "redemption_note": locked.redemption_note,
            },
        )
    _refresh(invitation, locked)
    _refresh(invitation.application, application)
    return outcome


def _note_pending(invitation: Invitation, remote: matrix.RegistrationToken, actor, now) -> str | None:
    """Record changed counts and send the one reminder when expiry is near; None when nothing changed."""
    changed = (invitation.pending_uses, invitation.completed_uses) != (remote.pending, remote.completed)
    remind = (
        invitation.reminder_sent_at is None
        and invitation.issued_by.email
        and invitation.expires_at - now <= REMINDER_BEFORE_EXPIRY
    )
    if not changed and not remind:
        return None
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if locked.state != Invitation.State.PENDING:
            return None
        locked.pending_uses, locked.completed_uses = remote.pending, remote.completed
        locked.raw_response = remote.raw
        locked.last_synced_at = now
        reminded = bool(remind and locked.reminder_sent_at is None)
        if reminded:
            locked.reminder_sent_at = now
            queue_email(
                "invitation-expiring",
                [invitation.issued_by.email],
                {
                    "invitation": locked,
                    "application": invitation.application,
                    "user_id": locked.user_id(matrix.server_name()),
                    "tell_by": locked.tell_by,
                    "admin_url": links.admin_url(invitation.application),
                },
            )
            audit.record(
                "invitation.reminder_sent",
                actor=actor,
                target=invitation.application,
                details={"invitation": locked.pk},
            )
        locked.save()
    _refresh(invitation, locked)
    return "reminded" if reminded else "updated"


def _redemption_check(
    invitation: Invitation, account: matrix.MatrixAccount | None, client
) -> tuple[str, str]:
    """Did the token create @<assigned username>:<server>, after the token was issued?"""
    user_id = invitation.user_id(client.server_name)
    if account is None:
        return Invitation.Check.MISMATCH, _(
            "The token was used, but no account %(user_id)s exists: the person registered under another name."
        ) % {"user_id": user_id}
    if account.created_at is not None and account.created_at < invitation.issued_at - CLOCK_SLACK:
        return Invitation.Check.MISMATCH, _(
            "The token was used, but %(user_id)s existed before the token was issued (%(created)s)."
        ) % {"user_id": user_id, "created": f"{account.created_at:%Y-%m-%d %H:%M} UTC"}
    return Invitation.Check.PASSED, _("%(user_id)s exists and was created with the token.") % {
        "user_id": user_id
    }
