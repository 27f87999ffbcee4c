"""The self-checks of the chapter "Detection on radiographs, from scratch": right answers pass
with one printed line, typical wrong answers are rejected with the hint that explains them."""

import math
import re

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou, nms

from oralx_lib.book import selfcheck
from oralx_lib.book.selfcheck import basics


# ------------------------------------------------------------------ naive right answers

def loop_iou(a, b):
    """Pairwise IoU with Python loops (the definition, nothing vectorised)."""
    out = torch.zeros(len(a), len(b))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            out[i, j] = inter / union
    return out


def loop_nms(boxes, scores, thr):
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    iou = loop_iou(boxes, boxes)
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        removed |= {j for j in order if iou[i, j] > thr}
    return keep  # a list is accepted too


def loop_anchors(grid_size, stride, sizes, ratios):
    h, w = grid_size
    cell = []
    for r in ratios:
        for s in sizes:
            aw, ah = s / math.sqrt(r), s * math.sqrt(r)
            cell.append([round(-aw / 2), round(-ah / 2), round(aw / 2), round(ah / 2)])
    out = [[x1 + j * stride, y1 + i * stride, x2 + j * stride, y2 + i * stride]
           for i in range(h) for j in range(w) for x1, y1, x2, y2 in cell]
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def formula_encode(boxes, anchors, weights):
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    dx = wx * ((boxes[:, 0] + bw / 2) - (anchors[:, 0] + aw / 2)) / aw
    dy = wy * ((boxes[:, 1] + bh / 2) - (anchors[:, 1] + ah / 2)) / ah
    return torch.stack([dx, dy, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], 1)


def formula_decode(deltas, anchors, weights):
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx = anchors[:, 0] + aw / 2 + deltas[:, 0] / wx * aw
    cy = anchors[:, 1] + ah / 2 + deltas[:, 1] / wy * ah
    w = aw * torch.exp((deltas[:, 2] / ww).clamp(max=math.log(1000 / 16)))
    h = ah * torch.exp((deltas[:, 3] / wh).clamp(max=math.log(1000 / 16)))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def per_class_nms(boxes, scores, labels, thr):
    keep = [torch.nonzero(labels == c).flatten()[nms(boxes[labels == c], scores[labels == c],
                                                     thr)] for c in labels.unique()]
    keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
    return keep[scores[keep].argsort(descending=True)]


@pytest.mark.parametrize("check, fn, name", [
    (selfcheck.check_iou, box_iou, "iou"),
    (selfcheck.check_iou, loop_iou, "iou"),
    (selfcheck.check_anchors, basics.reference_anchors, "anchors"),
    (selfcheck.check_anchors, loop_anchors, "anchors"),
    (selfcheck.check_encode, lambda b, a, w: BoxCoder(w).encode_single(b, a), "encode"),
    (selfcheck.check_encode, formula_encode, "encode"),
    (selfcheck.check_decode, lambda d, a, w: BoxCoder(w).decode_single(d, a), "decode"),
    (selfcheck.check_decode, formula_decode, "decode"),
    (selfcheck.check_nms, nms, "nms"),
    (selfcheck.check_nms, loop_nms, "nms"),
    (selfcheck.check_batched_nms, batched_nms, "batched_nms"),
    (selfcheck.check_batched_nms, per_class_nms, "batched_nms"),
])
def test_right_answers_pass_with_one_line(check, fn, name, capsys):
    check(fn)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"correct: {name} ")


def test_the_checks_are_found_through_the_package():
    assert selfcheck.check_nms is basics.check_nms
    assert {"check_iou", "check_anchors", "check_encode", "check_decode", "check_nms",
            "check_batched_nms"} <= set(dir(selfcheck))


# ------------------------------------------------------------------ wrong answers

def _iou_parts(a, b):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return lt, rb, area_a[:, None], area_b[None, :]


def iou_no_clamp(a, b):
    lt, rb, aa, bb = _iou_parts(a, b)
    inter = (rb - lt).prod(-1)
    return inter / (aa + bb - inter)


def iou_sum_union(a, b):
    lt, rb, aa, bb = _iou_parts(a, b)
    return (rb - lt).clamp(min=0).prod(-1) / (aa + bb)


def iou_plus_one(a, b):
    lt, rb, _, _ = _iou_parts(a, b)
    inter = (rb - lt + 1).clamp(min=0).prod(-1)
    aa = (a[:, 2:] - a[:, :2] + 1).prod(-1)[:, None]
    bb = (b[:, 2:] - b[:, :2] + 1).prod(-1)[None, :]
    return inter / (aa + bb - inter)


@pytest.mark.parametrize("fn, hint", [
    (iou_no_clamp, "clamp the intersection"),
    (iou_sum_union, "area_a + area_b - intersection"),
    (iou_plus_one, "without the '+ 1'"),
    (lambda a, b: box_iou(a, b).t(), "expected shape"),
    (lambda a, b: box_iou(a, b) * 0.99, "expected"),
])
def test_wrong_iou_is_rejected(fn, hint):
    with pytest.raises(AssertionError, match=re.escape(hint)):
        selfcheck.check_iou(fn)


def anchors_unrounded(grid_size, stride, sizes, ratios):
    h, w = grid_size
    cell = [[-s / math.sqrt(r) / 2, -s * math.sqrt(r) / 2, s / math.sqrt(r) / 2,
             s * math.sqrt(r) / 2] for r in ratios for s in sizes]
    return torch.tensor([[x1 + j * stride, y1 + i * stride, x2 + j * stride, y2 + i * stride]
                         for i in range(h) for j in range(w) for x1, y1, x2, y2 in cell])


@pytest.mark.parametrize("fn, hint", [
    (anchors_unrounded, "rounds the anchors"),
    (lambda g, st, s, r: loop_anchors(g, st, s, [1 / x for x in r]), "r = h / w"),
    (lambda g, st, s, r: loop_anchors(g, st, s, r) + st / 2, "top-left corners"),
    (lambda g, st, s, r: loop_anchors(g, st, s, r).reshape(g[0], g[1], -1, 4).transpose(0, 1)
     .reshape(-1, 4), "row by row"),
    (lambda g, st, s, r: loop_anchors(g, st, s, r).reshape(g[0] * g[1], -1, 4).transpose(0, 1)
     .reshape(-1, 4), "location by location"),
    (lambda g, st, s, r: loop_anchors(g, st, s, r)[: len(s)], "expected shape"),
])
def test_wrong_anchors_are_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        selfcheck.check_anchors(fn)


@pytest.mark.parametrize("fn, hint", [
    (lambda b, a, w: formula_encode(b, a, (1, 1, 1, 1)), "multiply the four deltas"),
    (lambda b, a, w: -formula_encode(b, a, w), "from the anchor to the box"),
    (lambda b, a, w: formula_encode(b, a, w) / torch.tensor(w) ** 2, "do not divide"),
])
def test_wrong_encode_is_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        selfcheck.check_encode(fn)


@pytest.mark.parametrize("fn, hint", [
    (lambda d, a, w: formula_decode(d, a, (1, 1, 1, 1)), "divide the deltas by the weights"),
    (lambda d, a, w: torch.cat([formula_decode(d, a, w)[:, :2],
                                formula_decode(d, a, w)[:, 2:] - formula_decode(d, a, w)[:, :2]],
                               1), "expected"),
])
def test_wrong_decode_is_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        selfcheck.check_decode(fn)


def test_decode_without_the_clamp_is_rejected_with_its_hint():
    def unclamped(d, a, w):
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        cx = a[:, 0] + aw / 2 + d[:, 0] / w[0] * aw
        cy = a[:, 1] + ah / 2 + d[:, 1] / w[1] * ah
        bw, bh = aw * torch.exp(d[:, 2] / w[2]), ah * torch.exp(d[:, 3] / w[3])
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)

    with pytest.raises(AssertionError, match=r"clamp dw and dh"):
        selfcheck.check_decode(unclamped)


def nms_greater_equal(boxes, scores, thr):
    order = scores.argsort(descending=True).tolist()
    iou = box_iou(boxes, boxes)
    keep, removed = [], torch.zeros(len(boxes), dtype=torch.bool)
    for i in order:
        if not removed[i]:
            keep.append(i)
            removed |= iou[i] >= thr
    return torch.tensor(keep, dtype=torch.int64)


def nms_everyone_suppresses(boxes, scores, thr):
    iou = box_iou(boxes, boxes)
    order = scores.argsort(descending=True).tolist()
    return torch.tensor([i for i in order if not any(
        iou[i, j] > thr for j in order if scores[j] > scores[i])], dtype=torch.int64)


@pytest.mark.parametrize("fn, hint", [
    (lambda b, s, t: nms(b, s, t).sort().values, "decreasing order of score"),
    (nms_greater_equal, "strictly greater"),
    (nms_everyone_suppresses, "already suppressed"),
    (lambda b, s, t: s.argsort(descending=True), "remove the boxes"),
])
def test_wrong_nms_is_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        selfcheck.check_nms(fn)


@pytest.mark.parametrize("fn, hint", [
    (lambda b, s, l, t: nms(b, s, t), "class-agnostic"),
    (lambda b, s, l, t: batched_nms(b, s, l, t).sort().values, "wrong order"),
])
def test_wrong_batched_nms_is_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        selfcheck.check_batched_nms(fn)


def test_a_non_tensor_answer_is_explained():
    with pytest.raises(AssertionError, match="should return a tensor"):
        selfcheck.check_iou(lambda a, b: object())
