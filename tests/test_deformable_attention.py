"""Multi-scale deformable attention against a naive bilinear reference."""

import math

import pytest
import torch

from oralx_lib.models.deformable_attention import MSDeformAttn, multi_scale_deformable_attention


def naive_bilinear(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``feature`` (H, W, D) sampled at normalised (x, y); pixel centres at half-integers, zeros
    outside the map."""
    h, w, d = feature.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(d, dtype=feature.dtype)
    for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * feature[yy, xx]
    return out


def naive_attention(value, shapes, locations, weights):
    b_, _, m_, d_ = value.shape
    _, q_, _, l_, p_, _ = locations.shape
    starts = [0]
    for h, w in shapes.tolist():
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b_, q_, m_ * d_, dtype=value.dtype)
    for b in range(b_):
        for q in range(q_):
            for m in range(m_):
                acc = torch.zeros(d_, dtype=value.dtype)
                for lv, (h, w) in enumerate(shapes.tolist()):
                    fmap = value[b, starts[lv]:starts[lv + 1], m].reshape(h, w, d_)
                    for p in range(p_):
                        x, y = locations[b, q, m, lv, p].tolist()
                        acc = acc + weights[b, q, m, lv, p] * naive_bilinear(fmap, x, y)
                out[b, q, m * d_:(m + 1) * d_] = acc
    return out


def test_hand_computed_single_level():
    # A 2x2 map with one channel: values 1, 2 / 3, 4.
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    locs = torch.tensor([[0.25, 0.25], [0.5, 0.5], [0.75, 0.25], [1.0, 0.5], [-0.5, 0.5]])
    locations = locs.view(1, 5, 1, 1, 1, 2)
    weights = torch.ones(1, 5, 1, 1, 1)
    out = multi_scale_deformable_attention(value, shapes, locations, weights).flatten()
    # centre of pixel (0,0) -> 1; middle -> mean 2.5; centre of (0,1) -> 2;
    # right edge x=1.0 at mid height: half of mean(2, 4) -> 1.5; far outside -> 0.
    torch.testing.assert_close(out, torch.tensor([1.0, 2.5, 2.0, 1.5, 0.0]))


def test_matches_naive_reference_with_points_outside():
    g = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[5, 7], [3, 4], [1, 2]])
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    b, q, m, d, p = 2, 3, 2, 3, 2
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    locations = torch.rand(b, q, m, 3, p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(b, q, m, 3, p, generator=g, dtype=torch.float64)
    assert ((locations < 0) | (locations > 1)).any()
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(out, naive_attention(value, shapes, locations, weights))


def test_gradcheck_tiny():
    g = torch.Generator().manual_seed(2)
    shapes = torch.tensor([[3, 2], [2, 1]])
    value = torch.randn(1, 8, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    # keep samples away from pixel-centre lines, where bilinear is not differentiable
    locations = (torch.rand(1, 2, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1)
    locations = locations.requires_grad_()
    weights = torch.rand(1, 2, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, lo, w: multi_scale_deformable_attention(v, shapes, lo, w),
        (value, locations, weights), eps=1e-6, atol=1e-5,
    )


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_shapes_padding_and_init(ref_dim):
    attn = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=3)
    # initial offsets: head 0 points along +x at 1, 2, 3 pixels
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    shapes = torch.tensor([[4, 4], [2, 2]])
    value = torch.randn(2, 20, 16)
    query = torch.randn(2, 5, 16)
    ref = torch.rand(2, 5, 2, ref_dim) * 0.5 + 0.25
    out = attn(query, ref, value, shapes)
    assert out.shape == (2, 5, 16)
    # positions marked as padding are invisible: changing them changes nothing
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, 12:16] = True
    value2 = value.clone()
    value2[:, 12:16] = 100.0
    torch.testing.assert_close(attn(query, ref, value, shapes, mask),
                               attn(query, ref, value2, shapes, mask))


def test_module_rejects_bad_reference_points():
    attn = MSDeformAttn(embed_dim=8, num_levels=1, num_heads=2, num_points=1)
    with pytest.raises(ValueError, match="reference_points"):
        attn(torch.randn(1, 2, 8), torch.rand(1, 2, 1, 3), torch.randn(1, 4, 8),
             torch.tensor([[2, 2]]))
