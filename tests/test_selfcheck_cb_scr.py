"""The self-checks of the chapter "CB-SCR, derived": right answers pass with one printed line,
typical wrong answers are rejected with the hint that explains them."""

import math

import pytest
import torch
import torch.nn.functional as F

from oralx_lib.book import selfcheck
from oralx_lib.models import balanced_supcon_loss
from oralx_lib.book.selfcheck import cb_scr


# ------------------------------------------------------------------ naive right answers
def loop_supcon(z, y, tau):
    """Plain SupCon with Python loops: the definition term by term."""
    losses = []
    for i in range(len(z)):
        den = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(z)) if a != i)
        pos = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if pos:
            losses.append(-sum(float(z[i] @ z[p]) / tau - math.log(den) for p in pos) / len(pos))
    return torch.tensor(sum(losses) / len(losses) if losses else 0.0)


def loop_balanced(z, y, c, tau):
    """The CB-SCR loss with Python loops."""
    contrast = torch.cat([z, c])
    labels = torch.cat([y, torch.arange(len(c))]).tolist()
    n = [labels.count(k) for k in range(len(c))]
    losses = []
    for i in range(len(z)):
        yi = int(y[i])
        den = sum(math.exp(float(z[i] @ contrast[j]) / tau) / (n[labels[j]] - (labels[j] == yi))
                  for j in range(len(contrast)) if j != i)
        pos = [p for p in range(len(contrast)) if p != i and labels[p] == yi]
        losses.append(-sum(float(z[i] @ contrast[p]) / tau - math.log(den)
                           for p in pos) / len(pos))
    return torch.tensor(sum(losses) / len(losses))


def plain_with_centres(z, y, c, tau):
    """Wrong: SupCon over RoIs and centres without class-averaging."""
    contrast = torch.cat([z, c])
    labels = torch.cat([y, torch.arange(len(c))])
    losses = []
    for i in range(len(z)):
        den = sum(math.exp(float(z[i] @ contrast[j]) / tau)
                  for j in range(len(contrast)) if j != i)
        pos = [p for p in range(len(contrast)) if p != i and labels[p] == y[i]]
        losses.append(-sum(float(z[i] @ contrast[p]) / tau - math.log(den)
                           for p in pos) / len(pos))
    return torch.tensor(sum(losses) / len(losses))


# ---------------------------------------------------------------------------- references
def test_supcon_reference_matches_the_loops_and_a_hand_value():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 3, (12,), generator=g)
    assert float(cb_scr.supcon_reference(z, y, 0.3)) == pytest.approx(
        float(loop_supcon(z, y, 0.3)), rel=1e-9)
    # Two orthogonal pairs at tau = 1: every anchor has l_ip = 1 and a denominator
    # e + 2 (its positive and the two orthogonal points), so loss = log(e + 2) - 1.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(cb_scr.supcon_reference(z, y, 1.0)) == pytest.approx(math.log(math.e + 2) - 1)


def test_supcon_reference_without_positives_is_zero():
    z = torch.eye(3)
    assert float(cb_scr.supcon_reference(z, torch.tensor([0, 1, 2]), 1.0)) == 0.0


# ---------------------------------------------------------------------------- the checks
def test_right_answers_pass(capsys):
    selfcheck.check_supcon_loss(loop_supcon)
    selfcheck.check_balanced_supcon(loop_balanced)
    selfcheck.check_balanced_supcon(balanced_supcon_loss)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and all(line.startswith("correct:") for line in out)


@pytest.mark.parametrize("wrong, hint", [
    (plain_with_centres, "class-averaging"),
    (lambda z, y, c, t: cb_scr.supcon_reference(z, y, t), "append the class centres"),
    (lambda z, y, c, t: balanced_supcon_loss(z, y, c, 1.0), "temperature"),
    (lambda z, y, c, t: 2 * balanced_supcon_loss(z, y, c, t), None),
])
def test_wrong_balanced_losses_are_rejected(wrong, hint):
    with pytest.raises(AssertionError) as err:
        selfcheck.check_balanced_supcon(wrong)
    if hint is not None:
        assert hint in str(err.value)


def test_including_the_anchor_in_the_denominator_is_explained():
    def with_self(z, y, tau):
        logits = z @ z.T / tau
        pos = (y[:, None] == y[None]) & ~torch.eye(len(z), dtype=torch.bool)
        has = pos.sum(1) > 0
        loss = torch.logsumexp(logits, 1) - (logits * pos).sum(1) / pos.sum(1).clamp(min=1)
        return loss[has].mean()

    with pytest.raises(AssertionError, match="leave the anchor itself out"):
        selfcheck.check_supcon_loss(with_self)


def test_a_non_scalar_answer_is_rejected():
    with pytest.raises(AssertionError, match="scalar"):
        selfcheck.check_supcon_loss(lambda z, y, t: torch.zeros(len(z)))
