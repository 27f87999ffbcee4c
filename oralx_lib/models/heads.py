"""The RPN and the RoI head, built from one set of options for every detector.

The two-stage detectors (:mod:`oralx_lib.models.factory`) and MOQAM's collaborative branches
(:mod:`oralx_lib.models.moqam_branches`) assemble their RPN with :func:`build_rpn` and their
RoI head with :func:`build_roi_heads`, so an option has one name and one meaning everywhere:

- :data:`RPN_DEFAULTS`: anchors, the fixed IoU rule's thresholds, sampling, proposals kept
  before / after NMS in training and testing;
- :data:`DI_RPN_DEFAULTS`: DI-RPN's constants (used when ``di_rpn`` is on), including its own
  upper clamp ``di_rpn_max_pos_iou_thr`` (the fixed rule's ``rpn_fg_iou_thresh`` is a
  different setting, with the same value 0.7);
- :data:`ROI_DEFAULTS`: the box head's size, RoI sampling and the test-time filtering;
- :data:`CB_SCR_DEFAULTS`: CB-SCR's loss weight, temperature and projection sizes.

The values are torchvision's or the release's. Where the two differ, the two-stage detectors
(the book's Faster R-CNN from torchvision parts) keep torchvision's and MOQAM's branches take
the release's (:data:`oralx_lib.models.moqam_branches.BRANCH_DEFAULTS`): the RPN's box loss
(``rpn_box_loss``: smooth L1 / L1), RoIAlign (``roi_sampling_ratio`` 2 / 0 = adaptive,
``roi_aligned`` False / True) and the RoI head's initialisation (``roi_head_init``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead

from ..errors import ConfigError
from .assigners import FixedIoUAssigner
from .cb_scr import CBSCR
from .di_rpn import DynamicIoUAssigner
from .rcnn import (
    ROI_HEAD_INITS,
    AssignerRPN,
    CBSCRRoIHeads,
    RoIAlignPooler,
    init_roi_head_like_release,
    make_anchor_generator,
)

#: The RPN's options (the fixed IoU rule's thresholds are ``rpn_fg/bg_iou_thresh``).
RPN_DEFAULTS: dict[str, Any] = {
    "anchors": "released",
    "anchor_sizes": None,
    "aspect_ratios": (0.5, 1.0, 2.0),
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
    "rpn_box_loss": "smooth_l1",
}
#: DI-RPN's options (the released constants; negatives below ``rpn_bg_iou_thresh``).
DI_RPN_DEFAULTS: dict[str, Any] = {
    "di_rpn_max_pos_iou_thr": 0.7,
    "di_rpn_base_pos_iou_thr": 0.55,
    "di_rpn_low_quality_iou_thr": 0.5,
    "di_rpn_slope": 0.15,
    "di_rpn_base_size": 12.0,
    "di_rpn_min_pos_iou": 0.3,
    "di_rpn_cap_at_base": True,
    "di_rpn_scale_ratio": 1.0,
}
#: The RoI head's options.
ROI_DEFAULTS: dict[str, Any] = {
    "representation_size": 1024,
    "box_fg_iou_thresh": 0.5,
    "box_bg_iou_thresh": 0.5,
    "box_batch_size_per_image": 512,
    "box_positive_fraction": 0.25,
    "bbox_reg_weights": None,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
    "roi_sampling_ratio": 2,
    "roi_aligned": False,
    "roi_head_init": "torchvision",
}
#: CB-SCR's options (the released settings).
CB_SCR_DEFAULTS: dict[str, Any] = {
    "cb_scr_weight": 1.0,
    "cb_scr_temperature": 1.0,
    "cb_scr_hidden_dim": 512,
    "cb_scr_out_dim": 1024,
}


def make_assigner(options: Mapping[str, Any], *, di_rpn: bool):
    """The RPN's anchor assigner: DI-RPN (:class:`DynamicIoUAssigner`) or the fixed IoU rule."""
    opts = {**RPN_DEFAULTS, **DI_RPN_DEFAULTS, **options}
    if di_rpn:
        return DynamicIoUAssigner(
            pos_iou_thr=opts["di_rpn_max_pos_iou_thr"],
            neg_iou_thr=opts["rpn_bg_iou_thresh"],
            base_pos_iou_thr=opts["di_rpn_base_pos_iou_thr"],
            low_quality_iou_thr=opts["di_rpn_low_quality_iou_thr"],
            slope=opts["di_rpn_slope"],
            base_size=opts["di_rpn_base_size"],
            min_pos_iou=opts["di_rpn_min_pos_iou"],
            cap_at_base=opts["di_rpn_cap_at_base"],
            scale_ratio=opts["di_rpn_scale_ratio"],
        )
    return FixedIoUAssigner(pos_iou_thr=opts["rpn_fg_iou_thresh"],
                            neg_iou_thr=opts["rpn_bg_iou_thresh"])


def build_rpn(options: Mapping[str, Any], *, in_channels: int, strides: Sequence[int],
              di_rpn: bool) -> AssignerRPN:
    """An :class:`AssignerRPN` on feature maps of ``in_channels`` at ``strides``.

    ``options``: keys of :data:`RPN_DEFAULTS` and :data:`DI_RPN_DEFAULTS` (missing ones take
    the defaults); ``di_rpn`` picks the assigner (:func:`make_assigner`).
    """
    opts = {**RPN_DEFAULTS, **DI_RPN_DEFAULTS, **options}
    anchor_generator = make_anchor_generator(strides, anchors=opts["anchors"],
                                             anchor_sizes=opts["anchor_sizes"],
                                             aspect_ratios=opts["aspect_ratios"])
    return AssignerRPN(
        anchor_generator=anchor_generator,
        head=RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0]),
        assigner=make_assigner(opts, di_rpn=di_rpn),
        batch_size_per_image=opts["rpn_batch_size_per_image"],
        positive_fraction=opts["rpn_positive_fraction"],
        pre_nms_top_n={"training": opts["rpn_pre_nms_top_n_train"],
                       "testing": opts["rpn_pre_nms_top_n_test"]},
        post_nms_top_n={"training": opts["rpn_post_nms_top_n_train"],
                        "testing": opts["rpn_post_nms_top_n_test"]},
        nms_thresh=opts["rpn_nms_thresh"],
        score_thresh=opts["rpn_score_thresh"],
        box_loss=opts["rpn_box_loss"],
    )


def build_roi_heads(options: Mapping[str, Any], *, in_channels: int,
                    featmap_names: Sequence[str], strides: Sequence[int], num_classes: int,
                    cb_scr: bool) -> CBSCRRoIHeads:
    """A :class:`CBSCRRoIHeads`: RoIAlign 7x7 on ``featmap_names`` (of the given ``strides``;
    :class:`RoIAlignPooler` with ``roi_sampling_ratio`` and ``roi_aligned``), two FC layers of
    ``representation_size``, a classifier over ``num_classes + 1`` (background 0), and CB-SCR
    on the RoI features when ``cb_scr``. ``roi_head_init``: ``"torchvision"`` (its layers'
    defaults) or ``"released"`` (:func:`init_roi_head_like_release`).

    ``options``: keys of :data:`ROI_DEFAULTS` and :data:`CB_SCR_DEFAULTS`.
    """
    opts = {**ROI_DEFAULTS, **CB_SCR_DEFAULTS, **options}
    if opts["roi_head_init"] not in ROI_HEAD_INITS:
        raise ConfigError(
            f"roi_head_init={opts['roi_head_init']!r}: choose one of {ROI_HEAD_INITS}."
        )
    rep = opts["representation_size"]
    module = None
    if cb_scr:
        module = CBSCR(in_dim=rep, hidden_dim=opts["cb_scr_hidden_dim"],
                       out_dim=opts["cb_scr_out_dim"], num_classes=num_classes + 1,
                       temperature=opts["cb_scr_temperature"], weight=opts["cb_scr_weight"])
    box_head = TwoMLPHead(in_channels * 7 * 7, rep)
    box_predictor = FastRCNNPredictor(rep, num_classes + 1)
    if opts["roi_head_init"] == "released":
        init_roi_head_like_release(box_head, box_predictor)
    return CBSCRRoIHeads(
        box_roi_pool=RoIAlignPooler(featmap_names, strides, output_size=7,
                                    sampling_ratio=opts["roi_sampling_ratio"],
                                    aligned=opts["roi_aligned"]),
        box_head=box_head,
        box_predictor=box_predictor,
        cb_scr=module,
        fg_iou_thresh=opts["box_fg_iou_thresh"],
        bg_iou_thresh=opts["box_bg_iou_thresh"],
        batch_size_per_image=opts["box_batch_size_per_image"],
        positive_fraction=opts["box_positive_fraction"],
        bbox_reg_weights=opts["bbox_reg_weights"],
        score_thresh=opts["box_score_thresh"],
        nms_thresh=opts["box_nms_thresh"],
        detections_per_img=opts["box_detections_per_img"],
    )


__all__ = [
    "CB_SCR_DEFAULTS",
    "DI_RPN_DEFAULTS",
    "ROI_DEFAULTS",
    "RPN_DEFAULTS",
    "build_roi_heads",
    "build_rpn",
    "make_assigner",
]
