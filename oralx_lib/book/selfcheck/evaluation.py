"""Self-checks for the chapter "Evaluation and error analysis".

================================  ==========================================================
check                             reference
================================  ==========================================================
``check_greedy_match(fn)``        pycocotools' ``COCOeval`` matching (``dtMatches``)
``check_coco_ap(fn)``             :func:`oralx_lib.evaluation.evaluate_coco` (101-point AP)
================================  ==========================================================

Both references run pycocotools on a small COCO ground truth built for the case, so an answer
that passes computes what the book's evaluation computes. On success one line is printed;
otherwise ``AssertionError`` names the case and, when the answer matches a typical mistake,
explains it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torchvision.ops import box_iou

from ... import CLASSES
from ...evaluation import evaluate_coco, run_cocoeval
from ._report import report as _report


# ------------------------------------------------------------------------------ COCO helpers
def make_coco(gt_boxes_xyxy: Sequence[Sequence[float]], *, width: int = 2000,
              height: int = 2000) -> COCO:
    """A one-image, one-class (``CLASSES[0]``, id 1) pycocotools ``COCO`` holding the given
    xyxy boxes (ids ``1 .. M``, in order)."""
    anns = []
    for k, (x1, y1, x2, y2) in enumerate(gt_boxes_xyxy):
        w, h = float(x2 - x1), float(y2 - y1)
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1,
                     "bbox": [float(x1), float(y1), w, h], "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": width, "height": height,
                                "file_name": "case.png"}],
                    "annotations": anns,
                    "categories": [{"id": 1, "name": CLASSES[0]}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(boxes_xyxy, scores) -> list[dict]:
    return [{"image_id": 1, "category_id": 1,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "score": float(s)} for b, s in zip(boxes_xyxy, scores)]


def coco_matches(det_boxes: Tensor, scores: Tensor, gt_boxes: Tensor, iou_thr: float) -> Tensor:
    """pycocotools' matching on one image and class: ``(N,)`` int64, the index of the ground
    truth box each detection (in the given order) is matched to at ``iou_thr`` (one of
    0.50, 0.55, ..., 0.95), or -1."""
    coco_eval = run_cocoeval(make_coco(gt_boxes.tolist()),
                             _detections(det_boxes.tolist(), scores.tolist()),
                             max_dets=max(100, len(det_boxes)))
    t = int(np.argmin(np.abs(coco_eval.params.iouThrs - iou_thr)))
    if abs(coco_eval.params.iouThrs[t] - iou_thr) > 1e-6:
        raise ValueError(f"iou_thr must be one of COCO's thresholds, got {iou_thr}")
    out = torch.full((len(det_boxes),), -1, dtype=torch.int64)
    entry = next((e for e in coco_eval.evalImgs
                  if e is not None and list(e["aRng"]) == list(coco_eval.params.areaRng[0])),
                 None)
    if entry is None:
        return out
    # Detection ids are 1 + the position in the list given to loadRes; gt ids 1 + index.
    for det_id, gt_id in zip(entry["dtIds"], entry["dtMatches"][t]):
        out[int(det_id) - 1] = int(gt_id) - 1 if gt_id > 0 else -1
    return out


def coco_single_class_ap(scores: Sequence[float], is_tp: Sequence[bool], num_gt: int,
                         *, max_dets: int = 100) -> float:
    """COCO AP (101-point interpolated) of a ranked list for one class, computed by
    :func:`~oralx_lib.evaluation.evaluate_coco` on a ground truth built so that every true
    positive overlaps its own ground-truth box exactly and every false positive overlaps none:
    the list then has the same TP/FP pattern at every IoU threshold."""
    if num_gt < 1:
        raise ValueError("num_gt must be >= 1 (COCO gives no AP for a class without ground truth)")
    if sum(bool(t) for t in is_tp) > num_gt:
        raise ValueError("more true positives than ground-truth boxes")
    gts = [[20.0 * k, 0.0, 20.0 * k + 10.0, 10.0] for k in range(num_gt)]
    boxes, next_gt = [], 0
    for j, tp in enumerate(is_tp):
        if tp:
            boxes.append(gts[next_gt])
            next_gt += 1
        else:
            boxes.append([20.0 * j, 500.0, 20.0 * j + 10.0, 510.0])
    metrics = evaluate_coco(make_coco(gts, width=max(2000, 20 * (len(is_tp) + num_gt))),
                            _detections(boxes, scores), max_dets=max_dets)
    return float(metrics["per_class_AP"][CLASSES[0]])


# ----------------------------------------------------------------------------- wrong answers
def _pr(scores, is_tp, num_gt):
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / num_gt
    precision = ctp / np.maximum(ctp + cfp, np.spacing(1))
    return recall, precision


def _sample(recall, precision, thresholds, interpolate: bool) -> float:
    if interpolate:
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, thresholds, side="left")
    vals = [precision[i] if i < len(precision) else 0.0 for i in idx]
    return float(np.mean(vals)) if vals else 0.0


def _ap_variants(scores, is_tp, num_gt) -> list[tuple[float, str]]:
    recall, precision = _pr(scores, is_tp, num_gt)
    r101 = np.linspace(0, 1, 101)
    unsorted_r, unsorted_p = (np.cumsum(is_tp) / num_gt,
                              np.cumsum(is_tp) / np.arange(1, len(is_tp) + 1))
    step = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return [
        (_sample(recall, precision, r101, interpolate=False),
         "interpolate: at each recall level r use the best precision reached at recall >= r "
         "(p_interp(r) = max_{r' >= r} p(r')), not the precision where r is first reached"),
        (_sample(recall, precision, np.linspace(0, 1, 11), interpolate=True),
         "COCO samples 101 recall levels 0, 0.01, ..., 1 (11 levels is PASCAL VOC 2007)"),
        (step, "COCO does not sum the area under the raw step curve (sum of (r_k - r_{k-1}) "
               "p_k, scikit-learn's average_precision): it averages interpolated precision "
               "at 101 recall levels"),
        (_sample(unsorted_r, unsorted_p, r101, interpolate=True),
         "rank the detections by score (highest first) before accumulating TP and FP"),
        (_sample(recall, precision, r101[1:], interpolate=True),
         "the 101 recall levels include r = 0"),
    ]


def _match_variants(det_boxes, scores, gt_boxes, thr) -> list[tuple[Tensor, str]]:
    iou = box_iou(det_boxes, gt_boxes) if len(gt_boxes) and len(det_boxes) else \
        torch.zeros(len(det_boxes), len(gt_boxes))

    def greedy(order, first_above=False, exclusive=True):
        out = torch.full((len(det_boxes),), -1, dtype=torch.int64)
        taken = set()
        for d in order:
            best, best_iou = -1, thr
            for g in range(len(gt_boxes)):
                if exclusive and g in taken:
                    continue
                if iou[d, g] >= best_iou:
                    best, best_iou = g, float(iou[d, g])
                    if first_above:
                        break
            if best >= 0:
                out[d] = best
                taken.add(best)
        return out

    by_score = sorted(range(len(det_boxes)), key=lambda i: -float(scores[i]))
    return [
        (greedy(range(len(det_boxes))),
         "visit the detections by decreasing score, not in the order they are given"),
        (greedy(by_score, exclusive=False),
         "a ground-truth box can be matched once: a second detection on it is a false "
         "positive (a duplicate)"),
        (greedy(by_score, first_above=True),
         "match each detection to the free ground-truth box of highest IoU, not to the first "
         "one above the threshold"),
    ]


# ------------------------------------------------------------------------------------ checks
def _random_case(g: np.random.Generator, n_det: int, n_gt: int):
    gt = []
    for _ in range(n_gt):
        x, y = g.uniform(0, 150, 2)
        w, h = g.uniform(8, 40, 2)
        gt.append([x, y, x + w, y + h])
    dets = []
    for _ in range(n_det):
        if gt and g.random() < 0.7:
            x1, y1, x2, y2 = gt[g.integers(len(gt))]
            w, h = x2 - x1, y2 - y1
            jitter = g.normal(0, 0.15, 4) * np.array([w, h, w, h])
            dets.append([x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3]])
        else:
            x, y = g.uniform(0, 150, 2)
            w, h = g.uniform(8, 40, 2)
            dets.append([x, y, x + w, y + h])
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
    dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 1.0)
    scores = g.permutation(n_det) / max(n_det, 1) + g.uniform(0, 1e-3, n_det)
    return (torch.tensor(dets, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32),
            torch.tensor(gt, dtype=torch.float32).reshape(-1, 4))


def check_greedy_match(fn: Callable[[Tensor, Tensor, Tensor, float], Tensor], *,
                       seed: int = 0) -> None:
    """``fn(det_boxes (N, 4), scores (N,), gt_boxes (M, 4), iou_thr) -> (N,)`` int: the index
    of the ground-truth box each detection is matched to, or -1, with COCO's greedy rule
    (detections by decreasing score; each takes the still-free box of highest IoU if that IoU
    is >= ``iou_thr``). Compared with pycocotools on the same boxes."""
    t = torch.tensor
    cases = [
        (t([[0.0, 0, 10, 10]]), t([0.9]), t([[0.0, 0, 10, 10]]), 0.5, "one exact match"),
        (t([[0.0, 0, 10, 10], [1.0, 0, 11, 10]]), t([0.3, 0.9]), t([[0.0, 0, 10, 10]]), 0.5,
         "two detections on one box: the higher score wins"),
        (t([[0.0, 0, 10, 10]]), t([0.9]), t([[2.0, 0, 12, 10], [0.0, 0, 10, 10]]), 0.5,
         "two boxes above the threshold: the best IoU wins"),
        (t([[0.0, 0, 10, 10]]), t([0.9]), t([[0.0, 0, 10, 14]]), 0.75,
         "IoU 0.71 is a match at 0.5, not at 0.75"),
        (t([[0.0, 0, 10, 10], [4.0, 0, 14, 10]]), t([0.8, 0.9]),
         t([[0.0, 0, 10, 10], [3.0, 0, 13, 10]]), 0.5,
         "the later detection takes the box the first one prefers"),
        (torch.zeros(0, 4), torch.zeros(0), t([[0.0, 0, 10, 10]]), 0.5, "no detections"),
        (t([[0.0, 0, 10, 10]]), t([0.5]), torch.zeros(0, 4), 0.5, "no ground truth"),
    ]
    g = np.random.default_rng(seed)
    for n_det, n_gt, thr in ((5, 3, 0.5), (12, 6, 0.5), (20, 8, 0.75), (30, 10, 0.6),
                             (8, 8, 0.9)):
        dets, scores, gts = _random_case(g, n_det, n_gt)
        cases.append((dets, scores, gts, thr, f"random {n_det} detections, {n_gt} boxes, "
                                              f"IoU {thr}"))
    for dets, scores, gts, thr, name in cases:
        call = f"greedy_match(..., iou_thr={thr}) [{name}]"
        want = coco_matches(dets, scores, gts, thr) if len(gts) else \
            torch.full((len(dets),), -1, dtype=torch.int64)
        got = torch.as_tensor(fn(dets.clone(), scores.clone(), gts.clone(), thr))
        got = got.reshape(-1).to(torch.int64) if got.numel() else got.reshape(0).long()
        if got.shape == want.shape and torch.equal(got, want):
            continue
        msg = f"{call}:\n  expected {want.tolist()}\n  got      {got.tolist()}"
        for variant, hint in _match_variants(dets, scores, gts, thr):
            if got.shape == variant.shape and torch.equal(got, variant):
                msg += f"\n  hint: {hint}"
                break
        raise AssertionError(msg)
    _report("greedy_match", len(cases))


def check_coco_ap(fn: Callable[[Sequence[float], Sequence[bool], int], float], *,
                  seed: int = 0) -> None:
    """``fn(scores (N,), is_tp (N,), num_gt) -> float``: COCO's AP of one class at one IoU
    threshold from a list of detections marked true / false positive, as
    :func:`oralx_lib.evaluation.evaluate_coco` computes it (rank by score, precision made
    monotone from the right, mean over the 101 recall levels 0, 0.01, ..., 1)."""
    cases = [
        ([0.9, 0.8, 0.7], [True, True, True], 3, "all detections right"),
        ([0.9, 0.8], [False, False], 2, "all detections wrong"),
        ([0.9, 0.8], [True, False], 1, "a false positive after the hit"),
        ([0.9, 0.8], [False, True], 1, "a false positive before the hit"),
        ([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 4, "half of the boxes never found"),
        ([0.2, 0.9, 0.5], [True, False, True], 2, "scores not sorted"),
        ([0.95, 0.9, 0.85, 0.8, 0.7, 0.6], [True, False, False, True, True, False], 3,
         "precision rises again (interpolation matters)"),
        ([], [], 2, "no detections"),
    ]
    g = np.random.default_rng(seed)
    # Numbers of boxes whose recall values k / num_gt never fall on one of the ten levels where
    # numpy.linspace(0, 1, 101) differs from k / 100 in the last bit (0.35, 0.7, ...), so that
    # both ways of writing the levels give the same AP.
    for n, num_gt in ((10, 8), (25, 12), (40, 13), (60, 11), (7, 9)):
        is_tp = g.random(n) < 0.6
        while is_tp.sum() > num_gt:
            is_tp[np.flatnonzero(is_tp)[0]] = False
        scores = (g.permutation(n) + g.uniform(0, 0.5, n)) / n
        cases.append((scores.tolist(), is_tp.tolist(), num_gt,
                      f"random {n} detections, {num_gt} boxes"))
    for scores, is_tp, num_gt, name in cases:
        call = f"coco_ap({[round(s, 3) for s in scores][:8]}, {is_tp[:8]}, {num_gt}) [{name}]"
        want = coco_single_class_ap(scores, is_tp, num_gt)
        try:
            got = float(fn(list(scores), list(is_tp), num_gt))
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"{call}: should return a number ({exc})") from exc
        if abs(got - want) <= 1e-6:
            continue
        msg = f"{call}: expected {want:.6f}, got {got:.6f}"
        if scores:
            for value, hint in _ap_variants(scores, is_tp, num_gt):
                if abs(got - value) <= 1e-6:
                    msg += f"\n  hint: {hint}"
                    break
        raise AssertionError(msg)
    _report("coco_ap", len(cases))


__all__ = ["check_coco_ap", "check_greedy_match", "coco_matches", "coco_single_class_ap",
           "make_coco"]
