"""Helpers of the CB-SCR and evaluation chapters: the toy sphere, RoI features of ground-truth
boxes, the detection-error labels, and the figures and explorers built on them."""

import matplotlib
import pytest
import torch

from oralx_lib import CLASSES
from oralx_lib.book import eval_stats as es, eval_figures as ef, explorers
from oralx_lib.models import balanced_supcon_loss, build_model
from oralx_lib.errors import ConfigError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _t(boxes, labels, scores=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
           "labels": torch.tensor(labels, dtype=torch.int64)}
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


# ------------------------------------------------------------------------------ toy sphere
def test_toy_labels_and_errors():
    assert es.toy_labels([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]
    with pytest.raises(ConfigError):
        es.toy_labels([2, 0])


def test_class_mean_angles_hand_case():
    z = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]])
    y = torch.tensor([0, 0, 1, 2])
    angles = es.class_mean_angles(z, y)
    assert angles[0, 1].item() == pytest.approx(90.0, abs=1e-3)
    assert angles[0, 2].item() == pytest.approx(180.0, abs=1e-2)
    assert es.nearest_class_angle(z, y).tolist() == pytest.approx([90.0, 90.0, 90.0], abs=1e-3)


def test_optimise_on_sphere_lowers_the_loss_and_stays_on_the_sphere():
    res = es.optimise_on_sphere([6, 6, 2], balanced_supcon_loss, temperature=0.5, steps=60)
    assert res["loss"][-1] < res["loss"][0]
    assert torch.allclose(res["features"].norm(dim=1), torch.ones(14), atol=1e-5)
    assert res["centers"].shape == (3, 3)
    # Two classes on a circle end up opposite each other.
    res = es.optimise_on_sphere([5, 5], balanced_supcon_loss, temperature=0.5, dim=2,
                                steps=300)
    assert es.class_mean_angles(res["features"], res["labels"])[0, 1] > 170
    with pytest.raises(ConfigError):
        es.optimise_on_sphere([3, 3], balanced_supcon_loss, temperature=0.0)


def test_plot_sphere_and_explorer():
    res = es.optimise_on_sphere([4, 4, 1], balanced_supcon_loss, steps=5)
    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    ef.plot_sphere(ax, res["features"], res["labels"], centers=res["centers"], title="t",
                   arcs_from=2)
    assert len(ax.collections) >= 7  # wire frame, 3 classes, 3 centres
    assert len(ax.texts) == 2  # the arcs from class 2 to the two others, with their angles
    plt.close(fig)
    with pytest.raises(ConfigError):
        ef.plot_sphere(ax, torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64))
    box = explorers.sphere_explorer([4, 4, 1], {"CB-SCR": balanced_supcon_loss}, steps=5,
                             temperatures=(0.5, 1.0))
    assert box.children
    plt.close("all")


# ---------------------------------------------------------------------------- RoI features
def test_pca_2d_recovers_a_line():
    t = torch.linspace(-1, 1, 50)[:, None]
    x = t * torch.tensor([[3.0, 4.0, 0.0]]) + 7.0
    p = es.pca_2d(x)
    assert p.shape == (50, 2)
    assert p[:, 0].abs().max().item() == pytest.approx(5.0, rel=1e-4)
    assert p[:, 1].abs().max().item() < 1e-4


def test_nearest_mean_accuracy_hand_case():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, -0.1]])
    y = torch.tensor([1, 1, 2, 2, 2])
    # The last class-2 point sits among class 1: its own class mean (without it) is far.
    acc = es.nearest_mean_accuracy(z, y)
    assert acc[1] == 1.0
    assert acc[2] == pytest.approx(2 / 3)
    assert 3 not in es.nearest_mean_accuracy(z, torch.tensor([1, 1, 2, 2, 3]))


def test_gt_roi_features_shapes(tiny_set):
    torch.manual_seed(0)
    model = build_model("cb_scr", backbone="resnet18", min_size=80, max_size=128,
                        representation_size=32, cb_scr_hidden_dim=16, cb_scr_out_dim=16)
    feats, labels = es.gt_roi_features(model.train(), tiny_set)
    n = sum(len(tiny_set[i][1]["labels"]) for i in range(len(tiny_set)))
    assert feats.shape == (n, 32) and labels.shape == (n,)
    assert model.training  # put back as it was
    assert set(labels.tolist()) <= set(range(1, len(CLASSES) + 1))
    with pytest.raises(ConfigError):
        es.gt_roi_features(torch.nn.Linear(2, 2), tiny_set)


def test_plot_embedding_draws_each_class():
    fig, ax = plt.subplots()
    ef.plot_embedding(ax, torch.randn(12, 2), torch.tensor([1] * 8 + [7] * 4), legend=True)
    assert len(ax.collections) == 2
    plt.close(fig)


# ------------------------------------------------------------------------ detection errors
def test_classify_detections_each_kind():
    target = _t([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [1, 1, 2])
    pred = _t([[0, 0, 10, 10],      # correct (class 1 on box 0)
               [0, 0, 10, 11],      # duplicate of box 0
               [40, 0, 50, 10],     # class 1 on a class-2 box: confusion
               [20, 0, 26, 10],     # class 1, IoU 0.6 at thr 0.7: poor localisation
               [100, 100, 110, 110],  # background
               [20, 0, 30, 10]],    # below the score threshold: not scored
              [1, 1, 1, 1, 1, 1], [0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    res = es.classify_detections(pred, target, iou_thr=0.7, score_thr=0.3)
    assert res["kept"].tolist() == [0, 1, 2, 3, 4]
    assert res["kinds"] == ["correct", "duplicate", "class", "localisation", "background"]
    assert res["matched_gt"].tolist() == [0, 0, 2, 1, -1]
    assert res["missed"].tolist() == [False, True, True]
    # At IoU 0.5 the 0.6-IoU box is a hit, so box 1 is found.
    res = es.classify_detections(pred, target, iou_thr=0.5, score_thr=0.3)
    assert res["kinds"][3] == "correct" and res["missed"].tolist() == [False, False, True]


def test_classify_detections_visits_by_score_and_prefers_the_best_box():
    target = _t([[2, 0, 12, 10], [0, 0, 10, 10]], [3, 3])
    pred = _t([[0, 0, 10, 10], [1, 0, 11, 10]], [3, 3], [0.2, 0.9])
    res = es.classify_detections(pred, target, score_thr=0.0)
    assert res["kept"].tolist() == [1, 0]
    # The 0.9 detection overlaps both boxes by 0.82 and takes the first; the 0.2 one (IoU 1
    # with box 1) takes the other.
    assert res["kinds"] == ["correct", "correct"]
    assert res["missed"].tolist() == [False, False]


def test_classify_detections_empty_and_bad_thresholds():
    res = es.classify_detections(_t([], [], []), _t([[0, 0, 5, 5]], [2]))
    assert res["kinds"] == [] and res["missed"].tolist() == [True]
    res = es.classify_detections(_t([[0, 0, 5, 5]], [2], [0.9]), _t([], []))
    assert res["kinds"] == ["background"]
    with pytest.raises(ConfigError):
        es.classify_detections(_t([], [], []), _t([], []), iou_thr=0.5, background_iou=0.6)


def test_error_counts_render_and_browser(tiny_set):
    preds = []
    for i in range(len(tiny_set)):
        t = tiny_set[i][1]
        # the first box found, the others missed, one false alarm
        preds.append({"boxes": torch.cat([t["boxes"][:1], torch.tensor([[1.0, 1, 5, 5]])]),
                      "labels": torch.cat([t["labels"][:1], torch.tensor([1])]),
                      "scores": torch.tensor([0.9, 0.8])})
    table = es.error_counts(tiny_set, preds)
    total = {k: sum(row[k] for row in table.values()) for k in (*es.ERROR_TYPES, "missed", "gt")}
    n_gt = sum(len(tiny_set[i][1]["labels"]) for i in range(len(tiny_set)))
    assert total["gt"] == n_gt
    assert total["correct"] == 2 and total["missed"] == n_gt - 2
    assert total["correct"] + total["duplicate"] + total["class"] + total["localisation"] + \
        total["background"] == 4
    with pytest.raises(ConfigError):
        es.error_counts(tiny_set, preds, indices=[0])
    fig = ef.render_errors(tiny_set, 0, preds[0])
    assert "detections with score" in fig.axes[0].get_title()
    plt.close(fig)
    box = explorers.error_browser(tiny_set, preds)
    assert box.children
    plt.close("all")
