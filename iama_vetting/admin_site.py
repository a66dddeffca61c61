"""The staff admin site: sign-in with a password and, when STAFF_REQUIRE_2FA, a second factor.

The second factor is a TOTP authenticator app (django-otp), enrolled by QR
code on first sign-in, with ten single-use backup codes. Until a staff member
has passed it in this session, no admin page opens for them.
"""

from __future__ import annotations

import functools
import logging
import math
from base64 import b32encode
from collections.abc import Callable, Iterable
from urllib.parse import urlencode

import segno
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG, ChangeList
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.base import ModelBase
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from django_otp import devices_for_user, match_token, user_has_device
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from iama_vetting import ratelimits
from vetting import audit

logger = logging.getLogger(__name__)

BACKUP_CODE_COUNT = 10
# django-otp's plugins register admins for their devices: they show TOTP keys
# and backup codes as editable fields and let one person enrol a device for
# another. People enrol themselves (two_factor_setup below); a lost phone is
# "Reset second factor" on the staff accounts page (vetting.admin_staff).
UNLISTED_APPS = {"otp_totp", "otp_static"}
BAD_FILTER = _(
    # Django's "?e=1" also follows a page number past the end (?p=999).
    "The list cannot be shown that way: a filter, its value or the page asked for is not one "
    "it offers. It is shown without them."
)
# Django's own words for an action run with nothing ticked.
NO_VALID_SELECTION = _(
    "Items must be selected in order to perform actions on them. No items have been changed."
)
WRONG_CODE = _("That code is not right, or it was used already. Wait for the next code and try again.")
# The unconfirmed authenticator key this session's setup page shows (two_factor_setup).
SETUP_DEVICE_SESSION_KEY = "rvi_two_factor_setup_device"
SETUP_KEY_REPLACED = _(
    "The key changed: the set-up page was opened again elsewhere (in another browser or tab). "
    "Remove the IaMA RVI entry you just added to your app, scan this new key, and enter its code."
)


def _throttle_refusal(devices: Iterable[Device]) -> str | None:
    """Why no code can be checked now, or None when one of the devices may check one.

    After a wrong code django-otp makes a device refuse every code, right ones
    too, for 1, 2, 4… seconds (ThrottlingMixin); without this it reads as a wrong code.
    """
    now = timezone.now()
    waits = []
    for device in devices:
        allowed, details = device.verify_is_allowed()
        if allowed or "locked_until" not in details:
            return None
        waits.append(max(1, math.ceil((details["locked_until"] - now).total_seconds())))
    if not waits:
        return None
    seconds = min(waits)
    return ngettext(
        "Too many wrong codes: wait %(seconds)d second, then enter the code your app shows then.",
        "Too many wrong codes: wait %(seconds)d seconds, then enter the code your app shows then.",
        seconds,
    ) % {"seconds": seconds}


def admin_form(form: forms.Form, fieldsets: list | None = None) -> helpers.AdminForm:
    """A form of our own pages laid out as the admin lays out its own: each field's errors above it,
    its help below (with admin/includes/fieldset.html)."""
    return helpers.AdminForm(form, fieldsets or [(None, {"fields": list(form.fields)})], {})


def admin_access_required(view: Callable) -> Callable:
    """For staff views outside /admin/ (evidence downloads): the admin's own test, second factor included.

    Django's staff_member_required checks only is_active and is_staff, so a
    session past the password step alone would pass it. Not admin_view either:
    its never_cache would replace the views' own Cache-Control.
    """

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not admin.site.has_permission(request):
            return redirect_to_login(
                request.get_full_path(), reverse("admin:login", current_app=admin.site.name)
            )
        return view(request, *args, **kwargs)

    return wrapped


class CheckedChangeList(ChangeList):
    """Filter values Django would turn into a server error, or silently ignore, are bad filters instead.

    A date-hierarchy value past year 9999 (?created_at__year=9999&created_at__month=12):
    Django computes the end of the period without checking it exists. A NUL
    character (?source=%00): PostgreSQL refuses it in any text. A value none of
    our own filters offers (?status=bogus): their queryset() would leave the
    list unfiltered, so it would list everything. A lookup none of the list's
    filters reads (?token__startswith=ab): Django would apply any lookup on the
    model's own fields, so a masked token could be found letter by letter, a
    role could search what it may not read, and ?ip=abc would fail in
    PostgreSQL; only the lookups of links the app builds to the list are let
    through (the admin class's `linked_lookups`). As a bad lookup the list
    redirects to its "?e=1" page like for any other unusable filter.
    """

    def get_filters(self, request):
        if any("\x00" in value for _name, values in request.GET.lists() for value in values):
            raise IncorrectLookupParameters("A filter value contains a NUL character.")
        try:
            filters = super().get_filters(request)
        except (DisallowedModelAdminLookup, OverflowError, ValueError) as error:
            # A bad filter like an unknown field, with its message, rather than Django's bare 400 page.
            raise IncorrectLookupParameters(error) from error
        # What the list's filters did not read, Django would apply as it is. The date hierarchy's
        # year, month and day come back as the bounds of their period.
        expected = set(getattr(self.model_admin, "linked_lookups", ()))
        if self.date_hierarchy:
            expected |= {f"{self.date_hierarchy}__gte", f"{self.date_hierarchy}__lt"}
        unread = set(filters[2]) - expected
        if unread:
            raise IncorrectLookupParameters(f"No filter of this list reads {', '.join(sorted(unread))}.")
        for spec in filters[0]:
            if not isinstance(spec, admin.SimpleListFilter):
                continue
            # An empty value is no choice: the filter's default applies.
            chosen = spec.used_parameters.get(spec.parameter_name)
            if chosen and chosen not in {str(lookup) for lookup, _title in spec.lookup_choices}:
                raise IncorrectLookupParameters(f"{spec.parameter_name} has no choice {chosen!r}.")
        return filters


class CheckedListInput:
    """On every list of the site (StaffAdminSite.register mixes it in): filters (see
    CheckedChangeList) and ticked rows that Django would turn into a server error, or
    silently ignore, are refused with a message, and nothing changes."""

    def get_changelist(self, request, **kwargs):
        return CheckedChangeList

    def changelist_view(self, request, extra_context=None):
        if ERROR_FLAG in request.GET:
            # Django's redirect after a bad filter says nothing by itself.
            self.message_user(request, BAD_FILTER, messages.WARNING)
        return super().changelist_view(request, extra_context)

    def response_action(self, request, queryset):
        # A hand-made POST can tick "ids" that are no ids; filtering on them would raise.
        pk = self.opts.pk
        try:
            for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                pk.run_validators(pk.to_python(value))
        except ValidationError:
            self.message_user(request, NO_VALID_SELECTION, messages.WARNING)
            return None
        return super().response_action(request, queryset)


def _checked(admin_class: type[admin.ModelAdmin]) -> type[admin.ModelAdmin]:
    """The admin class with CheckedListInput: every list of the site has it, Django's own (groups) too."""
    if issubclass(admin_class, CheckedListInput):
        return admin_class
    return type(
        admin_class.__name__,
        (CheckedListInput, admin_class),
        {"__module__": admin_class.__module__, "__qualname__": admin_class.__qualname__},
    )


class CodeForm(forms.Form):
    token = forms.CharField(
        label=_("Code"),
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True}),
    )


class StaffAdminSite(admin.AdminSite):
    # No site_header or site_title: templates/admin/base_site.html names the site, on the password
    # pages outside the admin site too.

    def register(self, model_or_iterable, admin_class=None, **options) -> None:
        models = [model_or_iterable] if isinstance(model_or_iterable, ModelBase) else model_or_iterable
        listed = [model for model in models if model._meta.app_label not in UNLISTED_APPS]
        if listed:
            super().register(listed, _checked(admin_class or admin.ModelAdmin), **options)

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and not self.needs_second_factor(request)

    def needs_second_factor(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(
            settings.STAFF_REQUIRE_2FA and user.is_active and user.is_staff and not user.is_verified()
        )

    @method_decorator(
        ratelimits.rate_limited(ratelimits.ADMIN_LOGIN_PER_IP, ratelimits.ADMIN_LOGIN_PER_USERNAME)
    )
    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.method == "GET" and self.needs_second_factor(request):
            return self._to("admin:two_factor", request)
        return super().login(request, extra_context)

    def password_change(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        """Staff changing their own password: audited like a reset or a password set for them."""
        with transaction.atomic():
            response = super().password_change(request, extra_context)
            if request.method == "POST" and response.status_code == 302:
                audit.record(
                    "staff.password_changed", actor=request.user, target=request.user, request=request
                )
        return response

    def get_urls(self):
        return [
            path("two-factor/", self._signed_in_staff(self.two_factor), name="two_factor"),
            path("two-factor/setup/", self._signed_in_staff(self.two_factor_setup), name="two_factor_setup"),
            path(
                "two-factor/sign-out/",
                self._signed_in_staff(self.two_factor_sign_out),
                name="two_factor_sign_out",
            ),
            *super().get_urls(),
        ]

    def _signed_in_staff(self, view):
        """Like admin_view, but for the step between password and second factor."""

        @never_cache
        def inner(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not (request.user.is_active and request.user.is_staff):
                return self._to("admin:login", request)
            return view(request, *args, **kwargs)

        return inner

    def _next(self, request: HttpRequest) -> str:
        wanted = request.POST.get("next") or request.GET.get("next") or ""
        if url_has_allowed_host_and_scheme(wanted, {request.get_host()}, require_https=request.is_secure()):
            return wanted
        return reverse("admin:index", current_app=self.name)

    def _to(self, name: str, request: HttpRequest) -> HttpResponseRedirect:
        return HttpResponseRedirect(
            f"{reverse(name, current_app=self.name)}?{urlencode({'next': self._next(request)})}"
        )

    def _render(self, request: HttpRequest, template: str, context: dict) -> HttpResponse:
        context = {**self.each_context(request), "next": self._next(request), **context}
        return render(request, f"admin/two_factor/{template}", context)

    @method_decorator(ratelimits.rate_limited(ratelimits.TWO_FACTOR_PER_USER))
    def two_factor(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_verified():
            return HttpResponseRedirect(self._next(request))
        if not user_has_device(request.user):
            return self._to("admin:two_factor_setup", request)
        form = CodeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            # While throttled no code is checked, so none is counted as wrong (audit, log).
            refusal = _throttle_refusal(devices_for_user(request.user))
            token = form.cleaned_data["token"].strip().replace(" ", "")
            device = None if refusal else match_token(request.user, token)
            if device is not None:
                otp_login(request, device)
                logger.info("Staff member passed the second step with their %s.", device.name)
                audit.record(
                    "user.second_factor_passed",
                    actor=request.user,
                    target=request.user,
                    request=request,
                    details={"device": device.name},
                )
                return HttpResponseRedirect(self._next(request))
            if refusal:
                form.add_error("token", refusal)
            else:
                logger.warning("A wrong second-step code was entered.")
                audit.record(
                    "user.second_factor_failed", actor=request.user, target=request.user, request=request
                )
                form.add_error("token", WRONG_CODE)
        return self._render(request, "verify.html", {"form": form, "title": _("Second step: your code")})

    @method_decorator(ratelimits.rate_limited(ratelimits.TWO_FACTOR_PER_USER))
    def two_factor_setup(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if user_has_device(user):
            return self._to("admin:two_factor", request)
        # The key being set up belongs to this session alone. A key kept for the account would be
        # shown to anyone who signs in with the password before the person confirms it (a new
        # account, a reset after a lost phone), who could then keep generating valid codes.
        # Reloading the page, or coming back from the authenticator app, keeps this session's key.
        device = TOTPDevice.objects.filter(
            pk=request.session.get(SETUP_DEVICE_SESSION_KEY), user=user, confirmed=False
        ).first()
        replaced = device is None and SETUP_DEVICE_SESSION_KEY in request.session
        if device is None:
            # A first visit, or a key that another session's setup page has replaced since.
            with transaction.atomic():
                TOTPDevice.objects.filter(user=user, confirmed=False).delete()
                device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
            request.session[SETUP_DEVICE_SESSION_KEY] = device.pk
        if replaced:
            messages.warning(request, SETUP_KEY_REPLACED)
        form = CodeForm(request.POST if request.method == "POST" and not replaced else None)
        if request.method == "POST" and form.is_valid():
            refusal = _throttle_refusal([device])
            if refusal:
                form.add_error("token", refusal)
            elif device.verify_token(form.cleaned_data["token"].strip().replace(" ", "")):
                codes = self._confirm(device)
                if codes is None:
                    # Replaced by another session's setup page meanwhile: the page says so, with the new key.
                    return HttpResponseRedirect(request.get_full_path())
                otp_login(request, device)
                logger.info("Staff member enrolled an authenticator app and got backup codes.")
                audit.record("user.second_factor_enrolled", actor=user, target=user, request=request)
                # Shown once, right here, and stored nowhere readable: so no redirect.
                # (never_cache in _signed_in_staff keeps them out of every cache.)
                return self._render(
                    request, "backup_codes.html", {"codes": codes, "title": _("Your backup codes")}
                )
            else:
                form.add_error("token", WRONG_CODE)
        return self._render(
            request,
            "setup.html",
            {
                "form": form,
                "title": _("Set up your second step"),
                "qr_code": segno.make(device.config_url, error="m").svg_data_uri(scale=5),
                "secret": b32encode(device.bin_key).decode("ascii"),
            },
        )

    @staticmethod
    def _confirm(device: TOTPDevice) -> list[str] | None:
        """Confirm the device and make its backup codes; None when the device is gone meanwhile."""
        codes = [StaticToken.random_token() for _ in range(BACKUP_CODE_COUNT)]
        with transaction.atomic():
            if not TOTPDevice.objects.filter(pk=device.pk, confirmed=False).update(confirmed=True):
                return None
            device.confirmed = True
            backup = StaticDevice.objects.create(user=device.user, name="Backup codes", confirmed=True)
            StaticToken.objects.bulk_create(StaticToken(device=backup, token=code) for code in codes)
        return codes

    @method_decorator(require_POST)
    def two_factor_sign_out(self, request: HttpRequest) -> HttpResponse:
        logout(request)
        return HttpResponseRedirect(reverse("admin:login", current_app=self.name))
