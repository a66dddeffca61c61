from __future__ import annotations

import hashlib
import struct

import magic
import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import TemporaryUploadedFile

from evidence.validation import DOCX_TYPE, display_name, validate_upload
from tests.factories import (
    DOCX_CONTENT_TYPES,
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
    zip_bytes,
)

SIXTEEN_MB = 16 * 1024 * 1024

SECTOR = 512
FREE = NO_STREAM = 0xFFFFFFFF
END_OF_CHAIN = 0xFFFFFFFE
FAT_SECTOR = 0xFFFFFFFD


def compound_file(streams: list[tuple[str, bytes]]) -> bytes:
    """An OLE compound file (the container of .doc, .xls, .msi) holding these streams.

    Laid out as Word often does: the allocation table, the streams' data, and only
    then the directory that names them, so a big stream puts it past 64 KB. Every
    stream is at least 4096 bytes, so none lives in the mini stream.
    """
    starts, data = [], b""
    for _name, content in streams:
        assert len(content) >= 4096
        starts.append(len(data) // SECTOR)
        data += content.ljust(-(-len(content) // SECTOR) * SECTOR, b"\0")
    data_sectors = len(data) // SECTOR
    directory_sectors = -(-(len(streams) + 1) * 128 // SECTOR)
    fat_sectors = 1
    while fat_sectors * 128 < fat_sectors + data_sectors + directory_sectors:
        fat_sectors += 1
    directory = fat_sectors + data_sectors
    fat = [FAT_SECTOR] * fat_sectors
    ends = [*starts[1:], data_sectors]
    for first, after in zip(starts, ends, strict=True):
        fat += [*range(fat_sectors + first + 1, fat_sectors + after), END_OF_CHAIN]
    fat += [*range(directory + 1, directory + directory_sectors), END_OF_CHAIN]
    fat += [FREE] * (fat_sectors * 128 - len(fat))
    header = struct.pack(
        "<8s16s5H6s9I109I",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        bytes(16),
        0x3E,  # minor version
        3,  # major version: 512-byte sectors
        0xFFFE,  # little-endian
        9,  # sector size 2**9
        6,  # mini sector size 2**6
        bytes(6),
        0,  # directory sectors (always 0 in version 3)
        fat_sectors,
        directory,  # first directory sector
        0,
        4096,  # streams smaller than this live in the mini stream
        END_OF_CHAIN,  # no mini allocation table
        0,
        END_OF_CHAIN,  # no extra allocation-table list
        0,
        *range(fat_sectors),
        *[FREE] * (109 - fat_sectors),
    )

    def entry(
        name: str,
        kind: int,
        right: int = NO_STREAM,
        child: int = NO_STREAM,
        start: int = END_OF_CHAIN,
        size: int = 0,
    ) -> bytes:
        encoded = (name + "\0").encode("utf-16-le") if name else b""
        return struct.pack(
            "<64sHBB3I16sIQQIQ",
            encoded,
            len(encoded),
            kind,
            1,
            NO_STREAM,
            right,
            child,
            bytes(16),
            0,
            0,
            0,
            start,
            size,
        )

    # The root's child is the first stream; each stream's right sibling is the next one.
    entries = entry("Root Entry", 5, child=1)
    for number, ((name, content), first) in enumerate(zip(streams, starts, strict=True), start=1):
        following = number + 1 if number < len(streams) else NO_STREAM
        entries += entry(name, 2, right=following, start=fat_sectors + first, size=len(content))
    entries = entries.ljust(directory_sectors * SECTOR, b"\0")
    return header + struct.pack(f"<{len(fat)}I", *fat) + data + entries


def ole_bytes(stream_name: str, stream_size: int) -> bytes:
    data = (b"Sam met Alex at the Lisbon meetup. " * (stream_size // 35 + 1))[:stream_size]
    return compound_file([(stream_name, data)])


def summary_information(application: str) -> bytes:
    """The "\\x05SummaryInformation" stream of an Office file: code page and creating application."""
    name = (application + "\0").encode()
    values = [
        (1, struct.pack("<HHhxx", 2, 0, 1252)),  # PIDSI_CODEPAGE, VT_I2
        # PIDSI_APPNAME, VT_LPSTR padded to four bytes
        (0x12, struct.pack("<HHI", 0x1E, 0, len(name)) + name.ljust(-(-len(name) // 4) * 4, b"\0")),
    ]
    offset, table, body = 8 + 8 * len(values), b"", b""
    for identifier, value in values:
        table += struct.pack("<II", identifier, offset + len(body))
        body += value
    section = struct.pack("<II", offset + len(body), len(values)) + table + body
    summary_format = bytes.fromhex("e0859ff2f94f6810ab9108002b27b3d9")
    header = (
        struct.pack("<HHI16sI", 0xFFFE, 0, 0x00020006, bytes(16), 1) + summary_format + struct.pack("<I", 48)
    )
    # Padded to the mini-stream limit: the property set says its own length.
    return (header + section).ljust(4096, b"\0")


def office_container_bytes(*stream_names: str) -> bytes:
    """An OLE2 Office file as LibreOffice saves one: its summary names an application libmagic
    does not know, so only a stream's name (WordDocument, Workbook...) can place it."""
    text = b"Sam met Alex at the Lisbon meetup. " * 200
    return compound_file(
        [("\x05SummaryInformation", summary_information("LibreOffice/7.4"))]
        + [(name, text) for name in stream_names]
    )


def on_disk(name: str, content: bytes) -> TemporaryUploadedFile:
    """An upload as FILE_UPLOAD_HANDLERS gives it to the form: in a temporary file."""
    uploaded = TemporaryUploadedFile(name, "application/octet-stream", len(content), None)
    uploaded.write(content)
    uploaded.seek(0)
    return uploaded


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
        ("photo.jpg", PDF_BYTES, "a PDF document"),
        ("photo.jpg", png_bytes(), "a PNG image"),
        ("notes.txt", HTML_BYTES, "an HTML page"),
    ],
)
def test_refuses_file_whose_content_is_not_what_its_name_says(name, content, found):
    with pytest.raises(ValidationError) as caught:
        validate_upload(upload(name, content))
    message = caught.value.messages[0]
    assert f"“{name}”" in message
    assert found in message


@pytest.mark.parametrize("make_upload", [upload, on_disk], ids=["in-memory", "on-disk"])
@pytest.mark.parametrize("stream_size", [8_000, 100_000, 3_000_000])
def test_accepts_word_doc_wherever_its_directory_lies(make_upload, stream_size):
    content = ole_bytes("WordDocument", stream_size)
    validated = validate_upload(make_upload("letter.doc", content))
    assert validated.content_type == "application/msword"
    assert validated.size == len(content)


@pytest.mark.parametrize("make_upload", [upload, on_disk], ids=["in-memory", "on-disk"])
@pytest.mark.parametrize(
    ("stream_name", "found"),
    [("Workbook", "an Excel spreadsheet"), ("Contents", "an unrecognised Office file")],
)
def test_refuses_other_office_files_renamed_doc_in_words(make_upload, stream_name, found):
    with pytest.raises(ValidationError) as caught:
        validate_upload(make_upload("letter.doc", ole_bytes(stream_name, 100_000)))
    assert caught.value.messages == [
        f"“letter.doc” does not contain what its name says: it looks like {found}, not a .doc file."
    ]


def test_libmagic_places_an_office_container_without_a_word_stream_only_as_an_office_file():
    # What the refusal below relies on: if libmagic learns more, it tests nothing.
    assert (
        magic.from_buffer(office_container_bytes("1Table", "Data"), mime=True) == "application/vnd.ms-office"
    )


@pytest.mark.parametrize("make_upload", [upload, on_disk], ids=["in-memory", "on-disk"])
def test_accepts_a_word_doc_saved_by_an_application_libmagic_does_not_know(make_upload):
    content = office_container_bytes("1Table", "WordDocument")
    validated = validate_upload(make_upload("letter.doc", content))
    assert validated.content_type == "application/msword"
    assert validated.file.read() == content


@pytest.mark.parametrize("name", ["letter.doc", "letter.docx", "passport.pdf", "statement.txt", "photo.jpg"])
def test_refuses_an_office_container_without_a_word_stream_under_any_name(name):
    with pytest.raises(ValidationError) as caught:
        validate_upload(upload(name, office_container_bytes("1Table", "Data")))
    assert "it looks like an unrecognised Office file" in caught.value.messages[0]


@pytest.mark.parametrize(
    "content",
    [
        b"name,date,place\nAlex,2025-03-01,Lisbon\nSam,2025-04-02,Porto\n",
        b"From: Sam <sam@example.org>\nTo: Alex <alex@example.org>\nSubject: Alex\n"
        b"Date: Mon, 3 Mar 2025 10:00:00 +0000\nMessage-ID: <1@example.org>\n\nI vouch for Alex.\n",
        b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nI vouch for Alex.\n"
        b"-----BEGIN PGP SIGNATURE-----\n\niQEzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n",
        b'{"name": "Alex", "met": "Lisbon"}\n',
        b"C and I met Alex in Lisbon.\n",
    ],
    ids=["csv", "saved-email", "pgp-signed", "json", "prose-libmagic-calls-fortran"],
)
def test_accepts_plain_text_that_libmagic_names_more_precisely(content):
    validated = validate_upload(upload("statement.txt", content))
    assert validated.content_type == "text/plain"
    assert validated.file.read() == content


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (HTML_BYTES, "an HTML page"),
        (SVG_BYTES, "an SVG image"),
        (b'<?xml version="1.0"?><note>hi</note>\n', "an XML document"),
        (b"#!/bin/sh\necho hi\n", "a script"),
        (b"#!/usr/bin/env python3\nprint('hi')\n", "a script"),
        (b"<?php echo 'hi'; ?>\n", "a script"),
        (PDF_BYTES, "a PDF document"),
    ],
)
def test_refuses_txt_that_is_not_plain_text_saying_so_in_words(content, found):
    with pytest.raises(ValidationError) as caught:
        validate_upload(upload("statement.txt", content))
    assert caught.value.messages == [f"“statement.txt” is not plain text: it looks like {found}."]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("statement.txt", "“statement.txt” is not plain text."),
        ("passport.pdf", "“passport.pdf” does not contain what its name says: it is not a .pdf file."),
    ],
)
def test_refusal_of_a_kind_we_cannot_name_shows_no_mime_type(name, message):
    gzip_bytes = b"\x1f\x8b\x08\x00" + bytes(6) + b"\x03\x00" + bytes(8)
    with pytest.raises(ValidationError) as caught:
        validate_upload(upload(name, gzip_bytes))
    assert caught.value.messages == [message]


def test_refuses_javascript_renamed_pdf():
    with pytest.raises(ValidationError, match="does not contain what its name says"):
        validate_upload(upload("cv.pdf", b"function steal(){ fetch('/x') }\nsteal();\n"))


@pytest.mark.parametrize(
    "content",
    [
        plain_zip_bytes(),
        # An Office manifest and a program: no Word document in it.
        zip_bytes(("[Content_Types].xml", DOCX_CONTENT_TYPES), ("payload.exe", b"MZ" + bytes(200))),
        # A Word part (libmagic calls this a Word document) beside a web page, without a manifest.
        zip_bytes(("word/document.xml", "<w:document/>"), ("index.html", "<script>alert(1)</script>")),
    ],
    ids=["plain-zip", "manifest-without-word-part", "word-part-without-manifest"],
)
def test_refuses_zip_that_is_not_a_real_docx(content):
    with pytest.raises(ValidationError, match="“letter.docx” does not contain what its name says"):
        validate_upload(upload("letter.docx", content))


def test_accepts_a_real_docx_that_libmagic_calls_only_a_zip():
    # Some writers put another part before [Content_Types].xml; libmagic then sees a plain zip.
    content = zip_bytes(
        ("_rels/.rels", "<Relationships/>"),
        ("[Content_Types].xml", DOCX_CONTENT_TYPES),
        ("word/document.xml", "<w:document/>"),
    )
    assert magic.from_buffer(content, mime=True) == "application/zip"  # what this test relies on
    validated = validate_upload(upload("letter.docx", content))
    assert validated.content_type == DOCX_TYPE
    assert validated.file.read() == content


def docx_needing_zip_version_6_4() -> bytes:
    """A DOCX whose central directory says "version needed to extract: 6.4", which zipfile refuses."""
    data = bytearray(docx_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) != -1:
        data[at + 6] = 64
        at += 4
    return bytes(data)


def test_refuses_docx_in_a_zip_version_python_cannot_read_and_logs_the_error_type(caplog):
    with pytest.raises(ValidationError) as refused:
        validate_upload(upload("letter.docx", docx_needing_zip_version_6_4()))
    assert refused.value.messages[0].startswith("“letter.docx” does not contain what its name says")
    (record,) = [record for record in caplog.records if record.name == "evidence.validation"]
    assert record.levelname == "WARNING"
    assert (
        record.getMessage() == "An uploaded .docx could not be read as a zip archive (NotImplementedError)."
    )


@pytest.mark.parametrize(
    # "txt" alone is a name without an extension, like "noextension".
    "name",
    ["run.exe", "page.html", "image.svg", "script.js", "archive.zip", "noextension", "txt"],
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
