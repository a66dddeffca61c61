from __future__ import annotations

import functools
import logging
import zlib
from email.utils import parseaddr

from django.conf import settings
from django.core import signing
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_http_methods, require_safe

from iama_vetting import ratelimits
from iama_vetting.csrf import get_token
from iama_vetting.maintenance import upcoming_window
from iama_vetting.ratelimits import rate_limited
from vetting import data_export, links, workflow
from vetting.forms import AddInformationForm, ApplicationForm
from vetting.models import Application, new_reference
from vetting.privacy import PRIVACY_NOTICE_VERSION

# The done page learns the reference and the masked address from a signed,
# short-lived query value, so the public pages need no session.
DONE_SALT = "vetting.apply-done"
DONE_MAX_AGE = 60 * 60
STORAGE_FAILED_MESSAGE = _(
    "We could not store your files just now, so nothing was kept. Please try again in a few minutes."
)

logger = logging.getLogger(__name__)


# The blank form is the same for everyone but its CSRF token: render it once
# per process and language, then put each visitor's token in. This keeps the
# busiest public page at a few string operations (see bench/).
CSRF_PLACEHOLDER = "__csrf_token_placeholder__"


@functools.lru_cache(maxsize=8)
def _blank_application_page(language: str, maintenance_window: tuple | None = None) -> str:
    context = {"form": ApplicationForm(), "csrf_token": CSRF_PLACEHOLDER}
    if maintenance_window:
        # What the maintenance_notice context processor gives other pages.
        context["maintenance_window"] = {"start": maintenance_window[0], "end": maintenance_window[1]}
    return render_to_string("vetting/apply.html", context)


@require_http_methods(["GET", "HEAD", "POST"])
@rate_limited(ratelimits.APPLY)
def apply(request: HttpRequest) -> HttpResponse:
    if request.method in ("GET", "HEAD"):
        page = _blank_application_page(get_language(), upcoming_window())
        return HttpResponse(page.replace(CSRF_PLACEHOLDER, get_token(request)))
    form = ApplicationForm(request.POST, request.FILES)
    if form.is_spam:
        # Answer the bot exactly like a person, and keep nothing. Its address is cut to what
        # the field lets a person type: it goes into the redirect's URL.
        email = form.data.get("email", "")[: form.fields["email"].max_length]
        return _redirect_to_done(new_reference(), email)
    if form.is_valid():
        try:
            application = workflow.submit_application(
                form.save(commit=False), form.validated_uploads, request=request
            )
        except OSError:
            # Disk full or evidence root unwritable: nothing was kept.
            logger.exception("Could not store evidence for a new application.")
            form.add_error(None, STORAGE_FAILED_MESSAGE)
            return render(request, "vetting/apply.html", {"form": form}, status=503)
        return _redirect_to_done(application.reference, application.email)
    return render(request, "vetting/apply.html", {"form": form})


def _masked_address(address: str) -> str:
    """The address as a…@example.org: enough to spot a typo in it, no more, for the done
    page's signed value is readable and stays in the browser's history."""
    local_part, _at, domain = address.rpartition("@")
    return f"{local_part[:1]}…@{domain}"


def _redirect_to_done(reference: str, email: str) -> HttpResponse:
    signed = signing.dumps([reference, _masked_address(email)], salt=DONE_SALT)
    return redirect(f"{reverse('vetting:apply_done')}?r={signed}")


@require_safe
def apply_done(request: HttpRequest) -> HttpResponse:
    try:
        signed = signing.loads(request.GET.get("r", ""), salt=DONE_SALT, max_age=DONE_MAX_AGE)
    except (signing.BadSignature, ValueError, zlib.error, RecursionError):
        signed = None  # Tampered or expired; the rest only a secret key's holder could sign.
    # Anything but the [reference, address] pair we sign shows neither: the reference alone
    # was signed before the value carried the address.
    if isinstance(signed, list) and len(signed) == 2 and all(isinstance(part, str) for part in signed):
        reference, email = signed
    else:
        reference = email = None
    return render(request, "vetting/apply_done.html", {"reference": reference, "email": email})


@require_GET
@rate_limited(ratelimits.CONFIRM_EMAIL)
def confirm(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the "received" mail (and in the mails of a staff-entered application
    until its address is confirmed): the applicant's click confirms the address."""
    application = links.application_for_confirm_token(token)
    if application is None:
        if not links.is_genuine_confirm_token(token):
            raise Http404("Unknown confirmation link.")
        return _link_expired(request)
    status_token = links.status_token(application)
    if workflow.confirm_email(application, request=request):
        return _status_page_with(status_token, "confirmed")
    # A second click: the page as it is, with no news.
    return redirect("vetting:status", token=status_token)


def _link_expired(request: HttpRequest) -> HttpResponse:
    """A link of ours past the confirmation window, or whose application was deleted for it:
    copying the link again cannot help."""
    return render(
        request, "vetting/confirm_expired.html", {"days": links.UNCONFIRMED_LIFETIME.days}, status=410
    )


def _with_status_link(view):
    """Hand the view the application of the status link in its path.

    A link we never signed is unknown (404). One of ours without an application
    was never confirmed and was purged (only purge_unconfirmed deletes
    applications): it expired, like its confirmation link (410).
    """

    @functools.wraps(view)
    def with_application(request: HttpRequest, token: str) -> HttpResponse:
        application = links.application_for_status_token(token)
        if application is None:
            if not links.is_genuine_status_token(token):
                raise Http404("Unknown status link.")
            return _link_expired(request)
        return view(request, token, application)

    return with_application


def _status_page_with(token: str, notice: str) -> HttpResponse:
    # Public pages have no session: the notice travels in the query string.
    return redirect(f"{reverse('vetting:status', args=[token])}?{notice}=1")


@require_http_methods(["GET", "HEAD", "POST"])
@rate_limited(ratelimits.STATUS_PAGE)
@_with_status_link
def status(request: HttpRequest, token: str, application: Application) -> HttpResponse:
    form = None
    if application.status == Application.Status.INFO_REQUESTED:
        if request.method == "POST":
            form = AddInformationForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    workflow.add_information(
                        application, form.validated_uploads, form.cleaned_data["message"], request=request
                    )
                except workflow.AlreadyDecided:
                    # Answered meanwhile (a second click, another tab), withdrawn or decided:
                    # the page as it is now, saying so, rather than the stale form again.
                    return _status_page_with(token, "not_waiting")
                except workflow.WorkflowError as error:
                    form.add_error(None, str(error))
                except OSError:
                    logger.exception("Could not store evidence added on a status page.")
                    form.add_error(None, STORAGE_FAILED_MESSAGE)
                else:
                    return _status_page_with(token, "sent")
        else:
            form = AddInformationForm()
    elif request.method == "POST":
        # A stale answer form: the request for information was answered or withdrawn meanwhile.
        return _status_page_with(token, "not_waiting")
    not_waiting = request.GET.get("not_waiting") == "1"
    return render(
        request,
        "vetting/status.html",
        {
            "application": application,
            "form": form,
            "token": token,
            "sent": request.GET.get("sent") == "1",
            "confirmed": request.GET.get("confirmed") == "1",
            "not_waiting": not_waiting,
            "already_answered": workflow.answer_to_last_request(application) if not_waiting else None,
            "confirmation_expired": links.confirmation_expired(application),
            "confirmation_days": links.UNCONFIRMED_LIFETIME.days,
            # Shown instead of the links, which would only lead to these refusals.
            "withdrawal_refusal": workflow.withdrawal_refusal(application),
            "erasure_refusal": workflow.erasure_refusal(application),
            "answer_awaiting_staff": workflow.answer_awaiting_staff(application),
            "support_address": parseaddr(settings.DEFAULT_FROM_EMAIL)[1],
        },
    )


def _confirm_then_act(
    request: HttpRequest, token: str, application: Application, refusal_of, act, template_name: str
) -> HttpResponse:
    """GET explains and asks for confirmation, or says why the step is not possible; POST takes it."""
    error = refusal_of(application)
    if request.method == "POST" and error is None:
        try:
            act(application, request=request)
        except workflow.WorkflowError as refusal:
            error = str(refusal)
        else:
            return redirect("vetting:status", token=token)
    return render(
        request,
        template_name,
        {"application": application, "token": token, "error": error},
        status=409 if error and request.method == "POST" else 200,
    )


@require_http_methods(["GET", "HEAD", "POST"])
@rate_limited(ratelimits.STATUS_PAGE)
@_with_status_link
def withdraw(request: HttpRequest, token: str, application: Application) -> HttpResponse:
    return _confirm_then_act(
        request, token, application, workflow.withdrawal_refusal, workflow.withdraw, "vetting/withdraw.html"
    )


@require_safe
def privacy(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "vetting/privacy.html",
        {
            "version": PRIVACY_NOTICE_VERSION,
            "retention_days": settings.EVIDENCE_RETENTION_DAYS,
            "erasure_blocked_during_review": settings.ERASURE_BLOCKED_DURING_REVIEW,
        },
    )


@require_GET
@rate_limited(ratelimits.STATUS_PAGE)
@_with_status_link
def download_data(request: HttpRequest, token: str, application: Application) -> HttpResponse:
    """The applicant's own data as a ZIP (vetting.data_export)."""
    if application.erased_at is not None:
        raise Http404("This application was erased.")
    try:
        archive = data_export.build_archive(application)
    except OSError:
        # Missing, or S3 unreachable (evidence.storage raises its failures as OSError).
        logger.exception("An evidence file of %s could not be read from storage.", application.reference)
        return render(request, "vetting/data_unavailable.html", {"token": token}, status=503)
    workflow.record_data_export(application, request=request)
    response = FileResponse(
        archive,
        as_attachment=True,
        filename=f"application-{application.reference}.zip",
        content_type="application/zip",
    )
    response["Cache-Control"] = "private, no-store"
    return response


@require_http_methods(["GET", "HEAD", "POST"])
@rate_limited(ratelimits.STATUS_PAGE)
@_with_status_link
def erase(request: HttpRequest, token: str, application: Application) -> HttpResponse:
    return _confirm_then_act(
        request,
        token,
        application,
        workflow.erasure_refusal,
        workflow.erase_application,
        "vetting/erase.html",
    )
