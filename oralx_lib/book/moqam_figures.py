"""Figures for the chapter "Query-aware mining: the complete MOQAM": sampling points, the
branches' positives, the attention mask, losses by family, the top queries of an image (the
measurements come from :mod:`oralx_lib.book.moqam_stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import CLASSES
from ..palette import CYCLE, LINESTYLES, OKABE_ITO
from .figures import CLASS_COLORS, class_legend, draw_boxes
from .moqam_stats import CollaborativeView, LOSS_FAMILIES, QueryInspection, top_queries


def plot_loss_families(table: pd.DataFrame, ax=None, *, title: str | None = None):
    """Horizontal bars, one per family, stacked by loss term (the value of each term as the
    total loss sums it). Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    pivot = table.pivot_table(index="family", columns="term", values="value", aggfunc="sum",
                              fill_value=0.0)
    pivot = pivot.reindex([f for f in LOSS_FAMILIES if f in pivot.index])
    left = np.zeros(len(pivot))
    hatches = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
    for i, term in enumerate(pivot.columns):
        values = pivot[term].to_numpy()
        # colour and hatch together tell the terms apart, also in grayscale
        ax.barh(pivot.index, values, left=left, color=CYCLE[i % len(CYCLE)],
                hatch=hatches[(i // len(CYCLE) + i) % len(hatches)], edgecolor="white",
                label=term)
        left += values
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("loss (weighted, as summed into the total)")
    ax.set_xlim(0, left.max() * 1.15 if len(left) else 1)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title(title or "one training step's losses by family", fontsize=10)
    return ax


def plot_family_history(frame: pd.DataFrame, ax=None, *, smooth: int = 1,
                        title: str | None = None):
    """Each family's loss against the step (log scale), optionally a running mean over
    ``smooth`` steps. Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    data = frame.rolling(smooth, min_periods=1).mean() if smooth > 1 else frame
    others = [c for c in data.columns if c != "total"]
    for column in data.columns:
        if column == "total":
            style = dict(color="black", lw=2.0)
        else:
            k = others.index(column)
            style = dict(lw=1.3, color=CYCLE[k % (len(CYCLE) - 2)],
                         linestyle=LINESTYLES[k % len(LINESTYLES)])
        ax.plot(data.index, data[column], label=column, **style)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title or "training loss by family", fontsize=10)
    return ax


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------
def _query_colors(n: int):
    # no black (the points are drawn on an X-ray), then the cycle again
    colors = [c for c in CYCLE if c != OKABE_ITO["black"]]
    return [colors[i % len(colors)] for i in range(n)]


def draw_sampling_points(ax, inspection: QueryInspection, queries: Sequence[int], *,
                         layer: int = -1, image: Tensor | None = None, max_size: float = 60.0,
                         show_boxes: bool = True, title: str | None = None):
    """Draw the cross-attention sampling points of some queries at one decoder layer: one
    colour per query, marker area proportional to the attention weight (all heads and levels),
    the query's reference box (the previous layer's box, dotted) and its output box (solid).
    ``image`` (optional) is drawn underneath."""
    if image is not None:
        draw_boxes(ax, image)
    layer = layer % inspection.num_layers
    colors = _query_colors(len(queries))
    previous = inspection.reference if layer == 0 else inspection.boxes[layer - 1]
    for color, q in zip(colors, queries):
        loc = inspection.locations[layer, q].reshape(-1, 2)
        w = inspection.weights[layer, q].reshape(-1)
        ax.scatter(loc[:, 0], loc[:, 1], s=4 + max_size * w / w.max().clamp(min=1e-9),
                   color=color, alpha=0.75, edgecolors="white", linewidths=0.3)
        if show_boxes:
            for box, style in ((previous[q], ":"), (inspection.boxes[layer, q], "-")):
                x1, y1, x2, y2 = box.tolist()
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                           edgecolor=color, linestyle=style, linewidth=1.4))
    h, w_img = inspection.original_size
    ax.set_xlim(0, w_img)
    ax.set_ylim(h, 0)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


_BRANCH_TITLES = {
    "rpn": "RPN positive anchors (DI-RPN)",
    "roi": "RoI head positives (aux0 queries)",
    "atss": "ATSS positives (aux1 queries)",
    "matched": "Hungarian-matched queries",
}


def draw_positives(axes, image: Tensor, view: CollaborativeView, *,
                   gt_index: Sequence[int] | None = None, region: Sequence[float] | None = None,
                   max_boxes: int = 60):
    """One panel per branch (``rpn``, ``roi``, ``atss``, then ``matched``): the ground truth
    (thick, class colour) and the positives assigned to it (thin, same colour). ``gt_index``
    keeps some ground truths only; ``region`` ``(x1, y1, x2, y2)`` zooms every panel.
    At most ``max_boxes`` positives per panel are drawn (a random subset, fixed seed)."""
    keep = (torch.arange(len(view.gt_labels)) if gt_index is None
            else torch.as_tensor(list(gt_index), dtype=torch.int64))
    panels = list(view.positives.items()) + [("matched", view.matched)]
    g = torch.Generator().manual_seed(0)
    for ax, (name, (boxes, gt)) in zip(np.ravel(axes), panels):
        draw_boxes(ax, image)
        sel = torch.isin(gt, keep)
        b, k = boxes[sel], gt[sel]
        if len(b) > max_boxes:
            pick = torch.randperm(len(b), generator=g)[:max_boxes]
            b, k = b[pick], k[pick]
        for box, gi in zip(b.tolist(), k.tolist()):
            color = CLASS_COLORS[CLASSES[int(view.gt_labels[gi]) - 1]]
            matched = name == "matched"
            ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1],
                                       fill=False, edgecolor=color, alpha=0.9,
                                       linewidth=1.6 if matched else 0.8,
                                       linestyle="--" if matched else "-"))
        for gi in keep.tolist():
            x1, y1, x2, y2 = view.gt_boxes[gi].tolist()
            color = CLASS_COLORS[CLASSES[int(view.gt_labels[gi]) - 1]]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       edgecolor="white", linewidth=3.2))
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=color, linewidth=1.8))
        if region is not None:
            ax.set_xlim(region[0], region[2])
            ax.set_ylim(region[3], region[1])
        count = int(sel.sum())
        ax.set_title(f"{_BRANCH_TITLES.get(name, name)}: {count}", fontsize=9)
    return axes


def plot_attention_mask(ax, mask: Tensor, *, num_groups: int, group_size: int,
                        title: str | None = None):
    """Show a decoder self-attention mask (True = blocked) as an image: black = may attend,
    light = blocked, with the denoising groups and the matching part outlined."""
    m = mask.detach().cpu().numpy().astype(float)
    ax.imshow(m, cmap="Greys_r", vmin=-0.6, vmax=1.6, interpolation="nearest")
    dn = num_groups * group_size
    for g in range(num_groups + 1):
        pos = g * group_size - 0.5
        ax.axhline(pos, color=OKABE_ITO["orange"], lw=0.6, linestyle=":")
        ax.axvline(pos, color=OKABE_ITO["orange"], lw=0.6, linestyle=":")
    ax.axhline(dn - 0.5, color=OKABE_ITO["blue"], lw=1.4)
    ax.axvline(dn - 0.5, color=OKABE_ITO["blue"], lw=1.4)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ticks = [g * group_size + group_size / 2 - 0.5 for g in range(num_groups)]
    ax.set_xticks(ticks + [dn + (m.shape[0] - dn) / 2])
    ax.set_xticklabels([f"dn{g}" for g in range(num_groups)] + ["matching"], fontsize=7)
    ax.set_yticks(ticks + [dn + (m.shape[0] - dn) / 2])
    ax.set_yticklabels([f"dn{g}" for g in range(num_groups)] + ["matching"], fontsize=7)
    ax.set_title(title or "self-attention mask (dark: allowed, light: blocked)", fontsize=9)
    return ax


def render_queries(image: Tensor, target: Mapping[str, Tensor] | None,
                   inspection: QueryInspection, *, layer: int = -1, top_k: int = 8,
                   show_points: bool = True, ax=None, width: float = 11.0):
    """Draw an image's ground truth (solid, class colours) and its ``top_k`` (query, class)
    pairs at decoder ``layer``: their boxes (dashed, with class and score) and, with
    ``show_points``, the sampling points of those queries (:func:`draw_sampling_points`).
    Returns the figure."""
    h, w = image.shape[-2:]
    if ax is None:
        fig, ax = plt.subplots(figsize=(width, width * h / w + 0.6))
    else:
        fig = ax.figure
    layer = layer % inspection.num_layers
    if target is not None:
        draw_boxes(ax, image, target["boxes"], target["labels"], fontsize=7)
    else:
        draw_boxes(ax, image)
    queries, labels, scores = top_queries(inspection, top_k, layer)
    boxes = inspection.boxes[layer, queries]
    draw_boxes(ax, None, boxes, labels, scores, linestyle="--", fontsize=7, score_thr=0.0)
    if show_points and len(queries):
        unique = list(dict.fromkeys(queries.tolist()))
        draw_sampling_points(ax, inspection, unique, layer=layer, show_boxes=False)
    best = f"{float(scores[0]):.2f}" if len(scores) else "-"
    ax.set_title(f"decoder layer {layer + 1} of {inspection.num_layers}: top {len(queries)} "
                 f"(query, class) pairs, best score {best}"
                 + ("; dots: their sampling points" if show_points else ""), fontsize=9)
    class_legend(fig, loc="lower center", ncol=5)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
