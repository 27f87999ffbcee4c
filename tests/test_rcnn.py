"""Two-stage detectors: build_model, pinned train steps, the eval contract, injected parts."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d

from oralx_lib.models import (
    BACKBONE_STRIDES,
    AssignerRPN,
    CBSCRRoIHeads,
    DynamicIoUAssigner,
    FixedIoUAssigner,
    PretrainedWeightsError,
    TwoStageDetector,
    build_model,
    make_anchor_generator,
    released_anchor_sizes,
)
from oralx_lib.errors import ConfigError

SMALL = dict(
    min_size=96, max_size=128, rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=200, box_batch_size_per_image=64
)
TWO_STAGE = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn")


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 96, 128, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0], [60.0, 30.0, 70.0, 38.0]]), "labels": torch.tensor([1, 5])},
        {"boxes": torch.tensor([[5.0, 5.0, 100.0, 90.0]]), "labels": torch.tensor([9])},
    ]
    return images, targets


# Computed once on this code (seed 0 for the weights, seed 1 for the samplers), then pinned.
PINNED = {
    "faster_rcnn": {
        "loss_box_reg": 0.014752720482647419,
        "loss_classifier": 2.3442304134368896,
        "loss_objectness": 0.7150321006774902,
        "loss_rpn_box_reg": 0.015867212787270546,
    },
    "di_rpn": {
        "loss_box_reg": 0.014752720482647419,
        "loss_classifier": 2.3322534561157227,
        "loss_objectness": 0.7093832492828369,
        "loss_rpn_box_reg": 0.04039740562438965,
    },
    "cb_scr": {
        "loss_box_reg": 0.016448406502604485,
        "loss_cb_scr": 2.065535306930542,
        "loss_classifier": 2.0839569568634033,
        "loss_objectness": 0.7150321006774902,
        "loss_rpn_box_reg": 0.015867212787270546,
    },
    "moqam_rcnn": {
        "loss_box_reg": 0.016448406502604485,
        "loss_cb_scr": 2.067448854446411,
        "loss_classifier": 2.0695528984069824,
        "loss_objectness": 0.7093832492828369,
        "loss_rpn_box_reg": 0.04039740562438965,
    },
}


@pytest.mark.parametrize("name", TWO_STAGE)
def test_seeded_train_step_pinned_losses(name):
    torch.manual_seed(0)
    model = build_model(name, backbone="resnet18", **SMALL).train()
    images, targets = tiny_batch()
    torch.manual_seed(1)
    losses = model(images, targets)
    assert set(losses) == set(PINNED[name])  # loss_cb_scr exactly in the CB-SCR models
    for key, value in PINNED[name].items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    head_before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(head_before, model.roi_heads.box_predictor.cls_score.weight)
    if "loss_cb_scr" in losses:
        assert model.roi_heads.cb_scr.feature_mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3"])
def test_eval_contract(backbone):
    torch.manual_seed(0)
    model = build_model("moqam_rcnn", backbone=backbone, **SMALL).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 150)]
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape == (det["labels"].shape[0], 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64
        assert det["labels"].numel() > 0
        assert ((det["labels"] >= 1) & (det["labels"] <= 9)).all()
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        h, w = img.shape[-2:]
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w + 1e-3).all() and (b[:, 3] <= h + 1e-3).all()


def test_train_step_on_mobilenet_and_an_image_without_boxes():
    torch.manual_seed(0)
    model = build_model("moqam_rcnn", backbone="mobilenet_v3", **SMALL).train()
    images, targets = tiny_batch()
    targets[1] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_di_rpn_adds_positives_for_a_small_object():
    # A 14 x 14 object: thr = 0.55 + 0.15 log2(14/12) = 0.583, capped at 0.55 as released; fixed rule 0.7.
    rpns = {
        "faster_rcnn": build_model("faster_rcnn", backbone="resnet18", **SMALL).rpn,
        "di_rpn": build_model("di_rpn", backbone="resnet18", **SMALL).rpn,
        "uncapped": build_model("di_rpn", backbone="resnet18", di_rpn_cap_at_base=False, **SMALL).rpn,
    }
    assert isinstance(rpns["di_rpn"].assigner, DynamicIoUAssigner)
    assert isinstance(rpns["faster_rcnn"].assigner, FixedIoUAssigner)
    images = ImageList(torch.zeros(1, 3, 96, 128), [(96, 128)])
    features = [torch.zeros(1, 256, 96 // s, 128 // s) for s in BACKBONE_STRIDES["resnet18"]]
    anchors = rpns["faster_rcnn"].anchor_generator(images, features)
    targets = [{"boxes": torch.tensor([[50.0, 40.0, 64.0, 54.0]]), "labels": torch.tensor([2])}]
    positives = {}
    for name, rpn in rpns.items():
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        positives[name] = int((labels[0] == 1).sum())
        assert torch.equal(matched[0][labels[0] == 1], targets[0]["boxes"].expand(positives[name], 4))
    iou = torchvision.ops.box_iou(targets[0]["boxes"], anchors[0])[0]
    best = iou == iou.max()
    thr = 0.55 + 0.15 * torch.log2(torch.tensor(14 / 12))
    assert positives["faster_rcnn"] == int(((iou >= 0.7) | best).sum()) == 1
    assert positives["di_rpn"] == int(((iou >= 0.55) | best).sum()) == 7
    assert positives["uncapped"] == int(((iou >= thr) | best).sum()) == 3


def test_parts_are_injected_not_patched():
    torch.manual_seed(0)
    model = build_model("moqam_rcnn", backbone="resnet18", **SMALL)
    assert isinstance(model, TwoStageDetector)
    assert isinstance(model.rpn, AssignerRPN) and not hasattr(model.rpn, "proposal_matcher")
    assert isinstance(model.roi_heads, CBSCRRoIHeads) and model.roi_heads.cb_scr is not None
    assert build_model("di_rpn", backbone="resnet18").roi_heads.cb_scr is None
    # A hand-built RPN on arbitrary feature maps, with a custom assigner.
    generator = make_anchor_generator((8, 16), anchors="torchvision")
    head = torchvision.models.detection.rpn.RPNHead(32, generator.num_anchors_per_location()[0])
    rpn = AssignerRPN(anchor_generator=generator, head=head, assigner=DynamicIoUAssigner(cap_at_base=False)).train()
    feats = {"a": torch.randn(1, 32, 8, 8), "b": torch.randn(1, 32, 4, 4)}
    boxes, losses = rpn(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), feats, [{"boxes": torch.tensor([[8.0, 8, 30, 40]])}])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"} and boxes[0].shape[1] == 4


def test_overrides_reach_the_detector():
    model = build_model(
        "moqam_rcnn", backbone="resnet18", min_size=300, max_size=500, anchors="torchvision", rpn_nms_thresh=0.6,
        box_detections_per_img=20, cb_scr_weight=0.5, cb_scr_temperature=0.2, di_rpn_cap_at_base=False, di_rpn_slope=0.1,
    )
    assert model.transform.min_size == (300,) and model.transform.max_size == 500
    assert model.rpn.anchor_generator.sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    assert model.rpn.nms_thresh == 0.6 and model.roi_heads.detections_per_img == 20
    assert model.roi_heads.cb_scr.weight == 0.5 and model.roi_heads.cb_scr.temperature == 0.2
    assert model.rpn.assigner.cap_at_base is False and model.rpn.assigner.slope == 0.1
    released = build_model("faster_rcnn", backbone="resnet18").rpn.anchor_generator
    assert released.num_anchors_per_location() == [9] * 5


def test_released_anchor_sizes_hand_computed():
    sizes = released_anchor_sizes((4, 8))
    assert sizes[0] == pytest.approx((16.0, 16.0 * 2 ** (1 / 3), 16.0 * 2 ** (2 / 3)))
    assert sizes[1] == pytest.approx((32.0, 40.3175, 50.7968), rel=1e-5)


def test_configuration_errors_name_the_problem():
    with pytest.raises(ConfigError, match="faster_rcnn.*moqam_rcnn"):
        build_model("yolo")
    with pytest.raises(ConfigError, match="'rpn_nms_treshold'"):
        build_model("faster_rcnn", backbone="resnet18", rpn_nms_treshold=0.5)
    with pytest.raises(ConfigError, match="di_rpn_slope.*DI-RPN"):
        build_model("cb_scr", backbone="resnet18", di_rpn_slope=0.1)
    with pytest.raises(ConfigError, match="cb_scr_weight.*CB-SCR"):
        build_model("di_rpn", backbone="resnet18", cb_scr_weight=2.0)
    with pytest.raises(ConfigError, match="anchors="):
        build_model("faster_rcnn", backbone="resnet18", anchors="ssd")
    with pytest.raises(ConfigError, match="backbone="):
        build_model("faster_rcnn", backbone="vgg16")


def test_moqam_name_dispatches_to_build_moqam():
    from oralx_lib.models import MOQAM

    model = build_model("moqam", backbone="resnet18", num_queries=300)
    assert isinstance(model, MOQAM)
    # the keywords reach build_moqam: 9 classes, a ResNet-18 (512 channels in C5), 300 queries
    assert model.num_classes == 9 and model.num_queries == 300
    assert model.neck.lateral[-1][0].in_channels == 512


@pytest.mark.parametrize("stride_backbone", ["resnet18", "mobilenet_v3"])
def test_backbone_strides_table_is_right(stride_backbone):
    model = build_model("faster_rcnn", backbone=stride_backbone).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert tuple(128 // f.shape[-1] for f in feats.values()) == BACKBONE_STRIDES[stride_backbone]


def test_pretrained_download_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError, match="pretrained_backbone=False"):
        build_model("faster_rcnn", backbone="resnet18", pretrained_backbone=True)


def test_pretrained_backbone_is_frozen_like_the_release(monkeypatch):
    # Serve a random ResNet-18's weights instead of downloading ImageNet's.
    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: state)
    model = build_model("faster_rcnn", backbone="resnet18", pretrained_backbone=True)
    body = model.backbone.body
    torch.testing.assert_close(body.conv1.weight, state["conv1.weight"])
    for name, param in body.named_parameters():
        frozen = name.startswith(("conv1", "bn1", "layer1"))
        assert param.requires_grad != frozen, name
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    # From scratch everything trains, with ordinary BatchNorm (torchvision's rule).
    scratch = build_model("faster_rcnn", backbone="resnet18")
    assert all(p.requires_grad for p in scratch.backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.backbone.modules())


def test_di_rpn_upper_clamp_is_its_own_option():
    # rpn_fg_iou_thresh is the fixed rule's threshold; DI-RPN's clamp is di_rpn_max_pos_iou_thr
    model = build_model("di_rpn", backbone="resnet18", rpn_fg_iou_thresh=0.6)
    assert model.rpn.assigner.pos_iou_thr == 0.7 and model.rpn.assigner.neg_iou_thr == 0.3
    model = build_model("di_rpn", backbone="resnet18", di_rpn_max_pos_iou_thr=0.65)
    assert model.rpn.assigner.pos_iou_thr == 0.65
    baseline = build_model("faster_rcnn", backbone="resnet18", rpn_fg_iou_thresh=0.6)
    assert baseline.rpn.assigner.pos_iou_thr == 0.6
    with pytest.raises(ConfigError, match="di_rpn_max_pos_iou_thr.*DI-RPN"):
        build_model("faster_rcnn", backbone="resnet18", di_rpn_max_pos_iou_thr=0.65)


def test_moqam_branches_share_the_two_stage_option_names():
    from oralx_lib.models.moqam_branches import build_collaborative_branches

    branches = build_collaborative_branches(
        ("rpn", "roi"), num_classes=9, embed_dim=64, rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_test=50, box_batch_size_per_image=64, box_fg_iou_thresh=0.6,
        box_bg_iou_thresh=0.4, di_rpn_slope=0.1, cb_scr_temperature=0.5)
    assert branches.rpn._pre_nms_top_n == {"training": 300, "testing": 4000}
    assert branches.rpn._post_nms_top_n == {"training": 1000, "testing": 50}
    assert branches.rpn.assigner.slope == 0.1
    heads = branches.roi.roi_heads
    assert heads.fg_bg_sampler.batch_size_per_image == 64
    assert (heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold) == (0.6, 0.4)
    assert heads.cb_scr.temperature == 0.5
