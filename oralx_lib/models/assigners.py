"""Anchor assignment for the RPN: the fixed IoU rule (DI-RPN's scale-adaptive rule is in
:mod:`oralx_lib.models.di_rpn`).

An *assigner* decides, for every anchor, whether it is a positive (and for which ground-truth
box), a negative, or ignored. Both assigners speak torchvision's ``Matcher`` convention:

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

from ..errors import ConfigError

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
