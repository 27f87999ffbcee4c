"""Detections on image files, as overlay PNGs and JSON.

For each image ``<stem>.<ext>`` :func:`predict_images` writes ``<stem>.pred.png`` (the X-ray
with one coloured box per detection, labelled with the class name and score) and
``<stem>.pred.json``::

    {"image": path, "width": W, "height": H, "score_thr": t,
     "detections": [{"label": name, "label_id": 1..9, "score": s,
                     "box_xyxy": [x1, y1, x2, y2]}, ...]}

in the image's own pixels, best score first.

The output names never coincide with an input, so predicting into the folder of the images is
safe; files named ``*.pred.png`` / ``*.pred.json`` are never taken as inputs, and an earlier
run's outputs are only replaced with ``overwrite=True`` (``--overwrite``). Images are decoded one
batch at a time, so memory stays bounded whatever the folder's size, and a file that cannot be
read is skipped with a :class:`PredictWarning` instead of stopping the run.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from oralx_lib import CLASSES
from oralx_lib.data.images import ImageReadError, read_gray
from oralx_lib.errors import ConfigError

from oralx_lib import palette
from .distributed import unwrap_model

#: One colour per class (label 1..9), readable on a gray radiograph and by colour-blind
#: readers (oralx_lib.palette.CLASS_COLORS, in label order).
CLASS_COLORS: tuple[str, ...] = tuple(palette.CLASS_COLORS.values())
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: What :func:`predict_images` appends to an image's stem for its overlay and its JSON.
OVERLAY_SUFFIX, JSON_SUFFIX = ".pred.png", ".pred.json"


class PredictWarning(UserWarning):
    """An input image was skipped (it cannot be read)."""


def is_prediction_file(path: str | os.PathLike) -> bool:
    """``True`` for the names :func:`predict_images` writes (``*.pred.png``, ``*.pred.json``)."""
    name = Path(path).name.lower()
    return name.endswith(OVERLAY_SUFFIX) or name.endswith(JSON_SUFFIX)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float ``(3, H, W)`` in ``[0, 1]`` (gray levels scaled by the file's bit
    depth and copied to 3 channels, like :class:`oralx_lib.data.OralXrays9`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such image file; pass existing image paths.")
    try:
        gray = read_gray(path)
    except ImageReadError as exc:
        raise ConfigError(str(exc)) from None
    return torch.from_numpy(gray).unsqueeze(0).repeat(3, 1, 1)


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


def plan_outputs(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 overwrite: bool = False) -> list[tuple[Path, Path]]:
    """The ``(overlay, json)`` paths :func:`predict_images` will write for ``paths``: one
    ``<stem>.pred.png`` / ``<stem>.pred.json`` pair per image (``<stem>_2`` ... when two inputs
    share a stem).

    Raises :class:`ConfigError` before anything is written when an output would replace an
    input (never allowed) or, unless ``overwrite``, a file that is already there.
    """
    out = Path(out_dir)
    used: set[str] = set()
    plan = []
    for path in paths:
        stem = _unique_stem(Path(path), used)
        plan.append((out / f"{stem}{OVERLAY_SUFFIX}", out / f"{stem}{JSON_SUFFIX}"))
    inputs = {os.path.realpath(p) for p in paths}
    clash = [str(p) for pair in plan for p in pair if os.path.realpath(p) in inputs]
    if clash:
        raise ConfigError(
            f"predict would write {clash[0]}, which is one of its input images; rename that "
            "input (names ending in .pred.png are kept for overlays)."
        )
    if not overwrite:
        existing = [p.name for pair in plan for p in pair if p.exists()]
        if existing:
            shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more"
                                               if len(existing) > 3 else "")
            raise ConfigError(
                f"--out {out} already holds {len(existing)} prediction file(s) from an earlier "
                f"run ({shown}). Choose another --out, or pass --overwrite "
                "(overwrite=True) to replace them; input images are never overwritten."
            )
    return plan


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    score_thr: float = 0.3,
    out_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    batch_size: int = 1,
    overwrite: bool = False,
) -> list[dict]:
    """Run ``model`` (eval mode) on image files; optionally write overlays and JSON.

    Args:
        model: a detector with torchvision's eval contract (e.g. from
            :func:`oralx_lib.engine.load_model`).
        paths: image files (PNG, JPEG, TIFF, 8 or 16 bit, ...).
        score_thr: keep detections with ``score >= score_thr``.
        out_dir: when given, write ``<stem>.pred.png`` and ``<stem>.pred.json`` per image there
            (see :func:`plan_outputs`; checked before any image is decoded).
        device: where to run (default: the model's device).
        batch_size: images decoded and run together; only one batch is in memory at a time.
        overwrite: replace the outputs of an earlier run in ``out_dir``.

    Returns:
        One dict per image that could be read, as in the JSON files (plus ``"overlay"`` /
        ``"json"`` paths when written). A file that cannot be decoded is skipped with a
        :class:`PredictWarning`; :class:`ConfigError` when a path does not exist or no image
        at all could be read.
    """
    net = unwrap_model(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    if not paths:
        raise ConfigError("predict: no image paths given.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"predict: batch_size={batch_size!r}; use an integer >= 1.")
    paths = [Path(p) for p in paths]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise ConfigError(f"{absent[0]}: no such image file; pass existing image paths"
                          + (f" ({len(absent)} missing)." if len(absent) > 1 else "."))
    out = Path(out_dir) if out_dir is not None else None
    plan = plan_outputs(paths, out, overwrite=overwrite) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    was_training = net.training
    net.eval()
    results, skipped = [], []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    try:
        for start in range(0, len(paths), batch_size):
            # Everything decoded for a batch is local to _predict_batch, so it is freed before
            # the next batch is decoded: memory is bounded by one batch.
            results += _predict_batch(net, device, paths, range(start, min(start + batch_size,
                                                                         len(paths))),
                                      plan, score_thr, skipped, bar)
    finally:
        bar.close()
        net.train(was_training)
    if not results:
        raise ConfigError(
            f"predict: none of the {len(paths)} image(s) could be read: "
            + "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        )
    return results


def _predict_batch(net, device, paths: list[Path], indices, plan, score_thr: float,
                   skipped: list[str], bar) -> list[dict]:
    """Decode the images ``indices``, run them together, write their outputs."""
    batch = []
    for i in indices:
        try:
            gray = read_gray(paths[i])
        except ImageReadError as exc:
            skipped.append(str(exc))
            warnings.warn(f"skipped {exc}", PredictWarning, stacklevel=3)
            bar.update(1)
            continue
        batch.append((i, torch.from_numpy(gray).unsqueeze(0).repeat(3, 1, 1)))
    if not batch:
        return []
    outputs = net([image.to(device) for _, image in batch])
    results = []
    for (i, image), output in zip(batch, outputs):
        result = _result(paths[i], image, output, score_thr)
        if plan is not None:
            from PIL import Image

            overlay, js = plan[i]
            Image.fromarray(draw_detections(image, result["detections"])).save(overlay)
            js.write_text(json.dumps(result, indent=2) + "\n")
            result = {**result, "overlay": str(overlay), "json": str(js)}
        results.append(result)
        bar.update(1)
    return results


def _result(path: Path, image: torch.Tensor, output: dict, score_thr: float) -> dict:
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
    return {"image": str(path), "width": int(w), "height": int(h), "score_thr": score_thr,
            "detections": detections}


def image_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders into their image files (sorted; earlier outputs ``*.pred.png`` are left
    out); keep files as given. Raises :class:`ConfigError` for a path that does not exist, an
    explicit overlay file, or when no image is found."""
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not is_prediction_file(p))
        elif not item.exists():
            raise ConfigError(f"{item}: no such image file or folder.")
        elif is_prediction_file(item):
            raise ConfigError(
                f"{item}: this is an output of predict (*{OVERLAY_SUFFIX}), not an X-ray; pass "
                "the original image."
            )
        else:
            paths.append(item)
    if not paths:
        raise ConfigError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, items))}."
        )
    return paths


__all__ = ["CLASS_COLORS", "JSON_SUFFIX", "OVERLAY_SUFFIX", "PredictWarning", "draw_detections",
           "image_paths", "is_prediction_file", "plan_outputs", "predict_images", "read_image"]
