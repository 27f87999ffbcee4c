"""MOQAM's transformer: positional encodings, deformable encoder, two-stage proposals, decoder.

Shapes: ``B`` images, ``C`` channels (``embed_dim``), ``L`` levels with sizes ``(H_l, W_l)``
flattened into ``S = sum_l H_l W_l`` tokens, ``Q`` queries. Boxes are ``(cx, cy, w, h)``
normalised by the unpadded image size. Padding is described by a bool mask (True = padded) and by
the per-level *valid ratios* ``(W_valid / W_l, H_valid / H_l)``: a normalised point ``r`` of the
unpadded image is the point ``r * valid_ratio`` of the padded map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .deformable_attention import MSDeformAttn, level_shapes
from .moqam_losses import inverse_sigmoid

__all__ = [
    "MLP",
    "sine_positional_encoding",
    "box_sine_embedding",
    "valid_ratios",
    "encoder_reference_points",
    "encoder_proposals",
    "DeformableEncoder",
    "DeformableDecoder",
]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: ``in -> hidden ... -> out``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _frequencies(num_feats: int, temperature: float, device, dtype) -> Tensor:
    """``T^(2 floor(i/2) / num_feats)`` for ``i = 0..num_feats-1``."""
    i = torch.arange(num_feats, device=device, dtype=dtype)
    return temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(x: Tensor) -> Tensor:
    """``(..., F)`` angles -> ``(..., F)`` as ``sin`` of even and ``cos`` of odd entries."""
    return torch.stack([x[..., 0::2].sin(), x[..., 1::2].cos()], dim=-1).flatten(-2)


def sine_positional_encoding(mask: Tensor, num_feats: int, temperature: float = 10000.0,
                             offset: float = -0.5, scale: float = 2 * math.pi) -> Tensor:
    """The 2-D sine encoding of DETR, normalised to the unpadded region.

    ``y = (cumsum_rows(valid) + offset) / (H_valid + eps) * scale`` (likewise ``x``);
    channel ``i`` of each half is ``sin``/``cos`` of ``y / T^(2 floor(i/2) / F)``.

    Args:
        mask: ``(B, H, W)`` bool, True at padding.
        num_feats: ``F``, channels per axis (``C / 2``).

    Returns:
        ``(B, 2F, H, W)``, the ``y`` half first.
    """
    valid = (~mask).to(torch.float32)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    eps = 1e-6
    y = (y + offset) / (y[:, -1:, :] + eps) * scale
    x = (x + offset) / (x[:, :, -1:] + eps) * scale
    freq = _frequencies(num_feats, temperature, mask.device, torch.float32)
    pos_x = _interleave_sin_cos(x[..., None] / freq)
    pos_y = _interleave_sin_cos(y[..., None] / freq)
    return torch.cat([pos_y, pos_x], dim=-1).permute(0, 3, 1, 2)


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0,
                       scale: float = 2 * math.pi) -> Tensor:
    """Sine embedding of normalised boxes: each of ``(cx, cy, w, h)`` encoded like one axis of
    :func:`sine_positional_encoding` (``sin``/``cos`` of ``scale * v / T^(2 floor(i/2)/F)``).

    Args:
        boxes: ``(..., 4)`` (or ``(..., 2)`` points) in ``[0, 1]``.
        num_feats: ``F`` channels per coordinate.

    Returns:
        ``(..., 4F)`` (``(..., 2F)`` for points) in the coordinate order ``y, x, w, h``.
    """
    freq = _frequencies(num_feats, temperature, boxes.device, torch.float32)
    angles = boxes.float()[..., None] * scale / freq  # (..., K, F)
    emb = _interleave_sin_cos(angles)
    order = [1, 0] + list(range(2, boxes.shape[-1]))
    return emb[..., order, :].flatten(-2).to(boxes.dtype)


def valid_ratios(mask: Tensor) -> Tensor:
    """``(B, H, W)`` padding mask -> ``(B, 2)`` ``(W_valid / W, H_valid / H)``."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).to(torch.float32)
    valid_w = (~mask[:, 0, :]).sum(1).to(torch.float32)
    return torch.stack([valid_w / w, valid_h / h], dim=-1)


def encoder_reference_points(spatial_shapes: Tensor, ratios: Tensor) -> Tensor:
    """Each token's pixel centre, as a normalised point of the unpadded image, mapped onto
    every level.

    Args:
        spatial_shapes: ``(L, 2)`` ``(H_l, W_l)``.
        ratios: ``(B, L, 2)`` valid ratios.

    Returns:
        ``(B, S, L, 2)``: token ``(i, j)`` of level ``l`` has the unpadded-image point
        ``((j + 0.5) / (W_l r^x_l), (i + 0.5) / (H_l r^y_l))``, multiplied by every level's
        ratio.
    """
    points = []
    for level, (h, w) in enumerate(level_shapes(spatial_shapes)):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, device=ratios.device, dtype=torch.float32),
            torch.linspace(0.5, w - 0.5, w, device=ratios.device, dtype=torch.float32),
            indexing="ij",
        )
        ys = ys.reshape(1, -1) / (ratios[:, None, level, 1] * h)
        xs = xs.reshape(1, -1) / (ratios[:, None, level, 0] * w)
        points.append(torch.stack([xs, ys], dim=-1))
    ref = torch.cat(points, dim=1)  # (B, S, 2)
    return ref[:, :, None] * ratios[:, None]


def encoder_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: Tensor,
                      base_size: float = 0.05) -> tuple[Tensor, Tensor, Tensor]:
    """One anchor box per encoder token, for two-stage query selection.

    Token ``(i, j)`` of level ``l`` proposes the box centred on its pixel, normalised by the
    level's unpadded size, of width and height ``base_size * 2^l``. Boxes with any coordinate
    outside ``(0.01, 0.99)``, and padded tokens, are invalid.

    Args:
        memory: ``(B, S, C)`` encoder output; padding_mask: ``(B, S)``.
        spatial_shapes: ``(L, 2)``.

    Returns:
        ``memory`` with invalid tokens zeroed ``(B, S, C)``; proposals in logit space
        ``(B, S, 4)`` float32 (``inverse_sigmoid`` of cxcywh; invalid rows are 0 and flagged);
        ``valid`` ``(B, S)`` bool.
    """
    batch = memory.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(level_shapes(spatial_shapes)):
        mask_l = padding_mask[:, start:start + h * w].view(batch, h, w)
        valid_h = (~mask_l[:, :, 0]).sum(1).to(torch.float32)
        valid_w = (~mask_l[:, 0, :]).sum(1).to(torch.float32)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=memory.device, dtype=torch.float32),
            torch.arange(w, device=memory.device, dtype=torch.float32),
            indexing="ij",
        )
        centre = torch.stack([xs, ys], dim=-1)[None] + 0.5  # (1, H, W, 2)
        scale = torch.stack([valid_w, valid_h], dim=-1).view(batch, 1, 1, 2)
        centre = centre / scale
        wh = torch.full_like(centre, base_size * (2.0 ** level))
        proposals.append(torch.cat([centre, wh], dim=-1).view(batch, -1, 4))
        start += h * w
    boxes = torch.cat(proposals, dim=1)
    valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & ~padding_mask
    logits = inverse_sigmoid(boxes).masked_fill(~valid[..., None], 0.0)
    memory = memory.masked_fill(~valid[..., None], 0.0)
    return memory, logits, valid


class _FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(embed_dim=dim, num_levels=levels, num_heads=heads,
                                      num_points=points)
        self.norm = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        out = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + out))


class DeformableEncoder(nn.Module):
    """``num_layers`` post-norm layers of deformable self-attention plus FFN (no dropout).

    ``x <- LN(x + MSDeformAttn(x + pos, ref, x)); x <- LN(x + W_2 relu(W_1 x))``, with ``ref``
    every token's own centre (:func:`encoder_reference_points`).
    """

    def __init__(self, *, num_layers: int, embed_dim: int, num_heads: int, num_levels: int,
                 num_points: int, ffn_dim: int, checkpoint: bool | int = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _EncoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim)
            for _ in range(num_layers)
        )
        self.checkpoint = checkpoint

    @property
    def checkpointed_layers(self) -> int:
        """How many layers (the first ones) are recomputed in backward: ``checkpoint`` as a
        count, ``True`` = all, ``False`` = none (the release recomputes 4 of 6)."""
        if self.checkpoint is True:
            return len(self.layers)
        return min(int(self.checkpoint or 0), len(self.layers))

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, ratios: Tensor,
                padding_mask: Tensor) -> Tensor:
        """``src``, ``pos``: ``(B, S, C)``; ``ratios``: ``(B, L, 2)``; ``padding_mask``:
        ``(B, S)``. Returns the memory ``(B, S, C)``.

        With ``checkpoint`` (``True`` or a number of layers) those layers are recomputed during
        backward instead of keeping their activations (``torch.utils.checkpoint``): the sampled
        values of the stride-4 level dominate training memory, and this trades about one extra
        forward of those layers for them.
        """
        spatial_shapes = level_shapes(spatial_shapes)
        reference_points = encoder_reference_points(spatial_shapes, ratios)  # float32
        recompute = self.checkpointed_layers if self.training and torch.is_grad_enabled() else 0
        for i, layer in enumerate(self.layers):
            if i < recompute:
                src = torch.utils.checkpoint.checkpoint(
                    layer, src, pos, reference_points, spatial_shapes, padding_mask,
                    use_reentrant=False,
                )
            else:
                src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src


class _DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(embed_dim=dim, num_levels=levels, num_heads=heads,
                                       num_points=points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, memory_mask,
                attn_mask):
        q = k = tgt + query_pos
        out = self.self_attn(q, k, tgt, attn_mask=attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + out)
        out = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                              memory_mask)
        tgt = self.norm2(tgt + out)
        return self.ffn(tgt)


class DeformableDecoder(nn.Module):
    """Decoder with iterative box refinement and "look forward twice", as released (DINO).

    Layer ``i`` takes content ``h_{i-1}`` and a detached reference box ``r_{i-1}`` (``r_{-1}``:
    the initial boxes) and computes

    - ``pos = MLP(box_sine_embedding(r_{i-1} * valid_ratio))`` (the positional query; the
      reference scaled to the padded map, as the sampling locations are),
    - ``h_i = FFN(cross_attn(self_attn(h_{i-1}, pos, mask), r_{i-1}))`` (un-normalised),
    - the next reference from the un-normalised output:
      ``n_i = sigmoid(Delta_i(h_i) + sigmoid^{-1}(r_{i-1}))``, ``r_i = stopgrad(n_i)``,
    - the layer's prediction from the normalised output:
      ``b_i = sigmoid(Delta_i(LN(h_i)) + sigmoid^{-1}(n_{i-1}))`` with ``n_{-1} = r_{-1}``.

    ``b_i`` keeps the gradient through ``n_{i-1}`` (look forward twice: layer ``i``'s loss also
    trains layer ``i-1``'s box head and layer), and stops there: ``n_{i-1}`` is built on the
    detached ``r_{i-2}``. With ``look_forward_twice=False`` ``n_{i-1}`` is detached too (Deformable
    DETR's "look forward once"). ``sigmoid^{-1}`` clamps at ``eps = 1e-3``, the release's value.

    Args:
        num_layers, embed_dim, num_heads, num_levels, num_points, ffn_dim: sizes.
        look_forward_twice: keep the gradient through the previous layer's box (True).
    """

    def __init__(self, *, num_layers: int, embed_dim: int, num_heads: int, num_levels: int,
                 num_points: int, ffn_dim: int, look_forward_twice: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.look_forward_twice = look_forward_twice
        self.layers = nn.ModuleList(
            _DecoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim)
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim)
        self.box_heads = nn.ModuleList(MLP(embed_dim, embed_dim, 4, 3) for _ in range(num_layers))
        for head in self.box_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, tgt: Tensor, reference: Tensor, memory: Tensor, spatial_shapes,
                ratios: Tensor, memory_mask: Tensor, attn_mask: Tensor | None = None
                ) -> tuple[list[Tensor], list[Tensor]]:
        """Run all layers.

        Args:
            tgt: ``(B, Q, C)`` content queries.
            reference: ``(B, Q, 4)`` initial boxes ``r_{-1}`` (normalised cxcywh, detached).
            memory: ``(B, S, C)``; memory_mask: ``(B, S)``; ratios: ``(B, L, 2)``.
            spatial_shapes: ``(H_l, W_l)`` per level (pairs of ints, or an ``(L, 2)`` tensor).
            attn_mask: ``(Q, Q)`` bool, True where query ``i`` may *not* attend to ``j``.

        Returns:
            ``(hidden, boxes)``: per layer ``LN(h_i)`` ``(B, Q, C)`` and ``b_i`` ``(B, Q, 4)``
            (float32).
        """
        hidden, boxes = [], []
        spatial_shapes = level_shapes(spatial_shapes)
        ratios4 = torch.cat([ratios, ratios], dim=-1)[:, None].float()  # (B, 1, L, 4)
        reference = reference.detach().float()
        previous = reference  # n_{i-1}: the box b_i refines (with gradient after layer 0)
        last = len(self.layers) - 1
        for i, (layer, box_head) in enumerate(zip(self.layers, self.box_heads)):
            ref_input = reference[:, :, None] * ratios4  # (B, Q, L, 4) on the padded maps
            query_pos = self.ref_point_head(box_sine_embedding(ref_input[:, :, 0],
                                                               self.embed_dim // 2))
            tgt = layer(tgt, query_pos, ref_input, memory, spatial_shapes, memory_mask,
                        attn_mask)
            out = self.norm(tgt)
            anchor = previous if self.look_forward_twice else previous.detach()
            boxes.append((box_head(out).float() + inverse_sigmoid(anchor)).sigmoid())
            hidden.append(out)
            if i < last:
                previous = (box_head(tgt).float() + inverse_sigmoid(reference)).sigmoid()
                reference = previous.detach()
        return hidden, boxes
