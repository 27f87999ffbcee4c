"""Anchor assigners: hand-computed cases, a naive loop reference, torchvision's Matcher."""

import math

import pytest
import torch
from torchvision.models.detection._utils import Matcher

from oralx_lib.models import DynamicIoUAssigner, FixedIoUAssigner, safe_box_iou
from oralx_lib.errors import ConfigError


def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


# ----------------------------------------------------------------------------- thresholds
def test_thresholds_hand_computed():
    a = DynamicIoUAssigner()
    gt = torch.tensor(
        [
            box(0, 0, 12, 12),  # s = 12: base 0.55
            box(0, 0, 24, 24),  # s = 24: 0.55 + 0.15 = 0.70
            box(0, 0, 6, 6),  # s = 6: 0.40 -> clamped to 0.5
            box(0, 0, 48, 48),  # s = 48: 0.85 -> clamped to 0.7
            box(5, 5, 5, 9),  # zero area -> low
            box(0, 0, 12, 24),  # s = sqrt(288) = 12 * 2**0.5: 0.55 + 0.075
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor([0.55, 0.70, 0.5, 0.7, 0.5, 0.625], dtype=torch.float64)
    torch.testing.assert_close(a.thresholds(gt), expected)
    torch.testing.assert_close(a.effective_thresholds(gt), expected.clamp(max=0.55))
    uncapped = DynamicIoUAssigner(cap_at_base=False)
    torch.testing.assert_close(uncapped.effective_thresholds(gt), expected)
    # scale_ratio: a 24-px box in a 2x-upscaled input is a 12-px object.
    halved = DynamicIoUAssigner(scale_ratio=2.0)
    torch.testing.assert_close(halved.thresholds(gt[1:2]), torch.tensor([0.55], dtype=torch.float64))


def test_thresholds_are_finite_for_degenerate_boxes_even_with_zero_slope():
    gt = torch.tensor([box(3, 3, 3, 3), box(4, 4, 2, 9)])
    for slope in (0.15, 0.0):
        thr = DynamicIoUAssigner(slope=slope).thresholds(gt)
        assert torch.isfinite(thr).all()
    torch.testing.assert_close(DynamicIoUAssigner().thresholds(gt), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(DynamicIoUAssigner(slope=0.0).thresholds(gt), torch.tensor([0.55, 0.55]))


# ----------------------------------------------------------------------------- hand cases
SMALL_GT = box(0, 0, 6, 6)  # thr 0.5 in both modes
LARGE_GT = box(0, 0, 48, 48)  # thr 0.7, capped 0.55


def test_rules_from_iou_matrix_both_modes():
    iou = torch.tensor(
        [
            [0.52, 0.10, 0.20, 0.45, 0.00, 0.29],
            [0.10, 0.60, 0.25, 0.00, 0.75, 0.31],
        ]
    )
    gt = torch.tensor([SMALL_GT, LARGE_GT])
    # a0: small GT at 0.52 >= 0.5; a1: 0.6 passes 0.55 (capped) but not 0.7; a2: < 0.3;
    # a3: 0.45 < 0.5 ignored; a4: 0.75 positive; a5: 0.31 ignored.
    assert DynamicIoUAssigner()(iou, gt).tolist() == [0, 1, -1, -2, 1, -2]
    assert DynamicIoUAssigner(cap_at_base=False)(iou, gt).tolist() == [0, -2, -1, -2, 1, -2]


def test_low_quality_ties_between_anchors_and_between_gts():
    iou = torch.tensor(
        [
            [0.40, 0.40, 0.10, 0.00],  # GT0: best 0.40 at anchors 0 and 1
            [0.00, 0.40, 0.35, 0.00],  # GT1: best 0.40 at anchor 1 (tie with GT0: GT1, the later, wins)
            [0.00, 0.00, 0.00, 0.25],  # GT2: best 0.25 < min_pos_iou: no forced match
        ]
    )
    gt = torch.tensor([SMALL_GT, LARGE_GT, LARGE_GT])
    for cap in (True, False):
        assert DynamicIoUAssigner(cap_at_base=cap)(iou, gt).tolist() == [0, 1, -2, -1]
    # torchvision's rule: tied anchors go to their own best GT (the first), with no minimum IoU.
    assert FixedIoUAssigner()(iou).tolist() == [0, 0, -2, 2]
    assert FixedIoUAssigner(allow_low_quality_matches=False)(iou).tolist() == [-2, -2, -2, -1]


def test_assign_from_boxes_hand_computed():
    gt = torch.tensor([box(0, 0, 8, 8), box(100, 100, 200, 200)])  # s = 8 (thr 0.5), s = 100 (0.7 / 0.55)
    anchors = torch.tensor(
        [
            box(0, 0, 8, 9),  # IoU 64/72 = 0.889 with GT0
            box(0, 0, 8, 14),  # IoU 64/112 = 0.571 with GT0
            box(100, 100, 200, 260),  # IoU 1e4/1.6e4 = 0.625 with GT1
            box(100, 100, 200, 210),  # IoU 1e4/1.1e4 = 0.909 with GT1
            box(300, 300, 310, 310),  # IoU 0
            box(100, 100, 200, 400),  # IoU 1/3 with GT1
        ]
    )
    iou = safe_box_iou(gt, anchors)
    torch.testing.assert_close(iou[0, :2], torch.tensor([64 / 72, 64 / 112]))
    torch.testing.assert_close(iou[1, 2:], torch.tensor([0.625, 10 / 11, 0.0, 1 / 3]))
    assert DynamicIoUAssigner().assign(anchors, gt).tolist() == [0, 0, 1, 1, -1, -2]
    assert DynamicIoUAssigner(cap_at_base=False).assign(anchors, gt).tolist() == [0, 0, -2, 1, -1, -2]
    assert FixedIoUAssigner().assign(anchors, gt).tolist() == [0, -2, -2, 1, -1, -2]


def test_empty_gt_and_empty_anchors():
    anchors = torch.tensor([box(0, 0, 10, 10), box(5, 5, 20, 20)])
    no_gt = torch.zeros((0, 4))
    for assigner in (DynamicIoUAssigner(), DynamicIoUAssigner(cap_at_base=False), FixedIoUAssigner()):
        out = assigner.assign(anchors, no_gt)
        assert out.dtype == torch.int64 and out.tolist() == [-1, -1]
        assert assigner.assign(torch.zeros((0, 4)), torch.tensor([box(0, 0, 4, 4)])).shape == (0,)


def test_degenerate_boxes_give_no_nan_and_no_positive():
    gt = torch.tensor([box(5, 5, 5, 5), box(0, 0, 10, 10)])
    anchors = torch.tensor([box(5, 5, 5, 5), box(3, 3, 3, 3), box(0, 0, 10, 10), box(0, 0, 10, 12)])
    iou = safe_box_iou(gt, anchors)
    assert torch.isfinite(iou).all()
    assert iou[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    for assigner in (DynamicIoUAssigner(), DynamicIoUAssigner(cap_at_base=False)):
        # The zero-area GT never reaches min_pos_iou; the 10x10 GT takes its exact match and the 10x12.
        assert assigner.assign(anchors, gt).tolist() == [-1, -1, 1, 1]


def test_dynamic_needs_gt_boxes_and_validates_settings():
    with pytest.raises(ValueError, match="gt_boxes"):
        DynamicIoUAssigner()(torch.rand(2, 5))
    with pytest.raises(ValueError, match="gt_boxes must be"):
        DynamicIoUAssigner()(torch.rand(2, 5), torch.rand(3, 4))
    with pytest.raises(ConfigError, match="neg_iou_thr"):
        DynamicIoUAssigner(neg_iou_thr=0.6)
    with pytest.raises(ConfigError, match="base_size"):
        DynamicIoUAssigner(base_size=0.0)
    with pytest.raises(ConfigError, match="pos_iou_thr"):
        FixedIoUAssigner(pos_iou_thr=0.2, neg_iou_thr=0.3)


# ----------------------------------------------------------------------------- naive reference
def naive_dynamic(iou, gt_boxes, a: DynamicIoUAssigner):
    """The released rule, anchor by anchor and GT by GT, in plain Python floats."""
    num_gt, num_anchors = len(iou), len(iou[0]) if iou else 0
    thr = []
    for x1, y1, x2, y2 in gt_boxes:
        s = math.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0)) / a.scale_ratio
        t = a.base_pos_iou_thr + a.slope * math.log2(s / a.base_size) if s > 0 else -math.inf
        t = min(max(t, a.low_quality_iou_thr), a.pos_iou_thr)
        thr.append(min(t, a.base_pos_iou_thr) if a.cap_at_base else t)
    result = []
    for n in range(num_anchors):
        if num_gt == 0:
            result.append(-1)
            continue
        best, best_iou = 0, iou[0][n]
        for k in range(1, num_gt):
            if iou[k][n] > best_iou:
                best, best_iou = k, iou[k][n]
        r = -1 if best_iou < a.neg_iou_thr else -2
        if best_iou >= thr[best]:
            r = best
        result.append(r)
    for k in range(num_gt):
        gmax = max(iou[k])
        if gmax >= a.min_pos_iou:
            for n in range(num_anchors):
                if iou[k][n] == gmax:
                    result[n] = k
    return result


def random_boxes(n, generator, max_xy=200.0, max_wh=60.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_xy
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) ** 2 * max_wh
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("cap_at_base", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_matches_naive_on_random_boxes(cap_at_base, seed):
    g = torch.Generator().manual_seed(seed)
    gt = random_boxes(7, g)
    anchors = torch.cat([random_boxes(300, g), gt[:3] + 0.5, gt[3:4]])  # some near and one exact match
    a = DynamicIoUAssigner(cap_at_base=cap_at_base)
    out = a.assign(anchors, gt)
    iou = safe_box_iou(gt, anchors)
    assert out.tolist() == naive_dynamic(iou.tolist(), gt.tolist(), a)
    assert (out >= 0).any() and (out == -1).any()


@pytest.mark.parametrize("cap_at_base", [True, False])
def test_dynamic_matches_naive_on_tied_iou_matrices(cap_at_base):
    g = torch.Generator().manual_seed(3)
    a = DynamicIoUAssigner(cap_at_base=cap_at_base, scale_ratio=1.5)
    for _ in range(20):
        iou = (torch.randint(0, 11, (5, 40), generator=g) / 10.0).to(torch.float64)  # many ties
        gt = random_boxes(5, g, max_wh=40.0)
        assert a(iou, gt).tolist() == naive_dynamic(iou.tolist(), gt.tolist(), a)


def test_zero_slope_is_a_fixed_rule_with_min_pos_iou():
    g = torch.Generator().manual_seed(4)
    a = DynamicIoUAssigner(base_pos_iou_thr=0.7, slope=0.0)
    gt = random_boxes(5, g)
    anchors = random_boxes(200, g)
    iou = safe_box_iou(gt, anchors)
    out = a.assign(anchors, gt)
    max_iou = iou.max(dim=0).values
    forced = (iou == iou.max(dim=1, keepdim=True).values) & (iou.max(dim=1, keepdim=True).values >= 0.3)
    plain = ~forced.any(dim=0)
    assert ((out[plain] >= 0) == (max_iou[plain] >= 0.7)).all()


# ----------------------------------------------------------------------------- torchvision's Matcher
@pytest.mark.parametrize("low_quality", [True, False])
def test_fixed_equals_torchvision_matcher(low_quality):
    g = torch.Generator().manual_seed(5)
    ours = FixedIoUAssigner(0.7, 0.3, allow_low_quality_matches=low_quality)
    for _ in range(20):
        iou = torch.randint(0, 21, (6, 50), generator=g) / 20.0
        ref = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou.clone())
        assert torch.equal(ours(iou), ref)


def test_outputs_follow_the_input_device_and_dtype():
    gt = torch.tensor([box(0, 0, 10, 10)], dtype=torch.float64)
    anchors = torch.tensor([box(0, 0, 10, 11), box(50, 50, 60, 60)], dtype=torch.float64)
    for assigner in (DynamicIoUAssigner(), FixedIoUAssigner()):
        out = assigner.assign(anchors, gt)
        assert out.dtype == torch.int64 and out.device == anchors.device
        assert out.tolist() == [0, -1]
