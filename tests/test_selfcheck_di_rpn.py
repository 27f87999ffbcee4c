"""The self-checks of the chapter "DI-RPN, derived": right answers pass with one printed line,
typical wrong answers are rejected with the hint that explains them."""

import math

import pytest
import torch

from oralx_lib.book import selfcheck
from oralx_lib.book.selfcheck import di_rpn

# ------------------------------------------------------------------ right answers


def threshold(boxes):
    """The formula, written from the chapter: clamp(0.55 + 0.15 log2(s / 12), 0.5, 0.7)."""
    out = []
    for x1, y1, x2, y2 in boxes.tolist():
        s = math.sqrt((x2 - x1) * (y2 - y1))
        out.append(min(max(0.55 + 0.15 * math.log2(s / 12), 0.5), 0.7))
    return torch.tensor(out)


def released_threshold(boxes):
    return threshold(boxes).clamp(max=0.55)


def best_anchor_iou(s, a, d):
    """Overlap along one axis of two centred intervals offset by d/2, squared, over the union."""
    o = max(0.0, min((s + a) / 2 - d / 2, s, a))
    return o * o / (s * s + a * a - o * o)


def test_hand_computed_values():
    # A 16-px object and a 16-px anchor on a stride-4 grid: overlap 14 px per axis.
    assert best_anchor_iou(16, 16, 4) == pytest.approx(196 / (512 - 196))
    assert di_rpn.reference_best_anchor_iou(16, 16, 4) == pytest.approx(196 / 316)
    # An 8-px object fits inside the 16-px anchor: IoU = 64 / 256.
    assert di_rpn.reference_best_anchor_iou(8, 16, 4) == pytest.approx(0.25)
    # Stride 64 and small boxes: the nearest anchor does not reach the object.
    assert di_rpn.reference_best_anchor_iou(16, 16, 64) == 0.0
    boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0], [0.0, 0.0, 24.0, 24.0], [0.0, 0.0, 6.0, 6.0]])
    assert threshold(boxes).tolist() == pytest.approx([0.55, 0.7, 0.5])
    assert released_threshold(boxes).tolist() == pytest.approx([0.55, 0.55, 0.5])


def test_right_answers_pass(capsys):
    selfcheck.check_dynamic_threshold(threshold)
    selfcheck.check_dynamic_threshold(released_threshold, released=True)
    selfcheck.check_best_anchor_iou(best_anchor_iou)
    lines = capsys.readouterr().out.strip().splitlines()
    names = ["dynamic_threshold", "dynamic_threshold_released", "best_anchor_iou"]
    assert [line.split()[:2] for line in lines] == [["correct:", n] for n in names]


def test_found_through_the_package():
    assert selfcheck.check_dynamic_threshold is di_rpn.check_dynamic_threshold
    assert selfcheck.check_best_anchor_iou is di_rpn.check_best_anchor_iou


# ------------------------------------------------------------------ wrong answers


def _sizes(boxes):
    wh = boxes[:, 2:] - boxes[:, :2]
    return wh, (wh[:, 0] * wh[:, 1]).sqrt()


@pytest.mark.parametrize("fn, hint", [
    (lambda b: (0.55 + 0.15 * torch.log(_sizes(b)[1] / 12)).clamp(0.5, 0.7), "natural log"),
    (lambda b: 0.55 + 0.15 * torch.log2(_sizes(b)[1] / 12), "clamp"),
    (lambda b: (0.55 + 0.15 * torch.log2(_sizes(b)[1] ** 2 / 12)).clamp(0.5, 0.7), "area"),
    (lambda b: (0.55 + 0.15 * torch.log2(_sizes(b)[0].sum(1) / 2 / 12)).clamp(0.5, 0.7), r"\(w \+ h\) / 2"),
    (lambda b: (0.55 + 0.15 * torch.log2(12 / _sizes(b)[1])).clamp(0.5, 0.7), "higher"),
    (released_threshold, "other rule"),
])
def test_wrong_thresholds_rejected_with_hints(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        di_rpn.check_dynamic_threshold(fn)


def test_clamped_rule_is_not_the_released_one():
    with pytest.raises(AssertionError, match="other rule"):
        di_rpn.check_dynamic_threshold(threshold, released=True)


def _overlap(s, a, u):
    return max(0.0, min((s + a) / 2 - u, s, a))


@pytest.mark.parametrize("fn, hint", [
    (lambda s, a, d: _overlap(s, a, d) ** 2 / (s * s + a * a - _overlap(s, a, d) ** 2), "not d"),
    (lambda s, a, d: max(0.0, (s + a) / 2 - d / 2) ** 2 / (s * s + a * a - max(0.0, (s + a) / 2 - d / 2) ** 2),
     "smaller side"),
    (lambda s, a, d: _overlap(s, a, d / 2) ** 2 / (s * s + a * a), "union"),
    (lambda s, a, d: min(s, a) ** 2 / max(s, a) ** 2, "best case"),
])
def test_wrong_best_iou_rejected_with_hints(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        di_rpn.check_best_anchor_iou(fn)


def test_best_iou_must_be_a_number():
    with pytest.raises(AssertionError, match="number"):
        di_rpn.check_best_anchor_iou(lambda s, a, d: None)
