"""Detections on image files, as overlay PNGs and JSON.

For each image ``<stem>.<ext>`` :func:`predict_images` writes ``<stem>.png`` (the X-ray with one
coloured box per detection, labelled with the class name and score) and ``<stem>.json``::

    {"image": path, "width": W, "height": H, "score_thr": t,
     "detections": [{"label": name, "label_id": 1..9, "score": s,
                     "box_xyxy": [x1, y1, x2, y2]}, ...]}

in the image's own pixels, best score first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from oralx_lib import CLASSES
from oralx_lib.errors import ConfigError

from oralx_lib import palette
from .distributed import unwrap_model

#: One colour per class (label 1..9), readable on a gray radiograph and by colour-blind
#: readers (oralx_lib.palette.CLASS_COLORS, in label order).
CLASS_COLORS: tuple[str, ...] = tuple(palette.CLASS_COLORS.values())
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float ``(3, H, W)`` in ``[0, 1]`` (gray levels copied to 3 channels,
    like :class:`oralx_lib.data.OralXrays9`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such image file; pass existing image paths.")
    try:
        with Image.open(path) as im:
            gray = np.array(im.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read it as an image ({exc}).") from None
    return torch.from_numpy(gray).float().div_(255.0).unsqueeze(0).repeat(3, 1, 1)


def draw_detections(image: torch.Tensor, detections: Sequence[dict], *,
                    width: int | None = None) -> np.ndarray:
    """The image ``(3, H, W)`` in ``[0, 1]`` with boxes and labels drawn: ``(H, W, 3)`` uint8."""
    from torchvision.utils import draw_bounding_boxes

    canvas = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
    if detections:
        boxes = torch.tensor([d["box_xyxy"] for d in detections], dtype=torch.float32)
        labels = [f"{d['label']} {d['score']:.2f}" for d in detections]
        colors = [CLASS_COLORS[(d["label_id"] - 1) % len(CLASS_COLORS)] for d in detections]
        line = width or max(2, round(max(image.shape[-2:]) / 500))
        canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors=colors, width=line)
    return canvas.permute(1, 2, 0).numpy()


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}_{k}"
    used.add(stem)
    return stem


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    score_thr: float = 0.3,
    out_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run ``model`` (eval mode) on image files; optionally write overlays and JSON.

    Args:
        model: a detector with torchvision's eval contract (e.g. from
            :func:`oralx_lib.engine.load_model`).
        paths: image files (PNG, JPEG, ...).
        score_thr: keep detections with ``score >= score_thr``.
        out_dir: when given, write ``<stem>.png`` and ``<stem>.json`` per image there.
        device: where to run (default: the model's device).

    Returns:
        One dict per image, as in the JSON files (plus ``"overlay"`` / ``"json"`` paths when
        written).
    """
    net = unwrap_model(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    if not paths:
        raise ConfigError("predict: no image paths given.")
    images = [read_image(p) for p in paths]  # fail early on a bad path
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    was_training = net.training
    net.eval()
    results, used = [], set()
    try:
        for path, image in tqdm(list(zip(paths, images)), desc="predict", unit="img",
                                disable=not progress):
            output = net([image.to(device)])[0]
            keep = output["scores"] >= score_thr
            order = torch.argsort(output["scores"][keep], descending=True)
            boxes = output["boxes"][keep][order].float().cpu().tolist()
            scores = output["scores"][keep][order].float().cpu().tolist()
            labels = output["labels"][keep][order].cpu().tolist()
            detections = [
                {"label": CLASSES[int(lab) - 1] if 1 <= int(lab) <= len(CLASSES) else str(lab),
                 "label_id": int(lab), "score": round(float(s), 5),
                 "box_xyxy": [round(float(v), 2) for v in box]}
                for box, s, lab in zip(boxes, scores, labels)
            ]
            h, w = image.shape[-2:]
            result = {"image": str(path), "width": int(w), "height": int(h),
                      "score_thr": score_thr, "detections": detections}
            if out is not None:
                from PIL import Image

                stem = _unique_stem(Path(path), used)
                overlay, js = out / f"{stem}.png", out / f"{stem}.json"
                Image.fromarray(draw_detections(image, detections)).save(overlay)
                js.write_text(json.dumps(result, indent=2) + "\n")
                result = {**result, "overlay": str(overlay), "json": str(js)}
            results.append(result)
    finally:
        net.train(was_training)
    return results


def image_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders into their image files (sorted); keep files as given."""
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


__all__ = ["CLASS_COLORS", "draw_detections", "image_paths", "predict_images", "read_image"]
