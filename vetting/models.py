from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models.functions import Upper
from django.utils.translation import gettext_lazy as _

# Crockford's base32 without look-alike letters: easy to read aloud or type.
REFERENCE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REFERENCE_LENGTH = 8  # 40 random bits: unguessable, still short.

# Matrix user-ID localpart grammar (spec "User Identifiers"); Synapse also
# reserves a leading underscore for application services.
MATRIX_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+\Z")  # \Z: "$" would let a final newline through
MATRIX_LOCALPART_MAX_LENGTH = 64


def new_reference() -> str:
    return "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(REFERENCE_LENGTH))


def validate_matrix_localpart(value: str) -> None:
    # Synapse only caps the whole user ID at 255 characters; our own cap keeps every name
    # within the fields that store it, even where no max_length guards the way in
    # (workflow._assigned_username).
    if len(value) > MATRIX_LOCALPART_MAX_LENGTH:
        raise ValidationError(
            _("A Matrix username can have at most %(limit)d characters (this one has %(length)d)."),
            code="localpart_too_long",
            params={"limit": MATRIX_LOCALPART_MAX_LENGTH, "length": len(value)},
        )
    if not MATRIX_LOCALPART_RE.match(value):
        raise ValidationError(
            _(
                "Use only lowercase letters a–z, digits 0–9 and the characters "
                ". _ = - / + (no spaces, no @ and no :server part)."
            ),
            code="invalid_localpart",
        )
    if value.startswith("_"):
        raise ValidationError(
            _("A Matrix username cannot start with an underscore."), code="reserved_localpart"
        )


class ApplicationQuerySet(models.QuerySet):
    def with_queued_at(self) -> ApplicationQuerySet:
        """Annotates `queued_at`: when staff could first act on the application. A public one
        once its address was confirmed; one entered by staff at once, however late its
        address is confirmed."""
        return self.annotate(
            queued_at=models.Case(
                models.When(email_confirmed_at__isnull=True, then="created_at"),
                models.When(source=Application.Source.STAFF, then="created_at"),
                default="email_confirmed_at",
            )
        )

    def with_unreviewed_answer(self) -> ApplicationQuerySet:
        """Annotates `has_unreviewed_answer`: the applicant answered a request for information
        after the last verification was recorded (or none was), and the application waits for
        staff to review it again (submitted, in review or recommended). Recording a verification
        is the review that clears it; decided and closed applications never carry it.
        """
        replies = InformationReply.objects.filter(application=models.OuterRef("pk"))
        newer_than_verification = replies.filter(created_at__gt=models.OuterRef("verification_recorded_at"))
        return self.annotate(
            has_unreviewed_answer=models.ExpressionWrapper(
                models.Q(
                    status__in=[
                        Application.Status.SUBMITTED,
                        Application.Status.IN_REVIEW,
                        Application.Status.RECOMMENDED,
                    ]
                )
                & (
                    models.Q(models.Exists(replies), verification_recorded_at__isnull=True)
                    | models.Q(models.Exists(newer_than_verification))
                ),
                output_field=models.BooleanField(),
            )
        )


class Application(models.Model):
    class Status(models.TextChoices):
        UNCONFIRMED = "unconfirmed", _("Waiting for e-mail confirmation")
        SUBMITTED = "submitted", _("Submitted")
        IN_REVIEW = "in_review", _("In review")
        INFO_REQUESTED = "info_requested", _("More information requested")
        RECOMMENDED = "recommended", _("Recommended")
        APPROVED = "approved", _("Approved")
        REJECTED = "rejected", _("Rejected")
        INVITED = "invited", _("Invited")
        JOINED = "joined", _("Joined")
        WITHDRAWN = "withdrawn", _("Withdrawn")

    # What the applicant reads (status page, data export); the labels above are staff words.
    # "Recommended" reads like good news even when the recommendation was to reject:
    # until staff decide, the applicant only learns that their application is being checked.
    APPLICANT_STATUS_LABELS = {
        Status.UNCONFIRMED: _("Waiting for you to confirm your e-mail address"),
        Status.SUBMITTED: _("Received, waiting for a vetting agent"),
        Status.IN_REVIEW: _("Being checked"),
        Status.INFO_REQUESTED: _("We need more information from you"),
        Status.RECOMMENDED: _("Being checked"),
        Status.APPROVED: _("Approved, invitation being prepared"),
        Status.REJECTED: _("Not approved"),
        Status.INVITED: _("Invitation issued"),
        Status.JOINED: _("Joined the Matrix server"),
        Status.WITHDRAWN: _("Withdrawn by you"),
    }

    # The status in a staff sentence, "the application is now …" or "while the application
    # is …": the labels above are list headings ("More information requested").
    STATUS_PHRASES = {
        Status.UNCONFIRMED: _("waiting for e-mail confirmation"),
        Status.SUBMITTED: _("in the queue"),
        Status.IN_REVIEW: _("in review"),
        Status.INFO_REQUESTED: _("waiting for more information"),
        Status.RECOMMENDED: _("recommended"),
        Status.APPROVED: _("approved"),
        Status.REJECTED: _("rejected"),
        Status.INVITED: _("invited"),
        Status.JOINED: _("joined"),
        Status.WITHDRAWN: _("withdrawn"),
    }

    class Source(models.TextChoices):
        PUBLIC = "public", _("Public form")
        STAFF = "staff", _("Entered by staff")

    class VerificationMethod(models.TextChoices):
        IN_PERSON = "in-person", _("In person")
        VIDEO = "video", _("Video call")
        TRUSTED_REFERRAL = "trusted-referral", _("Trusted referral")

    class Recommendation(models.TextChoices):
        APPROVE = "approve", _("Approve")
        REJECT = "reject", _("Reject")
        FURTHER_VERIFICATION = "further-verification", _("Further verification")

    # Public identifier for links; the integer id never leaves the admin.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    reference = models.CharField(_("reference"), max_length=REFERENCE_LENGTH, unique=True, editable=False)
    status = models.CharField(
        _("status"), max_length=20, choices=Status, default=Status.UNCONFIRMED, db_index=True
    )
    source = models.CharField(_("source"), max_length=10, choices=Source, default=Source.PUBLIC)

    full_name = models.CharField(_("full name"), max_length=200)
    email = models.EmailField(_("e-mail"), max_length=254, db_index=True)
    matrix_username = models.CharField(
        _("desired Matrix username"),
        max_length=MATRIX_LOCALPART_MAX_LENGTH,
        blank=True,
        validators=[validate_matrix_localpart],
        db_index=True,
    )
    phone = models.CharField(_("phone"), max_length=40, blank=True)
    referral = models.TextField(_("who referred you / how you know the community"), max_length=2000)
    statement = models.TextField(_("statement"), max_length=5000)
    consent_given_at = models.DateTimeField(_("privacy notice accepted at"))
    # Which text the applicant agreed to (vetting.privacy.PRIVACY_NOTICE_VERSION at the time).
    privacy_notice_version = models.CharField(_("privacy notice version accepted"), max_length=20, blank=True)
    # Set when the applicant erased their application: personal fields and evidence are gone.
    erased_at = models.DateTimeField(_("erased by the applicant at"), null=True, blank=True)

    created_at = models.DateTimeField(_("applied at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    # Verification, recorded by a vetting agent.
    identity_verified = models.BooleanField(_("identity verified"), null=True, blank=True)
    verification_method = models.CharField(
        _("verification method"), max_length=20, choices=VerificationMethod, blank=True
    )
    verified_on = models.DateField(_("verification date"), null=True, blank=True)
    verification_location = models.CharField(
        _("verification location (city / platform)"), max_length=200, blank=True
    )
    verification_notes = models.TextField(_("verification notes"), blank=True)
    score = models.PositiveSmallIntegerField(
        _("score"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(5)],
    )
    recommendation = models.CharField(_("recommendation"), max_length=24, choices=Recommendation, blank=True)
    verification_recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("verification recorded by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    verification_recorded_at = models.DateTimeField(_("verification recorded at"), null=True, blank=True)

    # The path through the workflow (vetting.workflow sets these).
    email_confirmed_at = models.DateTimeField(_("e-mail confirmed at"), null=True, blank=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("claimed by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    information_request = models.TextField(_("information requested"), blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("decided by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    decision_reason = models.TextField(_("reason (staff only)"), blank=True)
    message_to_applicant = models.TextField(_("message shared with the applicant"), blank=True)

    objects = ApplicationQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        permissions = [
            ("claim_application", "Can claim and release applications"),
            ("record_verification", "Can record how an applicant was verified"),
            ("request_information", "Can ask the applicant for more information"),
            ("decide_application", "Can approve or reject applications"),
            ("issue_invitation", "Can issue and revoke Matrix invitations"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(score__isnull=True) | models.Q(score__gte=1, score__lte=5),
                name="application_score_1_to_5",
            ),
        ]
        # Earlier applications from the same address are looked up case-insensitively (email__iexact).
        indexes = [models.Index(Upper("email"), name="application_email_upper")]

    def __str__(self) -> str:
        return f"{self.reference} {self.full_name}"

    def save(self, *args, **kwargs) -> None:
        if self.reference:
            super().save(*args, **kwargs)
            return
        # A reference collision is astronomically rare, but must never be a 500.
        for _attempt in range(5):
            self.reference = new_reference()
            try:
                with transaction.atomic():
                    super().save(*args, **kwargs)
                return
            except IntegrityError:
                if not Application.objects.filter(reference=self.reference).exists():
                    raise
        raise IntegrityError("Could not generate a unique application reference.")

    @property
    def status_phrase(self) -> str:
        """The status as it reads in a staff sentence (STATUS_PHRASES)."""
        return str(self.STATUS_PHRASES[self.status])

    @property
    def applicant_status(self) -> str:
        """The status in the applicant's words (APPLICANT_STATUS_LABELS)."""
        return str(self.APPLICANT_STATUS_LABELS[self.status])


class StaffNote(models.Model):
    """A private staff note on an application: append-only, never shown to the applicant."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("author"), on_delete=models.PROTECT, related_name="+"
    )
    text = models.TextField(_("note"), max_length=5000)
    created_at = models.DateTimeField(_("written at"), auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"Note by {self.author} on {self.created_at:%Y-%m-%d %H:%M}"


class InformationReply(models.Model):
    """The applicant's answer to a request for information, read by staff on the application's page."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="information_replies")
    # The next request overwrites Application.information_request: each answer keeps its question.
    question = models.TextField(_("question"), blank=True)
    # Empty when the applicant answered with files only.
    text = models.TextField(_("answer"), max_length=5000, blank=True)
    evidence = models.ManyToManyField(
        "evidence.Evidence", verbose_name=_("evidence sent with it"), blank=True, related_name="+"
    )
    created_at = models.DateTimeField(_("sent at"), auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("answer to a request for information")
        verbose_name_plural = _("answers to requests for information")

    def __str__(self) -> str:
        return f"Answer on {self.created_at:%Y-%m-%d %H:%M}"


class AuditEvent(models.Model):
    """Append-only record of who did what; each row hashes its predecessor (vetting.audit)."""

    class ActorKind(models.TextChoices):
        USER = "user", _("Staff user")
        APPLICANT = "applicant", _("Applicant")
        SYSTEM = "system", _("System")

    created_at = models.DateTimeField(_("time"), db_index=True)
    actor_kind = models.CharField(_("actor kind"), max_length=10, choices=ActorKind)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("actor"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    # Kept as text so the trail still reads right after a user is renamed.
    actor_name = models.CharField(_("actor name"), max_length=150, blank=True)
    action = models.CharField(_("action"), max_length=60, db_index=True)
    target_type = models.CharField(_("target type"), max_length=20, blank=True)
    target_id = models.CharField(_("target"), max_length=64, blank=True, db_index=True)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)
    # Set when `ip` and `details` were erased (vetting.audit.redact): the digest
    # they had, so the chain still verifies without them.
    redacted_digest = models.CharField(_("digest of erased details"), max_length=64, blank=True)
    previous_hash = models.CharField(_("previous hash"), max_length=64)
    hash = models.CharField(_("hash"), max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {self.actor_name or self.actor_kind}"


class AuditChainHead(models.Model):
    """One row holding the newest event's hash; locking it serialises writers.

    Without it two concurrent events could both claim the same predecessor
    and fork the chain.
    """

    last_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return self.last_hash


class InvitationQuerySet(models.QuerySet):
    def live(self) -> InvitationQuerySet:
        """Issued and not yet used, expired or revoked: what sync_invitations follows."""
        return self.filter(state=Invitation.State.PENDING)


class Invitation(models.Model):
    """A single-use registration token issued on the homeserver for an approved application."""

    class State(models.TextChoices):
        PENDING = "pending", _("Waiting for registration")
        COMPLETED = "completed", _("Used: account created")
        EXPIRED = "expired", _("Expired unused")
        REVOKED = "revoked", _("Revoked")

    class Revocation(models.TextChoices):
        NOT_REVOKED = "", _("Not revoked")
        INVITING_ADMIN = "admin", _("An inviting admin")
        WITHDRAWAL = "withdrawal", _("The applicant, by withdrawing")
        HOMESERVER = "homeserver", _("Nobody here: the token was gone from the homeserver")

    class Check(models.TextChoices):
        NOT_YET = "", _("Not used yet")
        PASSED = "passed", _("Account matches")
        MISMATCH = "mismatch", _("Account does not match")

    # The person is told a date this long before the real expiry (as in the old process).
    TELL_MARGIN = timedelta(hours=48)

    application = models.ForeignKey(Application, on_delete=models.PROTECT, related_name="invitations")
    backend = models.CharField(_("backend"), max_length=10)
    token = models.CharField(_("registration token"), max_length=64)
    # How the homeserver addresses the token: the token itself on Synapse, an ID on MAS.
    server_id = models.CharField(_("server ID"), max_length=64)
    matrix_username = models.CharField(
        _("assigned Matrix username"),
        max_length=MATRIX_LOCALPART_MAX_LENGTH,
        validators=[validate_matrix_localpart],
    )
    uses_allowed = models.PositiveSmallIntegerField(_("uses allowed"), default=1)
    expires_at = models.DateTimeField(_("expires at"))
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("issued by"), on_delete=models.PROTECT, related_name="+"
    )
    issued_at = models.DateTimeField(_("issued at"), db_index=True)

    state = models.CharField(_("state"), max_length=10, choices=State, default=State.PENDING, db_index=True)
    pending_uses = models.PositiveIntegerField(_("registrations in progress"), default=0)
    completed_uses = models.PositiveIntegerField(_("registrations completed"), default=0)
    last_synced_at = models.DateTimeField(_("last synced at"), null=True, blank=True)
    raw_response = models.JSONField(_("last homeserver answer"), default=dict, blank=True)
    completed_at = models.DateTimeField(_("used at"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("revoked by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    # revoked_by names the admin; only this says who else it was (blank for invitations
    # revoked before it was recorded whose audit details were erased since).
    revocation = models.CharField(
        _("how it was revoked"), max_length=10, choices=Revocation, default=Revocation.NOT_REVOKED, blank=True
    )
    redemption_check = models.CharField(
        _("redemption check"), max_length=10, choices=Check, default=Check.NOT_YET, blank=True, db_index=True
    )
    redemption_note = models.CharField(_("redemption check details"), max_length=300, blank=True)
    reminder_sent_at = models.DateTimeField(_("expiry reminder sent at"), null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-issued_at"]
        constraints = [
            # Two admins clicking at once: the row lock serialises them, and this
            # is the last line if anything slips past it.
            models.UniqueConstraint(
                fields=["application"],
                condition=models.Q(state="pending"),
                name="invitation_one_live_per_application",
            ),
            models.UniqueConstraint(fields=["backend", "server_id"], name="invitation_unique_server_id"),
            models.CheckConstraint(
                condition=models.Q(state="revoked") | models.Q(revocation=""),
                name="invitation_revocation_only_when_revoked",
            ),
        ]

    def __str__(self) -> str:
        return f"Invitation for {self.application.reference} ({self.get_state_display()})"

    @property
    def tell_by(self) -> datetime:
        """The expiry date staff tell the person: a margin before the real one."""
        return self.expires_at - self.TELL_MARGIN

    @property
    def masked_token(self) -> str:
        return self.token[:2] + "•" * max(len(self.token) - 2, 0)

    def user_id(self, server_name: str) -> str:
        return f"@{self.matrix_username}:{server_name}"
