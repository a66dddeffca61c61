"""Our copy of the header rules of Mozilla's HTTP Observatory, applied to production responses.

Each rule below is one of the Observatory's tests with its score modifier
(MDN HTTP Observatory scoring, v2), re-implemented here: not the Observatory
itself, and not all of its tests (subresource integrity, for one, is not
here). The test asks for no penalty from these rules and a score of 100 or
more by them, which the Observatory grades A+.
"""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

SESSION_LIKE = ("session", "sess", "csrf")


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def score(page, redirect, cookies) -> tuple[int, list[str]]:
    findings: list[tuple[str, int]] = []
    csp = directives(page.get("Content-Security-Policy", ""))
    if not csp:
        findings.append(("csp-not-implemented", -25))
    else:
        scripts = csp.get("script-src", csp.get("default-src", []))
        styles = csp.get("style-src", csp.get("default-src", []))
        if "'unsafe-inline'" in scripts:
            findings.append(("csp-implemented-with-unsafe-inline", -20))
        if "'unsafe-eval'" in scripts:
            findings.append(("csp-implemented-with-unsafe-eval", -10))
        if any(source in ("*", "http:", "https:") for source in scripts + csp.get("object-src", ["*"])):
            findings.append(("csp-implemented-with-insecure-scheme-or-wildcard", -20))
        if "'unsafe-inline'" in styles:
            findings.append(("csp-implemented-with-unsafe-inline-in-style-src-only", 0))
        if csp.get("default-src") == ["'none'"]:
            findings.append(("csp-implemented-with-no-unsafe-default-src-none", 10))
        if "frame-ancestors" in csp:
            findings.append(("x-frame-options-implemented-via-csp", 5))
    if not page.get("X-Frame-Options") and "frame-ancestors" not in csp:
        findings.append(("x-frame-options-not-implemented", -20))
    for name, morsel in cookies.items():
        if not morsel["secure"]:
            findings.append((f"cookies-without-secure-flag ({name})", -20))
        if any(word in name.lower() for word in SESSION_LIKE) and not morsel["httponly"]:
            findings.append((f"cookies-session-without-httponly-flag ({name})", -30))
        if "csrf" in name.lower() and not morsel["samesite"]:
            findings.append((f"cookies-anticsrf-without-samesite-flag ({name})", -20))
    if cookies and all(morsel["secure"] and morsel["samesite"] for morsel in cookies.values()):
        findings.append(("cookies-secure-with-httponly-sessions-and-samesite", 5))
    if page.get("Access-Control-Allow-Origin") == "*":
        findings.append(("cross-origin-resource-sharing-implemented-with-universal-access", -50))
    if redirect.status_code not in (301, 302, 307, 308) or not redirect["Location"].startswith("https://"):
        findings.append(("redirection-missing", -20))
    referrer = page.get("Referrer-Policy", "")
    if referrer in ("no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"):
        findings.append(("referrer-policy-private", 5))
    elif referrer in ("origin", "origin-when-cross-origin", "unsafe-url"):
        findings.append(("referrer-policy-unsafe", -5))
    hsts = page.get("Strict-Transport-Security", "")
    max_age = int(hsts.split("max-age=")[1].split(";")[0]) if "max-age=" in hsts else 0
    if max_age < 15768000:
        findings.append(("hsts-not-implemented-or-shorter-than-six-months", -20 if not max_age else -10))
    if page.get("X-Content-Type-Options") != "nosniff":
        findings.append(("x-content-type-options-not-implemented", -5))
    penalties = [f"{name}: {modifier}" for name, modifier in findings if modifier < 0]
    return 100 + sum(modifier for _, modifier in findings), penalties


@pytest.mark.parametrize("path", ["/apply/", "/admin/login/"])
def test_production_responses_take_no_penalty_from_our_copy_of_the_observatory_header_rules(settings, path):
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["rvi.example.org"]
    browser = Client(HTTP_HOST="rvi.example.org")
    redirect = browser.get(path)
    page = browser.get(path, secure=True)
    assert page.status_code == 200
    total, penalties = score(page, redirect, page.cookies)
    assert penalties == []
    assert total >= 100, "the Observatory grades A+ from 100"
