"""The self-checks of the chapter "Evaluation and error analysis": right answers pass, wrong
ones are rejected with their hint; the pycocotools-based references give hand-computed
values."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from oralx_lib.book import selfcheck
from oralx_lib.book.selfcheck import evaluation as ev


# ------------------------------------------------------------------ naive right answers
def loop_coco_ap(scores, is_tp, num_gt):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = fp = 0
    recall, precision = [], []
    for i in order:
        tp, fp = tp + bool(is_tp[i]), fp + (not is_tp[i])
        recall.append(tp / num_gt)
        precision.append(tp / (tp + fp))
    total = 0.0
    for k in range(101):
        r = k / 100
        total += max((p for rr, p in zip(recall, precision) if rr >= r), default=0.0)
    return total / 101


def loop_match(dets, scores, gts, thr):
    out = [-1] * len(dets)
    if len(gts) == 0:
        return out
    iou = box_iou(dets, gts) if len(dets) else torch.zeros(0, len(gts))
    taken = set()
    for d in sorted(range(len(dets)), key=lambda i: -float(scores[i])):
        free = [g for g in range(len(gts)) if g not in taken and iou[d, g] >= thr]
        if free:
            best = max(free, key=lambda g: float(iou[d, g]))
            out[d] = best
            taken.add(best)
    return out


# ---------------------------------------------------------------------------- references
def test_single_class_ap_reference_on_hand_computed_lists():
    assert ev.coco_single_class_ap([0.9, 0.8], [True, False], 1) == pytest.approx(1.0)
    assert ev.coco_single_class_ap([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)
    # recall 1/4, 1/4, 2/4, 2/4 and precision 1, 1/2, 2/3, 1/2: interpolated precision is 1 up
    # to recall 0.25 (26 levels), 2/3 up to 0.5 (25 levels) and 0 beyond.
    want = (26 * 1.0 + 25 * 2 / 3) / 101
    assert ev.coco_single_class_ap([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 4) == \
        pytest.approx(want)
    assert ev.coco_single_class_ap([], [], 3) == 0.0
    with pytest.raises(ValueError):
        ev.coco_single_class_ap([0.5], [True], 0)


def test_coco_matches_reference_on_a_hand_case():
    dets = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [50.0, 50, 60, 60]])
    gts = torch.tensor([[0.0, 0, 10, 10]])
    # The 0.9 detection takes the box; the 0.8 one (IoU 0.82) is a duplicate; the third misses.
    got = ev.coco_matches(dets, torch.tensor([0.8, 0.9, 0.7]), gts, 0.5)
    assert got.tolist() == [-1, 0, -1]
    with pytest.raises(ValueError):
        ev.coco_matches(dets, torch.tensor([0.8, 0.9, 0.7]), gts, 0.52)


# ---------------------------------------------------------------------------- the checks
def test_right_answers_pass(capsys):
    selfcheck.check_coco_ap(loop_coco_ap)
    selfcheck.check_greedy_match(loop_match)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(line.startswith("correct:") for line in out)


def _no_interpolation(scores, is_tp, num_gt):
    recall, precision = ev._pr(scores, is_tp, num_gt)
    return ev._sample(recall, precision, np.linspace(0, 1, 101), interpolate=False) \
        if scores else 0.0


def _eleven_points(scores, is_tp, num_gt):
    recall, precision = ev._pr(scores, is_tp, num_gt)
    return ev._sample(recall, precision, np.linspace(0, 1, 11), interpolate=True) \
        if scores else 0.0


def _unsorted(scores, is_tp, num_gt):
    return loop_coco_ap(list(range(len(scores), 0, -1)), is_tp, num_gt)


@pytest.mark.parametrize("wrong, hint", [
    (_no_interpolation, "interpolate"),
    (_eleven_points, "101 recall levels"),
    (_unsorted, "rank the detections by score"),
    (lambda s, t, n: 0.5, None),
])
def test_wrong_ap_is_rejected(wrong, hint):
    with pytest.raises(AssertionError) as err:
        selfcheck.check_coco_ap(wrong)
    if hint is not None:
        assert hint in str(err.value)


def _first_above(dets, scores, gts, thr):
    out = [-1] * len(dets)
    iou = box_iou(dets, gts) if len(dets) and len(gts) else torch.zeros(len(dets), len(gts))
    taken = set()
    for d in sorted(range(len(dets)), key=lambda i: -float(scores[i])):
        for g in range(len(gts)):
            if g not in taken and iou[d, g] >= thr:
                out[d] = g
                taken.add(g)
                break
    return out


@pytest.mark.parametrize("wrong, hint", [
    (lambda d, s, g, t: loop_match(d, torch.zeros(len(d)) - torch.arange(len(d)), g, t),
     "decreasing score"),
    (_first_above, "highest IoU"),
    (lambda d, s, g, t: [-1] * len(d), None),
])
def test_wrong_matching_is_rejected(wrong, hint):
    with pytest.raises(AssertionError) as err:
        selfcheck.check_greedy_match(wrong)
    if hint is not None:
        assert hint in str(err.value)
