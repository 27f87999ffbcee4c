"""Two-stage detectors from torchvision parts, with the assigner and CB-SCR injected.

The pipeline is torchvision's Faster R-CNN (``GeneralizedRCNN``)::

    images -> GeneralizedRCNNTransform (normalise, resize, batch)
           -> backbone + FPN: {level: (B, 256, H/stride, W/stride)}
           -> AssignerRPN: proposals (and, in training, objectness + box losses)
           -> CBSCRRoIHeads: RoIAlign 7x7 -> TwoMLPHead (1024-d) -> FastRCNNPredictor
              (and, in training, classifier + box losses [+ CB-SCR])

Two parts differ from torchvision's and are constructor arguments, never patches:

- ``AssignerRPN(assigner=...)`` labels anchors with any assigner of ``oralx_lib.models.assigners``
  (the fixed 0.7/0.3 rule or DI-RPN) instead of torchvision's built-in ``Matcher``;
- ``CBSCRRoIHeads(cb_scr=...)`` adds ``loss_cb_scr`` computed on the sampled RoIs' features.

Both work on any dict of feature maps (not only an FPN's), so the query-based MOQAM reuses them
on its encoder's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from ..errors import ConfigError

ANCHOR_STYLES = ("released", "torchvision")


def released_anchor_sizes(
    strides: Sequence[int], octave_base_scale: float = 4.0, scales_per_octave: int = 3
) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes of the release: ``stride * octave_base_scale * 2**(i / scales_per_octave)``.

    With the released 4 and 3: ``stride x {4, 5.04, 6.35}`` on every level, e.g. strides
    ``(4, 8, 16, 32, 64)`` give ``(16, 20.2, 25.4), (32, 40.3, 50.8), ..., (256, 322.5, 406.4)``.
    """
    return tuple(
        tuple(float(s) * octave_base_scale * 2.0 ** (i / scales_per_octave) for i in range(scales_per_octave))
        for s in strides
    )


def torchvision_anchor_sizes(strides: Sequence[int]) -> tuple[tuple[float, ...], ...]:
    """torchvision's FPN default, one size ``8 * stride`` per level (32 .. 512 on strides 4 .. 64)."""
    return tuple((8.0 * s,) for s in strides)


def make_anchor_generator(
    strides: Sequence[int],
    anchors: str = "released",
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> AnchorGenerator:
    """An ``AnchorGenerator`` for feature levels of the given strides.

    Args:
        strides: one stride per feature level, in the backbone's level order.
        anchors: ``"released"`` (3 scales per octave, see ``released_anchor_sizes``) or
            ``"torchvision"`` (``torchvision_anchor_sizes``); ignored when ``anchor_sizes`` is given.
        anchor_sizes: explicit sizes in pixels, one tuple per level.
        aspect_ratios: ``h / w`` ratios, shared by every level.
    """
    if anchor_sizes is None:
        if anchors == "released":
            anchor_sizes = released_anchor_sizes(strides)
        elif anchors == "torchvision":
            anchor_sizes = torchvision_anchor_sizes(strides)
        else:
            raise ConfigError(f"anchors={anchors!r} is not an anchor style; use one of {ANCHOR_STYLES}.")
    anchor_sizes = tuple(tuple(float(s) for s in level) for level in anchor_sizes)
    if len(anchor_sizes) != len(strides):
        raise ConfigError(
            f"anchor_sizes has {len(anchor_sizes)} levels but the backbone has {len(strides)} "
            f"(strides {tuple(strides)}): give one tuple of sizes per level."
        )
    if len({len(level) for level in anchor_sizes}) != 1:
        raise ConfigError("anchor_sizes must give the same number of sizes on every level (one RPN head is shared).")
    ratios = tuple(float(r) for r in aspect_ratios)
    return AnchorGenerator(sizes=anchor_sizes, aspect_ratios=(ratios,) * len(anchor_sizes))


class AssignerRPN(RegionProposalNetwork):
    """torchvision's RPN with the anchor assigner as a constructor argument.

    Everything but the assignment is torchvision's: the head predicts, per anchor, an
    objectness logit and box deltas ``(dx, dy, dw, dh)`` (``BoxCoder`` weights 1); training
    samples ``batch_size_per_image`` anchors per image (``positive_fraction`` of them positive
    at most) and returns ``loss_objectness`` (binary cross-entropy) and ``loss_rpn_box_reg``
    (smooth L1, beta 1/9, on positives, divided by the sample count).

    The assigner receives the anchors and the ground truth in network-input pixels (after the
    transform's resize): ``assigner.assign(anchors (A, 4), gt_boxes (K, 4)) -> (A,)`` in
    ``Matcher``'s convention (GT index / -1 negative / -2 ignored).

    Args (keyword-only):
        anchor_generator: makes the anchors of every level.
        head: ``features -> (objectness, deltas)``, e.g. torchvision's ``RPNHead``.
        assigner: ``FixedIoUAssigner`` (baseline) or ``DynamicIoUAssigner`` (DI-RPN).
        batch_size_per_image, positive_fraction: anchor sampling (256, 0.5).
        pre_nms_top_n, post_nms_top_n: ``{"training": int, "testing": int}`` proposals kept
            per level before NMS, and per image after it.
        nms_thresh: NMS IoU between proposals (0.7).
        score_thresh: minimum objectness probability of a proposal (0.0).
    """

    def __init__(
        self,
        *,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        assigner,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: dict[str, int] | None = None,
        post_nms_top_n: dict[str, int] | None = None,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
    ):
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
            pre_nms_top_n=pre_nms_top_n or {"training": 2000, "testing": 1000},
            post_nms_top_n=post_nms_top_n or {"training": 2000, "testing": 1000},
            nms_thresh=nms_thresh,
            score_thresh=score_thresh,
        )
        # The parent builds a fixed Matcher; this RPN has no such attribute, only the assigner.
        del self.proposal_matcher
        self.assigner = assigner

    def extra_repr(self) -> str:
        return f"assigner={self.assigner!r}"

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Label every anchor of every image.

        Args:
            anchors: per image ``(A, 4)`` xyxy, network-input pixels.
            targets: per image ``{"boxes": (K, 4), ...}`` in the same pixels.

        Returns:
            ``labels``: per image ``(A,)`` float, 1 positive / 0 negative / -1 ignored;
            ``matched_gt_boxes``: per image ``(A, 4)``, the assigned box (zeros if none).
        """
        labels, matched_gt_boxes = [], []
        for anchors_per_image, target in zip(anchors, targets):
            gt_boxes = target["boxes"]
            matches = self.assigner.assign(anchors_per_image, gt_boxes)  # (A,)
            if gt_boxes.numel() == 0:
                matched = torch.zeros_like(anchors_per_image)
            else:
                matched = gt_boxes[matches.clamp(min=0)]
            label = (matches >= 0).to(torch.float32)
            label[matches == -2] = -1.0
            labels.append(label)
            matched_gt_boxes.append(matched)
        return labels, matched_gt_boxes


class CBSCRRoIHeads(RoIHeads):
    """torchvision's box RoI head, with an optional CB-SCR regulariser on its features.

    Per image, ``batch_size_per_image`` proposals (ground truth added) are sampled at IoU
    ``fg_iou_thresh``/``bg_iou_thresh``, RoIAligned, passed through the box head (``(R, 1024)``
    features) and the predictor (``(R, C)`` class logits, ``(R, 4C)`` class-specific deltas).
    Training returns ``loss_classifier`` and ``loss_box_reg`` as torchvision does, plus
    ``loss_cb_scr = cb_scr(features (R_total, 1024), labels (R_total,), W (C, 1024))`` when a
    CB-SCR module is given, where ``W = box_predictor.cls_score.weight``.

    Label convention. torchvision's labels are ``0 = background, 1..9 = the classes``, and row
    ``k`` of ``W`` belongs to label ``k``. The release puts the background last (classes
    ``0..8``, background ``9``); the map ``release = (ours - 1) mod 10`` relates the two. We keep
    torchvision's labels and rows unchanged: CB-SCR only compares labels for equality and pairs
    label ``k`` with row ``k``, so permuting labels and rows together leaves the loss unchanged
    (a test checks this) and the release's value is reproduced.

    Args (keyword-only):
        box_roi_pool: e.g. ``MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)``.
        box_head: e.g. ``TwoMLPHead(256 * 7 * 7, 1024)``.
        box_predictor: e.g. ``FastRCNNPredictor(1024, num_classes + 1)``; must expose
            ``cls_score`` (a ``Linear``) when ``cb_scr`` is used.
        cb_scr: a ``CBSCR`` module or ``None``.
        fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction, bbox_reg_weights:
            RoI sampling and box coding (0.5, 0.5, 512, 0.25, (10, 10, 5, 5)).
        score_thresh, nms_thresh, detections_per_img: inference (0.05, 0.5, 100).
    """

    def __init__(
        self,
        *,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        cb_scr: nn.Module | None = None,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ):
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            fg_iou_thresh,
            bg_iou_thresh,
            batch_size_per_image,
            positive_fraction,
            bbox_reg_weights,
            score_thresh,
            nms_thresh,
            detections_per_img,
        )
        if cb_scr is not None and not isinstance(getattr(box_predictor, "cls_score", None), nn.Linear):
            raise ConfigError("CBSCRRoIHeads: cb_scr needs a box_predictor with a `cls_score` Linear layer.")
        self.cb_scr = cb_scr

    def class_weights(self) -> Tensor:
        """The classifier's weight matrix ``(C, 1024)``, row ``k`` = label ``k`` (0 = background)."""
        return self.box_predictor.cls_score.weight

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """torchvision's ``RoIHeads.forward``; in training with CB-SCR, also ``loss_cb_scr``."""
        if not self.training or self.cb_scr is None:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training mode")
        for t in targets:
            if not t["boxes"].is_floating_point():
                raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))  # (R, 1024)
        class_logits, box_regression = self.box_predictor(box_features)  # (R, C), (R, 4C)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        loss_cb_scr = self.cb_scr(box_features, torch.cat(labels, dim=0), self.class_weights())
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_cb_scr": loss_cb_scr}


class TwoStageDetector(GeneralizedRCNN):
    """A Faster R-CNN assembled from keyword parts, with torchvision's data contract.

    ``model(images, targets)`` in train mode returns a dict of losses
    (``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg`` and,
    with CB-SCR, ``loss_cb_scr``); ``model(images)`` in eval mode returns, per image,
    ``{"boxes": (D, 4) xyxy original-image pixels, "labels": (D,) int64 in 1..num_classes,
    "scores": (D,)}``. Images are float ``(3, H, W)`` in ``[0, 1]`` of any size; targets are
    ``{"boxes": (K, 4) float32 xyxy, "labels": (K,) int64}`` in the same pixels.

    Args (keyword-only):
        backbone: ``(B, 3, H, W) -> {level: (B, out_channels, h, w)}`` with ``out_channels``.
        rpn: an ``AssignerRPN``.
        roi_heads: a ``CBSCRRoIHeads``.
        transform: a ``GeneralizedRCNNTransform`` (normalisation and resize).
    """

    def __init__(self, *, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, transform: nn.Module):
        super().__init__(backbone, rpn, roi_heads, transform)
