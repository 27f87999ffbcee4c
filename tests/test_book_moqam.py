"""oralx_lib.book.moqam_stats and moqam_figures: the measurements read the model faithfully and leave it untouched."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from oralx_lib.book import moqam_stats as ms, moqam_figures as mf, explorers  # noqa: E402
from oralx_lib.models import MOQAM_PROFILES, MSDeformAttn, build_moqam  # noqa: E402
from oralx_lib.models.moqam_denoising import denoising_attention_mask  # noqa: E402
from oralx_lib.errors import ConfigError  # noqa: E402

SMALL_BRANCHES = dict(rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                      rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=100,
                      box_batch_size_per_image=64, representation_size=256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = dict(MOQAM_PROFILES["tiny"])
    cfg.update(embed_dim=64, num_heads=4, ffn_dim=128, num_queries=40, min_size=128,
               max_size=224, branch_options=SMALL_BRANCHES, num_aux_queries=30)
    return build_moqam(**cfg).eval()


@pytest.fixture(scope="module")
def sample():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 150, 260, generator=g)
    target = {"boxes": torch.tensor([[20.0, 30, 70, 90], [150, 40, 240, 120],
                                     [100, 100, 118, 116]]),
              "labels": torch.tensor([1, 9, 3])}
    return image, target


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ deformable sampling


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_deformable_sampling_reproduces_the_module(ref_dim):
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=2, num_points=3)
    with torch.no_grad():  # leave the initial pattern: random query-dependent offsets/weights
        attn.sampling_offsets.weight.normal_(std=0.3)
        attn.attention_weights.weight.normal_(std=0.3)
    shapes = torch.tensor([[4, 5], [2, 3]])
    value = torch.randn(2, 26, 16)
    query = torch.randn(2, 7, 16)
    ref = torch.rand(2, 7, 2, ref_dim) * 0.6 + 0.2
    locations, weights = ms.deformable_sampling(attn, query, ref, shapes)
    assert locations.shape == (2, 7, 2, 2, 3, 2) and weights.shape == (2, 7, 2, 2, 3)
    assert torch.allclose(weights.flatten(-2).sum(-1), torch.ones(2, 7, 2))
    from oralx_lib.models import multi_scale_deformable_attention

    v = attn.value_proj(value).view(2, 26, 2, 8)
    rebuilt = attn.output_proj(multi_scale_deformable_attention(v, shapes, locations, weights))
    assert torch.allclose(rebuilt, attn(query, ref, value, shapes), atol=1e-5)


def test_deformable_sampling_rejects_bad_references():
    attn = MSDeformAttn(embed_dim=16, num_levels=1, num_heads=2, num_points=1)
    with pytest.raises(ConfigError, match="reference_points"):
        ms.deformable_sampling(attn, torch.zeros(1, 1, 16), torch.zeros(1, 1, 1, 3),
                               torch.tensor([[2, 2]]))


# ------------------------------------------------------------------ query inspection


def test_inspection_matches_the_models_output(model, sample):
    image, _ = sample
    before = _state(model)
    model.train()
    insp = ms.inspect_queries(model, image)
    assert model.training  # mode restored
    model.eval()
    assert _same_state(before, model.state_dict())
    layers, queries = len(model.decoder.layers), model.num_queries
    assert insp.boxes.shape == (layers, queries, 4) and insp.scores.shape == (layers, queries, 9)
    assert insp.locations.shape[:2] == (layers, queries) and insp.locations.shape[-1] == 2
    assert insp.original_size == (150, 260)
    k = 10
    q, labels, scores = ms.top_queries(insp, k)
    det = insp.detections
    assert torch.allclose(scores, det["scores"][:k], atol=1e-5)
    assert torch.equal(labels, det["labels"][:k])
    size = torch.tensor([260.0, 150.0, 260.0, 150.0])
    boxes = torch.minimum(insp.boxes[-1, q].clamp(min=0), size)
    assert torch.allclose(boxes, det["boxes"][:k], atol=1e-3)


def test_initial_sampling_pattern_in_pixels(model, sample):
    """Fresh cross-attention: head 0 points along +x; its last point (k = P - 1) lands at
    c + (P / P) * w / 2, the right edge of the reference box, on every level."""
    image, _ = sample
    insp = ms.inspect_queries(model, image)
    ref = insp.reference  # (Q, 4) xyxy pixels
    last = insp.locations[0, :, 0, :, -1]  # (Q, L, 2)
    assert torch.allclose(last[..., 0], ref[:, 2:3].expand_as(last[..., 0]), atol=1e-3)
    centre_y = (ref[:, 1] + ref[:, 3]) / 2
    assert torch.allclose(last[..., 1], centre_y[:, None].expand_as(last[..., 1]), atol=1e-3)
    # fresh attention weights are uniform: 1 / (L P) per head
    lp = insp.weights.shape[-1] * insp.weights.shape[-2]
    assert torch.allclose(insp.weights[0], torch.full_like(insp.weights[0], 1 / lp))


# ------------------------------------------------------------------ collaborative positives


def test_collaborative_positives(model, sample):
    image, target = sample
    before = _state(model)
    view = ms.collaborative_positives(model, image, target)
    assert _same_state(before, model.state_dict()) and not model.training
    assert torch.allclose(view.gt_boxes, target["boxes"], atol=1e-3)
    assert set(view.positives) == {"rpn", "roi", "atss"}
    for boxes, gt in view.positives.values():
        assert boxes.shape[1] == 4 and len(boxes) == len(gt)
        assert gt.numel() == 0 or int(gt.max()) < 3
    # torchvision adds the ground truth to the RoI head's proposals: each GT is its own positive
    roi_boxes, roi_gt = view.positives["roi"]
    for g in range(3):
        mine = roi_boxes[roi_gt == g]
        assert (mine - target["boxes"][g]).abs().amax(1).min() < 1e-2
    boxes, gt = view.matched
    assert sorted(gt.tolist()) == [0, 1, 2] and boxes.shape == (3, 4)
    assert view.queries_from["roi"] == min(int((roi_gt >= 0).sum()), 30)
    table = ms.positives_table(view)
    assert list(table.columns) == ["class", "size (px)", "rpn", "roi", "atss", "matched"]
    assert table["matched"].tolist() == [1, 1, 1]
    assert table["roi"].sum() == len(roi_gt)
    families = {ms.loss_family(n)[0] for n in view.losses}
    assert families == set(ms.LOSS_FAMILIES)


def test_collaborative_positives_needs_branches(sample):
    cfg = dict(MOQAM_PROFILES["tiny"])
    cfg.update(embed_dim=64, num_heads=4, ffn_dim=128, num_queries=20, min_size=128,
               max_size=224, aux_branches=())
    with pytest.raises(ConfigError, match="aux_branches"):
        ms.collaborative_positives(build_moqam(**cfg), *sample)


# ------------------------------------------------------------------ losses by family


def test_loss_family_names():
    assert ms.loss_family("loss_cls_dn_d1") == ("dn", "cls", "d1", None)
    assert ms.loss_family("loss_giou_aux0_d0") == ("aux", "giou", "d0", "aux0")
    assert ms.loss_family("loss_bbox_enc") == ("enc", "bbox", None, None)
    assert ms.loss_family("loss_bbox_d5") == ("dec", "bbox", "d5", None)
    assert ms.loss_family("loss_rpn_cls") == ("rpn", "cls", None, None)
    assert ms.loss_family("loss_atss_centerness") == ("atss", "centerness", None, None)
    assert ms.loss_family("loss_roi_giou") == ("roi", "giou", None, None)
    assert ms.loss_family("loss_cb_scr") == ("cb_scr", "cb_scr", None, None)
    with pytest.raises(ConfigError, match="loss_objectness"):
        ms.loss_family("loss_objectness")


def test_loss_table_and_history():
    losses = {"loss_rpn_cls": 1.0, "loss_cls_d0": 2.0, "loss_bbox_d0": 0.5,
              "loss_cls_dn_d0": torch.tensor(0.25), "loss_cb_scr": 3.0}
    table = ms.loss_table(losses)
    assert table["family"].tolist() == ["dec", "dec", "dn", "rpn", "cb_scr"]
    assert table["value"].sum() == pytest.approx(6.75)
    records = [{"kind": "train", "step": s, "loss": 6.75 * s, "losses": {k: float(v) * s for k, v
                                                                         in losses.items()}}
               for s in (1, 2)] + [{"kind": "epoch", "epoch": 1}]
    hist = ms.family_history(records)
    assert list(hist.columns) == ["total", "dec", "dn", "rpn", "cb_scr"]
    assert hist.loc[2, "dec"] == pytest.approx(5.0) and hist.loc[1, "total"] == pytest.approx(6.75)
    assert ms.family_history([]).empty
    ax = mf.plot_loss_families(table)
    assert len(ax.patches) > 0
    ax2 = mf.plot_family_history(hist, smooth=2)
    assert len(ax2.lines) == 5
    plt.close("all")


# ------------------------------------------------------------------ parts


def test_part_parameters_cover_the_model(model):
    table = ms.part_parameters(model)
    assert table["parameters"].sum() == sum(p.numel() for p in model.parameters())
    assert "other" not in table.index
    assert set(table.index[table["at inference"]]) == set(ms.INFERENCE_PARTS)
    assert table.loc["query selection", "parameters"] > 0 and table.loc["CB-SCR", "parameters"] > 0
    assert ms.part_of("class_heads.2.weight", 2) == "query selection"
    assert ms.part_of("class_heads.1.weight", 2) == "decoder + heads"


def test_part_flops_and_calls(model, sample):
    image, target = sample
    before = _state(model)
    eval_flops = ms.part_flops(model, [image])
    train_flops = ms.part_flops(model, [image], [target])
    assert _same_state(before, model.state_dict()) and not model.training
    assert set(eval_flops.index) <= set(ms.INFERENCE_PARTS) | {"other"}
    assert {"RPN (DI-RPN)", "RoI head", "ATSS head", "CB-SCR"} <= set(train_flops.index)
    assert train_flops.sum() > eval_flops.sum()
    # a 1x1 convolution's FLOPs by hand: neck level 0 of C2 (64 channels -> 64) on a
    # (H/4) x (W/4) map: 2 * 64 * 64 * h * w multiply-adds, counted in the "neck" part
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros(1, 64, 32, 56)
    with FlopCounterMode(display=False) as fc:
        model.neck.lateral[0][0](x)
    assert fc.get_total_flops() == 2 * 64 * 64 * 32 * 56
    branches = {"rpn": model.branches.rpn, "roi": model.branches.roi, "atss": model.branches.atss}
    with ms.count_calls(model, branches) as calls, torch.no_grad():
        model([image])
    assert calls == {"rpn": 0, "roi": 0, "atss": 0}


# ------------------------------------------------------------------ figures


def test_figures(model, sample):
    image, target = sample
    insp = ms.inspect_queries(model, image)
    fig = mf.render_queries(image, target, insp, layer=0, top_k=5)
    ax = fig.axes[0]
    assert len(ax.patches) >= 5 + 3 and len(ax.collections) >= 1
    plt.close(fig)
    fig, ax = plt.subplots()
    mf.draw_sampling_points(ax, insp, [0, 1], image=image, title="t")
    assert len(ax.collections) == 2 and len(ax.patches) == 4
    plt.close(fig)
    view = ms.collaborative_positives(model, image, target)
    fig, axes = plt.subplots(1, 4)
    mf.draw_positives(axes, image, view, gt_index=[0], region=(0, 0, 120, 120), max_boxes=5)
    assert all(len(a.patches) >= 2 for a in axes)
    assert axes[0].get_xlim() == (0, 120)
    plt.close(fig)
    fig, ax = plt.subplots()
    mf.plot_attention_mask(ax, denoising_attention_mask(3, 4, 5), num_groups=3, group_size=4)
    assert ax.images[0].get_array().shape == (17, 17)
    plt.close(fig)


def test_explorer_builds(model, sample):
    pytest.importorskip("ipywidgets")
    image, target = sample
    box = explorers.query_explorer(model, [(image, target)], top_k=3)
    assert len(box.children) == 2
    plt.close("all")
