"""A PNG decoded a band of rows at a time, so an inference can start on its first rows.

Decoding a 1024×2048 PNG takes ~35 ms on one core, a tenth of a `pc` inference; decoded in
bands on a second thread it hides behind the encoder's first pass (`model.arrival`). zlib
inflates the image data incrementally; each band's filtered rows, after the unfiltered row
above them (filter type 0), are wrapped as a small stored-deflate PNG that Pillow unfilters
and converts like any upload. Only 8-bit, non-interlaced PNGs are decoded this way (the
common case); `layout_of` says None for the rest, which are decoded whole.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples a pixel
# Chunks a band needs beside its pixels: the palette and the transparency.
KEPT = (b"PLTE", b"tRNS")
BAND_ROWS = 64


@dataclass(frozen=True)
class PngLayout:
    width: int
    height: int
    colour_type: int
    kept: bytes  # the PLTE and tRNS chunks, as they are
    data: list[memoryview]  # the IDAT payloads, in order

    @property
    def row_bytes(self) -> int:
        return self.width * CHANNELS[self.colour_type]


def layout_of(data: bytes) -> PngLayout | None:
    """The image's chunks, if it is an 8-bit non-interlaced PNG; None otherwise (or when the
    chunks are not as the header says: the whole decode reports that)."""
    if not data.startswith(SIGNATURE):
        return None
    view, at, kept, parts, header = memoryview(data), len(SIGNATURE), [], [], None
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", view[at : at + 8])
        end = at + 12 + length
        if end > len(data):
            return None
        if kind == b"IHDR" and length == 13:
            header = struct.unpack(">IIBBBBB", view[at + 8 : at + 21])
        elif kind in KEPT:
            kept.append(view[at:end])
        elif kind == b"IDAT":
            parts.append(view[at + 8 : at + 8 + length])
        elif kind == b"IEND":
            break
        at = end
    if header is None or not parts:
        return None
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 8 or interlace or colour_type not in CHANNELS or not width or not height:
        return None
    return PngLayout(width, height, colour_type, b"".join(bytes(k) for k in kept), parts)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _band_png(layout: PngLayout, rows: int, filtered: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", layout.width, rows, 8, layout.colour_type, 0, 0, 0)
    return b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", header),
            layout.kept,
            _chunk(b"IDAT", zlib.compress(filtered, 0)),
            _chunk(b"IEND", b""),
        )
    )


def bands(
    layout: PngLayout, to_rgb: Callable[[Image.Image], np.ndarray], band_rows: int = BAND_ROWS
) -> Iterator[tuple[int, np.ndarray]]:
    """(top row, (rows, W, 3) uint8) bands of the image top to bottom, converted by `to_rgb`.
    Raises (ValueError, zlib.error, Pillow's errors) when the data is broken or ends early."""
    stride = layout.row_bytes + 1  # each row starts with its filter type
    inflate = zlib.decompressobj()
    parts = iter(layout.data)
    above = None  # the last row of the previous band, unfiltered, with filter type 0
    for top in range(0, layout.height, band_rows):
        rows = min(band_rows, layout.height - top)
        want = rows * stride
        filtered, have = [], 0
        while have < want:
            tail = inflate.unconsumed_tail or next(parts, None)
            if tail is None:
                raise ValueError(f"the image data ends at row {top + have // stride}")
            out = inflate.decompress(tail, want - have)
            filtered.append(out)
            have += len(out)
        band = b"".join(filtered if above is None else [above, *filtered])
        png = _band_png(layout, rows + (above is not None), band)
        first = 0 if above is None else 1  # the row above, decoded again
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            above = b"\x00" + np.asarray(image)[-1].tobytes()
            pixels = to_rgb(image)
        yield top, pixels[first:]
