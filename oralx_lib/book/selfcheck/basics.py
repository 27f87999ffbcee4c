"""Self-checks for the chapter "Detection on radiographs, from scratch".

Each ``check_*`` runs the student's function on hand-made cases (the ones that catch the usual
mistakes) and on random ones, and compares it with torchvision's version:

==========================  ==============================================================
check                       reference
==========================  ==============================================================
``check_iou(fn)``           ``torchvision.ops.box_iou``
``check_anchors(fn)``       ``torchvision.models.detection.anchor_utils.AnchorGenerator``
``check_encode(fn)``        ``torchvision.models.detection._utils.BoxCoder.encode_single``
``check_decode(fn)``        ``torchvision.models.detection._utils.BoxCoder.decode_single``
``check_nms(fn)``           ``torchvision.ops.nms``
``check_batched_nms(fn)``   ``torchvision.ops.batched_nms``
==========================  ==============================================================

On success one line is printed; otherwise ``AssertionError`` says which case failed and, when
the answer matches a typical mistake, what that mistake is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, box_iou, nms

from ._report import report as _report

#: ``BoxCoder``'s default clamp on ``dw, dh`` before ``exp`` (``log(1000 / 16)``).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def random_boxes(n: int, *, generator: torch.Generator, size: float = 100.0,
                 min_side: float = 1.0, max_side: float = 40.0) -> Tensor:
    """``(n, 4)`` float32 xyxy boxes with corners in ``[0, size]`` and sides in
    ``[min_side, max_side]``."""
    xy = torch.rand(n, 2, generator=generator) * size
    wh = min_side + torch.rand(n, 2, generator=generator) * (max_side - min_side)
    return torch.cat([xy, xy + wh], dim=1)


def _as_tensor(value, what: str) -> Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AssertionError(f"{what} should return a tensor (or something torch.as_tensor "
                             f"accepts), got {type(value).__name__}") from exc


def _close(got: Tensor, want: Tensor, *, rtol: float = 1e-4, atol: float = 1e-4) -> bool:
    return (got.shape == want.shape
            and torch.allclose(got.double(), want.double(), rtol=rtol, atol=atol))


def _compare(got, want: Tensor, *, call: str, hints: Sequence[tuple[Tensor, str]] = (),
             rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """Assert ``got`` equals ``want`` (shape and values); on failure name the call, show both and
    add the hint of the first typical mistake that ``got`` matches."""
    got = _as_tensor(got, call).detach().cpu()
    if got.shape != want.shape:
        raise AssertionError(f"{call}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
    if not torch.is_floating_point(got) and torch.is_floating_point(want):
        got = got.to(want.dtype)
    if _close(got, want, rtol=rtol, atol=atol):
        return
    msg = f"{call}:\n  expected {want.tolist()}\n  got      {got.tolist()}"
    for variant, hint in hints:
        if _close(got, variant, rtol=rtol, atol=atol):
            msg += f"\n  hint: {hint}"
            break
    raise AssertionError(msg)


# --------------------------------------------------------------------------------------- IoU

def _iou_variants(a: Tensor, b: Tensor) -> list[tuple[Tensor, str]]:
    """Typical wrong IoUs, each with the hint that explains it."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh_raw = rb - lt
    inter_raw = wh_raw[..., 0] * wh_raw[..., 1]
    inter = wh_raw.clamp(min=0).prod(-1)
    plus1 = ((a[:, 2:] - a[:, :2] + 1).prod(-1), (b[:, 2:] - b[:, :2] + 1).prod(-1))
    inter1 = (rb - lt + 1).clamp(min=0).prod(-1)
    return [
        (inter_raw / (area_a[:, None] + area_b[None, :] - inter_raw),
         "clamp the intersection's width and height at 0 before multiplying them: two "
         "negative overlaps multiply to a positive 'intersection' for boxes that do not touch"),
        (inter / (area_a[:, None] + area_b[None, :]),
         "the union is area_a + area_b - intersection (the overlap is counted twice otherwise)"),
        (inter / torch.min(area_a[:, None], area_b[None, :]),
         "divide by the union, not by the smaller box's area"),
        (inter1 / (plus1[0][:, None] + plus1[1][None, :] - inter1),
         "torchvision uses continuous coordinates: width = x2 - x1, without the '+ 1' of old "
         "pixel-index conventions"),
    ]


def check_iou(fn: Callable[[Tensor, Tensor], Tensor], *, seed: int = 0) -> None:
    """``fn(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)``: pairwise IoU of xyxy boxes, as
    ``torchvision.ops.box_iou``."""
    hand = [
        ([[0, 0, 10, 10]], [[0, 0, 10, 10]], "identical boxes"),
        ([[0, 0, 10, 10]], [[20, 20, 30, 30]], "disjoint boxes"),
        ([[0, 0, 10, 10]], [[10, 0, 20, 10]], "boxes that touch along an edge"),
        ([[0, 0, 10, 10]], [[2, 2, 7, 7]], "a box inside another"),
        ([[0, 0, 2, 1]], [[1, 0, 3, 1]], "half-overlapping boxes"),
        ([[0, 0, 10, 10]], [[12, -5, 20, 3]], "boxes apart in x, overlapping in y"),
        ([[0, 0, 10, 10]], [[15, 15, 20, 20]], "boxes apart in x and y"),
        ([[0, 0, 4, 4], [1, 1, 5, 5]], [[0, 0, 4, 4], [2, 0, 6, 4], [8, 8, 9, 9]],
         "2 x 3 boxes"),
    ]
    cases = [(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), name)
             for a, b, name in hand]
    g = torch.Generator().manual_seed(seed)
    cases.append((torch.zeros(0, 4), random_boxes(3, generator=g), "no boxes on the left"))
    for n, m in ((1, 1), (5, 7), (50, 40), (200, 3)):
        cases.append((random_boxes(n, generator=g), random_boxes(m, generator=g),
                      f"random {n} x {m}"))
    for a, b, name in cases:
        _compare(fn(a.clone(), b.clone()), box_iou(a, b),
                 call=f"iou({a.tolist() if len(a) <= 3 else name}, "
                      f"{b.tolist() if len(b) <= 3 else '...'}) [{name}]",
                 hints=_iou_variants(a, b))
    _report("iou", len(cases))


# ----------------------------------------------------------------------------------- anchors

def reference_anchors(grid_size: tuple[int, int], stride: int, sizes: Sequence[float],
                      ratios: Sequence[float]) -> Tensor:
    """torchvision's anchors for one feature map of ``grid_size = (H, W)`` cells of ``stride``
    pixels: ``(H * W * len(ratios) * len(sizes), 4)`` xyxy."""
    h, w = grid_size
    gen = AnchorGenerator(sizes=(tuple(float(s) for s in sizes),),
                          aspect_ratios=(tuple(float(r) for r in ratios),))
    images = ImageList(torch.zeros(1, 1, h * stride, w * stride), [(h * stride, w * stride)])
    return gen(images, [torch.zeros(1, 1, h, w)])[0]


def _anchor_variants(grid_size, stride, sizes, ratios) -> list[tuple[Tensor, str]]:
    h, w = grid_size
    sizes_t = torch.tensor(sizes, dtype=torch.float32)
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()

    def cell(ws, hs, rounded=True):
        base = torch.stack([-ws, -hs, ws, hs], 1) / 2
        return base.round() if rounded else base

    def grid(base, sh=shifts):
        return (sh + base[None]).reshape(-1, 4)

    ws = (sizes_t[None] / ratios_t.sqrt()[:, None]).reshape(-1)
    hs = (sizes_t[None] * ratios_t.sqrt()[:, None]).reshape(-1)
    ws_size_major = (sizes_t[:, None] / ratios_t.sqrt()[None]).reshape(-1)
    hs_size_major = (sizes_t[:, None] * ratios_t.sqrt()[None]).reshape(-1)
    right = grid(cell(ws, hs))
    a_per_loc = len(ws)
    return [
        (grid(cell(ws, hs, rounded=False)),
         "torchvision rounds the anchors at the origin to whole pixels: "
         "(-w/2, -h/2, w/2, h/2).round(), then adds the shifts"),
        (grid(cell(hs, ws)),
         "the aspect ratio is r = h / w: w = size / sqrt(r), h = size * sqrt(r)"),
        (grid(cell(ws, hs), shifts + stride / 2),
         "torchvision puts the anchor centres at (j * stride, i * stride), the cells' top-left "
         "corners, not at the cells' centres"),
        (grid(cell(ws_size_major, hs_size_major)),
         "at each location list the anchors ratio by ratio, each ratio with all the sizes "
         "(index = ratio_index * len(sizes) + size_index)"),
        (right.reshape(h * w, a_per_loc, 4).transpose(0, 1).reshape(-1, 4),
         "list the anchors location by location (all anchors of a location together), "
         "not anchor type by anchor type"),
        (right.reshape(h, w, a_per_loc, 4).transpose(0, 1).reshape(-1, 4),
         "list the locations row by row: y is the outer loop, x the inner one"),
    ]


def check_anchors(fn: Callable[..., Tensor]) -> None:
    """``fn(grid_size=(H, W), stride, sizes, ratios) -> (H * W * A, 4)`` xyxy anchors as
    torchvision's ``AnchorGenerator`` makes them (``A = len(ratios) * len(sizes)``; ratio
    ``r = h / w``; locations row by row; at each location ratio-major)."""
    cases = [
        ((1, 1), 16, (32.0,), (1.0,)),
        ((1, 2), 16, (32.0,), (0.5, 1.0, 2.0)),
        ((2, 3), 8, (32.0, 64.0), (1.0,)),
        ((3, 2), 4, (16.0, 20.16, 25.4), (0.5, 1.0, 2.0)),
        ((5, 7), 32, (128.0, 161.3, 203.2), (0.5, 1.0, 2.0)),
        ((4, 4), 16, (64.0, 100.0), (0.25, 0.5, 1.0, 2.0, 4.0)),
    ]
    for grid_size, stride, sizes, ratios in cases:
        want = reference_anchors(grid_size, stride, sizes, ratios)
        got = fn(grid_size, stride, list(sizes), list(ratios))
        _compare(got, want, call=f"anchors(grid_size={grid_size}, stride={stride}, "
                                 f"sizes={sizes}, ratios={ratios})",
                 hints=_anchor_variants(grid_size, stride, sizes, ratios), atol=1e-3)
    _report("anchors", len(cases))


# ------------------------------------------------------------------------- encode / decode

def _encode_variants(boxes: Tensor, anchors: Tensor, weights) -> list[tuple[Tensor, str]]:
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    plain = torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw),
                         torch.log(bh / ah)], 1)
    w = torch.tensor(weights, dtype=torch.float32)
    return [
        (plain, f"multiply the four deltas by the weights (wx, wy, ww, wh) = {tuple(weights)}"),
        (plain / w, "multiply by the weights, do not divide (decoding divides)"),
        (torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * bw / aw, wh * bh / ah], 1),
         "the size deltas are logarithms: dw = ww * log(w / w_a)"),
        (torch.stack([wx * (bx - ax), wy * (by - ay), ww * torch.log(bw / aw),
                      wh * torch.log(bh / ah)], 1),
         "divide the centre offsets by the anchor's width and height (scale invariance)"),
        (-torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw),
                       wh * torch.log(bh / ah)], 1),
         "the deltas go from the anchor to the box: dx = wx * (x - x_a) / w_a"),
        (torch.stack([wx * (boxes[:, 0] - anchors[:, 0]) / aw,
                      wy * (boxes[:, 1] - anchors[:, 1]) / ah,
                      ww * torch.log(bw / aw), wh * torch.log(bh / ah)], 1),
         "dx and dy compare the centres (x1 + w / 2), not the corners"),
    ]


def _box_pairs(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Anchors and boxes near them (as after matching): ``(n, 4)`` each."""
    anchors = random_boxes(n, generator=generator, min_side=4, max_side=80)
    wh = anchors[:, 2:] - anchors[:, :2]
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2 + (torch.rand(n, 2, generator=generator)
                                                       - 0.5) * wh
    new_wh = wh * torch.exp((torch.rand(n, 2, generator=generator) - 0.5) * 1.5)
    return anchors, torch.cat([centre - new_wh / 2, centre + new_wh / 2], 1)


def check_encode(fn: Callable[[Tensor, Tensor, Sequence[float]], Tensor], *,
                 seed: int = 0) -> None:
    """``fn(boxes (N, 4), anchors (N, 4), weights=(wx, wy, ww, wh)) -> (N, 4)`` deltas
    ``(wx (x - x_a) / w_a, wy (y - y_a) / h_a, ww log(w / w_a), wh log(h / h_a))`` with
    ``(x, y, w, h)`` centre and size, as ``BoxCoder(weights).encode_single(boxes, anchors)``."""
    hand_anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [10, 20, 30, 60],
                                 [0, 0, 8, 8]], dtype=torch.float32)
    hand_boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [5, 10, 45, 50],
                               [1, 1, 5, 5]], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    cases = []
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 5.0)):
        cases.append((hand_boxes, hand_anchors, weights))
        anchors, boxes = _box_pairs(100, g)
        cases.append((boxes, anchors, weights))
    for boxes, anchors, weights in cases:
        want = BoxCoder(weights).encode_single(boxes, anchors)
        got = fn(boxes.clone(), anchors.clone(), weights)
        where = boxes.tolist() if len(boxes) <= 4 else f"{len(boxes)} random boxes"
        _compare(got, want, call=f"encode({where}, anchors, weights={weights})",
                 hints=_encode_variants(boxes, anchors, weights))
    _report("encode", len(cases))


def _decode_variants(deltas: Tensor, anchors: Tensor, weights) -> list[tuple[Tensor, str]]:
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2

    def boxes(dx, dy, dw, dh, clip=True):
        if clip:
            dw, dh = dw.clamp(max=BBOX_XFORM_CLIP), dh.clamp(max=BBOX_XFORM_CLIP)
        cx, cy = ax + dx * aw, ay + dy * ah
        w, h = aw * torch.exp(dw), ah * torch.exp(dh)
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)

    d = deltas
    return [
        (boxes(d[:, 0] / wx, d[:, 1] / wy, d[:, 2] / ww, d[:, 3] / wh, clip=False),
         f"clamp dw and dh (after dividing by the weights) at log(1000 / 16) = "
         f"{BBOX_XFORM_CLIP:.3f} before exp, as torchvision does, so that a wild prediction "
         "cannot overflow"),
        (boxes(d[:, 0], d[:, 1], d[:, 2], d[:, 3]),
         f"divide the deltas by the weights {tuple(weights)} first"),
        (boxes(d[:, 0] * wx, d[:, 1] * wy, d[:, 2] * ww, d[:, 3] * wh),
         "divide the deltas by the weights, do not multiply (encoding multiplies)"),
        (torch.stack([ax + d[:, 0] / wx * aw, ay + d[:, 1] / wy * ah,
                      aw * torch.exp((d[:, 2] / ww).clamp(max=BBOX_XFORM_CLIP)),
                      ah * torch.exp((d[:, 3] / wh).clamp(max=BBOX_XFORM_CLIP))], 1),
         "return corners (x1, y1, x2, y2) = (x - w/2, y - h/2, x + w/2, y + h/2), not "
         "centre and size"),
    ]


def check_decode(fn: Callable[[Tensor, Tensor, Sequence[float]], Tensor], *,
                 seed: int = 0) -> None:
    """``fn(deltas (N, 4), anchors (N, 4), weights=(wx, wy, ww, wh)) -> (N, 4)`` xyxy boxes, the
    inverse of :func:`check_encode`'s encoding with ``dw, dh`` clamped at ``log(1000/16)``
    before ``exp``, as ``BoxCoder(weights).decode_single(deltas, anchors)``."""
    hand_anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [10, 20, 30, 60],
                                 [0, 0, 16, 16]], dtype=torch.float32)
    hand_deltas = torch.tensor([[0, 0, 0, 0], [0.5, 0, 0, 0], [0.5, 0.25, math.log(2), 0],
                                [0, 0, 6.0, -1.0]], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    cases = []
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 5.0)):
        w = torch.tensor(weights)
        cases.append((hand_deltas * w, hand_anchors, weights))
        anchors, boxes = _box_pairs(100, g)
        cases.append((BoxCoder(weights).encode_single(boxes, anchors), anchors, weights))
    for deltas, anchors, weights in cases:
        want = BoxCoder(weights).decode_single(deltas, anchors)
        got = fn(deltas.clone(), anchors.clone(), weights)
        where = deltas.tolist() if len(deltas) <= 4 else f"{len(deltas)} random deltas"
        _compare(got, want, call=f"decode({where}, anchors, weights={weights})",
                 hints=_decode_variants(deltas, anchors, weights), rtol=1e-4, atol=1e-3)
    _report("decode", len(cases))


# --------------------------------------------------------------------------------------- NMS

def _nms_cases(seed: int) -> list[tuple[Tensor, Tensor, float, str]]:
    """Hand-made and random ``(boxes, scores, iou_threshold, name)`` with no pair's IoU within
    ``1e-4`` of the threshold (where float rounding could decide)."""
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    cases = [
        (t([[0, 0, 10, 10]]), t([0.9]), 0.5, "one box"),
        (t([[0, 0, 10, 10], [1, 1, 11, 11]]), t([0.6, 0.9]), 0.5,
         "two overlapping boxes, the second scores higher"),
        (t([[0, 0, 10, 10], [20, 20, 30, 30]]), t([0.9, 0.8]), 0.5, "two disjoint boxes"),
        # IoU(A, B) = IoU(B, C) = 0.6, IoU(A, C) = 0.25: B is removed by A, so C survives.
        (t([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10]]), t([0.9, 0.8, 0.7]), 0.5,
         "a chain A-B-C where only neighbours overlap"),
        # IoU exactly 0.5 = threshold: kept (suppress only when IoU > threshold).
        (t([[0, 0, 2, 1], [0, 0, 1, 1]]), t([0.9, 0.8]), 0.5, "IoU exactly at the threshold"),
        (torch.zeros(0, 4), torch.zeros(0), 0.5, "no boxes"),
    ]
    g = torch.Generator().manual_seed(seed)
    while len(cases) < 14:
        n = int(torch.randint(5, 120, (1,), generator=g))
        boxes = random_boxes(n, generator=g, size=60.0, min_side=5.0, max_side=40.0)
        scores = torch.rand(n, generator=g)
        thr = float(torch.empty(1).uniform_(0.2, 0.8, generator=g))
        iou = box_iou(boxes, boxes)
        if ((iou - thr).abs() < 1e-4).any():
            continue
        cases.append((boxes, scores, thr, f"{n} random boxes, threshold {thr:.2f}"))
    return cases


def _nms_variants(boxes: Tensor, scores: Tensor, thr: float) -> list[tuple[Tensor, str]]:
    keep = nms(boxes, scores, thr)
    n = len(boxes)
    order = scores.argsort(descending=True)
    iou = box_iou(boxes, boxes)
    # suppress with >= instead of >
    removed = torch.zeros(n, dtype=torch.bool)
    keep_ge = []
    for i in order.tolist():
        if removed[i]:
            continue
        keep_ge.append(i)
        removed |= iou[i] >= thr
    # let suppressed boxes suppress others too
    keep_all = [i for i in order.tolist()
                if not any(iou[i, j] > thr for j in order.tolist()
                           if scores[j] > scores[i])]
    return [
        (keep.sort().values, "return the kept indices in decreasing order of score, as "
                             "torchvision does"),
        (torch.tensor(keep_ge, dtype=torch.int64),
         "suppress a box only when its IoU is strictly greater than the threshold"),
        (torch.tensor(keep_all, dtype=torch.int64),
         "a box that was already suppressed must not suppress others: only kept boxes remove "
         "their neighbours (visit the boxes in order of score, skip the removed ones)"),
        (order, "remove the boxes whose IoU with a kept box exceeds the threshold"),
    ]


def check_nms(fn: Callable[[Tensor, Tensor, float], Tensor], *, seed: int = 0) -> None:
    """``fn(boxes (N, 4), scores (N,), iou_threshold) -> (K,)`` int64 indices of the boxes that
    greedy non-maximum suppression keeps, in decreasing order of score, as
    ``torchvision.ops.nms`` (a box is removed when its IoU with a kept, higher-scoring box is
    ``> iou_threshold``)."""
    cases = _nms_cases(seed)
    for boxes, scores, thr, name in cases:
        want = nms(boxes, scores, thr)
        got = _as_tensor(fn(boxes.clone(), scores.clone(), thr), "nms").to(torch.int64)
        if got.shape == want.shape and torch.equal(got, want):
            continue
        msg = f"nms(boxes, scores, {thr:.2f}) [{name}]: expected {want.tolist()}, got {got.tolist()}"
        for variant, hint in _nms_variants(boxes, scores, thr):
            if got.shape == variant.shape and torch.equal(got, variant):
                msg += f"\n  hint: {hint}"
                break
        raise AssertionError(msg)
    _report("nms", len(cases))


def check_batched_nms(fn: Callable[[Tensor, Tensor, Tensor, float], Tensor], *,
                      seed: int = 0) -> None:
    """``fn(boxes (N, 4), scores (N,), labels (N,), iou_threshold) -> (K,)`` int64: NMS run
    separately for each label (boxes of different classes never suppress each other), the kept
    indices in decreasing order of score, as ``torchvision.ops.batched_nms``."""
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    cases = [
        (t([[0, 0, 10, 10], [1, 1, 11, 11]]), t([0.9, 0.8]), torch.tensor([1, 2]), 0.5,
         "two overlapping boxes of different classes"),
        (t([[0, 0, 10, 10], [1, 1, 11, 11]]), t([0.9, 0.8]), torch.tensor([3, 3]), 0.5,
         "two overlapping boxes of the same class"),
        (t([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]]),
         t([0.5, 0.9, 0.7, 0.6]), torch.tensor([1, 1, 2, 1]), 0.5, "two classes, four boxes"),
        (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, "no boxes"),
    ]
    for boxes, scores, thr, name in _nms_cases(seed + 1)[6:]:
        g = torch.Generator().manual_seed(len(boxes))
        cases.append((boxes, scores, torch.randint(1, 4, (len(boxes),), generator=g), thr, name))
    for boxes, scores, labels, thr, name in cases:
        want = batched_nms(boxes, scores, labels, thr)
        got = _as_tensor(fn(boxes.clone(), scores.clone(), labels.clone(), thr),
                         "batched_nms").to(torch.int64)
        if got.shape == want.shape and torch.equal(got, want):
            continue
        call = f"batched_nms(boxes, scores, labels, {thr:.2f}) [{name}]"
        msg = f"{call}: expected {want.tolist()}, got {got.tolist()}"
        if sorted(got.tolist()) == sorted(want.tolist()):
            msg += "\n  hint: the right boxes, in the wrong order: sort the kept indices by " \
                   "decreasing score"
        elif torch.equal(got, nms(boxes, scores, thr)):
            msg += "\n  hint: this is class-agnostic NMS: boxes of different labels must not " \
                   "suppress each other"
        raise AssertionError(msg)
    _report("batched_nms", len(cases))
