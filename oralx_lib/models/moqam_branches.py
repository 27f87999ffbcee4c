"""MOQAM's collaborative (auxiliary) branches: RPN with DI-RPN, RoI head with CB-SCR, ATSS.

They run only in training, on the encoder's memory reshaped back into 5 maps plus one stride-2
map (strides 4 .. 128, ``C`` channels each). Each branch

1. adds its own losses (``loss_rpn_*``, ``loss_roi_*``, ``loss_cb_scr``, ``loss_atss_*``), and
2. hands back its samples (:class:`AuxSamples`): the boxes it trained on, which of them are
   positives, of which class, assigned to which ground truth. The RoI head's and ATSS's samples
   become the decoder's *customized positive queries* (``aux0``: RoI head, ``aux1``: ATSS, in
   that order, numbering only the branches that are on).

The RPN and the RoI head's sampling and CB-SCR are the two-stage detectors' parts, built by the
same functions from the same options (:mod:`oralx_lib.models.heads`);
the RoI branch replaces their smooth-L1 box loss by a GIoU loss on decoded boxes, as released.
Released weights: RPN cls 12 / box 12; RoI CE 12 / GIoU 120; ATSS focal 12 / GIoU 24 /
centerness 12; CB-SCR 1.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from ..errors import ConfigError
from .heads import (
    CB_SCR_DEFAULTS,
    DI_RPN_DEFAULTS,
    ROI_DEFAULTS,
    RPN_DEFAULTS,
    build_roi_heads,
    build_rpn,
)
from .rcnn import AssignerRPN, CBSCRRoIHeads

__all__ = [
    "AuxSamples",
    "atss_assign",
    "centerness_targets",
    "ATSSHead",
    "RoIBranch",
    "CollaborativeBranches",
    "BRANCH_DEFAULTS",
    "build_collaborative_branches",
]

AUX_STRIDES = (4, 8, 16, 32, 64, 128)


@dataclass
class AuxSamples:
    """The samples of one branch in one image (network-input pixels, after the resize).

    Attributes:
        boxes: ``(N, 4)`` xyxy: anchors (ATSS) or proposals (RoI head).
        labels: ``(N,)`` int64: class index ``0..C-1`` for positives, ``-1`` for negatives.
        gt_boxes: ``(N, 4)`` xyxy, the assigned ground truth (rows of negatives are unused).
    """

    boxes: Tensor
    labels: Tensor
    gt_boxes: Tensor


def atss_assign(anchors: Tensor, num_per_level: list[int], gt_boxes: Tensor, topk: int = 9
                ) -> Tensor:
    """Adaptive Training Sample Selection (Zhang et al., 2020), vectorised over GTs and levels.

    For each GT ``g``: on every level take the ``topk`` anchors whose centres are closest to the
    GT's centre; over those candidates compute ``t_g = mean(IoU) + std(IoU)``; a candidate is
    positive if ``IoU >= t_g`` and its centre lies inside the GT. An anchor positive for
    several GTs goes to the one of highest IoU.

    Args:
        anchors: ``(A, 4)`` xyxy, levels concatenated; num_per_level: anchors per level.
        gt_boxes: ``(G, 4)`` xyxy.
        topk: candidates per level (9).

    Returns:
        ``(A,)`` int64: GT index, or -1 for negatives.
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    iou = box_iou(anchors, gt_boxes).nan_to_num(0.0)  # (A, G)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distance = torch.cdist(anchor_centres, gt_centres)  # (A, G)
    candidates, start = [], 0
    for n in num_per_level:
        k = min(topk, n)
        candidates.append(distance[start:start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    candidates = torch.cat(candidates, dim=0)  # (K, G)
    candidate_iou = iou.gather(0, candidates)
    threshold = candidate_iou.mean(0) + candidate_iou.std(0)
    cx = anchor_centres[candidates, 0]  # (K, G)
    cy = anchor_centres[candidates, 1]
    inside = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1],
                          gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=-1).amin(-1) > 0.01
    positive = (candidate_iou >= threshold[None]) & inside
    overlaps = torch.full_like(iou, -1.0)
    overlaps.scatter_(0, candidates, torch.where(positive, candidate_iou,
                                                 torch.full_like(candidate_iou, -1.0)))
    best, index = overlaps.max(dim=1)
    return torch.where(best >= 0, index, torch.full_like(index, -1))


def centerness_targets(points: Tensor, boxes: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of points ``(N, 2)`` inside
    boxes ``(N, 4)`` xyxy, with ``l, t, r, b`` the distances to the box sides. Returns ``(N,)``."""
    left, top = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    lr = torch.stack([left, right], -1).clamp(min=0)
    tb = torch.stack([top, bottom], -1).clamp(min=0)
    ratio = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-6)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    return ratio.sqrt()


class ATSSHead(nn.Module):
    """ATSS head with one square anchor (``anchor_scale * stride``) per location.

    A shared tower per task (``stacked_convs`` x [3x3 conv, GroupNorm, ReLU]) then 3x3 convs to
    ``C`` class logits, 4 box deltas (times a learned per-level scale; ``BoxCoder`` weights
    (10, 10, 5, 5)) and 1 centerness logit. Losses (``N_pos`` positives, ``c_i`` their
    centerness targets):

    - ``loss_atss_cls = sum FocalLoss(alpha=0.25, gamma=2) / N_pos`` over every anchor;
    - ``loss_atss_giou = sum_i c_i (1 - GIoU(decoded_i, gt_i)) / sum_i c_i``;
    - ``loss_atss_centerness = sum_i BCE(centerness_i, c_i) / N_pos``;

    each times its weight (12, 24, 12).
    """

    def __init__(self, *, in_channels: int, num_classes: int, strides=AUX_STRIDES,
                 anchor_scale: float = 8.0, topk: int = 9, stacked_convs: int = 1,
                 cls_weight: float = 12.0, giou_weight: float = 24.0,
                 centerness_weight: float = 12.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.anchor_scale = anchor_scale
        self.topk = topk
        self.weights = {"cls": cls_weight, "giou": giou_weight, "centerness": centerness_weight}

        def tower():
            layers = []
            for _ in range(stacked_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1),
                           nn.GroupNorm(32, in_channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -4.59511985013459)  # prior 0.01
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))

    def anchors(self, maps: list[Tensor]) -> tuple[Tensor, list[int]]:
        """Anchors ``(A, 4)`` xyxy of the maps, size ``anchor_scale * stride``, centred at
        ``(j * stride, i * stride)`` for cell ``(i, j)`` (the release's centres, mmdet 2.x's
        ``center_offset = 0``)."""
        out, counts = [], []
        for x, stride in zip(maps, self.strides):
            h, w = x.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                                    torch.arange(w, device=x.device, dtype=torch.float32),
                                    indexing="ij")
            centres = torch.stack([xs, ys], -1).reshape(-1, 2) * stride
            half = self.anchor_scale * stride / 2
            out.append(torch.cat([centres - half, centres + half], dim=1))
            counts.append(h * w)
        return torch.cat(out), counts

    def forward(self, maps: list[Tensor], targets: list[dict[str, Tensor]]
                ) -> tuple[dict[str, Tensor], list[AuxSamples]]:
        """``maps``: 6 ``(B, C, H_l, W_l)``; ``targets`` in network-input pixels (labels 1..C)."""
        cls, reg, ctr = [], [], []
        for level, x in enumerate(maps):
            c, r = self.cls_tower(x), self.reg_tower(x)
            cls.append(self.cls_logits(c).flatten(2).transpose(1, 2))
            reg.append((self.bbox_pred(r) * self.scales[level]).flatten(2).transpose(1, 2))
            ctr.append(self.centerness(r).flatten(2).transpose(1, 2))
        cls, reg, ctr = torch.cat(cls, 1), torch.cat(reg, 1).float(), torch.cat(ctr, 1)[..., 0]
        anchors, counts = self.anchors(maps)
        cls_targets = torch.zeros_like(cls, dtype=torch.float32)
        samples, pos_pred, pos_gt, pos_anchor, pos_ctr = [], [], [], [], []
        for b, t in enumerate(targets):
            gt = t["boxes"].to(anchors.dtype)
            matched = atss_assign(anchors, counts, gt, self.topk)
            pos = matched >= 0
            labels = torch.full_like(matched, -1)
            assigned = torch.zeros_like(anchors)
            if gt.numel():
                labels[pos] = t["labels"][matched[pos]] - 1
                assigned = gt[matched.clamp(min=0)]
            cls_targets[b, pos, labels[pos]] = 1.0
            samples.append(AuxSamples(boxes=anchors, labels=labels, gt_boxes=assigned))
            pos_pred.append(reg[b, pos])
            pos_gt.append(assigned[pos])
            pos_anchor.append(anchors[pos])
            pos_ctr.append(ctr[b, pos])
        num_pos = max(float(sum(p.shape[0] for p in pos_gt)), 1.0)
        loss_cls = sigmoid_focal_loss(cls.float(), cls_targets, alpha=0.25, gamma=2.0,
                                      reduction="sum") / num_pos
        pred, gt, anchor, logit = (torch.cat(pos_pred), torch.cat(pos_gt), torch.cat(pos_anchor),
                                   torch.cat(pos_ctr).float())
        if gt.shape[0]:
            boxes = self.box_coder.decode_single(pred, anchor)
            centres = (anchor[:, :2] + anchor[:, 2:]) / 2
            target_ctr = centerness_targets(centres, gt)
            giou = generalized_box_iou_loss(boxes, gt, reduction="none")
            loss_giou = (giou * target_ctr).sum() / target_ctr.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(logit, target_ctr, reduction="sum") / num_pos
        else:
            loss_giou = reg.sum() * 0.0
            loss_ctr = ctr.sum() * 0.0
        losses = {"loss_atss_cls": loss_cls * self.weights["cls"],
                  "loss_atss_giou": loss_giou * self.weights["giou"],
                  "loss_atss_centerness": loss_ctr * self.weights["centerness"]}
        return losses, samples


class RoIBranch(nn.Module):
    """The two-FC RoI head of the collaborative branch, with CB-SCR.

    Uses ``roi_heads`` (a :class:`CBSCRRoIHeads`) for sampling (GT added to the proposals;
    ``batch_size_per_image`` RoIs, a quarter positive at IoU 0.5), RoIAlign 7x7, the two FC
    layers, the classifier and CB-SCR. Losses over the ``R`` sampled RoIs:

    - ``loss_roi_cls = CE(logits, labels)`` (mean over ``R``, softmax over ``C + 1``);
    - ``loss_roi_giou = sum_pos (1 - GIoU(decode(delta_{label}), gt)) / R`` with the
      class-specific deltas of the true class;
    - ``loss_cb_scr`` from the head's CB-SCR module (if any).
    """

    def __init__(self, *, roi_heads: CBSCRRoIHeads, cls_weight: float = 12.0,
                 giou_weight: float = 120.0) -> None:
        super().__init__()
        self.roi_heads = roi_heads
        self.cls_weight = cls_weight
        self.giou_weight = giou_weight

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
                ) -> tuple[dict[str, Tensor], list[AuxSamples]]:
        heads = self.roi_heads
        proposals, matched, labels, _ = heads.select_training_samples(proposals, targets)
        features_roi = heads.box_head(heads.box_roi_pool(features, proposals, image_shapes))
        logits, deltas = heads.box_predictor(features_roi)
        all_labels = torch.cat(labels)
        total = max(all_labels.numel(), 1)
        loss_cls = F.cross_entropy(logits.float(), all_labels)
        gts = [t["boxes"][m] if t["boxes"].numel() else torch.zeros_like(p)
               for t, m, p in zip(targets, matched, proposals)]
        # GIoU on every sampled RoI with its own class's deltas, kept for the positives only:
        # no data-dependent branch, so no host synchronisation (and always graph-connected)
        pos = all_labels > 0
        rows = torch.arange(all_labels.numel(), device=all_labels.device)
        d = deltas.view(deltas.shape[0], -1, 4)[rows, all_labels].float()
        boxes = heads.box_coder.decode_single(d, torch.cat(proposals).float())
        per_roi = generalized_box_iou_loss(boxes, torch.cat(gts).float(), reduction="none")
        loss_giou = torch.where(pos, per_roi, torch.zeros_like(per_roi)).sum() / total
        losses = {"loss_roi_cls": loss_cls * self.cls_weight,
                  "loss_roi_giou": loss_giou * self.giou_weight}
        if heads.cb_scr is not None:
            losses["loss_cb_scr"] = heads.cb_scr(features_roi, all_labels, heads.class_weights())
        samples = [AuxSamples(boxes=p.detach(), labels=l - 1, gt_boxes=g)
                   for p, l, g in zip(proposals, labels, gts)]
        return losses, samples


class CollaborativeBranches(nn.Module):
    """The auxiliary branches that are switched on, as parts.

    Args (keyword-only):
        rpn: an :class:`AssignerRPN` (DI-RPN assigner) or ``None``.
        roi: a :class:`RoIBranch` (needs ``rpn`` for its proposals) or ``None``.
        atss: an :class:`ATSSHead` or ``None``.
        rpn_cls_weight, rpn_bbox_weight: factors on the RPN's objectness and box losses (12, 12).
    """

    def __init__(self, *, rpn: AssignerRPN | None = None, roi: RoIBranch | None = None,
                 atss: ATSSHead | None = None, rpn_cls_weight: float = 12.0,
                 rpn_bbox_weight: float = 12.0) -> None:
        super().__init__()
        if roi is not None and rpn is None:
            raise ConfigError(
                "aux_branches: 'roi' needs 'rpn' for its proposals; use ('rpn', 'roi', ...)."
            )
        self.rpn, self.roi, self.atss = rpn, roi, atss
        self.rpn_cls_weight = rpn_cls_weight
        self.rpn_bbox_weight = rpn_bbox_weight

    @property
    def num_query_groups(self) -> int:
        """How many groups of customized queries the branches produce (RoI head, ATSS)."""
        return int(self.roi is not None) + int(self.atss is not None)

    @property
    def query_group_names(self) -> list[str]:
        """The branches that give customized queries, in the order of their groups."""
        return [name for name in ("roi", "atss") if getattr(self, name) is not None]

    @torch.no_grad()
    def rpn_assignment(self, maps: list[Tensor], images: ImageList,
                       targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(anchors (A, 4), matches (A,))``: the RPN branch's anchors on ``maps``
        and what its assigner answers for them (GT index / -1 / -2), before any sampling."""
        if self.rpn is None:
            return []
        anchors = self.rpn.anchor_generator(images, list(maps))
        return [(a, self.rpn.assigner.assign(a, t["boxes"])) for a, t in zip(anchors, targets)]

    def forward(self, maps: list[Tensor], images: ImageList, targets: list[dict[str, Tensor]]
                ) -> tuple[dict[str, Tensor], list[list[AuxSamples]]]:
        """Run the branches on the 6 memory maps.

        Returns:
            ``(losses, groups)``: the weighted branch losses and, per query group (RoI head
            first, then ATSS), the per-image :class:`AuxSamples`.
        """
        losses: dict[str, Tensor] = {}
        groups: list[list[AuxSamples]] = []
        features = OrderedDict((str(i), m) for i, m in enumerate(maps))
        if self.rpn is not None:
            proposals, rpn_losses = self.rpn(images, features, targets)
            losses["loss_rpn_cls"] = rpn_losses["loss_objectness"] * self.rpn_cls_weight
            losses["loss_rpn_bbox"] = rpn_losses["loss_rpn_box_reg"] * self.rpn_bbox_weight
            if self.roi is not None:
                roi_losses, samples = self.roi(features, proposals, images.image_sizes, targets)
                losses.update(roi_losses)
                groups.append(samples)
        if self.atss is not None:
            atss_losses, samples = self.atss(maps, targets)
            losses.update(atss_losses)
            groups.append(samples)
        return losses, groups


#: Options of :func:`build_collaborative_branches` (the released values). The RPN's, DI-RPN's,
#: the RoI head's and CB-SCR's options are the two-stage detectors' (:mod:`oralx_lib.models.heads`),
#: with the release's branch proposal counts (4000 before NMS, 1000 after).
BRANCH_DEFAULTS: dict[str, Any] = {
    "strides": AUX_STRIDES,
    "di_rpn": True,
    "cb_scr": True,
    **RPN_DEFAULTS,
    "rpn_pre_nms_top_n_train": 4000,
    "rpn_pre_nms_top_n_test": 4000,
    "rpn_post_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_test": 1000,
    **DI_RPN_DEFAULTS,
    "rpn_box_loss": "l1",  # the release's RPN box loss (weight rpn_bbox_weight = 12)
    **ROI_DEFAULTS,
    # the release's RoI head: mmcv RoIAlign (aligned, adaptive sampling), its initialisation
    "roi_sampling_ratio": 0,
    "roi_aligned": True,
    "roi_head_init": "released",
    **CB_SCR_DEFAULTS,
    "rpn_cls_weight": 12.0,
    "rpn_bbox_weight": 12.0,
    "roi_cls_weight": 12.0,
    "roi_giou_weight": 120.0,
    "atss_topk": 9,
    "atss_anchor_scale": 8.0,
    "atss_stacked_convs": 1,
    "atss_cls_weight": 12.0,
    "atss_giou_weight": 24.0,
    "atss_centerness_weight": 12.0,
}


def build_collaborative_branches(names: tuple[str, ...], *, num_classes: int, embed_dim: int,
                                 **options: Any) -> CollaborativeBranches:
    """Assemble the branches named in ``names`` (a subset of ``("rpn", "roi", "atss")``).

    ``options`` override :data:`BRANCH_DEFAULTS` (e.g. ``di_rpn=False`` for the fixed IoU
    rule, ``cb_scr=False``, smaller ``rpn_pre_nms_top_n_train`` on CPU).
    """
    unknown = sorted(set(options) - set(BRANCH_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"branch_options has unknown key(s) {unknown}; valid keys: {sorted(BRANCH_DEFAULTS)}."
        )
    cfg = {**BRANCH_DEFAULTS, **options}
    strides = tuple(cfg["strides"])
    rpn = roi = atss = None
    if "rpn" in names:
        rpn = build_rpn(cfg, in_channels=embed_dim, strides=strides, di_rpn=cfg["di_rpn"])
    if "roi" in names:
        heads = build_roi_heads(cfg, in_channels=embed_dim,
                                featmap_names=[str(i) for i in range(len(strides))],
                                strides=strides,
                                num_classes=num_classes, cb_scr=cfg["cb_scr"])
        roi = RoIBranch(roi_heads=heads, cls_weight=cfg["roi_cls_weight"],
                        giou_weight=cfg["roi_giou_weight"])
    if "atss" in names:
        atss = ATSSHead(in_channels=embed_dim, num_classes=num_classes, strides=strides,
                        anchor_scale=cfg["atss_anchor_scale"], topk=cfg["atss_topk"],
                        stacked_convs=cfg["atss_stacked_convs"], cls_weight=cfg["atss_cls_weight"],
                        giou_weight=cfg["atss_giou_weight"],
                        centerness_weight=cfg["atss_centerness_weight"])
    return CollaborativeBranches(rpn=rpn, roi=roi, atss=atss, rpn_cls_weight=cfg["rpn_cls_weight"],
                                 rpn_bbox_weight=cfg["rpn_bbox_weight"])
