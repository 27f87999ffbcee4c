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
from torchvision.models import MobileNet_V3_Large_Weights, ResNet18_Weights, ResNet50_Weights
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from ..paths import ConfigError
from .assigners import DynamicIoUAssigner, FixedIoUAssigner
from .cb_scr import CBSCR
from .rcnn import AssignerRPN, CBSCRRoIHeads, TwoStageDetector, make_anchor_generator

MODEL_NAMES = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "moqam")
BACKBONES = ("resnet50", "resnet18", "mobilenet_v3")

#: Feature strides of each backbone's FPN levels (the last one is the max-pooled extra level).
BACKBONE_STRIDES: dict[str, tuple[int, ...]] = {
    "resnet50": (4, 8, 16, 32, 64),
    "resnet18": (4, 8, 16, 32, 64),
    "mobilenet_v3": (8, 16, 32, 64),
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: Overrides every two-stage model accepts, with their defaults (torchvision's, or the release's).
COMMON_DEFAULTS: dict[str, Any] = {
    "min_size": 800,
    "max_size": 1333,
    "image_mean": _IMAGENET_MEAN,
    "image_std": _IMAGENET_STD,
    "anchors": "released",
    "anchor_sizes": None,
    "aspect_ratios": (0.5, 1.0, 2.0),
    "trainable_backbone_layers": None,
    "freeze_batchnorm": None,
    "rpn_fg_iou_thresh": 0.7,
    "rpn_bg_iou_thresh": 0.3,
    "rpn_batch_size_per_image": 256,
    "rpn_positive_fraction": 0.5,
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_test": 1000,
    "rpn_nms_thresh": 0.7,
    "rpn_score_thresh": 0.0,
    "representation_size": 1024,
    "box_fg_iou_thresh": 0.5,
    "box_bg_iou_thresh": 0.5,
    "box_batch_size_per_image": 512,
    "box_positive_fraction": 0.25,
    "bbox_reg_weights": None,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
}
#: DI-RPN's overrides (``di_rpn``, ``moqam_rcnn``): the released constants.
DI_RPN_DEFAULTS: dict[str, Any] = {
    "di_rpn_base_pos_iou_thr": 0.55,
    "di_rpn_low_quality_iou_thr": 0.5,
    "di_rpn_slope": 0.15,
    "di_rpn_base_size": 12.0,
    "di_rpn_min_pos_iou": 0.3,
    "di_rpn_cap_at_base": True,
    "di_rpn_scale_ratio": 1.0,
}
#: CB-SCR's overrides (``cb_scr``, ``moqam_rcnn``): the released settings.
CB_SCR_DEFAULTS: dict[str, Any] = {
    "cb_scr_weight": 1.0,
    "cb_scr_temperature": 1.0,
    "cb_scr_hidden_dim": 512,
    "cb_scr_out_dim": 1024,
}

_USES_DI_RPN = {"di_rpn", "moqam_rcnn"}
_USES_CB_SCR = {"cb_scr", "moqam_rcnn"}


class PretrainedWeightsError(ConfigError):
    """``pretrained_backbone=True`` but torchvision's ImageNet weights could not be loaded."""


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


def _backbone(backbone: str, pretrained: bool, trainable_layers: int | None, freeze_bn: bool | None) -> nn.Module:
    """An FPN backbone with 256 output channels; frozen like the release when pretrained.

    Pretrained: stem + first stage frozen (ResNet: ``conv1``, ``layer1``; trainable layers 3 of
    5), every BatchNorm a ``FrozenBatchNorm2d``. From scratch (torchvision's rule): all layers
    train, with ordinary BatchNorm. Both can be overridden.
    """
    freeze_bn = pretrained if freeze_bn is None else bool(freeze_bn)
    norm_layer = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
    try:
        if backbone in ("resnet50", "resnet18"):
            weights = (ResNet50_Weights if backbone == "resnet50" else ResNet18_Weights).IMAGENET1K_V1
            layers = (3 if pretrained else 5) if trainable_layers is None else trainable_layers
            return resnet_fpn_backbone(
                backbone_name=backbone,
                weights=weights if pretrained else None,
                norm_layer=norm_layer,
                trainable_layers=layers,
            )
        if backbone == "mobilenet_v3":
            layers = (4 if pretrained else 6) if trainable_layers is None else trainable_layers
            return mobilenet_backbone(
                backbone_name="mobilenet_v3_large",
                weights=MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained else None,
                fpn=True,
                norm_layer=norm_layer,
                trainable_layers=layers,
                returned_layers=[2, 3, 5],  # strides 8, 16, 32 (+ max-pooled 64)
            )
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"pretrained_backbone=True: torchvision's ImageNet weights for {backbone!r} could not be loaded "
            f"({type(err).__name__}: {err}). They are downloaded on first use (internet needed, e.g. on Colab) "
            "and cached in ~/.cache/torch/hub/checkpoints. Connect and retry, copy the file there, or train "
            "from scratch with build_model(..., pretrained_backbone=False)."
        ) from err
    except ValueError as err:
        raise ConfigError(f"trainable_backbone_layers={trainable_layers} is invalid for {backbone!r}: {err}") from err
    raise ConfigError(f"backbone={backbone!r} is not available; use one of {BACKBONES}.")


def _build_two_stage(
    name: str, num_classes: int, backbone: str, pretrained_backbone: bool, overrides: dict[str, Any]
) -> TwoStageDetector:
    cfg = _settings(name, overrides)
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone={backbone!r} is not available; use one of {BACKBONES}.")
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must count the foreground classes (9 for OralXrays-9).")
    body = _backbone(backbone, pretrained_backbone, cfg["trainable_backbone_layers"], cfg["freeze_batchnorm"])
    strides = BACKBONE_STRIDES[backbone]

    anchor_generator = make_anchor_generator(
        strides, anchors=cfg["anchors"], anchor_sizes=cfg["anchor_sizes"], aspect_ratios=cfg["aspect_ratios"]
    )
    if name in _USES_DI_RPN:
        assigner = DynamicIoUAssigner(
            pos_iou_thr=cfg["rpn_fg_iou_thresh"],
            neg_iou_thr=cfg["rpn_bg_iou_thresh"],
            base_pos_iou_thr=cfg["di_rpn_base_pos_iou_thr"],
            low_quality_iou_thr=cfg["di_rpn_low_quality_iou_thr"],
            slope=cfg["di_rpn_slope"],
            base_size=cfg["di_rpn_base_size"],
            min_pos_iou=cfg["di_rpn_min_pos_iou"],
            cap_at_base=cfg["di_rpn_cap_at_base"],
            scale_ratio=cfg["di_rpn_scale_ratio"],
        )
    else:
        assigner = FixedIoUAssigner(pos_iou_thr=cfg["rpn_fg_iou_thresh"], neg_iou_thr=cfg["rpn_bg_iou_thresh"])
    rpn = AssignerRPN(
        anchor_generator=anchor_generator,
        head=RPNHead(body.out_channels, anchor_generator.num_anchors_per_location()[0]),
        assigner=assigner,
        batch_size_per_image=cfg["rpn_batch_size_per_image"],
        positive_fraction=cfg["rpn_positive_fraction"],
        pre_nms_top_n={"training": cfg["rpn_pre_nms_top_n_train"], "testing": cfg["rpn_pre_nms_top_n_test"]},
        post_nms_top_n={"training": cfg["rpn_post_nms_top_n_train"], "testing": cfg["rpn_post_nms_top_n_test"]},
        nms_thresh=cfg["rpn_nms_thresh"],
        score_thresh=cfg["rpn_score_thresh"],
    )

    rep = cfg["representation_size"]
    cb_scr = None
    if name in _USES_CB_SCR:
        cb_scr = CBSCR(
            in_dim=rep,
            hidden_dim=cfg["cb_scr_hidden_dim"],
            out_dim=cfg["cb_scr_out_dim"],
            num_classes=num_classes + 1,
            temperature=cfg["cb_scr_temperature"],
            weight=cfg["cb_scr_weight"],
        )
    levels = [str(i) for i in range(len(strides) - 1)]  # RoIAlign on every level but the pooled one
    roi_heads = CBSCRRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(body.out_channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        cb_scr=cb_scr,
        fg_iou_thresh=cfg["box_fg_iou_thresh"],
        bg_iou_thresh=cfg["box_bg_iou_thresh"],
        batch_size_per_image=cfg["box_batch_size_per_image"],
        positive_fraction=cfg["box_positive_fraction"],
        bbox_reg_weights=cfg["bbox_reg_weights"],
        score_thresh=cfg["box_score_thresh"],
        nms_thresh=cfg["box_nms_thresh"],
        detections_per_img=cfg["box_detections_per_img"],
    )
    transform = GeneralizedRCNNTransform(
        min_size=cfg["min_size"], max_size=cfg["max_size"], image_mean=list(cfg["image_mean"]), image_std=list(cfg["image_std"])
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
        from .moqam import build_moqam

        return build_moqam(num_classes=num_classes, backbone=backbone, pretrained_backbone=pretrained_backbone, **overrides)
    if name in ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn"):
        return _build_two_stage(name, num_classes, backbone, pretrained_backbone, overrides)
    raise ConfigError(f"build_model: unknown model name {name!r}; use one of {MODEL_NAMES}.")
