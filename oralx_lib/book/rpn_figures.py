"""What the RPN sees, drawn: anchor assignments, recall by size, the threshold rules
(the measurements come from :mod:`oralx_lib.book.rpn_stats`; the explorer is
:func:`oralx_lib.book.explorers.threshold_explorer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.ops import box_iou

from .. import CLASSES
from ..models import DynamicIoUAssigner
from ..palette import OKABE_ITO, STATUS_STYLES, text_color
from .figures import CLASS_COLORS, SHORT_NAMES, to_numpy_image
from .rpn_stats import (
    NetworkView,
    SIZE_BINS,
    best_iou_by_size,
    default_rules,
    recall_by,
    size_bin_labels,
    square_boxes,
)


#: Colour and line style of the three anchor labels in the figures (oralx_lib.palette).
ASSIGNMENT_STYLES = {k: STATUS_STYLES[k] for k in ("positive", "ignored", "negative")}
ASSIGNMENT_COLORS = {k: v["color"] for k, v in ASSIGNMENT_STYLES.items()}


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
    kinds = [("positive", is_pos, ASSIGNMENT_STYLES["positive"]["linestyle"], 1.2, max_positive)]
    if show_ignored:
        kinds.insert(0, ("ignored", is_ignored, ASSIGNMENT_STYLES["ignored"]["linestyle"], 0.7,
                         max_ignored))
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
        ax.text(bx1, by1 - 1, SHORT_NAMES[name], color=text_color(CLASS_COLORS[name]),
                fontsize=7, va="bottom",
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

    handles = [Line2D([], [], **ASSIGNMENT_STYLES["positive"], label="positive anchor"),
               Line2D([], [], **ASSIGNMENT_STYLES["ignored"],
                      label="ignored anchor (0.3 <= IoU < threshold)"),
               Line2D([], [], color="black", linewidth=2.4, label="ground truth (class colour)")]
    return ax_or_fig.legend(handles=handles, fontsize=8, frameon=False, **kwargs)


#: The three assignment rules: colours from the Okabe-Ito palette, and each rule's line style.
RULE_COLORS = {"fixed 0.7": OKABE_ITO["blue"], "DI-RPN released": OKABE_ITO["orange"],
               "DI-RPN clamped": OKABE_ITO["reddish purple"]}
RULE_LINESTYLES = {"fixed 0.7": ":", "DI-RPN released": "-", "DI-RPN clamped": "--"}


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
    ax_curve.plot(curve_sizes, [0.7] * len(curve_sizes), color=RULE_COLORS["fixed 0.7"], lw=2,
                  linestyle=RULE_LINESTYLES["fixed 0.7"], label="fixed 0.7")
    ax_curve.plot(curve_sizes, released.effective_thresholds(curve_boxes), color=RULE_COLORS["DI-RPN released"],
                  lw=2, linestyle=RULE_LINESTYLES["DI-RPN released"],
                  label="DI-RPN released: min(0.55, thr(s))")
    ax_curve.plot(curve_sizes, clamped.effective_thresholds(curve_boxes), color=RULE_COLORS["DI-RPN clamped"],
                  lw=2, linestyle=RULE_LINESTYLES["DI-RPN clamped"], label="DI-RPN clamped: thr(s)")
    ax_curve.axhline(0.3, color="k", lw=0.8, linestyle=(0, (1, 3)))
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
                                           edgecolor=RULE_COLORS.get(name, f"C{k}"), alpha=0.9,
                                           linestyle=RULE_LINESTYLES.get(name, "-")))
    gx1, gy1, gx2, gy2 = gt[0].tolist()
    ax_box.add_patch(plt.Rectangle((gx1, gy1), gx2 - gx1, gy2 - gy1, fill=True, facecolor="0.2",
                                   alpha=0.35, edgecolor="k", lw=2))
    cx, cy = centre.tolist()
    ax_box.set_xlim(cx - margin, cx + margin)
    ax_box.set_ylim(cy + margin, cy - margin)
    ax_box.set_aspect("equal")
    ax_box.tick_params(labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=RULE_COLORS.get(name, f"C{k}"),
                      linestyle=RULE_LINESTYLES.get(name, "-"), label=f"{name} positive")
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
