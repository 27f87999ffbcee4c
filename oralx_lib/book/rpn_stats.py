"""What the RPN sees, measured: the chapters "The RPN baseline" and "DI-RPN, derived".

A two-stage detector resizes every image before its RPN labels anchors, so everything here is
measured in **network-input pixels** (after ``model.transform``'s resize), where the assigner
works:

- :func:`network_view`: one image as the RPN sees it: the resized image, the anchors of every
  level and the ground truth, all in input pixels;
- :func:`positives_per_gt` and :func:`gt_table`: how many positive anchors each ground-truth
  box receives under one or more assigners, and the best IoU any anchor reaches;
- :func:`proposal_table` and :func:`recall_by`: the recall of a trained RPN's proposals (best
  proposal IoU >= 0.5) by object size and by class;
- :func:`best_iou_by_size`: the best IoU the anchor grid offers a square object of side ``s``
  placed at many positions.

The drawings are in :mod:`oralx_lib.book.rpn_figures`. Boxes are ``(N, 4)`` xyxy; matches
follow ``Matcher``'s convention (GT index / -1 / -2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou
from tqdm.auto import tqdm

from .. import CLASSES
from ..errors import ConfigError
from ..models import DynamicIoUAssigner, FixedIoUAssigner


@dataclass
class NetworkView:
    """One image as the RPN receives it (every box in network-input pixels).

    Attributes:
        input_image: ``(3, h, w)`` the resized image in ``[0, 1]`` (normalisation undone).
        image_size: ``(h, w)`` after the resize (before padding to the size divisor).
        scale: ``(sy, sx)``: input pixels per original pixel.
        anchors: ``(A, 4)`` every anchor of every level, in the RPN's order.
        anchors_per_level: ``A_l`` per level (``sum = A``).
        strides: ``(sy, sx)`` per level: input pixels between neighbouring anchor centres.
        boxes: ``(K, 4)`` ground truth resized to the input (empty without a target).
        labels: ``(K,)`` int64 in ``1..9``.
        image_list, features: what ``model.rpn`` takes (``features`` only when asked for).
    """

    input_image: Tensor
    image_size: tuple[int, int]
    scale: tuple[float, float]
    anchors: Tensor
    anchors_per_level: list[int]
    strides: list[tuple[int, int]]
    boxes: Tensor
    labels: Tensor
    image_list: object = field(repr=False, default=None)
    features: dict | None = field(repr=False, default=None)


def _check_two_stage(model) -> None:
    for part in ("transform", "backbone", "rpn"):
        if not hasattr(model, part):
            raise ConfigError(
                f"this helper needs a two-stage detector with .transform, .backbone and .rpn "
                f"(build_model('faster_rcnn' | 'di_rpn' | 'cb_scr' | 'moqam_rcnn')); "
                f"{type(model).__name__} has no .{part}."
            )


@torch.no_grad()
def network_view(model, image: Tensor, target: Mapping | None = None, *,
                 keep_features: bool = False) -> NetworkView:
    """Resize ``image`` (and ``target``) with ``model.transform`` as in evaluation, run the
    backbone and make the anchors of every level.

    Args:
        model: a two-stage detector of :func:`oralx_lib.models.build_model`.
        image: ``(3, H, W)`` float in ``[0, 1]``, original pixels.
        target: ``{"boxes": (K, 4), "labels": (K,)}`` in original pixels, or ``None``.
        keep_features: also keep the feature maps and the ``ImageList`` (to run ``model.rpn``).

    Returns:
        A :class:`NetworkView`. The transform's eval-mode size is used (its last ``min_size``),
        so the result does not depend on the random training scale.
    """
    _check_two_stage(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        targets = None
        if target is not None:
            targets = [{"boxes": torch.as_tensor(target["boxes"], dtype=torch.float32,
                                                 device=device).reshape(-1, 4),
                        "labels": torch.as_tensor(target["labels"], dtype=torch.int64,
                                                  device=device).reshape(-1)}]
        image_list, targets = model.transform([image.to(device)], targets)
        features = model.backbone(image_list.tensors)
        feature_list = list(features.values())
        anchors = model.rpn.anchor_generator(image_list, feature_list)[0]
    finally:
        model.train(was_training)
    h, w = image_list.image_sizes[0]
    padded_h, padded_w = image_list.tensors.shape[-2:]
    # the generator's configured strides (torchvision's own generator would infer them as
    # padded size // grid size, which is wrong on the coarse levels of some padded sizes)
    configured = getattr(model.rpn.anchor_generator, "strides", None)
    if configured is not None:
        strides = [(int(s), int(s)) for s in configured]
    else:
        strides = [(int(padded_h // f.shape[-2]), int(padded_w // f.shape[-1]))
                   for f in feature_list]
    per_level = [int(f.shape[-2] * f.shape[-1]) * model.rpn.anchor_generator.num_anchors_per_location()[i]
                 for i, f in enumerate(feature_list)]
    mean = torch.as_tensor(model.transform.image_mean, device=device).view(3, 1, 1)
    std = torch.as_tensor(model.transform.image_std, device=device).view(3, 1, 1)
    input_image = (image_list.tensors[0, :, :h, :w] * std + mean).clamp(0, 1).cpu()
    empty = torch.zeros((0, 4))
    return NetworkView(
        input_image=input_image,
        image_size=(int(h), int(w)),
        scale=(h / image.shape[-2], w / image.shape[-1]),
        anchors=anchors.cpu(),
        anchors_per_level=per_level,
        strides=strides,
        boxes=targets[0]["boxes"].cpu() if targets else empty,
        labels=targets[0]["labels"].cpu() if targets else torch.zeros((0,), dtype=torch.int64),
        image_list=image_list if keep_features else None,
        features=features if keep_features else None,
    )


def positives_per_gt(matches: Tensor, num_gt: int) -> Tensor:
    """How many anchors each ground truth receives as positives.

    Args:
        matches: ``(N,)`` int64, an assigner's output (GT index, -1 negative, -2 ignored).
        num_gt: ``K``, the number of ground-truth boxes.

    Returns:
        ``(K,)`` int64 with ``count_k = #{n : matches_n = k}``.
    """
    matches = torch.as_tensor(matches)
    return torch.bincount(matches[matches >= 0], minlength=num_gt)[:num_gt]


def rule_thresholds(assigner, gt_boxes: Tensor) -> Tensor:
    """``(K,)`` the positive IoU threshold an assigner applies to each ground truth:
    ``effective_thresholds`` for DI-RPN, ``pos_iou_thr`` for the fixed rule."""
    if hasattr(assigner, "effective_thresholds"):
        return assigner.effective_thresholds(gt_boxes)
    if hasattr(assigner, "pos_iou_thr"):
        return torch.full((len(gt_boxes),), float(assigner.pos_iou_thr))
    raise ConfigError(f"{type(assigner).__name__} exposes neither effective_thresholds() nor pos_iou_thr.")


def above_threshold_per_gt(iou: Tensor, thresholds: Tensor) -> Tensor:
    """Positives by the threshold test alone (no low-quality matches), per ground truth.

    Args:
        iou: ``(K, N)`` ground truth x anchors.
        thresholds: ``(K,)`` positive threshold of each ground truth.

    Returns:
        ``(K,)``: ``#{n : argmax_k IoU(k, n) = g and max_k IoU(k, n) >= t_g}`` for each ``g``.
    """
    if iou.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.int64)
    max_iou, best_gt = iou.max(dim=0)
    keep = max_iou >= thresholds.to(iou)[best_gt]
    return torch.bincount(best_gt[keep], minlength=iou.shape[0])


def _sizes(boxes: Tensor) -> Tensor:
    return box_area(boxes).clamp(min=0).sqrt()


def gt_table(model, dataset, assigners: Mapping[str, object], *,
             indices: Sequence[int] | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per ground-truth box: its size at the network input, its best anchor IoU and the
    number of positive anchors each assigner gives it.

    Reads the annotations only (``dataset.record``); the anchors of each image size are made
    once from a blank image of that size.

    Args:
        model: a two-stage detector (its transform and anchors are used, not its weights).
        dataset: an :class:`oralx_lib.data.OralXrays9`.
        assigners: ``{name: assigner}`` with ``assign(anchors, gt_boxes) -> (N,)``.
        indices: items to measure (default: all).

    Returns:
        Columns ``image, label, class, w, h, size`` (``sqrt(w h)``, input pixels),
        ``best_iou``, and for each assigner ``pos_<name>`` (its positives, low-quality matches
        included) and ``above_<name>`` (those that pass its threshold test alone).
    """
    cache: dict[tuple[int, int], NetworkView] = {}
    rows = []
    items = range(len(dataset)) if indices is None else indices
    for i in tqdm(items, desc="assigning anchors", disable=not progress, leave=False):
        rec = dataset.record(i)
        if len(rec["boxes"]) == 0:
            continue
        key = (int(rec["height"]), int(rec["width"]))
        if key not in cache:
            cache[key] = network_view(model, torch.zeros(3, *key))
        view = cache[key]
        sy, sx = view.scale
        gt = torch.as_tensor(np.asarray(rec["boxes"]), dtype=torch.float32).reshape(-1, 4)
        gt = gt * torch.tensor([sx, sy, sx, sy])
        labels = torch.as_tensor(np.asarray(rec["labels"]), dtype=torch.int64)
        iou = box_iou(gt, view.anchors).nan_to_num_(0.0)  # (K, A)
        table = {
            "image": i,
            "label": labels.numpy(),
            "class": [CLASSES[int(k) - 1] for k in labels],
            "w": (gt[:, 2] - gt[:, 0]).numpy(),
            "h": (gt[:, 3] - gt[:, 1]).numpy(),
            "size": _sizes(gt).numpy(),
            "best_iou": iou.max(dim=1).values.numpy(),
        }
        for name, assigner in assigners.items():
            table[f"pos_{name}"] = positives_per_gt(assigner(iou, gt), len(gt)).numpy()
            table[f"above_{name}"] = above_threshold_per_gt(iou, rule_thresholds(assigner, gt)).numpy()
        rows.append(pd.DataFrame(table))
    if not rows:
        raise ConfigError("gt_table: the chosen items have no ground-truth boxes; pick other indices.")
    out = pd.concat(rows, ignore_index=True)
    out["class"] = pd.Categorical(out["class"], categories=list(CLASSES))
    return out


@torch.no_grad()
def proposal_table(model, dataset, *, indices: Sequence[int] | None = None,
                   iou_thr: float = 0.5, progress: bool = True) -> pd.DataFrame:
    """Recall of the RPN's proposals: one row per ground-truth box of the chosen items.

    Each image is resized by ``model.transform`` (eval mode), passed through the backbone and
    ``model.rpn``; a ground truth ``g`` is *recalled* when ``max_p IoU(g, p) >= iou_thr`` over
    the image's proposals ``p`` (``rpn.post_nms_top_n()`` of them at most).

    Returns:
        Columns ``image, label, class, size`` (``sqrt(w h)``, input pixels), ``best_iou``,
        ``recalled`` (bool) and ``proposals`` (how many the image had).
    """
    _check_two_stage(model)
    rows = []
    items = range(len(dataset)) if indices is None else indices
    was_training = model.training
    model.eval()
    try:
        for i in tqdm(items, desc="proposals", disable=not progress, leave=False):
            image, target = dataset[i]
            if len(target["boxes"]) == 0:
                continue
            view = network_view(model, image, target, keep_features=True)
            proposals = model.rpn(view.image_list, view.features)[0][0].cpu()  # (P, 4)
            if len(proposals):
                best = box_iou(view.boxes, proposals).nan_to_num_(0.0).max(dim=1).values
            else:
                best = torch.zeros(len(view.boxes))
            rows.append(pd.DataFrame({
                "image": i,
                "label": view.labels.numpy(),
                "class": [CLASSES[int(k) - 1] for k in view.labels],
                "size": _sizes(view.boxes).numpy(),
                "best_iou": best.numpy(),
                "recalled": (best >= iou_thr).numpy(),
                "proposals": len(proposals),
            }))
    finally:
        model.train(was_training)
    if not rows:
        raise ConfigError("proposal_table: the chosen items have no ground-truth boxes; pick other indices.")
    out = pd.concat(rows, ignore_index=True)
    out["class"] = pd.Categorical(out["class"], categories=list(CLASSES))
    return out


@torch.no_grad()
def proposal_sizes(model, dataset, *, indices: Sequence[int] | None = None,
                   collapse_ratio: float = 4.0) -> dict:
    """Compare the sizes of a trained RPN's proposals with those of the ground truth.

    A short or unstable training can make the RPN's box regression collapse (every proposal a
    sliver far smaller than any object); recall and AP are then near 0 for that reason alone.

    Args:
        model: a two-stage detector; dataset: an :class:`~oralx_lib.data.OralXrays9`.
        indices: items to look at (default: the first 8).
        collapse_ratio: call it collapsed when the median proposal width or height is below the
            median ground truth's divided by this.

    Returns:
        ``{"table": DataFrame (kind, w, h) in input pixels, "proposal_wh": (w, h) medians,
        "gt_wh": (w, h) medians, "collapsed": bool}``.
    """
    _check_two_stage(model)
    items = range(min(8, len(dataset))) if indices is None else indices
    rows = []
    was_training = model.training
    model.eval()
    try:
        for i in items:
            image, target = dataset[i]
            view = network_view(model, image, target, keep_features=True)
            props = model.rpn(view.image_list, view.features)[0][0].cpu()
            for kind, boxes in (("proposal", props), ("ground truth", view.boxes)):
                rows.append(pd.DataFrame({"kind": kind, "w": (boxes[:, 2] - boxes[:, 0]).numpy(),
                                          "h": (boxes[:, 3] - boxes[:, 1]).numpy()}))
    finally:
        model.train(was_training)
    table = pd.concat(rows, ignore_index=True)
    medians = table.groupby("kind")[["w", "h"]].median()
    prop = tuple(float(v) for v in medians.loc["proposal"]) if "proposal" in medians.index else (0.0, 0.0)
    gt = tuple(float(v) for v in medians.loc["ground truth"]) if "ground truth" in medians.index else (0.0, 0.0)
    collapsed = any(p < g / collapse_ratio for p, g in zip(prop, gt))
    return {"table": table, "proposal_wh": prop, "gt_wh": gt, "collapsed": collapsed}


#: Default size bins (``sqrt(w h)`` in network-input pixels) for recall tables.
SIZE_BINS = (0, 8, 12, 16, 24, 32, 64, math.inf)


def size_bin_labels(bins: Sequence[float] = SIZE_BINS) -> list[str]:
    """``["< 8", "8-12", ..., ">= 64"]`` for the size bins ``bins``."""
    labels = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        if lo <= 0:
            labels.append(f"< {hi:g}")
        elif math.isinf(hi):
            labels.append(f">= {lo:g}")
        else:
            labels.append(f"{lo:g}-{hi:g}")
    return labels


def recall_by(table: pd.DataFrame, by: str = "size", *, column: str = "recalled",
              bins: Sequence[float] = SIZE_BINS) -> pd.DataFrame:
    """Mean of ``column`` (recall, or any per-GT number) and the count, per size bin or class.

    Args:
        table: from :func:`proposal_table` or :func:`gt_table`.
        by: ``"size"`` (bins of ``size``, left-closed) or ``"class"``.
        column: the per-GT column to average.

    Returns:
        Indexed by bin label (or class name) with columns ``count`` and ``mean``; empty bins
        and classes are dropped.
    """
    if by == "size":
        groups = pd.cut(table["size"], bins=list(bins), right=False, labels=size_bin_labels(bins))
    elif by == "class":
        groups = table["class"]
    else:
        raise ConfigError(f"recall_by: by={by!r}; use 'size' or 'class'.")
    out = table.groupby(groups, observed=True)[column].agg(["count", "mean"])
    return out[out["count"] > 0]


def square_boxes(size: float, centres: Tensor) -> Tensor:
    """``(P, 4)`` squares of side ``size`` centred at ``centres`` ``(P, 2)``."""
    half = size / 2.0
    return torch.cat([centres - half, centres + half], dim=1)


def best_iou_by_size(anchors: Tensor, sizes: Sequence[float], *, period: float = 64.0,
                     positions: int = 256, origin: tuple[float, float] | None = None,
                     seed: int = 0) -> Tensor:
    """Best IoU any anchor reaches for square objects of each size, at many positions.

    The object's centre is drawn ``positions`` times uniformly in a ``period x period`` square
    (the coarsest stride: every phase of every level's grid is met) whose corner is ``origin``
    (default: the middle of the anchors' extent, away from the borders).

    Args:
        anchors: ``(A, 4)`` xyxy, e.g. :attr:`NetworkView.anchors`.
        sizes: object sides ``s`` (same pixels).
        seed: seed of the positions (the same positions serve every size).

    Returns:
        ``(len(sizes), positions)``: ``max_a IoU(object, a)`` per size and position.
    """
    anchors = anchors.float()
    if origin is None:
        lo, hi = anchors[:, :2].min(0).values, anchors[:, 2:].max(0).values
        origin = tuple(((lo + hi) / 2).floor().tolist())
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(positions, 2, generator=generator) * period + torch.tensor(origin)
    rows = []
    for s in sizes:
        half = float(s) / 2
        # Only anchors that can touch one of the objects matter (a big speed-up on big images).
        near = ((anchors[:, 0] < origin[0] + period + half) & (anchors[:, 2] > origin[0] - half)
                & (anchors[:, 1] < origin[1] + period + half) & (anchors[:, 3] > origin[1] - half))
        iou = box_iou(square_boxes(float(s), centres), anchors[near])
        rows.append(iou.max(dim=1).values if iou.shape[1] else torch.zeros(positions))
    return torch.stack(rows)


def default_rules() -> dict[str, object]:
    """The three anchor rules the DI-RPN chapter compares, with the released constants."""
    return {
        "fixed 0.7": FixedIoUAssigner(0.7, 0.3),
        "DI-RPN released": DynamicIoUAssigner(cap_at_base=True),
        "DI-RPN clamped": DynamicIoUAssigner(cap_at_base=False),
    }
