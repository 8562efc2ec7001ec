"""A PNG decoded band by band gives exactly the whole decode's pixels, in every 8-bit mode;
the others are left to the whole decode, and broken data is a 400."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.errors import ApiError
from server.images import _to_rgb, load_image, open_upload
from server.png_bands import bands, layout_of

RNG = np.random.default_rng(0)


def png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def palette_image(height: int, width: int) -> Image.Image:
    image = Image.fromarray(RNG.integers(0, 256, (height, width), dtype=np.uint8), "P")
    image.putpalette(RNG.integers(0, 256, 768).tolist())
    return image


def pixels(height: int, width: int, channels: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)


CASES = {
    "RGB": lambda h, w: png(Image.fromarray(pixels(h, w, 3))),
    "RGBA": lambda h, w: png(Image.fromarray(pixels(h, w, 4))),
    "L": lambda h, w: png(Image.fromarray(pixels(h, w, 1)[..., 0])),
    "LA": lambda h, w: png(Image.fromarray(pixels(h, w, 2), "LA")),
    "P": lambda h, w: png(palette_image(h, w)),
    "P+tRNS": lambda h, w: png(palette_image(h, w), transparency=7),
}


@pytest.mark.parametrize("mode", CASES)
@pytest.mark.parametrize("size", [(1, 1), (37, 23), (130, 5), (1, 300), (200, 1)])
@pytest.mark.parametrize("band_rows", [1, 7, 64])
def test_bands_equal_the_whole_decode(mode, size, band_rows):
    data = CASES[mode](*size)
    layout = layout_of(data)
    assert layout is not None
    decoded = list(bands(layout, _to_rgb, band_rows))
    assert [top for top, _ in decoded] == list(range(0, size[0], band_rows))
    assert np.array_equal(np.concatenate([band for _, band in decoded]), load_image(data, 10**9))


def with_interlace(data: bytes) -> bytes:
    """The same file with its header's interlace byte set (and its CRC fixed)."""
    header = bytearray(data[16:29])
    header[12] = 1
    crc = struct.pack(">I", zlib.crc32(bytes(header), zlib.crc32(b"IHDR")))
    return data[:16] + bytes(header) + crc + data[33:]


@pytest.mark.parametrize(
    "data",
    [
        png(Image.fromarray(pixels(9, 9, 1)[..., 0].astype(np.uint16) * 257).convert("I;16")),
        png(Image.fromarray(pixels(9, 9, 3)).convert("1")),
        png(Image.fromarray(pixels(9, 9, 1)[..., 0] % 16, "P"), bits=4),
        with_interlace(CASES["RGB"](9, 9)),
        b"GIF89a not a png",
    ],
    ids=["16-bit", "1-bit", "4-bit palette", "interlaced", "not a PNG"],
)
def test_other_images_are_left_to_the_whole_decode(data):
    assert layout_of(data) is None


def truncated(data: bytes) -> bytes:
    """The file with its image data cut to a third (the chunk lengths fixed)."""
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    kept = data[start + 8 : start + 8 + length // 3]
    chunk = struct.pack(">I", len(kept)) + b"IDAT" + kept
    chunk += struct.pack(">I", zlib.crc32(kept, zlib.crc32(b"IDAT")))
    return data[:start] + chunk + b"\0\0\0\0IEND\xae\x42\x60\x82"


def test_broken_data_is_a_400_from_the_rows_it_never_gives():
    smooth = np.repeat(np.arange(300, dtype=np.uint8)[:, None, None], 200, axis=1)
    data = truncated(png(Image.fromarray(np.repeat(smooth, 3, axis=2))))
    arriving = open_upload(data, 10**9).arriving()
    with pytest.raises(ApiError) as refused:
        arriving.wait_rows(300)
    arriving.join()
    assert refused.value.status == 400 and refused.value.code == "undecodable_image"
    assert 0 < arriving.ready_rows < 300


def test_arriving_pixels_of_a_good_png_are_the_decoded_image():
    data = CASES["P+tRNS"](150, 40)
    arriving = open_upload(data, 10**9).arriving()
    arriving.wait_rows(150)
    arriving.join()
    assert arriving.error is None
    assert np.array_equal(arriving.array, load_image(data, 10**9))
