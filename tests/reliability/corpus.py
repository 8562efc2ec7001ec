"""Hostile and odd uploads, each written here from scratch, with the answer the contract promises.

Every item says what it is, how it is sent, and the status (and error code) the API promises
for it; a 200 item may also say the width and height it must report (EXIF rotation) or the
image whose result it must equal (animated images: the first frame).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from tests.server.conftest import encode, png_chunk, png_header_only, scene_image


@dataclass(frozen=True)
class Upload:
    name: str
    body: bytes = b""
    content_type: str | None = "image/png"
    # Multipart fields as httpx `files=` takes them; when set, `body` is not sent.
    files: list | None = None
    status: int = 200
    code: str | None = None
    size: tuple[int, int] | None = None  # (width, height) a 200 must report
    same_as: bytes | None = None  # a PNG whose 200 result this one must equal
    bomb: bool = False  # the declared pixels would take gigabytes: the RSS must not move


def png_with_bad_crc() -> bytes:
    """A valid PNG whose IHDR checksum is wrong."""
    data = bytearray(encode(scene_image(32, 32)))
    data[29] ^= 0xFF  # the last byte of the IHDR CRC (8 signature + 4 + 4 + 13)
    return bytes(data)


def png_with_text_bomb() -> bytes:
    """A small PNG carrying a zTXt chunk that inflates to 64 MiB."""
    plain = encode(scene_image(32, 32))
    bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (64 << 20), 9))
    return plain[:33] + bomb + plain[33:]  # after the IHDR


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header is rewritten to claim another size."""
    data = bytearray(encode(scene_image(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A real animated WebP whose VP8X canvas is rewritten to `width`×`height` (its small
    frames still fit, so the decoder accepts it)."""
    data = bytearray(animated("WEBP", lossless=True)[0])
    vp8x = data.index(b"VP8X") + 8
    data[vp8x + 4 : vp8x + 7] = (width - 1).to_bytes(3, "little")
    data[vp8x + 7 : vp8x + 10] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + 64, 0, 0, 14 + len(header)) + header
    # 64 bytes of pixel data promised, none sent


def animated(fmt: str, **save) -> tuple[bytes, bytes]:
    """A two-frame animation, and its first frame alone as a PNG."""
    first = Image.fromarray(scene_image(64, 96, seed=1))
    second = Image.fromarray(scene_image(64, 96, seed=2))
    buffer = io.BytesIO()
    first.save(buffer, format=fmt, save_all=True, append_images=[second], duration=80, **save)
    frame = Image.open(io.BytesIO(buffer.getvalue()))
    frame.seek(0)
    return buffer.getvalue(), encode(frame.convert("RGB"))


def exif_rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(scene_image(48, 80)), "JPEG", exif=exif)


@cache
def hostile_uploads() -> tuple[Upload, ...]:
    png = encode(scene_image(64, 96))
    jpeg = encode(scene_image(64, 96), "JPEG")
    rng = np.random.default_rng(7)
    gif, gif_first = animated("GIF")
    webp, webp_first = animated("WEBP", lossless=True)
    sixteen = Image.fromarray((np.arange(48 * 80).reshape(48, 80) * 13 % 65536).astype(np.uint16))
    return (
        # Broken or not images at all: 400.
        Upload("zero-byte body", b"", status=400, code="empty_image"),
        Upload("truncated PNG", png[: len(png) // 2], status=400, code="undecodable_image"),
        Upload("truncated JPEG", jpeg[:300], "image/jpeg", status=400, code="undecodable_image"),
        Upload("text as image/png", b"a text, not a picture\n" * 20, status=400),
        Upload("random bytes as image/jpeg", rng.bytes(4096), "image/jpeg", status=400),
        Upload("PNG with a bad IHDR CRC", png_with_bad_crc(), status=400),
        Upload("PNG with a zTXt bomb", png_with_text_bomb(), status=400),
        Upload("BMP header, no pixels", bmp_claiming(8, 8), "image/bmp", status=400),
        # Bombs: refused from the header, before a pixel is allocated.
        Upload(
            "PNG header 100000x100000",
            png_header_only(100_000, 100_000),
            status=413,
            code="too_many_pixels",
            bomb=True,
        ),
        Upload(
            "JPEG header 65000x65000",
            jpeg_claiming(65_000, 65_000),
            "image/jpeg",
            status=413,
            code="too_many_pixels",
            bomb=True,
        ),
        Upload(
            "GIF header 65535x65535",
            gif_claiming(65_535, 65_535),
            "image/gif",
            status=413,
            code="too_many_pixels",
            bomb=True,
        ),
        Upload(
            "WebP header 16383x16383",
            webp_claiming(16_383, 16_383),
            "image/webp",
            status=413,
            code="too_many_pixels",
            bomb=True,
        ),
        Upload(
            "BMP header 60000x60000",
            bmp_claiming(60_000, 60_000),
            "image/bmp",
            status=413,
            code="too_many_pixels",
            bomb=True,
        ),
        # Formats and media types we do not take: 415.
        Upload("TIFF as image/tiff", encode(scene_image(), "TIFF"), "image/tiff", status=415),
        Upload(
            "TIFF as image/png",
            encode(scene_image(), "TIFF"),
            status=415,
            code="unsupported_image_format",
        ),
        Upload(
            "ICO as image/png",
            encode(Image.fromarray(scene_image(32, 32)), "ICO"),
            status=415,
            code="unsupported_image_format",
        ),
        Upload("PNG with no content type", png, None, status=415, code="unsupported_media_type"),
        Upload("PNG as text/plain", png, "text/plain", status=415, code="unsupported_media_type"),
        # Multipart mistakes.
        Upload(
            "multipart without an image field",
            files=[("picture", ("a.png", png, "image/png"))],
            status=422,
            code="missing_image",
        ),
        Upload(
            "multipart with the image twice",
            files=[("image", ("a.png", png, "image/png"))] * 2,
            status=422,
            code="several_images",
        ),
        Upload(
            "multipart with a broken boundary",
            b'--nope\r\nContent-Disposition: form-data; name="image"\r\n\r\nxx',
            "multipart/form-data; boundary=other",
            status=400,
            code="bad_multipart",
        ),
        # Odd but valid: 200 with a correct result.
        Upload("1x1", encode(scene_image(1, 1)), size=(1, 1)),
        Upload("1x4096", encode(scene_image(4096, 1)), size=(1, 4096)),
        Upload("4096x1", encode(scene_image(1, 4096)), size=(4096, 1)),
        Upload("16-bit grey PNG", encode(sixteen), size=(80, 48)),
        Upload(
            "16-bit RGB PNG",
            png_rgb16(48, 80),
            size=(80, 48),
        ),
        Upload(
            "palette PNG",
            encode(Image.fromarray(scene_image(48, 80)).convert("P")),
            size=(80, 48),
        ),
        Upload(
            "grey PNG", encode(Image.fromarray(scene_image(48, 80)).convert("L")), size=(80, 48)
        ),
        Upload(
            "1-bit BMP",
            encode(Image.fromarray(scene_image(48, 80)).convert("1"), "BMP"),
            "image/bmp",
            size=(80, 48),
        ),
        Upload(
            "CMYK JPEG",
            encode(Image.fromarray(scene_image(48, 80)).convert("CMYK"), "JPEG"),
            "image/jpeg",
            size=(80, 48),
        ),
        Upload(
            "RGBA PNG",
            encode(Image.fromarray(scene_image(48, 80)).convert("RGBA")),
            size=(80, 48),
        ),
        Upload("animated GIF", gif, "image/gif", size=(96, 64), same_as=gif_first),
        Upload("animated WebP", webp, "image/webp", size=(96, 64), same_as=webp_first),
        Upload("EXIF orientation 6 JPEG", exif_rotated(6), "image/jpeg", size=(48, 80)),
        Upload("EXIF orientation 8 JPEG", exif_rotated(8), "image/jpeg", size=(48, 80)),
        Upload("EXIF orientation 3 JPEG", exif_rotated(3), "image/jpeg", size=(80, 48)),
        Upload("image/jpg alias", jpeg, "image/jpg", size=(96, 64)),
    )


def png_rgb16(height: int, width: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one, so it is built by hand)."""
    pixels = (np.arange(height * width * 3).reshape(height, width, 3) * 97 % 65536).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )
