from __future__ import annotations

from django.conf import settings
from django.contrib.auth.forms import PasswordResetForm
from django.urls import reverse

from notifications.outbox import queue_email


class OutboxPasswordResetForm(PasswordResetForm):
    """Django's password reset, with its mail queued in our outbox like every other mail."""

    def send_mail(
        self,
        subject_template_name,
        email_template_name,
        context,
        from_email,
        to_email,
        html_email_template_name=None,
    ):
        # The link starts with SITE_URL, never with the Host header the request claimed.
        path = reverse("password_reset_confirm", kwargs={"uidb64": context["uid"], "token": context["token"]})
        queue_email(
            "staff-password-reset",
            [to_email],
            {"user": context["user"], "reset_url": settings.SITE_URL + path},
        )
