"""Figures the book shows: X-rays with boxes, galleries, per-class crops, dataset statistics.

Every function draws on a given matplotlib ``Axes`` (or makes a figure) and returns it, so a
notebook can compose them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from .. import CLASSES
from ..palette import CLASS_COLORS, OKABE_ITO, text_color

# CLASS_COLORS (label ``k`` uses ``CLASS_COLORS[CLASSES[k - 1]]``) is oralx_lib.palette's:
# colour-blind-safe, and every box also carries its class name.


#: Short names for crowded figures.
SHORT_NAMES: dict[str, str] = {
    "Apical Periodontitis": "AP", "Decay": "Decay", "Wisdom Tooth": "Wisdom",
    "Missing Tooth": "Missing", "Dental Filling": "Filling", "Root Canal Filling": "RCF",
    "Implant": "Implant", "Porcelain Crown": "Crown", "Ceramic Bridge": "Bridge",
}


def to_numpy_image(image) -> np.ndarray:
    """``(3, H, W)`` float tensor in [0, 1] (or ``(H, W)`` / ``(H, W, 3)`` array) -> ``(H, W)``
    or ``(H, W, 3)`` float array for ``imshow``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and np.allclose(image[..., 0], image[..., 1]) and np.allclose(
            image[..., 1], image[..., 2]):
        image = image[..., 0]
    return image


def draw_boxes(ax, image, boxes=None, labels=None, scores=None, *,
               classes: Sequence[str] | None = None, score_thr: float = 0.0,
               short_names: bool = True, linewidth: float = 1.4, fontsize: float = 7,
               linestyle: str = "-", title: str | None = None, show_labels: bool = True):
    """Show an X-ray and its boxes.

    Args:
        ax: matplotlib Axes.
        image: ``(3, H, W)`` tensor or array; ``None`` draws boxes only (an overlay).
        boxes: ``(N, 4)`` xyxy pixels; labels: ``(N,)`` in 1..9; scores: ``(N,)`` or None.
        classes: only draw these class names.
        score_thr: only draw boxes with ``score >= score_thr``.
    """
    if image is not None:
        ax.imshow(to_numpy_image(image), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    if boxes is None or len(boxes) == 0:
        return ax
    boxes = torch.as_tensor(boxes).detach().cpu().float().numpy()
    labels = torch.as_tensor(labels).detach().cpu().numpy()
    sc = None if scores is None else torch.as_tensor(scores).detach().cpu().float().numpy()
    for i, (box, lab) in enumerate(zip(boxes, labels)):
        name = CLASSES[int(lab) - 1]
        if classes is not None and name not in classes:
            continue
        if sc is not None and sc[i] < score_thr:
            continue
        x1, y1, x2, y2 = box
        color = CLASS_COLORS[name]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                   linewidth=linewidth, linestyle=linestyle))
        if show_labels:
            text = SHORT_NAMES[name] if short_names else name
            if sc is not None:
                text += f" {sc[i]:.2f}"
            ax.text(x1, y1 - 2, text, color=text_color(color), fontsize=fontsize, va="bottom",
                    bbox=dict(facecolor=color, edgecolor="none", pad=0.8, alpha=0.85))
    return ax


def class_legend(ax_or_fig, *, short: bool = False, ncol: int = 5, **kwargs):
    """A legend with the nine class colours."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="none", edgecolor=CLASS_COLORS[n], linewidth=2,
                     label=(SHORT_NAMES[n] + " = " + n) if short else n) for n in CLASSES]
    return ax_or_fig.legend(handles=handles, ncol=ncol, fontsize=8, frameon=False, **kwargs)


def gallery(dataset, indices: Sequence[int], *, ncols: int = 2, width: float = 14.0,
            predictions: Sequence[dict] | None = None, score_thr: float = 0.3,
            titles: bool = True):
    """A grid of dataset items with their ground-truth boxes (and predictions, dashed)."""
    n = len(indices)
    nrows = int(np.ceil(n / ncols))
    h, w = dataset.record(indices[0])["height"], dataset.record(indices[0])["width"]
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, width / ncols * h / w * nrows + 0.8),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for k, (ax, idx) in enumerate(zip(axes.flat, indices)):
        image, target = dataset[idx]
        title = (f"image {target['image_id']}: {len(target['labels'])} boxes" if titles
                 else None)
        draw_boxes(ax, image, target["boxes"], target["labels"], title=title)
        if predictions is not None:
            p = predictions[k]
            draw_boxes(ax, None, p["boxes"], p["labels"], p["scores"], score_thr=score_thr,
                       linestyle="--", show_labels=False)
    class_legend(fig, loc="lower center", ncol=5)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def class_crops(dataset, *, per_class: int = 4, context: float = 0.6, size: int = 96):
    """What each anomaly looks like: ``per_class`` crops of each class around its boxes (with
    ``context`` times the box size as margin), one row per class."""
    from torchvision.transforms.v2.functional import resize

    found: dict[int, list[tuple[int, np.ndarray]]] = {k: [] for k in range(1, len(CLASSES) + 1)}
    for i in range(len(dataset)):
        rec = dataset.record(i)
        for b, lab in zip(rec["boxes"], rec["labels"]):
            if len(found[int(lab)]) < per_class:
                found[int(lab)].append((i, b))
        if all(len(v) >= per_class for v in found.values()):
            break
    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(1.5 * per_class + 1.8,
                                                               1.5 * len(CLASSES)),
                             squeeze=False)
    cache: dict[int, torch.Tensor] = {}
    for row, lab in enumerate(range(1, len(CLASSES) + 1)):
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(CLASSES[lab - 1].replace(" ", "\n"), fontsize=8, rotation=0,
                              ha="right", va="center")
            if col >= len(found[lab]):
                for s in ax.spines.values():
                    s.set_visible(False)
                continue
            i, (x1, y1, x2, y2) = found[lab][col]
            if i not in cache:
                cache[i] = dataset.load_image(i)
            img = cache[i]
            H, W = img.shape[-2:]
            m = context * max(x2 - x1, y2 - y1)
            cx1, cy1 = int(max(0, x1 - m)), int(max(0, y1 - m))
            cx2, cy2 = int(min(W, x2 + m)), int(min(H, y2 + m))
            crop = img[:, cy1:cy2, cx1:cx2]
            scale = size / max(crop.shape[-2:])
            crop = resize(crop, [max(1, round(crop.shape[-2] * scale)),
                                 max(1, round(crop.shape[-1] * scale))], antialias=True)
            ax.imshow(to_numpy_image(crop), cmap="gray", vmin=0, vmax=1)
            ax.add_patch(plt.Rectangle(((x1 - cx1) * scale, (y1 - cy1) * scale),
                                       (x2 - x1) * scale, (y2 - y1) * scale, fill=False,
                                       edgecolor=CLASS_COLORS[CLASSES[lab - 1]], linewidth=1.2))
    fig.tight_layout()
    return fig


def plot_class_counts(counts, ax=None, *, log: bool = False, title: str | None = None):
    """Bar chart of boxes per class (``counts``: a pandas Series indexed by class name)."""
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    order = list(counts.sort_values(ascending=False).index)
    sns.barplot(x=counts[order].values, y=order, hue=order, ax=ax, orient="h", legend=False,
                palette=[CLASS_COLORS[n] for n in order])
    for i, v in enumerate(counts[order].values):
        ax.text(v, i, f" {int(v)}", va="center", fontsize=8)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("boxes" + (" (log scale)" if log else ""))
    ax.set_ylabel("")
    if title:
        ax.set_title(title)
    return ax


def plot_box_sizes(table, ax=None, *, title: str | None = None):
    """Distribution of ``sqrt(w*h)`` per class on a log scale (``table`` from
    :func:`oralx_lib.data.stats.box_table`)."""
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    present = [n for n in CLASSES if (table["class"] == n).any()]
    sns.boxplot(data=table, x="sqrt_area", y="class", hue="class", order=present,
                hue_order=present, palette=[CLASS_COLORS[n] for n in present], ax=ax,
                log_scale=True, fliersize=2, legend=False)
    ax.set_xlabel(r"box size $\sqrt{wh}$ in pixels (log scale)")
    ax.set_ylabel("")
    if title:
        ax.set_title(title)
    return ax


def plot_boxes_per_image(per_image, ax=None, *, title: str | None = None):
    """Histogram of boxes per image, with the mean marked."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    per_image = np.asarray(per_image)
    bins = np.arange(per_image.max() + 2) - 0.5 if len(per_image) else 10
    ax.hist(per_image, bins=bins, color=OKABE_ITO["blue"], edgecolor="white")
    ax.axvline(per_image.mean(), color="k", linestyle="--", linewidth=1)
    ax.text(per_image.mean(), ax.get_ylim()[1] * 0.95, f" mean {per_image.mean():.1f}",
            va="top", fontsize=8)
    ax.set_xlabel("boxes per image")
    ax.set_ylabel("images")
    if title:
        ax.set_title(title)
    return ax


def render_item(dataset, index: int, *, classes: Sequence[str] | None = None,
                prediction: dict | None = None, score_thr: float = 0.3, ax=None,
                width: float = 11.0):
    """Draw item ``index`` with its ground truth (solid) and, if given, a prediction (dashed,
    with scores), keeping only ``classes``. Returns the figure."""
    image, target = dataset[index]
    h, w = image.shape[-2:]
    if ax is None:
        fig, ax = plt.subplots(figsize=(width, width * h / w + 0.6))
    else:
        fig = ax.figure
    shown = [n for n in CLASSES if classes is None or n in classes]
    n_gt = sum(CLASSES[int(lab) - 1] in shown for lab in target["labels"])
    title = f"item {index} (image id {target['image_id']}): {n_gt} ground-truth boxes"
    draw_boxes(ax, image, target["boxes"], target["labels"], classes=shown, title=title)
    if prediction is not None:
        draw_boxes(ax, None, prediction["boxes"], prediction["labels"], prediction["scores"],
                   classes=shown, score_thr=score_thr, linestyle="--")
        n_pred = int(sum(
            float(s) >= score_thr and CLASSES[int(lab) - 1] in shown
            for s, lab in zip(prediction["scores"], prediction["labels"])))
        ax.set_title(title + f"; {n_pred} predictions with score >= {score_thr:.2f} (dashed)",
                     fontsize=9)
    class_legend(fig, loc="lower center", ncol=5)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
