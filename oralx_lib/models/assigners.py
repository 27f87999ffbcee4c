"""Anchor assignment for the RPN: the fixed IoU rule and DI-RPN's scale-adaptive rule.

An *assigner* decides, for every anchor, whether it is a positive (and for which ground-truth
box), a negative, or ignored. Both assigners here speak torchvision's ``Matcher`` convention:

    result[n] >= 0   anchor n is a positive of ground-truth box result[n]
    result[n] == -1  negative (background)
    result[n] == -2  ignored (between the thresholds)

and offer two entry points:

- ``assign(anchors (N, 4), gt_boxes (K, 4)) -> (N,) int64``: computes the IoU itself;
- ``__call__(iou (K, N), gt_boxes=None) -> (N,) int64``: the ``Matcher`` interface, for callers
  that already hold the IoU matrix (ground truth along dim 0, anchors along dim 1).
  ``DynamicIoUAssigner`` needs ``gt_boxes`` here too, because its threshold depends on the size
  of each ground-truth box.

Boxes are ``xyxy`` in the pixels of the network input (after the detector's resize), which is
where the RPN sees them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from ..paths import ConfigError

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def safe_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, with 0 where both boxes have zero area (torchvision gives NaN there).

    Args:
        boxes1: ``(K, 4)`` xyxy.
        boxes2: ``(N, 4)`` xyxy.

    Returns:
        ``(K, N)`` with ``IoU = |A ∩ B| / |A ∪ B|``, finite everywhere.
    """
    return box_iou(boxes1, boxes2).nan_to_num_(nan=0.0)


def _check_iou_matrix(iou: Tensor, gt_boxes: Tensor | None) -> None:
    if iou.dim() != 2:
        raise ValueError(f"iou must be a (K, N) matrix (ground truth x anchors), got shape {tuple(iou.shape)}")
    if gt_boxes is not None and (gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4 or gt_boxes.shape[0] != iou.shape[0]):
        raise ValueError(
            f"gt_boxes must be ({iou.shape[0]}, 4) to match the iou matrix's first dimension, "
            f"got shape {tuple(gt_boxes.shape)}"
        )


class FixedIoUAssigner:
    """The Faster R-CNN rule: one positive threshold for every object (the RPN baseline).

    For anchor ``n`` with ``m_n = max_k IoU(k, n)`` (best ground truth ``k*``):

        m_n <  neg_iou_thr                -> -1 (negative)
        neg_iou_thr <= m_n < pos_iou_thr  -> -2 (ignored)
        m_n >= pos_iou_thr                -> k*

    With ``allow_low_quality_matches``, every anchor tied at a ground truth's best IoU becomes a
    positive of *its own* best ground truth ``k*`` (torchvision's rule, applied even when that
    best IoU is tiny). This class is torchvision's ``Matcher`` behind the two-entry interface of
    this module: it adds the box entry point and handles images without ground truth (all
    anchors negative) instead of raising.

    Args:
        pos_iou_thr: IoU at or above which an anchor is positive (0.7 for the RPN).
        neg_iou_thr: IoU below which an anchor is negative (0.3 for the RPN).
        allow_low_quality_matches: give every ground truth its best anchor(s).
    """

    def __init__(self, pos_iou_thr: float = 0.7, neg_iou_thr: float = 0.3, allow_low_quality_matches: bool = True):
        if not 0.0 <= neg_iou_thr <= pos_iou_thr <= 1.0:
            raise ConfigError(
                f"FixedIoUAssigner: need 0 <= neg_iou_thr <= pos_iou_thr <= 1, got neg_iou_thr={neg_iou_thr}, "
                f"pos_iou_thr={pos_iou_thr} (the RPN's usual values are 0.3 and 0.7)."
            )
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self._matcher = Matcher(self.pos_iou_thr, self.neg_iou_thr, allow_low_quality_matches=self.allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"FixedIoUAssigner(pos_iou_thr={self.pos_iou_thr}, neg_iou_thr={self.neg_iou_thr}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, iou: Tensor, gt_boxes: Tensor | None = None) -> Tensor:
        """Assign from an IoU matrix ``(K, N)``; ``gt_boxes`` is accepted and unused."""
        _check_iou_matrix(iou, gt_boxes)
        num_gt, num_anchors = iou.shape
        if num_anchors == 0:
            return torch.empty((0,), dtype=torch.int64, device=iou.device)
        if num_gt == 0:
            return torch.full((num_anchors,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        return self._matcher(iou)

    def assign(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Assign anchors ``(N, 4)`` to ground truth ``(K, 4)`` (xyxy, same pixels); ``(N,)`` int64."""
        return self(safe_box_iou(gt_boxes, anchors), gt_boxes)


class DynamicIoUAssigner:
    """DI-RPN: a positive IoU threshold that depends on the size of the ground-truth box.

    For a ground truth of ``w x h`` network-input pixels, let ``s = sqrt(w h) / scale_ratio``
    (``scale_ratio = 1``: ``s`` in network-input pixels; pass the detector's resize factor to
    measure ``s`` in the original image's pixels instead). Its threshold is

        thr(s) = clamp(base + slope * log2(s / base_size), low, high)
        (released: base 0.55, slope 0.15, base_size 12, low 0.5, high 0.7)

    so a 12-pixel object gets 0.55, smaller ones less (0.5 at ~9.5 px and below) and larger
    ones more (0.7 at 24 px and above). For anchor ``n`` with best IoU ``m_n`` against ground
    truth ``k*``:

    1. ``m_n < neg_iou_thr`` -> -1 (negative);
    2. ``m_n >= t(k*)`` -> ``k*`` (positive), where ``t = min(base, thr)`` if ``cap_at_base``
       (the released code: it tests ``thr`` first and then falls back to ``base``, so the
       effective threshold never exceeds 0.55) and ``t = thr`` otherwise (the formula read alone);
    3. anything else -> -2 (ignored);
    4. low-quality matches (released rule, not torchvision's): for every ground truth ``k`` whose
       best IoU ``M_k >= min_pos_iou``, *every* anchor with ``IoU(k, n) == M_k`` becomes a
       positive of ``k``; when several ground truths claim one anchor, the later index wins.

    A positive test (2 and 4) overrides the negative one (1). With ``slope=0`` and
    ``base_pos_iou_thr = pos_iou_thr`` this is the MMDetection-style fixed rule
    (``min_pos_iou`` low-quality matches).

    Everything is tensor algebra on the inputs' device (no loop over boxes). Zero-area boxes give
    IoU 0 and the lowest threshold, never NaN. An image without ground truth gives all -1.

    Args:
        pos_iou_thr: ``high``, the upper clamp of ``thr`` (0.7).
        neg_iou_thr: IoU below which an anchor is negative (0.3).
        base_pos_iou_thr: ``base``, the threshold of a ``base_size`` object (0.55).
        low_quality_iou_thr: ``low``, the lower clamp of ``thr`` (0.5).
        slope: ``r``, threshold change per doubling of the object's size (0.15).
        base_size: ``s0`` in pixels (12).
        min_pos_iou: a ground truth's best IoU must reach this for its low-quality matches (0.3).
        cap_at_base: ``True`` reproduces the release (effective threshold ``min(base, thr)``).
        scale_ratio: divide ``sqrt(w h)`` by this before comparing with ``base_size``.
    """

    def __init__(
        self,
        pos_iou_thr: float = 0.7,
        neg_iou_thr: float = 0.3,
        base_pos_iou_thr: float = 0.55,
        low_quality_iou_thr: float = 0.5,
        slope: float = 0.15,
        base_size: float = 12.0,
        min_pos_iou: float = 0.3,
        cap_at_base: bool = True,
        scale_ratio: float = 1.0,
    ):
        if not 0.0 <= neg_iou_thr <= low_quality_iou_thr <= pos_iou_thr <= 1.0:
            raise ConfigError(
                "DynamicIoUAssigner: need 0 <= neg_iou_thr <= low_quality_iou_thr <= pos_iou_thr <= 1, got "
                f"neg_iou_thr={neg_iou_thr}, low_quality_iou_thr={low_quality_iou_thr}, pos_iou_thr={pos_iou_thr} "
                "(released: 0.3, 0.5, 0.7)."
            )
        if not 0.0 <= base_pos_iou_thr <= 1.0 or not 0.0 <= min_pos_iou <= 1.0:
            raise ConfigError(
                f"DynamicIoUAssigner: base_pos_iou_thr={base_pos_iou_thr} and min_pos_iou={min_pos_iou} must lie in "
                "[0, 1] (released: 0.55 and 0.3)."
            )
        if base_size <= 0 or scale_ratio <= 0 or slope < 0:
            raise ConfigError(
                f"DynamicIoUAssigner: need base_size > 0, scale_ratio > 0 and slope >= 0, got base_size={base_size}, "
                f"scale_ratio={scale_ratio}, slope={slope} (released: 12, 1, 0.15)."
            )
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.base_pos_iou_thr = float(base_pos_iou_thr)
        self.low_quality_iou_thr = float(low_quality_iou_thr)
        self.slope = float(slope)
        self.base_size = float(base_size)
        self.min_pos_iou = float(min_pos_iou)
        self.cap_at_base = bool(cap_at_base)
        self.scale_ratio = float(scale_ratio)

    def __repr__(self) -> str:
        return (
            f"DynamicIoUAssigner(pos_iou_thr={self.pos_iou_thr}, neg_iou_thr={self.neg_iou_thr}, "
            f"base_pos_iou_thr={self.base_pos_iou_thr}, low_quality_iou_thr={self.low_quality_iou_thr}, "
            f"slope={self.slope}, base_size={self.base_size}, min_pos_iou={self.min_pos_iou}, "
            f"cap_at_base={self.cap_at_base}, scale_ratio={self.scale_ratio})"
        )

    def thresholds(self, gt_boxes: Tensor) -> Tensor:
        """The clamped formula ``thr(s)`` per ground truth.

        Args:
            gt_boxes: ``(K, 4)`` xyxy, network-input pixels.

        Returns:
            ``(K,)`` ``clamp(base + slope * log2(sqrt(w h) / scale_ratio / base_size), low, high)``;
            a zero-area box gets ``low``.
        """
        dtype = gt_boxes.dtype if gt_boxes.is_floating_point() else torch.float32
        boxes = gt_boxes.to(dtype)
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        size = (wh[:, 0] * wh[:, 1]).sqrt() / self.scale_ratio
        # The smallest positive normal keeps log2 finite (so slope 0 never meets -inf).
        log_scale = torch.log2(size.clamp(min=torch.finfo(dtype).tiny) / self.base_size)
        return (self.base_pos_iou_thr + self.slope * log_scale).clamp(self.low_quality_iou_thr, self.pos_iou_thr)

    def effective_thresholds(self, gt_boxes: Tensor) -> Tensor:
        """``(K,)`` positive threshold actually applied: ``min(base, thr)`` if ``cap_at_base`` else ``thr``."""
        thr = self.thresholds(gt_boxes)
        return thr.clamp(max=self.base_pos_iou_thr) if self.cap_at_base else thr

    def __call__(self, iou: Tensor, gt_boxes: Tensor | None = None) -> Tensor:
        """Assign from an IoU matrix ``(K, N)`` and the ``(K, 4)`` ground truth it was computed from.

        Returns:
            ``(N,)`` int64: GT index, -1 negative or -2 ignored.
        """
        if gt_boxes is None:
            raise ValueError(
                "DynamicIoUAssigner needs the ground-truth boxes to compute its size-dependent thresholds: "
                "call assigner(iou, gt_boxes) or assigner.assign(anchors, gt_boxes)."
            )
        _check_iou_matrix(iou, gt_boxes)
        num_gt, num_anchors = iou.shape
        device = iou.device
        if num_anchors == 0:
            return torch.empty((0,), dtype=torch.int64, device=device)
        if num_gt == 0:
            return torch.full((num_anchors,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=device)

        # Rules 1-3: compare each anchor's best IoU with the threshold of its best ground truth.
        max_iou, best_gt = iou.max(dim=0)  # (N,), (N,)
        thr = self.effective_thresholds(gt_boxes.to(device))[best_gt].to(iou.dtype)  # (N,)
        ignored = torch.full_like(best_gt, BETWEEN_THRESHOLDS)
        matches = torch.where(max_iou < self.neg_iou_thr, torch.full_like(best_gt, BELOW_LOW_THRESHOLD), ignored)
        matches = torch.where(max_iou >= thr, best_gt, matches)

        # Rule 4: each ground truth with best IoU >= min_pos_iou claims all anchors tied at it.
        gt_best = iou.max(dim=1).values  # (K,)
        gt_best = torch.where(gt_best >= self.min_pos_iou, gt_best, torch.full_like(gt_best, float("nan")))
        gt_idx, anchor_idx = torch.nonzero(iou == gt_best[:, None], as_tuple=True)  # NaN never compares equal
        claimed = torch.full_like(best_gt, -1)
        claimed.scatter_reduce_(0, anchor_idx, gt_idx, reduce="amax")  # the later GT wins a tie
        return torch.where(claimed >= 0, claimed, matches)

    def assign(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Assign anchors ``(N, 4)`` to ground truth ``(K, 4)`` (xyxy, network-input pixels); ``(N,)`` int64."""
        return self(safe_box_iou(gt_boxes, anchors), gt_boxes)
