"""Measurements of the chapters "CB-SCR, derived" and "Evaluation and error analysis".

- **A toy sphere** (:func:`optimise_on_sphere`, :func:`class_mean_angles`): free 3-D features
  of an imbalanced toy set optimised on the unit sphere with a contrastive loss given as an
  argument, to see where each class ends up.
- **RoI features** (:func:`gt_roi_features`, :func:`pca_2d`, :func:`nearest_mean_accuracy`): the
  box head's features of ground-truth boxes, the space CB-SCR regularises.
- **Detection errors** (:func:`classify_detections`, :func:`error_counts`): every detection
  labelled correct, duplicate, wrong class, poor localisation or background, and every missed box.

The drawings are in :mod:`oralx_lib.book.eval_figures`, the explorers in
:mod:`oralx_lib.book.explorers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from .. import CLASSES
from ..errors import ConfigError


#: ``loss_fn(features (N, D), labels (N,), centers (C, D), temperature) -> scalar``.
SphereLoss = Callable[[Tensor, Tensor, Tensor, float], Tensor]


# ============================================================================ the toy sphere
def toy_labels(counts: Sequence[int]) -> Tensor:
    """``(sum(counts),)`` int64: ``counts[k]`` copies of class ``k``, class by class."""
    if not counts or any(int(c) < 1 for c in counts):
        raise ConfigError(f"toy counts must be positive numbers of points per class, "
                          f"got {list(counts)}")
    return torch.cat([torch.full((int(c),), k, dtype=torch.int64) for k, c in enumerate(counts)])


def optimise_on_sphere(counts: Sequence[int], loss_fn: SphereLoss, *, temperature: float = 1.0,
                       dim: int = 3, steps: int = 500, lr: float = 0.05,
                       seed: int = 0) -> dict[str, Tensor]:
    """Free features of an imbalanced toy set, optimised on the unit sphere.

    Each point ``i`` is a free vector ``x_i`` in ``R^dim`` and each class has a free centre
    vector ``w_k``; the loss sees ``z_i = x_i / ||x_i||`` and ``c_k = w_k / ||w_k||`` and
    Adam (``lr``) takes ``steps`` steps on ``loss_fn(z, labels, c, temperature)``. A loss that
    ignores the centres (plain SupCon) leaves them where they started.

    The tensors are tiny, so the loop runs with one intra-op thread (the previous setting is
    restored afterwards): on a CPU, handing such small operations to several threads costs
    several times more than it saves.

    Returns:
        ``{"features": (N, dim), "labels": (N,), "centers": (C, dim), "loss": (steps,)}``,
        features and centres on the unit sphere.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    labels = toy_labels(counts)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), dim, generator=g).requires_grad_()
    w = torch.randn(len(counts), dim, generator=g).requires_grad_()
    opt = torch.optim.Adam([x, w], lr=lr)
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            loss = loss_fn(F.normalize(x, dim=1), labels, F.normalize(w, dim=1), temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    return {"features": F.normalize(x.detach(), dim=1), "labels": labels,
            "centers": F.normalize(w.detach(), dim=1), "loss": torch.tensor(history)}


def class_mean_angles(features: Tensor, labels: Tensor) -> Tensor:
    """``(C, C)`` angles in degrees between the normalised class means
    ``m_k = normalize(mean_{y_i = k} z_i)`` (``C = labels.max() + 1``; a class without points
    gets NaN)."""
    num = int(labels.max()) + 1
    means = torch.stack([features[labels == k].mean(0) if bool((labels == k).any())
                         else torch.full((features.shape[1],), float("nan"))
                         for k in range(num)])
    means = F.normalize(means, dim=1)
    return torch.rad2deg(torch.acos((means @ means.T).clamp(-1.0, 1.0)))


def nearest_class_angle(features: Tensor, labels: Tensor) -> Tensor:
    """``(C,)`` the angle (degrees) from each class mean to the closest other class mean."""
    angles = class_mean_angles(features, labels).clone()
    angles.fill_diagonal_(float("inf"))
    return angles.min(dim=1).values


# ============================================================================= RoI features
@torch.no_grad()
def gt_roi_features(model, dataset, indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """The box head's features of the ground-truth boxes, as the RoI head computes them.

    For each item: ``model.transform`` resizes the image and its boxes as in evaluation, the
    backbone gives the feature maps, ``roi_heads.box_roi_pool`` RoIAligns the boxes (7 x 7 per
    level chosen by box size) and ``roi_heads.box_head`` maps them to ``(K, R)`` features
    (``R`` = representation size, 1024 in the release): the ``x_i`` that the classifier and
    CB-SCR's projection see.

    Args:
        model: a two-stage detector of :func:`oralx_lib.models.build_model`.
        dataset: items ``(image (3, H, W), {"boxes": (K, 4), "labels": (K,)})``.
        indices: items to use (default: all).

    Returns:
        ``(features (M, R), labels (M,) in 1..9)`` over all boxes of the items, on the CPU.
    """
    for part in ("transform", "backbone", "roi_heads"):
        if not hasattr(model, part):
            raise ConfigError(
                f"gt_roi_features needs a two-stage detector with .{part} (build_model("
                f"'faster_rcnn' | 'di_rpn' | 'cb_scr' | 'moqam_rcnn')); got "
                f"{type(model).__name__}."
            )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats, labels = [], []
    try:
        for i in (range(len(dataset)) if indices is None else indices):
            image, target = dataset[i]
            if len(target["boxes"]) == 0:
                continue
            tgt = [{"boxes": target["boxes"].to(device, torch.float32),
                    "labels": target["labels"].to(device)}]
            images, tgt = model.transform([image.to(device)], tgt)
            maps = model.backbone(images.tensors)
            pooled = model.roi_heads.box_roi_pool(maps, [tgt[0]["boxes"]], images.image_sizes)
            feats.append(model.roi_heads.box_head(pooled).cpu())
            labels.append(tgt[0]["labels"].cpu())
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


def pca_2d(features: Tensor) -> Tensor:
    """``(M, 2)``: the features' coordinates on their two principal axes (centred;
    ``torch.pca_lowrank``)."""
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(x, q=min(2, *x.shape), center=False)
    return (x @ v[:, :2]).float()


def nearest_mean_accuracy(features: Tensor, labels: Tensor) -> dict[int, float]:
    """Per class, the fraction of its features whose nearest class mean (cosine similarity of
    L2-normalised features) is its own class's, leaving each feature out of its own class's
    mean: ``{label: accuracy}`` for every label with at least two features."""
    z = F.normalize(features.double(), dim=1)
    present = sorted(int(k) for k in labels.unique())
    sums = torch.stack([z[labels == k].sum(0) for k in present])  # (K, D)
    counts = torch.tensor([int((labels == k).sum()) for k in present], dtype=torch.float64)
    result = {}
    for row, k in enumerate(present):
        if counts[row] < 2:
            continue
        idx = (labels == k).nonzero().flatten()
        means = (sums / counts[:, None]).expand(len(idx), -1, -1).clone()  # (n, K, D)
        means[:, row] = (sums[row] - z[idx]) / (counts[row] - 1)
        sim = torch.einsum("nd,nkd->nk", z[idx], F.normalize(means, dim=2))
        result[k] = float((sim.argmax(1) == row).double().mean())
    return result


# =========================================================================== detection errors
#: The kinds of detection, in the order figures and tables use.
ERROR_TYPES: tuple[str, ...] = ("correct", "duplicate", "class", "localisation", "background")


def classify_detections(prediction: Mapping[str, Tensor], target: Mapping[str, Tensor], *,
                        iou_thr: float = 0.5, score_thr: float = 0.3,
                        background_iou: float = 0.1) -> dict:
    """Label each detection of one image with its kind of error, and find the missed boxes.

    Detections with ``score >= score_thr`` are visited by decreasing score. With ``IoU`` the
    box overlap, a detection of class ``c`` is

    1. ``correct`` if its best IoU with a not yet matched ground-truth box of class ``c`` is
       ``>= iou_thr`` (that box is then matched, as in COCO's greedy matching);
    2. ``duplicate`` if it overlaps an already matched box of class ``c`` with
       ``IoU >= iou_thr``;
    3. ``class`` (a confusion) if it overlaps a box of another class with ``IoU >= iou_thr``;
    4. ``localisation`` if it overlaps a box of class ``c`` with
       ``background_iou <= IoU < iou_thr``;
    5. ``background`` otherwise.

    A ground-truth box that no ``correct`` detection matched is ``missed``. (These are the
    main error kinds of the TIDE toolbox, without its weighting of each kind by the AP it
    costs.)

    Args:
        prediction: ``{"boxes": (D, 4) xyxy, "labels": (D,), "scores": (D,)}``.
        target: ``{"boxes": (G, 4) xyxy, "labels": (G,)}`` in the same pixels.

    Returns:
        ``{"kept": (D',) indices of the detections scored, by decreasing score, "kinds": list
        of D' kinds, "matched_gt": (D',) the ground-truth index each one refers to or -1,
        "missed": (G,) bool}``.
    """
    boxes = torch.as_tensor(prediction["boxes"], dtype=torch.float32).reshape(-1, 4).cpu()
    labels = torch.as_tensor(prediction["labels"]).reshape(-1).cpu()
    scores = torch.as_tensor(prediction["scores"], dtype=torch.float32).reshape(-1).cpu()
    gt_boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4).cpu()
    gt_labels = torch.as_tensor(target["labels"]).reshape(-1).cpu()
    if not 0 <= background_iou <= iou_thr <= 1:
        raise ConfigError(f"need 0 <= background_iou <= iou_thr <= 1, got {background_iou} "
                          f"and {iou_thr}")
    keep = (scores >= score_thr).nonzero().flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    iou = box_iou(boxes[keep], gt_boxes) if len(gt_boxes) and len(keep) else \
        torch.zeros(len(keep), len(gt_boxes))
    matched = torch.zeros(len(gt_boxes), dtype=torch.bool)
    kinds, refers = [], []
    for row, det in enumerate(keep.tolist()):
        same = gt_labels == labels[det]
        overlap = iou[row]
        free = same & ~matched & (overlap >= iou_thr)
        if bool(free.any()):
            g = int(torch.where(free, overlap, torch.tensor(-1.0)).argmax())
            matched[g] = True
            kinds.append("correct")
            refers.append(g)
            continue
        for kind, mask in (("duplicate", same & matched & (overlap >= iou_thr)),
                           ("class", ~same & (overlap >= iou_thr)),
                           ("localisation", same & (overlap >= background_iou))):
            if bool(mask.any()):
                kinds.append(kind)
                refers.append(int(torch.where(mask, overlap, torch.tensor(-1.0)).argmax()))
                break
        else:
            kinds.append("background")
            refers.append(-1)
    return {"kept": keep, "kinds": kinds, "matched_gt": torch.tensor(refers, dtype=torch.int64),
            "missed": ~matched}


def error_counts(dataset, predictions: Sequence[Mapping[str, Tensor]], *,
                 indices: Sequence[int] | None = None, **kwargs) -> dict[str, dict[str, int]]:
    """:func:`classify_detections` over a dataset: per class name, the number of detections of
    each kind (by the detection's class) and ``missed`` boxes and ``gt`` boxes (by the box's
    class). ``predictions[j]`` belongs to item ``indices[j]`` (default: item ``j``);
    ``kwargs`` go to :func:`classify_detections`."""
    indices = list(range(len(predictions))) if indices is None else list(indices)
    if len(indices) != len(predictions):
        raise ConfigError(f"{len(predictions)} predictions for {len(indices)} items: give one "
                          "prediction per item")
    table = {name: {kind: 0 for kind in (*ERROR_TYPES, "missed", "gt")} for name in CLASSES}
    for pred, i in zip(predictions, indices):
        target = dataset[i][1]
        res = classify_detections(pred, target, **kwargs)
        det_labels = torch.as_tensor(pred["labels"]).reshape(-1)
        for det, kind in zip(res["kept"].tolist(), res["kinds"]):
            table[CLASSES[int(det_labels[det]) - 1]][kind] += 1
        for lab, missed in zip(target["labels"].tolist(), res["missed"].tolist()):
            table[CLASSES[lab - 1]]["gt"] += 1
            table[CLASSES[lab - 1]]["missed"] += int(missed)
    return table
