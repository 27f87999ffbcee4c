"""The self-checks of the chapter "Query-aware mining: the complete MOQAM": right answers pass
with one printed line, typical wrong answers are rejected with the hint that explains them."""

import math

import pytest
import torch

from oralx_lib.book import selfcheck
from oralx_lib.book.selfcheck import moqam

# ------------------------------------------------------------------ right answers (formulas)


def _xyxy(b):
    cx, cy, w, h = b
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _giou(a, b):
    ax1, ay1, ax2, ay2 = _xyxy(a)
    bx1, by1, bx2, by2 = _xyxy(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def hungarian_cost(logits, boxes, gt_labels, gt_boxes, alpha=0.25, gamma=2.0):
    """Loops over (query, GT): focal class cost, L1 on cxcywh, minus GIoU; weights 2, 5, 2."""
    out = torch.zeros(len(boxes), len(gt_boxes))
    for q in range(len(boxes)):
        for g in range(len(gt_boxes)):
            p = 1 / (1 + math.exp(-float(logits[q, gt_labels[g]])))
            focal = (alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
                     - (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8))
            l1 = sum(abs(float(x) - float(y)) for x, y in zip(boxes[q], gt_boxes[g]))
            giou = _giou(boxes[q].tolist(), gt_boxes[g].tolist())
            out[q, g] = 2 * focal + 5 * l1 - 2 * giou
    return out


def denoising_mask(num_groups, group_size, num_queries):
    """Loops: query i (row) may see key j (column) when both are matching queries, when both
    are in the same denoising group, or when i is a denoising query and j a matching one."""
    dn = num_groups * group_size
    total = dn + num_queries
    blocked = torch.zeros(total, total, dtype=torch.bool)
    for i in range(total):
        for j in range(total):
            if i >= dn:  # a matching query sees matching queries only
                blocked[i, j] = j < dn
            elif j < dn:  # a denoising query sees its own group
                blocked[i, j] = i // group_size != j // group_size
    return blocked


def sine_embedding(boxes, num_feats):
    """Per coordinate (order y, x, w, h): sin/cos pairs of 2 pi v / 10000^(2k / F)."""
    out = []
    for box in boxes.reshape(-1, 4).tolist():
        cx, cy, w, h = box
        row = []
        for v in (cy, cx, w, h):
            for k in range(num_feats // 2):
                angle = 2 * math.pi * v / 10000 ** (2 * k / num_feats)
                row += [math.sin(angle), math.cos(angle)]
        out.append(row)
    return torch.tensor(out).reshape(*boxes.shape[:-1], 4 * num_feats)


def _bilinear(level, x, y):
    """level (H, W, D); (x, y) in pixel units with centres at integers; zeros outside."""
    height, width, _ = level.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(level.shape[-1], dtype=level.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                out = out + wy * wx * level[yy, xx]
    return out


def deformable_attention(value, spatial_shapes, locations, weights):
    """Loops over images, queries, heads, levels and points."""
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads * channels, dtype=value.dtype)
    starts = [0]
    for h, w in spatial_shapes.tolist():
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = torch.zeros(channels, dtype=value.dtype)
                for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
                    level = value[b, starts[lvl]:starts[lvl + 1], m].reshape(h, w, channels)
                    for p in range(points):
                        x, y = locations[b, q, m, lvl, p].tolist()
                        acc = acc + weights[b, q, m, lvl, p] * _bilinear(level, x * w - 0.5,
                                                                         y * h - 0.5)
                out[b, q, m * channels:(m + 1) * channels] = acc
    return out


def test_hand_computed_values():
    # A prediction equal to its GT: L1 = 0, GIoU = 1; logit 0 gives p = 1/2 and the focal
    # difference 0.25 * 0.25 * log 2 - 0.75 * 0.25 * log 2 = -0.125 log 2.
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    cost = hungarian_cost(torch.zeros(1, 3), box, torch.tensor([1]), box)
    assert float(cost) == pytest.approx(2 * (-0.125 * math.log(2)) - 2, abs=1e-6)
    # One group of 2 and 1 matching query: the matching row blocks both denoising columns.
    assert denoising_mask(1, 2, 1).tolist() == [[False, False, False], [False, False, False],
                                                [True, True, False]]
    # A zero box: sin 0 = 0, cos 0 = 1 on every pair.
    assert sine_embedding(torch.zeros(1, 4), 2).tolist() == [[0.0, 1.0] * 4]
    # The corner (0, 0) of a map reads a quarter of its first pixel.
    value = torch.arange(1.0, 7.0).view(1, 6, 1, 1)
    out = deformable_attention(value, torch.tensor([[2, 3]]), torch.zeros(1, 1, 1, 1, 1, 2),
                               torch.ones(1, 1, 1, 1, 1))
    assert float(out) == pytest.approx(0.25)


def test_right_answers_pass(capsys):
    selfcheck.check_hungarian_cost(hungarian_cost)
    selfcheck.check_denoising_mask(denoising_mask)
    selfcheck.check_sine_embedding(sine_embedding)
    selfcheck.check_deformable_attention(deformable_attention)
    lines = capsys.readouterr().out.strip().splitlines()
    names = ["hungarian_cost", "denoising_mask", "sine_embedding", "deformable_attention"]
    assert [line.split()[:2] for line in lines] == [["correct:", n] for n in names]


def test_found_through_the_package():
    for name in ("check_hungarian_cost", "check_denoising_mask", "check_sine_embedding",
                 "check_deformable_attention"):
        assert getattr(selfcheck, name) is getattr(moqam, name)
        assert name in dir(selfcheck)


# ------------------------------------------------------------------ wrong answers


def _cost_with(**changes):
    def cost(logits, boxes, gt_labels, gt_boxes):
        p = logits.sigmoid()[:, gt_labels]
        focal = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p ** 2 * -(1 - p + 1e-8).log()
        cls = changes.get("cls", lambda p, f: f)(p, focal)
        from torchvision.ops import box_convert, generalized_box_iou
        a, b = box_convert(boxes, "cxcywh", "xyxy"), box_convert(gt_boxes, "cxcywh", "xyxy")
        l1 = torch.cdist(a, b, p=1) if changes.get("l1_xyxy") else torch.cdist(boxes, gt_boxes, p=1)
        sign = changes.get("giou_sign", -1)
        return 2 * cls + 5 * l1 + sign * 2 * generalized_box_iou(a, b)
    return cost


@pytest.mark.parametrize("fn, hint", [
    (_cost_with(cls=lambda p, f: -p), "not DETR's -p"),
    (_cost_with(l1_xyxy=True), "not the corners"),
    (_cost_with(giou_sign=1), "subtracts"),
    (lambda *a: _cost_with()(*a) / torch.tensor([[2.0]]), "expected"),
])
def test_wrong_costs_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        moqam.check_hungarian_cost(fn)


@pytest.mark.parametrize("fn, hint", [
    (lambda g, s, q: ~denoising_mask(g, s, q), "True means"),
    (lambda g, s, q: denoising_mask(g, s, q).T, "rows are the queries"),
    (lambda g, s, q: torch.zeros(g * s + q, g * s + q, dtype=torch.bool), "leak the answer"),
    (lambda g, s, q: denoising_mask(g, s, q).int(), "bool"),
])
def test_wrong_masks_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        moqam.check_denoising_mask(fn)


def test_mask_that_hides_matching_from_denoising_is_rejected():
    def closed(g, s, q):
        m = denoising_mask(g, s, q)
        m[:g * s, g * s:] = True
        return m
    with pytest.raises(AssertionError, match="other direction"):
        moqam.check_denoising_mask(closed)


@pytest.mark.parametrize("fn, hint", [
    (lambda b, f: sine_embedding(b[..., [1, 0, 2, 3]], f), "y first"),
    (lambda b, f: sine_embedding(b / (2 * math.pi), f), "2 pi"),
    (lambda b, f: -sine_embedding(b, f), "expected"),
])
def test_wrong_embeddings_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        moqam.check_sine_embedding(fn)


def test_embedding_with_cos_first_is_rejected():
    def cos_first(b, f):
        e = sine_embedding(b, f)
        return e.view(*e.shape[:-1], -1, 2).flip(-1).flatten(-2)
    # swapping each (sin, cos) pair is "cos on even channels"
    with pytest.raises(AssertionError, match="sin on even"):
        moqam.check_sine_embedding(cos_first)


@pytest.mark.parametrize("fn, hint", [
    (lambda v, s, loc, w: deformable_attention(v, s, loc.flip(-1), w), r"\(x, y\)"),
    (lambda v, s, loc, w: deformable_attention(
        v, s, loc + 0.5 / s.flip(-1)[None, None, None, :, None, :], w), "half a pixel"),
    (lambda v, s, loc, w: 2 * deformable_attention(v, s, loc, w), "expected"),
])
def test_wrong_deformable_attention_rejected(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        moqam.check_deformable_attention(fn)


def test_align_corners_mistake_gets_its_hint():
    def corners(value, shapes, loc, w):
        # x (W - 1) instead of x W - 0.5: shift the location so the loop samples there
        size = shapes.flip(-1)[None, None, None, :, None, :].to(loc.dtype)
        return deformable_attention(value, shapes, (loc * (size - 1) + 0.5) / size, w)
    with pytest.raises(AssertionError, match="align_corners"):
        moqam.check_deformable_attention(corners)
