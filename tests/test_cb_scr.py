"""CB-SCR: the balanced supervised contrastive loss and its module."""

import math

import pytest
import torch
import torch.nn.functional as F

from oralx_lib.models import CBSCR, balanced_supcon_loss
from oralx_lib.errors import ConfigError


def naive_loss(z, y, c, tau):
    """The formula of MOQAM.md, one RoI and one contrast entry at a time."""
    contrast = [(z[j], int(y[j])) for j in range(len(z))] + [(c[k], k) for k in range(len(c))]
    counts = {}
    for _, label in contrast:
        counts[label] = counts.get(label, 0) + 1
    total = 0.0
    for i in range(len(z)):
        yi = int(y[i])
        denom = 0.0
        positives = []
        for j, (vec, label) in enumerate(contrast):
            if j == i:
                continue
            logit = float(z[i] @ vec) / tau
            denom += math.exp(logit) / (counts[label] - (1 if label == yi else 0))
            if label == yi:
                positives.append(logit)
        total += -sum(p - math.log(denom) for p in positives) / len(positives)
    return total / len(z)


def test_hand_computed_symmetric_case():
    # z1 = c0 = e1 (class 0), z2 = c1 = e2 (class 1): D_1 = e^0/2 + e^1/1 + e^0/2 = 1 + e, P(1) = {c0}.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = balanced_supcon_loss(z, torch.tensor([0, 1]), c, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.e) - 1.0, rel=1e-6)


def test_hand_computed_case_with_two_rois_of_one_class():
    # z1 = z2 = e1 (class 0), c0 = e2, c1 = -e1; n_0 = 3, n_1 = 1.
    # D_1 = e^1/2 + e^0/2 + e^-1/1, P(1) = {z2, c0} with mean logit 1/2.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    c = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss = balanced_supcon_loss(z, torch.tensor([0, 0]), c)
    expected = math.log(math.e / 2 + 0.5 + math.exp(-1)) - 0.5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # tau = 0.5 doubles every logit.
    loss_half = balanced_supcon_loss(z, torch.tensor([0, 0]), c, temperature=0.5)
    assert loss_half.item() == pytest.approx(math.log(math.e**2 / 2 + 0.5 + math.exp(-2)) - 1.0, rel=1e-6)


@pytest.mark.parametrize("seed,tau", [(0, 1.0), (1, 0.3), (2, 0.07)])
def test_matches_naive_double_loop(seed, tau):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 3, 3, 3, 0, 1, 0])  # class 2 has no RoI: only its centre
    ours = balanced_supcon_loss(z, y, c, temperature=tau)
    assert ours.item() == pytest.approx(naive_loss(z, y, c, tau), rel=1e-10)


def test_relabelling_invariance_release_background_last():
    # Ours: 0 = background, 1..9 classes. Release: classes 0..8, background 9: release = (ours - 1) mod 10.
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 10, (12,), generator=g)
    to_release = (torch.arange(10) - 1) % 10
    c_release = torch.empty_like(c)
    c_release[to_release] = c
    ours = balanced_supcon_loss(z, y, c)
    release = balanced_supcon_loss(z, to_release[y], c_release)
    assert ours.item() == pytest.approx(release.item(), rel=1e-12)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(4)
    z = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    c = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    y = torch.tensor([0, 2, 2, 1, 0, 0])
    assert torch.autograd.gradcheck(lambda a, b: balanced_supcon_loss(a, y, b, temperature=0.5), (z, c))


def test_empty_batch_is_a_graph_keeping_zero():
    z = torch.zeros((0, 4), requires_grad=True)
    c = torch.randn(3, 4, requires_grad=True)
    loss = balanced_supcon_loss(z, torch.zeros((0,), dtype=torch.int64), c)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(c.grad, torch.zeros_like(c))


def test_numerically_stable_at_small_temperature():
    g = torch.Generator().manual_seed(5)
    z = F.normalize(torch.randn(64, 16, generator=g), dim=1).requires_grad_()
    c = F.normalize(torch.randn(10, 16, generator=g), dim=1)
    loss = balanced_supcon_loss(z, torch.randint(0, 10, (64,), generator=g), c, temperature=0.001)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_bad_labels_and_shapes_raise():
    z, c = torch.randn(3, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match="labels must lie"):
        balanced_supcon_loss(z, torch.tensor([0, 1, 2]), c)
    with pytest.raises(ValueError, match="same D"):
        balanced_supcon_loss(z, torch.tensor([0, 1, 1]), torch.randn(2, 5))


# ----------------------------------------------------------------------------- module
def test_module_equals_formula_on_its_projections_and_weights_it():
    torch.manual_seed(0)
    module = CBSCR(in_dim=32, hidden_dim=16, out_dim=24, num_classes=4, temperature=0.5, weight=0.25)
    x, w = torch.randn(10, 32), torch.randn(4, 32, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2, 3, 0, 0, 1, 1, 0])
    loss = module(x, y, w)
    z = F.normalize(module.feature_mlp(x), dim=1)
    c = F.normalize(module.center_mlp(w), dim=1)
    expected = 0.25 * balanced_supcon_loss(z, y, c, temperature=0.5)
    torch.testing.assert_close(loss, expected)
    assert [type(m).__name__ for m in module.feature_mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # centres are trained through W


def test_module_checks_class_count_and_handles_tiny_batches():
    module = CBSCR(in_dim=8, hidden_dim=4, out_dim=8, num_classes=3)
    with pytest.raises(ConfigError, match="num_classes=3"):
        module(torch.randn(5, 8), torch.zeros(5, dtype=torch.int64), torch.randn(4, 8))
    w = torch.randn(3, 8, requires_grad=True)
    loss = module(torch.randn(1, 8), torch.zeros(1, dtype=torch.int64), w)
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ConfigError, match="temperature"):
        CBSCR(temperature=0.0)
