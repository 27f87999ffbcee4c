"""Faithful to the release: each difference found in a second reading of it, fixed and checked
against a hand-computed case or a naive reference (see MOQAM.md, "Details from a second reading
of the release")."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, roi_align

from oralx_lib.models import build_moqam
from oralx_lib.models.heads import build_roi_heads
from oralx_lib.models.moqam_branches import ATSSHead
from oralx_lib.models.moqam_losses import inverse_sigmoid
from oralx_lib.models.moqam_transformer import (
    DeformableDecoder,
    box_sine_embedding,
    sine_positional_encoding,
)
from oralx_lib.models.rcnn import AssignerRPN, RoIAlignPooler, make_anchor_generator
from oralx_lib.models.assigners import FixedIoUAssigner
from oralx_lib.profiles import MOQAM_PROFILES

sys.path.insert(0, str(Path(__file__).parent))
from test_moqam import sample_batch, tiny_model  # noqa: E402


# ---------------------------------------------------------------------- anchors on the strides
def test_rpn_anchors_sit_on_the_configured_strides_of_a_1000_x_600_input():
    strides = (4, 8, 16, 32, 64)
    height, width = 600, 1000  # padded size not a multiple of 64
    features = [torch.zeros(1, 1, math.ceil(height / s), math.ceil(width / s)) for s in strides]
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    ours = make_anchor_generator(strides)
    anchors = ours(images, features)[0]
    per_location = ours.num_anchors_per_location()[0]
    counts = [f.shape[-2] * f.shape[-1] * per_location for f in features]
    level64 = anchors.split(counts)[-1].view(10, 16, per_location, 4)
    centres = (level64[..., :2] + level64[..., 2:]) / 2  # (10, 16, A, 2)
    assert torch.equal(centres[0, 0], torch.zeros(per_location, 2))
    assert torch.equal(centres[:, 1:, :, 0] - centres[:, :-1, :, 0], torch.full((10, 15, 9), 64.0))
    assert torch.equal(centres[1:, :, :, 1] - centres[:-1, :, :, 1], torch.full((9, 16, 9), 64.0))
    # torchvision's generator infers 600 // 10 = 60 and 1000 // 16 = 62 for this level
    theirs = AnchorGenerator(ours.sizes, ours.aspect_ratios)(images, features)[0]
    theirs64 = theirs.split(counts)[-1].view(10, 16, per_location, 4)
    assert float(theirs64[1, 1, 0, 0] - theirs64[0, 0, 0, 0]) == 62.0
    # strides 4 and 8 divide 600 and 1000: there torchvision infers them right, same anchors
    torch.testing.assert_close(anchors[:sum(counts[:2])], theirs[:sum(counts[:2])])


def test_atss_anchor_centres_at_j_times_stride():
    head = ATSSHead(in_channels=32, num_classes=3, strides=(8, 16), anchor_scale=8.0)
    anchors, counts = head.anchors([torch.zeros(1, 32, 2, 3), torch.zeros(1, 32, 1, 2)])
    assert counts == [6, 2]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor(
        [[0.0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8], [0, 0], [16, 0]]))
    torch.testing.assert_close(anchors[0], torch.tensor([-32.0, -32, 32, 32]))


# ---------------------------------------------------------------------- RPN and RoI head
def test_rpn_l1_box_loss_hand_computed():
    rpn = AssignerRPN(anchor_generator=make_anchor_generator((8,)), head=nn.Identity(),
                      assigner=FixedIoUAssigner(), batch_size_per_image=4,
                      positive_fraction=0.5, box_loss="l1")
    objectness = torch.zeros(6, 1)
    deltas = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 6)
    labels = [torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0, -1.0])]
    targets = [torch.zeros(6, 4)]
    loss_obj, loss_box = rpn.compute_loss(objectness, deltas, labels, targets)
    # 2 positives + 2 negatives sampled: sum |d| over the positives / 4 samples
    assert loss_box.item() == pytest.approx(2 * 1.0 / 4)
    assert loss_obj.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="rpn_box_loss"):
        AssignerRPN(anchor_generator=make_anchor_generator((8,)), head=nn.Identity(),
                    assigner=FixedIoUAssigner(), box_loss="huber")


def _pyramid(g, strides=(4, 8, 16, 32)):
    return {str(i): torch.randn(2, 3, 128 // s, 192 // s, generator=g)
            for i, s in enumerate(strides)}


def test_roialign_pooler_released_settings_against_roi_align_on_each_level():
    g = torch.Generator().manual_seed(0)
    features = _pyramid(g)
    boxes = [torch.tensor([[10.3, 12.7, 40.1, 30.9], [0.0, 0.0, 120.0, 110.0]]),
             torch.tensor([[50.5, 20.25, 300.0, 127.0]])]
    pooler = RoIAlignPooler(["0", "1", "2", "3"], (4, 8, 16, 32), sampling_ratio=0,
                            aligned=True)
    out = pooler(features, boxes, [(128, 192), (128, 192)])
    # the release's level rule floor(log2(sqrt(wh) / 56)): sqrt(29.8*18.2)=23 -> 0,
    # sqrt(120*110)=115 -> 1, sqrt(249.5*106.75)=163 -> 1
    for row, (image, box, level) in enumerate([(0, boxes[0][0], 0), (0, boxes[0][1], 1),
                                               (1, boxes[1][0], 1)]):
        stride = (4, 8, 16, 32)[level]
        want = roi_align(features[str(level)][image:image + 1], [box[None]], 7,
                         spatial_scale=1 / stride, sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[row], want[0])


def test_roialign_pooler_torchvision_settings_equal_multiscale_roialign():
    g = torch.Generator().manual_seed(1)
    features = _pyramid(g)
    boxes = [torch.rand(5, 2, generator=g).repeat(1, 2) * 60
             + torch.tensor([0.0, 0, 30, 40]) * torch.rand(5, 1, generator=g) * 3,
             torch.tensor([[5.0, 5, 180, 120]])]
    sizes = [(128, 192), (128, 192)]
    ours = RoIAlignPooler(["0", "1", "2", "3"], (4, 8, 16, 32), sampling_ratio=2, aligned=False)
    theirs = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    torch.testing.assert_close(ours(features, boxes, sizes), theirs(features, boxes, sizes),
                               rtol=0, atol=0)


def test_roi_head_initialisation_as_released():
    torch.manual_seed(0)
    heads = build_roi_heads({"representation_size": 1024, "roi_head_init": "released"},
                            in_channels=256, featmap_names=["0"], strides=[4], num_classes=9,
                            cb_scr=False)
    fc6 = heads.box_head.fc6.weight
    bound = math.sqrt(6 / (fc6.shape[0] + fc6.shape[1]))  # Xavier-uniform
    assert fc6.abs().max() <= bound and fc6.abs().max() > 0.99 * bound
    assert heads.box_predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert heads.box_predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert heads.box_predictor.cls_score.bias.abs().max() == 0
    assert heads.box_head.fc7.bias.abs().max() == 0
    assert heads.box_roi_pool.aligned is False  # the defaults stay torchvision's
    with pytest.raises(ValueError, match="roi_head_init"):
        build_roi_heads({"roi_head_init": "kaiming"}, in_channels=8, featmap_names=["0"],
                        strides=[4], num_classes=2, cb_scr=False)


def test_moqam_branch_takes_the_released_rpn_and_roi_settings():
    model = tiny_model()
    assert model.branches.rpn.box_loss == "l1"
    pool = model.branches.roi.roi_heads.box_roi_pool
    assert pool.aligned and pool.sampling_ratio == 0
    assert pool.strides == (4, 8, 16, 32, 64, 128)


# ---------------------------------------------------------------------- transformer
def test_encoder_positional_encoding_temperature_20_offset_0():
    pos = sine_positional_encoding(torch.zeros(1, 1, 1, dtype=torch.bool), num_feats=4,
                                   temperature=20.0, offset=0.0)
    # y = x = (1 + 0) / 1 * 2 pi: sin(2 pi), cos(2 pi), sin(2 pi / sqrt(20)), cos(...)
    a = 2 * math.pi / math.sqrt(20)
    expected = torch.tensor([0.0, 1.0, math.sin(a), math.cos(a)])
    torch.testing.assert_close(pos[0, :4, 0, 0], expected, atol=1e-5, rtol=0)


def test_moqam_encodes_positions_with_the_released_settings(monkeypatch):
    from oralx_lib.models import moqam as moqam_module

    seen, original = [], moqam_module.sine_positional_encoding

    def spy(mask, num_feats, **kwargs):
        seen.append(kwargs)
        return original(mask, num_feats, **kwargs)

    monkeypatch.setattr(moqam_module, "sine_positional_encoding", spy)
    model = tiny_model(aux_branches=()).eval()
    with torch.no_grad():
        model([torch.rand(3, 128, 160)])
    assert len(seen) == 5 and all(k == {"temperature": 20.0, "offset": 0.0} for k in seen)


def test_inverse_sigmoid_eps_is_the_released_1e_3():
    out = inverse_sigmoid(torch.tensor([0.0, 1e-4, 0.5, 1.0]))
    e = math.log(1e-3 / (1 - 0.0))
    torch.testing.assert_close(out, torch.tensor([e, math.log(1e-3 / (1 - 1e-4)), 0.0,
                                                  math.log(1 / 1e-3)]))


def _decoder(layers=3, dim=32):
    torch.manual_seed(0)
    decoder = DeformableDecoder(num_layers=layers, embed_dim=dim, num_heads=4, num_levels=2,
                                num_points=2, ffn_dim=64)
    with torch.no_grad():  # non-zero box heads, so that every path carries a signal
        for head in decoder.box_heads:
            head.layers[-1].weight.normal_(std=0.05)
            head.layers[-1].bias.normal_(std=0.05)
    return decoder


def _decoder_inputs(dim=32):
    g = torch.Generator().manual_seed(1)
    shapes = ((6, 8), (3, 4))
    memory = torch.randn(2, 60, dim, generator=g)
    tgt = torch.randn(2, 5, dim, generator=g)
    reference = torch.rand(2, 5, 4, generator=g) * 0.5 + 0.25
    ratios = torch.tensor([[[0.75, 0.5], [0.75, 0.5]], [[1.0, 1.0], [1.0, 1.0]]])
    mask = torch.zeros(2, 60, dtype=torch.bool)
    return tgt, reference, memory, shapes, ratios, mask


def test_decoder_follows_the_released_formulas():
    """A naive re-run of the decoder, layer by layer, from its own parts: the positional query
    from the reference scaled by the valid ratios, the next reference from the output before
    the final LayerNorm, each layer's box refining the previous layer's un-detached one."""
    decoder = _decoder()
    tgt, reference, memory, shapes, ratios, mask = _decoder_inputs()
    hidden, boxes = decoder(tgt, reference, memory, shapes, ratios, mask)
    ratios4 = torch.cat([ratios, ratios], -1)[:, None]
    h, ref, prev = tgt, reference, reference
    for i, layer in enumerate(decoder.layers):
        ref_in = ref[:, :, None] * ratios4
        pos = decoder.ref_point_head(box_sine_embedding(ref_in[:, :, 0], 16))
        h = layer(h, pos, ref_in, memory, shapes, mask, None)
        out = decoder.norm(h)
        box = (decoder.box_heads[i](out) + inverse_sigmoid(prev)).sigmoid()
        torch.testing.assert_close(hidden[i], out)
        torch.testing.assert_close(boxes[i], box)
        prev = (decoder.box_heads[i](h) + inverse_sigmoid(ref)).sigmoid()
        ref = prev.detach()
    # padding matters: scaled by the valid ratios, the first image's queries look elsewhere
    same = _decoder()
    unscaled = same(tgt, reference, memory, shapes, torch.ones_like(ratios), mask)[1]
    assert not torch.allclose(unscaled[0][0], boxes[0][0])
    torch.testing.assert_close(unscaled[0][1], boxes[0][1])


def test_look_forward_twice_reaches_one_layer_back_and_no_further():
    tgt, reference, memory, shapes, ratios, mask = _decoder_inputs()

    def grads(twice):
        decoder = _decoder()
        decoder.look_forward_twice = twice
        boxes = decoder(tgt, reference, memory, shapes, ratios, mask)[1]
        boxes[2].sum().backward()  # the loss of the third layer only
        return [None if h.layers[-1].weight.grad is None else float(h.layers[-1].weight.grad.norm())
                for h in decoder.box_heads]

    twice, once = grads(True), grads(False)
    assert twice[2] > 0 and twice[1] > 0 and twice[0] is None
    assert once[2] > 0 and once[1] is None and once[0] is None


def test_transformer_weights_are_xavier_initialised():
    model = build_moqam(**{**MOQAM_PROFILES["tiny"], "embed_dim": 64, "num_heads": 4,
                           "ffn_dim": 256})
    for name, weight in [("ffn", model.decoder.layers[0].ffn.linear1.weight),
                         ("encoder ffn", model.encoder.layers[1].ffn.linear2.weight),
                         ("self-attention out", model.decoder.layers[1].self_attn.out_proj.weight),
                         ("positional MLP", model.decoder.ref_point_head.layers[0].weight),
                         ("encoder output", model.enc_output.weight),
                         ("customised queries", model.aux_query_fc[1].weight)]:
        bound = math.sqrt(6 / (weight.shape[0] + weight.shape[1]))
        assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound, name
    # deformable attention's own initialisation and the heads' are kept
    attn = model.encoder.layers[0].self_attn
    assert attn.sampling_offsets.weight.abs().max() == 0
    assert attn.attention_weights.weight.abs().max() == 0
    assert model.decoder.box_heads[0].layers[-1].weight.abs().max() == 0
    assert model.class_heads[0].bias[0].item() == pytest.approx(-math.log(99))


# ---------------------------------------------------------------------- customised queries
def test_one_query_projection_per_branch():
    model = tiny_model()
    assert len(model.aux_query_fc) == len(model.aux_query_norm) == 2
    dim = model.embed_dim
    assert all(fc.in_features == 2 * dim and fc.out_features == dim for fc in model.aux_query_fc)
    images, targets = sample_batch()

    def aux_losses():
        torch.manual_seed(5)
        losses = model.train()(images, targets)
        return ({k: v.item() for k, v in losses.items() if "_aux0_" in k},
                {k: v.item() for k, v in losses.items() if "_aux1_" in k})

    roi_before, atss_before = aux_losses()
    with torch.no_grad():
        model.aux_query_fc[1].weight.mul_(3.0)  # the ATSS group's projection only
    roi_after, atss_after = aux_losses()
    assert roi_after == roi_before
    assert atss_after != atss_before


def test_at_least_nine_customised_queries_per_image_padded_with_negatives():
    model = tiny_model()
    groups, make_group = [], model._aux_group

    def spy(index, samples, sizes):
        group = make_group(index, samples, sizes)
        groups.append(group)
        return group

    model._aux_group = spy
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    # a 1.5 px box: the RoI head has its GT as one positive, ATSS none (no anchor centre in it)
    one_box = [{"boxes": torch.tensor([[50.0, 40.0, 51.5, 41.5]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    model.train()(images, one_box)
    assert [g["num_positives"] for g in groups] == [1.0, 0.0]
    for group in groups:
        assert group["content"].shape[1] == 9
        assert group["valid"].all()  # filled with negatives, not empty slots
        assert len(group["gt_labels"][1]) == 0
    groups.clear()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model.train()(images, empty)
    assert len(groups) == 2 and all(g["content"].shape[1] == 9 for g in groups)
    assert all(losses[f"loss_cls_aux{g}_d0"] > 0 for g in (0, 1))  # negatives are trained


# ---------------------------------------------------------------------- profiles
def test_colab_profile_is_the_released_model_at_smaller_sizes():
    from oralx_lib.engine import make_config
    from oralx_lib.engine.inference import build_from_config

    colab = make_config("colab", model="moqam", pretrained_backbone=False)
    full = make_config("full", model="moqam", pretrained_backbone=False)
    a, b = build_from_config(colab), build_from_config(full)
    for model in (a, b):
        assert model.num_queries == 900 and model.num_aux_queries == 300
        assert model.min_aux_queries == 9 and model.dn_number == 100
        assert len(model.encoder.layers) == 6 and len(model.decoder.layers) == 6
        assert model.decoder.layers[0].ffn.linear1.out_features == 2048
        assert model.encoder.layers[0].self_attn.num_heads == 8
        assert model.soft_nms == "linear" and model.pre_nms_topk == 900
    # the same architecture: the same parameters, shape for shape
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}
    assert max(a.transform.min_size) == 640 and a.transform.max_size == 1066
    assert b.transform.min_size[-1] == 800 and b.transform.max_size == 1333
    assert a.encoder.checkpointed_layers == 6 and b.encoder.checkpointed_layers == 4
    assert colab.amp == "auto" and colab.eval_release_protocol and full.eval_release_protocol


def test_recomputing_some_encoder_layers_gives_the_same_gradients():
    model = tiny_model(aux_branches=(), dn_number=0, num_encoder_layers=3).train()
    images, targets = sample_batch()

    def step(checkpoint):
        model.encoder.checkpoint = checkpoint
        model.zero_grad()
        torch.manual_seed(0)
        sum(model(images, targets).values()).backward()
        return [p.grad.clone() for p in model.encoder.parameters()]

    plain, two = step(False), step(2)
    assert model.encoder.checkpointed_layers == 2
    for g_plain, g_two in zip(plain, two):
        torch.testing.assert_close(g_two, g_plain)


def test_padding_to_a_multiple_of_one_as_released():
    model = tiny_model(aux_branches=("rpn", "roi", "atss"), size_divisible=1)
    assert build_moqam(**MOQAM_PROFILES["full"]).transform.size_divisible == 1
    images = [torch.rand(3, 125, 203), torch.rand(3, 117, 190)]  # odd sizes
    targets = [{"boxes": torch.tensor([[10.0, 12, 60, 70]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[30.0, 20, 90, 100]]), "labels": torch.tensor([5])}]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(images)
    assert out[0]["boxes"].shape[-1] == 4
