"""oralx_lib.book.rpn_stats and rpn_figures: what the RPN sees, measured on hand-made cases and a tiny synthetic set."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from oralx_lib.book import rpn_stats as rs, rpn_figures as rf, explorers
from oralx_lib.models import DynamicIoUAssigner, FixedIoUAssigner, build_model
from oralx_lib.errors import ConfigError
from oralx_lib.book.selfcheck.di_rpn import reference_best_anchor_iou


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Input 80 x 128: half the stored 160 x 256 on both axes.
    return build_model("faster_rcnn", backbone="resnet18", min_size=80, max_size=128,
                       rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20).eval()


def test_positives_per_gt_hand_case():
    matches = torch.tensor([0, -1, 2, -2, 0, 2, 2])
    assert rs.positives_per_gt(matches, 4).tolist() == [2, 0, 3, 0]
    assert rs.positives_per_gt(torch.tensor([-1, -2]), 2).tolist() == [0, 0]


def test_above_threshold_counts_the_threshold_test_only():
    iou = torch.tensor([[0.8, 0.6, 0.2, 0.1],
                        [0.1, 0.65, 0.5, 0.05]])
    # anchor 0 -> GT 0 (0.8 >= 0.7); anchor 1 -> GT 1 (0.65 >= 0.6); anchor 2: 0.5 < 0.6.
    assert rs.above_threshold_per_gt(iou, torch.tensor([0.7, 0.6])).tolist() == [1, 1]
    assert rs.above_threshold_per_gt(torch.zeros(0, 3), torch.zeros(0)).tolist() == []


def test_rule_thresholds():
    boxes = torch.tensor([[0.0, 0.0, 24.0, 24.0], [0.0, 0.0, 6.0, 6.0]])
    assert rs.rule_thresholds(FixedIoUAssigner(0.7, 0.3), boxes).tolist() == pytest.approx([0.7, 0.7])
    assert rs.rule_thresholds(DynamicIoUAssigner(cap_at_base=True), boxes).tolist() == pytest.approx([0.55, 0.5])
    assert rs.rule_thresholds(DynamicIoUAssigner(cap_at_base=False), boxes).tolist() == pytest.approx([0.7, 0.5])
    with pytest.raises(ConfigError, match="effective_thresholds"):
        rs.rule_thresholds(object(), boxes)


def test_network_view_resizes_boxes_and_makes_every_anchor(tiny_set, model):
    image, target = tiny_set[0]
    view = rs.network_view(model, image, target, keep_features=True)
    assert view.image_size == (80, 128)
    assert view.scale == pytest.approx((0.5, 0.5))
    assert torch.allclose(view.boxes, target["boxes"] * 0.5, atol=1e-4)
    assert view.labels.tolist() == target["labels"].tolist()
    assert view.input_image.shape == (3, 80, 128)
    assert 0.0 <= float(view.input_image.min()) and float(view.input_image.max()) <= 1.0
    assert len(view.anchors) == sum(view.anchors_per_level)
    # Strides 4, 8, 16, 32 on the 128 x 96 padded input (a multiple of 32), 9 anchors per cell.
    assert view.strides[:4] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    # the pooled level's anchors are 64 apart too, though 96 // 2 = 48 (torchvision's inference)
    assert view.strides[4] == (64, 64)
    level64 = view.anchors[-view.anchors_per_level[4]:].view(2, 2, 9, 4)
    assert float(level64[1, 0, 0, 1] - level64[0, 0, 0, 1]) == 64.0
    assert view.anchors_per_level[0] == (96 // 4) * (128 // 4) * 9
    assert set(view.features) == {"0", "1", "2", "3", "pool"}
    assert model.training is False


def test_network_view_needs_a_two_stage_model(tiny_set):
    with pytest.raises(ConfigError, match="two-stage"):
        rs.network_view(nn.Linear(2, 2), tiny_set[0][0])


def test_gt_table_matches_the_assigners(tiny_set, model):
    rules = {"fixed": FixedIoUAssigner(0.7, 0.3), "di": DynamicIoUAssigner()}
    table = rs.gt_table(model, tiny_set, rules, progress=False)
    rec = tiny_set.record(0)
    n0 = len(rec["boxes"])
    assert len(table) == sum(len(tiny_set.record(i)["boxes"]) for i in range(len(tiny_set)))
    view = rs.network_view(model, *tiny_set[0])
    iou = box_iou(view.boxes, view.anchors)
    first = table[table.image == 0]
    assert first["size"].to_numpy() == pytest.approx(((view.boxes[:, 2:] - view.boxes[:, :2]).prod(1).sqrt()).numpy(),
                                                     rel=1e-4)
    assert first["best_iou"].to_numpy() == pytest.approx(iou.max(1).values.numpy(), abs=1e-5)
    for name, rule in rules.items():
        want = rs.positives_per_gt(rule(iou, view.boxes), n0)
        assert first[f"pos_{name}"].tolist() == want.tolist()
    # The fixed rule's low-quality matches only add positives.
    assert (table["pos_fixed"] >= table["above_fixed"]).all()
    assert list(table["class"].cat.categories)[0] == "Apical Periodontitis"


class _ProposalsFromTargets(nn.Module):
    """An RPN stand-in that proposes the resized ground truth, optionally shifted."""

    def __init__(self, boxes, shift, anchor_generator):
        super().__init__()
        self.boxes, self.shift = boxes, shift
        self.anchor_generator = anchor_generator

    def forward(self, images, features):
        boxes = self.boxes.pop(0).clone()
        boxes[:, [0, 2]] += self.shift * (boxes[:, 2] - boxes[:, 0])[:, None]
        return [boxes], {}


@pytest.mark.parametrize("shift, recalled, best", [(0.0, True, 1.0), (0.5, False, 1 / 3)])
def test_proposal_table_compares_in_input_pixels(tiny_set, model, shift, recalled, best):
    boxes = [tiny_set[i][1]["boxes"] * 0.5 for i in range(len(tiny_set))]
    real_rpn = model.rpn
    model.rpn = _ProposalsFromTargets(boxes, shift, real_rpn.anchor_generator)
    try:
        table = rs.proposal_table(model, tiny_set, progress=False)
    finally:
        model.rpn = real_rpn
    assert table["recalled"].eq(recalled).all()
    assert table["best_iou"].to_numpy() == pytest.approx(best, abs=1e-4)


def test_proposal_table_with_the_real_rpn(tiny_set, model):
    table = rs.proposal_table(model, tiny_set, indices=[0], progress=False)
    assert len(table) == len(tiny_set.record(0)["boxes"])
    assert (table["proposals"] <= 20).all()
    assert (table["recalled"] == (table["best_iou"] >= 0.5)).all()


def test_recall_by_size_and_class():
    table = pd.DataFrame({"size": [5.0, 7.0, 10.0, 40.0], "recalled": [True, False, True, True],
                          "class": pd.Categorical(["Decay", "Decay", "Implant", "Implant"])})
    by_size = rs.recall_by(table, "size", bins=(0, 8, 16, float("inf")))
    assert by_size.index.tolist() == ["< 8", "8-16", ">= 16"]
    assert by_size["mean"].tolist() == [0.5, 1.0, 1.0]
    assert by_size["count"].tolist() == [2, 1, 1]
    by_class = rs.recall_by(table, "class")
    assert by_class.loc["Decay", "mean"] == 0.5
    with pytest.raises(ConfigError, match="size"):
        rs.recall_by(table, "colour")
    ax = rf.plot_recall({"a": table, "b": table}, "size", bins=(0, 8, 16, float("inf")))
    assert len(ax.patches) == 6
    plt.close(ax.figure)


def test_best_iou_by_size_respects_the_analytic_bounds():
    # One level: 16-px square anchors every 4 px over a 200 x 200 area.
    centres = torch.arange(0, 200, 4.0)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    c = torch.stack([cx.flatten(), cy.flatten()], 1)
    anchors = torch.cat([c - 8, c + 8], 1)
    sizes = [6.0, 12.0, 16.0, 24.0]
    best = rs.best_iou_by_size(anchors, sizes, period=4.0, positions=200, origin=(90.0, 90.0))
    assert best.shape == (4, 200)
    for row, s in zip(best, sizes):
        guaranteed = reference_best_anchor_iou(s, 16.0, 4.0)
        centred = min(s, 16.0) ** 2 / max(s, 16.0) ** 2
        assert float(row.min()) >= guaranteed - 1e-5
        assert float(row.max()) <= centred + 1e-5
        if guaranteed < centred - 1e-6:  # some positions then do better than the worst one
            assert float(row.max()) > guaranteed + 1e-3
        else:  # a small object inside a bigger anchor: the same IoU everywhere
            assert float(row.max()) == pytest.approx(guaranteed, abs=1e-5)


def test_figures_report_the_assigners_counts(tiny_set, model):
    image, target = tiny_set[0]
    view = rs.network_view(model, image, target)
    rule = FixedIoUAssigner(0.7, 0.3)
    matches = rule.assign(view.anchors, view.boxes)
    fig, ax = plt.subplots()
    counts = rf.draw_assignment(ax, view, matches, gt_index=[0])
    assert counts == {"positive": int((matches >= 0).sum()), "ignored": int((matches == -2).sum()),
                      "negative": int((matches == -1).sum())}
    rf.assignment_legend(fig)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2)
    info = rf.draw_threshold_setting(axes, 20.0, view.anchors, curve_sizes=[8.0, 20.0, 40.0])
    gt = rs.square_boxes(20.0, ((view.anchors[:, :2].min(0).values + view.anchors[:, 2:].max(0).values) / 2)
                         .floor()[None])
    iou = box_iou(gt, view.anchors)
    for name, r in rs.default_rules().items():
        assert info["positives"][name] == int((r(iou, gt) >= 0).sum())
    assert info["thr_released"] == pytest.approx(0.55)
    assert info["thr_clamped"] == pytest.approx(0.55 + 0.15 * torch.log2(torch.tensor(20 / 12)).item())
    assert info["best_iou"] == pytest.approx(float(iou.max()))
    plt.close(fig)


def test_threshold_explorer_builds(tiny_set, model):
    pytest.importorskip("ipywidgets")
    view = rs.network_view(model, torch.zeros(3, 160, 256))
    box = explorers.threshold_explorer(view.anchors, width=6)
    assert type(box).__name__ == "VBox"
    plt.close("all")


class _TinyProposals(nn.Module):
    """An RPN stand-in whose proposals are 0.5 x 0.2 px slivers (a collapsed regression)."""

    def __init__(self, anchor_generator):
        super().__init__()
        self.anchor_generator = anchor_generator

    def forward(self, images, features):
        return [torch.tensor([[10.0, 10.0, 10.5, 10.2], [20.0, 20.0, 20.5, 20.2]])], {}


def test_proposal_sizes_detects_a_collapsed_regression(tiny_set, model):
    real_rpn = model.rpn
    try:
        model.rpn = _ProposalsFromTargets([tiny_set[i][1]["boxes"] * 0.5 for i in range(len(tiny_set))],
                                          0.0, real_rpn.anchor_generator)
        healthy = rs.proposal_sizes(model, tiny_set)
        model.rpn = _TinyProposals(real_rpn.anchor_generator)
        collapsed = rs.proposal_sizes(model, tiny_set, indices=[0])
    finally:
        model.rpn = real_rpn
    assert not healthy["collapsed"]
    assert healthy["proposal_wh"] == pytest.approx(healthy["gt_wh"])
    assert collapsed["collapsed"]
    assert collapsed["proposal_wh"] == pytest.approx((0.5, 0.2), rel=1e-4)
    assert set(collapsed["table"]["kind"]) == {"proposal", "ground truth"}
