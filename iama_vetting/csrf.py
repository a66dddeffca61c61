"""Django's CSRF token for a form, with its randomness drawn in one system call.

django.middleware.csrf.get_token draws each of a new visitor's 64 characters
(32 of secret, 32 of mask) with its own secrets.choice(), one os.urandom()
call apiece: a quarter of the busiest page's time (bench/pages.py). This is
the same protocol: same alphabet and lengths, the secret kept in
request.META["CSRF_COOKIE"] for CsrfViewMiddleware to set as the cookie,
and the form token masked against BREACH, so the middleware checks these
tokens exactly like its own.
"""

from __future__ import annotations

import secrets

from django.http import HttpRequest
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH

_ALPHABET_SIZE = len(CSRF_ALLOWED_CHARS)
# Byte b stands for character b % 62; bytes 248 and up would favour the first
# characters of the alphabet, so they are dropped (and more drawn if needed).
_UNBIASED_BELOW = 256 - 256 % _ALPHABET_SIZE
_BYTE_TO_CHAR = bytes(ord(CSRF_ALLOWED_CHARS[byte % _ALPHABET_SIZE]) for byte in range(256))
_BIASED_BYTES = bytes(range(_UNBIASED_BELOW, 256))
# "sm" -> the character at (index of s + index of m) % 62: the mask's cipher, one lookup per pair.
_MASKED = {
    secret_char + mask_char: CSRF_ALLOWED_CHARS[(secret_index + mask_index) % _ALPHABET_SIZE]
    for secret_index, secret_char in enumerate(CSRF_ALLOWED_CHARS)
    for mask_index, mask_char in enumerate(CSRF_ALLOWED_CHARS)
}


def random_csrf_string(length: int) -> str:
    """`length` characters of CSRF_ALLOWED_CHARS, each uniformly random."""
    chars = b""
    while len(chars) < length:
        chars += secrets.token_bytes(length + 16).translate(_BYTE_TO_CHAR, _BIASED_BYTES)
    return chars[:length].decode("ascii")


def get_token(request: HttpRequest) -> str:
    """The masked CSRF token for a form; like Django's, makes the response set the cookie."""
    secret = request.META.get("CSRF_COOKIE")
    if secret is None:
        mask_and_secret = random_csrf_string(2 * CSRF_SECRET_LENGTH)
        mask, secret = mask_and_secret[:CSRF_SECRET_LENGTH], mask_and_secret[CSRF_SECRET_LENGTH:]
        request.META["CSRF_COOKIE"] = secret
    else:
        mask = random_csrf_string(CSRF_SECRET_LENGTH)
    # Sent again even when the visitor has it, to renew its expiry (as Django does).
    request.META["CSRF_COOKIE_NEEDS_UPDATE"] = True
    return mask + "".join(map(_MASKED.__getitem__, map(str.__add__, secret, mask)))
