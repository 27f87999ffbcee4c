"""What the RPN sees, measured and drawn: the chapters "The RPN baseline" and "DI-RPN, derived".

A two-stage detector resizes every image before its RPN labels anchors, so everything here is
measured in **network-input pixels** (after ``model.transform``'s resize), where the assigner
works:

- :func:`network_view`: one image as the RPN sees it: the resized image, the anchors of every
  level and the ground truth, all in input pixels;
- :func:`positives_per_gt` and :func:`gt_table`: how many positive anchors each ground-truth
  box receives under one or more assigners, and the best IoU any anchor reaches;
- :func:`proposal_table`, :func:`recall_by` and :func:`plot_recall`: the recall of a trained
  RPN's proposals (best proposal IoU >= 0.5) by object size and by class;
- :func:`best_iou_by_size`: the best IoU the anchor grid offers a square object of side ``s``
  placed at many positions;
- :func:`draw_assignment`, :func:`draw_threshold_setting` and :func:`threshold_explorer`:
  figures and an ipywidgets explorer (with its drawing function exposed for a static figure).

Boxes are ``(N, 4)`` xyxy; matches follow ``Matcher``'s convention (GT index / -1 / -2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou
from tqdm.auto import tqdm

from . import CLASSES
from .models import DynamicIoUAssigner, FixedIoUAssigner
from .errors import ConfigError
from .plots import CLASS_COLORS, SHORT_NAMES, to_numpy_image

#: Colours of the three anchor labels in the figures.
ASSIGNMENT_COLORS = {"positive": "#ffe600", "ignored": "#ff4dff", "negative": "#d62728"}
#: Default size bins (``sqrt(w h)`` in network-input pixels) for recall tables.
SIZE_BINS = (0, 8, 12, 16, 24, 32, 64, math.inf)


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
    # torchvision's AnchorGenerator spaces the anchors by padded size // grid size on each axis.
    strides = [(int(padded_h // f.shape[-2]), int(padded_w // f.shape[-1])) for f in feature_list]
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


def plot_recall(tables: Mapping[str, pd.DataFrame], by: str = "size", *, ax=None,
                column: str = "recalled", bins: Sequence[float] = SIZE_BINS,
                ylabel: str = "proposal recall (IoU >= 0.5)", title: str | None = None):
    """Grouped bars of :func:`recall_by` for several tables (e.g. two models); the count of
    boxes is written under each group. Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.4))
    stats = {name: recall_by(t, by, column=column, bins=bins) for name, t in tables.items()}
    groups = [g for g in (size_bin_labels(bins) if by == "size" else list(CLASSES))
              if any(g in s.index for s in stats.values())]
    width = 0.8 / max(len(stats), 1)
    x = np.arange(len(groups))
    for k, (name, s) in enumerate(stats.items()):
        values = [float(s.loc[g, "mean"]) if g in s.index else np.nan for g in groups]
        ax.bar(x + (k - (len(stats) - 1) / 2) * width, values, width, label=name)
    first = next(iter(stats.values()))
    names = groups if by == "size" else [SHORT_NAMES[g] for g in groups]
    ticks = [f"{g}\n(n={int(first.loc[g, 'count']) if g in first.index else 0})" for g in names] \
        if by == "size" else [f"{n}\n(n={int(first.loc[g, 'count']) if g in first.index else 0})"
                              for n, g in zip(names, groups)]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_xlabel(r"object size $\sqrt{wh}$ (network-input pixels)" if by == "size" else "class")
    ax.set_ylabel(ylabel)
    if column == "recalled":
        ax.set_ylim(0, 1.05)
    if len(stats) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return ax


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


# ------------------------------------------------------------------------------- drawing

def _region_around(boxes: Tensor, margin: float, image_size: tuple[int, int]) -> tuple[float, ...]:
    x1, y1 = boxes[:, :2].min(0).values.tolist()
    x2, y2 = boxes[:, 2:].max(0).values.tolist()
    h, w = image_size
    return (max(x1 - margin, 0), max(y1 - margin, 0), min(x2 + margin, w), min(y2 + margin, h))


def draw_assignment(ax, view: NetworkView, matches: Tensor, *, region: Sequence[float] | None = None,
                    gt_index: Sequence[int] | None = None, show_ignored: bool = True,
                    max_positive: int = 400, max_ignored: int = 30, title: str | None = None):
    """The resized X-ray, its ground truth (class colours, thick) and the anchors an assigner
    labels positive (yellow) and ignored (magenta, dashed), inside ``region``.

    Args:
        view: from :func:`network_view` with a target.
        matches: ``(A,)`` the assigner's output for ``view.anchors`` and ``view.boxes``.
        region: ``(x1, y1, x2, y2)`` to show, input pixels (default: around ``gt_index``).
        gt_index: ground truths to draw (default: all); anchors matched to others (ignored
            anchors: whose best ground truth is another) are skipped.
        max_positive, max_ignored: at most this many anchors of each kind are drawn, those of
            highest IoU with the ground truth shown first.

    Returns:
        ``{"positive": n, "ignored": n, "negative": n}`` counted over *all* anchors.
    """
    matches = torch.as_tensor(matches)
    keep_gt = list(range(len(view.boxes))) if gt_index is None else list(gt_index)
    if region is None:
        region = _region_around(view.boxes[keep_gt], 24, view.image_size) if keep_gt else \
            (0, 0, view.image_size[1], view.image_size[0])
    x1, y1, x2, y2 = region
    ax.imshow(to_numpy_image(view.input_image), cmap="gray", vmin=0, vmax=1)
    inside = ((view.anchors[:, 0] < x2) & (view.anchors[:, 2] > x1)
              & (view.anchors[:, 1] < y2) & (view.anchors[:, 3] > y1))
    is_pos = (matches >= 0) & inside
    is_ignored = (matches == -2) & inside
    shown = torch.as_tensor(keep_gt, dtype=torch.int64)
    if gt_index is not None:
        is_pos &= torch.isin(matches, shown.to(matches.dtype))
    kinds = [("positive", is_pos, "-", 1.2, max_positive)]
    if show_ignored:
        kinds.insert(0, ("ignored", is_ignored, "--", 0.6, max_ignored))
    for kind, mask, style, lw, limit in kinds:
        idx = torch.nonzero(mask).flatten()
        if len(idx) and len(shown):
            iou = box_iou(view.boxes[shown], view.anchors[idx])  # (K_shown, n)
            if kind == "ignored":
                # Ignored anchors carry no GT index: keep those whose best ground truth is shown.
                best_gt = box_iou(view.boxes, view.anchors[idx]).argmax(dim=0)
                keep = torch.isin(best_gt, shown)
                idx, iou = idx[keep], iou[:, keep]
            idx = idx[iou.max(dim=0).values.argsort(descending=True)] if len(idx) else idx
        for box in view.anchors[idx[:limit]].tolist():
            ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=ASSIGNMENT_COLORS[kind], linewidth=lw, linestyle=style,
                                       alpha=0.8))
    for k in keep_gt:
        bx1, by1, bx2, by2 = view.boxes[k].tolist()
        name = CLASSES[int(view.labels[k]) - 1]
        ax.add_patch(plt.Rectangle((bx1, by1), bx2 - bx1, by2 - by1, fill=False,
                                   edgecolor=CLASS_COLORS[name], linewidth=2.4))
        ax.text(bx1, by1 - 1, SHORT_NAMES[name], color="white", fontsize=7, va="bottom",
                bbox=dict(facecolor=CLASS_COLORS[name], edgecolor="none", pad=0.6, alpha=0.85))
    ax.set_xlim(x1, x2)
    ax.set_ylim(y2, y1)
    ax.set_axis_off()
    counts = {"positive": int((matches >= 0).sum()), "ignored": int((matches == -2).sum()),
              "negative": int((matches == -1).sum())}
    if title:
        ax.set_title(title, fontsize=9)
    return counts


def assignment_legend(ax_or_fig, **kwargs):
    """Legend for :func:`draw_assignment`: positive, ignored, ground truth."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=ASSIGNMENT_COLORS["positive"], label="positive anchor"),
               Line2D([], [], color=ASSIGNMENT_COLORS["ignored"], linestyle="--",
                      label="ignored anchor (0.3 <= IoU < threshold)"),
               Line2D([], [], color="black", linewidth=2.4, label="ground truth (class colour)")]
    return ax_or_fig.legend(handles=handles, fontsize=8, frameon=False, **kwargs)


def default_rules() -> dict[str, object]:
    """The three anchor rules the DI-RPN chapter compares, with the released constants."""
    return {
        "fixed 0.7": FixedIoUAssigner(0.7, 0.3),
        "DI-RPN released": DynamicIoUAssigner(cap_at_base=True),
        "DI-RPN clamped": DynamicIoUAssigner(cap_at_base=False),
    }


RULE_COLORS = {"fixed 0.7": "#1f77b4", "DI-RPN released": "#d62728", "DI-RPN clamped": "#9467bd"}


def draw_threshold_setting(axes, size: float, anchors: Tensor, *, offset: tuple[float, float] = (0.0, 0.0),
                           rules: Mapping[str, object] | None = None,
                           curve_sizes: Sequence[float] | None = None,
                           best_curve: Tensor | None = None) -> dict:
    """Two panels for one object size: the threshold curves with ``size`` marked (left), and a
    square object of that size with its positive anchors under each rule (right).

    Args:
        axes: two matplotlib Axes.
        size: the object's side ``s`` (input pixels).
        anchors: ``(A, 4)`` the anchors of an input image.
        offset: the object's centre relative to the middle of the anchors' extent, pixels.
        rules: ``{name: assigner}`` (default :func:`default_rules`).
        curve_sizes, best_curve: sizes and the ``(len, P)`` output of :func:`best_iou_by_size`
            to draw the best-anchor-IoU band; computed here when omitted.

    Returns:
        ``{"size", "thr_fixed", "thr_released", "thr_clamped", "best_iou", "positives": {rule: n}}``.
    """
    rules = default_rules() if rules is None else rules
    ax_curve, ax_box = axes
    if curve_sizes is None:
        curve_sizes = np.geomspace(4, 96, 40).tolist()
    if best_curve is None:
        best_curve = best_iou_by_size(anchors, curve_sizes, positions=128)
    s = torch.as_tensor(curve_sizes, dtype=torch.float32)
    curve_boxes = torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], dim=1)
    released = DynamicIoUAssigner(cap_at_base=True)
    clamped = DynamicIoUAssigner(cap_at_base=False)
    ax_curve.fill_between(curve_sizes, best_curve.min(1).values, best_curve.max(1).values,
                          color="0.85", label="best anchor IoU (min..max over positions)")
    ax_curve.plot(curve_sizes, best_curve.median(1).values, color="0.4", lw=1.2,
                  label="best anchor IoU (median)")
    ax_curve.plot(curve_sizes, [0.7] * len(curve_sizes), color=RULE_COLORS["fixed 0.7"], label="fixed 0.7")
    ax_curve.plot(curve_sizes, released.effective_thresholds(curve_boxes), color=RULE_COLORS["DI-RPN released"],
                  lw=2, label="DI-RPN released: min(0.55, thr(s))")
    ax_curve.plot(curve_sizes, clamped.effective_thresholds(curve_boxes), color=RULE_COLORS["DI-RPN clamped"],
                  lw=2, linestyle="--", label="DI-RPN clamped: thr(s)")
    ax_curve.axhline(0.3, color="k", lw=0.8, linestyle=":")
    ax_curve.axvline(size, color="k", lw=1)
    ax_curve.set_xscale("log")
    ax_curve.set_xlabel(r"object size $s=\sqrt{wh}$ (input pixels)")
    ax_curve.set_ylabel("IoU")
    ax_curve.set_ylim(0, 1)
    ax_curve.legend(fontsize=7, loc="lower right")
    ax_curve.grid(alpha=0.3)

    lo, hi = anchors[:, :2].min(0).values, anchors[:, 2:].max(0).values
    centre = ((lo + hi) / 2).floor() + torch.tensor(offset, dtype=torch.float32)
    gt = square_boxes(float(size), centre[None])
    iou = box_iou(gt, anchors).nan_to_num_(0.0)
    best = float(iou.max())
    positives = {}
    margin = max(size, 16.0) * 1.6
    for k, (name, rule) in enumerate(rules.items()):
        matches = rule(iou, gt)
        positives[name] = int((matches >= 0).sum())
        inset = 0.6 * k  # keep overlapping rectangles of different rules apart
        for box in anchors[matches >= 0].tolist():
            ax_box.add_patch(plt.Rectangle((box[0] - inset, box[1] - inset), box[2] - box[0] + 2 * inset,
                                           box[3] - box[1] + 2 * inset, fill=False, lw=1.2,
                                           edgecolor=RULE_COLORS.get(name, f"C{k}"), alpha=0.9))
    gx1, gy1, gx2, gy2 = gt[0].tolist()
    ax_box.add_patch(plt.Rectangle((gx1, gy1), gx2 - gx1, gy2 - gy1, fill=True, facecolor="0.2",
                                   alpha=0.35, edgecolor="k", lw=2))
    cx, cy = centre.tolist()
    ax_box.set_xlim(cx - margin, cx + margin)
    ax_box.set_ylim(cy + margin, cy - margin)
    ax_box.set_aspect("equal")
    ax_box.tick_params(labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=RULE_COLORS.get(name, f"C{k}"), label=f"{name} positive")
               for k, name in enumerate(rules)]
    ax_box.legend(handles=handles, fontsize=6, loc="lower left", frameon=True, framealpha=0.8)
    thr_released = float(released.effective_thresholds(gt)[0])
    thr_clamped = float(clamped.effective_thresholds(gt)[0])
    ax_box.set_title(f"s = {size:.1f} px, best anchor IoU {best:.2f}\n"
                     + ", ".join(f"{n}: {p}" for n, p in positives.items()), fontsize=8)
    ax_curve.set_title(f"thresholds at s = {size:.1f}: fixed 0.70, released {thr_released:.2f}, "
                       f"clamped {thr_clamped:.2f}", fontsize=8)
    return {"size": float(size), "thr_fixed": 0.7, "thr_released": thr_released,
            "thr_clamped": thr_clamped, "best_iou": best, "positives": positives}


def threshold_explorer(anchors: Tensor, *, rules: Mapping[str, object] | None = None,
                       width: float = 12.0):
    """An explorer: object size (log slider) and sub-stride position; draws
    :func:`draw_threshold_setting`. Returns the ``ipywidgets`` box to display."""
    import ipywidgets as W
    from IPython.display import display

    curve_sizes = np.geomspace(4, 96, 40).tolist()
    best_curve = best_iou_by_size(anchors, curve_sizes, positions=128)
    size = W.FloatLogSlider(value=12, base=2, min=2, max=6.5, step=0.05, description="size (px)",
                            continuous_update=False)
    dx = W.FloatSlider(value=0.0, min=-8, max=8, step=0.5, description="shift x", continuous_update=False)
    dy = W.FloatSlider(value=0.0, min=-8, max=8, step=0.5, description="shift y", continuous_update=False)
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(width, width * 0.36),
                                     gridspec_kw={"width_ratios": [1.6, 1]})
            draw_threshold_setting(axes, size.value, anchors, offset=(dx.value, dy.value), rules=rules,
                                   curve_sizes=curve_sizes, best_curve=best_curve)
            fig.tight_layout()
            display(fig)
            plt.close(fig)

    for control in (size, dx, dy):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([size, dx, dy]), out])


__all__ = [
    "ASSIGNMENT_COLORS",
    "RULE_COLORS",
    "SIZE_BINS",
    "NetworkView",
    "above_threshold_per_gt",
    "assignment_legend",
    "best_iou_by_size",
    "default_rules",
    "draw_assignment",
    "draw_threshold_setting",
    "gt_table",
    "network_view",
    "plot_recall",
    "positives_per_gt",
    "proposal_sizes",
    "proposal_table",
    "recall_by",
    "rule_thresholds",
    "size_bin_labels",
    "square_boxes",
    "threshold_explorer",
]
