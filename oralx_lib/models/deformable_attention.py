"""Multi-scale deformable attention (Deformable DETR), in plain PyTorch.

A query ``q`` with a reference point ``r_q`` (normalised ``(x, y)`` in ``[0, 1]``) looks at
``P`` points on each of ``L`` feature levels, for each of ``M`` heads:

.. math::

    \\mathrm{MSDeformAttn}(z_q, r_q, \\{x^l\\}) = W_o \\Big[\\sum_{l=1}^{L}\\sum_{k=1}^{P}
        A_{mlqk}\\; W_v x^l\\big(\\phi_l(r_q) + \\Delta p_{mlqk}\\big)\\Big]_{m=1..M}

with attention weights ``A`` (softmax over the ``L*P`` samples of a head) and offsets ``Delta p``
both predicted from the query by linear layers. ``x^l(p)`` is bilinear interpolation of level
``l`` at the fractional location ``p``: pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``
in pixel units, locations are normalised by the level's width and height, and samples that fall
outside the map read zeros. :func:`multi_scale_deformable_attention` is that sampling and
weighting; :class:`MSDeformAttn` adds the projections and the usual initialisation.

There is no custom CUDA kernel: :func:`torch.nn.functional.grid_sample` does the bilinear
sampling, so the same code runs (and back-propagates) on CPU and GPU.

Level sizes: ``spatial_shapes`` may be an ``(L, 2)`` integer tensor (read once with
``.tolist()``) or, as the model passes them, a sequence of ``(H_l, W_l)`` Python ints, which
costs no device-to-host synchronisation on a GPU. Sampling locations and the bilinear sampling
are float32 under autocast (a bf16 location is off by up to half a pixel on a 200 px level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["multi_scale_deformable_attention", "MSDeformAttn", "level_shapes", "small_tensor"]

Shapes = tuple[tuple[int, int], ...]


def level_shapes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> Shapes:
    """``(H_l, W_l)`` of every level as Python ints: from a sequence of pairs (free) or from an
    ``(L, 2)`` tensor (one ``.tolist()``, a host synchronisation on a GPU)."""
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return tuple((int(h), int(w)) for h, w in spatial_shapes)


def small_tensor(values, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A small tensor of Python numbers on ``device`` without stalling a GPU: on CUDA the values
    go through pinned memory with a non-blocking copy (a plain ``torch.tensor(..., device=cuda)``
    waits for every queued kernel)."""
    t = torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def multi_scale_deformable_attention(
    value: Tensor, spatial_shapes: Tensor | Sequence[Sequence[int]], sampling_locations: Tensor,
    attention_weights: Tensor
) -> Tensor:
    """Sample ``value`` at the given locations and sum the samples with the given weights.

    Args:
        value: ``(B, S, M, D)``: ``M`` heads of ``D`` channels for ``S = sum_l H_l * W_l``
            flattened positions, levels concatenated in the order of ``spatial_shapes``, each
            level row-major (``index = y * W_l + x``).
        spatial_shapes: ``(H_l, W_l)`` per level: ``(L, 2)`` integer tensor or pairs of ints.
        sampling_locations: ``(B, Q, M, L, P, 2)`` normalised ``(x, y)``; ``(0, 0)`` is the
            top-left corner of the map, ``(1, 1)`` the bottom-right corner. Values outside
            ``[0, 1]`` are allowed and read zero padding.
        attention_weights: ``(B, Q, M, L, P)``.

    Returns:
        ``(B, Q, M * D)``:
        ``out[b, q, m*D:(m+1)*D] = sum_{l, p} w[b, q, m, l, p] * bilinear(value_l[b, :, m, :],
        loc[b, q, m, l, p])`` with ``bilinear`` sampling at pixel coordinates
        ``(x * W_l - 0.5, y * H_l - 0.5)`` from pixel centres, zero outside.
    """
    # a named range, so that torch.profiler can report this function's share of a step
    with torch.profiler.record_function("multi_scale_deformable_attention"):
        return _sample_and_weight(value, spatial_shapes, sampling_locations, attention_weights)


def _sample_and_weight(value: Tensor, spatial_shapes, sampling_locations: Tensor,
                       attention_weights: Tensor) -> Tensor:
    shapes = level_shapes(spatial_shapes)
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    # bilinear sampling in the wider of the two dtypes (float32 under autocast, as grid_sample's
    # own autocast rule on CUDA does)
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    value, sampling_locations = value.to(dtype), sampling_locations.to(dtype)
    attention_weights = attention_weights.to(dtype)
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample's grid is in [-1, 1]; align_corners=False puts pixel centres at half-integers.
    grids = 2.0 * sampling_locations - 1.0
    samples = []
    for level, (h, w) in enumerate(shapes):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        v = value_levels[level].flatten(2).transpose(1, 2).reshape(batch * heads, channels, h, w)
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B*M, D, Q, P)
    # one weighted sum over the L * P samples of every head: (B*M, D, Q, L*P) . (B*M, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # (B*M, D, Q)
    return out.view(batch, heads * channels, queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with its projections.

    Args:
        embed_dim: ``C``, the query and value width; must be divisible by ``num_heads``.
        num_levels: ``L`` feature levels.
        num_heads: ``M`` heads of ``C / M`` channels.
        num_points: ``P`` sampling points per head and level.

    Initialisation (Deformable DETR's): the offset layer has zero weights and a bias that puts
    head ``m``'s point ``k`` at ``(k + 1)`` pixels along direction ``2 pi m / M`` (scaled so the
    largest coordinate is ``k + 1``); attention weights start uniform (zero weight and bias);
    value and output projections are Xavier-uniform with zero bias.
    """

    def __init__(self, *, embed_dim: int = 256, num_levels: int = 4, num_heads: int = 8,
                 num_points: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"MSDeformAttn: embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                "choose num_heads that divides embed_dim."
            )
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)  # (M, 2)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Tensor | Sequence[Sequence[int]],
                padding_mask: Tensor | None = None) -> Tensor:
        """Attend from ``query`` to the multi-scale ``value``.

        Args:
            query: ``(B, Q, C)`` (content plus positional embedding).
            reference_points: ``(B, Q, L, 2)`` normalised ``(x, y)`` per level, or
                ``(B, Q, L, 4)`` normalised ``(cx, cy, w, h)`` boxes; with boxes the offsets
                are scaled by half the box size divided by ``P``
                (``loc = c + dp / P * wh / 2``), with points by the level size
                (``loc = r + dp / (W_l, H_l)``).
            value: ``(B, S, C)`` flattened levels, ``S = sum_l H_l * W_l``.
            spatial_shapes: ``(H_l, W_l)`` per level (pairs of ints, or an ``(L, 2)`` tensor).
            padding_mask: ``(B, S)`` bool, True at padded positions (their values become 0).

        Returns:
            ``(B, Q, C)``.
        """
        shapes = level_shapes(spatial_shapes)
        batch, queries, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(batch, v.shape[1], m, self.embed_dim // m)
        offsets = self.sampling_offsets(query).view(batch, queries, m, lv, p, 2)
        weights = self.attention_weights(query).view(batch, queries, m, lv * p)
        weights = weights.softmax(-1).view(batch, queries, m, lv, p)
        # locations in float32 (or wider) whatever autocast made of the offsets
        wide = torch.promote_types(offsets.dtype, torch.float32)
        offsets, reference_points = offsets.to(wide), reference_points.to(wide)
        if reference_points.shape[-1] == 2:
            normaliser = small_tensor([[w, h] for h, w in shapes], offsets.device, wide)  # (L, 2)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normaliser[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(
                "MSDeformAttn: reference_points must end in 2 (points) or 4 (boxes), "
                f"got shape {tuple(reference_points.shape)}."
            )
        out = multi_scale_deformable_attention(v, shapes, locations, weights)
        return self.output_proj(out)
