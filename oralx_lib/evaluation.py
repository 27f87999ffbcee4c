"""COCO evaluation for OralXrays-9: AP / AR as pycocotools computes them, per-class AP by class
name, precision-recall curves and a confusion summary between classes.

Everything here speaks COCO: the ground truth is a COCO JSON file (or a pycocotools ``COCO``)
and detections are COCO result dicts::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}

with ``category_id`` in the ground-truth file's own ids. Classes are matched to
:data:`oralx_lib.CLASSES` by **name**, never by their position in the file.

The matching itself is pycocotools' ``COCOeval``: for every image, class, area range and IoU
threshold ``t in {0.50, 0.55, ..., 0.95}`` detections (best score first, at most ``maxDet`` per
image) are matched greedily to the unmatched ground truth box of highest IoU ``>= t``; the
precision-recall curve is sampled at 101 recall points ``r in {0, 0.01, ..., 1}`` with the
interpolated precision ``p_interp(r) = max_{r' >= r} p(r')``, and

    AP = mean over (t, r, classes with ground truth) of p_interp(r)

The summary numbers are computed here from ``COCOeval.eval["precision"]`` (shape
``(T=10, R=101, K, A=4, M)``) and ``["recall"]`` (shape ``(T, K, A, M)``) rather than with
``COCOeval.summarize()``, whose first line hard-codes ``maxDets=100``. On COCO's default setting
both give the same numbers.

**Which maxDets each number uses.** :func:`evaluate_coco` reads every AP and ``ARs/m/l`` at one
``maxDets = max_dets`` (100: COCO's standard), ``AR1``/``AR10``/``AR{max_dets}`` at theirs.
COCOeval applies ``maxDets`` per image *and class*; the engine therefore passes at most
``max_dets`` detections per image (COCO's rule of 100 per image). The release evaluates
differently (:func:`release_metrics`): it passes the model's 300 detections per image and sets
``maxDets = [100, 300, 1000]``, and ``COCOeval.summarize()`` then reads the headline AP at 100
(per image and class, so in effect all 300) but AP50, AP75 and APs/m/l at 1000.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

from oralx_lib import CLASSES
from oralx_lib.errors import EvaluationError
from oralx_lib.palette import CLASS_COLORS, LINESTYLES

#: Row / column names of :func:`confusion_matrix`: the nine classes, then background.
CONFUSION_NAMES: tuple[str, ...] = (*CLASSES, "background")

#: Keys of an IoU choice for :func:`pr_curves`.
IOU_CHOICES = (0.5, 0.75, "0.5:0.95")




# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_coco(gt: str | Path | COCO) -> COCO:
    """A pycocotools ``COCO`` from a JSON path (quietly) or the object itself."""
    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise EvaluationError(
            f"ground-truth file {path} does not exist: pass the split's annotation file, e.g. "
            "<root>/annotations/instances_val2017.json"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"ground-truth file {path} is not valid JSON ({exc})") from exc
    except (KeyError, TypeError, AssertionError) as exc:
        raise EvaluationError(
            f"ground-truth file {path} is not a COCO annotation file (needs 'images', "
            f"'annotations' and 'categories'): {exc!r}"
        ) from exc


def _clean_detections(coco_gt: COCO, detections: Iterable[Mapping]) -> list[dict]:
    """Copies of the detection dicts with plain Python numbers, checked field by field."""
    known_images = set(coco_gt.getImgIds())
    known_cats = set(coco_gt.getCatIds())
    cleaned: list[dict] = []
    for i, det in enumerate(detections):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in det:
                raise EvaluationError(
                    f"detection #{i} has no {key!r}: each detection needs image_id, "
                    "category_id, bbox [x, y, w, h] and score"
                )
        bbox = [float(v) for v in np.asarray(det["bbox"], dtype=np.float64).reshape(-1)]
        if len(bbox) != 4:
            raise EvaluationError(f"detection #{i}: 'bbox' must hold 4 numbers [x, y, w, h]")
        image_id, category_id = int(det["image_id"]), int(det["category_id"])
        if image_id not in known_images:
            raise EvaluationError(
                f"detection #{i} refers to image_id {image_id}, which the ground truth does not "
                "contain: evaluate against the annotation file of the same split"
            )
        if category_id not in known_cats:
            raise EvaluationError(
                f"detection #{i} has category_id {category_id}, not a category of the ground "
                f"truth (ids {sorted(known_cats)}): map labels with the dataset's "
                "label_to_category_id"
            )
        cleaned.append(
            {"image_id": image_id, "category_id": category_id, "bbox": bbox,
             "score": float(det["score"])}
        )
    return cleaned


def _results_coco(coco_gt: COCO, detections: list[dict]) -> COCO:
    """The detections as a pycocotools ``COCO`` of results (an empty one when there are none)."""
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(detections)
    empty = COCO()
    empty.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


#: The release's evaluation: COCOeval's maxDets, and the detections per image its model passes.
RELEASE_MAX_DETS: tuple[int, int, int] = (100, 300, 1000)
RELEASE_DETECTIONS_PER_IMAGE = 300


def _max_dets_list(max_dets: int | Sequence[int]) -> list[int]:
    if not isinstance(max_dets, int):
        values = [int(m) for m in max_dets]
        if not values or min(values) < 1 or values != sorted(values):
            raise EvaluationError(f"max_dets={max_dets}: give increasing positive counts")
        return values
    if int(max_dets) < 1:
        raise EvaluationError(f"max_dets={max_dets}: it must be a positive number of boxes")
    return sorted({1, 10, int(max_dets)})


def run_cocoeval(
    gt: str | Path | COCO,
    detections: Iterable[Mapping],
    max_dets: int | Sequence[int] = 100,
    *,
    img_ids: Sequence[int] | None = None,
) -> COCOeval:
    """pycocotools' ``COCOeval`` on ``bbox``, evaluated and accumulated, without its prints.

    ``params.maxDets`` is ``[1, 10, max_dets]`` (or the increasing list ``max_dets``, e.g. the
    release's ``[100, 300, 1000]``); ``img_ids`` restricts the evaluation to those
    images (e.g. a subset used for a fast run). Empty ``detections`` are fine (precision 0
    wherever there is ground truth).
    """
    coco_gt = load_coco(gt)
    dets = _clean_detections(coco_gt, detections)
    coco_dt = _results_coco(coco_gt, dets)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    coco_eval.params.maxDets = _max_dets_list(max_dets)
    if img_ids is not None:
        unknown = set(int(i) for i in img_ids) - set(coco_gt.getImgIds())
        if unknown:
            raise EvaluationError(
                f"img_ids {sorted(unknown)[:5]} are not images of the ground truth"
            )
        coco_eval.params.imgIds = sorted(int(i) for i in img_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


# --------------------------------------------------------------------------------------------
# Summary numbers
# --------------------------------------------------------------------------------------------
def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (COCO marks "no ground truth" with -1); -1 when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _iou_index(coco_eval: COCOeval, iou: float) -> int:
    hits = np.where(np.isclose(coco_eval.params.iouThrs, iou))[0]
    if hits.size == 0:
        raise EvaluationError(f"IoU {iou} is not one of COCOeval's thresholds")
    return int(hits[0])


def class_index(coco_gt: COCO) -> dict[str, int | None]:
    """Map each of the nine class names to the ground truth's category id (``None`` if absent).

    Names match after ``strip()`` and ``casefold()``, so ``"decay"`` finds ``"Decay"``.
    """
    by_name = {
        str(cat["name"]).strip().casefold(): int(cat["id"])
        for cat in coco_gt.loadCats(coco_gt.getCatIds())
    }
    return {name: by_name.get(name.casefold()) for name in CLASSES}


def summarize_cocoeval(coco_eval: COCOeval) -> dict:
    """COCO's twelve summary numbers plus per-class AP, from an accumulated ``COCOeval``.

    With ``M = params.maxDets[-1]``, ``prec = eval["precision"]`` ``(T, R, K, A, M)`` and
    ``rec = eval["recall"]`` ``(T, K, A, M)``, each number is the mean of the entries > -1 of:

    - ``AP``: ``prec[:, :, :, all, M]``; ``AP50`` / ``AP75``: the same at one IoU threshold;
    - ``APs`` / ``APm`` / ``APl``: area ranges small / medium / large;
    - ``AR1``, ``AR10``, ``AR{M}``: ``rec[:, :, all, m]`` for each ``m`` in ``maxDets``;
      ``ARs`` / ``ARm`` / ``ARl`` at ``M``;
    - ``per_class_AP[name]`` / ``per_class_AP50[name]``: ``prec[..., k, all, M]`` for the
      category whose **name** is ``name``; ``None`` when the class has no ground truth.

    A summary number with no ground truth at all (e.g. ``APs`` without small boxes) is ``-1``,
    as in COCOeval.
    """
    params = coco_eval.params
    if not coco_eval.eval:
        raise EvaluationError("the COCOeval has not been accumulated: call run_cocoeval")
    precision = coco_eval.eval["precision"]
    recall = coco_eval.eval["recall"]
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    max_dets = list(params.maxDets)
    m_last = len(max_dets) - 1
    t50, t75 = _iou_index(coco_eval, 0.5), _iou_index(coco_eval, 0.75)
    a_all = area["all"]

    stats: dict = {
        "AP": _mean_valid(precision[:, :, :, a_all, m_last]),
        "AP50": _mean_valid(precision[t50, :, :, a_all, m_last]),
        "AP75": _mean_valid(precision[t75, :, :, a_all, m_last]),
        "APs": _mean_valid(precision[:, :, :, area["small"], m_last]),
        "APm": _mean_valid(precision[:, :, :, area["medium"], m_last]),
        "APl": _mean_valid(precision[:, :, :, area["large"], m_last]),
    }
    for m, count in enumerate(max_dets):
        stats[f"AR{count}"] = _mean_valid(recall[:, :, a_all, m])
    stats["ARs"] = _mean_valid(recall[:, :, area["small"], m_last])
    stats["ARm"] = _mean_valid(recall[:, :, area["medium"], m_last])
    stats["ARl"] = _mean_valid(recall[:, :, area["large"], m_last])

    cat_ids = list(params.catIds)
    per_class, per_class50 = {}, {}
    for name, cat_id in class_index(coco_eval.cocoGt).items():
        if cat_id is None or cat_id not in cat_ids:
            per_class[name] = per_class50[name] = None
            continue
        k = cat_ids.index(cat_id)
        ap = _mean_valid(precision[:, :, k, a_all, m_last])
        ap50 = _mean_valid(precision[t50, :, k, a_all, m_last])
        per_class[name] = None if ap < 0 else ap
        per_class50[name] = None if ap50 < 0 else ap50
    stats["per_class_AP"] = per_class
    stats["per_class_AP50"] = per_class50
    stats["max_dets"] = int(max_dets[-1])
    stats["num_images"] = len(params.imgIds)
    return stats


def evaluate_coco(
    gt: str | Path | COCO,
    detections: Iterable[Mapping],
    max_dets: int = 100,
    *,
    img_ids: Sequence[int] | None = None,
) -> dict:
    """COCO box AP/AR of ``detections`` against ``gt``, as pycocotools computes them.

    Args:
        gt: a COCO JSON path or a pycocotools ``COCO``.
        detections: COCO result dicts ``{"image_id", "category_id", "bbox" [x, y, w, h],
            "score"}`` in the ground truth's category ids. Empty gives zeros, not an error.
        max_dets: ``params.maxDets = [1, 10, max_dets]``; every AP and ``ARs/m/l`` is read at
            ``max_dets`` (COCO's 100). COCOeval applies it per image and class: pass at most
            ``max_dets`` detections per image (:func:`top_per_image`) for COCO's rule. The
            release's protocol is :func:`release_metrics`.
        img_ids: evaluate on these images only (default: every image of ``gt``).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs",
        "ARm", "ARl", "per_class_AP": {name: float | None}, "per_class_AP50": {...},
        "max_dets", "num_images", "num_detections"}``; see :func:`summarize_cocoeval`.
    """
    detections = list(detections)
    stats = summarize_cocoeval(run_cocoeval(gt, detections, max_dets, img_ids=img_ids))
    stats["num_detections"] = len(detections)
    return stats


def top_per_image(detections: Iterable[Mapping], k: int) -> list[dict]:
    """The ``k`` best-scored detections of every image (COCO's rule: at most 100 per image)."""
    by_image: dict[int, list[dict]] = {}
    for d in detections:
        by_image.setdefault(int(d["image_id"]), []).append(dict(d))
    out: list[dict] = []
    for dets in by_image.values():
        out += sorted(dets, key=lambda d: -float(d["score"]))[:k]
    return out


def release_metrics(
    gt: str | Path | COCO,
    detections: Iterable[Mapping],
    *,
    img_ids: Sequence[int] | None = None,
) -> dict:
    """The numbers the release reports: pycocotools' ``summarize()`` with ``params.maxDets =
    [100, 300, 1000]`` on the model's detections (300 per image in the release).

    Returns:
        ``{"AP" (maxDets 100), "AP50", "AP75", "APs", "APm", "APl" (maxDets 1000), "AR100",
        "AR300", "AR1000", "ARs", "ARm", "ARl" (1000), "max_dets": {name: the maxDets it
        uses}, "num_detections"}``. pycocotools applies maxDets per image and class: with 300
        detections per image, 100 rarely binds and 1000 never does.
    """
    detections = list(detections)
    coco_eval = run_cocoeval(gt, detections, list(RELEASE_MAX_DETS), img_ids=img_ids)
    at = {m: i for i, m in enumerate(coco_eval.params.maxDets)}
    precision, recall = coco_eval.eval["precision"], coco_eval.eval["recall"]
    area = {label: i for i, label in enumerate(coco_eval.params.areaRngLbl)}
    t50, t75 = _iou_index(coco_eval, 0.5), _iou_index(coco_eval, 0.75)
    a_all, last = area["all"], at[1000]
    stats = {
        "AP": _mean_valid(precision[:, :, :, a_all, at[100]]),
        "AP50": _mean_valid(precision[t50, :, :, a_all, last]),
        "AP75": _mean_valid(precision[t75, :, :, a_all, last]),
        "APs": _mean_valid(precision[:, :, :, area["small"], last]),
        "APm": _mean_valid(precision[:, :, :, area["medium"], last]),
        "APl": _mean_valid(precision[:, :, :, area["large"], last]),
    }
    for m in RELEASE_MAX_DETS:
        stats[f"AR{m}"] = _mean_valid(recall[:, :, a_all, at[m]])
    for size in ("small", "medium", "large"):
        stats[f"AR{size[0]}"] = _mean_valid(recall[:, :, area[size], last])
    stats["max_dets"] = {"AP": 100, "AP50": 1000, "AP75": 1000, "APs": 1000, "APm": 1000,
                         "APl": 1000, "AR100": 100, "AR300": 300, "AR1000": 1000, "ARs": 1000,
                         "ARm": 1000, "ARl": 1000}
    stats["num_detections"] = len(detections)
    return stats


# --------------------------------------------------------------------------------------------
# Precision-recall curves
# --------------------------------------------------------------------------------------------
def pr_curves(
    source: COCOeval | tuple,
    *,
    iou: float | str = 0.5,
    max_dets: int = 100,
) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Per-class interpolated precision-recall curves, as COCOeval samples them.

    Args:
        source: an accumulated ``COCOeval`` (from :func:`run_cocoeval`), or a tuple
            ``(gt, detections)`` to evaluate first.
        iou: ``0.5``, ``0.75`` or ``"0.5:0.95"`` (precision averaged over the ten thresholds).
        max_dets: detections per image when ``source`` is a tuple.

    Returns:
        ``{name: (recall (101,), precision (101,))}`` for the nine class names, recall being
        ``params.recThrs`` (0, 0.01, ..., 1) and precision ``p_interp(r)`` at area "all" and
        the largest ``maxDets``; ``None`` for a class without ground truth.
    """
    coco_eval = source if isinstance(source, COCOeval) else run_cocoeval(*source, max_dets)
    if not coco_eval.eval:
        raise EvaluationError("the COCOeval has not been accumulated: call run_cocoeval")
    precision = coco_eval.eval["precision"]
    a_all = list(coco_eval.params.areaRngLbl).index("all")
    if iou == "0.5:0.95":
        thresholds = list(range(len(coco_eval.params.iouThrs)))
    elif isinstance(iou, (int, float)) and not isinstance(iou, bool):
        thresholds = [_iou_index(coco_eval, float(iou))]
    else:
        raise EvaluationError(f"iou={iou!r}: use one of {IOU_CHOICES}")
    recall = np.asarray(coco_eval.params.recThrs, dtype=np.float64)
    cat_ids = list(coco_eval.params.catIds)
    curves: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for name, cat_id in class_index(coco_eval.cocoGt).items():
        if cat_id is None or cat_id not in cat_ids:
            curves[name] = None
            continue
        block = precision[thresholds, :, cat_ids.index(cat_id), a_all, -1]  # (T', R)
        if np.all(block < 0):
            curves[name] = None
            continue
        curves[name] = (recall.copy(), np.where(block < 0, 0.0, block).mean(axis=0))
    return curves


def plot_pr_curves(source, *, iou: float | str = 0.5, max_dets: int = 100, ax=None, title=None):
    """Plot :func:`pr_curves` (one line per class, its AP in the legend); returns the Figure.

    ``source`` is either the dict :func:`pr_curves` returns or anything it accepts.
    """
    import matplotlib.pyplot as plt

    curves = source if isinstance(source, dict) else pr_curves(source, iou=iou, max_dets=max_dets)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 5))
    else:
        fig = ax.figure
    for i, name in enumerate(CLASSES):
        curve = curves.get(name)
        if curve is None:
            continue
        recall, precision = curve
        # the class's colour and a line style: classes differ by more than colour
        ax.plot(recall, precision, color=CLASS_COLORS[name], lw=1.8,
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                label=f"{name} (AP {float(np.mean(precision)):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=title or f"Precision-recall per class, IoU {iou}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Confusion summary
# --------------------------------------------------------------------------------------------
def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a (N, 4)`` and ``b (M, 4)`` -> ``(N, M)``."""
    import torch
    from torchvision.ops import box_iou

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()


def confusion_matrix(
    gt: str | Path | COCO,
    detections: Iterable[Mapping],
    iou_thr: float = 0.5,
    score_thr: float = 0.3,
    *,
    img_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Which class the detector says for each ground truth box, and what it says on background.

    Per image, detections with ``score >= score_thr`` are matched one-to-one to the
    (non-crowd) ground truth boxes **ignoring classes**, maximising the summed IoU over pairs
    with ``IoU >= iou_thr`` (``scipy.optimize.linear_sum_assignment``). Then, with ``B = 9``
    the background index:

    - a matched pair (true class ``i``, predicted ``j``) adds 1 to ``M[i, j]``;
    - an unmatched ground truth of class ``i`` (missed) adds 1 to ``M[i, B]``;
    - an unmatched detection of class ``j`` (false positive) adds 1 to ``M[B, j]``, unless it
      covers a crowd region (``IoU >= iou_thr``), which is ignored.

    Returns:
        ``(M, names)``: ``M`` int64 ``(10, 10)``, rows the ground truth, columns the
        prediction, and ``names`` = :data:`CONFUSION_NAMES` (nine classes, then background).
        ``M[B, B]`` is always 0.
    """
    coco_gt = load_coco(gt)
    dets = _clean_detections(coco_gt, detections)
    index = class_index(coco_gt)
    cat_to_row = {cat_id: row for row, cat_id in enumerate(index.values()) if cat_id is not None}
    names_by_id = {int(c["id"]): c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    background = len(CLASSES)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)

    def row_of(cat_id: int) -> int:
        if cat_id not in cat_to_row:
            raise EvaluationError(
                f"category {names_by_id.get(cat_id, cat_id)!r} (id {cat_id}) of the ground "
                f"truth is not one of the nine OralXrays-9 classes {CLASSES}"
            )
        return cat_to_row[cat_id]

    by_image: dict[int, list[dict]] = {}
    for det in dets:
        if det["score"] >= score_thr:
            by_image.setdefault(det["image_id"], []).append(det)
    images = coco_gt.getImgIds() if img_ids is None else [int(i) for i in img_ids]
    for image_id in images:
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        gts = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        preds = by_image.get(image_id, [])
        gt_rows = [row_of(int(a["category_id"])) for a in gts]
        pred_cols = [row_of(int(d["category_id"])) for d in preds]
        iou = _box_iou(_xywh_to_xyxy([a["bbox"] for a in gts]),
                       _xywh_to_xyxy([d["bbox"] for d in preds]))
        matched_gt, matched_pred = set(), set()
        if iou.size:
            gain = np.where(iou >= iou_thr, iou, 0.0)
            for g, p in zip(*linear_sum_assignment(gain, maximize=True)):
                if gain[g, p] > 0:
                    matrix[gt_rows[g], pred_cols[p]] += 1
                    matched_gt.add(int(g))
                    matched_pred.add(int(p))
        for g, row in enumerate(gt_rows):
            if g not in matched_gt:
                matrix[row, background] += 1
        crowd_iou = _box_iou(_xywh_to_xyxy([d["bbox"] for d in preds]),
                             _xywh_to_xyxy([a["bbox"] for a in crowd]))
        for p, col in enumerate(pred_cols):
            if p in matched_pred:
                continue
            if crowd_iou.size and crowd_iou[p].max() >= iou_thr:
                continue
            matrix[background, col] += 1
    return matrix, CONFUSION_NAMES


def plot_confusion(matrix: np.ndarray, names: Sequence[str] = CONFUSION_NAMES, *,
                   normalize: bool = False, ax=None, title: str | None = None):
    """Heat map of :func:`confusion_matrix` with the counts written in; returns the Figure.

    ``normalize=True`` divides each row by its sum (rows: ground truth), so the diagonal reads
    as per-class recall at the chosen IoU and score thresholds.
    """
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    values = matrix.astype(np.float64)
    if normalize:
        sums = values.sum(axis=1, keepdims=True)
        values = np.divide(values, sums, out=np.zeros_like(values), where=sums > 0)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 6.5))
    else:
        fig = ax.figure
    image = ax.imshow(values, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, labels=names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels=names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="ground truth",
           title=title or ("Confusion (row-normalised)" if normalize else "Confusion (counts)"))
    top = values.max() if values.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if matrix[i, j] == 0:
                continue
            text = f"{values[i, j]:.2f}" if normalize else str(int(matrix[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if values[i, j] > 0.6 * top else "black")
    fig.tight_layout()
    return fig


__all__ = [
    "CONFUSION_NAMES",
    "EvaluationError",
    "RELEASE_DETECTIONS_PER_IMAGE",
    "RELEASE_MAX_DETS",
    "class_index",
    "confusion_matrix",
    "evaluate_coco",
    "load_coco",
    "plot_confusion",
    "plot_pr_curves",
    "pr_curves",
    "release_metrics",
    "run_cocoeval",
    "summarize_cocoeval",
    "top_per_image",
]
