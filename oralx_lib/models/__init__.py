"""Detectors: anchor assigners (fixed IoU, DI-RPN), CB-SCR, two-stage detectors, the complete
MOQAM, and ``build_model``.

``build_model(name, ...)`` is the entry point; the parts are public so the book can assemble
them differently. One file per idea: ``backbones`` (and the freezing rule), ``assigners`` (the
fixed IoU rule), ``di_rpn``, ``cb_scr``, ``rcnn`` (the two-stage detector's RPN / RoI head
classes), ``heads`` (building them from options), ``factory`` (``build_model``), and MOQAM's
parts: ``deformable_attention``, ``moqam_transformer``, ``moqam_denoising``, ``moqam_losses``,
``moqam_branches`` (the collaborative branches), ``moqam`` (the detector).
"""

from ..errors import PretrainedWeightsError
from ..profiles import MOQAM_PROFILES
from .assigners import FixedIoUAssigner, safe_box_iou
from .backbones import BACKBONE_STRIDES, BACKBONES, IMAGENET_MEAN, IMAGENET_STD
from .cb_scr import CBSCR, balanced_supcon_loss
from .deformable_attention import MSDeformAttn, multi_scale_deformable_attention
from .di_rpn import DynamicIoUAssigner
from .factory import MODEL_NAMES, build_model
from .heads import build_roi_heads, build_rpn
from .moqam import MOQAM, build_moqam, soft_nms
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
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAMES",
    "MOQAM",
    "MOQAM_PROFILES",
    "AssignerRPN",
    "CBSCR",
    "CBSCRRoIHeads",
    "DynamicIoUAssigner",
    "FixedIoUAssigner",
    "MSDeformAttn",
    "PretrainedWeightsError",
    "TwoStageDetector",
    "balanced_supcon_loss",
    "build_model",
    "build_moqam",
    "build_roi_heads",
    "build_rpn",
    "make_anchor_generator",
    "multi_scale_deformable_attention",
    "released_anchor_sizes",
    "safe_box_iou",
    "soft_nms",
    "torchvision_anchor_sizes",
]
