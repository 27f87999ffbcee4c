"""Detection transforms for panoramic X-rays (``torchvision.transforms.v2``).

Every transform is called as ``transform(image, target)`` with a ``tv_tensors.Image`` and a
target whose ``boxes`` is a ``tv_tensors.BoundingBoxes``: geometry moves image and boxes together,
and :class:`torchvision.transforms.v2.SanitizeBoundingBoxes` drops boxes that a crop made smaller
than a pixel (with their labels).

The released training recipe (MOQAM.md) is

1. horizontal flip with probability 0.5, then one of
2. (a) resize the short side to one of 480..800 (step 32), long side <= 1333; or
   (b) resize the short side to one of 400/500/600, random crop of 384..600 px, then (a).

Our detectors resize inside the model (torchvision's ``GeneralizedRCNNTransform`` with
``min_size=(480, ..., 800)`` picks a random short side in training), so the ``released`` preset
stops before step (a) unless ``resize=True``: applying (a) twice would undo the multi-scale draw.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

#: Short sides of the released multi-scale training (480..800 step 32) and its long-side cap.
RELEASED_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))
RELEASED_MAX_SIZE = 1333
#: Short sides of the crop branch and the crop size range of the released recipe.
RELEASED_CROP_SCALES: tuple[int, ...] = (400, 500, 600)
RELEASED_CROP_RANGE: tuple[int, int] = (384, 600)

PRESETS = ("released", "light", "none")


class RandomSizeCrop(v2.Transform):
    """Crop a random ``h x w`` window with ``h, w`` drawn uniformly from ``[min_size, max_size]``.

    Each side is capped at the image's own side (a small image is kept whole along that axis);
    the window's position is uniform. Boxes are cut to the window (sanitise afterwards).
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs):  # torchvision >= 0.21
        height, width = v2.query_size(flat_inputs)

        def draw(side: int) -> int:
            hi = min(side, self.max_size)
            lo = min(self.min_size, hi)
            return int(torch.randint(lo, hi + 1, ()).item())

        h, w = draw(height), draw(width)
        top = int(torch.randint(0, height - h + 1, ()).item())
        left = int(torch.randint(0, width - w + 1, ()).item())
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt, params):  # torchvision >= 0.21
        return self._call_kernel(F.crop, inpt, **params)

    # torchvision 0.18-0.20 spell the two hooks with a leading underscore.
    _get_params = make_params
    _transform = transform


def _per_box_fields(inputs):
    """The per-box tensors that must be dropped together with their boxes (for
    ``SanitizeBoundingBoxes``): ``labels`` and, when present, ``iscrowd``."""
    target = inputs
    if isinstance(inputs, (tuple, list)):
        target = next((x for x in inputs if isinstance(x, dict)), None)
    if not isinstance(target, dict):
        return None
    fields = tuple(target[k] for k in ("labels", "iscrowd") if k in target)
    return fields or None


def released_crop_branch() -> v2.Transform:
    """Branch (b) of the released recipe up to the crop: short side 400/500/600, crop 384..600."""
    return v2.Compose([
        v2.RandomShortestSize(list(RELEASED_CROP_SCALES), max_size=RELEASED_MAX_SIZE),
        RandomSizeCrop(*RELEASED_CROP_RANGE),
    ])


def multiscale_resize(scales=RELEASED_SCALES, max_size: int = RELEASED_MAX_SIZE) -> v2.Transform:
    """Resize the short side to a random choice of ``scales``, keeping the aspect ratio, with the
    long side at most ``max_size``."""
    return v2.RandomShortestSize(list(scales), max_size=max_size)


def radiograph_photometric(p: float = 0.5) -> v2.Transform:
    """Mild intensity changes a radiograph can show between machines: brightness and contrast
    within +-15 %, and a slight blur. No hue or saturation change (the images are grayscale)."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.15, contrast=0.15)], p=p),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.0))], p=p / 2),
    ])


def scale_to_input(min_size: int, max_size: int) -> v2.Transform:
    """Resize like a detector's test-time transform: scale ``min(min_size / short side,
    max_size / long side)``, aspect ratio kept (``GeneralizedRCNNTransform``'s rule). With the
    released test scale (800, 1333) a synthetic 1024 x 580 panorama becomes 1333 x 755, the size a
    real 1991 x 1127 image has at the release's network input."""
    return v2.Resize(int(min_size), max_size=int(max_size), antialias=True)


def _pair(name: str, value) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two integers, got {value!r}") from None
    if not 0 < a or (name == "crop" and a > b) or b <= 0:
        raise ValueError(f"{name}={value!r}: need two positive integers"
                         + (" with min <= max" if name == "crop" else ""))
    return a, b


def train_transforms(preset: str = "released", *, resize: bool = False,
                     photometric: bool = False, scale_to=None, crop=None) -> v2.Transform:
    """Training augmentation.

    Args:
        preset: ``"released"`` (flip 0.5, then identity or the crop branch with probability
            1/2 each), ``"light"`` (flip and mild photometric changes: for tiny CPU runs) or
            ``"none"``.
        resize: append the multi-scale resize (step (a)); only for models that do not resize
            internally.
        photometric: add :func:`radiograph_photometric` to the ``released`` preset (not in the
            release).
        scale_to: ``(min_size, max_size)``: first resize every image to the network-input scale
            (:func:`scale_to_input`), for models built with ``resize_in_training=False``.
        crop: ``(min, max)``: after the flip, a random crop of ``h, w`` in ``[min, max]``
            pixels (:class:`RandomSizeCrop`; the release's crop branch draws 384..600). A crop
            may hold no box (the detectors train on empty images as negatives).

    With ``scale_to`` and ``crop`` a CPU step costs what its crop costs, while objects keep the
    pixel size they have at the full test scale (``oralx_lib.profiles``, ``release_scale``).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; choose one of {PRESETS}")
    steps: list[v2.Transform] = []
    if scale_to is not None:
        steps.append(scale_to_input(*_pair("scale_to", scale_to)))
    if preset == "released":
        steps += [v2.RandomHorizontalFlip(0.5),
                  v2.RandomChoice([v2.Identity(), released_crop_branch()])]
        if crop is not None:
            steps.append(RandomSizeCrop(*_pair("crop", crop)))
        if photometric:
            steps.append(radiograph_photometric())
    elif preset == "light":
        steps.append(v2.RandomHorizontalFlip(0.5))
        if crop is not None:
            steps.append(RandomSizeCrop(*_pair("crop", crop)))
        steps.append(radiograph_photometric())
    elif crop is not None:
        steps.append(RandomSizeCrop(*_pair("crop", crop)))
    if resize:
        steps.append(multiscale_resize())
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_per_box_fields))
    return v2.Compose(steps)


def eval_transforms() -> v2.Transform:
    """Evaluation transforms: none (the model resizes to its test scale itself)."""
    return v2.Identity()
