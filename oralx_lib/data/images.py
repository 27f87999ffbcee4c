"""Reading radiographs from image files: bit depth, very large images, readable errors.

Radiographs come as 8-bit grayscale (JPEG, PNG ``L``), 16-bit grayscale (PNG / TIFF ``I;16``)
and sometimes as colour files. :func:`read_gray` turns each into gray levels in ``[0, 1]``:

- 8-bit files (``L``, ``P``, ``RGB``, ...): colour is converted to luminance, then ``v / 255``;
- 16-bit grayscale: ``v / (2**bits - 1)`` where ``bits`` is the smallest of 8, 10, 12, 14 and
  16 that holds the brightest pixel. A 12-bit detector's values stored as they are in a 16-bit
  file (``0..4095``) therefore fill ``[0, 1]`` like an 8-bit copy of the same picture instead of
  looking nearly black, and a full-range 16-bit file (including one written to the PNG
  specification, which scales 12-bit samples up to 16 bits) uses all 16 bits. The rule reads
  the pixels, not a header field, because files in the wild disagree on what their headers
  (PNG ``sBIT``) mean; a radiograph always holds bright structures (enamel, bone, implants), so
  its brightest pixel tells the depth. Only a nearly black 16-bit file would be brightened.

Converting a 16-bit file with Pillow's ``convert("L")`` would clip every value above 255 to
white, which is why nothing here does that.

Pillow refuses images of more than ``2 x Image.MAX_IMAGE_PIXELS`` pixels (about 179 million) as
possible "decompression bombs". A genuine, very large radiograph can be allowed by setting the
environment variable ``ORALX_MAX_IMAGE_PIXELS`` to a larger count (``0`` removes the limit);
:class:`ImageReadError` says so when it happens.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from oralx_lib.errors import ConfigError, ImageReadError

#: Environment variable that sets ``PIL.Image.MAX_IMAGE_PIXELS`` (``0`` or ``none``: no limit).
PIXEL_LIMIT_ENV = "ORALX_MAX_IMAGE_PIXELS"

#: The bit depths a 16-bit file's values may be scaled with (the smallest that holds its
#: brightest pixel is used).
CANDIDATE_BITS = (8, 10, 12, 14, 16)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def apply_pixel_limit() -> int | None:
    """Set ``PIL.Image.MAX_IMAGE_PIXELS`` from ``$ORALX_MAX_IMAGE_PIXELS`` when it is set;
    returns the limit in force (``None``: no limit)."""
    from PIL import Image

    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if text:
        if text.lower() in ("0", "none", "off"):
            Image.MAX_IMAGE_PIXELS = None
        else:
            try:
                value = int(float(text))
            except ValueError:
                value = -1
            if value < 0:
                raise ConfigError(
                    f"{PIXEL_LIMIT_ENV}={text!r}: write a pixel count such as 500000000, or 0 "
                    "for no limit."
                )
            Image.MAX_IMAGE_PIXELS = value or None
    return Image.MAX_IMAGE_PIXELS


def _bomb_message(path: Path, exc: BaseException) -> str:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return (
        f"{path}: the image is larger than Pillow's safety limit ({exc}). Pillow refuses "
        f"images of more than {2 * limit:,} pixels as possible decompression bombs. "
        if limit else f"{path}: refused as a possible decompression bomb ({exc}). "
    ) + (
        f"If it is a genuine radiograph you trust, allow it with the environment variable "
        f"{PIXEL_LIMIT_ENV}=<pixels> (e.g. {PIXEL_LIMIT_ENV}=500000000; 0 = no limit); "
        "decoding needs about 16 bytes of memory per pixel. Or downscale the file first."
    )


@contextlib.contextmanager
def open_image(path: str | os.PathLike):
    """``PIL.Image.open`` (header only, nothing decoded yet) with :class:`ImageReadError`
    naming the file for missing, empty, unrecognised and oversized files."""
    from PIL import Image

    path = Path(path)
    apply_pixel_limit()
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(_bomb_message(path, exc)) from None
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file.") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; all mean "cannot read"
        raise ImageReadError(f"{path}: {_describe_failure(path, exc)}") from None
    with im:
        yield im


def _describe_failure(path: Path, exc: BaseException) -> str:
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)."
    except OSError:
        pass
    return (f"cannot decode it as an image; the file is damaged or not an image "
            f"({type(exc).__name__}: {exc}).")


def image_header(path: str | os.PathLike) -> tuple[int, int, str]:
    """``(width, height, mode)`` from the file's header, without decoding the pixels."""
    with open_image(path) as im:
        return im.size[0], im.size[1], im.mode


def significant_bits(values: np.ndarray) -> int:
    """The bit depth used to scale the gray values of a 16-bit file: the smallest of
    :data:`CANDIDATE_BITS` that holds its largest value."""
    peak = int(values.max()) if values.size else 0
    for bits in CANDIDATE_BITS:
        if peak < 2**bits:
            return bits
    return 16


def decode_gray(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an image file as gray levels: ``(float32 (H, W) array in [0, 1], bits)`` where
    ``bits`` is the bit depth the values were scaled with (8 for 8-bit and colour files, 32 for
    a floating-point file already in ``[0, 1]``)."""
    path = Path(path)
    with open_image(path) as im:
        try:
            if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
                raw = np.asarray(im)
            else:
                raw = np.asarray(im.convert("L"))
            mode = im.mode
        except Exception as exc:  # noqa: BLE001 - a truncated or damaged file
            raise ImageReadError(f"{path}: {_describe_failure(path, exc)}") from None
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, 8
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw).all()
        if finite and raw.size and raw.min() >= 0 and raw.max() <= 1:
            return raw.astype(np.float32), 32
        if not (finite and raw.size and raw.min() >= 0 and raw.max() <= 65535
                and np.all(raw == np.round(raw))):
            raise ImageReadError(
                f"{path}: floating-point pixels outside [0, 1] (min {np.nanmin(raw):g}, max "
                f"{np.nanmax(raw):g}); save the radiograph as an 8- or 16-bit grayscale PNG."
            )
    if raw.size and (raw.min() < 0 or raw.max() > 65535):
        raise ImageReadError(
            f"{path}: {mode} pixels outside 0..65535 (min {raw.min()}, max {raw.max()}); "
            "save the radiograph as an 8- or 16-bit grayscale PNG."
        )
    bits = significant_bits(raw)
    scale = float(2**bits - 1)
    gray = raw.astype(np.float32)
    gray /= scale
    np.minimum(gray, 1.0, out=gray)
    return gray, bits


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """:func:`decode_gray` without the bit depth: float32 ``(H, W)`` in ``[0, 1]``."""
    return decode_gray(path)[0]


__all__ = [
    "CANDIDATE_BITS",
    "PIXEL_LIMIT_ENV",
    "ImageReadError",
    "apply_pixel_limit",
    "decode_gray",
    "image_header",
    "open_image",
    "read_gray",
    "significant_bits",
]
