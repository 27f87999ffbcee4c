"""Self-checks for the chapter "DI-RPN, derived".

===============================  =============================================================
check                            reference
===============================  =============================================================
``check_dynamic_threshold(fn)``  ``DynamicIoUAssigner(cap_at_base=False).thresholds`` (or,
                                 with ``released=True``, ``effective_thresholds`` of the
                                 released rule ``cap_at_base=True``)
``check_best_anchor_iou(fn)``    ``torchvision.ops.box_iou`` of the object and its nearest
                                 anchor at the worst position on the grid
===============================  =============================================================

On success one line is printed; otherwise ``AssertionError`` names the failing case and, when
the answer matches a typical mistake, explains it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ...models import DynamicIoUAssigner
from ._report import report as _report
from .basics import _compare, random_boxes

# ------------------------------------------------------------------------- the threshold


def _threshold_variants(boxes: Tensor, released: bool) -> list[tuple[Tensor, str]]:
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).double()
    s = (wh[:, 0] * wh[:, 1]).sqrt()
    base, slope, s0, low, high = 0.55, 0.15, 12.0, 0.5, 0.7

    def finish(raw: Tensor) -> Tensor:
        thr = raw.clamp(low, high)
        return thr.clamp(max=base) if released else thr

    other = DynamicIoUAssigner(cap_at_base=not released).effective_thresholds(boxes)
    return [
        (finish(base + slope * torch.log(s / s0)),
         "log2, not the natural log: the threshold changes by 0.15 per *doubling* of the size"),
        (finish(base + slope * torch.log10(s / s0)), "log2, not log10"),
        (base + slope * torch.log2(s / s0),
         "clamp the threshold to [0.5, 0.7] (and, for the release, cap it at 0.55)"),
        (finish(base + slope * torch.log2(wh[:, 0] * wh[:, 1] / s0)),
         "the size is s = sqrt(w h), not the area w h"),
        (finish(base + slope * torch.log2((wh[:, 0] + wh[:, 1]) / 2 / s0)),
         "the size is the geometric mean s = sqrt(w h), not the mean (w + h) / 2"),
        (finish(base + slope * torch.log2(wh.max(dim=1).values / s0)),
         "the size is s = sqrt(w h), not the longer side"),
        (finish(base + slope * torch.log2(s0 / s)),
         "log2(s / s0): larger objects get a *higher* threshold"),
        (other.double(),
         "this is the other rule: the release takes min(0.55, thr(s)) (released=True); the "
         "formula alone is clamp(0.55 + 0.15 log2(s / 12), 0.5, 0.7)"),
    ]


def _square(s: float) -> list[float]:
    return [0.0, 0.0, s, s]


def check_dynamic_threshold(fn: Callable[[Tensor], Tensor], *, released: bool = False,
                            seed: int = 0) -> None:
    """``fn(gt_boxes (K, 4)) -> (K,)``: DI-RPN's positive IoU threshold per ground truth.

    ``released=False``: ``thr(s) = clamp(0.55 + 0.15 log2(s / 12), 0.5, 0.7)`` with
    ``s = sqrt(w h)``. ``released=True``: the rule the released code applies,
    ``min(0.55, thr(s))``.
    """
    reference = DynamicIoUAssigner(cap_at_base=released)
    hand = torch.tensor([_square(s) for s in (12.0, 24.0, 6.0, 9.0, 16.0, 48.0, 200.0)]
                        + [[10.0, 20.0, 26.0, 29.0], [0.0, 0.0, 3.0, 48.0], [5.0, 5.0, 35.0, 12.0]])
    g = torch.Generator().manual_seed(seed)
    cases = [(hand, "squares of 12, 24, 6, 9, 16, 48, 200 px and three rectangles")]
    for n, lo, hi in ((20, 2.0, 40.0), (100, 1.0, 200.0), (5, 8.0, 30.0)):
        cases.append((random_boxes(n, generator=g, min_side=lo, max_side=hi),
                      f"{n} random boxes with sides {lo:g}..{hi:g} px"))
    for boxes, name in cases:
        want = reference.effective_thresholds(boxes)
        got = fn(boxes.clone())
        _compare(got, want, call=f"threshold({'released' if released else 'clamped'} rule) [{name}]",
                 hints=_threshold_variants(boxes, released), atol=1e-5, rtol=1e-5)
    _report("dynamic_threshold" + ("_released" if released else ""), len(cases))


# ---------------------------------------------------------------------- best anchor IoU


def reference_best_anchor_iou(s: float, a: float, d: float) -> float:
    """IoU of a square object of side ``s`` centred at ``(d/2, d/2)`` and a square anchor of
    side ``a`` centred at the origin, its nearest grid point (torchvision's ``box_iou``)."""
    obj = torch.tensor([[d / 2 - s / 2, d / 2 - s / 2, d / 2 + s / 2, d / 2 + s / 2]], dtype=torch.float64)
    anchor = torch.tensor([[-a / 2, -a / 2, a / 2, a / 2]], dtype=torch.float64)
    return float(box_iou(obj, anchor)[0, 0])


def _best_iou_variants(s: float, a: float, d: float) -> list[tuple[float, str]]:
    def iou_from_overlap(o: float) -> float:
        return o * o / (s * s + a * a - o * o)

    def overlap(u: float) -> float:
        return max(0.0, min((s + a) / 2 - u, s, a))

    return [
        (iou_from_overlap(overlap(d)),
         "the nearest anchor centre is at most d/2 away along each axis (grid points every d "
         "pixels), not d"),
        (iou_from_overlap(min((s + a) / 2 - d / 2, s, a)) if (s + a) / 2 - d / 2 < 0 else math.nan,
         "clamp the overlap at 0: an anchor that does not reach the object gives IoU 0"),
        (iou_from_overlap(max(0.0, (s + a) / 2 - d / 2)),
         "the overlap along an axis cannot exceed the smaller side: min((s + a)/2 - u, s, a)"),
        (overlap(d / 2) ** 2 / (s * s + a * a),
         "the union is s^2 + a^2 - intersection"),
        (iou_from_overlap(max(0.0, min((s + a) / 2 - d / 2 * math.sqrt(2), s, a))),
         "the offset is d/2 along x *and* along y (each axis loses d/2), not d/sqrt(2) once"),
        (iou_from_overlap(overlap(0.0)),
         "this is the best case (object centred on an anchor); the grid only *guarantees* the "
         "IoU at the worst position, d/2 off along both axes"),
    ]


def check_best_anchor_iou(fn: Callable[[float, float, float], float], *, seed: int = 0) -> None:
    """``fn(s, a, d) -> float``: the IoU a grid of square anchors of side ``a`` and stride ``d``
    guarantees to a square object of side ``s``: the IoU with the nearest anchor when the
    object's centre is at the worst place, ``d/2`` from the grid along both axes.

    With the 1-D overlap ``o = clamp((s + a)/2 - d/2, 0, min(s, a))``:
    ``IoU = o^2 / (s^2 + a^2 - o^2)``.
    """
    cases = [(16.0, 16.0, 4.0), (8.0, 16.0, 4.0), (32.0, 16.0, 8.0), (16.0, 16.0, 64.0),
             (12.0, 16.0, 4.0), (40.0, 32.0, 8.0), (100.0, 101.6, 16.0), (3.0, 16.0, 4.0)]
    g = torch.Generator().manual_seed(seed)
    strides = (4.0, 8.0, 16.0, 32.0, 64.0)
    for _ in range(40):
        d = strides[int(torch.randint(0, 5, (1,), generator=g))]
        a = d * float(torch.empty(1).uniform_(2.0, 8.0, generator=g))
        s = float(torch.empty(1).uniform_(2.0, 2.0 * a, generator=g))
        cases.append((s, a, d))
    for s, a, d in cases:
        want = reference_best_anchor_iou(s, a, d)
        got = fn(s, a, d)
        try:
            got = float(got)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise AssertionError(f"best_anchor_iou({s:g}, {a:g}, {d:g}) should return a number, got "
                                 f"{type(got).__name__}") from exc
        if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6):
            continue
        msg = f"best_anchor_iou(s={s:g}, a={a:g}, d={d:g}): expected {want:.6f}, got {got:.6f}"
        for value, hint in _best_iou_variants(s, a, d):
            if not math.isnan(value) and math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-6):
                msg += f"\n  hint: {hint}"
                break
        raise AssertionError(msg)
    _report("best_anchor_iou", len(cases))


__all__ = ["check_best_anchor_iou", "check_dynamic_threshold", "reference_best_anchor_iou"]
