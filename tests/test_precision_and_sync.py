"""Ready for a GPU: boxes stay float32 under autocast, and the hot path avoids host syncs.

Autocast is exercised on the CPU with bfloat16 (``torch.autocast("cpu", dtype=torch.bfloat16)``),
the same 8-bit mantissa as CUDA's bf16 AMP. Host synchronisations cannot be observed on a CPU;
what is tested here is what causes them on a GPU: the Python-level reads of tensor values
(``.tolist()``, ``.cpu()``, ``.item()``, ``bool(tensor)``) made by the library, and the parity of
the sync-free code with the code it replaced.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import traceback

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou_loss

from oralx_lib.models import build_model
from oralx_lib.models.deformable_attention import MSDeformAttn, multi_scale_deformable_attention
from oralx_lib.models.moqam_losses import hungarian_match, hungarian_match_many, matching_cost

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_moqam import sample_batch, tiny_model  # noqa: E402

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


# ---------------------------------------------------------------------- float32 boxes under AMP
def _two_stage(**extra):
    # MobileNet: bf16 on a CPU without bf16 instructions is slow, ResNet-18 ten times slower
    torch.manual_seed(0)
    return build_model("faster_rcnn", backbone="mobilenet_v3", min_size=128, max_size=160,
                       rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                       box_batch_size_per_image=64, representation_size=128, **extra)


SIZE = (128, 160)
# Coordinates bf16 cannot hold (between 32 and 64 it has steps of 0.25 px, 64..128 of 0.5 px;
# at 1333 px the steps are 8 px).
GT = torch.tensor([[70.3, 20.9, 120.1, 60.7], [33.3, 40.1, 90.7, 97.9]])


def test_two_stage_proposals_and_sampled_gt_stay_float32_under_bf16_autocast():
    model = _two_stage().train()
    images = [torch.rand(3, *SIZE)]
    targets = [{"boxes": GT.clone(), "labels": torch.tensor([2, 5])}]
    seen = {}
    rpn_forward = model.rpn.forward
    sample = model.roi_heads.select_training_samples

    def spy_rpn(*args, **kwargs):
        seen["proposals"] = rpn_forward(*args, **kwargs)[0]
        return seen["proposals"], rpn_forward(*args, **kwargs)[1]

    def spy_sample(proposals, targets_):
        out = sample(proposals, targets_)
        seen["sampled"] = out[0]
        return out

    model.rpn.forward = spy_rpn
    model.roi_heads.select_training_samples = spy_sample
    with torch.autocast(**BF16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert seen["proposals"][0].dtype == torch.float32
    sampled = seen["sampled"][0]
    assert sampled.dtype == torch.float32
    # the ground truth appended as proposals is sampled (IoU 1) and is exactly the input box
    for box in GT:
        assert (sampled == box).all(dim=1).any(), f"{box.tolist()} quantised or lost"


def test_anchors_are_float32_and_identical_under_autocast():
    from torchvision.models.detection.image_list import ImageList

    model = _two_stage()
    features = [torch.randn(1, 8, -(-SIZE[0] // s), -(-SIZE[1] // s)) for s in (8, 16, 32, 64)]
    images = ImageList(torch.zeros(1, 3, *SIZE), [SIZE])
    plain = model.rpn.anchor_generator(images, features)[0]
    half = model.rpn.anchor_generator(images, [f.bfloat16() for f in features])[0]
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, plain, rtol=0, atol=0)


def test_two_stage_detections_stay_float32_under_bf16_autocast():
    model = _two_stage().eval()
    with torch.no_grad(), torch.autocast(**BF16):
        out = model([torch.rand(3, *SIZE)])
    assert out[0]["boxes"].dtype == torch.float32


def test_moqam_reference_boxes_stay_float32_under_bf16_autocast():
    model = tiny_model().train()
    images, targets = sample_batch()
    references, decoder_forward = [], model.decoder.forward

    def spy(tgt, reference, *args, **kwargs):
        references.append(reference)
        hidden, boxes = decoder_forward(tgt, reference, *args, **kwargs)
        references.extend(boxes)
        return hidden, boxes

    model.decoder.forward = spy
    with torch.autocast(**BF16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # the main pass and the customised-query pass of both branches, with every layer's boxes
    assert len(references) == 2 * (1 + len(model.decoder.layers))
    assert all(r.dtype == torch.float32 for r in references)


def test_customised_query_references_are_the_samples_boxes_exactly():
    """The reference of a customised query is its sample's box / image size in float32: under
    bf16 autocast it used to be rounded to 8 significant bits before entering the decoder."""
    model = tiny_model(aux_branches=("rpn", "roi")).train()
    images, targets = sample_batch()
    groups, make_group = [], model._aux_group

    def spy(index, samples, sizes):
        group = make_group(index, samples, sizes)
        groups.append(group)
        return group

    refs, decoder_forward = [], model.decoder.forward

    def spy_decoder(tgt, reference, *args, **kwargs):
        refs.append(reference)
        return decoder_forward(tgt, reference, *args, **kwargs)

    model._aux_group = spy
    model.decoder.forward = spy_decoder
    with torch.autocast(**BF16):
        model(images, targets)
    (group,) = groups
    torch.testing.assert_close(refs[-1], group["reference"], rtol=0, atol=0)
    assert refs[-1].dtype == torch.float32


# ---------------------------------------------------------------------- parity of sync-free code
def test_deformable_attention_tuple_shapes_equal_tensor_shapes():
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 7), (3, 4), (2, 2)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 2, 4, generator=g)
    locations = torch.rand(2, 6, 2, 3, 2, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(2, 6, 2, 3, 2, generator=g)
    as_tensor = multi_scale_deformable_attention(value, torch.tensor(shapes), locations, weights)
    as_tuple = multi_scale_deformable_attention(value, tuple(shapes), locations, weights)
    torch.testing.assert_close(as_tuple, as_tensor, rtol=0, atol=0)
    attn = MSDeformAttn(embed_dim=8, num_levels=3, num_heads=2, num_points=2)
    query, v = torch.randn(2, 6, 8, generator=g), torch.randn(2, s, 8, generator=g)
    for ref in (torch.rand(2, 6, 3, 2, generator=g), torch.rand(2, 6, 3, 4, generator=g)):
        torch.testing.assert_close(attn(query, ref, v, tuple(shapes)),
                                   attn(query, ref, v, torch.tensor(shapes)), rtol=0, atol=0)


def test_batched_hungarian_matching_equals_one_call_per_problem():
    g = torch.Generator().manual_seed(4)
    problems = []
    for q, n in [(12, 3), (12, 0), (5, 5), (0, 2), (9, 7), (30, 1)]:
        logits = torch.randn(q, 9, generator=g)
        boxes = torch.rand(q, 4, generator=g) * 0.5 + 0.2
        labels = torch.randint(0, 9, (n,), generator=g)
        gt = torch.rand(n, 4, generator=g) * 0.5 + 0.2
        problems.append((logits, boxes, labels, gt))
    batched = hungarian_match_many(problems, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    assert len(batched) == len(problems)
    for (rows, cols), problem in zip(batched, problems):
        want_rows, want_cols = hungarian_match(*problem, cost_class=2.0, cost_bbox=5.0,
                                               cost_giou=2.0)
        assert torch.equal(rows, want_rows) and torch.equal(cols, want_cols)
        assert rows.dtype == torch.int64
        if len(rows):  # and it is optimal: scipy on the same cost gives the same total
            cost = matching_cost(*problem).numpy()
            r, c = linear_sum_assignment(cost)
            assert cost[rows, cols].sum() == pytest.approx(cost[r, c].sum(), rel=1e-6)
    assert hungarian_match_many([]) == []


def test_roi_branch_giou_loss_equals_the_positives_only_formula():
    model = tiny_model(aux_branches=("rpn", "roi")).train()
    images, targets = sample_batch()
    branch = model.branches.roi
    captured, pool = {}, branch.roi_heads.box_predictor.forward

    def spy(x):
        captured["out"] = pool(x)
        return captured["out"]

    branch.roi_heads.box_predictor.forward = spy
    sample, seen = branch.roi_heads.select_training_samples, {}

    def spy_sample(p, t):
        seen["s"] = sample(p, t)
        return seen["s"]

    branch.roi_heads.select_training_samples = spy_sample
    losses = model(images, targets)
    proposals, matched, labels, _ = seen["s"]
    _, deltas = captured["out"]
    all_labels = torch.cat(labels)
    tf_targets = [t for t in model.transform(images, targets)[1]]
    gts = torch.cat([t["boxes"][m] for t, m in zip(tf_targets, matched)])
    pos = all_labels > 0
    assert pos.any() and (~pos).any()
    d = deltas.view(deltas.shape[0], -1, 4)[pos, all_labels[pos]]
    boxes = branch.roi_heads.box_coder.decode_single(d, torch.cat(proposals)[pos])
    want = generalized_box_iou_loss(boxes, gts[pos], reduction="sum") / all_labels.numel()
    torch.testing.assert_close(losses["loss_roi_giou"], want * branch.giou_weight)


# ---------------------------------------------------------------------- host reads of values
@contextlib.contextmanager
def value_reads():
    """Count the library's Python-level reads of tensor values (each a host sync on a GPU)."""
    names = ("tolist", "cpu", "item", "__bool__", "__int__", "__float__")
    calls: collections.Counter = collections.Counter()
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if "oralx_lib" in caller.filename:
                calls[(name, caller.filename.rsplit("oralx_lib", 1)[1], caller.lineno)] += 1
            return fn(self, *args, **kwargs)
        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(n, saved[n]))
    try:
        yield calls
    finally:
        for n in names:
            setattr(torch.Tensor, n, saved[n])


def test_query_head_step_reads_values_twice_and_inference_never():
    """One training step of the query head (encoder, denoising, 2 decoder layers, matching of
    the encoder and every layer for both images) reads tensor values twice: the input check
    (one ``.tolist()`` for all targets) and the matching (one ``.cpu()`` of every cost matrix).
    Deformable attention reads none (its level sizes are Python ints)."""
    model = tiny_model(aux_branches=())
    images, targets = sample_batch()
    with value_reads() as calls:
        model.train()(images, targets)
    kinds = collections.Counter(name for name, _, _ in calls.elements())
    assert kinds == {"tolist": 1, "cpu": 1}, calls
    with value_reads() as calls, torch.no_grad():
        model.eval()(images)
    assert not calls, calls


def test_collaborative_branches_add_no_value_reads_of_their_own():
    model = tiny_model()
    images, targets = sample_batch()
    with value_reads() as calls:
        model.train()(images, targets)
    # CB-SCR validates its labels with bool() on CPU tensors only (on a GPU: an asynchronous
    # device assertion), so those reads are the CPU path of a check, not a GPU sync.
    reads = [key for key in calls.elements() if not key[1].endswith("cb_scr.py")]
    kinds = collections.Counter(name for name, _, _ in reads)
    assert kinds == {"tolist": 1, "cpu": 1}, calls
