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

Three things are fixed here for every detector:

- **anchors sit on the configured strides** (:class:`StridedAnchorGenerator`): torchvision's
  generator infers a level's stride as ``padded_size // grid_size``, which on a padded input whose
  size is not a multiple of 64 puts the stride-64 level's anchors 57..62 px apart;
- **boxes stay in float32 under autocast**: anchors, box decoding, IoU, assignment, sampling and
  the box losses (bf16 has 8 significant bits: at 1333 px a box corner moves in 8 px steps);
- the RoI pooling can be the release's (:class:`RoIAlignPooler`: ``aligned=True``, adaptive
  sampling) or torchvision's.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import roi_align
from torchvision.ops.poolers import initLevelMapper

from ..errors import ConfigError

ANCHOR_STYLES = ("released", "torchvision")
RPN_BOX_LOSSES = ("smooth_l1", "l1")
ROI_HEAD_INITS = ("torchvision", "released")


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
    return StridedAnchorGenerator(sizes=anchor_sizes, aspect_ratios=(ratios,) * len(anchor_sizes),
                                  strides=strides)


class StridedAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with the strides given instead of inferred.

    Level ``l`` of stride ``s_l`` has its anchors centred at ``(j s_l, i s_l)`` for every cell
    ``(i, j)`` of its map (the release's centres, mmdet 2.x), shaped by torchvision's cell
    anchors (sizes x aspect ratios, corners rounded to whole pixels). torchvision infers
    ``s_l = padded_size // grid_size``: a 600 px padded height with a 10-row stride-64 map gives
    60, and the anchors drift off the objects they were meant for. Anchors are float32 whatever
    the feature maps' dtype (under autocast they would otherwise be bf16 / fp16).
    """

    def __init__(self, sizes, aspect_ratios, strides: Sequence[int]) -> None:
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios)
        self.strides = tuple(int(s) for s in strides)
        if len(self.strides) != len(self.sizes):
            raise ConfigError(
                f"anchors: {len(self.sizes)} levels of sizes but {len(self.strides)} strides "
                f"{self.strides}: give one stride per feature level."
            )

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ConfigError(
                f"the anchor generator was built for {len(self.strides)} levels (strides "
                f"{self.strides}) but got {len(feature_maps)} feature maps."
            )
        device = feature_maps[0].device
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(torch.float32, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]

    def extra_repr(self) -> str:
        return f"strides={self.strides}"


class RoIAlignPooler(nn.Module):
    """Multi-scale RoIAlign on feature maps of known strides (a drop-in for torchvision's
    ``MultiScaleRoIAlign``).

    Each RoI of size ``w x h`` goes to the level ``k = floor(k0 + log2(sqrt(w h) / 224))``
    clamped to the levels given (torchvision's and FPN's rule; with ``k0 = 4`` it is the
    release's ``floor(log2(sqrt(w h) / 56))`` counted from stride 4), and is pooled to
    ``output_size`` by ``roi_align`` at scale ``1 / stride``.

    Args:
        featmap_names: the levels to pool from, finest first.
        strides: their strides (powers of two, consecutive).
        output_size: 7.
        sampling_ratio: bilinear samples per bin side; 0 = adaptive (``ceil(bin size)``, the
            release's mmcv setting); torchvision's Faster R-CNN uses 2.
        aligned: shift the box by half a pixel so that pixel centres sit at ``+0.5`` (the
            release: True; torchvision's Faster R-CNN: False).
    """

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[int], output_size: int = 7,
                 sampling_ratio: int = 0, aligned: bool = True, canonical_scale: int = 224,
                 canonical_level: int = 4) -> None:
        super().__init__()
        if len(featmap_names) != len(strides):
            raise ConfigError(
                f"RoIAlign: {len(featmap_names)} feature maps but {len(strides)} strides."
            )
        self.featmap_names = [str(n) for n in featmap_names]
        self.strides = tuple(int(s) for s in strides)
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        levels = [math.log2(s) for s in self.strides]
        self.map_levels = initLevelMapper(int(levels[0]), int(levels[-1]),
                                          canonical_scale=canonical_scale,
                                          canonical_level=canonical_level)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        """``x``: the feature maps by name; ``boxes``: per image ``(N_i, 4)`` xyxy input pixels.
        Returns ``(sum N_i, C, 7, 7)`` float32."""
        features = [x[name] for name in self.featmap_names]
        boxes = [b.float() for b in boxes]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                          for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = rois.new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            out[index] = pooled.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, strides={self.strides}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
                f"aligned={self.aligned}")


def init_roi_head_like_release(box_head: nn.Module, box_predictor: nn.Module) -> None:
    """The release's RoI head initialisation: the two FC layers Xavier-uniform (zero bias), the
    classifier ``N(0, 0.01)`` and the box regressor ``N(0, 0.001)`` (zero biases)."""
    for module in box_head.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(box_predictor.cls_score.weight, std=0.01)
    nn.init.zeros_(box_predictor.cls_score.bias)
    nn.init.normal_(box_predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(box_predictor.bbox_pred.bias)


class AssignerRPN(RegionProposalNetwork):
    """torchvision's RPN with the anchor assigner as a constructor argument.

    Everything but the assignment is torchvision's: the head predicts, per anchor, an
    objectness logit and box deltas ``(dx, dy, dw, dh)`` (``BoxCoder`` weights 1); training
    samples ``batch_size_per_image`` anchors per image (``positive_fraction`` of them positive
    at most) and returns ``loss_objectness`` (binary cross-entropy) and ``loss_rpn_box_reg``
    (on the positives' deltas, divided by the sample count: smooth L1 with beta 1/9 as in
    torchvision, or plain L1 as in the release, ``box_loss``). Anchors, box decoding, the
    assignment, sampling and both losses run in float32 whatever autocast does to the head.

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
        box_loss: ``"smooth_l1"`` (torchvision) or ``"l1"`` (the release's MOQAM branch).
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
        box_loss: str = "smooth_l1",
    ):
        if box_loss not in RPN_BOX_LOSSES:
            raise ConfigError(f"rpn_box_loss={box_loss!r}: choose one of {RPN_BOX_LOSSES}.")
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
        self.box_loss = box_loss

    def extra_repr(self) -> str:
        return f"assigner={self.assigner!r}, box_loss={self.box_loss!r}"

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """torchvision's RPN forward, with the head's outputs taken to float32 before any box
        arithmetic. Returns per-image proposals ``(N_i, 4)`` float32 and, in training,
        ``{"loss_objectness", "loss_rpn_box_reg"}``."""
        feature_list = list(features.values())
        objectness, deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        anchors = [a.float() for a in anchors]
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        objectness, deltas = objectness.float(), deltas.float()
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes,
                                         num_anchors_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            targets = [{**t, "boxes": t["boxes"].float()} for t in targets]
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels,
                                                          regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Sample anchors, then ``(BCE on the sample, box loss on its positives / sample
        size)``; the box loss is torchvision's smooth L1 or the release's L1 (``box_loss``)."""
        if self.box_loss == "smooth_l1":
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        labels_all = torch.cat(labels, dim=0)
        targets_all = torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[sampled_pos], targets_all[sampled_pos],
                             reduction="sum") / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled],
                                                             labels_all[sampled])
        return objectness_loss, box_loss

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
        """torchvision's ``RoIHeads.forward`` for a box head, with the proposals, the sampling,
        the box decoding and the losses in float32 (whatever autocast does to the FC layers);
        in training with CB-SCR, also ``loss_cb_scr``."""
        proposals = [p.float() for p in proposals]
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            for t in targets:
                if not t["boxes"].is_floating_point():
                    raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
            targets = [{**t, "boxes": t["boxes"].float()} for t in targets]
            proposals, _, labels, regression_targets = self.select_training_samples(proposals,
                                                                                     targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))  # (R, 1024)
        class_logits, box_regression = self.box_predictor(box_features)  # (R, C), (R, 4C)
        class_logits, box_regression = class_logits.float(), box_regression.float()
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels,
                                                          regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            if self.cb_scr is not None:
                losses["loss_cb_scr"] = self.cb_scr(box_features, torch.cat(labels, dim=0),
                                                    self.class_weights())
            return [], losses
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression,
                                                            proposals, image_shapes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)], {}


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
