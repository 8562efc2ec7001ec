"""Uploaded bytes -> an RGB uint8 array, with every limit checked before pixels are decoded.

The body is read with its size limit enforced while it streams in (`read_body`, for `/v1` and
`/v2` alike).

Pillow reads only the header on `Image.open`, so the pixel limit is judged from the declared
size before any pixel buffer exists: a decompression bomb is refused without allocating.
Palette, grey, 16-bit, RGBA and CMYK images become RGB; EXIF orientation is applied;
animated images give their first frame.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import Image, UnidentifiedImageError

from server import png_bands
from server.errors import ApiError

# Declared content types we take, and the decoded formats they may hold.
CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "MPO"}  # MPO: multi-picture JPEG from cameras

Image.MAX_IMAGE_PIXELS = None  # our own limit applies, before decoding
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Rows converted to the array at a time: the decoded image and the array are the only
# pixel-sized buffers alive at once.
DECODE_BAND_ROWS = 256


@dataclass(frozen=True)
class PendingImage:
    """An image whose size is known and checked, and whose pixels are made only when asked:
    the server decodes an upload when its request is admitted, so a request waiting in the
    queue holds its compressed bytes, not 3 bytes a pixel outside every budget."""

    height: int
    width: int
    make_pixels: Callable[[], np.ndarray]
    # Top-to-bottom (top row, rows) bands, for an image that can be decoded that way.
    make_bands: Callable[[], Iterator[tuple[int, np.ndarray]]] | None = None

    def pixels(self) -> np.ndarray:
        """The (height, width, 3) uint8 pixels (400 if the pixel data is broken)."""
        return self.make_pixels()

    def arriving(self, in_bands: bool = True) -> ArrivingPixels:
        """The pixels, decoded band by band on a thread when `in_bands` and the format allow
        (else whole, here: 400 if broken), to start an inference on before they are all in."""
        return ArrivingPixels(self, in_bands)

    @classmethod
    def of(cls, pixels: np.ndarray) -> PendingImage:
        """Pixels that are already decoded (a V2 UINT8 tensor)."""
        return cls(pixels.shape[0], pixels.shape[1], lambda: pixels)


class ArrivingPixels:
    """An image's pixels (`array`) while a thread decodes them: `wait_rows(n)` returns once
    the first n rows are written, or raises the 400 of broken data."""

    def __init__(self, image: PendingImage, in_bands: bool = True):
        self.height = image.height
        self.ready_rows = 0
        self.waited_s = 0.0  # time an inference spent waiting for rows: not the inference's
        self.error: ApiError | None = None
        self._changed = threading.Condition()
        self._thread = None
        if image.make_bands is None or not in_bands:
            self.array = image.pixels()
            self.ready_rows = image.height
            return
        self.array = np.empty((image.height, image.width, 3), dtype=np.uint8)
        self._thread = threading.Thread(
            target=self._fill, args=(image.make_bands,), name="qgn-decode", daemon=True
        )
        self._thread.start()

    def _fill(self, make_bands: Callable[[], Iterator[tuple[int, np.ndarray]]]) -> None:
        try:
            for top, band in make_bands():
                self.array[top : top + len(band)] = band
                with self._changed:
                    self.ready_rows = top + len(band)
                    self._changed.notify_all()
        except Exception as error:
            self.error = ApiError("undecodable_image", f"the image data is broken: {error}")
        finally:
            with self._changed:
                if self.ready_rows < self.height and self.error is None:
                    self.error = ApiError("undecodable_image", "the image data ends early")
                self._changed.notify_all()

    def wait_rows(self, rows: int) -> None:
        if self.ready_rows < rows:
            start = time.perf_counter()
            with self._changed:
                self._changed.wait_for(lambda: self.ready_rows >= rows or self.error is not None)
            self.waited_s += time.perf_counter() - start
        if self.ready_rows < rows:
            raise self.error

    def join(self) -> None:
        """Waits for the decoding thread to end (it ends on its own, in ~the decode's time)."""
        if self._thread is not None:
            self._thread.join()


def check_content_type(content_type: str | None) -> str:
    """The media type of a raw upload, or 415."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "image/jpg":
        media = "image/jpeg"
    if media not in CONTENT_TYPES:
        shown = media or "none"
        raise ApiError(
            "unsupported_media_type",
            f"content type {shown!r} is not accepted; send multipart/form-data with an 'image' "
            f"field, or the image bytes with one of: {', '.join(CONTENT_TYPES)}",
        )
    return media


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Opens the header only and checks format and pixel count (400, 413, 415)."""
    if not data:
        raise ApiError("empty_image", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ApiError(
            "undecodable_image", "the bytes are not an image in a format we can read"
        ) from None
    except Exception as error:  # Pillow raises many types on broken headers
        raise ApiError("undecodable_image", f"the image header is broken: {error}") from None
    if image.format not in FORMATS:
        raise ApiError(
            "unsupported_image_format",
            f"image format {image.format} is not supported; use PNG, JPEG, WebP, BMP or GIF",
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ApiError("undecodable_image", f"the image has no pixels ({width}×{height})")
    check_pixels(width, height, max_pixels)
    return image


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """413 when an image of this size is over the pixel limit (judged before decoding)."""
    if width * height > max_pixels:
        raise ApiError(
            "too_many_pixels",
            f"the image has {width}×{height} = {width * height} pixels; the limit is "
            f"{max_pixels} pixels",
        )


def check_upload_size(size: int, limit: int, what: str = "the image has") -> None:
    """413 when an upload of `size` bytes is over the limit."""
    if size > limit:
        raise ApiError("upload_too_large", f"{what} {size} bytes; the limit is {limit}")


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright) as the header says it, without decoding: a PNG's
    eXIf chunk counts only where it comes before the pixel data (reading further would
    decode them)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: shown as stored
        return 1


def open_upload(data: bytes, max_pixels: int) -> PendingImage:
    """Checks the header (400, 413, 415) and returns the image to decode on admission, with
    its size as shown (after EXIF rotation)."""
    image = open_image(data, max_pixels)
    turn = orientation(image)
    width, height = image.size
    if turn in (5, 6, 7, 8):
        width, height = height, width
    layout = png_bands.layout_of(data) if image.format == "PNG" and turn == 1 else None
    bands = None if layout is None else functools.partial(png_bands.bands, layout, _to_rgb)
    return PendingImage(height, width, functools.partial(decode_rgb, image, turn), bands)


def decode_rgb(image: Image.Image, turn: int | None = None) -> np.ndarray:
    """The first frame as an (H, W, 3) uint8 array, EXIF orientation applied (`turn`, or
    read from the header; 400 if the pixel data is broken). The image is closed after: its
    decoded pixels (4 bytes a pixel in Pillow) would otherwise live as long as whoever holds
    the image object, through the whole inference."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            turn = orientation(image) if turn is None else turn
            image.seek(0)
            image.load()
            shown = image.transpose(UPRIGHT[turn]) if turn in UPRIGHT else image
            return _to_rgb(shown)
    except ApiError:
        raise
    except Exception as error:
        raise ApiError("undecodable_image", f"the image data is broken: {error}") from None
    finally:
        image.close()
        _return_freed_pages()


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None  # glibc only
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _return_freed_pages() -> None:
    """Hands the pages of freed buffers back to the kernel. Pillow's decoded image is 16 MiB
    blocks; once glibc has raised its mmap threshold (it does after any large free) they come
    from the heap, and freeing them keeps them resident: 160 MB at 40 MP, under a container's
    memory limit, for the whole inference. One trim took 0.01 ms on this machine."""
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        check_upload_size(int(declared), limit, "the body has")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        check_upload_size(size, limit, "the body has at least")
        chunks.append(chunk)
    return b"".join(chunks)


def load_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Checked header, then the pixels: the uploaded bytes as (H, W, 3) uint8."""
    return decode_rgb(open_image(data, max_pixels))


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: keep the top 8 bits instead of clipping everything above 255 to white.
        wide = np.asarray(image).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.nan_to_num(np.asarray(image)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Band by band into one writable array: `np.asarray(image).copy()` would hold the image,
    # its bytes and the copy at once (10 bytes a pixel instead of 7 at 40 MP: 120 MB more).
    width, height = image.size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, DECODE_BAND_ROWS):
        bottom = min(top + DECODE_BAND_ROWS, height)
        pixels[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return pixels


def encode_mask_png(mask: np.ndarray, palette: list[list[int]]) -> bytes:
    """A palette PNG whose pixel values are the class ids. zlib's fastest level: a mask of a
    few regions compresses well at any level (1024×2048: 25 KB at level 1, 17 KB at the
    default 6), and level 1 takes 5.9 ms there instead of 8.9."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [channel for colour in palette for channel in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()
