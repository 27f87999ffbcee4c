"""Contrastive denoising queries (DINO) and the decoder's self-attention masks.

During training the decoder also sees noisy copies of the ground truth. Each *group* holds,
for every GT of an image, one **positive** query (box moved by less than half its size, to be
reconstructed) and one **negative** query (moved by between one and two half-sizes, to be
classified as background). Labels are flipped to a random class with probability
``label_noise_ratio / 2``. With ``G_max`` the largest GT count in the batch, a group has
``2 G_max`` slots (positives first) and there are ``max(1, dn_number // G_max)`` groups.

Box noise, on the corners of ``b = (x1, y1, x2, y2)`` with half-sizes
``d = (w/2, h/2, w/2, h/2)``:

.. math::

    \\tilde b = \\mathrm{clip}_{[0,1]}\\big(b + s \\odot u \\odot d \\cdot \\lambda_{box}\\big),
    \\quad s \\in \\{-1, 1\\}^4,\\; u \\sim U[0, 1)^4 \\text{ (positives) or } U[1, 2)^4
    \\text{ (negatives)}

A negative whose opposite corners cross each other (both pushed inwards) ends up with a
negative width or height; as in DINO it becomes a (near) zero-size box once the reference is
clamped to ``(0, 1)`` through ``sigmoid(inverse_sigmoid(.))``.

Attention: matching queries must not see denoising queries (they would read the answer), and
denoising groups must not see each other; denoising queries may see the matching queries. The
collaborative ("auxiliary") queries of different branches are likewise kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from .moqam_losses import inverse_sigmoid

__all__ = ["DenoisingQueries", "denoising_queries", "denoising_attention_mask",
           "group_attention_mask"]


@dataclass
class DenoisingQueries:
    """The denoising part of the decoder input.

    Attributes:
        content: ``(B, D, C)`` label embeddings (zeros in padding slots).
        reference: ``(B, D, 4)`` noisy normalised cxcywh boxes.
        valid: ``(B, D)`` bool, False in padding slots (image with fewer GTs than ``G_max``).
        matches: per image ``(query_index, gt_index)`` of the positive queries.
        num_groups: number of groups; group_size: ``2 G_max`` queries per group.
    """

    content: Tensor
    reference: Tensor
    valid: Tensor
    matches: list[tuple[Tensor, Tensor]]
    num_groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        return self.num_groups * self.group_size


def denoising_attention_mask(num_groups: int, group_size: int, num_queries: int,
                             device: torch.device | str | None = None) -> Tensor:
    """Self-attention mask for ``[denoising groups | matching queries]``.

    Returns:
        ``(T, T)`` bool with ``T = num_groups * group_size + num_queries``; True where query
        ``i`` (row) may not attend to ``j`` (column): matching rows x denoising columns, and
        denoising group ``g`` x every other group.
    """
    dn = num_groups * group_size
    total = dn + num_queries
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[dn:, :dn] = True
    group = torch.arange(dn, device=device) // max(group_size, 1)
    mask[:dn, :dn] = group[:, None] != group[None, :]
    return mask


def group_attention_mask(group_sizes: list[int], device: torch.device | str | None = None
                         ) -> Tensor:
    """Block-diagonal mask: queries of consecutive groups of the given sizes see only their own
    group. Returns ``(T, T)`` bool, ``T = sum(group_sizes)``, True = blocked."""
    group = torch.repeat_interleave(
        torch.arange(len(group_sizes), device=device),
        torch.as_tensor(group_sizes, device=device),
    )
    return group[:, None] != group[None, :]


def denoising_queries(gt_labels: list[Tensor], gt_boxes: list[Tensor], *,
                      label_embedding: nn.Embedding, num_classes: int, dn_number: int = 100,
                      label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0
                      ) -> DenoisingQueries | None:
    """Build the contrastive denoising queries of a batch.

    Args:
        gt_labels: per image ``(G_b,)`` int64 in ``0..C-1``.
        gt_boxes: per image ``(G_b, 4)`` normalised cxcywh.
        label_embedding: ``nn.Embedding(C, embed_dim)`` giving the content of a query.
        num_classes: ``C``, for the random labels.
        dn_number: the budget of positive queries per image over all groups.
        label_noise_ratio: a label is replaced with probability ``label_noise_ratio / 2``.
        box_noise_scale: ``lambda_box`` above.

    Returns:
        :class:`DenoisingQueries`, or ``None`` when there is no GT in the batch or
        ``dn_number <= 0``.
    """
    counts = [int(l.numel()) for l in gt_labels]
    max_gt = max(counts, default=0)
    if max_gt == 0 or dn_number <= 0:
        return None
    device = label_embedding.weight.device
    batch = len(gt_labels)
    groups = max(1, dn_number // max_gt)
    group_size = 2 * max_gt
    total = groups * group_size

    labels = torch.zeros(batch, groups, 2, max_gt, dtype=torch.int64, device=device)
    boxes = torch.zeros(batch, groups, 2, max_gt, 4, device=device)
    valid = torch.zeros(batch, groups, 2, max_gt, dtype=torch.bool, device=device)
    for b, (lab, box) in enumerate(zip(gt_labels, gt_boxes)):
        n = counts[b]
        labels[b, :, :, :n] = lab.to(device)
        boxes[b, :, :, :n] = box.to(device=device, dtype=boxes.dtype)
        valid[b, :, :, :n] = True

    if label_noise_ratio > 0:
        flip = torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5
        random_labels = torch.randint(0, num_classes, labels.shape, device=device)
        labels = torch.where(flip, random_labels, labels)
    if box_noise_scale > 0:
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        half = torch.cat([boxes[..., 2:], boxes[..., 2:]], dim=-1) / 2
        sign = torch.randint(0, 2, boxes.shape, device=device).to(boxes.dtype) * 2.0 - 1.0
        part = torch.rand(boxes.shape, device=device)
        part[:, :, 1] += 1.0  # negatives: between one and two half-sizes away
        xyxy = (xyxy + sign * part * half * box_noise_scale).clamp(0.0, 1.0)
        boxes = box_convert(xyxy, "xyxy", "cxcywh")

    content = label_embedding(labels) * valid[..., None].to(label_embedding.weight.dtype)
    matches = []
    slot = torch.arange(max_gt, device=device)
    for b in range(batch):
        n = counts[b]
        query_index = (torch.arange(groups, device=device)[:, None] * group_size
                       + slot[None, :n]).flatten()
        gt_index = slot[:n].repeat(groups)
        matches.append((query_index, gt_index))
    # Keep references strictly inside (0, 1) so that inverse_sigmoid stays finite.
    reference = inverse_sigmoid(boxes).sigmoid()
    return DenoisingQueries(
        content=content.view(batch, total, -1),
        reference=reference.view(batch, total, 4),
        valid=valid.view(batch, total),
        matches=matches,
        num_groups=groups,
        group_size=group_size,
    )
