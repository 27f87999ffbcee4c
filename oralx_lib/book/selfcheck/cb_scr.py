"""Self-checks for the chapter "CB-SCR, derived".

==============================  ==========================================================
check                           reference
==============================  ==========================================================
``check_supcon_loss(fn)``       :func:`supcon_reference`, plain SupCon (``L_out``)
``check_balanced_supcon(fn)``   :func:`oralx_lib.models.balanced_supcon_loss`
==============================  ==========================================================

Each check runs the answer on hand-made cases (a class seen once, a class absent from the
batch, a single anchor, a large ``1 / tau``) and on random ones. On success one line is
printed; otherwise ``AssertionError`` names the case and, when the answer matches a typical
mistake, explains it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...models import balanced_supcon_loss
from ._report import report as _report


# ------------------------------------------------------------------------------ references
def supcon_reference(features: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Plain supervised contrastive loss (Khosla et al.'s ``L_out``), vectorised.

    With ``l_ij = z_i . z_j / tau`` and ``P(i) = {j != i : y_j = y_i}``:

        loss_i = -1/|P(i)| sum_{p in P(i)} (l_ip - log sum_{a != i} exp(l_ia))

    averaged over the anchors that have at least one positive (0 when none has).

    Args:
        features: ``(N, D)`` L2-normalised embeddings.
        labels: ``(N,)`` int64 classes.
        temperature: ``tau``.
    """
    n = features.shape[0]
    logits = features.double() @ features.double().T / temperature  # (N, N)
    self_mask = torch.eye(n, dtype=torch.bool)
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has = count > 0
    if not bool(has.any()):
        return logits.sum() * 0
    mean_pos = (logits * positives).sum(1)[has] / count[has]
    return (log_denominator[has] - mean_pos).mean()


# --------------------------------------------------------------------------------- helpers
def _scalar(value, call: str) -> float:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AssertionError(f"{call} should return a scalar tensor, got "
                             f"{type(value).__name__}") from exc
    if tensor.numel() != 1:
        raise AssertionError(f"{call} should return one number (a scalar), got shape "
                             f"{tuple(tensor.shape)}: average over the anchors")
    return float(tensor.reshape(()))


def _check(got: float, want: float, call: str, hints: Sequence[tuple[float, str]],
           tol: float = 1e-4) -> None:
    if abs(got - want) <= tol * max(1.0, abs(want)):
        return
    msg = f"{call}: expected {want:.6f}, got {got:.6f}"
    for value, hint in hints:
        if abs(got - value) <= tol * max(1.0, abs(value)):
            msg += f"\n  hint: {hint}"
            break
    raise AssertionError(msg)


def _sphere(n: int, d: int, g: torch.Generator) -> Tensor:
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _loss_variants(z: Tensor, y: Tensor, c: Tensor | None, tau: float, *,
                   class_averaged: bool, with_centers: bool) -> dict[str, float]:
    """Values of the usual mistakes, computed with explicit loops (small inputs only)."""
    if with_centers:
        Z = torch.cat([z, c])
        Y = torch.cat([y, torch.arange(len(c))])
    else:
        Z, Y = z, y
    n_total = len(Z)
    counts = torch.bincount(Y, minlength=int(Y.max()) + 1).tolist()
    out: dict[str, list[float]] = {k: [] for k in (
        "self", "no_avg", "no_minus_one", "sum_pos", "no_tau", "all_anchor")}
    anchors = range(n_total) if with_centers else range(len(z))
    for i in list(anchors):
        zi, yi = Z[i], int(Y[i])
        terms = {k: 0.0 for k in ("d", "d_self", "d_noavg", "d_nominus", "d_notau")}
        pos, pos_notau = [], []
        for j in range(n_total):
            l_ij = float(zi @ Z[j]) / tau
            raw = float(zi @ Z[j])
            same = int(Y[j]) == yi
            w = (counts[int(Y[j])] - (1 if same else 0)) if class_averaged else 1.0
            w_self = counts[int(Y[j])] if class_averaged else 1.0
            if j == i:
                terms["d_self"] += math.exp(l_ij) / w_self
                continue
            e = math.exp(l_ij)
            terms["d"] += e / w
            terms["d_self"] += e / w_self if class_averaged else e
            terms["d_noavg"] += e
            terms["d_nominus"] += e / (counts[int(Y[j])] if class_averaged else 1.0)
            terms["d_notau"] += math.exp(raw) / w
            if same:
                pos.append(l_ij)
                pos_notau.append(raw)
        if not pos:
            continue
        logd = math.log(terms["d"])
        mean_pos = sum(pos) / len(pos)
        loss_i = logd - mean_pos
        if i < len(z):
            out["self"].append(math.log(terms["d_self"]) - mean_pos)
            out["no_avg"].append(math.log(terms["d_noavg"]) - mean_pos)
            out["no_minus_one"].append(
                math.log(terms["d_nominus"]) - mean_pos)
            out["sum_pos"].append(len(pos) * loss_i)
            out["no_tau"].append(math.log(terms["d_notau"])
                                 - sum(pos_notau) / len(pos_notau))
        out["all_anchor"].append(loss_i)
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in out.items()}


# ------------------------------------------------------------------------------ plain SupCon
def check_supcon_loss(fn: Callable[[Tensor, Tensor, float], Tensor], *, seed: int = 0) -> None:
    """``fn(features (N, D), labels (N,), temperature) -> scalar``: plain SupCon, as
    :func:`supcon_reference` (anchors without a positive are left out of the mean)."""
    g = torch.Generator().manual_seed(seed)
    s = 2 ** -0.5
    cases = [
        (torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
         torch.tensor([0, 0, 1, 1]), 1.0, "two classes of two, orthogonal"),
        (torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]),
         torch.tensor([0, 0, 1, 1, 2]), 0.5, "class 2 seen once (its anchor has no positive)"),
        (torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
         torch.tensor([0, 0, 0]), 0.1, "one class, tau = 0.1"),
    ]
    for n, d, k, tau in ((6, 3, 2, 1.0), (20, 8, 4, 0.2), (40, 16, 5, 0.07), (9, 3, 3, 2.0)):
        labels = torch.randint(0, k, (n,), generator=g)
        cases.append((_sphere(n, d, g).float(), labels, tau, f"random N={n}, C={k}, tau={tau}"))
    for z, y, tau, name in cases:
        call = f"supcon_loss(features {tuple(z.shape)}, labels {y.tolist()}, {tau}) [{name}]"
        got = _scalar(fn(z.clone(), y.clone(), tau), call)
        want = float(supcon_reference(z, y, tau))
        v = _loss_variants(z.double(), y, None, tau, class_averaged=False, with_centers=False)
        _check(got, want, call, [
            (v["self"], "leave the anchor itself out of the denominator (sum over a != i)"),
            (v["sum_pos"], "average over the positives (divide by |P(i)|), do not sum"),
            (v["no_tau"], "divide the dot products by the temperature tau"),
        ])
    _report("supcon_loss", len(cases))


# -------------------------------------------------------------------------- balanced SupCon
def check_balanced_supcon(fn: Callable[[Tensor, Tensor, Tensor, float], Tensor], *,
                          seed: int = 0) -> None:
    """``fn(features (N, D), labels (N,), centers (C, D), temperature) -> scalar``: the CB-SCR
    loss, as :func:`oralx_lib.models.balanced_supcon_loss`."""
    g = torch.Generator().manual_seed(seed)
    e = torch.eye(3)
    cases = [
        (e[[0, 0, 1]], torch.tensor([0, 0, 1]), e[[0, 1]], 1.0, "two classes, features on the "
                                                                 "centres"),
        (e[[0, 1, 1, 1, 2]], torch.tensor([0, 1, 1, 1, 2]), e, 1.0,
         "class sizes 1, 3, 1 (n_k counts the centre too)"),
        (e[[0, 1]], torch.tensor([0, 0]), e, 0.5,
         "classes 1 and 2 absent from the batch (only their centres)"),
        (e[[2]], torch.tensor([1]), e, 1.0, "a single RoI"),
    ]
    for n, d, k, tau in ((8, 4, 3, 1.0), (24, 8, 5, 0.5), (30, 6, 10, 0.1), (12, 5, 4, 0.02)):
        labels = torch.randint(0, k, (n,), generator=g)
        cases.append((_sphere(n, d, g).float(), labels, _sphere(k, d, g).float(), tau,
                      f"random N={n}, C={k}, tau={tau}"))
    for z, y, c, tau, name in cases:
        call = (f"balanced_supcon(features {tuple(z.shape)}, labels {y.tolist()}, centers "
                f"{tuple(c.shape)}, {tau}) [{name}]")
        got = _scalar(fn(z.clone(), y.clone(), c.clone(), tau), call)
        want = float(balanced_supcon_loss(z.double(), y, c.double(), tau))
        v = _loss_variants(z.double(), y, c.double(), tau, class_averaged=True,
                           with_centers=True)
        plain = _loss_variants(z.double(), y, c.double(), tau, class_averaged=False,
                               with_centers=True)
        no_centres = float(supcon_reference(z, y, tau))
        _check(got, want, call, [
            (plain["no_avg"], "divide each exp(l_ij) in the denominator by the size of j's "
                              "class (class-averaging); this is plain SupCon with centres"),
            (v["no_minus_one"], "for j in the anchor's own class divide by n_k - 1: the anchor "
                                "itself is not in the sum, so its class has one entry fewer"),
            (v["self"], "leave the anchor itself out of the denominator (sum over j != i)"),
            (v["all_anchor"], "only RoIs are anchors: the class centres appear in the "
                              "contrast set but do not get a loss term of their own"),
            (v["sum_pos"], "average over the positives (divide by |P(i)|), do not sum"),
            (v["no_tau"], "divide the dot products by the temperature tau"),
            (no_centres, "append the class centres c_k (one per class, label k) to the "
                         "contrast set"),
        ])
    _report("balanced_supcon", len(cases))


__all__ = ["check_balanced_supcon", "check_supcon_loss", "supcon_reference"]
