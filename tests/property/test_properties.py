"""Property-based tests: whatever people, browsers or bots send, no 500 and nothing half-stored."""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from evidence.validation import DISPLAY_NAME_MAX_LENGTH, display_name
from iama_vetting.models import CSPViolation
from iama_vetting.views import CSP_REPORT_MAX_ENTRIES, CSP_REPORT_TYPES
from notifications.models import OutboundEmail
from tests.factories import make_application
from vetting import links
from vetting.models import MATRIX_LOCALPART_RE, Application, validate_matrix_localpart

pytestmark = pytest.mark.django_db

# Django's test client is fast, but every example is a request: keep it bounded.
web = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

FIELDS = ["full_name", "email", "matrix_username", "phone", "referral", "statement", "consent", "website"]
any_text = st.one_of(
    st.text(max_size=50),
    st.text(min_size=5000, max_size=6000),
    st.just(""),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
)


@web
@given(st.fixed_dictionaries({}, optional={field: any_text for field in FIELDS}))
def test_any_application_post_answers_without_error_and_stores_all_or_nothing(client, settings, data):
    settings.RATELIMIT_ENABLE = False  # hundreds of posts from one address, on purpose
    Application.objects.all().delete()
    response = client.post("/apply/", {key: value.replace("\x00", "") for key, value in data.items()})
    assert response.status_code in (200, 302)
    if response.status_code == 200 or data.get("website"):
        assert not Application.objects.exists()
        assert not OutboundEmail.objects.exists()
    else:
        application = Application.objects.get()
        assert application.full_name and application.statement
        assert OutboundEmail.objects.filter(template="application-received").count() == 1


@given(st.text(max_size=1000))
def test_a_display_name_is_never_a_path_and_never_too_long(name):
    shown = display_name(name)
    assert shown
    assert "/" not in shown and "\\" not in shown
    assert all(char.isprintable() for char in shown)
    assert len(shown) <= DISPLAY_NAME_MAX_LENGTH


@given(st.text(max_size=100))
@example("alex\n")  # Found by this test: "$" in the grammar matched before a final newline.
def test_matrix_username_validation_accepts_exactly_the_localpart_grammar(value):
    grammar = bool(MATRIX_LOCALPART_RE.match(value)) and not value.startswith("_")
    try:
        validate_matrix_localpart(value)
    except ValidationError:
        assert not grammar
    else:
        assert grammar
        assert set(value) <= set(string.ascii_lowercase + string.digits + "._=-/+")


@web
@given(st.text(max_size=200), st.integers(min_value=0, max_value=200))
def test_tampered_status_links_are_404_never_500(client, settings, noise, position):
    settings.RATELIMIT_ENABLE = False
    token = links.status_token(make_application())
    cut = position % (len(token) + 1)
    tampered = token[:cut] + noise + token[cut:]
    response = client.get(f"/status/{quote(tampered, safe='')}/")
    if tampered == token:
        assert response.status_code == 200
    else:
        assert response.status_code == 404


# Report text as browsers and forgers may send it: any character, lone
# surrogates included (JSON's "\ud800" escapes decode to them).
report_text = st.text(alphabet=st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | report_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(report_text, children, max_size=4),
    max_leaves=20,
)
report_field = json_values | st.sampled_from(["https://evil.example/x.js?t=1", "inline", "http://[", "data"])
old_style_report = st.fixed_dictionaries(
    {
        "csp-report": st.dictionaries(
            st.sampled_from(["document-uri", "violated-directive", "effective-directive", "blocked-uri"]),
            report_field,
        )
    }
)
reporting_api_reports = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["csp-violation", "deprecation"]) | report_text,
            "url": report_field,
            "body": st.dictionaries(
                st.sampled_from(["documentURL", "effectiveDirective", "blockedURL", "disposition"]),
                report_field,
            ),
        }
    ),
    max_size=25,
)
reports_as_json = st.one_of(old_style_report, reporting_api_reports, json_values).map(json.dumps)
# Not empty: Django's test client drops the Content-Type of an empty body.
csp_report_bodies = reports_as_json | st.binary(min_size=1, max_size=200)


@web
@given(csp_report_bodies, st.sampled_from(CSP_REPORT_TYPES))
def test_any_csp_report_body_is_answered_without_error_and_only_bounded_text_is_kept(
    client, settings, body, content_type
):
    settings.RATELIMIT_ENABLE = False
    CSPViolation.objects.all().delete()
    response = client.post("/csp-report/", body, content_type=content_type)
    assert response.status_code in (204, 400)
    kept = list(CSPViolation.objects.all())
    if response.status_code == 400:
        assert kept == []
    assert len(kept) <= CSP_REPORT_MAX_ENTRIES
    for violation in kept:
        for field in ("directive", "blocked", "document_path"):
            value = getattr(violation, field)
            assert len(value) <= CSPViolation._meta.get_field(field).max_length
            assert value.isprintable(), value
