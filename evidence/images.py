"""Image evidence: metadata stripping on upload and staff previews.

Photos of identity documents often carry GPS coordinates, the camera's serial
number or editing history (EXIF, XMP, comments, text chunks). Every JPEG, PNG
and GIF is therefore decoded and written again by Pillow with none of that;
only what the picture needs to look right (orientation applied, transparency,
GIF timing) survives. PDFs and Word files are kept as uploaded.
"""

from __future__ import annotations

import io
import logging
import struct
import tempfile
import warnings

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.utils.translation import gettext as _
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

# Recorded content type -> Pillow format name.
IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
PREVIEW_SIZE = (480, 480)
_MEGA = 1_000_000
# What Pillow raises for a corrupt or hostile file: OSError for truncated data,
# ValueError, SyntaxError, EOFError and struct.error from its parsers, and
# OverflowError for a value too big to write back (two identical GIF frames of
# 655.35 s each, which Pillow merges into one too long for the format).
CORRUPT_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, OverflowError, struct.error)

logger = logging.getLogger(__name__)


def _too_many_pixels(name: str, pixels: int) -> ValidationError:
    return ValidationError(
        _("“%(name)s” is too large an image (%(pixels)s megapixels); the limit is %(limit)s megapixels."),
        params={
            "name": name,
            "pixels": round(pixels / _MEGA, 1),
            "limit": settings.EVIDENCE_MAX_IMAGE_PIXELS // _MEGA,
        },
        code="too_many_pixels",
    )


def _unreadable(name: str) -> ValidationError:
    return ValidationError(
        _("“%(name)s” could not be read as an image. Please send another copy or a PDF."),
        params={"name": name},
        code="unreadable_image",
    )


def _open(source, content_type: str, name: str) -> Image.Image:
    """Open lazily (the header only) and refuse oversized images before any decoding."""
    try:
        # Pillow's own bomb check warns or raises at its default limit; ours is
        # stricter and comes right after, with a message for the applicant.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=[IMAGE_FORMATS[content_type]])
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, settings.EVIDENCE_MAX_IMAGE_PIXELS * 2) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise _unreadable(name) from None
    if image.width * image.height > settings.EVIDENCE_MAX_IMAGE_PIXELS:
        raise _too_many_pixels(name, image.width * image.height)
    return image


def _clean_frame(frame: Image.Image) -> Image.Image:
    """A copy of the pixels with no metadata attached."""
    clean = frame.copy()
    clean.info = {}
    return clean


def _reencode(image: Image.Image, content_type: str, name: str, target) -> None:
    image_format = IMAGE_FORMATS[content_type]
    if image_format == "GIF":
        frames = []
        budget = settings.EVIDENCE_MAX_IMAGE_PIXELS
        for frame in ImageSequence.Iterator(image):
            budget -= frame.width * frame.height
            if budget < 0:
                raise _too_many_pixels(name, settings.EVIDENCE_MAX_IMAGE_PIXELS - budget)
            frames.append(_clean_frame(frame))
        options = {"save_all": len(frames) > 1, "append_images": frames[1:]}
        for key in ("duration", "loop", "transparency", "disposal"):
            if key in image.info:
                options[key] = image.info[key]
        frames[0].save(target, format="GIF", **options)
        return
    transparency = image.info.get("transparency")
    # Apply the EXIF orientation to the pixels, since the tag itself goes.
    upright = ImageOps.exif_transpose(image)
    clean = _clean_frame(upright)
    if image_format == "JPEG":
        if clean.mode not in ("RGB", "L"):
            clean = clean.convert("RGB")
        clean.save(target, format="JPEG", quality=90, optimize=True)
    else:
        options = {"optimize": True}
        if transparency is not None:
            options["transparency"] = transparency
        clean.save(target, format="PNG", **options)


def strip_metadata(upload: UploadedFile, content_type: str, name: str) -> File:
    """Decode `upload` and write it again without metadata; return the new file (at position 0).

    Raises ValidationError, naming the file, when it is not a readable image
    or has more pixels than EVIDENCE_MAX_IMAGE_PIXELS.
    """
    upload.seek(0)
    image = _open(upload, content_type, name)
    target = tempfile.TemporaryFile()  # noqa: SIM115  (handed to the caller, closed with it)
    try:
        with image:
            image.load()
            _reencode(image, content_type, name, target)
    except ValidationError:
        target.close()
        raise
    except CORRUPT_IMAGE_ERRORS as error:
        target.close()
        # The type only (a message can quote the file): a bug hiding behind these shows in the log.
        logger.warning(
            "An uploaded %s image could not be re-encoded (%s).", content_type, type(error).__name__
        )
        raise _unreadable(name) from None
    target.seek(0)
    upload.seek(0)
    return File(target, name=upload.name)


def preview_png(source, content_type: str) -> bytes:
    """A small PNG of a stored image, for staff (the stored copy is already stripped)."""
    image = _open(source, content_type, "")
    with image:
        image.seek(0)
        thumbnail = _clean_frame(ImageOps.exif_transpose(image))
    thumbnail.thumbnail(PREVIEW_SIZE)
    if thumbnail.mode not in ("RGB", "RGBA", "L", "LA"):
        thumbnail = thumbnail.convert("RGBA")
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
