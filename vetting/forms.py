from __future__ import annotations

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from evidence.validation import ALLOWED_TYPES, ValidatedUpload, validate_upload
from vetting.models import Application

EVIDENCE_SLOTS = range(1, settings.EVIDENCE_MAX_FILES + 1)
ACCEPT_ATTRIBUTE = ",".join(f".{extension}" for extension in ALLOWED_TYPES)


class ApplicationForm(forms.ModelForm):
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
        fields = ["full_name", "email", "matrix_username", "phone", "referral", "statement"]
        labels = {
            "full_name": _("Full name"),
            "email": _("E-mail address"),
            "matrix_username": _("Matrix username you would like (optional)"),
            "phone": _("Phone (optional)"),
            "referral": _("Who referred you, or how do you know the community?"),
            "statement": _("Why do you want to join?"),
        }
        help_texts = {
            "matrix_username": _("Lowercase letters, digits and . _ = - / +, e.g. alex.smith"),
        }
        widgets = {
            "referral": forms.Textarea(attrs={"rows": 3}),
            "statement": forms.Textarea(attrs={"rows": 6}),
            "email": forms.EmailInput(attrs={"autocomplete": "email"}),
            "full_name": forms.TextInput(attrs={"autocomplete": "name"}),
            "phone": forms.TextInput(attrs={"autocomplete": "tel", "inputmode": "tel"}),
            "matrix_username": forms.TextInput(
                attrs={"autocapitalize": "none", "autocorrect": "off", "spellcheck": "false"}
            ),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for slot in EVIDENCE_SLOTS:
            self.fields[f"evidence_{slot}"] = forms.FileField(
                required=False,
                label=_("Evidence file %(number)s") % {"number": slot},
                widget=forms.ClearableFileInput(attrs={"accept": ACCEPT_ATTRIBUTE}),
            )
            self.fields[f"note_{slot}"] = forms.CharField(
                required=False, max_length=500, label=_("Note for file %(number)s") % {"number": slot}
            )
        self.validated_uploads: list[ValidatedUpload] = []

    def evidence_fields(self):
        """(file field, note field) pairs, for the template."""
        return [(self[f"evidence_{slot}"], self[f"note_{slot}"]) for slot in EVIDENCE_SLOTS]

    @property
    def is_spam(self) -> bool:
        return bool(self.data.get("website"))

    def clean_matrix_username(self) -> str:
        # People often type "@alex:example.org" or "Alex": keep what they meant.
        value = self.cleaned_data["matrix_username"].strip().lower().removeprefix("@")
        if value:
            Application._meta.get_field("matrix_username").run_validators(value)
        return value

    def clean(self) -> dict:
        cleaned_data = super().clean()
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
            if not upload:
                continue
            try:
                uploads.append(validate_upload(upload, note=cleaned_data.get(f"note_{slot}", "")))
            except forms.ValidationError as error:
                self.add_error(f"evidence_{slot}", error)
        self.validated_uploads = uploads
        return cleaned_data
