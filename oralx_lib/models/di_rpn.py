"""DI-RPN: the dynamic-IoU anchor assigner (a positive threshold that grows with object size).

The rule is in :class:`DynamicIoUAssigner`; it speaks the same ``Matcher`` convention as the
fixed rule of :mod:`oralx_lib.models.assigners` (``>= 0`` GT index, -1 negative, -2 ignored).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .assigners import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, _check_iou_matrix, safe_box_iou


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


__all__ = ["DynamicIoUAssigner"]
