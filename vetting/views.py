from __future__ import annotations

import logging

from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_http_methods

from iama_vetting.ratelimits import APPLY, rate_limited
from vetting import workflow
from vetting.forms import ApplicationForm
from vetting.models import new_reference

# The done page learns the reference from a signed, short-lived query value,
# so the public pages need no session.
DONE_SALT = "vetting.apply-done"
DONE_MAX_AGE = 60 * 60
STORAGE_FAILED_MESSAGE = _(
    "We could not store your files just now, so nothing was kept. Please try again in a few minutes."
)

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
@rate_limited(APPLY)
def apply(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ApplicationForm(request.POST, request.FILES)
        if form.is_spam:
            # Answer the bot exactly like a person, and keep nothing.
            return _redirect_to_done(new_reference())
        if form.is_valid():
            try:
                application = workflow.submit_application(form.save(commit=False), form.validated_uploads)
            except OSError:
                # Disk full or evidence root unwritable: nothing was kept.
                logger.exception("Could not store evidence for a new application.")
                form.add_error(None, STORAGE_FAILED_MESSAGE)
                return render(request, "vetting/apply.html", {"form": form}, status=503)
            return _redirect_to_done(application.reference)
    else:
        form = ApplicationForm()
    return render(request, "vetting/apply.html", {"form": form})


def _redirect_to_done(reference: str) -> HttpResponse:
    signed = signing.dumps(reference, salt=DONE_SALT)
    return redirect(f"{reverse('vetting:apply_done')}?r={signed}")


@require_GET
def apply_done(request: HttpRequest) -> HttpResponse:
    try:
        reference = signing.loads(request.GET.get("r", ""), salt=DONE_SALT, max_age=DONE_MAX_AGE)
    except signing.BadSignature:
        reference = None
    return render(request, "vetting/apply_done.html", {"reference": reference})
