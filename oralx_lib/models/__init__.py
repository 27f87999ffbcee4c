"""Detectors: anchor assigners (fixed IoU, DI-RPN), CB-SCR, two-stage detectors, ``build_model``.

``build_model(name, ...)`` is the entry point; the parts are public so the book (and the
query-based MOQAM) can assemble them differently.
"""

from .assigners import DynamicIoUAssigner, FixedIoUAssigner, safe_box_iou
from .cb_scr import CBSCR, balanced_supcon_loss
from .factory import BACKBONE_STRIDES, BACKBONES, MODEL_NAMES, PretrainedWeightsError, build_model
from .rcnn import (
    AssignerRPN,
    CBSCRRoIHeads,
    TwoStageDetector,
    make_anchor_generator,
    released_anchor_sizes,
    torchvision_anchor_sizes,
)

__all__ = [
    "BACKBONES",
    "BACKBONE_STRIDES",
    "MODEL_NAMES",
    "AssignerRPN",
    "CBSCR",
    "CBSCRRoIHeads",
    "DynamicIoUAssigner",
    "FixedIoUAssigner",
    "PretrainedWeightsError",
    "TwoStageDetector",
    "balanced_supcon_loss",
    "build_model",
    "make_anchor_generator",
    "released_anchor_sizes",
    "safe_box_iou",
    "torchvision_anchor_sizes",
]

# The complete query-based MOQAM (Co-DINO query head + collaborative branches).
from .deformable_attention import MSDeformAttn, multi_scale_deformable_attention
from .moqam import MOQAM, MOQAM_PROFILES, build_moqam, soft_nms

__all__ += [
    "MOQAM",
    "MOQAM_PROFILES",
    "MSDeformAttn",
    "build_moqam",
    "multi_scale_deformable_attention",
    "soft_nms",
]
