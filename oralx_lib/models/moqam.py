"""The complete MOQAM detector: a Co-DINO query head trained with collaborative branches.

Training graph (``B`` images; ``C = embed_dim``; ``K = num_queries``):

1. ``GeneralizedRCNNTransform`` normalises, resizes and pads the images; the padding mask is
   True outside each image.
2. A ResNet gives ``C2..C5``; a channel mapper (1x1 conv + GroupNorm per level, plus a stride-2
   3x3 conv + GroupNorm on ``C5``) gives 5 maps of ``C`` channels at strides 4..64.
3. The deformable encoder mixes the flattened maps (``S`` tokens) with sine positions
   (temperature 20, offset 0, as released) plus level embeddings.
4. Two-stage query selection: every token proposes a box (:func:`encoder_proposals`), scored by
   a class head; the top ``K`` become the decoder's reference boxes (detached) while the content
   queries are learned embeddings (mixed query selection).
5. The decoder refines the boxes layer by layer. In training it also receives the contrastive
   denoising queries, and - in a second pass - the *customized positive queries* built from the
   positive samples of the collaborative branches (RPN + RoI head with DI-RPN and CB-SCR, ATSS),
   which run on the encoder's memory reshaped back into maps plus one stride-2 level; each
   branch has its own content projection, and contributes 9 to 300 queries per image.
6. Losses: quality focal + L1 + GIoU on the encoder's top ``K`` and on every decoder layer
   (Hungarian matching, all of it in one host transfer), on the denoising queries and on the
   customized queries (fixed assignment), plus each branch's own losses. Whatever the batch
   holds (images without boxes, a branch without positives), every parameter receives a
   gradient, so that multi-GPU training needs no ``find_unused_parameters``.

At inference only the query head runs: the top ``pre_nms_topk`` (900) (query, class) pairs by
sigmoid score, linear soft-NMS per class (IoU threshold 0.8, minimum score 1e-3), at most
``detections_per_img`` (300) boxes in original image pixels: the release's inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_convert

from ..errors import ConfigError, DatasetError
from ..profiles import MOQAM_PROFILES
from .moqam_denoising import denoising_attention_mask, denoising_queries, group_attention_mask
from .backbones import IMAGENET_MEAN, IMAGENET_STD, resnet_backbone
from .moqam_branches import AuxSamples, CollaborativeBranches, build_collaborative_branches
from .deformable_attention import MSDeformAttn, small_tensor
from .moqam_losses import cxcywh_to_xyxy, hungarian_match_many, set_loss
from .moqam_transformer import (
    MLP,
    DeformableDecoder,
    DeformableEncoder,
    box_sine_embedding,
    encoder_proposals,
    sine_positional_encoding,
    valid_ratios,
)

__all__ = [
    "MOQAM",
    "MOQAM_PROFILES",
    "TrainingRecord",
    "ChannelMapper",
    "build_moqam",
    "box_iou_batched",
    "resnet_backbone",
    "soft_nms",
    "SOFT_NMS_METHODS",
]

#: The encoder's sine positional encoding, as released: temperature 20, normalised (2 pi),
#: offset 0 (DETR's defaults are 10000 and -0.5; the decoder's box embedding keeps 10000).
ENCODER_POS_TEMPERATURE = 20.0


class ChannelMapper(nn.Module):
    """Map ``C2..C5`` to ``embed_dim`` channels and add a stride-2 level from ``C5``.

    ``P_l = GN(Conv1x1(C_l))`` for ``l = 2..5`` and ``P_6 = GN(Conv3x3_s2(C5))`` (GroupNorm with
    32 groups, no activation): strides 4, 8, 16, 32, 64.
    """

    def __init__(self, *, in_channels: list[int], embed_dim: int = 256, extra_levels: int = 1,
                 num_groups: int = 32) -> None:
        super().__init__()
        if embed_dim % num_groups != 0:
            raise ConfigError(
                f"embed_dim={embed_dim} must be divisible by {num_groups} (GroupNorm groups); "
                "use 64, 128, 256, ..."
            )
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, embed_dim, 1), nn.GroupNorm(num_groups, embed_dim))
            for c in in_channels
        )
        extra, c = [], in_channels[-1]
        for _ in range(extra_levels):
            extra.append(nn.Sequential(nn.Conv2d(c, embed_dim, 3, stride=2, padding=1),
                                       nn.GroupNorm(num_groups, embed_dim)))
            c = embed_dim
        self.extra = nn.ModuleList(extra)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``features``: ``C2..C5`` ``(B, C_l, H_l, W_l)``. Returns 4 + ``extra_levels`` maps."""
        outs = [layer(f) for layer, f in zip(self.lateral, features)]
        x = features[-1]
        for layer in self.extra:
            x = layer(x)
            outs.append(x)
        return outs


SOFT_NMS_METHODS = ("linear", "gaussian")


def soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, *, method: str = "linear",
             iou_threshold: float = 0.8, sigma: float = 0.5,
             score_threshold: float = 1e-3) -> Tensor:
    """Soft-NMS per class, batched over images (Bodla et al., 2017; the release's setting is
    linear, IoU threshold 0.8, minimum score 1e-3).

    The *remaining set* starts as the boxes scoring at least ``score_threshold``. Repeatedly the
    highest-scoring remaining box ``i`` (the first one on ties) leaves the set, keeping its
    score, and decays every remaining box ``j`` of the same class:

    - ``linear``: ``s_j <- s_j (1 - IoU(i, j))`` when ``IoU(i, j) > iou_threshold``;
    - ``gaussian``: ``s_j <- s_j exp(-IoU(i, j)^2 / sigma)``.

    A box whose score falls below ``score_threshold`` leaves the set at once: it is never
    picked and decays nothing. ``N`` steps of tensor operations, no host synchronisation.

    Args:
        boxes: ``(B, N, 4)`` xyxy; scores: ``(B, N)``; labels: ``(B, N)``.
        method, iou_threshold, sigma, score_threshold: see above.

    Returns:
        ``(B, N)`` the decayed scores, 0 for every box that left the set below the threshold.
    """
    if method not in SOFT_NMS_METHODS:
        raise ConfigError(f"soft_nms method={method!r}: choose one of {SOFT_NMS_METHODS}.")
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2] \
            or labels.shape != scores.shape:
        raise ConfigError(
            f"soft_nms: boxes must be (B, N, 4) and scores, labels (B, N); got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}."
        )
    if scores.shape[1] == 0:
        return scores.clone()
    iou = box_iou_batched(boxes.float())
    iou = iou * (labels[:, :, None] == labels[:, None, :]).to(iou.dtype)
    if method == "linear":
        decay = torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))  # (B, N, N)
    else:
        decay = torch.exp(-(iou ** 2) / sigma)
    scores = scores.float().clone()
    remaining = scores >= score_threshold
    rows = torch.arange(scores.shape[0], device=scores.device)
    for _ in range(scores.shape[1]):
        pick = scores.masked_fill(~remaining, float("-inf")).argmax(dim=1)  # (B,)
        picked = remaining[rows, pick]  # False once an image's set is empty
        remaining[rows, pick] = False
        factor = torch.where(picked[:, None], decay[rows, pick], torch.ones_like(scores))
        scores = torch.where(remaining, scores * factor, scores)
        remaining &= scores >= score_threshold
    return scores.masked_fill(scores < score_threshold, 0.0)


def box_iou_batched(boxes: Tensor) -> Tensor:
    """``(B, N, 4)`` xyxy -> ``(B, N, N)`` pairwise IoU (0 where both boxes are empty)."""
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    return inter / union.clamp(min=1e-9)


@dataclass
class TrainingRecord:
    """What one training forward pass of :class:`MOQAM` saw (:meth:`MOQAM.training_record`).

    Boxes are in network-input pixels (after the transform's resize) unless said otherwise.

    Attributes:
        image_sizes: per image ``(height, width)`` after the resize.
        targets: the targets after the resize (``boxes`` xyxy, ``labels`` in ``1..C``).
        rpn: per image ``(anchors (A, 4), matches (A,))``: the RPN branch's anchors and its
            assigner's answer (GT index / -1 negative / -2 ignored), before the sampler; empty
            without an RPN branch.
        samples: ``{"roi" | "atss": per image AuxSamples}`` for the branches that give the
            decoder customized positive queries.
        matched: per image ``(query index, GT index)``: the last decoder layer's one-to-one
            (Hungarian) matching of the matching queries.
        boxes: ``(B, K, 4)`` the last decoder layer's boxes of the matching queries, cxcywh
            normalised by the resized image.
        losses: the weighted losses of the step.
    """

    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, Tensor]]
    rpn: list[tuple[Tensor, Tensor]]
    samples: dict[str, list[AuxSamples]]
    matched: list[tuple[Tensor, Tensor]]
    boxes: Tensor
    losses: dict[str, Tensor]


class MOQAM(nn.Module):
    """MOQAM / Co-DINO detector with torchvision's train/eval contract.

    Parts (keyword arguments): ``backbone`` (returns a dict of ``C2..C5``), ``neck``
    (:class:`ChannelMapper`), ``transform`` (``GeneralizedRCNNTransform``), ``encoder``,
    ``decoder`` and ``branches`` (:class:`CollaborativeBranches` or ``None``).

    Args:
        num_classes: foreground classes ``C`` (public labels ``1..C``).
        num_queries: ``K`` queries selected from the encoder.
        dn_number, label_noise_ratio, box_noise_scale: contrastive denoising
            (:func:`denoising_queries`).
        num_aux_queries: at most this many customized positive queries per image and branch
            (300).
        min_aux_queries: at least this many customized queries per image and branch (9, the
            release's): a batch with fewer positives is padded with the branch's negatives.
        loss_weights: ``{"cls", "bbox", "giou"}`` for the query-head losses (1, 5, 2).
        aux_query_weight: multiplies the customized-query losses (1 in the release).
        match_costs: ``{"cost_class", "cost_bbox", "cost_giou"}`` (2, 5, 2).
        qfl_beta: the quality focal loss exponent (2).
        detections_per_img: at most this many boxes per image (300).
        soft_nms: ``"linear"`` (the release), ``"gaussian"`` or ``None``: soft-NMS per class
            (:func:`soft_nms` with ``soft_nms_iou_threshold`` 0.8, ``soft_nms_sigma`` 0.5,
            ``soft_nms_score_threshold`` 1e-3) on the top ``pre_nms_topk`` (900) (query, class)
            pairs, then the best ``detections_per_img``. Without it, the top
            ``detections_per_img`` pairs. (``True`` / ``False`` are accepted for ``"gaussian"`` /
            ``None``, their old meaning.)
    """

    def __init__(self, *, backbone: nn.Module, neck: ChannelMapper,
                 transform: GeneralizedRCNNTransform, encoder: DeformableEncoder,
                 decoder: DeformableDecoder, branches: CollaborativeBranches | None = None,
                 num_classes: int = 9, num_levels: int = 5, num_queries: int = 900,
                 dn_number: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0, num_aux_queries: int = 300,
                 min_aux_queries: int = 9,
                 loss_weights: dict[str, float] | None = None, aux_query_weight: float = 1.0,
                 match_costs: dict[str, float] | None = None, qfl_beta: float = 2.0,
                 detections_per_img: int = 300, soft_nms: str | bool | None = "linear",
                 soft_nms_iou_threshold: float = 0.8, soft_nms_sigma: float = 0.5,
                 soft_nms_score_threshold: float = 1e-3, pre_nms_topk: int = 900) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.transform = transform
        self.encoder = encoder
        self.decoder = decoder
        self.branches = branches
        self._record: dict | None = None  # filled by training_record() only
        dim = decoder.embed_dim
        self.embed_dim = dim
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.num_queries = num_queries
        self.dn_number = dn_number
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.num_aux_queries = num_aux_queries
        self.min_aux_queries = min_aux_queries
        self.loss_weights = {"cls": 1.0, "bbox": 5.0, "giou": 2.0, **(loss_weights or {})}
        self.aux_query_weight = aux_query_weight
        self.match_costs = {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0,
                            **(match_costs or {})}
        self.qfl_beta = qfl_beta
        self.detections_per_img = detections_per_img
        if soft_nms is True or soft_nms is False:
            soft_nms = "gaussian" if soft_nms else None
        if soft_nms is not None and soft_nms not in SOFT_NMS_METHODS:
            raise ConfigError(
                f"soft_nms={soft_nms!r}: choose one of {SOFT_NMS_METHODS} or None (off)."
            )
        self.soft_nms = soft_nms
        self.soft_nms_iou_threshold = soft_nms_iou_threshold
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_score_threshold = soft_nms_score_threshold
        self.pre_nms_topk = pre_nms_topk

        self.level_embed = nn.Parameter(torch.empty(num_levels, dim).normal_())
        self.enc_output = nn.Linear(dim, dim)
        self.enc_output_norm = nn.LayerNorm(dim)
        self.enc_box_head = MLP(dim, dim, 4, 3)
        nn.init.zeros_(self.enc_box_head.layers[-1].weight)
        nn.init.zeros_(self.enc_box_head.layers[-1].bias)
        num_layers = len(decoder.layers)
        # class_heads[i] for decoder layer i; class_heads[-1] scores the encoder proposals
        self.class_heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_layers + 1))
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for head in self.class_heads:
            nn.init.constant_(head.bias, prior_bias)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.label_embed = nn.Embedding(num_classes, dim)
        if branches is not None:
            # one more stride-2 level for the collaborative branches, and the content of the
            # customized queries, one projection per branch as released:
            # LN_g(Linear_g(sine embedding of the box)) for query group g (RoI head, ATSS)
            self.aux_downsample = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1),
                                                nn.GroupNorm(32, dim))
            groups = branches.num_query_groups
            self.aux_query_fc = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(groups))
            self.aux_query_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(groups))
        self._reset_transformer_parameters()

    def _reset_transformer_parameters(self) -> None:
        """The release's initialisation of the transformer: Xavier-uniform on every weight with
        more than one dimension of the encoder, the decoder's layers and positional-query MLP,
        the encoder-output projection and the customised-query projections; then deformable
        attention's own initialisation (:meth:`MSDeformAttn.reset_parameters`). Biases keep
        their defaults; the class and box heads keep theirs (prior bias, zero last layer), the
        embeddings their N(0, 1)."""
        parts: list[nn.Module] = [self.encoder, self.decoder.layers, self.decoder.ref_point_head,
                                  self.enc_output]
        if self.branches is not None:
            parts += [self.aux_query_fc]
        for part in parts:
            for param in part.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None):
        if self.training and targets is None:
            raise ConfigError(
                "MOQAM is in training mode but got no targets: call model(images, targets) to "
                "train, or model.eval() before model(images) to predict."
            )
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ConfigError(
                    f"images[{i}] has shape {tuple(image.shape)}; MOQAM expects (3, H, W) float "
                    "tensors in [0, 1] (convert grey X-rays with image.expand(3, -1, -1))."
                )
        if targets is None:
            return
        if len(targets) != len(images):
            raise DatasetError(f"got {len(images)} images but {len(targets)} targets.")
        flags = []  # per image: (labels out of range, degenerate box), read in one transfer
        for i, t in enumerate(targets):
            boxes, labels = t.get("boxes"), t.get("labels")
            if boxes is None or labels is None:
                raise DatasetError(f"targets[{i}] needs 'boxes' and 'labels' keys, got {list(t)}.")
            if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape[0] != boxes.shape[0]:
                raise DatasetError(
                    f"targets[{i}]['boxes'] must be (N, 4) xyxy with N labels; got boxes "
                    f"{tuple(boxes.shape)} and labels {tuple(labels.shape)}."
                )
            if labels.numel():
                flags.append(torch.stack([((labels < 1) | (labels > self.num_classes)).any(),
                                          (boxes[:, 2:] <= boxes[:, :2]).any()]))
            else:
                flags.append(torch.zeros(2, dtype=torch.bool, device=labels.device))
        bad = torch.stack(flags).tolist() if flags else []
        for i, (bad_labels, bad_boxes) in enumerate(bad):
            if bad_labels:
                raise DatasetError(
                    f"targets[{i}]['labels'] must lie in 1..{self.num_classes} (0 is background); "
                    f"got {targets[i]['labels'].tolist()}. Map categories by name "
                    "(CLASSES.index(name) + 1)."
                )
            if bad_boxes:
                raise DatasetError(
                    f"targets[{i}]['boxes'] has boxes with x2 <= x1 or y2 <= y1; drop them or "
                    "convert [x, y, w, h] to xyxy."
                )

    # ------------------------------------------------------------------ features
    def _encode(self, images: Tensor, image_sizes: list[tuple[int, int]]):
        """Backbone, neck and encoder on the padded batch ``(B, 3, H, W)``."""
        batch, _, height, width = images.shape
        mask = torch.ones(batch, height, width, dtype=torch.bool, device=images.device)
        for b, (h, w) in enumerate(image_sizes):
            mask[b, :h, :w] = False
        features = list(self.backbone(images).values())
        maps = self.neck(features)
        srcs, poss, masks, shapes, ratios = [], [], [], [], []
        for level, x in enumerate(maps):
            m = F.interpolate(mask[None].float(), size=x.shape[-2:])[0].bool()
            pos = sine_positional_encoding(m, self.embed_dim // 2,
                                           temperature=ENCODER_POS_TEMPERATURE,
                                           offset=0.0).to(x.dtype)
            srcs.append(x.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].to(x.dtype))
            masks.append(m.flatten(1))
            shapes.append((int(x.shape[-2]), int(x.shape[-1])))
            ratios.append(valid_ratios(m))
        src, pos, flat_mask = torch.cat(srcs, 1), torch.cat(poss, 1), torch.cat(masks, 1)
        spatial_shapes = tuple(shapes)  # Python ints: no host synchronisation downstream
        ratios_t = torch.stack(ratios, dim=1)  # (B, L, 2)
        memory = self.encoder(src, pos, spatial_shapes, ratios_t, flat_mask)
        return memory, flat_mask, spatial_shapes, ratios_t

    def _select_queries(self, memory: Tensor, mask: Tensor, spatial_shapes):
        """Two-stage selection. Returns the top-``K`` logits ``(B, K, C)``, their boxes
        ``(B, K, 4)`` (with gradient, for the encoder loss) and the indices ``(B, K)``."""
        out, proposals, valid = encoder_proposals(memory, mask, spatial_shapes)
        out = self.enc_output_norm(self.enc_output(out))
        logits = self.class_heads[-1](out)
        coords = self.enc_box_head(out).float() + proposals  # boxes in float32 under autocast
        scores = logits.max(-1).values.masked_fill(~valid, float("-inf"))
        k = min(self.num_queries, scores.shape[1])
        index = scores.topk(k, dim=1).indices
        top_logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
        top_boxes = coords.gather(1, index[..., None].expand(-1, -1, 4)).sigmoid()
        return top_logits, top_boxes, index

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Train: ``model(images, targets) -> dict of weighted losses`` (sum them).
        Eval: ``model(images) -> [{"boxes" (N, 4) xyxy original pixels, "labels" (N,) in
        1..C, "scores" (N,)}]`` with ``N <= detections_per_img``."""
        self._check_inputs(images, targets)
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        sizes = [tuple(s) for s in image_list.image_sizes]
        if self._record is not None:
            self._record.update(image_sizes=sizes, targets=targets)
        memory, mask, shapes, ratios = self._encode(image_list.tensors, sizes)
        enc_logits, enc_boxes, _ = self._select_queries(memory, mask, shapes)
        batch, k = enc_boxes.shape[:2]
        content = self.query_embed.weight[:k][None].expand(batch, -1, -1)
        reference = enc_boxes.detach()

        if not self.training:
            hidden, boxes = self.decoder(content, reference, memory, shapes, ratios, mask)
            logits = self.class_heads[len(hidden) - 1](hidden[-1])
            detections = self._postprocess(logits, boxes[-1], sizes)
            return self.transform.postprocess(detections, sizes, original_sizes)

        gt_labels, gt_boxes = self._normalised_targets(targets, sizes)
        dn = None
        if self.dn_number > 0:
            dn = denoising_queries(
                gt_labels, gt_boxes, label_embedding=self.label_embed,
                num_classes=self.num_classes, dn_number=self.dn_number,
                label_noise_ratio=self.label_noise_ratio, box_noise_scale=self.box_noise_scale,
            )
        attn_mask = None
        if dn is None:
            # No GT in the batch (or no denoising): the label embedding is not used. As in the
            # release, a zero term on it keeps every parameter in the graph, so that
            # multi-GPU training (DDP, without find_unused_parameters) works on any batch.
            content = content + self.label_embed.weight[0, 0] * 0.0
        else:
            content = torch.cat([dn.content.to(content.dtype), content], dim=1)
            reference = torch.cat([dn.reference.to(reference.dtype), reference], dim=1)
            attn_mask = denoising_attention_mask(dn.num_groups, dn.group_size, k,
                                                 device=memory.device)
        hidden, boxes = self.decoder(content, reference, memory, shapes, ratios, mask, attn_mask)

        losses: dict[str, Tensor] = {}
        num_gt = float(sum(len(l) for l in gt_labels))
        n_dn = dn.num_queries if dn is not None else 0
        layer_logits = [self.class_heads[i](h) for i, h in enumerate(hidden)]
        # Hungarian matching of the encoder's top K and of every decoder layer, all images at
        # once: one device -> host transfer per step
        sets = [("enc", enc_logits, enc_boxes)] + [
            (f"d{i}", lg[:, n_dn:], b[:, n_dn:]) for i, (lg, b) in enumerate(zip(layer_logits, boxes))
        ]
        problems = [(lg[b].detach(), bx[b].detach(), gt_labels[b], gt_boxes[b])
                    for _, lg, bx in sets for b in range(batch)]
        matches = hungarian_match_many(problems, **self.match_costs)
        for j, (tag, lg, bx) in enumerate(sets):
            terms = set_loss(lg, bx, gt_labels, gt_boxes, matches[j * batch:(j + 1) * batch],
                             num_positives=num_gt, beta=self.qfl_beta)
            self._store(losses, tag, terms)
        if self._record is not None:  # the last decoder layer's one-to-one matching
            self._record.update(matched=matches[(len(sets) - 1) * batch:],
                                boxes=boxes[-1][:, n_dn:].detach())
        for i, (lg, b) in enumerate(zip(layer_logits, boxes)):
            if dn is not None:
                num_pos = float(sum(len(q) for q, _ in dn.matches))
                terms = set_loss(lg[:, :n_dn], b[:, :n_dn], gt_labels, gt_boxes, dn.matches,
                                 num_positives=num_pos, valid=dn.valid, beta=self.qfl_beta)
                self._store(losses, f"dn_d{i}", terms)
            elif self.dn_number > 0:  # no GT in the batch: keep the keys, graph-connected
                zero = b.sum() * 0.0
                self._store(losses, f"dn_d{i}", {"cls": zero, "bbox": zero, "giou": zero})
        if self.branches is not None:
            losses.update(self._collaborative_losses(memory, shapes, ratios, mask, image_list,
                                                     targets, sizes))
        return losses

    # ------------------------------------------------------------------ inspection
    def training_record(self, images: list[Tensor], targets: list[dict[str, Tensor]]
                        ) -> TrainingRecord:
        """One training forward pass that also returns what it saw: the branches' positive
        samples, the RPN's anchor assignment and the last decoder layer's one-to-one matching
        (:class:`TrainingRecord`). The model must be in training mode; nothing is changed
        besides what a training forward pass changes (none of the weights)."""
        if not self.training:
            raise ConfigError("training_record needs a model in training mode: call .train() "
                              "first (on a copy, to leave the original as it is).")
        self._record = {}
        try:
            losses = self(images, targets)
            record = self._record
        finally:
            self._record = None
        return TrainingRecord(image_sizes=record["image_sizes"], targets=record["targets"],
                              rpn=record.get("rpn", []), samples=record.get("samples", {}),
                              matched=record["matched"], boxes=record["boxes"], losses=losses)

    # ------------------------------------------------------------------ losses
    def _normalised_targets(self, targets, sizes):
        """Targets (after the transform) as class indices ``0..C-1`` and normalised cxcywh."""
        labels, boxes = [], []
        for t, (h, w) in zip(targets, sizes):
            scale = small_tensor([w, h, w, h], t["boxes"].device)
            labels.append(t["labels"].to(torch.int64) - 1)
            boxes.append(box_convert(t["boxes"].float(), "xyxy", "cxcywh") / scale)
        return labels, boxes

    def _store(self, losses, tag, terms, weight: float = 1.0):
        for name, value in terms.items():
            losses[f"loss_{name}_{tag}"] = value * (self.loss_weights[name] * weight)

    def _collaborative_losses(self, memory, shapes, ratios, mask, image_list, targets, sizes):
        """Run the branches on the memory maps and the decoder on their positive samples."""
        batch, _, dim = memory.shape
        maps, start = [], 0
        for h, w in shapes:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(batch, dim, h, w))
            start += h * w
        maps.append(self.aux_downsample(maps[-1]))
        losses, samples = self.branches(maps, image_list, targets)
        if self._record is not None:
            self._record["samples"] = dict(zip(self.branches.query_group_names, samples))
            if self.branches.rpn is not None:
                self._record["rpn"] = self.branches.rpn_assignment(maps, image_list, targets)
        groups = [self._aux_group(index, s, sizes) for index, s in enumerate(samples)]
        active = [g for g in groups if g is not None]
        # A group without any sample keeps its keys, graph-connected to the query projection it
        # did not use (every parameter gets a gradient in every step: DDP needs it).
        for g_index, g in enumerate(groups):
            if g is None:
                zero = memory.sum() * 0.0 + sum(
                    p.sum() for p in self._aux_query_parameters(g_index)) * 0.0
                for i in range(len(self.decoder.layers)):
                    self._store(losses, f"aux{g_index}_d{i}",
                                {"cls": zero, "bbox": zero, "giou": zero})
        if not active:
            return losses
        content = torch.cat([g["content"] for g in active], dim=1)
        reference = torch.cat([g["reference"] for g in active], dim=1)
        sizes_g = [g["content"].shape[1] for g in active]
        attn_mask = group_attention_mask(sizes_g, device=memory.device)
        hidden, boxes = self.decoder(content.to(memory.dtype), reference.float(),
                                     memory, shapes, ratios, mask, attn_mask)
        for i, (h, b) in enumerate(zip(hidden, boxes)):
            logits = self.class_heads[i](h)
            start = 0
            for g, n in zip(active, sizes_g):
                terms = set_loss(logits[:, start:start + n], b[:, start:start + n],
                                 g["gt_labels"], g["gt_boxes"], g["matches"],
                                 num_positives=g["num_positives"], valid=g["valid"],
                                 beta=self.qfl_beta)
                self._store(losses, f"aux{g['index']}_d{i}", terms, self.aux_query_weight)
                start += n
        return losses

    def _aux_query_parameters(self, group: int) -> list[nn.Parameter]:
        return [*self.aux_query_fc[group].parameters(), *self.aux_query_norm[group].parameters()]

    def _aux_group(self, index: int, samples: list[AuxSamples], sizes
                   ) -> dict[str, Any] | None:
        """Customized positive queries of one branch (``aux{index}``): up to
        ``num_aux_queries`` positives per image (a random subset); every image gets
        ``n = max(min_aux_queries, min(num_aux_queries, the batch's largest positive count))``
        queries, padded with the branch's negatives (random; background targets), then with
        empty slots (left out of every loss) if the branch has fewer samples. Reference box =
        the sample's box; content = ``LN_g(Linear_g(box_sine_embedding(box)))`` with the
        branch's own projection; targets = the GT each positive was assigned. ``None`` when the
        branch gave no sample at all."""
        picked = []
        for s in samples:
            pos = torch.nonzero(s.labels >= 0).flatten()
            neg = torch.nonzero(s.labels < 0).flatten()
            if pos.numel() > self.num_aux_queries:
                pos = pos[torch.randperm(pos.numel(), device=pos.device)[:self.num_aux_queries]]
            picked.append((pos, neg))
        most = max((p.numel() for p, _ in picked), default=0)
        n = max(self.min_aux_queries, min(self.num_aux_queries, most))
        if max((p.numel() + q.numel() for p, q in picked), default=0) == 0:
            return None
        dim = self.embed_dim
        device = samples[0].boxes.device
        batch = len(samples)
        reference = torch.full((batch, n, 4), 0.5, device=device)
        valid = torch.zeros(batch, n, dtype=torch.bool, device=device)
        gt_labels, gt_boxes, matches = [], [], []
        num_pos = 0
        for b, (s, (pos, neg)) in enumerate(zip(samples, picked)):
            neg = neg[torch.randperm(neg.numel(), device=device)[:n - pos.numel()]]
            order = torch.cat([pos, neg])
            h, w = sizes[b]
            scale = small_tensor([w, h, w, h], device)
            boxes = box_convert(s.boxes[order].float(), "xyxy", "cxcywh") / scale
            reference[b, :order.numel()] = boxes.clamp(1e-4, 1 - 1e-4)
            valid[b, :order.numel()] = True
            gt_labels.append(s.labels[pos].to(torch.int64))
            gt_boxes.append(box_convert(s.gt_boxes[pos].float(), "xyxy", "cxcywh") / scale)
            ar = torch.arange(pos.numel(), device=device)
            matches.append((ar, ar))
            num_pos += pos.numel()
        reference = reference.detach()
        embedding = box_sine_embedding(reference, dim // 2)
        content = self.aux_query_norm[index](self.aux_query_fc[index](embedding))
        content = content * valid[..., None].to(content.dtype)
        return {"index": index, "content": content, "reference": reference, "valid": valid,
                "gt_labels": gt_labels, "gt_boxes": gt_boxes, "matches": matches,
                "num_positives": float(num_pos)}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _postprocess(self, logits: Tensor, boxes: Tensor, sizes) -> list[dict[str, Tensor]]:
        """Top (query, class) pairs -> per-image detections in resized-image pixels."""
        batch, queries, classes = logits.shape
        prob = logits.float().sigmoid().flatten(1)  # (B, Q*C)
        keep = self.pre_nms_topk if self.soft_nms else self.detections_per_img
        k = min(keep, prob.shape[1])
        scores, index = prob.topk(k, dim=1)
        query = torch.div(index, classes, rounding_mode="floor")
        labels = index % classes + 1
        scale = small_tensor([[w, h, w, h] for h, w in sizes], boxes.device)[:, None]
        xyxy = cxcywh_to_xyxy(boxes.float().gather(1, query[..., None].expand(-1, -1, 4))) * scale
        xyxy = torch.minimum(xyxy.clamp(min=0), scale)
        if self.soft_nms:
            scores = soft_nms(xyxy, scores, labels, method=self.soft_nms,
                              iou_threshold=self.soft_nms_iou_threshold,
                              sigma=self.soft_nms_sigma,
                              score_threshold=self.soft_nms_score_threshold)
            scores, order = scores.topk(min(self.detections_per_img, k), dim=1)
            xyxy = xyxy.gather(1, order[..., None].expand(-1, -1, 4))
            labels = labels.gather(1, order)
        out = []
        for b in range(batch):
            keep_b = scores[b] > 0
            out.append({"boxes": xyxy[b][keep_b], "labels": labels[b][keep_b],
                        "scores": scores[b][keep_b]})
        return out


# ---------------------------------------------------------------------- profiles and builder
_DEFAULTS: dict[str, Any] = dict(
    embed_dim=256, num_queries=900, num_encoder_layers=6, num_decoder_layers=6, num_heads=8,
    num_points=4, ffn_dim=2048, dn_number=100, label_noise_ratio=0.5, box_noise_scale=1.0,
    min_size=800, max_size=1333, resize_in_training=True, image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD, size_divisible=1, trainable_backbone_layers=None, freeze_batchnorm=None,
    encoder_checkpoint=False,
    aux_branches=("rpn", "roi", "atss"), num_aux_queries=300, min_aux_queries=9,
    aux_query_weight=1.0,
    loss_weights=None, match_costs=None, qfl_beta=2.0, branch_options=None,
    detections_per_img=300, soft_nms="linear", soft_nms_iou_threshold=0.8, soft_nms_sigma=0.5,
    soft_nms_score_threshold=1e-3, pre_nms_topk=900,
)


def build_moqam(num_classes: int = 9, backbone: str = "resnet50",
                pretrained_backbone: bool = False, **overrides: Any) -> MOQAM:
    """Build MOQAM with the released sizes, any of them overridden by keyword.

    Keywords (defaults = the release): ``embed_dim`` 256, ``num_queries`` 900,
    ``num_encoder_layers`` 6, ``num_decoder_layers`` 6, ``num_heads`` 8, ``num_points`` 4,
    ``ffn_dim`` 2048, ``dn_number`` 100, ``label_noise_ratio`` 0.5, ``box_noise_scale`` 1.0,
    ``min_size`` 800 (int or tuple for multi-scale training), ``max_size`` 1333,
    ``resize_in_training`` True (False: training images keep the size the data pipeline gives
    them, e.g. crops already at the network-input scale; evaluation still resizes),
    ``aux_branches`` ``("rpn", "roi", "atss")`` (any subset; ``()`` trains the query head
    alone), ``num_aux_queries`` 300, ``min_aux_queries`` 9, ``aux_query_weight`` 1,
    ``loss_weights`` ``{"cls": 1, "bbox": 5, "giou": 2}``, ``match_costs``, ``qfl_beta`` 2,
    ``branch_options`` (a dict for :func:`build_collaborative_branches`: loss weights, DI-RPN
    settings, ...), ``size_divisible`` 1 (the batch is padded to its largest image only, as
    released; anchors sit on their strides whatever the padded size),
    ``detections_per_img`` 300, ``soft_nms`` ``"linear"`` (or ``"gaussian"``, ``None``),
    ``soft_nms_iou_threshold`` 0.8, ``soft_nms_sigma`` 0.5, ``soft_nms_score_threshold`` 1e-3,
    ``pre_nms_topk`` 900, ``trainable_backbone_layers`` and ``freeze_batchnorm`` (default: the
    freezing rule of :func:`oralx_lib.models.backbones.freeze_rule`: with ImageNet weights the
    release's ``layer2..layer4`` train over frozen BatchNorm; from scratch everything trains),
    ``encoder_checkpoint`` False (recompute encoder layers in backward: less memory for one
    more forward of them; ``True`` = every layer, a number = the first ones; the release: 4).

    Example::

        model = build_moqam(**MOQAM_PROFILES["tiny"])
    """
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"build_moqam got unknown option(s) {unknown}; valid options are "
            f"{sorted(_DEFAULTS)} plus num_classes, backbone, pretrained_backbone."
        )
    cfg = {**_DEFAULTS, **overrides}
    dim, heads = cfg["embed_dim"], cfg["num_heads"]
    if dim % heads != 0 or (dim // 2) % 2 != 0:
        raise ConfigError(
            f"embed_dim={dim} must be divisible by num_heads={heads} and by 4 "
            "(sine embeddings); e.g. embed_dim=128 with num_heads=4."
        )
    if cfg["num_queries"] < 1 or num_classes < 1:
        raise ConfigError("num_queries and num_classes must be positive.")
    unknown_branches = sorted(set(cfg["aux_branches"]) - {"rpn", "roi", "atss"})
    if unknown_branches:
        raise ConfigError(
            f"aux_branches has unknown entries {unknown_branches}; use a subset of "
            "('rpn', 'roi', 'atss')."
        )
    body, channels = resnet_backbone(backbone, pretrained_backbone,
                                     cfg["trainable_backbone_layers"], cfg["freeze_batchnorm"])
    num_levels = 5
    sizes = dict(embed_dim=dim, num_heads=heads, num_levels=num_levels,
                 num_points=cfg["num_points"], ffn_dim=cfg["ffn_dim"])
    min_size = cfg["min_size"]
    transform = GeneralizedRCNNTransform(
        min_size=min_size if isinstance(min_size, int) else tuple(min_size),
        max_size=cfg["max_size"], image_mean=list(cfg["image_mean"]),
        image_std=list(cfg["image_std"]), size_divisible=cfg["size_divisible"],
        _skip_resize=not cfg["resize_in_training"],
    )
    branches = None
    if cfg["aux_branches"]:
        branches = build_collaborative_branches(
            tuple(cfg["aux_branches"]), num_classes=num_classes, embed_dim=dim,
            **(cfg["branch_options"] or {}),
        )
    return MOQAM(
        backbone=body,
        neck=ChannelMapper(in_channels=channels, embed_dim=dim),
        transform=transform,
        encoder=DeformableEncoder(num_layers=cfg["num_encoder_layers"],
                                  checkpoint=cfg["encoder_checkpoint"], **sizes),
        decoder=DeformableDecoder(num_layers=cfg["num_decoder_layers"], **sizes),
        branches=branches,
        num_classes=num_classes,
        num_levels=num_levels,
        num_queries=cfg["num_queries"],
        dn_number=cfg["dn_number"],
        label_noise_ratio=cfg["label_noise_ratio"],
        box_noise_scale=cfg["box_noise_scale"],
        num_aux_queries=cfg["num_aux_queries"],
        min_aux_queries=cfg["min_aux_queries"],
        loss_weights=cfg["loss_weights"],
        aux_query_weight=cfg["aux_query_weight"],
        match_costs=cfg["match_costs"],
        qfl_beta=cfg["qfl_beta"],
        detections_per_img=cfg["detections_per_img"],
        soft_nms=cfg["soft_nms"],
        soft_nms_iou_threshold=cfg["soft_nms_iou_threshold"],
        soft_nms_sigma=cfg["soft_nms_sigma"],
        soft_nms_score_threshold=cfg["soft_nms_score_threshold"],
        pre_nms_topk=cfg["pre_nms_topk"],
    )
