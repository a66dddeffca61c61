from __future__ import annotations

import unicodedata

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordResetForm
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from evidence.validation import ALLOWED_TYPES, ValidatedUpload, display_name, validate_upload
from notifications.models import validate_sendable_address
from vetting import matrix, workflow
from vetting.models import MATRIX_LOCALPART_MAX_LENGTH, Application, validate_matrix_localpart

EVIDENCE_SLOTS = range(1, settings.EVIDENCE_MAX_FILES + 1)
ACCEPT_ATTRIBUTE = ",".join(f".{extension}" for extension in ALLOWED_TYPES)


class EvidenceFieldsMixin:
    """Adds `evidence_1` … `evidence_5` with `note_1` … `note_5` and validates them.

    After `is_valid()`, `validated_uploads` holds the files ready to store.
    """

    def add_evidence_fields(self) -> None:
        for slot in EVIDENCE_SLOTS:
            self.fields[f"evidence_{slot}"] = forms.FileField(
                required=False,
                label=_("Evidence file %(number)s") % {"number": slot},
                widget=forms.ClearableFileInput(attrs={"accept": ACCEPT_ATTRIBUTE}),
            )
            self.fields[f"note_{slot}"] = forms.CharField(
                required=False,
                max_length=500,
                label=_("Note for file %(number)s") % {"number": slot},
                help_text=_("What this file shows, e.g. “ID card, front”."),
            )
        self.validated_uploads: list[ValidatedUpload] = []

    def evidence_fields(self):
        """(file field, note field) pairs, for the template."""
        return [(self[f"evidence_{slot}"], self[f"note_{slot}"]) for slot in EVIDENCE_SLOTS]

    def clean_evidence(self, cleaned_data: dict) -> None:
        file_count = sum(len(self.files.getlist(key)) for key in self.files)
        if file_count > settings.EVIDENCE_MAX_FILES:
            raise forms.ValidationError(
                _("You can attach at most %(limit)s files at a time; you sent %(count)s."),
                params={"limit": settings.EVIDENCE_MAX_FILES, "count": file_count},
                code="too_many_files",
            )
        uploads = []
        for slot in EVIDENCE_SLOTS:
            upload = cleaned_data.get(f"evidence_{slot}")
            note = cleaned_data.get(f"note_{slot}", "")
            if upload:
                try:
                    uploads.append(validate_upload(upload, note=note))
                except forms.ValidationError as error:
                    self.add_error(f"evidence_{slot}", error)
            elif note.strip() and not self.files.get(f"evidence_{slot}"):
                # Otherwise the note would be dropped without a word (there is no file to keep it with).
                error = _("Note %(number)s has no file: choose the file it describes, or clear the note.")
                self.add_error(
                    f"note_{slot}",
                    forms.ValidationError(error, params={"number": slot}, code="note_without_file"),
                )
        self.validated_uploads = uploads

    @property
    def files_to_choose_again(self) -> list[str]:
        """The files chosen for a post that comes back with errors: browsers never fill them in again."""
        if not self.is_bound or not self.errors:
            return []
        return [display_name(upload.name) for key in self.files for upload in self.files.getlist(key)]


class EmailAddressField(forms.EmailField):
    """An address our mail can be sent to, typed or pasted by a person.

    Invisible format characters (a bidi mark copied along with the address from
    right-to-left text, a zero-width joiner) are dropped; an address whose domain
    mail cannot encode is refused like any other invalid address (code "invalid").
    """

    default_validators = [validate_sendable_address]

    def to_python(self, value):
        if isinstance(value, str):
            value = "".join(char for char in value if unicodedata.category(char) != "Cf")
        return super().to_python(value)


class TextareaField(forms.CharField):
    """Text from a textarea, each line break as a single LF.

    Browsers count a line break as one character against maxlength but send it as
    CRLF: without this, text the browser let through would be refused as too long.
    """

    def to_python(self, value):
        if isinstance(value, str):
            # CRLF first, then a lone CR (old Mac line ends).
            value = value.replace("\r\n", "\n").replace("\r", "\n")
        return super().to_python(value)


def state_length_limit(field: forms.CharField) -> None:
    """Say the field's limit under it: the browser stops typing at maxlength without a word."""
    limit = number_format(field.max_length, force_grouping=True)
    field.help_text = _("At most %(limit)s characters.") % {"limit": limit}


APPLICANT_FIELDS = ["full_name", "email", "matrix_username", "phone", "referral", "statement"]


class ApplicationForm(EvidenceFieldsMixin, forms.ModelForm):
    """The public application form. Its field names are an interface (DESIGN.md)."""

    consent = forms.BooleanField(
        label=_(
            "I have read the privacy notice and agree that my answers and files are kept to vet my application."
        ),
        error_messages={"required": _("You must accept the privacy notice to apply.")},
    )
    # Honeypot: hidden from people, filled by bots. A filled one is answered
    # like a success and stores nothing (ApplicationForm.is_spam).
    website = forms.CharField(
        required=False,
        label=_("Leave this field empty"),
        widget=forms.TextInput(attrs={"tabindex": "-1", "autocomplete": "off"}),
    )

    class Meta:
        model = Application
        fields = APPLICANT_FIELDS
        labels = {
            "full_name": _("Full name"),
            "email": _("E-mail address"),
            "matrix_username": _("Matrix username you would like (optional)"),
            "phone": _("Phone (optional)"),
            "referral": _("Who referred you, or how do you know the community?"),
            "statement": _("Why do you want to join?"),
        }
        # Say what to do, in the summary at the top as well as next to the field.
        error_messages = {
            "full_name": {"required": _("Enter your full name.")},
            "email": {
                "required": _("Enter your e-mail address."),
                "invalid": _("Enter an e-mail address like name@example.org."),
            },
            "referral": {"required": _("Tell us who referred you, or how you know the community.")},
            "statement": {"required": _("Tell us why you want to join.")},
        }
        help_texts = {
            "matrix_username": _("Letters a–z, digits 0–9 and . _ = - / +, e.g. alex.smith"),
        }
        field_classes = {"email": EmailAddressField, "referral": TextareaField, "statement": TextareaField}
        widgets = {
            "referral": forms.Textarea(attrs={"rows": 3}),
            "statement": forms.Textarea(attrs={"rows": 6}),
            "email": forms.EmailInput(attrs={"autocomplete": "email"}),
            "full_name": forms.TextInput(attrs={"autocomplete": "name"}),
            "phone": forms.TextInput(attrs={"type": "tel", "autocomplete": "tel"}),
            "matrix_username": forms.TextInput(
                attrs={"autocapitalize": "none", "autocorrect": "off", "spellcheck": "false"}
            ),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_evidence_fields()
        state_length_limit(self.fields["referral"])
        state_length_limit(self.fields["statement"])

    @property
    def is_spam(self) -> bool:
        return bool(self.data.get("website"))

    def clean_matrix_username(self) -> str:
        # People often type "@Alex.Smith:example.org" or "Alex": keep what they meant.
        typed = self.cleaned_data["matrix_username"].strip()
        localpart, _colon, server = typed.lower().removeprefix("@").partition(":")
        own_server = matrix.server_name().lower()
        if server and server != own_server:
            # An account on another server is no way in here: they choose a name on ours.
            message = (
                _(
                    "“%(server)s” is another server: type the username you would like on this "
                    "community's server, %(own)s, e.g. alex.smith."
                )
                if own_server
                else _("Type only the username you would like, without “:%(server)s”, e.g. alex.smith.")
            )
            raise forms.ValidationError(
                message, params={"server": server, "own": own_server}, code="other_server"
            )
        if typed:
            try:
                validate_matrix_localpart(localpart)
            except forms.ValidationError as error:
                if error.code != "invalid_localpart":
                    raise
                # The model's words forbid "@" and ":server", which this field takes off.
                raise forms.ValidationError(
                    _("Use only letters a–z, digits 0–9 and the characters . _ = - / + (no spaces)."),
                    code=error.code,
                ) from None
        return localpart

    def clean(self) -> dict:
        cleaned_data = super().clean()
        self.clean_evidence(cleaned_data)
        return cleaned_data


class StaffApplicationForm(ApplicationForm):
    """An application an agent enters for someone they vetted in person (admin add form)."""

    consent = forms.BooleanField(
        label=_("The applicant has read the privacy notice and agreed to it."),
        error_messages={"required": _("The applicant must agree to the privacy notice first.")},
    )

    class Meta(ApplicationForm.Meta):
        # Staff fill it in about the applicant: the public form's questions speak to the applicant.
        labels = {
            **ApplicationForm.Meta.labels,
            "matrix_username": _("Matrix username they would like (optional)"),
            "referral": _("Who referred them, or how do they know the community?"),
            "statement": _("Why do they want to join?"),
        }
        error_messages = {
            "full_name": {"required": _("Enter the applicant's full name.")},
            "email": {
                **ApplicationForm.Meta.error_messages["email"],
                "required": _("Enter the applicant's e-mail address."),
            },
            "referral": {"required": _("Say who referred them, or how they know the community.")},
            "statement": {"required": _("Say why they want to join.")},
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["website"]

    @property
    def is_spam(self) -> bool:
        return False


class AddInformationForm(EvidenceFieldsMixin, forms.Form):
    """The applicant's answer to a request for information (status page)."""

    message = TextareaField(
        required=False,
        max_length=5000,
        label=_("Your answer"),
        widget=forms.Textarea(attrs={"rows": 5}),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_evidence_fields()
        state_length_limit(self.fields["message"])

    def clean(self) -> dict:
        cleaned_data = super().clean()
        self.clean_evidence(cleaned_data)
        if not self.errors and not self.validated_uploads and not cleaned_data.get("message", "").strip():
            raise forms.ValidationError(_("Add a file or write an answer."), code="empty")
        return cleaned_data


# What the verification score means (DESIGN.md only says 1–5): shown in the form's
# choices and beside the score on the decision pages.
SCORE_MEANINGS = {
    1: _("serious doubts"),
    2: _("some doubts"),
    3: _("no strong view either way"),
    4: _("confident"),
    5: _("fully confident"),
}
# Nothing is chosen for the agent: a form that starts at "In person, 1, Approve"
# saves exactly that when only the date and place are filled in.
NOTHING_CHOSEN = [("", "---------")]


def score_display(score: int | None) -> str:
    return f"{score} – {SCORE_MEANINGS[score]}" if score in SCORE_MEANINGS else ""


class VerificationForm(forms.Form):
    identity_verified = forms.BooleanField(required=False, label=_("Identity verified"))
    verification_method = forms.ChoiceField(
        label=_("Method"), choices=NOTHING_CHOSEN + Application.VerificationMethod.choices
    )
    verified_on = forms.DateField(
        # Not "YYYY-MM-DD": the browser's date picker shows the date in its own format.
        label=_("Date"),
        initial=timezone.localdate,
        # A date input takes ISO dates only, whatever the language's own date format.
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    verification_location = forms.CharField(label=_("Location (city / platform)"), max_length=200)
    score = forms.TypedChoiceField(
        label=_("Score"),
        coerce=int,
        empty_value=None,
        choices=NOTHING_CHOSEN
        + [(score, format_lazy("{} – {}", score, meaning)) for score, meaning in SCORE_MEANINGS.items()],
        help_text=_(
            "How sure you are, after verifying, that this person is who they say and belongs in the "
            "community: from 1, serious doubts, to 5, fully confident."
        ),
    )
    recommendation = forms.ChoiceField(
        label=_("Recommendation"), choices=NOTHING_CHOSEN + Application.Recommendation.choices
    )
    verification_notes = forms.CharField(
        label=_("Notes"), required=False, widget=forms.Textarea(attrs={"rows": 4})
    )

    @classmethod
    def initial_from(cls, application: Application) -> dict:
        """What the form starts with: the verification recorded before, if any.

        An application back from a request for information was verified once;
        the agent corrects that record rather than typing it again. Its date
        stays the date of that verification until the agent changes it.
        """
        if application.verification_recorded_at is None:
            return {}
        return {
            "identity_verified": application.identity_verified,
            "verification_method": application.verification_method,
            "verified_on": application.verified_on,
            "verification_location": application.verification_location,
            "score": application.score,
            "recommendation": application.recommendation,
            "verification_notes": application.verification_notes,
        }

    def clean(self) -> dict:
        cleaned_data = super().clean()
        # The workflow refuses it too; said here, next to the field, before anything is sent.
        refusal = workflow.recommendation_refusal(
            cleaned_data.get("identity_verified", False), cleaned_data.get("recommendation", "")
        )
        if refusal:
            self.add_error("recommendation", refusal)
        return cleaned_data


class ReasonForm(forms.Form):
    reason = forms.CharField(label=_("Reason (kept in the record)"), widget=forms.Textarea(attrs={"rows": 3}))


class RejectForm(ReasonForm):
    message_to_applicant = forms.CharField(
        required=False,
        label=_("Message to the applicant (optional; sent in the rejection e-mail)"),
        widget=forms.Textarea(attrs={"rows": 3}),
    )


class InvitationForm(forms.Form):
    matrix_username = forms.CharField(
        label=_("Matrix username the person will register"),
        max_length=MATRIX_LOCALPART_MAX_LENGTH,
        validators=[validate_matrix_localpart],
        help_text=_("Only the part before the colon, e.g. alex.example. Checked against the homeserver."),
    )


class RevokeInvitationForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason (kept in the record)"), required=False, widget=forms.Textarea(attrs={"rows": 3})
    )


class InformationRequestForm(forms.Form):
    question = forms.CharField(
        label=_("What should the applicant tell or send us? (sent to them by e-mail)"),
        widget=forms.Textarea(attrs={"rows": 4}),
    )


class StaffAccountForm(forms.Form):
    """Creating a staff account in the admin: no password field, ever (a set-password link is mailed)."""

    username = forms.CharField(label=_("Username"), max_length=150)
    # User.email's column; Django's EmailValidator would let up to 320 characters through.
    email = EmailAddressField(label=_("E-mail address"), max_length=254)
    role = forms.ChoiceField(label=_("Role"))

    def __init__(self, *args, allowed_roles: list[tuple[str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = allowed_roles


class OutboxPasswordResetForm(PasswordResetForm):
    """Django's password reset, for staff only, with the link mailed through the outbox."""

    def get_users(self, email):
        # Django's form skips accounts without a usable password, but a new staff
        # member has none until they follow the set-password link; once it has
        # expired, this form is their way to a new one. Inactive accounts (awaiting
        # a superadmin's approval, or deactivated) still get nothing.
        User = get_user_model()
        field = User.get_email_field_name()
        users = User._default_manager.filter(
            **{f"{field}__iexact": email, "is_active": True, "is_staff": True}
        )
        # As Django does: the database's case-insensitive match is not enough (CVE-2019-19844).
        folded = unicodedata.normalize("NFKC", email).casefold()
        return (
            user for user in users if unicodedata.normalize("NFKC", getattr(user, field)).casefold() == folded
        )

    def send_mail(
        self,
        subject_template_name,
        email_template_name,
        context,
        from_email,
        to_email,
        html_email_template_name=None,
    ):
        from vetting.workflow import queue_set_password_mail

        queue_set_password_mail("staff-password-reset", context["user"])
