"""``build_model``: the detectors of the book by name, from torchvision parts.

=============  ===============================  =====================
name           RPN anchor assignment            RoI head
=============  ===============================  =====================
faster_rcnn    fixed IoU rule (0.7 / 0.3)       plain
di_rpn         DI-RPN (scale-adaptive)          plain
cb_scr         fixed IoU rule                   + CB-SCR
moqam_rcnn     DI-RPN                           + CB-SCR
moqam          the complete query-based MOQAM (``oralx_lib.models.moqam``)
=============  ===============================  =====================

The four two-stage models share every other part, so their differences are exactly the
paper's two components.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..errors import ConfigError
from .backbones import BACKBONE_STRIDES, BACKBONES, IMAGENET_MEAN, IMAGENET_STD, fpn_backbone
from .heads import (
    CB_SCR_DEFAULTS,
    DI_RPN_DEFAULTS,
    ROI_DEFAULTS,
    RPN_DEFAULTS,
    build_roi_heads,
    build_rpn,
)
from .moqam import build_moqam
from .rcnn import TwoStageDetector

MODEL_NAMES = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "moqam")

#: Overrides every two-stage model accepts, with their defaults (torchvision's, or the release's):
#: the input transform (``resize_in_training=False``: training images go in at the size the data
#: pipeline gives them, e.g. random crops already at the network-input scale; evaluation still
#: resizes to ``min_size`` / ``max_size``), the backbone's freezing (:func:`oralx_lib.models.backbones.freeze_rule`),
#: the RPN's and the RoI head's options (:mod:`oralx_lib.models.heads`).
COMMON_DEFAULTS: dict[str, Any] = {
    "min_size": 800,
    "max_size": 1333,
    "resize_in_training": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "trainable_backbone_layers": None,
    "freeze_batchnorm": None,
    **RPN_DEFAULTS,
    **ROI_DEFAULTS,
}

_USES_DI_RPN = {"di_rpn", "moqam_rcnn"}
_USES_CB_SCR = {"cb_scr", "moqam_rcnn"}


def _settings(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    allowed = dict(COMMON_DEFAULTS)
    if name in _USES_DI_RPN:
        allowed.update(DI_RPN_DEFAULTS)
    if name in _USES_CB_SCR:
        allowed.update(CB_SCR_DEFAULTS)
    for key in overrides:
        if key in allowed:
            continue
        if key in DI_RPN_DEFAULTS:
            hint = f"it configures DI-RPN, which only {sorted(_USES_DI_RPN)} use"
        elif key in CB_SCR_DEFAULTS:
            hint = f"it configures CB-SCR, which only {sorted(_USES_CB_SCR)} use"
        else:
            hint = f"valid overrides for {name!r}: {', '.join(sorted(allowed))}"
        raise ConfigError(f"build_model({name!r}): unknown override {key!r}; {hint}.")
    allowed.update(overrides)
    return allowed


def _build_two_stage(
    name: str, num_classes: int, backbone: str, pretrained_backbone: bool, overrides: dict[str, Any]
) -> TwoStageDetector:
    cfg = _settings(name, overrides)
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone={backbone!r} is not available; use one of {BACKBONES}.")
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must count the foreground classes (9 for OralXrays-9).")
    body = fpn_backbone(backbone, pretrained_backbone, cfg["trainable_backbone_layers"], cfg["freeze_batchnorm"])
    strides = BACKBONE_STRIDES[backbone]
    rpn = build_rpn(cfg, in_channels=body.out_channels, strides=strides, di_rpn=name in _USES_DI_RPN)
    roi_heads = build_roi_heads(
        cfg,
        in_channels=body.out_channels,
        featmap_names=[str(i) for i in range(len(strides) - 1)],  # every level but the pooled one
        strides=strides[:-1],
        num_classes=num_classes,
        cb_scr=name in _USES_CB_SCR,
    )
    transform = GeneralizedRCNNTransform(
        min_size=cfg["min_size"], max_size=cfg["max_size"], image_mean=list(cfg["image_mean"]), image_std=list(cfg["image_std"]),
        _skip_resize=not cfg["resize_in_training"],
    )
    return TwoStageDetector(backbone=body, rpn=rpn, roi_heads=roi_heads, transform=transform)


def build_model(
    name: str, num_classes: int = 9, backbone: str = "resnet50", pretrained_backbone: bool = False, **overrides: Any
) -> nn.Module:
    """Build a detector of the book by name.

    Args:
        name: one of ``MODEL_NAMES``: ``faster_rcnn`` (RPN baseline, fixed IoU rule 0.7/0.3),
            ``di_rpn`` (DI-RPN assignment), ``cb_scr`` (CB-SCR on the RoI head), ``moqam_rcnn``
            (both), ``moqam`` (the complete query-based model).
        num_classes: foreground classes (9); labels are ``1..num_classes``, 0 is background.
        backbone: ``resnet50`` (the paper's), ``resnet18`` or ``mobilenet_v3`` (for CPU).
        pretrained_backbone: load torchvision's ImageNet weights (downloaded; raises
            ``PretrainedWeightsError`` when that fails) and freeze like the release.
        **overrides: settings of the detector; see ``COMMON_DEFAULTS``, ``DI_RPN_DEFAULTS`` and
            ``CB_SCR_DEFAULTS`` (e.g. ``min_size=288, max_size=512, anchors="torchvision",
            cb_scr_weight=0.5``). An unknown one raises ``ConfigError`` naming it.

    Returns:
        A module with torchvision's detection contract (see ``TwoStageDetector``).
    """
    if name == "moqam":
        return build_moqam(num_classes=num_classes, backbone=backbone, pretrained_backbone=pretrained_backbone, **overrides)
    if name in ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn"):
        return _build_two_stage(name, num_classes, backbone, pretrained_backbone, overrides)
    raise ConfigError(f"build_model: unknown model name {name!r}; use one of {MODEL_NAMES}.")


__all__ = [
    "BACKBONES",
    "BACKBONE_STRIDES",
    "CB_SCR_DEFAULTS",
    "COMMON_DEFAULTS",
    "DI_RPN_DEFAULTS",
    "MODEL_NAMES",
    "build_model",
]
