"""Property-based tests: whatever people, browsers or bots send, no 500 and nothing half-stored."""

from __future__ import annotations

import json
import string
import uuid
from urllib.parse import quote

import pytest
from django.core import signing
from django.core.exceptions import ValidationError
from django.test import override_settings
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from evidence.validation import DISPLAY_NAME_MAX_LENGTH, display_name
from iama_vetting.models import CSPViolation
from iama_vetting.views import CSP_REPORT_MAX_ENTRIES, CSP_REPORT_TYPES
from notifications.models import OutboundEmail
from tests.factories import make_application
from tests.vetting.test_links import STATUS_ROUTES
from vetting import links
from vetting.forms import ApplicationForm
from vetting.models import Application, AuditEvent, validate_matrix_localpart

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


def as_kept_username(text: str) -> str:
    """The username as the form keeps it: "@Alex:example.org" is kept as "alex" (own server only)."""
    return text.strip().lower().removeprefix("@").partition(":")[0]


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
    """(form data, what must happen): "stored", "refused", "pretended" (the honeypot), "too big"
    (past what Django reads of a request) or "either"."""
    kind = draw(st.sampled_from(["valid", "spoiled", "anything"]))
    if kind == "anything":
        # NUL included: SQLite stores it, PostgreSQL refuses it, so only the form may stop it.
        return draw(st.fixed_dictionaries({}, optional={field: any_text for field in FIELDS})), "either"
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
# Bigger than Django reads of a form (DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB): a bot's, not a person's.
THREE_MB = 3 * 1024 * 1024


@web
@given(application_posts())
@example((VALID_POST, "stored"))
@example(({**VALID_POST, "email": "zoe"}, "refused"))
@example(({**VALID_POST, "full_name": "Zoë\x00Ñandú"}, "refused"))
@example(({**VALID_POST, "email": "zoe\x00@example.org"}, "refused"))
@example(({**VALID_POST, "matrix_username": "zoe\x00"}, "refused"))
@example(({**VALID_POST, "phone": "+351\x00912345678"}, "refused"))
@example(({**VALID_POST, "referral": "\x00"}, "refused"))
@example(({**VALID_POST, "statement": "I organise\x00 the local chapter."}, "refused"))
@example(({**VALID_POST, "website": "\x00"}, "pretended"))
@example(({**VALID_POST, "statement": "x" * THREE_MB}, "too big"))
@example(
    (
        {
            **VALID_POST,
            "referral": " Sam\r\nfrom Lisbon ",
            "phone": " +351 912 ",
            "matrix_username": "@Zoe:localhost",
        },
        "stored",
    )
)
def test_any_application_post_answers_without_error_and_stores_all_or_nothing(client, settings, post):
    settings.RATELIMIT_ENABLE = False  # hundreds of posts from one address, on purpose
    settings.MATRIX_SERVER_NAME = "localhost"
    data, expected = post
    forget_every_application()
    response = client.post("/apply/", data)
    if expected == "too big":
        assert response.status_code in (400, 413)
        assert "We could not understand that request" in response.content.decode()
    else:
        assert response.status_code in (200, 302)
    if expected == "refused":
        assert response.status_code == 200  # the form again, saying what to change
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
    assert application.referral == as_kept(data["referral"])
    assert application.email == data["email"]
    assert application.phone == data.get("phone", "").strip()
    assert application.matrix_username == as_kept_username(data.get("matrix_username", ""))
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


# The username rule, written out here rather than read from the validator: the
# Matrix spec's user-ID grammar (a-z, 0-9 and . _ = - / +) as this project applies
# it, no leading underscore (Synapse keeps those for application services), at
# most 64 characters (our fields' length; Synapse caps only the whole user ID).
USERNAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789._=-/+"


def follows_the_username_rule(name: str) -> bool:
    return (
        1 <= len(name) <= 64
        and all(char in USERNAME_CHARACTERS for char in name)
        and not name.startswith("_")
    )


# Characters people and bots put in a username that the rule refuses.
bad_characters = st.sampled_from("ABZ @:#!~ \t\n\r\x00éßİK\u212a\u0131\u200b０１") | st.characters().filter(
    lambda char: char not in USERNAME_CHARACTERS
)


@st.composite
def usernames(draw) -> str:
    """Names from the allowed alphabet, as many accepted as refused: some left as they are,
    some given one bad character, a leading underscore or a length around the limit."""
    name = draw(st.text(USERNAME_CHARACTERS, min_size=1, max_size=64))
    kind = draw(st.sampled_from(["as is", "bad character", "leading underscore", "length"]))
    if kind == "bad character":
        position = draw(st.integers(0, len(name)))
        name = name[:position] + draw(bad_characters) + name[position:]
    elif kind == "leading underscore":
        name = "_" + name
    elif kind == "length":
        length = draw(st.sampled_from([0, 1, 63, 64, 65, 66, 300]) | st.integers(0, 400))
        name = (name * (length // len(name) + 1))[:length]
    return name


@given(usernames())
@example("alex\n")  # Found by this test: "$" in the grammar matched before a final newline.
@example("a" * 64)
@example("a" * 65)
@example("_" + "a" * 63)
@example("a" * 300)
@example("")
@example("alex.smith=/+-_9")
@example("Alex")
@example("\u212a")  # the Kelvin sign, which lowercases to "k"
def test_matrix_username_validation_accepts_exactly_the_username_rule(name):
    try:
        validate_matrix_localpart(name)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    event("accepted" if accepted else "refused")
    assert accepted == follows_the_username_rule(name), (name, len(name))


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


CONFIRM_LINK_ROUTES = [("get", "/confirm/{}/")]


def answers(client, routes: list[tuple[str, str]], token: str) -> dict[tuple[str, str], int]:
    path_token = quote(token, safe="")
    return {
        (method, route): getattr(client, method)(route.format(path_token)).status_code
        for method, route in routes
    }


# Token-like characters (base64url and the ":" separator) make edits that still look like a token.
token_noise = st.text(string.ascii_letters + string.digits + "-_:", max_size=20) | st.text(max_size=60)
token_edits = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "truncate"]),
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=1, max_value=80),
    token_noise,
)


def edited(token: str, edit: tuple[str, int, int, str]) -> str:
    kind, start, length, noise = edit
    start %= len(token) + 1
    end = min(len(token), start + length)
    if kind == "insert":
        return token[:start] + noise + token[start:]
    if kind == "delete":
        return token[:start] + token[end:]
    if kind == "replace":
        return token[:start] + noise + token[end:]
    return token[:start]


@web
@given(token_edits, st.sampled_from(["status", "confirm"]))
@example(("insert", 0, 1, "x"), "status")
@example(("delete", 5, 1, ""), "status")
@example(("replace", 10, 3, "AAA"), "confirm")
@example(("truncate", 30, 1, ""), "status")
@example(("truncate", 0, 1, ""), "confirm")
def test_edited_links_are_404_never_500(client, settings, edit, kind):
    settings.RATELIMIT_ENABLE = False
    # An unconfirmed application, so that its own confirmation link still works.
    application = make_application(status=Application.Status.UNCONFIRMED, email_confirmed_at=None)
    if kind == "status":
        token, routes = links.status_token(application), STATUS_ROUTES
    else:
        token, routes = links.confirm_token(application), CONFIRM_LINK_ROUTES
    tampered = edited(token, edit)
    event("unchanged" if tampered == token else edit[0])
    answered = answers(client, routes, tampered)
    if tampered == token:
        # The link itself: the page, or a redirect after a POST (a refused erasure is 409).
        assert all(code in (200, 302, 409) for code in answered.values()), answered
    else:
        assert set(answered.values()) == {404}, answered


# What only a holder of SECRET_KEY (or a retired key) could sign: any JSON value,
# and now and then an application id, in either form, of no application.
json_payloads = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
application_ids = st.uuids().flatmap(lambda public_id: st.sampled_from([public_id.hex, str(public_id)]))


@st.composite
def signed_payloads(draw):
    return draw(application_ids if draw(st.integers(0, 4)) == 0 else json_payloads)


def names_an_application(payload) -> bool:
    """A signed payload that reads as an application id: a string holding a UUID."""
    if not isinstance(payload, str):
        return False
    try:
        uuid.UUID(payload)
    except ValueError:
        return False
    return True


@web
@given(signed_payloads(), st.sampled_from(["status", "confirm"]))
@example("zz", "status")
@example("", "status")
@example(["x"], "status")
@example(5, "status")
@example({"a": 1}, "status")
@example(None, "confirm")
@example("zz", "confirm")
@example([], "confirm")
@example("00000000-0000-0000-0000-000000000000", "status")
@example("00000000000000000000000000000000", "confirm")
def test_links_we_signed_over_anything_else_are_404_never_500(client, settings, payload, kind):
    settings.RATELIMIT_ENABLE = False
    make_application()  # a table with an application in it, which no such link may reach
    salt, routes = (
        (links.STATUS_SALT, STATUS_ROUTES) if kind == "status" else (links.CONFIRM_SALT, CONFIRM_LINK_ROUTES)
    )
    answered = answers(client, routes, signing.dumps(payload, salt=salt))
    if names_an_application(payload):
        # One of ours whose application is gone (only purge_unconfirmed deletes one): expired.
        event("an application id of no application")
        assert set(answered.values()) == {410}, answered
    else:
        event("not an application id")
        assert set(answered.values()) == {404}, answered


@web
@given(
    st.text(max_size=80) | st.binary(max_size=60).map(signing.b64_encode).map(bytes.decode).map(".".__add__),
    st.sampled_from(["status", "confirm"]),
)
@example("", "status")
@example("!!!", "confirm")
def test_links_we_signed_over_bytes_that_are_no_json_value_are_404_never_500(client, settings, raw, kind):
    settings.RATELIMIT_ENABLE = False
    salt, routes = (
        (links.STATUS_SALT, STATUS_ROUTES) if kind == "status" else (links.CONFIRM_SALT, CONFIRM_LINK_ROUTES)
    )
    token = signing.TimestampSigner(salt=salt).sign(raw)
    try:
        payload = signing.loads(token, salt=salt)
    except Exception:  # whatever signing.loads raises on such bytes: the link is not ours
        payload = None
    answered = answers(client, routes, token)
    assert set(answered.values()) == ({410} if names_an_application(payload) else {404}), answered


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
