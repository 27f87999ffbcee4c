"""One image: the scene, the attenuation map, the radiograph's look (:func:`render_panoramic`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ...errors import ConfigError
from ..dataset import SPLITS
from .anatomy import _anatomy
from .geometry import _lowres_resize
from .scene import _sample_scene
from .settings import DEFAULTS, _MIN_SIZE
from .teeth import _draw_teeth


def render_panoramic(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[dict]]:
    """Draw one synthetic panoramic radiograph.

    Args:
        rng: the image's random generator (all randomness comes from it).
        width, height: image size in pixels (the real set is about 1991 x 1127).

    Returns:
        ``image``: uint8 ``(height, width)`` grayscale; ``annotations``: a list of
        ``{"category": name in oralx_lib.CLASSES, "bbox": [x, y, w, h]}`` (float pixels, tight
        around the drawn mask, inside the image, ``w, h >= 1``).

    The scene is drawn first (resolution-independent), then the attenuation map ``A``; the
    displayed image is ``I = (offset + contrast (u + a (u - G_8 * u)))^gamma`` with
    ``u = 1 - exp(-k A)``, blurred by ``G_sigma`` with grain added before the blur.
    """
    width, height = _check_size(width, height)
    sc = _sample_scene(rng)
    A, bone = _anatomy(sc, rng, width, height)
    A = np.ascontiguousarray(A, dtype=np.float32)
    anns = _draw_teeth(sc, A, width, height, bone)
    lk = sc.look
    u = 1.0 - np.exp(-lk["k"] * np.maximum(A, 0.0))
    # unsharp mask at quarter resolution (clinical edge enhancement)
    q = (max(width // 4, 4), max(height // 4, 4))
    low = np.asarray(Image.fromarray(u, mode="F").resize(q, Image.BILINEAR))
    low = _lowres_resize(ndimage.gaussian_filter(low, 2.0 * width / 1024.0), (width, height))
    u = u + lk["unsharp"] * (u - low)
    u = lk["offset"] + lk["contrast"] * u
    u += lk["noise"] * rng.standard_normal(u.shape, dtype=np.float32)
    u = ndimage.gaussian_filter(u, lk["blur"] * width / 1024.0)
    # gamma through a 1024-entry look-up table (the same as u ** gamma to within one grey level)
    lut = np.round(255.0 * np.linspace(0.0, 1.0, 1024) ** lk["gamma"]).astype(np.uint8)
    img = lut[(np.clip(u, 0.0, 1.0) * 1023.0 + 0.5).astype(np.intp)]
    anns = [a for a in anns if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
    return img, anns


def _check_size(width: Any, height: Any) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise ConfigError(f"width/height must be integers (got {width!r} x {height!r}).") from None
    if w < _MIN_SIZE[0] or h < _MIN_SIZE[1] or w != width or h != height:
        raise ConfigError(
            f"image size {width!r} x {height!r} is not usable: width and height must be integers "
            f">= {_MIN_SIZE[0]} x {_MIN_SIZE[1]}; the book uses {DEFAULTS['width']} x "
            f"{DEFAULTS['height']} (the real images are about 1991 x 1127)."
        )
    return w, h


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` (0-based) of ``split``:
    ``default_rng(SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split), int(index))))
