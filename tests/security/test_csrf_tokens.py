"""The public form's CSRF tokens (iama_vetting/csrf.py) against Django's own checks."""

from __future__ import annotations

from collections import Counter

from django.middleware.csrf import CSRF_ALLOWED_CHARS, _unmask_cipher_token
from django.test import RequestFactory

from iama_vetting.csrf import get_token, random_csrf_string


def test_a_new_visitor_gets_a_secret_and_a_token_that_unmasks_to_it():
    request = RequestFactory().get("/apply/")
    token = get_token(request)
    secret = request.META["CSRF_COOKIE"]
    assert len(secret) == 32 and len(token) == 64
    assert set(secret + token) <= set(CSRF_ALLOWED_CHARS)
    assert _unmask_cipher_token(token) == secret
    assert request.META["CSRF_COOKIE_NEEDS_UPDATE"] is True


def test_a_returning_visitor_keeps_the_secret_under_a_fresh_mask():
    request = RequestFactory().get("/apply/")
    request.META["CSRF_COOKIE"] = secret = "a" * 16 + "Z9" * 8
    tokens = {get_token(request) for _ in range(20)}
    assert len(tokens) == 20
    assert {_unmask_cipher_token(token) for token in tokens} == {secret}
    assert request.META["CSRF_COOKIE"] == secret


def test_every_character_is_equally_likely():
    # 1.28 million characters: about 20,645 of each; a plain `byte % 62` would
    # give the first eight characters a quarter more than the others.
    counts = Counter("".join(random_csrf_string(64) for _ in range(20_000)))
    assert set(counts) == set(CSRF_ALLOWED_CHARS)
    expected = 20_000 * 64 / len(CSRF_ALLOWED_CHARS)
    assert all(abs(count - expected) < 0.05 * expected for count in counts.values())
