"""Self-checks for the chapter "The RPN baseline".

==============================  ==============================================================
check                           reference
==============================  ==============================================================
``check_fixed_assignment(fn)``  ``oralx_lib.models.FixedIoUAssigner(0.7, 0.3)`` (torchvision's
                                ``Matcher`` with low-quality matches)
``check_proposal_recall(fn)``   ``torchvision.ops.box_iou``: best proposal IoU >= threshold
==============================  ==============================================================

On success one line is printed; otherwise ``AssertionError`` names the failing case and, when
the answer matches a typical mistake, explains it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ...models import FixedIoUAssigner
from ._report import report as _report
from .basics import _compare, random_boxes

# ---------------------------------------------------------------------------- the 0.7 / 0.3 rule


def _fixed_variants(iou: Tensor, pos: float, neg: float) -> list[tuple[Tensor, str]]:
    """Typical wrong anchor labels for an IoU matrix ``(K, N)``, each with its hint."""
    variants = []
    if iou.shape[0] == 0:
        return variants
    no_lq = FixedIoUAssigner(pos, neg, allow_low_quality_matches=False)(iou)
    variants.append((no_lq, "keep the low-quality matches: every ground truth also gets the "
                            "anchor(s) of its own highest IoU, even below 0.7"))
    max_iou, best = iou.max(dim=0)
    strict = torch.where(max_iou > pos, best, torch.where(max_iou < neg, -1, -2))
    variants.append((_add_low_quality(strict, iou), "an IoU of exactly 0.7 is a positive: test "
                                                    "max_iou >= 0.7"))
    low_eq = torch.where(max_iou >= pos, best, torch.where(max_iou <= neg, -1, -2))
    variants.append((_add_low_quality(low_eq, iou), "an IoU of exactly 0.3 is ignored, not "
                                                    "negative: negatives have max_iou < 0.3"))
    first_only = torch.where(max_iou >= pos, best, torch.where(max_iou < neg, -1, -2))
    gt_best_anchor = iou.argmax(dim=1)
    first_only[gt_best_anchor] = best[gt_best_anchor]
    variants.append((first_only, "a ground truth's best IoU may be shared by several anchors "
                                 "(ties): every tied anchor becomes a positive"))
    claimed = torch.where(max_iou >= pos, best, torch.where(max_iou < neg, -1, -2))
    gt_best = iou.max(dim=1).values
    for k in range(iou.shape[0]):
        claimed[iou[k] == gt_best[k]] = k
    variants.append((claimed, "torchvision gives a low-quality anchor to the anchor's own best "
                              "ground truth (its argmax), not to the ground truth that found it"))
    return variants


def _add_low_quality(matches: Tensor, iou: Tensor) -> Tensor:
    matches = matches.clone()
    max_iou, best = iou.max(dim=0)
    gt_best = iou.max(dim=1).values
    tied = (iou == gt_best[:, None]).any(dim=0)
    matches[tied] = best[tied]
    return matches


def _random_iou(k: int, n: int, generator: torch.Generator) -> Tensor:
    """A ``(k, n)`` IoU matrix from random boxes, with some exact 0.3 / 0.7 values and ties."""
    gt = random_boxes(k, generator=generator, size=60, min_side=6, max_side=30)
    anchors = random_boxes(n, generator=generator, size=60, min_side=6, max_side=30)
    iou = box_iou(gt, anchors)
    if n >= 6:
        iou[0, 0], iou[0, 1], iou[-1, 2] = 0.7, 0.3, 0.7
        best = iou.max(dim=1).values
        iou[0, 3] = best[0]  # a tie at ground truth 0's best IoU
    return iou


def check_fixed_assignment(fn: Callable[[Tensor], Tensor], *, seed: int = 0) -> None:
    """``fn(iou (K, N)) -> (N,)`` int64: the RPN baseline's anchor labels.

    ``iou[k, n]`` is the IoU of ground truth ``k`` and anchor ``n``. With ``m_n = max_k iou``:
    ``m_n < 0.3`` -> -1 (negative), ``m_n >= 0.7`` -> ``argmax_k`` (positive), otherwise -2
    (ignored); then every anchor tied at some ground truth's highest IoU becomes a positive of
    its own ``argmax_k``. No ground truth (``K = 0``): every anchor is -1.
    """
    hand = [
        ([[0.8, 0.5, 0.2, 0.7, 0.3, 0.1]], "one ground truth, every kind of anchor"),
        ([[0.4, 0.2, 0.1]], "only a low-quality match: the best anchor is positive anyway"),
        ([[0.45, 0.45, 0.2]], "two anchors tied at the ground truth's best IoU"),
        ([[0.75, 0.1, 0.2], [0.72, 0.6, 0.1]], "two ground truths want the same anchor"),
        ([[0.4, 0.1], [0.5, 0.65]], "an anchor that is ground truth 0's best but closer to 1"),
        ([[0.29, 0.31, 0.69, 0.71]], "values next to the thresholds"),
    ]
    cases = [(torch.tensor(m, dtype=torch.float32), name) for m, name in hand]
    g = torch.Generator().manual_seed(seed)
    for k, n in ((1, 6), (3, 20), (5, 200), (12, 500)):
        cases.append((_random_iou(k, n, g), f"random {k} x {n}"))
    for iou, name in cases:
        want = FixedIoUAssigner(0.7, 0.3)(iou)
        got = fn(iou.clone())
        call = f"assign({iou.tolist() if iou.numel() <= 12 else '...'}) [{name}]"
        _compare(got, want, call=call, hints=_fixed_variants(iou, 0.7, 0.3), atol=0, rtol=0)
    empty = torch.zeros(0, 5)
    got = torch.as_tensor(fn(empty.clone()))
    assert got.shape == (5,) and bool((got == -1).all()), (
        f"assign(iou of shape (0, 5)) [no ground truth]: every anchor is a negative (-1), got "
        f"{got.tolist()}")
    _report("fixed_assignment", len(cases) + 1)


# ------------------------------------------------------------------------------ recall


def check_proposal_recall(fn: Callable[..., Tensor], *, seed: int = 0) -> None:
    """``fn(proposals (P, 4), gt_boxes (K, 4), iou_thr=0.5) -> (K,)`` bool: is each ground truth
    covered by some proposal with ``IoU >= iou_thr``? (``P = 0``: all ``False``.)"""
    g = torch.Generator().manual_seed(seed)
    gt_hand = torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 5]], dtype=torch.float32)
    prop_hand = torch.tensor([[0, 0, 10, 10], [20, 20, 40, 50], [0, 0, 5, 10], [50, 0, 60, 20]],
                             dtype=torch.float32)
    cases = [
        (prop_hand, gt_hand, 0.5, "hand-made: IoU 1, 2/3 and 1/4"),
        (prop_hand, gt_hand, 2 / 3, "IoU exactly at the threshold counts"),
        (prop_hand, gt_hand, 0.75, "a stricter threshold: IoU 2/3 is not enough"),
        (prop_hand, gt_hand, 0.25, "a looser threshold: IoU 1/4 is enough"),
        (torch.zeros(0, 4), gt_hand, 0.5, "no proposals"),
        (prop_hand, torch.zeros(0, 4), 0.5, "no ground truth"),
    ]
    for p, k, thr in ((30, 5, 0.5), (300, 12, 0.5), (100, 8, 0.7), (5, 20, 0.3)):
        cases.append((random_boxes(p, generator=g), random_boxes(k, generator=g), thr,
                      f"random {p} proposals, {k} ground truths, IoU >= {thr}"))
    for proposals, gt, thr, name in cases:
        if len(proposals) and len(gt):
            iou = box_iou(gt, proposals)
            best = iou.max(dim=1).values
        else:
            iou = torch.zeros(len(gt), len(proposals))
            best = torch.zeros(len(gt))
        # Compare in float64 so that an IoU equal to the threshold is not lost to rounding.
        want = best.double() >= thr - 1e-6
        hints = []
        if len(proposals) and len(gt):
            hints = [
                (best > thr + 1e-6, "an IoU equal to the threshold counts as recalled: use >="),
                (best >= 0.5, "use the threshold you were given (iou_thr), not a fixed 0.5"),
            ]
        got = fn(proposals.clone(), gt.clone(), iou_thr=thr)
        got = torch.as_tensor(got)
        if got.shape != want.shape and len(proposals) and got.shape == (len(proposals),):
            raise AssertionError(
                f"recall [{name}]: expected one value per ground truth, shape {tuple(want.shape)}, "
                f"got {tuple(got.shape)}\n  hint: take the max over the proposals (box_iou(gt, "
                "proposals).max(dim=1)), not over the ground truths")
        _compare(got.bool(), want, call=f"recall [{name}]",
                 hints=[(h.bool(), text) for h, text in hints], atol=0, rtol=0)
    _report("proposal_recall", len(cases))


__all__ = ["check_fixed_assignment", "check_proposal_recall"]
