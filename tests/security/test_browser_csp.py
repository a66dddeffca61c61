"""Every page applicants and server admins use runs in Chromium under the production CSP
with zero violations and zero console errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.core.cache import caches
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from evidence.models import Evidence
from evidence.validation import validate_upload
from iama_vetting import ratelimits
from iama_vetting.models import CSPViolation
from notifications.outbox import queue_email
from tests.factories import PDF_BYTES, make_application, upload
from vetting import links, workflow
from vetting.models import Application

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Runs before any page script; the binding reports back even across navigations.
WATCH_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(`${event.effectiveDirective} blocked ${event.blockedURI} at ${event.sourceFile}:${event.lineNumber}`);
});
"""


class Watched:
    def __init__(self, page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.expected_error_url: str | None = None
        page.expose_function("reportViolation", lambda text: self.problems.append(f"CSP: {text}"))
        page.add_init_script(WATCH_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _console(self, message) -> None:
        if message.type != "error":
            return
        if message.location.get("url") == self.expected_error_url and message.text.startswith(
            "Failed to load"
        ):
            return  # the error page we asked for
        self.problems.append(f"console: {message.text} ({message.location.get('url')})")

    def visit(self, url: str, *, status: int = 200, lands_on: str | None = None) -> None:
        self.expected_error_url = url if status >= 400 else None
        response = self.page.goto(url)
        assert response.status == status, url
        # The page asked for, not a redirect elsewhere (the admin sends an unknown object's page to its index).
        assert self.page.url == (lands_on or url), f"{url} showed {self.page.url}"
        policy = response.headers["content-security-policy"]
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
        self.page.wait_for_load_state("load")


@pytest.fixture
def browser_page(chromium):
    context = chromium.new_context()
    yield context.new_page()
    context.close()


def admin_data(superadmin) -> dict:
    application = make_application(full_name="Robin Browser")
    evidence = Evidence.objects.store(application, validate_upload(upload("id.pdf", PDF_BYTES)))
    [mail] = queue_email("application-received", ["robin@applicant.example"], {"application": application})
    CSPViolation.objects.record("style-src-attr", "inline", "/apply/")
    return {"application": application, "evidence": evidence, "mail": mail}


def sign_in_with_two_factor(watched: Watched, base: str, user) -> None:
    page = watched.page
    watched.visit(f"{base}/admin/", lands_on=f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "a-long-test-password")
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/two-factor/setup/"))
    assert page.locator("img[alt^='QR code']").is_visible()
    device = TOTPDevice.objects.get(user=user)
    page.fill("#id_token", f"{totp(device.bin_key, device.step, device.t0, device.digits):06d}")
    page.click("input[type=submit]")
    page.wait_for_selector(".backup-codes")
    page.click("text=Continue to the admin")
    page.wait_for_url(re.compile(r"/admin/$"))


def application_in_review(application: Application) -> Application:
    application.status = Application.Status.IN_REVIEW
    application.save(update_fields=["status"])
    return application


def test_public_pages_run_without_violations(live_server, browser_page, plain_http, server_admin):
    watched = Watched(browser_page)
    base = live_server.url
    watched.visit(f"{base}/apply/")
    page = watched.page
    page.fill("#id_full_name", "Robin Browser")
    page.fill("#id_email", "robin@applicant.example")
    page.fill("#id_referral", "Sam")
    page.fill("#id_statement", "I would like to join.")
    page.check("#id_consent")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(re.compile(r"/apply/done/"))
    application = Application.objects.get()
    workflow.request_information(application_in_review(application), server_admin, "Please send your ID.")
    watched.visit(f"{base}/status/{links.status_token(application)}/")
    watched.visit(f"{base}/status/{links.status_token(application)}/withdraw/")
    watched.visit(f"{base}/privacy/")
    watched.visit(f"{base}/no-such-page/", status=404)
    watched.visit(f"{base}/.well-known/security.txt")
    # One application more than the limit a minute from one address meets our 429 page (the form
    # has no `required`). A stopped clock keeps these posts inside one counting window; the
    # counters start empty inside it, so the real submission above, perhaps in an earlier
    # window, is not one of them.
    with time_machine.travel(datetime.now(tz=UTC), tick=False):
        caches["ratelimit"].clear()
        for _ in range(ratelimits.APPLY.per_minute + 1):
            watched.visit(f"{base}/apply/")
            watched.expected_error_url = f"{base}/apply/"
            # A plain form submission (not the upload script's XHR), so the 429 page is navigated to.
            with page.expect_navigation():
                page.evaluate("document.querySelector('form[method=post]').submit()")
    assert "Too many requests" in page.content()
    assert watched.problems == []


def test_every_admin_page_a_server_admin_uses_runs_without_violations(
    live_server, browser_page, plain_http, superadmin, settings
):
    settings.STAFF_REQUIRE_2FA = True
    data = admin_data(superadmin)
    watched = Watched(browser_page)
    base = live_server.url
    sign_in_with_two_factor(watched, base, superadmin)
    application = data["application"]
    pages = [
        "/admin/",
        "/admin/vetting/application/",
        "/admin/vetting/application/?status=all&q=Robin",
        f"/admin/vetting/application/{application.pk}/change/",
        f"/admin/vetting/auditevent/?application={application.reference}",
        "/admin/notifications/outboundemail/",
        "/admin/iama_vetting/cspviolation/",
        "/admin/auth/user/",
        "/admin/auth/user/add/",
        f"/admin/auth/user/{superadmin.pk}/change/",
        f"/admin/auth/user/{superadmin.pk}/password/",
        "/admin/auth/group/",
        "/admin/auth/group/add/",
        "/admin/password_change/",
    ]
    for path in pages:
        watched.visit(f"{base}{path}")
    page = watched.page

    # The outbox page that shows a mail's bodies (superusers only).
    mail = data["mail"]
    watched.visit(f"{base}/admin/notifications/outboundemail/{mail.pk}/change/")
    assert page.locator(".field-shown_subject .readonly").inner_text() == mail.subject
    assert application.reference in page.locator(".field-shown_body_html .readonly").inner_text()

    # Scripts that build markup at run time: the theme toggle, the actions bar, the permission picker.
    # (No page of ours has Django's calendar and clock widgets.)
    page.click("button.theme-toggle")
    watched.visit(f"{base}/admin/auth/user/")
    page.check("#action-toggle")
    watched.visit(f"{base}/admin/auth/group/add/")
    page.fill("#id_permissions_input", "application")
    page.click("#id_permissions_add_all")
    watched.visit(f"{base}/admin/vetting/application/{application.pk}/delete/", status=403)
    assert watched.problems == []


def test_the_watch_catches_a_violation_so_zero_means_zero(live_server, browser_page, plain_http):
    watched = Watched(browser_page)
    watched.visit(f"{live_server.url}/apply/")
    watched.page.evaluate("document.body.setAttribute('style', 'color: red')")
    watched.page.wait_for_timeout(200)
    assert any(problem.startswith("CSP: style-src-attr") for problem in watched.problems)
