"""Running a trained detector over a dataset: COCO detections, COCO metrics, and rebuilding a
model from a checkpoint.

A detector in eval mode returns, per image, ``{"boxes": (D, 4) xyxy, "labels": (D,) in 1..9,
"scores": (D,)}`` in the pixels of the image it was given. :func:`model_detections` turns those
into COCO result dicts in the annotation file's own category ids
(``dataset.label_to_category_id``) and original-image pixels::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}

and :func:`evaluate_model` scores them with :func:`oralx_lib.evaluation.evaluate_coco`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from oralx_lib import NUM_CLASSES
from oralx_lib.data import collate_fn
from oralx_lib.evaluation import (
    RELEASE_DETECTIONS_PER_IMAGE,
    evaluate_coco,
    release_metrics,
    top_per_image,
)
from oralx_lib.errors import ConfigError

from .checkpoint import CheckpointError, load_checkpoint, shape_mismatches
from .config import TrainConfig
from .distributed import unwrap_model


def unwrap_dataset(dataset):
    """``(OralXrays9, item indices into it)`` for a dataset or a ``Subset`` of one."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    for attr in ("coco", "label_to_category_id", "image_ids"):
        if not hasattr(dataset, attr):
            raise ConfigError(
                f"evaluation needs a dataset with .{attr} (an oralx_lib.data.OralXrays9 or a "
                f"Subset of one); got {type(dataset).__name__}."
            )
    return dataset, indices


@contextlib.contextmanager
def detection_cap(model: torch.nn.Module, max_dets: int):
    """Temporarily let every submodule with an int ``detections_per_img`` (torchvision's RoI
    heads, the query head) return at least ``max_dets`` boxes per image."""
    changed = []
    for module in model.modules():
        value = getattr(module, "detections_per_img", None)
        if isinstance(value, int) and not isinstance(value, bool) and value < max_dets:
            changed.append((module, value))
            module.detections_per_img = max_dets
    try:
        yield
    finally:
        for module, value in changed:
            module.detections_per_img = value


def _to_coco(output: dict, image_id: int, scale: tuple[float, float], label_map: dict,
             max_dets: int) -> list[dict]:
    """One image's model output -> COCO result dicts (top ``max_dets`` by score)."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu()
    labels = output["labels"].detach().cpu()
    if len(scores) > max_dets:
        keep = scores.topk(max_dets).indices
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    sy, sx = scale
    boxes = boxes * torch.tensor([sx, sy, sx, sy])
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    dets = []
    for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
        category_id = label_map.get(int(label))
        if category_id is None:  # a class the annotation file does not have
            continue
        dets.append({"image_id": int(image_id), "category_id": int(category_id),
                     "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return dets


@torch.no_grad()
def model_detections(
    model: torch.nn.Module,
    dataset,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 2,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_dets: int = 100,
    workers: int = 0,
) -> tuple[list[dict], list[int]]:
    """COCO detections of ``model`` on ``dataset`` (items ``indices``, default all).

    Returns ``(detections, image_ids)``: the COCO result dicts and the ids of the images that
    were run (for ``evaluate_coco(..., img_ids=...)``). The model's train/eval mode is put back
    afterwards, and the global random state is left untouched.
    """
    net = unwrap_model(model)
    base, base_indices = unwrap_dataset(dataset)
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    chosen = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    items = Subset(dataset, chosen)
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_fn)
    label_map = {int(k): int(v) for k, v in base.label_to_category_id.items()}
    was_training = net.training
    net.eval()
    detections: list[dict] = []
    image_ids = [int(base.image_ids[base_indices[i]]) for i in chosen]
    try:
        with torch.random.fork_rng(devices=[]), detection_cap(net, max_dets):
            bar = tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False)
            for images, targets in bar:
                outputs = net([img.to(device, non_blocking=True) for img in images])
                for img, target, output in zip(images, targets, outputs):
                    h, w = img.shape[-2:]
                    orig_h, orig_w = (int(v) for v in target["orig_size"])
                    detections += _to_coco(output, int(target["image_id"]),
                                           (orig_h / h, orig_w / w), label_map, max_dets)
    finally:
        net.train(was_training)
    return detections, image_ids


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    *,
    batch_size: int = 2,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_dets: int = 100,
    release: bool = False,
) -> tuple[dict, list[dict]]:
    """COCO metrics of ``model`` on ``dataset`` (an ``OralXrays9`` or a ``Subset`` of one).

    The images are run in eval mode, at most ``max_dets`` boxes kept per image (the model's own
    cap, e.g. torchvision's ``box_detections_per_img``, is raised to ``max_dets`` for the
    run), and scored with :func:`oralx_lib.evaluation.evaluate_coco` against
    ``dataset.coco`` on exactly the images that were run: every AP at ``maxDets = max_dets``.
    With ``release=True`` the model keeps at least 300 boxes per image and ``metrics["release"]``
    holds the release's numbers on them (:func:`oralx_lib.evaluation.release_metrics`), next to
    COCO's on the best ``max_dets`` per image.

    Returns:
        ``(metrics, detections)``: the dict of :func:`evaluate_coco` (``AP``, ``AP50``, ...,
        ``per_class_AP``) and the COCO result dicts.
    """
    base, _ = unwrap_dataset(dataset)
    keep = max(max_dets, RELEASE_DETECTIONS_PER_IMAGE) if release else max_dets
    detections, image_ids = model_detections(model, dataset, batch_size=batch_size,
                                              device=device, progress=progress,
                                              max_dets=keep)
    metrics = evaluate_coco(base.coco, top_per_image(detections, max_dets), max_dets=max_dets,
                            img_ids=image_ids)
    if release:
        metrics["release"] = release_metrics(base.coco, detections, img_ids=image_ids)
    return metrics, detections


def build_from_config(config: TrainConfig) -> torch.nn.Module:
    """The model a config describes (``build_model`` with its backbone and overrides)."""
    from oralx_lib.models import build_model

    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in config.model_overrides.items()}
    return build_model(config.model, num_classes=NUM_CLASSES, backbone=config.backbone,
                       pretrained_backbone=config.pretrained_backbone, **overrides)


def load_model(checkpoint_path: str | os.PathLike, map_location="cpu") -> torch.nn.Module:
    """Rebuild the model of a training checkpoint (its stored config) and load its weights.

    The backbone is built without downloading ImageNet weights (the checkpoint holds every
    weight). Returns the model in eval mode on ``map_location``.
    """
    state = load_checkpoint(checkpoint_path, map_location=map_location)
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(
                f"{checkpoint_path}: no {key!r} entry; this is not a training checkpoint of "
                "oralx_lib (last.pt / best.pt)."
            )
    try:
        config = TrainConfig.from_dict(state["config"]).replace(pretrained_backbone=False)
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint_path}: its stored config is not valid ({exc})") \
            from None
    model = build_from_config(config)
    mismatch = shape_mismatches(model, state["model"])
    if mismatch:
        raise CheckpointError(
            f"{checkpoint_path}: the weights do not fit model {config.model!r} / "
            f"{config.backbone!r}: {mismatch} Use a checkpoint written by `python -m oralx_lib "
            "train` for this library's classes."
        )
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    # A backbone trained with frozen BatchNorm is rebuilt here without ImageNet weights, i.e.
    # with ordinary BatchNorm, which also counts batches: the same maths in eval mode.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint_path}: the weights do not fit model {config.model!r} / "
            f"{config.backbone!r} (missing {list(missing)[:5]}, unexpected "
            f"{list(unexpected)[:5]}). Was it written by another version of the library?"
        )
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


__all__ = ["build_from_config", "detection_cap", "evaluate_model", "load_model",
           "model_detections", "unwrap_dataset"]
