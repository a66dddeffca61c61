"""/csp-report/: every format browsers send, every kind of bad input, aggregation."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.core.management import call_command

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
        "https://evil.example/x.js",
        "/apply/",
        1,
    )
    [record] = [record for record in caplog.records if record.name == "iama_vetting.csp"]
    assert record.csp_directive == "script-src-elem"
    assert record.csp_blocked_uri == "https://evil.example/x.js"
    assert record.csp_document_uri == "/apply/"


def test_reporting_api_array_uses_only_csp_violations(client):
    body = [
        reporting_api_entry(),
        reporting_api_entry(kind="deprecation"),
        reporting_api_entry("img-src", "data"),
    ]
    response = post_report(client, body, "application/reports+json")
    assert response.status_code == 204
    assert sorted(CSPViolation.objects.values_list("directive", "blocked", "document_path")) == [
        ("img-src", "data", "/admin/"),
        ("style-src-attr", "inline", "/admin/"),
    ]


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
    assert violation.document_path == "/apply/\\x1b[2J\\x00FAKE"
    assert "\x1b" not in violation.directive
    assert len(violation.blocked) == 512
    message = caplog.records[-1].getMessage()
    assert "\n" not in message
    assert "\x1b" not in message


def test_violations_are_read_only_in_the_admin(client, superadmin):
    post_report(client, OLD_STYLE, "application/csp-report")
    client.force_login(superadmin)
    violation = CSPViolation.objects.get()
    listing = client.get("/admin/iama_vetting/cspviolation/")
    assert listing.status_code == 200
    assert "https://evil.example/x.js" in listing.content.decode()
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
    assert violation.blocked == f"https://rvi.example.org{masked}"
    assert STATUS_TOKEN not in caplog.text
    assert STATUS_TOKEN not in str(vars(caplog.records[-1]))
    out = io.StringIO()
    call_command("security_report", stdout=out)
    assert f"form-action blocked https://rvi.example.org{masked} on {masked}: 1 report(s)" in out.getvalue()
    assert STATUS_TOKEN not in out.getvalue()
