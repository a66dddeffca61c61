from __future__ import annotations

import hashlib

import pytest
from django.core.exceptions import ValidationError

from evidence.validation import display_name, validate_upload
from tests.factories import (
    ELF_BYTES,
    GIF_BYTES,
    HTML_BYTES,
    JPEG_BYTES,
    PDF_BYTES,
    SVG_BYTES,
    TEXT_BYTES,
    docx_bytes,
    plain_zip_bytes,
    png_bytes,
    upload,
)

SIXTEEN_MB = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "content", "recorded_type"),
    [
        ("passport.pdf", PDF_BYTES, "application/pdf"),
        ("photo.jpg", JPEG_BYTES, "image/jpeg"),
        ("PHOTO.JPEG", JPEG_BYTES, "image/jpeg"),
        ("scan.png", png_bytes(), "image/png"),
        ("badge.gif", GIF_BYTES, "image/gif"),
        (
            "letter.docx",
            docx_bytes(),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("notes.txt", TEXT_BYTES, "text/plain"),
    ],
)
def test_accepts_allowed_file_whose_content_matches_its_name(name, content, recorded_type):
    validated = validate_upload(upload(name, content))
    assert validated.content_type == recorded_type
    stored = validated.file.read()
    # Images are re-encoded without metadata; size and hash describe what is stored.
    if not recorded_type.startswith("image/"):
        assert stored == content
    assert validated.size == len(stored)
    assert validated.sha256 == hashlib.sha256(stored).hexdigest()


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        ("invoice.pdf", ELF_BYTES, "a program"),
        ("invoice.pdf", HTML_BYTES, "an HTML page"),
        ("photo.png", HTML_BYTES, "an HTML page"),
        ("photo.png", SVG_BYTES, "an SVG image"),
        ("photo.png", ELF_BYTES, "a program"),
        ("photo.jpg", PDF_BYTES, "application/pdf"),
        ("notes.txt", HTML_BYTES, "an HTML page"),
    ],
)
def test_refuses_file_whose_content_is_not_what_its_name_says(name, content, found):
    with pytest.raises(ValidationError) as caught:
        validate_upload(upload(name, content))
    message = caught.value.messages[0]
    assert f"“{name}”" in message
    assert found in message


def test_refuses_javascript_renamed_pdf():
    with pytest.raises(ValidationError, match="does not contain what its name says"):
        validate_upload(upload("cv.pdf", b"function steal(){ fetch('/x') }\nsteal();\n"))


def test_refuses_zip_that_is_not_a_real_docx():
    with pytest.raises(ValidationError, match="“letter.docx” does not contain"):
        validate_upload(upload("letter.docx", plain_zip_bytes()))


@pytest.mark.parametrize(
    "name", ["run.exe", "page.html", "image.svg", "script.js", "archive.zip", "noextension"]
)
def test_refuses_extension_not_on_the_allowlist(name):
    with pytest.raises(ValidationError, match="is not an allowed type"):
        validate_upload(upload(name, TEXT_BYTES))


def test_refuses_empty_file():
    with pytest.raises(ValidationError, match="“empty.pdf” is empty"):
        validate_upload(upload("empty.pdf", b""))


def test_accepts_exactly_16_mb():
    content = TEXT_BYTES + b"a" * (SIXTEEN_MB - len(TEXT_BYTES))
    assert validate_upload(upload("big.txt", content)).size == SIXTEEN_MB


def test_refuses_16_mb_plus_one_byte_with_a_clear_message():
    content = TEXT_BYTES + b"a" * (SIXTEEN_MB + 1 - len(TEXT_BYTES))
    with pytest.raises(ValidationError) as caught:
        validate_upload(upload("big.txt", content))
    assert caught.value.messages == ["“big.txt” is too large: each file may be at most 16 MB."]


@pytest.mark.parametrize(
    ("uploaded_name", "shown"),
    [
        ("../../x.pdf", "x.pdf"),
        ("..\\..\\windows\\x.pdf", "x.pdf"),
        ("/etc/passwd.pdf", "passwd.pdf"),
        ("bad\x00name.pdf", "badname.pdf"),
        ("line\r\nbreak.pdf", "linebreak.pdf"),
        ("Ωmega paßport.pdf", "Ωmega paßport.pdf"),
        ("", "unnamed"),
    ],
)
def test_display_name_keeps_no_path_and_no_control_characters(uploaded_name, shown):
    assert display_name(uploaded_name) == shown


def test_display_name_of_300_characters_is_shortened_keeping_the_extension():
    shown = display_name("a" * 300 + ".pdf")
    assert len(shown) == 255
    assert shown.endswith("a.pdf")
