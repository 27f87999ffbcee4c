"""Sliding-window inference: a detector run on overlapping tiles of each image, at the scale it
would see the whole image, and the tiles' detections merged into one list per image.

Why. The ``release_scale`` profile (:mod:`oralx_lib.profiles`) trains on random 384 x 384 crops of
images resized to the release's 1333 x 755, to keep a CPU step cheap, and evaluates on the whole
1333 x 755 image. A two-stage detector works in pixels, so a 30-pixel object looks the same in
both. The query-based MOQAM works in coordinates normalised by its input (encoder proposals of
``0.05 * 2**l`` of the input, boxes in ``[0, 1]``, positional encodings of the input's size): run
on the whole image it meets priors 3.5 times larger in pixels than in training.
:class:`TiledDetector` gives such a model at test time what it had in training: inputs of the
crop's size at the same object scale.

How, per image:

1. resize it with the model's own eval rule (its ``transform``: short side ``min_size[-1]``, long
   side at most ``max_size``), exactly as a whole-image forward would;
2. cut the resized image into ``tile x tile`` windows that overlap by at least ``overlap`` pixels
   and cover it (:func:`tile_origins`; the last window of a row or column is flush with the edge);
3. run each window as an image of its own (the model's resize switched off for it, so the scale
   of step 1 is kept) and shift its boxes back;
4. keep a detection only in the window whose **core** holds the box's centre
   (:func:`core_bounds`: every pixel belongs to exactly one core, the cores meet half-way
   through each overlap). An object no larger than the overlap whose centre is in a core lies
   wholly inside that window, so it is kept once and uncut;
5. remove the remaining duplicates across windows (same class, IoU above ``iou_threshold``,
   lower score, another window: :func:`merge_tiles`), keep the ``detections_per_img`` best and
   map the boxes to the original image's pixels.

``TiledDetector`` is an ``nn.Module`` with the detectors' eval contract, so
:func:`oralx_lib.engine.evaluate_model`, :func:`~oralx_lib.engine.predict_images` and the CLI
(``evaluate --tile``, ``predict --tile``) use it as they use the model. It has no training mode.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torchvision.ops import box_iou

from oralx_lib.errors import ConfigError


def tile_origins(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Start offsets of windows of size ``tile`` covering ``[0, length)`` with a stride of
    ``tile - overlap``, the last one flush with the end (so every window has the full size; the
    last overlap can be larger). One window at 0 when ``length <= tile``."""
    _check_tiling(tile, overlap)
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def core_bounds(origins: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """The core ``[lo, hi)`` of each window along one axis: from half-way through the overlap
    with the previous window to half-way through the overlap with the next one (the image's
    edges for the first and last). The cores partition ``[0, length)``."""
    bounds = []
    for i, start in enumerate(origins):
        lo = 0.0 if i == 0 else (start + min(origins[i - 1] + tile, length)) / 2
        hi = float(length) if i == len(origins) - 1 else (origins[i + 1] + min(start + tile,
                                                                               length)) / 2
        bounds.append((lo, hi))
    return bounds


def merge_tiles(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                tiles: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the detections kept, best score first: greedily, a detection is dropped when a
    higher-scoring one of the same class **from another window** overlaps it by more than
    ``iou_threshold`` (duplicates inside one window are the model's own business: its NMS or
    soft-NMS already ran there)."""
    order = scores.argsort(descending=True, stable=True)
    if len(order) == 0:
        return order
    b, lab, til = boxes[order], labels[order], tiles[order]
    clash = (box_iou(b, b) > iou_threshold) & (lab[:, None] == lab[None]) \
        & (til[:, None] != til[None])
    removed = torch.zeros(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= clash[i]
    return order[torch.tensor(kept, dtype=torch.long)]


def _check_tiling(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise ConfigError(f"tile={tile!r}: the window side must be an integer of at least 32 "
                          "pixels (the training crop's side, e.g. 384 for release_scale).")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ConfigError(f"overlap={overlap!r} with tile={tile}: the overlap must be an integer "
                          f"in [0, {tile}); use at least the largest object's side (e.g. "
                          f"{tile // 2}).")


@contextlib.contextmanager
def _resize_off(transform, height: int, width: int):
    """Let ``transform`` (torchvision's ``GeneralizedRCNNTransform``) keep an image of
    ``height x width`` at its size: scale = min(min_size / short, max_size / long) = 1."""
    saved = (transform.min_size, transform.max_size)
    transform.min_size, transform.max_size = (min(height, width),), max(height, width)
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


class TiledDetector(nn.Module):
    """Runs ``model`` on overlapping ``tile x tile`` windows of each image and merges the
    windows' detections (see the module's docstring).

    Args:
        model: a detector of this library in eval mode (``faster_rcnn`` ... ``moqam``); it needs
            torchvision's ``transform`` (a ``GeneralizedRCNNTransform``).
        tile: the window's side in network-input pixels (the training crop's side: 384 for the
            ``release_scale`` profile).
        overlap: the least overlap of neighbouring windows; objects up to this size are seen
            whole in the window that keeps them (default: half the window).
        iou_threshold: IoU above which two same-class detections of different windows are one.
        detections_per_img: boxes kept per image after merging (raised like the models' own cap
            by :func:`oralx_lib.engine.inference.detection_cap`).
        tiles_per_batch: windows run through the model together.
    """

    def __init__(self, model: nn.Module, tile: int = 384, overlap: int | None = None,
                 iou_threshold: float = 0.5, detections_per_img: int = 100,
                 tiles_per_batch: int = 4):
        super().__init__()
        overlap = tile // 2 if overlap is None and isinstance(tile, int) else overlap
        _check_tiling(tile, overlap)
        transform = getattr(model, "transform", None)
        if transform is None or not hasattr(transform, "min_size") \
                or not hasattr(transform, "max_size"):
            raise ConfigError(f"TiledDetector: {type(model).__name__} has no torchvision "
                              "transform (.transform.min_size / .max_size) to take the input "
                              "scale from; pass a detector built by oralx_lib.models.")
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold={iou_threshold!r}: use a value in (0, 1].")
        if tiles_per_batch < 1:
            raise ConfigError(f"tiles_per_batch={tiles_per_batch!r}: use an integer >= 1.")
        self.model = model.eval()
        self.training = False
        self.tile, self.overlap = tile, overlap
        self.iou_threshold = iou_threshold
        self.detections_per_img = detections_per_img
        self.tiles_per_batch = tiles_per_batch

    def train(self, mode: bool = True):
        if mode:
            raise ConfigError("TiledDetector is for inference only; train the wrapped model "
                              "itself (on crops of the tile's size).")
        return super().train(False)

    @torch.no_grad()
    def forward(self, images, targets=None):
        if targets is not None:
            raise ConfigError("TiledDetector is for inference only: call it without targets.")
        return [self.detect(image) for image in images]

    def windows(self, height: int, width: int) -> list[tuple[int, int, tuple, tuple]]:
        """``(x0, y0, (core_x_lo, core_x_hi), (core_y_lo, core_y_hi))`` of every window of a
        resized image of ``height x width``, row by row."""
        xs = tile_origins(width, self.tile, self.overlap)
        ys = tile_origins(height, self.tile, self.overlap)
        cx, cy = core_bounds(xs, self.tile, width), core_bounds(ys, self.tile, height)
        return [(x0, y0, kx, ky) for y0, ky in zip(ys, cy) for x0, kx in zip(xs, cx)]

    def detect(self, image: torch.Tensor) -> dict:
        """The merged detections of one ``(3, H, W)`` image, in its own pixels."""
        net = self.model
        transform = net.transform
        h, w = image.shape[-2:]
        resized, _ = transform.resize(image)  # eval mode: the whole-image forward's resize
        rh, rw = resized.shape[-2:]
        windows = self.windows(rh, rw)
        boxes, scores, labels, tiles = [], [], [], []
        for start in range(0, len(windows), self.tiles_per_batch):
            chunk = windows[start:start + self.tiles_per_batch]
            crops = [resized[:, y0:y0 + self.tile, x0:x0 + self.tile] for x0, y0, _, _ in chunk]
            th, tw = crops[0].shape[-2:]
            with _resize_off(transform, th, tw):
                outputs = net(crops)
            for k, ((x0, y0, (xlo, xhi), (ylo, yhi)), out) in enumerate(zip(chunk, outputs)):
                b = out["boxes"].float() + torch.tensor([x0, y0, x0, y0], dtype=torch.float32,
                                                        device=out["boxes"].device)
                cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
                core = (cx >= xlo) & (cx < xhi) & (cy >= ylo) & (cy < yhi)
                boxes.append(b[core])
                scores.append(out["scores"][core].float())
                labels.append(out["labels"][core])
                tiles.append(torch.full((int(core.sum()),), start + k, dtype=torch.long,
                                        device=b.device))
        boxes, scores = torch.cat(boxes), torch.cat(scores)
        labels, tiles = torch.cat(labels), torch.cat(tiles)
        keep = merge_tiles(boxes.cpu(), scores.cpu(), labels.cpu(), tiles.cpu(),
                           self.iou_threshold)[:self.detections_per_img].to(boxes.device)
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh], device=boxes.device)
        return {"boxes": boxes[keep] * scale, "scores": scores[keep], "labels": labels[keep]}


__all__ = ["TiledDetector", "core_bounds", "merge_tiles", "tile_origins"]
