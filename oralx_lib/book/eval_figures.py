"""Figures of the chapters "CB-SCR, derived" and "Evaluation and error analysis": the toy
sphere, a 2-D view of RoI features, detections coloured by error type (the measurements come
from :mod:`oralx_lib.book.eval_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import CLASSES
from ..errors import ConfigError
from .eval_stats import ERROR_TYPES, class_mean_angles, classify_detections
from ..palette import CYCLE, STATUS_STYLES
from .figures import CLASS_COLORS, draw_boxes


def plot_sphere(ax, features: Tensor, labels: Tensor, *, centers: Tensor | None = None,
                names: Sequence[str] | None = None, title: str | None = None,
                colors: Sequence[str] | None = None, arcs_from: int | None = None):
    """Points of a 3-D embedding on a wire-frame unit sphere, one colour per class; the
    smallest class is drawn with larger markers. ``ax`` must be a 3-D Axes
    (``fig.add_subplot(projection="3d")``).

    ``arcs_from=k`` also draws the great-circle arcs from class ``k``'s mean direction to every
    other class's, each labelled with its angle in degrees (:func:`class_mean_angles`)."""
    if features.shape[1] != 3:
        raise ConfigError(f"plot_sphere draws 3-D features, got dimension {features.shape[1]}")
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85",
                      linewidth=0.4)
    num = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num)
    colors = list(colors) if colors is not None else [CYCLE[k % len(CYCLE)]
                                                      for k in range(num)]
    z = features.detach().cpu().numpy()
    for k in range(num):
        pts = z[(labels == k).numpy()]
        rare = int(counts[k]) == int(counts.min()) and int(counts.min()) < int(counts.max())
        label = (names[k] if names is not None else f"class {k}") + f" (n={int(counts[k])})"
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=80 if rare else 30, color=colors[k],
                   edgecolor="black" if rare else "none", linewidth=0.8, label=label,
                   depthshade=False)
        if centers is not None:
            c = centers[k].detach().cpu().numpy()
            ax.scatter([c[0]], [c[1]], [c[2]], marker="*", s=160, color=colors[k],
                       edgecolor="black", linewidth=0.6, depthshade=False)
    if arcs_from is not None:
        means = F.normalize(torch.stack([features[labels == k].mean(0) for k in range(num)]),
                            dim=1).double()
        angles = class_mean_angles(features, labels)
        a = means[arcs_from]
        for k in range(num):
            if k == arcs_from or not bool(torch.isfinite(angles[arcs_from, k])):
                continue
            theta = math.radians(float(angles[arcs_from, k]))
            if theta < 1e-3:
                continue
            b = means[k]
            # slerp between the two unit vectors, slightly outside the sphere to stay visible
            t = torch.linspace(0, 1, 40, dtype=torch.float64)[:, None]
            arc = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / math.sin(theta)
            arc = (1.03 * arc).numpy()
            ax.plot(arc[:, 0], arc[:, 1], arc[:, 2], color="black", lw=1.0)
            mid = arc[len(arc) // 2] * 1.08
            ax.text(mid[0], mid[1], mid[2], f"{math.degrees(theta):.0f}", fontsize=8)
    ax.set_box_aspect((1, 1, 1))
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), xticks=[], yticks=[], zticks=[])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_embedding(ax, points: Tensor, labels: Tensor, *, title: str | None = None,
                   legend: bool = False):
    """A 2-D scatter of ``points (M, 2)`` coloured by class (labels 1..9); rare classes on
    top."""
    pts = points.detach().cpu().numpy()
    counts = torch.bincount(labels, minlength=len(CLASSES) + 1)
    for lab in sorted(labels.unique().tolist(), key=lambda k: -int(counts[k])):
        sel = (labels == lab).numpy()
        name = CLASSES[lab - 1]
        ax.scatter(pts[sel, 0], pts[sel, 1], s=10 if counts[lab] > 20 else 28,
                   color=CLASS_COLORS[name], label=f"{name} ({int(counts[lab])})",
                   alpha=0.8, edgecolor="black" if counts[lab] <= 20 else "none",
                   linewidth=0.4)
    ax.set(xticks=[], yticks=[])
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    return ax


#: Colour and line style of each kind, and of a missed ground-truth box: no two kinds share
#: either, so the kind never rests on colour alone (oralx_lib.palette.STATUS_STYLES).
ERROR_STYLES: dict[str, dict] = {k: STATUS_STYLES[k] for k in
                                 ("correct", "duplicate", "class", "localisation", "background",
                                  "missed")}
#: The colours alone, for bar charts of the kinds.
ERROR_COLORS: dict[str, str] = {k: v["color"] for k, v in ERROR_STYLES.items()}


def render_errors(dataset, index: int, prediction: Mapping[str, Tensor], *,
                  score_thr: float = 0.3, iou_thr: float = 0.5, ax=None, width: float = 11.0):
    """Item ``index`` with its ground truth (class colours, thin; missed boxes yellow, thick)
    and the detections with ``score >= score_thr`` in the colour and line style of their kind
    (:func:`classify_detections`). Returns the figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    image, target = dataset[index]
    h, w = image.shape[-2:]
    if ax is None:
        fig, ax = plt.subplots(figsize=(width, width * h / w + 0.7))
    else:
        fig = ax.figure
    res = classify_detections(prediction, target, iou_thr=iou_thr, score_thr=score_thr)
    draw_boxes(ax, image, target["boxes"], target["labels"], linewidth=1.0, fontsize=6)
    for box, missed in zip(target["boxes"].tolist(), res["missed"].tolist()):
        if missed:
            x1, y1, x2, y2 = box
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=2.6,
                                   edgecolor=ERROR_STYLES["missed"]["color"],
                                   linestyle=ERROR_STYLES["missed"]["linestyle"]))
    boxes = torch.as_tensor(prediction["boxes"]).reshape(-1, 4)
    for det, kind in zip(res["kept"].tolist(), res["kinds"]):
        x1, y1, x2, y2 = boxes[det].tolist()
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.8,
                               linestyle=ERROR_STYLES[kind]["linestyle"],
                               edgecolor=ERROR_STYLES[kind]["color"]))
    counts = {k: res["kinds"].count(k) for k in ERROR_TYPES}
    counts["missed"] = int(res["missed"].sum())
    handles = [Line2D([], [], color=ERROR_STYLES[k]["color"], linewidth=2,
                      linestyle=ERROR_STYLES[k]["linestyle"], label=f"{k} ({counts[k]})")
               for k in (*ERROR_TYPES, "missed")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    ax.set_title(f"item {index}: {len(target['labels'])} boxes (solid, class colours); "
                 f"detections with score >= {score_thr:.2f} by kind (colour and line style) at IoU {iou_thr}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
