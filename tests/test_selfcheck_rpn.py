"""The self-checks of the chapter "The RPN baseline": right answers pass with one printed line,
typical wrong answers are rejected with the hint that explains them."""


import pytest
import torch
from torchvision.ops import box_iou

from oralx_lib.book import selfcheck
from oralx_lib.book.selfcheck import rpn

# ------------------------------------------------------------------ naive right answers


# The IoU matrices are float32: compare with the thresholds as float32 numbers, as a tensor
# comparison with a Python scalar does.
POS, NEG = float(torch.tensor(0.7)), float(torch.tensor(0.3))


def loop_assign(iou):
    """The 0.7 / 0.3 rule with low-quality matches, written with Python loops."""
    k, n = iou.shape
    if k == 0:
        return torch.full((n,), -1, dtype=torch.int64)
    out = []
    for j in range(n):
        column = iou[:, j].tolist()
        best = max(range(k), key=lambda i: (column[i], -i))  # first argmax, as torch.max
        m = column[best]
        out.append(best if m >= POS else (-1 if m < NEG else -2))
    for i in range(k):
        top = max(iou[i].tolist())
        for j in range(n):
            if iou[i, j] == top:
                column = iou[:, j].tolist()
                out[j] = max(range(k), key=lambda q: (column[q], -q))
    return torch.tensor(out, dtype=torch.int64)


def loop_recall(proposals, gt, iou_thr=0.5):
    if len(proposals) == 0:
        return torch.zeros(len(gt), dtype=torch.bool)
    return box_iou(gt, proposals).max(dim=1).values >= iou_thr


# ------------------------------------------------------------------ right answers pass


def test_right_answers_pass(capsys):
    selfcheck.check_fixed_assignment(loop_assign)
    selfcheck.check_proposal_recall(loop_recall)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    names = ["fixed_assignment", "proposal_recall"]
    assert [line.split()[:2] for line in lines] == [["correct:", n] for n in names]


def test_found_through_the_package():
    assert selfcheck.check_fixed_assignment is rpn.check_fixed_assignment
    assert {"check_fixed_assignment", "check_proposal_recall"} <= set(dir(selfcheck))


# ------------------------------------------------------------------ wrong answers fail


def no_low_quality(iou):
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.int64)
    m, best = iou.max(dim=0)
    return torch.where(m >= 0.7, best, torch.where(m < 0.3, -1, -2))


def strict_positive(iou):
    out = loop_assign(iou)
    k = iou.shape[0]
    if k:
        m, best = iou.max(dim=0)
        exact = (m == 0.7) & ~(iou == iou.max(dim=1).values[:, None]).any(0)
        out[exact] = -2
    return out


def first_tie_only(iou):
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.int64)
    out = no_low_quality(iou)
    top = iou.argmax(dim=1)
    out[top] = iou.max(dim=0).indices[top]
    return out


def claimed_by_finder(iou):
    out = no_low_quality(iou)
    for k in range(iou.shape[0]):
        out[iou[k] == iou[k].max()] = k
    return out


@pytest.mark.parametrize("fn, hint", [
    (claimed_by_finder, "own best"),
    (no_low_quality, "low-quality"),
    (strict_positive, "exactly 0.7"),
    (first_tie_only, "ties"),
])
def test_wrong_assignments_rejected_with_hints(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        rpn.check_fixed_assignment(fn)


def test_assignment_without_ground_truth_must_be_negative():
    def crashes_on_empty(iou):
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), -2, dtype=torch.int64)
        return loop_assign(iou)

    with pytest.raises(AssertionError, match="no ground truth"):
        rpn.check_fixed_assignment(crashes_on_empty)


def test_wrong_recall_rejected():
    with pytest.raises(AssertionError, match="use >="):
        rpn.check_proposal_recall(lambda p, g, iou_thr=0.5: loop_recall(p, g, iou_thr + 1e-3)
                                  if len(p) else torch.zeros(len(g), dtype=torch.bool))
    with pytest.raises(AssertionError, match="iou_thr"):
        rpn.check_proposal_recall(lambda p, g, iou_thr=0.5: loop_recall(p, g, 0.5))
    with pytest.raises(AssertionError, match="max over the proposals"):
        rpn.check_proposal_recall(lambda p, g, iou_thr=0.5: box_iou(g, p).max(dim=0).values >= iou_thr
                                  if len(p) and len(g) else torch.zeros(len(g), dtype=torch.bool))
