"""Small builders of test data and test files, used across the suite."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone
from PIL import Image

from evidence.models import Evidence
from vetting.models import Application

PDF_BYTES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
GIF_BYTES = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
HTML_BYTES = b"<!DOCTYPE html><html><head><script>alert(1)</script></head><body>hi</body></html>\n"
SVG_BYTES = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\n'
ELF_BYTES = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + bytes(100)
TEXT_BYTES = b"I met Alex at the 2025 meetup in Lisbon; Sam can vouch for them.\n"


def jpeg_bytes(size: tuple[int, int] = (8, 8), **save_options) -> bytes:
    """A real JPEG made by Pillow; `save_options` can add metadata (exif=..., comment=...)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="JPEG", **save_options)
    return buffer.getvalue()


JPEG_BYTES = jpeg_bytes()


def png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# The package manifest of a Word document: with word/document.xml, what makes a zip a .docx.
DOCX_CONTENT_TYPES = (
    '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.wordprocessingml.document.main+xml"/></Types>'
)


def zip_bytes(*entries: tuple[str, str | bytes]) -> bytes:
    """A zip archive of these (name, content) entries, in this order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def docx_bytes() -> bytes:
    """A minimal but structurally real Word document."""
    return zip_bytes(
        ("[Content_Types].xml", DOCX_CONTENT_TYPES),
        ("_rels/.rels", "<Relationships/>"),
        ("word/document.xml", "<w:document/>"),
    )


def plain_zip_bytes() -> bytes:
    return zip_bytes(("notes.txt", "not a word document"))


def upload(name: str, content: bytes, content_type: str = "application/octet-stream") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type=content_type)


# What erasure blanks: "everything the applicant told us and everything staff wrote
# about them" (workflow.py). Spelled out, not read from workflow.ERASED_FIELDS, which
# would test that list against itself.
ERASED_FIELDS = [
    "full_name",
    "email",
    "matrix_username",
    "phone",
    "referral",
    "statement",
    "information_request",
    "verification_location",
    "verification_notes",
    "decision_reason",
    "message_to_applicant",
]


def make_application(**fields) -> Application:
    values = {
        "full_name": "Alex Example",
        "email": "alex@applicant.example",
        "referral": "Sam from the Lisbon meetup",
        "statement": "I organise the local chapter.",
        "consent_given_at": timezone.now(),
        # Confirmed and waiting in the queue, unless a test says otherwise.
        "status": Application.Status.SUBMITTED,
        "email_confirmed_at": timezone.now(),
    }
    values.update(fields)
    return Application.objects.create(**values)


def files_on_disk() -> list[str]:
    """Every file stored below EVIDENCE_ROOT, sorted."""
    root = Path(settings.EVIDENCE_ROOT)
    return sorted(str(path) for path in root.rglob("*") if path.is_file()) if root.exists() else []


def purge(evidence: Evidence) -> None:
    """What the retention purge leaves of one evidence (Evidence.objects.purge_if_due), due or not."""
    with transaction.atomic():
        name = evidence.forget_file()
    evidence.delete_stored_file(name)
