"""Self-checks for the chapter "Query-aware mining: the complete MOQAM".

=====================================  ========================================================
check                                  reference
=====================================  ========================================================
``check_hungarian_cost(fn)``           ``oralx_lib.models.moqam_losses.matching_cost`` with the
                                       released weights (focal 2, L1 5, GIoU 2)
``check_denoising_mask(fn)``           ``oralx_lib.models.moqam_denoising.
                                       denoising_attention_mask``
``check_sine_embedding(fn)``           ``oralx_lib.models.moqam_transformer.box_sine_embedding``
``check_deformable_attention(fn)``     ``oralx_lib.models.multi_scale_deformable_attention``
=====================================  ========================================================

On success one line is printed; otherwise ``AssertionError`` names the failing case and, when
the answer matches a typical mistake, explains it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from ...models import multi_scale_deformable_attention
from ...models.moqam_denoising import denoising_attention_mask
from ...models.moqam_losses import matching_cost
from ...models.moqam_transformer import box_sine_embedding
from ._report import report as _report
from .basics import _as_tensor, _compare

# ------------------------------------------------------------------------- Hungarian cost


def _random_cxcywh(n: int, generator: torch.Generator) -> Tensor:
    centre = 0.15 + 0.7 * torch.rand(n, 2, generator=generator)
    size = 0.02 + 0.25 * torch.rand(n, 2, generator=generator)
    return torch.cat([centre, size], dim=1)


def _cost_variants(logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor
                   ) -> list[tuple[Tensor, str]]:
    p = logits.double().sigmoid()[:, gt_labels]
    eps = 1e-8
    focal = 0.25 * (1 - p) ** 2 * (-(p + eps).log()) - 0.75 * p ** 2 * (-(1 - p + eps).log())
    xyxy, gt_xyxy = (box_convert(b.double(), "cxcywh", "xyxy") for b in (boxes, gt_boxes))
    l1 = torch.cdist(boxes.double(), gt_boxes.double(), p=1)
    giou = generalized_box_iou(xyxy, gt_xyxy)
    soft = logits.double().softmax(-1)[:, gt_labels]
    sf = (0.25 * (1 - soft) ** 2 * (-(soft + eps).log())
          - 0.75 * soft ** 2 * (-(1 - soft + eps).log()))
    return [
        (2 * -p + 5 * l1 - 2 * giou,
         "MOQAM (like DINO) uses the focal class cost "
         "alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p)), not DETR's -p"),
        (2 * sf + 5 * l1 - 2 * giou,
         "p is the sigmoid of the logit of the GT's class (one binary classifier per class), "
         "not a softmax over classes"),
        (2 * focal + 5 * torch.cdist(xyxy, gt_xyxy, p=1) - 2 * giou,
         "the L1 cost compares (cx, cy, w, h), not the corners (x1, y1, x2, y2)"),
        (2 * focal + 5 * l1 + 2 * giou,
         "a larger GIoU is a better match, so the cost *subtracts* lambda_giou * GIoU"),
        (focal + l1 - giou, "weight the three costs: 2 (class), 5 (L1), 2 (GIoU)"),
        (2 * focal + 5 * l1 - 2 * box_iou(xyxy, gt_xyxy),
         "GIoU, not IoU: GIoU still ranks boxes that do not overlap the GT at all"),
        (2 * (0.25 * (1 - p) ** 2 * (-(p + eps).log())) + 5 * l1 - 2 * giou,
         "the class cost is the *difference* between the positive and the negative focal "
         "terms, - (1-alpha) p^gamma (-log(1-p)) included"),
    ]


def check_hungarian_cost(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], *,
                         seed: int = 0) -> None:
    """``fn(logits (Q, C), boxes (Q, 4), gt_labels (G,), gt_boxes (G, 4)) -> (Q, G)``: the
    Hungarian matching cost with the released weights,
    ``C = 2 C_focal + 5 ||b - b_gt||_1 - 2 GIoU(b, b_gt)``, boxes normalised ``cxcywh``,
    labels ``0..C-1``, focal ``alpha = 0.25``, ``gamma = 2``."""
    hand = (
        torch.tensor([[2.0, -1.0, 0.0], [-3.0, 1.5, 0.5]]),
        torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]]),
        torch.tensor([0, 2]),
        torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.8, 0.2, 0.1, 0.1]]),
        "2 predictions x 2 GTs, one perfect box",
    )
    g = torch.Generator().manual_seed(seed)
    cases = [hand]
    for q, c, n_gt in ((5, 9, 3), (20, 9, 7), (4, 2, 6), (1, 9, 1)):
        logits = torch.randn(q, c, generator=g) * 3
        labels = torch.randint(0, c, (n_gt,), generator=g)
        cases.append((logits, _random_cxcywh(q, g), labels, _random_cxcywh(n_gt, g),
                      f"{q} queries x {n_gt} GTs, {c} classes (random)"))
    for logits, boxes, labels, gt, name in cases:
        want = matching_cost(logits, boxes, labels, gt)
        got = fn(logits.clone(), boxes.clone(), labels.clone(), gt.clone())
        _compare(got, want, call=f"cost [{name}]",
                 hints=_cost_variants(logits, boxes, labels, gt), atol=1e-4, rtol=1e-4)
    _report("hungarian_cost", len(cases))


# ------------------------------------------------------------------------- denoising mask


def _mask_variants(num_groups: int, group_size: int, num_queries: int
                   ) -> list[tuple[Tensor, str]]:
    want = denoising_attention_mask(num_groups, group_size, num_queries)
    dn = num_groups * group_size
    no_leak_block = want.clone()
    no_leak_block[dn:, :dn] = False
    groups_open = want.clone()
    groups_open[:dn, :dn] = False
    closed = want.clone()
    closed[:dn, dn:] = True
    return [
        (~want, "True means *blocked* (PyTorch's boolean attn_mask): invert your mask"),
        (want.T, "rows are the queries that attend, columns what they attend to: the "
                 "matching rows must not see the denoising columns"),
        (no_leak_block, "block the matching queries from the denoising ones: the denoising "
                        "queries are built from the ground truth and would leak the answer"),
        (groups_open, "the denoising groups must not see each other (each is one noisy copy "
                      "of the same ground truth)"),
        (closed, "the denoising queries may look at the matching queries: only the other "
                 "direction leaks the answer"),
    ]


def check_denoising_mask(fn: Callable[[int, int, int], Tensor]) -> None:
    """``fn(num_groups, group_size, num_queries) -> (T, T)`` bool, ``T = num_groups *
    group_size + num_queries``, True where row query ``i`` may *not* attend to column ``j``:
    the denoising groups come first, each sees only itself (and the matching queries); the
    matching queries see only each other."""
    cases = [(1, 2, 3), (2, 2, 2), (3, 4, 5), (4, 2, 7), (2, 6, 0), (5, 10, 100)]
    for groups, size, queries in cases:
        want = denoising_attention_mask(groups, size, queries)
        got = _as_tensor(fn(groups, size, queries), "mask")
        if got.dtype != torch.bool:
            raise AssertionError(
                f"mask({groups}, {size}, {queries}): return a bool tensor (True = blocked), "
                f"got dtype {got.dtype}")
        _compare(got, want, call=f"mask(num_groups={groups}, group_size={size}, "
                                 f"num_queries={queries})",
                 hints=_mask_variants(groups, size, queries))
    _report("denoising_mask", len(cases))


# ------------------------------------------------------------------------- sine embedding


def _sine_variants(boxes: Tensor, num_feats: int) -> list[tuple[Tensor, str]]:
    b = boxes.double()
    i = torch.arange(num_feats, dtype=torch.float64)
    freq = 10000.0 ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)
    freq_plain = 10000.0 ** (i / num_feats)

    def embed(values: Tensor, f: Tensor, scale: float = 2 * math.pi, interleave: bool = True,
              cos_first: bool = False, order=(1, 0, 2, 3)) -> Tensor:
        angles = values[..., None] * scale / f
        first, second = (angles[..., 0::2].cos(), angles[..., 1::2].sin()) if cos_first else \
            (angles[..., 0::2].sin(), angles[..., 1::2].cos())
        emb = (torch.stack([first, second], -1).flatten(-2) if interleave
               else torch.cat([first, second], -1))
        return emb[..., list(order), :].flatten(-2)

    return [
        (embed(b, freq, order=(0, 1, 2, 3)),
         "the order of the coordinates is (y, x, w, h): y first, as in DETR's 2-D encoding"),
        (embed(b, freq, interleave=False),
         "interleave: channel 2k is sin, channel 2k+1 is cos of the same frequency"),
        (embed(b, freq, scale=1.0), "multiply the normalised coordinate by 2 pi first"),
        (embed(b, freq_plain),
         "channels 2k and 2k+1 share one frequency: T^(2 floor(i/2) / F), not T^(i / F)"),
        (embed(b, freq, cos_first=True), "sin on even channels, cos on odd ones"),
    ]


def check_sine_embedding(fn: Callable[[Tensor, int], Tensor], *, seed: int = 0) -> None:
    """``fn(boxes (..., 4), num_feats F) -> (..., 4F)``: the sine embedding of normalised
    ``(cx, cy, w, h)`` boxes that gives the decoder its positional queries. Each coordinate
    ``v`` becomes ``F`` channels ``sin``/``cos`` (interleaved) of ``2 pi v / T^(2 floor(i/2) /
    F)`` with ``T = 10000``, in the coordinate order ``y, x, w, h``."""
    g = torch.Generator().manual_seed(seed)
    cases = [
        (torch.tensor([[0.5, 0.5, 0.2, 0.4]]), 4, "one box, F = 4"),
        (torch.tensor([[0.1, 0.7, 0.05, 0.3], [0.9, 0.2, 0.6, 0.1]]), 2, "two boxes, F = 2"),
        (torch.rand(2, 3, 4, generator=g), 8, "a (2, 3) batch of random boxes, F = 8"),
        (torch.rand(5, 4, generator=g), 64, "5 random boxes, F = 64 (the released 128/2)"),
    ]
    for boxes, num_feats, name in cases:
        want = box_sine_embedding(boxes, num_feats)
        got = fn(boxes.clone(), num_feats)
        _compare(got, want, call=f"sine_embedding [{name}]",
                 hints=_sine_variants(boxes, num_feats), atol=1e-4, rtol=1e-4)
    _report("sine_embedding", len(cases))


# ------------------------------------------------------------------------- deformable attention


def _sample_variants(value: Tensor, shapes: Tensor, locations: Tensor, weights: Tensor
                     ) -> list[tuple[Tensor, str]]:
    batch, _, heads, channels = value.shape
    queries = locations.shape[1]

    def sample(grid_fn, align_corners=False, padding="zeros", head_major=True) -> Tensor:
        sizes = [int(h) * int(w) for h, w in shapes.tolist()]
        out = 0
        for level, (v, (h, w)) in enumerate(zip(value.split(sizes, 1), shapes.tolist())):
            v = v.flatten(2).transpose(1, 2).reshape(batch * heads, channels, h, w)
            loc = locations[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (BM, Q, P, 2)
            s = F.grid_sample(v.double(), grid_fn(loc.double(), h, w), mode="bilinear",
                              padding_mode=padding, align_corners=align_corners)
            wl = weights[:, :, :, level].transpose(1, 2).flatten(0, 1)[:, None].double()
            out = out + (s * wl).sum(-1)  # (BM, D, Q)
        out = out.view(batch, heads, channels, queries)
        if head_major:
            return out.permute(0, 3, 1, 2).reshape(batch, queries, heads * channels)
        return out.permute(0, 3, 2, 1).reshape(batch, queries, heads * channels)

    return [
        (sample(lambda loc, h, w: 2 * loc - 1, align_corners=True),
         "location 0 is the left *edge* of the map and 1 its right edge; pixel j's centre is "
         "at (j + 0.5) / W, so sample at x W - 0.5 (align_corners=False), not x (W - 1)"),
        (sample(lambda loc, h, w: 2 * loc - 1, padding="border"),
         "samples outside the map read zeros, not the nearest border pixel"),
        (sample(lambda loc, h, w: 2 * loc.flip(-1) - 1),
         "a location is (x, y): x indexes the width, y the height"),
        (sample(lambda loc, h, w: 2 * loc - 1, head_major=False),
         "the output's channel m * D + d is head m's channel d (heads concatenated)"),
        (sample(lambda loc, h, w: 2 * (loc + 0.5 / loc.new_tensor([w, h])) - 1),
         "do not shift by half a pixel twice: pixel j's centre is at (j + 0.5) / W"),
    ]


def _hand_case() -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    # One image, one head, 1 channel, one 2 x 3 level with values 1..6; three queries, one
    # point each: the centre of pixel (row 0, col 1), the midpoint between (1, 1) and (1, 2),
    # and the top-left corner of the map (a quarter of pixel (0, 0), the rest is zero padding).
    value = torch.arange(1.0, 7.0).view(1, 6, 1, 1)
    shapes = torch.tensor([[2, 3]])
    loc = torch.tensor([[1.5 / 3, 0.5 / 2], [2.0 / 3, 1.5 / 2], [0.0, 0.0]])
    locations = loc.view(1, 3, 1, 1, 1, 2)
    weights = torch.ones(1, 3, 1, 1, 1)
    return value, shapes, locations, weights, "a 2 x 3 map of 1..6: a centre, a midpoint, a corner"


def check_deformable_attention(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], *,
                               seed: int = 0) -> None:
    """``fn(value (B, S, M, D), spatial_shapes (L, 2), sampling_locations (B, Q, M, L, P, 2),
    attention_weights (B, Q, M, L, P)) -> (B, Q, M D)``: multi-scale deformable attention's
    sampling and weighting (bilinear, pixel centres at ``(j + 0.5) / W``, zeros outside),
    as :func:`oralx_lib.models.multi_scale_deformable_attention`."""
    g = torch.Generator().manual_seed(seed)
    cases = [_hand_case()]
    for batch, heads, channels, shapes, queries, points in (
        (1, 1, 2, [(3, 4)], 2, 1),
        (2, 2, 3, [(4, 5), (2, 3)], 5, 3),
        (1, 4, 2, [(6, 7), (3, 4), (2, 2)], 7, 4),
    ):
        shapes_t = torch.tensor(shapes)
        s = int(sum(h * w for h, w in shapes))
        value = torch.randn(batch, s, heads, channels, generator=g)
        levels = len(shapes)
        locations = torch.rand(batch, queries, heads, levels, points, 2, generator=g) * 1.4 - 0.2
        weights = torch.rand(batch, queries, heads, levels, points, generator=g)
        weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
        cases.append((value, shapes_t, locations, weights,
                      f"B={batch}, M={heads}, D={channels}, levels {shapes}, Q={queries}, "
                      f"P={points} (random, some points outside the maps)"))
    for value, shapes, locations, weights, name in cases:
        want = multi_scale_deformable_attention(value, shapes, locations, weights)
        got = fn(value.clone(), shapes.clone(), locations.clone(), weights.clone())
        _compare(got, want, call=f"deformable_attention [{name}]",
                 hints=_sample_variants(value, shapes, locations, weights), atol=1e-4,
                 rtol=1e-4)
    _report("deformable_attention", len(cases))
