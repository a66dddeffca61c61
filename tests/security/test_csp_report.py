"""/csp-report/: every format browsers send, every kind of bad input, aggregation."""

from __future__ import annotations

import importlib
import io
import json
import logging
from datetime import timedelta

import pytest
from django.apps import apps as global_apps
from django.core.management import call_command
from django.utils import timezone

from iama_vetting import models
from iama_vetting.models import CSPViolation

pytestmark = pytest.mark.django_db

OLD_STYLE = {
    "csp-report": {
        "document-uri": "https://rvi.example.org/apply/?r=secret-ish",
        "referrer": "",
        "violated-directive": "script-src-elem",
        "effective-directive": "script-src-elem",
        "original-policy": "default-src 'self'",
        "blocked-uri": "https://evil.example/x.js?token=abc",
        "status-code": 200,
    }
}


def reporting_api_entry(directive="style-src-attr", blocked="inline", kind="csp-violation"):
    return {
        "type": kind,
        "age": 10,
        "url": "https://rvi.example.org/admin/",
        "user_agent": "Chromium",
        "body": {
            "documentURL": "https://rvi.example.org/admin/",
            "effectiveDirective": directive,
            "blockedURL": blocked,
            "disposition": "enforce",
        },
    }


def post_report(client, body, content_type):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post("/csp-report/", data, content_type=content_type)


def test_old_style_csp_report_is_logged_and_counted(client, caplog):
    with caplog.at_level(logging.WARNING, logger="iama_vetting.csp"):
        response = post_report(client, OLD_STYLE, "application/csp-report")
    assert response.status_code == 204
    violation = CSPViolation.objects.get()
    assert (violation.directive, violation.blocked, violation.document_path, violation.count) == (
        "script-src-elem",
        "https://evil.example",
        "/apply/",
        1,
    )
    # The log keeps what was blocked in full (query strings never); the table its origin.
    [record] = [record for record in caplog.records if record.name == "iama_vetting.csp"]
    assert record.csp_directive == "script-src-elem"
    assert record.csp_blocked_uri == "https://evil.example/x.js"
    assert record.csp_document_uri == "/apply/"


def test_an_old_style_report_with_only_the_violated_directive_is_filed_under_that_directive(client):
    """Older Firefox and Safari name the directive only in violated-directive, with its sources."""
    report = {key: value for key, value in OLD_STYLE["csp-report"].items() if key != "effective-directive"}
    report["violated-directive"] = "script-src 'self'"
    assert post_report(client, {"csp-report": report}, "application/csp-report").status_code == 204
    violation = CSPViolation.objects.get()
    assert (violation.directive, violation.blocked, violation.document_path) == (
        "script-src",
        "https://evil.example",
        "/apply/",
    )


def test_the_effective_directive_is_preferred_to_the_violated_one(client):
    """violated-directive may name the policy's directive, sources and all; effective-directive the one that applied."""
    report = {**OLD_STYLE["csp-report"], "violated-directive": "script-src 'self'"}
    assert post_report(client, {"csp-report": report}, "application/csp-report").status_code == 204
    assert CSPViolation.objects.get().directive == "script-src-elem"


def test_reporting_api_array_uses_only_csp_violations(client, caplog):
    """The Reporting API batches deprecation and intervention reports with CSP ones."""
    body = [
        reporting_api_entry(),
        # Another type is neither logged nor counted, even with a body shaped like a CSP report.
        reporting_api_entry(kind="deprecation"),
        {
            "type": "deprecation",
            "age": 3,
            "url": "https://rvi.example.org/apply/",
            "user_agent": "Chromium",
            "body": {
                "id": "UnloadHandler",
                "message": "Unload event listeners are deprecated and will be removed.",
                "sourceFile": "https://rvi.example.org/static/form.js",
                "lineNumber": 12,
            },
        },
        {
            "type": "intervention",
            "age": 3,
            "url": "https://rvi.example.org/apply/",
            "user_agent": "Chromium",
            "body": {"id": "HeavyAdIntervention", "message": "Ad was removed."},
        },
        reporting_api_entry("img-src", "data"),
    ]
    with caplog.at_level(logging.WARNING, logger="iama_vetting.csp"):
        response = post_report(client, body, "application/reports+json")
    assert response.status_code == 204
    assert sorted(CSPViolation.objects.values_list("directive", "blocked", "document_path", "count")) == [
        ("img-src", "data", "/admin/", 1),
        ("style-src-attr", "inline", "/admin/", 1),
    ]
    logged = [record.csp_directive for record in caplog.records if record.name == "iama_vetting.csp"]
    assert logged == ["style-src-attr", "img-src"]


def test_plain_json_is_accepted_in_either_shape(client):
    assert post_report(client, OLD_STYLE, "application/json").status_code == 204
    assert post_report(client, [reporting_api_entry()], "application/json").status_code == 204
    assert CSPViolation.objects.count() == 2


def test_a_flood_of_the_same_violation_grows_a_counter_not_the_table(client):
    for _ in range(30):
        post_report(client, OLD_STYLE, "application/csp-report")
    violation = CSPViolation.objects.get()
    assert violation.count == 30
    assert violation.last_seen >= violation.first_seen


def test_a_long_array_is_capped(client):
    body = [reporting_api_entry(blocked=f"https://cdn{number}.example/x.js") for number in range(100)]
    assert post_report(client, body, "application/reports+json").status_code == 204
    assert CSPViolation.objects.count() == 20


def test_body_over_64_kb_is_refused_with_413(client):
    padding = "x" * (64 * 1024)
    body = {"csp-report": {**OLD_STYLE["csp-report"], "script-sample": padding}}
    response = post_report(client, body, "application/csp-report")
    assert response.status_code == 413
    assert not CSPViolation.objects.exists()


def report_of_size(size: int) -> str:
    empty = json.dumps({"csp-report": {**OLD_STYLE["csp-report"], "script-sample": ""}})
    return json.dumps({"csp-report": {**OLD_STYLE["csp-report"], "script-sample": "x" * (size - len(empty))}})


def test_a_body_of_exactly_64_kb_is_accepted_and_one_byte_more_is_not(client):
    exactly = report_of_size(64 * 1024)
    assert len(exactly) == 64 * 1024
    assert post_report(client, exactly, "application/csp-report").status_code == 204
    assert post_report(client, report_of_size(64 * 1024 + 1), "application/csp-report").status_code == 413
    assert CSPViolation.objects.get().count == 1


@pytest.mark.parametrize(
    "body",
    ["{not json", b"\xff\xfe\x00garbage", "[" * 30000 + "]" * 30000, '"a string"', "[1, 2]", "{}", "null"],
    ids=["broken", "not-utf8", "deeply-nested", "string", "array-of-numbers", "empty-object", "null"],
)
def test_invalid_json_or_shape_is_refused_with_400(client, body):
    response = post_report(client, body, "application/csp-report")
    assert response.status_code == 400
    assert not CSPViolation.objects.exists()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_other_content_types_are_refused_with_415(client, content_type):
    response = client.generic("POST", "/csp-report/", json.dumps(OLD_STYLE), content_type=content_type)
    assert response.status_code == 415


def test_get_is_refused_with_405(client):
    assert client.get("/csp-report/").status_code == 405


def test_csrf_is_not_required(client):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    assert post_report(strict, OLD_STYLE, "application/csp-report").status_code == 204


def test_control_characters_are_escaped_and_long_values_cut(client, caplog):
    nasty = {
        "csp-report": {
            "document-uri": "https://rvi.example.org/apply/\x1b[2J\x00FAKE",
            "violated-directive": "script-src\x1b[31m",
            "blocked-uri": "https://evil.example/" + "a" * 2000,
        }
    }
    with caplog.at_level(logging.WARNING, logger="iama_vetting.csp"):
        assert post_report(client, nasty, "application/csp-report").status_code == 204
    violation = CSPViolation.objects.get()
    assert violation.document_path == "(other)"
    assert "\x1b" not in violation.directive
    assert violation.blocked == "https://evil.example"
    record = caplog.records[-1]
    assert record.csp_document_uri == "/apply/\\x1b[2J\\x00FAKE"
    assert len(record.csp_blocked_uri) == 512
    message = record.getMessage()
    assert "\n" not in message
    assert "\x1b" not in message


def test_violations_are_read_only_in_the_admin(client, superadmin):
    post_report(client, OLD_STYLE, "application/csp-report")
    client.force_login(superadmin)
    violation = CSPViolation.objects.get()
    listing = client.get("/admin/iama_vetting/cspviolation/")
    assert listing.status_code == 200
    assert "https://evil.example" in listing.content.decode()
    assert client.get("/admin/iama_vetting/cspviolation/add/").status_code == 403
    detail = client.get(f"/admin/iama_vetting/cspviolation/{violation.pk}/change/")
    assert detail.status_code == 200
    assert 'name="directive"' not in detail.content.decode()
    client.post(f"/admin/iama_vetting/cspviolation/{violation.pk}/change/", {"count": 0})
    violation.refresh_from_db()
    assert violation.count == 1


STATUS_TOKEN = "ImRlYWRiZWVmIg:1xXJAT:csp-canary-signature"


@pytest.mark.parametrize(
    ("page", "masked"),
    [
        (f"/status/{STATUS_TOKEN}/", "/status/<token>/"),
        (f"/status/{STATUS_TOKEN}/withdraw/", "/status/<token>/withdraw/"),
        (f"/confirm/{STATUS_TOKEN}/", "/confirm/<token>/"),
        (f"/reset/MQ/{STATUS_TOKEN}/", "/reset/<uidb64>/<token>/"),
    ],
)
@pytest.mark.parametrize("report_format", ["csp-report", "reports+json"])
def test_tokens_in_reported_urls_are_neither_logged_nor_stored(client, caplog, page, masked, report_format):
    url = f"https://rvi.example.org{page}"
    if report_format == "csp-report":
        body = {"csp-report": {"document-uri": url, "effective-directive": "form-action", "blocked-uri": url}}
    else:
        entry = reporting_api_entry("form-action", url)
        entry["url"] = url
        del entry["body"]["documentURL"]
        body = [entry]
    with caplog.at_level(logging.WARNING, logger="iama_vetting.csp"):
        assert post_report(client, body, f"application/{report_format}").status_code == 204
    violation = CSPViolation.objects.get()
    assert violation.document_path == masked
    assert violation.blocked == "https://rvi.example.org"
    assert caplog.records[-1].csp_blocked_uri == f"https://rvi.example.org{masked}"
    assert STATUS_TOKEN not in caplog.text
    assert STATUS_TOKEN not in str(vars(caplog.records[-1]))
    out = io.StringIO()
    call_command("security_report", stdout=out)
    assert f"form-action blocked https://rvi.example.org on {masked}: 1 report(s)" in out.getvalue()
    assert STATUS_TOKEN not in out.getvalue()


def test_a_blocked_uri_sent_as_a_bare_path_is_logged_without_its_token_or_query(client, caplog):
    blocked = f"/status/{STATUS_TOKEN}/?next=x#top"
    body = {"csp-report": {**OLD_STYLE["csp-report"], "blocked-uri": blocked}}
    with caplog.at_level(logging.WARNING, logger="iama_vetting.csp"):
        assert post_report(client, body, "application/csp-report").status_code == 204
    assert caplog.records[-1].csp_blocked_uri == "/status/<token>/"
    assert STATUS_TOKEN not in caplog.text
    assert CSPViolation.objects.get().blocked == "self"


def test_one_client_cannot_grow_the_table_with_paths(client):
    """Each distinct blocked path or made-up page used to be a row of its own."""
    for batch in range(10):
        body = [
            {
                "type": "csp-violation",
                "url": f"https://rvi.example.org/made-up/{batch}/{number}/",
                "body": {
                    "effectiveDirective": "script-src-elem",
                    "blockedURL": f"https://cdn.example/{batch}/{number}.js?v={number}",
                },
            }
            for number in range(20)
        ]
        assert post_report(client, body, "application/reports+json").status_code == 204
    assert list(CSPViolation.objects.values_list("directive", "blocked", "document_path", "count")) == [
        ("script-src-elem", "https://cdn.example", "(other)", 200)
    ]


@pytest.mark.parametrize(
    ("blocked", "stored"),
    [
        ("https://user:secret@CDN.example:8443/a/b.js?token=x#f", "https://cdn.example:8443"),
        ("inline", "inline"),
        ("eval", "eval"),
        ("data", "data"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("blob:https://rvi.example.org/0b5e-uuid", "blob"),
        ("/static/site.css", "self"),
        ("", ""),
    ],
)
def test_the_blocked_uri_is_stored_as_its_origin_or_keyword(client, blocked, stored):
    body = {"csp-report": {**OLD_STYLE["csp-report"], "blocked-uri": blocked}}
    assert post_report(client, body, "application/csp-report").status_code == 204
    assert CSPViolation.objects.get().blocked == stored


@pytest.mark.parametrize(
    ("page", "stored"),
    [
        ("/", "/"),
        ("/apply/done/?r=x", "/apply/done/"),
        ("/admin/vetting/application/17/change/", "/admin/vetting/application/<object_id>/change/"),
        ("/admin/vetting/", "/admin/<app_label>/"),
        ("/admin/no-such-page/", "(other)"),
        ("/wp-login.php", "(other)"),
    ],
)
def test_pages_are_stored_by_route_and_others_in_one_bucket(client, page, stored):
    body = {"csp-report": {**OLD_STYLE["csp-report"], "document-uri": f"https://rvi.example.org{page}"}}
    assert post_report(client, body, "application/csp-report").status_code == 204
    assert CSPViolation.objects.get().document_path == stored


def test_past_the_cap_new_kinds_count_in_one_overflow_row(client, monkeypatch, caplog):
    monkeypatch.setattr(models, "MAX_KINDS", 3)
    for number in range(6):
        body = {"csp-report": {**OLD_STYLE["csp-report"], "blocked-uri": f"https://cdn{number}.example/x.js"}}
        with caplog.at_level(logging.WARNING, logger="iama_vetting.csp"):
            assert post_report(client, body, "application/csp-report").status_code == 204
    # Kinds already counted go on counting.
    post_report(
        client,
        {"csp-report": {**OLD_STYLE["csp-report"], "blocked-uri": "https://cdn0.example/"}},
        "application/csp-report",
    )
    counts = dict(CSPViolation.objects.values_list("blocked", "count"))
    assert counts == {
        "https://cdn0.example": 2,
        "https://cdn1.example": 1,
        "https://cdn2.example": 1,
        models.OVERFLOW: 3,
    }
    # The log still names every one.
    assert "https://cdn5.example/x.js" in caplog.text


def test_the_daily_report_forgets_kinds_not_reported_for_30_days(client):
    now = timezone.now()
    for blocked, days in (("https://old.example", 31), ("https://recent.example", 29)):
        CSPViolation.objects.create(
            directive="img-src",
            blocked=blocked,
            document_path="/apply/",
            count=1,
            first_seen=now - timedelta(days=days),
            last_seen=now - timedelta(days=days),
        )
    dry = io.StringIO()
    call_command("security_report", "--dry-run", stdout=dry)
    assert CSPViolation.objects.count() == 2
    out = io.StringIO()
    call_command("security_report", stdout=out)
    assert "Forgot 1 kind(s) of CSP violation not reported for 30 days." in out.getvalue()
    assert list(CSPViolation.objects.values_list("blocked", flat=True)) == ["https://recent.example"]


def test_the_migration_forgets_reports_stored_with_raw_token_links_only():
    migration = importlib.import_module("iama_vetting.migrations.0002_forget_csp_reports_naming_tokens")
    now = timezone.now()
    kinds = [
        ("style-src", "inline", "/status/IjEi:1xSecretSig/"),
        ("img-src", "https://rvi.example.org/confirm/IjEi:1xSecretSig/", "/apply/"),
        ("style-src", "inline", "/status/<token>/"),
        ("script-src", "https://cdn.example", "/apply/"),
    ]
    for directive, blocked, page in kinds:
        CSPViolation.objects.create(
            directive=directive, blocked=blocked, document_path=page, count=1, first_seen=now, last_seen=now
        )
    migration.forget_reports_naming_tokens(global_apps, None)
    assert sorted(CSPViolation.objects.values_list("document_path", flat=True)) == [
        "/apply/",
        "/status/<token>/",
    ]
