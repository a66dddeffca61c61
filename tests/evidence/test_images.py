"""Image evidence is stored without metadata, upright, and oversized images are refused early."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageFile, ImageStat, PngImagePlugin

from evidence.images import preview_png
from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import GIF_BYTES, jpeg_bytes, upload

GPS_LATITUDE = (38.0, 42.0, 30.5)


def jpeg_with_gps_and_orientation() -> bytes:
    """A 40×20 photo as a phone would send it: GPS, camera make, a comment, rotated by EXIF."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.Base.Orientation] = 6  # display rotated 90° clockwise
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = GPS_LATITUDE
    gps[ExifTags.GPS.GPSLongitudeRef] = "W"
    gps[ExifTags.GPS.GPSLongitude] = (9.0, 8.0, 20.0)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>Lisbon home</rdf:Description></x:xmpmeta>'
    return jpeg_bytes((40, 20), exif=exif, comment=b"taken at home", xmp=xmp)


def png_with_text_chunks() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Alex Example")
    info.add_itxt("Comment", "Home address: Rua 1, Lisbon")
    buffer = io.BytesIO()
    Image.new("RGBA", (12, 12), (0, 128, 0, 128)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A grey PNG of side×side pixels whose zeros compress to almost nothing."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


def reopen(validated) -> Image.Image:
    image = Image.open(io.BytesIO(validated.file.read()))
    validated.file.seek(0)
    return image


def test_jpeg_loses_gps_exif_xmp_and_comment_and_is_turned_upright():
    original = jpeg_with_gps_and_orientation()
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(ExifTags.IFD.GPSInfo)

    validated = validate_upload(upload("passport.jpg", original))

    stored = validated.file.read()
    image = Image.open(io.BytesIO(stored))
    assert len(image.getexif()) == 0
    assert not {"exif", "xmp", "comment", "icc_profile"} & set(image.info)
    assert b"PhoneMaker" not in stored and b"Lisbon" not in stored and b"taken at home" not in stored
    # Orientation 6 was applied to the pixels: 40×20 became 20×40.
    assert image.size == (20, 40)
    assert validated.sha256 == hashlib.sha256(stored).hexdigest()
    assert validated.size == len(stored)


def test_png_loses_its_text_chunks_and_keeps_its_pixels():
    validated = validate_upload(upload("scan.png", png_with_text_chunks()))
    image = reopen(validated)
    assert image.text == {}
    assert image.size == (12, 12)
    assert image.convert("RGBA").getpixel((5, 5)) == (0, 128, 0, 128)
    assert b"Alex Example" not in validated.file.read()


def test_gif_is_reencoded_and_still_a_gif():
    validated = validate_upload(upload("badge.gif", GIF_BYTES))
    assert reopen(validated).format == "GIF"


def palette_image_with_a_transparent_corner(image_format: str) -> bytes:
    """A 4×4 red palette image whose top-left pixel uses the transparent palette entry."""
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, transparency=0)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "image_format"), [("badge.gif", "GIF"), ("badge.png", "PNG")])
def test_a_transparent_pixel_stays_transparent(name, image_format):
    validated = validate_upload(upload(name, palette_image_with_a_transparent_corner(image_format)))
    image = reopen(validated).convert("RGBA")
    assert image.getpixel((0, 0))[3] == 0
    assert image.getpixel((2, 2)) == (255, 0, 0, 255)


def test_a_reencoded_photo_stays_as_legible_as_the_upload():
    # Black print on white, as on a passport's machine-readable lines.
    page = Image.new("RGB", (200, 60), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    draw.text((5, 5), "P<UTOEXAMPLE<<ALEX<<<<<<<<<", fill=(0, 0, 0))
    draw.text((5, 30), "L898902C36UTO7408122F1204159", fill=(0, 0, 0))
    buffer = io.BytesIO()
    page.save(buffer, format="JPEG", quality=95)
    uploaded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    stored = reopen(validate_upload(upload("passport.jpg", buffer.getvalue()))).convert("RGB")
    # On a 0-255 scale; a re-encoding at JPEG quality 50 already differs by about 3.
    assert ImageStat.Stat(ImageChops.difference(uploaded, stored).convert("L")).mean[0] < 2


def test_an_image_of_exactly_the_pixel_limit_is_kept_and_one_pixel_more_is_refused(settings):
    settings.EVIDENCE_MAX_IMAGE_PIXELS = 10_000
    assert validate_upload(upload("exact.jpg", jpeg_bytes((100, 100)))).content_type == "image/jpeg"
    with pytest.raises(ValidationError) as refused:
        validate_upload(upload("over.jpg", jpeg_bytes((10_001, 1))))
    assert refused.value.code == "too_many_pixels"


def test_decompression_bomb_png_is_refused_from_its_header_before_any_decoding():
    bomb = bomb_png(8000)  # 64 megapixels in about 64 KB
    assert len(bomb) < 200_000
    with mock.patch.object(
        ImageFile.ImageFile, "load", autospec=True, side_effect=ImageFile.ImageFile.load
    ) as load:
        with pytest.raises(ValidationError) as refused:
            validate_upload(upload("bomb.png", bomb))
        assert load.call_count == 0  # not one pixel decoded
        # The spy sees decoding when there is some.
        validate_upload(upload("small.png", bomb_png(8)))
        assert load.call_count > 0
    assert "too large an image" in refused.value.messages[0]
    assert "64.0 megapixels" in refused.value.messages[0]


def test_png_far_beyond_pillows_own_limit_is_refused_with_the_same_message():
    header_only = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ValidationError) as refused:
        validate_upload(upload("huge.png", header_only))
    assert "too large an image" in refused.value.messages[0]


def animated_gif(frames: int, side: int) -> bytes:
    buffer = io.BytesIO()
    # Red and blue in turn: no two frames alike, so the file keeps every one of them.
    colours = [(255, 0, 0), (0, 0, 255)]
    images = [Image.new("RGB", (side, side), colours[number % 2]) for number in range(frames)]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


def test_an_animated_gif_whose_frames_together_exceed_the_pixel_limit_is_refused(settings):
    # Each 60×60 frame (3,600 pixels) is within a 10,000-pixel limit; four of them are not.
    settings.EVIDENCE_MAX_IMAGE_PIXELS = 10_000
    assert Image.open(io.BytesIO(animated_gif(4, 60))).n_frames == 4
    assert validate_upload(upload("two.gif", animated_gif(2, 60))).content_type == "image/gif"
    with pytest.raises(ValidationError) as refused:
        validate_upload(upload("many.gif", animated_gif(4, 60)))
    assert refused.value.code == "too_many_pixels"
    assert "“many.gif” is too large an image" in refused.value.messages[0]


def test_truncated_jpeg_is_refused_with_a_clear_message():
    truncated = jpeg_bytes((64, 64))[:300]
    with pytest.raises(ValidationError) as refused:
        validate_upload(upload("cut.jpg", truncated))
    assert "could not be read as an image" in refused.value.messages[0]


def gif_of_two_identical_longest_frames() -> bytes:
    """85 bytes: two identical 1×1 frames shown 655.35 s each, the most a GIF frame can say.

    Pillow merges identical frames, and their summed duration no longer fits the format.
    """
    header = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    looping = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (
        b"!\xf9\x04\x04\xff\xff\x00\x00"  # graphic control: 0xFFFF hundredths of a second
        + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00"
    )
    return header + looping + frame * 2 + b";"


def test_gif_whose_merged_frames_overflow_is_refused_as_unreadable_and_logged_by_type(caplog):
    content = gif_of_two_identical_longest_frames()
    assert len(content) == 85
    with pytest.raises(ValidationError) as refused:
        validate_upload(upload("holiday.gif", content))
    assert refused.value.messages == [
        "“holiday.gif” could not be read as an image. Please send another copy or a PDF."
    ]
    (record,) = [record for record in caplog.records if record.name == "evidence.images"]
    assert record.levelname == "WARNING"
    assert record.getMessage() == "An uploaded image/gif image could not be re-encoded (OverflowError)."


def test_pdf_is_kept_byte_for_byte():
    from tests.factories import PDF_BYTES

    validated = validate_upload(upload("passport.pdf", PDF_BYTES))
    assert validated.file.read() == PDF_BYTES


@pytest.mark.django_db
def test_submitted_photo_is_stored_without_exif_and_hashed_as_stored(client, settings):
    from tests.vetting.test_apply import form_data

    response = client.post(
        "/apply/", {**form_data(), "evidence_1": upload("id.jpg", jpeg_with_gps_and_orientation())}
    )
    assert response.status_code == 302
    evidence = Evidence.objects.get()
    with evidence.file.open("rb") as stored_file:
        stored = stored_file.read()
    assert hashlib.sha256(stored).hexdigest() == evidence.sha256
    assert evidence.size == len(stored)
    image = Image.open(io.BytesIO(stored))
    assert len(image.getexif()) == 0
    assert image.size == (20, 40)


def test_preview_is_a_small_png():
    big = jpeg_bytes((1600, 900))
    preview = Image.open(io.BytesIO(preview_png(io.BytesIO(big), "image/jpeg")))
    assert preview.format == "PNG"
    assert max(preview.size) <= 480
