"""Dataset statistics for the data chapter: counts per class, boxes per image, box sizes, image
sizes. Everything is read from the annotations; no image is decoded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .. import CLASSES
from .dataset import OralXrays9


def _as_list(datasets: OralXrays9 | Iterable[OralXrays9]) -> list[OralXrays9]:
    return [datasets] if isinstance(datasets, OralXrays9) else list(datasets)


def box_table(datasets: OralXrays9 | Iterable[OralXrays9]) -> pd.DataFrame:
    """One row per box: ``split, image_id, label (1..9), class, x1, y1, x2, y2, w, h, sqrt_area,
    rel_size`` (``sqrt_area`` over the square root of the image area)."""
    rows = []
    for ds in _as_list(datasets):
        for i in range(len(ds)):
            rec = ds.record(i)
            b = rec["boxes"]
            if not len(b):
                continue
            w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            sq = np.sqrt(w * h)
            rows.append(pd.DataFrame({
                "split": ds.split, "image_id": rec["id"], "label": rec["labels"],
                "class": [CLASSES[lab - 1] for lab in rec["labels"]],
                "x1": b[:, 0], "y1": b[:, 1], "x2": b[:, 2], "y2": b[:, 3], "w": w, "h": h,
                "sqrt_area": sq, "rel_size": sq / np.sqrt(rec["width"] * rec["height"]),
            }))
    if not rows:
        return pd.DataFrame(columns=["split", "image_id", "label", "class", "x1", "y1", "x2",
                                     "y2", "w", "h", "sqrt_area", "rel_size"])
    table = pd.concat(rows, ignore_index=True)
    table["class"] = pd.Categorical(table["class"], categories=list(CLASSES), ordered=True)
    return table


def class_counts(datasets: OralXrays9 | Iterable[OralXrays9]) -> pd.Series:
    """Boxes per class, indexed by all nine names in the released order (zeros included)."""
    counts = Counter()
    for ds in _as_list(datasets):
        for i in range(len(ds)):
            counts.update(ds.record(i)["labels"].tolist())
    return pd.Series([counts.get(k + 1, 0) for k in range(len(CLASSES))], index=list(CLASSES),
                     name="boxes")


def boxes_per_image(datasets: OralXrays9 | Iterable[OralXrays9]) -> np.ndarray:
    """Number of (non-ignored) boxes of every image, images without boxes included."""
    return np.array([len(ds.record(i)["labels"]) for ds in _as_list(datasets)
                     for i in range(len(ds))], dtype=np.int64)


def image_sizes(datasets: OralXrays9 | Iterable[OralXrays9]) -> pd.Series:
    """How many images have each ``"W x H"`` size, most common first."""
    sizes = Counter(f"{ds.record(i)['width']} x {ds.record(i)['height']}"
                    for ds in _as_list(datasets) for i in range(len(ds)))
    return pd.Series(dict(sizes.most_common()), name="images")


def summary(datasets: OralXrays9 | Iterable[OralXrays9]) -> dict:
    """Headline numbers: images, boxes, boxes per image, class imbalance and size spread.

    ``imbalance`` is the most frequent class's count over the rarest non-empty class's;
    ``size_spread_p95_p5`` is the 95th over the 5th percentile of ``sqrt(w*h)``.
    """
    ds_list = _as_list(datasets)
    counts = class_counts(ds_list)
    per_image = boxes_per_image(ds_list)
    table = box_table(ds_list)
    nonzero = counts[counts > 0]
    p5, p50, p95 = (np.percentile(table["sqrt_area"], [5, 50, 95]) if len(table)
                    else (np.nan, np.nan, np.nan))
    return {
        "images": int(len(per_image)),
        "boxes": int(per_image.sum()),
        "boxes_per_image": float(per_image.mean()) if len(per_image) else 0.0,
        "images_without_boxes": int((per_image == 0).sum()),
        "imbalance": float(nonzero.max() / nonzero.min()) if len(nonzero) else float("nan"),
        "sqrt_area_p5": float(p5), "sqrt_area_p50": float(p50), "sqrt_area_p95": float(p95),
        "size_spread_p95_p5": float(p95 / p5) if len(table) else float("nan"),
        "ignored_regions": int(sum(len(ds.record(i)["ignore"]) for ds in ds_list
                                   for i in range(len(ds)))),
    }


def input_box_sizes(datasets: OralXrays9 | Iterable[OralXrays9],
                    profiles: Iterable[str] = ("fast", "release_scale"),
                    model: str = "faster_rcnn") -> pd.DataFrame:
    """Box sizes at the **network input** of each profile, from the same images.

    A detector resizes every image before it sees it (``scale = min(min_size / short side,
    max_size / long side)`` at the profile's test scale, :func:`oralx_lib.profiles.eval_scale`),
    so an object's size in the network's pixels depends on the profile. ``release_scale`` is the
    release's own test scale (a real 1991 x 1127 panorama at 1333 x 754), so its column is what
    the release's network sees; its training crops keep that scale.

    Returns:
        One row per (profile, box): ``profile, split, image_id, class, scale, w, h, sqrt_area``
        (``w, h, sqrt_area`` in network-input pixels; ``scale`` the image's resize factor).
    """
    from ..profiles import engine_profile, eval_scale, input_scale

    table = box_table(datasets)
    sizes = {}
    for ds in _as_list(datasets):
        for i in range(len(ds)):
            rec = ds.record(i)
            sizes[(ds.split, rec["id"])] = (rec["width"], rec["height"])
    frames = []
    for name in profiles:
        min_size, max_size = eval_scale(engine_profile(name), model)
        scale = np.array([input_scale(*sizes[(s, i)], min_size, max_size)
                          for s, i in zip(table["split"], table["image_id"])], dtype=float)
        frames.append(pd.DataFrame({
            "profile": name, "split": table["split"].to_numpy(),
            "image_id": table["image_id"].to_numpy(), "class": table["class"].to_numpy(),
            "scale": scale, "w": table["w"].to_numpy() * scale,
            "h": table["h"].to_numpy() * scale,
            "sqrt_area": table["sqrt_area"].to_numpy() * scale,
        }))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["profile", "split", "image_id", "class", "scale", "w", "h", "sqrt_area"])
    out["class"] = pd.Categorical(out["class"], categories=list(CLASSES), ordered=True)
    return out


#: Size bins (network-input pixels, ``sqrt(w h)``) of :func:`input_size_summary`.
INPUT_SIZE_EDGES: tuple[float, ...] = (0.0, 8.0, 16.0, 32.0, 96.0, float("inf"))


def input_size_summary(sizes: pd.DataFrame) -> pd.DataFrame:
    """Per profile of :func:`input_box_sizes`: boxes, median and 5th / 95th percentiles of
    ``sqrt(w h)``, the median ``w`` and ``h``, and the share of boxes in each size bin
    (:data:`INPUT_SIZE_EDGES`: under 8, 8-16, 16-32, 32-96 and 96+ px; COCO's "small" is
    under 32)."""
    rows = []
    for name, part in sizes.groupby("profile", sort=False):
        sq = part["sqrt_area"].to_numpy()
        row = {"profile": name, "boxes": int(len(sq)),
               "scale": float(np.median(part["scale"])) if len(sq) else np.nan,
               "median_sqrt_area": float(np.median(sq)) if len(sq) else np.nan,
               "p5": float(np.percentile(sq, 5)) if len(sq) else np.nan,
               "p95": float(np.percentile(sq, 95)) if len(sq) else np.nan,
               "median_w": float(np.median(part["w"])) if len(sq) else np.nan,
               "median_h": float(np.median(part["h"])) if len(sq) else np.nan}
        counts, _ = np.histogram(sq, bins=INPUT_SIZE_EDGES)
        edges = INPUT_SIZE_EDGES
        for k, c in enumerate(counts):
            hi = "" if np.isinf(edges[k + 1]) else f"{edges[k + 1]:g}"
            row[f"share_{edges[k]:g}-{hi}px"] = float(c / len(sq)) if len(sq) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("profile")
