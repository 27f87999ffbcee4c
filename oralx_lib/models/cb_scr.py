"""CB-SCR: class-balanced spherical contrastive regularisation of RoI features.

The RoI head's 1024-d features are projected onto the unit sphere and pulled towards the other
RoIs of their class and towards a class centre, which is a projection of that class's row of
the classifier weight matrix. Each class's contribution to the denominator is divided by its
size, so frequent classes (and the background) do not swamp rare ones.

``balanced_supcon_loss`` is the formula; ``CBSCR`` wraps it with the two projection MLPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def balanced_supcon_loss(features: Tensor, labels: Tensor, centers: Tensor, temperature: float = 1.0) -> Tensor:
    """Class-averaged, class-complemented supervised contrastive loss with class centres.

    Contrast set ``Z = [z_1 .. z_N, c_0 .. c_{C-1}]`` with labels ``[y_1 .. y_N, 0 .. C-1]``;
    ``n_k`` = number of entries of ``Z`` with label ``k`` (RoIs of class ``k`` plus its centre).
    Only RoIs are anchors ``i``; for ``j != i``:

        l_ij   = z_i . Z_j / tau
        D_i    = sum_{j != i} exp(l_ij) / (n_{label(j)} - [label(j) = y_i])
        P(i)   = {j != i : label(j) = y_i}            (always holds the centre c_{y_i})
        loss_i = -1/|P(i)| sum_{p in P(i)} (l_ip - log D_i)
        loss   = 1/N sum_i loss_i

    ``n_{y_i} - 1 = |P(i)| >= 1`` because the centre is always there. ``log D_i`` is a
    log-sum-exp of ``l_ij - log(weight_j)`` (per-row maximum subtracted), so large ``1/tau``
    does not overflow. The loss is invariant to relabelling the classes (permuting ``labels``
    and the rows of ``centers`` together).

    Args:
        features: ``(N, D)`` L2-normalised RoI embeddings ``z_i``.
        labels: ``(N,)`` int64 class of each RoI in ``0 .. C-1`` (background is one of them).
        centers: ``(C, D)`` L2-normalised class centres ``c_k``.
        temperature: ``tau`` (released: 1.0).

    Returns:
        Scalar loss, differentiable into ``features`` and ``centers``. For ``N == 0``, a zero
        that keeps both inputs in the graph.
    """
    if features.dim() != 2 or centers.dim() != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(
            f"features must be (N, D) and centers (C, D) with the same D, got {tuple(features.shape)} "
            f"and {tuple(centers.shape)}"
        )
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must be ({features.shape[0]},), got {tuple(labels.shape)}")
    num, num_classes = features.shape[0], centers.shape[0]
    if num == 0:
        return (features * 0).sum() + (centers * 0).sum()
    labels = labels.to(device=features.device, dtype=torch.int64)
    # Half precision (autocast) is promoted: the loss is computed in float32 or float64.
    dtype = torch.promote_types(features.dtype, torch.float32)
    features, centers = features.to(dtype), centers.to(dtype)
    if labels.device.type == "cpu":
        if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
            raise ValueError(f"labels must lie in 0..{num_classes - 1} (one row of centers per class)")
    else:  # checked on the device: no host synchronisation in a training step
        torch._assert_async(((labels >= 0) & (labels < num_classes)).all(),
                            f"CB-SCR: labels must lie in 0..{num_classes - 1}")

    contrast = torch.cat([features, centers], dim=0)  # (N + C, D)
    contrast_labels = torch.cat([labels, torch.arange(num_classes, device=labels.device)])  # (N + C,)
    logits = features @ contrast.T / temperature  # (N, N + C)

    counts = torch.bincount(contrast_labels, minlength=num_classes).to(features.dtype)  # (C,) n_k
    same = labels[:, None] == contrast_labels[None, :]  # (N, N + C)
    self_mask = torch.zeros_like(same)
    self_mask[:, :num] = torch.eye(num, dtype=torch.bool, device=same.device)
    # log(n_label(j) - [label(j) = y_i]), from two per-class tables (n_k >= 1 and n_k - 1 >= 1 where used).
    log_n = counts.log()[contrast_labels]  # (N + C,)
    log_n_minus_one = (counts - 1).clamp(min=1).log()[contrast_labels]  # (N + C,)
    log_class_size = torch.where(same, log_n_minus_one[None, :], log_n[None, :])  # (N, N + C)

    weighted = (logits - log_class_size).masked_fill(self_mask, float("-inf"))
    log_denominator = torch.logsumexp(weighted, dim=1)  # (N,) log D_i

    positives = same & ~self_mask
    mean_positive = (logits * positives).sum(dim=1) / positives.sum(dim=1)  # (N,) mean_p l_ip
    return (log_denominator - mean_positive).mean()


def _projection(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


class CBSCR(nn.Module):
    """CB-SCR regulariser: two projection MLPs around ``balanced_supcon_loss``.

    ``z_i = normalize(MLP_f(x_i))`` for the RoI features and ``c_k = normalize(MLP_c(W_k))`` for
    the classifier's rows; each MLP is ``Linear(in, hidden) -> BatchNorm1d -> ReLU ->
    Linear(hidden, out)``. Gradients reach the classifier through ``W``. Training only: it adds
    a loss and changes nothing at inference.

    Args:
        in_dim: RoI feature size (the box head's representation, 1024).
        hidden_dim: MLP hidden size (512).
        out_dim: embedding size (1024).
        num_classes: classifier rows, background included (10 for OralXrays-9).
        temperature: ``tau`` of the loss (released: 1.0).
        weight: factor on the loss (released: 1.0).
    """

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 512,
        out_dim: int = 1024,
        num_classes: int = 10,
        temperature: float = 1.0,
        weight: float = 1.0,
    ):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"CBSCR: temperature must be > 0 (released: 1.0), got {temperature}")
        if num_classes < 2:
            raise ConfigError(f"CBSCR: num_classes counts the background too and must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.feature_mlp = _projection(in_dim, hidden_dim, out_dim)
        self.center_mlp = _projection(in_dim, hidden_dim, out_dim)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperature={self.temperature}, weight={self.weight}"

    def forward(self, roi_features: Tensor, labels: Tensor, class_weights: Tensor) -> Tensor:
        """Weighted CB-SCR loss.

        Args:
            roi_features: ``(N, in_dim)`` box-head features of the sampled RoIs.
            labels: ``(N,)`` int64 in ``0 .. num_classes-1`` (the RoI head's labels, 0 = background).
            class_weights: ``(num_classes, in_dim)`` the classifier's weight matrix, row k = class k.

        Returns:
            ``weight * balanced_supcon_loss(z, labels, c, temperature)``, a scalar. With fewer than
            two RoIs BatchNorm has no batch statistics, so a graph-keeping zero is returned.
        """
        if class_weights.shape[0] != self.num_classes:
            raise ConfigError(
                f"CBSCR was built for num_classes={self.num_classes} (background included) but the classifier "
                f"has {class_weights.shape[0]} rows: build it with num_classes=<classifier rows>."
            )
        if roi_features.shape[0] < 2 and self.training:
            zero = sum((p * 0).sum() for p in self.parameters())
            return zero + (roi_features * 0).sum() + (class_weights * 0).sum()
        z = F.normalize(self.feature_mlp(roi_features), dim=1)
        c = F.normalize(self.center_mlp(class_weights), dim=1)
        return self.weight * balanced_supcon_loss(z, labels, c, self.temperature)
