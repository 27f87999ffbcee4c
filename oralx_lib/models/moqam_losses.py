"""MOQAM's query-head losses: quality focal loss, Hungarian matching, the set loss.

Conventions inside the query head (not the public torchvision contract):

- class indices ``0..C-1`` (public label minus one); "no object" has no class column;
- boxes are ``(cx, cy, w, h)`` normalised by the *unpadded* size of their image, in ``[0, 1]``.

The loss of one set of predictions (encoder proposals, one decoder layer, the denoising queries
of one layer, or one group of collaborative queries) is

.. math::

    \\mathcal{L} = \\frac{1}{N_{pos}}\\Big[\\lambda_{cls}\\sum_{q,c} \\mathrm{QFL}(x_{qc}, t_{qc})
        + \\lambda_{L1}\\sum_{q \\in pos} \\lVert b_q - \\hat b_{\\sigma(q)}\\rVert_1
        + \\lambda_{giou}\\sum_{q \\in pos} \\big(1 - \\mathrm{GIoU}(b_q, \\hat b_{\\sigma(q)})\\big)\\Big]

with ``t_qc = IoU(b_q, b_sigma(q))`` (detached) for the matched query's GT class and ``0``
elsewhere, and ``N_pos`` the number of matched queries in the batch (at least 1). The weights
``lambda`` (1, 5, 2 in the release) are applied by the caller.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou, generalized_box_iou_loss

__all__ = [
    "inverse_sigmoid",
    "cxcywh_to_xyxy",
    "quality_focal_loss",
    "matching_cost",
    "hungarian_match",
    "hungarian_match_many",
    "set_loss",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` and ``1 - x`` clamped to at least ``eps`` (any shape);
    ``eps = 1e-3`` is the release's value (logits within about +-6.9)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` ``(cx, cy, w, h)`` to ``(x1, y1, x2, y2)``."""
    return box_convert(boxes, "cxcywh", "xyxy")


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """Quality focal loss (Li et al., Generalized Focal Loss), element-wise.

    .. math::

        \\mathrm{QFL}(x, t) = \\mathrm{BCE}(\\sigma(x), t)\\;|\\sigma(x) - t|^{\\beta}

    Args:
        logits: ``(..., C)`` raw class scores.
        targets: ``(..., C)`` soft targets in ``[0, 1]``: the IoU of the predicted box with its
            GT at that GT's class, 0 elsewhere (background everywhere for unmatched queries).
        beta: the modulating exponent (2 in the release).

    Returns:
        ``(..., C)`` un-reduced loss.
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce * (logits.sigmoid() - targets).abs().pow(beta)


@torch.no_grad()
def matching_cost(logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *,
                  cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                  alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The Hungarian cost between ``Q`` predictions and ``G`` ground truths of one image.

    .. math::

        C_{qg} = \\lambda_{cls}\\big[\\alpha(1-p)^{\\gamma}(-\\log p)
                 - (1-\\alpha)p^{\\gamma}(-\\log(1-p))\\big]_{p = \\sigma(x_{q, c_g})}
                 + \\lambda_{L1}\\lVert b_q - \\hat b_g\\rVert_1
                 - \\lambda_{giou}\\,\\mathrm{GIoU}(b_q, \\hat b_g)

    Args:
        logits: ``(Q, C)``; boxes: ``(Q, 4)`` normalised cxcywh.
        gt_labels: ``(G,)`` in ``0..C-1``; gt_boxes: ``(G, 4)`` normalised cxcywh.

    Returns:
        ``(Q, G)`` float cost.
    """
    prob = logits.float().sigmoid()[:, gt_labels]  # (Q, G)
    eps = 1e-8
    pos = alpha * (1.0 - prob).pow(gamma) * (-(prob + eps).log())
    neg = (1.0 - alpha) * prob.pow(gamma) * (-(1.0 - prob + eps).log())
    c_class = pos - neg
    c_bbox = torch.cdist(boxes.float(), gt_boxes.float(), p=1)
    c_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(gt_boxes.float()))
    return cost_class * c_class + cost_bbox * c_bbox + cost_giou * c_giou


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
                    **cost_weights: float) -> tuple[Tensor, Tensor]:
    """One-to-one assignment minimising :func:`matching_cost` (scipy's Hungarian solver).

    Args:
        logits: ``(Q, C)``; boxes: ``(Q, 4)``; gt_labels: ``(G,)``; gt_boxes: ``(G, 4)``.
        **cost_weights: ``cost_class``, ``cost_bbox``, ``cost_giou``, ``alpha``, ``gamma``.

    Returns:
        ``(query_index, gt_index)``: two ``(min(Q, G),)`` int64 tensors on ``logits.device``,
        sorted by query index.
    """
    device = logits.device
    if gt_labels.numel() == 0 or logits.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    cost = matching_cost(logits, boxes, gt_labels, gt_boxes, **cost_weights)
    cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = rows.argsort()
    return (torch.as_tensor(rows[order], dtype=torch.int64, device=device),
            torch.as_tensor(cols[order], dtype=torch.int64, device=device))


@torch.no_grad()
def hungarian_match_many(problems: list[tuple[Tensor, Tensor, Tensor, Tensor]],
                         **cost_weights: float) -> list[tuple[Tensor, Tensor]]:
    """:func:`hungarian_match` of many problems with two host transfers in all.

    The cost matrices of every problem (e.g. every image of the encoder proposals and of the 6
    decoder layers) are computed on the device, copied to the host in **one** transfer, solved
    one by one with scipy, and the answers go back in one non-blocking copy. On a GPU that is
    one synchronisation per training step instead of one per image and layer.

    Args:
        problems: ``(logits (Q, C), boxes (Q, 4), gt_labels (G,), gt_boxes (G, 4))`` each.
        **cost_weights: as for :func:`matching_cost`.

    Returns:
        Per problem ``(query_index, gt_index)`` as :func:`hungarian_match` returns them (the same
        assignment).
    """
    if not problems:
        return []
    device = problems[0][0].device
    costs, shapes = [], []
    for logits, boxes, gt_labels, gt_boxes in problems:
        if gt_labels.numel() == 0 or logits.shape[0] == 0:
            shapes.append((0, 0))
            continue
        cost = matching_cost(logits, boxes, gt_labels, gt_boxes, **cost_weights)
        costs.append(torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6).flatten())
        shapes.append((logits.shape[0], gt_labels.numel()))
    if not costs:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return [(empty, empty) for _ in problems]
    flat = torch.cat(costs).cpu().numpy()  # the one device -> host transfer
    answers, lengths, start = [], [], 0
    for q, g in shapes:
        if q == 0:
            lengths.append(0)
            continue
        rows, cols = linear_sum_assignment(flat[start:start + q * g].reshape(q, g))
        start += q * g
        order = rows.argsort()
        answers += [rows[order], cols[order]]
        lengths.append(len(rows))
    indices = torch.from_numpy(np.concatenate(answers).astype(np.int64))
    if device.type == "cuda":
        indices = indices.pin_memory().to(device, non_blocking=True)
    else:
        indices = indices.to(device)
    pieces = indices.split([n for n in lengths for _ in (0, 1)])
    return [(pieces[2 * i], pieces[2 * i + 1]) for i in range(len(problems))]


def set_loss(logits: Tensor, boxes: Tensor, gt_labels: list[Tensor], gt_boxes: list[Tensor],
             matches: list[tuple[Tensor, Tensor]], *, num_positives: float,
             valid: Tensor | None = None, beta: float = 2.0) -> dict[str, Tensor]:
    """Quality focal, L1 and GIoU losses of a batch of query sets under a given assignment.

    Args:
        logits: ``(B, Q, C)``; boxes: ``(B, Q, 4)`` normalised cxcywh.
        gt_labels: per image ``(G_b,)`` in ``0..C-1``; gt_boxes: per image ``(G_b, 4)`` cxcywh.
        matches: per image ``(query_index, gt_index)`` int64 tensors of equal length; every
            other query is a negative (all-zero class target).
        num_positives: the normaliser ``N_pos`` (clamped to at least 1).
        valid: optional ``(B, Q)`` bool; False rows (padding) are left out of the class loss.
        beta: the QFL exponent.

    Returns:
        ``{"cls", "bbox", "giou"}``, unweighted scalars (sums divided by ``N_pos``).
    """
    norm = max(float(num_positives), 1.0)
    logits, boxes = logits.float(), boxes.float()  # losses in fp32 under autocast
    batch_index = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
    query_index = torch.cat([q for q, _ in matches])
    pred = boxes[batch_index, query_index]  # (P, 4)
    target_boxes = torch.cat([gt_boxes[b][g] for b, (_, g) in enumerate(matches)]).to(pred.dtype)
    target_labels = torch.cat([gt_labels[b][g] for b, (_, g) in enumerate(matches)])
    pred_xyxy, target_xyxy = cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target_boxes)

    scores = torch.zeros_like(logits)
    if query_index.numel():
        iou = box_iou(pred_xyxy.detach().float(), target_xyxy.float()).diagonal()
        scores[batch_index, query_index, target_labels] = iou.to(scores.dtype)
    cls = quality_focal_loss(logits, scores, beta)
    if valid is not None:
        cls = cls * valid[..., None].to(cls.dtype)
    cls = cls.sum() / norm
    if query_index.numel():
        bbox = F.l1_loss(pred, target_boxes, reduction="sum") / norm
        giou = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="sum") / norm
    else:  # keep the graph connected so every parameter still gets a (zero) gradient
        bbox = giou = boxes.sum() * 0.0
    return {"cls": cls, "bbox": bbox, "giou": giou}
