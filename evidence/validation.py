"""Validation of uploaded evidence: allowed types, sniffed content, size.

The extension AND the content libmagic sniffs must agree: a file is kept only
when both name one of the allowed types.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import struct
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass

import magic
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.utils.translation import gettext as _

from evidence.images import IMAGE_FORMATS, strip_metadata

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# Text that libmagic names more precisely but that is still harmless plain text:
# CSV, a saved e-mail or news post, a PGP-signed statement, JSON, and prose with a
# line starting "C " (libmagic's Fortran guess). Never HTML, SVG, XML or scripts.
PLAIN_TEXT_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "text/tab-separated-values",
        "message/rfc822",
        "message/news",
        "text/PGP",
        "application/pgp-signature",
        "application/json",
        "text/x-fortran",
    }
)

# extension -> (type we record, types libmagic may report for such a file)
ALLOWED_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    "jpg": ("image/jpeg", frozenset({"image/jpeg"})),
    "jpeg": ("image/jpeg", frozenset({"image/jpeg"})),
    "png": ("image/png", frozenset({"image/png"})),
    "gif": ("image/gif", frozenset({"image/gif"})),
    "pdf": ("application/pdf", frozenset({"application/pdf"})),
    # Read from the file itself, libmagic finds Word's stream in the OLE directory whatever
    # application saved it; "vnd.ms-office" is an Office container without one: no Word file.
    "doc": ("application/msword", frozenset({"application/msword"})),
    # libmagic reports some valid DOCX files as plain zip; _is_docx decides.
    "docx": (DOCX_TYPE, frozenset({DOCX_TYPE, "application/zip"})),
    "txt": ("text/plain", PLAIN_TEXT_TYPES),
}
ALLOWED_EXTENSIONS_TEXT = ", ".join(ALLOWED_TYPES)

# How much of the start libmagic reads; formats with an index (Word's OLE
# directory) are followed through the file beyond it (see _sniff).
SNIFF_BYTES = 64 * 1024
DISPLAY_NAME_MAX_LENGTH = 255
# What zipfile raises reading a corrupt or hostile archive's directory, besides
# BadZipFile: NotImplementedError for a "version needed to extract" it does not
# know, OverflowError and OSError for offsets past any file, ValueError for bad names.
CORRUPT_ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    ValueError,
    EOFError,
    OverflowError,
    NotImplementedError,
    struct.error,
)

logger = logging.getLogger(__name__)

# Readable names for what libmagic found, used in messages to applicants.
_KIND_NAMES = {
    "text/html": "an HTML page",
    "image/svg+xml": "an SVG image",
    "application/x-executable": "a program",
    "application/x-sharedlib": "a program",
    "application/x-pie-executable": "a program",
    "application/javascript": "a script",
    "text/javascript": "a script",
    "application/zip": "a zip archive",
    "text/xml": "an XML document",
    "application/xml": "an XML document",
    "text/x-shellscript": "a script",
    "text/x-script.python": "a script",
    "text/x-php": "a script",
    "text/x-perl": "a script",
    "text/x-ruby": "a script",
    "text/rtf": "a rich-text (RTF) document",
    "application/pdf": "a PDF document",
    "image/jpeg": "a JPEG image",
    "image/png": "a PNG image",
    "image/gif": "a GIF image",
    "application/msword": "an older Word document (.doc)",
    "text/plain": "plain text",
    "application/vnd.ms-excel": "an Excel spreadsheet",
    "application/vnd.ms-powerpoint": "a PowerPoint presentation",
    "application/x-msi": "a Windows installer",
    "application/vnd.ms-msi": "a Windows installer",
    # Office containers libmagic could not place as Word, Excel or PowerPoint.
    "application/x-ole-storage": "an unrecognised Office file",
    "application/vnd.ms-office": "an unrecognised Office file",
}


@dataclass(frozen=True)
class ValidatedUpload:
    # The upload itself, or for images its re-encoded copy without metadata.
    file: File
    display_name: str
    extension: str
    content_type: str
    size: int
    sha256: str
    note: str = ""


def display_name(name: str) -> str:
    """The uploaded name as harmless display text: no path, no control characters."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable()).strip()
    if len(name) > DISPLAY_NAME_MAX_LENGTH:
        _stem, dot, extension = name.rpartition(".")
        suffix = dot + extension if dot and len(extension) <= 10 else ""
        name = name[: DISPLAY_NAME_MAX_LENGTH - len(suffix)] + suffix
    return name or "unnamed"


def _extension(name: str) -> str:
    _stem, dot, extension = name.rpartition(".")
    return extension.lower() if dot else ""


def _is_docx(upload: UploadedFile) -> bool:
    upload.seek(0)
    try:
        with zipfile.ZipFile(upload) as archive:
            names = set(archive.namelist())
    except CORRUPT_ZIP_ERRORS as error:
        # The type only (a message can quote the archive): a bug hiding behind these shows in the log.
        logger.warning("An uploaded .docx could not be read as a zip archive (%s).", type(error).__name__)
        return False
    finally:
        upload.seek(0)
    return "[Content_Types].xml" in names and "word/document.xml" in names


@functools.cache
def _sniffer() -> magic.Magic:
    sniffer = magic.Magic(mime=True)
    # libmagic's own default is 7 MB in memory per file; the OLE directory is read by offset anyway.
    sniffer.setparam(magic.MAGIC_PARAM_BYTES_MAX, SNIFF_BYTES)
    return sniffer


def _sniff(upload: UploadedFile) -> str:
    """The type libmagic finds, reading the file itself rather than a copy of its start.

    From a file libmagic follows a Word file's OLE directory wherever it lies; from
    the first bytes alone it sees only "x-ole-storage" once the directory is past them.
    """
    if isinstance(upload, TemporaryUploadedFile):
        # Every real upload (FILE_UPLOAD_HANDLERS keeps them on disk).
        found = _sniffer().from_file(upload.temporary_file_path())
    else:
        with tempfile.TemporaryFile() as copy:
            for chunk in upload.chunks():
                copy.write(chunk)
            copy.seek(0)
            found = _sniffer().from_descriptor(copy.fileno())
    # Reading a file, libmagic's ELF check appends remarks: "application/x-executable, no program header".
    return found.split(",", 1)[0].strip()


def _content_mismatch(name: str, extension: str, sniffed: str) -> ValidationError:
    found = _KIND_NAMES.get(sniffed)
    params = {"name": name, "found": found, "extension": extension}
    # A MIME type means nothing to an applicant: name what we found only when we can say it in words.
    if extension == "txt":
        message = (
            _("“%(name)s” is not plain text: it looks like %(found)s.")
            if found
            else _("“%(name)s” is not plain text.")
        )
    elif found:
        message = _(
            "“%(name)s” does not contain what its name says: it looks like %(found)s, not a .%(extension)s file."
        )
    else:
        message = _("“%(name)s” does not contain what its name says: it is not a .%(extension)s file.")
    return ValidationError(message, params=params, code="content_mismatch")


def validate_upload(upload: UploadedFile, note: str = "") -> ValidatedUpload:
    """Check one uploaded file; raise ValidationError naming the file if it is refused."""
    name = display_name(upload.name)
    extension = _extension(name)
    if extension not in ALLOWED_TYPES:
        raise ValidationError(
            _("“%(name)s” is not an allowed type. Allowed: %(allowed)s."),
            params={"name": name, "allowed": ALLOWED_EXTENSIONS_TEXT},
            code="extension",
        )
    if upload.size == 0:
        raise ValidationError(_("“%(name)s” is empty."), params={"name": name}, code="empty")
    if upload.size > settings.EVIDENCE_MAX_FILE_SIZE:
        raise ValidationError(
            _("“%(name)s” is too large: each file may be at most %(limit)s MB."),
            params={"name": name, "limit": settings.EVIDENCE_MAX_FILE_SIZE // (1024 * 1024)},
            code="too_large",
        )

    sniffed = _sniff(upload)
    recorded_type, accepted_types = ALLOWED_TYPES[extension]
    content_ok = sniffed in accepted_types
    if content_ok and extension == "docx":
        content_ok = _is_docx(upload)
    if not content_ok:
        raise _content_mismatch(name, extension, sniffed)

    stored: File = upload
    if recorded_type in IMAGE_FORMATS:
        # What is stored, hashed and measured is the re-encoded copy without metadata.
        stored = strip_metadata(upload, recorded_type, name)

    # Hash and measure while streaming: never the whole file in memory.
    digest = hashlib.sha256()
    size = 0
    stored.seek(0)
    for chunk in stored.chunks():
        digest.update(chunk)
        size += len(chunk)
    stored.seek(0)
    return ValidatedUpload(
        file=stored,
        display_name=name,
        extension=extension,
        content_type=recorded_type,
        size=size,
        sha256=digest.hexdigest(),
        note=note,
    )
