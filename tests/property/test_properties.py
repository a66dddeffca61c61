"""Property-based tests: whatever people, browsers or bots send, no 500 and nothing half-stored."""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from evidence.validation import DISPLAY_NAME_MAX_LENGTH, display_name
from iama_vetting.models import CSPViolation
from iama_vetting.views import CSP_REPORT_MAX_ENTRIES, CSP_REPORT_TYPES
from notifications.models import OutboundEmail
from tests.factories import make_application
from vetting import links
from vetting.forms import ApplicationForm
from vetting.models import MATRIX_LOCALPART_RE, Application, AuditEvent, validate_matrix_localpart

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


def typed(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """What a person may type in a required field: any text with something besides spaces."""
    characters = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(characters, min_size=min_size, max_size=max_size).filter(str.strip)


def as_kept(text: str) -> str:
    """A textarea's text as the form keeps it: line breaks as LF (browsers send CRLF), trimmed."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
emails = st.builds(
    "{}@{}.{}".format,
    st.lists(label, min_size=1, max_size=3).map(".".join),
    st.lists(label, min_size=1, max_size=2).map(".".join),
    st.sampled_from(["org", "example", "com", "pt"]),
)
localparts = st.text(string.ascii_lowercase + string.digits + "._=-/+", min_size=1, max_size=30).filter(
    lambda name: not name.startswith("_")
)
valid_posts = st.fixed_dictionaries(
    {
        "full_name": typed(200),
        "email": emails,
        "referral": typed(2000),
        "statement": typed(5000),
        "consent": st.just("on"),
    },
    optional={
        "matrix_username": st.just("") | localparts,
        "phone": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40),
        "website": st.just(""),
    },
)
# One thing wrong with an otherwise valid application, as people (and bots) get it wrong.
SPOILERS = {
    "no name": ("full_name", st.sampled_from(["", "   "])),
    "not an address": ("email", st.sampled_from(["alex", "alex@", "@example.org", "alex example.org"])),
    "not a localpart": ("matrix_username", st.sampled_from(["Alex Smith", "_alex", "alex:example.org"])),
    "statement too long": ("statement", typed(5100, 5001).filter(lambda text: len(as_kept(text)) > 5000)),
    "no referral": ("referral", st.just("")),
    "no consent": ("consent", st.just("")),
    "honeypot": ("website", st.text(min_size=1, max_size=30).filter(str.strip)),
}


@st.composite
def application_posts(draw) -> tuple[dict[str, str], str]:
    """(form data, what must happen): "stored", "refused", "pretended" (the honeypot) or "either"."""
    kind = draw(st.sampled_from(["valid", "spoiled", "anything"]))
    if kind == "anything":
        data = draw(st.fixed_dictionaries({}, optional={field: any_text for field in FIELDS}))
        return {key: value.replace("\x00", "") for key, value in data.items()}, "either"
    data = draw(valid_posts)
    if kind == "valid":
        return data, "stored"
    spoiler = draw(st.sampled_from(sorted(SPOILERS)))
    field, values = SPOILERS[spoiler]
    data[field] = draw(values)
    return data, "pretended" if spoiler == "honeypot" else "refused"


def forget_every_application() -> None:
    """What one post may have left: the application (its evidence goes with it), its mail, its audit trail."""
    Application.objects.all().delete()
    OutboundEmail.objects.all().delete()
    AuditEvent.objects.all().delete()


VALID_POST = {
    "full_name": "Zoë Ñandú",
    "email": "zoe@example.org",
    "referral": "Sam",
    "statement": "I organise the local chapter.",
    "consent": "on",
}


@web
@given(application_posts())
@example((VALID_POST, "stored"))
@example(({**VALID_POST, "email": "zoe"}, "refused"))
def test_any_application_post_answers_without_error_and_stores_all_or_nothing(client, settings, post):
    settings.RATELIMIT_ENABLE = False  # hundreds of posts from one address, on purpose
    data, expected = post
    forget_every_application()
    response = client.post("/apply/", data)
    assert response.status_code in (200, 302)
    stored = response.status_code == 302 and not data.get("website")
    event(f"{expected}: {'stored' if stored else 'nothing stored'}")
    if expected != "either":
        assert stored == (expected == "stored"), response.content.decode()[:2000]
    if expected == "pretended":
        # The bot is answered like a person.
        assert response.status_code == 302
    if not stored:
        assert not Application.objects.exists()
        assert not OutboundEmail.objects.exists()
        assert not AuditEvent.objects.exists()
        return
    application = Application.objects.get()
    assert application.full_name == data["full_name"].strip()
    assert application.statement == as_kept(data["statement"])
    assert application.email == data["email"]
    mails = list(OutboundEmail.objects.values_list("template", "to"))
    assert mails == [("application-received", application.email)]
    assert AuditEvent.objects.get().action == "application.submitted"


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


@given(
    localparts, st.booleans(), st.booleans(), st.sampled_from(["example.org", "Example.ORG", "matrix.org"])
)
def test_a_typed_user_id_keeps_its_username_only_on_this_community_s_server(localpart, at, capitals, server):
    typed = ("@" if at else "") + (localpart.upper() if capitals else localpart) + ":" + server
    with override_settings(MATRIX_SERVER_NAME="example.org"):
        form = ApplicationForm({**VALID_POST, "matrix_username": typed})
        valid = form.is_valid()
    if server.lower() == "example.org":
        assert valid, form.errors
        assert form.cleaned_data["matrix_username"] == localpart
    else:
        assert form.errors["matrix_username"] == [
            "“matrix.org” is another server: type the username you would like on this community's "
            "server, example.org, e.g. alex.smith."
        ]


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
