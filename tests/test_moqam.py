"""The complete MOQAM: query-head parts, denoising, collaborative branches, the contract."""

import itertools
import math

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from oralx_lib.data.dataset import DatasetError
from oralx_lib.models.moqam import (
    MOQAM,
    MOQAM_PROFILES,
    box_iou_batched,
    build_moqam,
    soft_nms,
)
from oralx_lib.models.moqam_denoising import (
    denoising_attention_mask,
    denoising_queries,
    group_attention_mask,
)
from oralx_lib.models.moqam_branches import atss_assign, build_collaborative_branches, centerness_targets
from oralx_lib.models.moqam_losses import (
    hungarian_match,
    inverse_sigmoid,
    matching_cost,
    quality_focal_loss,
    set_loss,
)
from oralx_lib.models.moqam_transformer import (
    DeformableDecoder,
    box_sine_embedding,
    encoder_proposals,
    sine_positional_encoding,
    valid_ratios,
)
from oralx_lib.errors import ConfigError

SMALL_BRANCHES = dict(rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                      rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=100,
                      box_batch_size_per_image=64, representation_size=256)


def tiny_model(**overrides):
    cfg = dict(MOQAM_PROFILES["tiny"])
    cfg.update(embed_dim=64, num_heads=4, ffn_dim=128, num_queries=50, min_size=128,
               max_size=224, branch_options=SMALL_BRANCHES)
    cfg.update(overrides)
    return build_moqam(**cfg)


def sample_batch():
    images = [torch.rand(3, 128, 224), torch.rand(3, 150, 200)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20, 60, 80], [120, 30, 200, 90]]),
         "labels": torch.tensor([1, 9])},
        {"boxes": torch.tensor([[30.0, 40, 90, 140]]), "labels": torch.tensor([4])},
    ]
    return images, targets


# ---------------------------------------------------------------------- losses and matching
def test_quality_focal_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0, 2.0]])
    targets = torch.tensor([[0.5, 1.0, 0.0]])
    out = quality_focal_loss(logits, targets, beta=2.0)
    p = torch.sigmoid(torch.tensor(2.0))
    expected = torch.tensor([[0.0, math.log(2) * 0.25, -math.log(1 - p) * p ** 2]])
    torch.testing.assert_close(out, expected)


def test_matching_cost_hand_computed():
    logits = torch.tensor([[0.0, 0.0]])  # p = 0.5 for both classes
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt_boxes = torch.tensor([[0.6, 0.5, 0.2, 0.2]])
    cost = matching_cost(logits, boxes, torch.tensor([1]), gt_boxes)
    focal = 0.25 * 0.25 * math.log(2) - 0.75 * 0.25 * math.log(2)
    l1 = 0.1
    iou = 0.1 * 0.2 / (2 * 0.04 - 0.02)  # overlap 0.1 x 0.2, enclosing box = union
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(2 * focal + 5 * l1 - 2 * iou, abs=1e-5)


@pytest.mark.parametrize("queries,gts,seed", [(4, 3, 0), (5, 2, 1), (3, 3, 2), (2, 4, 3)])
def test_hungarian_matches_brute_force(queries, gts, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(queries, 3, generator=g)
    boxes = torch.rand(queries, 2, generator=g) * 0.5 + 0.25
    boxes = torch.cat([boxes, torch.rand(queries, 2, generator=g) * 0.3 + 0.05], 1)
    gt_boxes = torch.cat([torch.rand(gts, 2, generator=g) * 0.5 + 0.25,
                          torch.rand(gts, 2, generator=g) * 0.3 + 0.05], 1)
    gt_labels = torch.randint(0, 3, (gts,), generator=g)
    cost = matching_cost(logits, boxes, gt_labels, gt_boxes)
    q_idx, g_idx = hungarian_match(logits, boxes, gt_labels, gt_boxes)
    assert len(q_idx) == min(queries, gts) and len(set(q_idx.tolist())) == len(q_idx)
    assert len(set(g_idx.tolist())) == len(g_idx)
    best = math.inf
    if queries >= gts:
        for perm in itertools.permutations(range(queries), gts):
            best = min(best, sum(cost[perm[k], k].item() for k in range(gts)))
    else:
        for perm in itertools.permutations(range(gts), queries):
            best = min(best, sum(cost[k, perm[k]].item() for k in range(queries)))
    assert cost[q_idx, g_idx].sum().item() == pytest.approx(best, abs=1e-5)


def test_set_loss_hand_computed():
    logits = torch.zeros(1, 2, 2)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    gt = [torch.tensor([[0.5, 0.5, 0.2, 0.4]])]
    matches = [(torch.tensor([0]), torch.tensor([0]))]
    out = set_loss(logits, boxes, [torch.tensor([1])], gt, matches, num_positives=1)
    iou = 0.5  # same centre, half the height
    ln2 = math.log(2)
    # matched query: class 1 target 0.5 -> 0; class 0 target 0 -> ln2 * 0.25;
    # unmatched query: two classes with target 0 -> 2 * ln2 * 0.25
    assert out["cls"].item() == pytest.approx(3 * ln2 * 0.25, abs=1e-5)
    assert out["bbox"].item() == pytest.approx(0.2, abs=1e-6)
    assert out["giou"].item() == pytest.approx(1 - iou, abs=1e-5)
    del iou


# ---------------------------------------------------------------------- encodings and proposals
def test_sine_encodings_hand_computed():
    pos = sine_positional_encoding(torch.zeros(1, 1, 1, dtype=torch.bool), num_feats=4)
    # y = x = (1 - 0.5) / 1 * 2 pi = pi: sin(pi / 1), cos(pi / 1), sin(pi / 100), cos(pi / 100)
    expected = torch.tensor([0.0, -1.0, math.sin(math.pi / 100), math.cos(math.pi / 100)])
    torch.testing.assert_close(pos[0, :4, 0, 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 4:, 0, 0], expected, atol=1e-5, rtol=0)
    emb = box_sine_embedding(torch.tensor([[0.25, 0.0, 0.0, 0.0]]), num_feats=2)
    assert emb.shape == (1, 8)
    # order y, x, w, h: y = 0 -> (0, 1); x = 0.25 -> (sin(pi/2), cos(pi/2)) = (1, 0)
    torch.testing.assert_close(emb[0, :4], torch.tensor([0.0, 1.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_valid_ratios_and_encoder_proposals():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[:, :, 2:] = True  # right half padded
    torch.testing.assert_close(valid_ratios(mask), torch.tensor([[0.5, 1.0]]))
    memory = torch.ones(1, 8, 3)
    out, logits, valid = encoder_proposals(memory, mask.flatten(1), torch.tensor([[2, 4]]))
    assert valid.tolist() == [[True, True, False, False, True, True, False, False]]
    boxes = logits.sigmoid()[0, valid[0]]
    # centres normalised by the unpadded 2 x 2 size, width and height 0.05 on level 0
    expected = torch.tensor([[0.25, 0.25, 0.05, 0.05], [0.75, 0.25, 0.05, 0.05],
                             [0.25, 0.75, 0.05, 0.05], [0.75, 0.75, 0.05, 0.05]])
    torch.testing.assert_close(boxes, expected, atol=1e-5, rtol=0)
    assert out[0, ~valid[0]].abs().sum() == 0


# ---------------------------------------------------------------------- denoising and masks
def test_denoising_attention_mask_hand_computed():
    mask = denoising_attention_mask(num_groups=2, group_size=2, num_queries=3)
    assert mask.shape == (7, 7)
    assert mask[4:, :4].all()  # matching queries never see denoising queries
    assert not mask[4:, 4:].any() and not mask[:4, 4:].any()  # denoising sees matching
    assert not mask[:2, :2].any() and not mask[2:4, 2:4].any()
    assert mask[:2, 2:4].all() and mask[2:4, :2].all()  # groups are apart
    blocks = group_attention_mask([2, 3])
    expected = torch.ones(5, 5, dtype=torch.bool)
    expected[:2, :2] = False
    expected[2:, 2:] = False
    assert torch.equal(blocks, expected)


def test_decoder_respects_masks():
    torch.manual_seed(1)
    dec = DeformableDecoder(num_layers=2, embed_dim=32, num_heads=4, num_levels=2, num_points=2,
                            ffn_dim=64).eval()
    shapes = torch.tensor([[4, 4], [2, 2]])
    memory = torch.randn(1, 20, 32)
    memory_mask = torch.zeros(1, 20, dtype=torch.bool)
    ratios = torch.ones(1, 2, 2)
    groups, size, queries = 2, 4, 5
    content = torch.randn(1, groups * size + queries, 32)
    reference = torch.rand(1, groups * size + queries, 4) * 0.5 + 0.25
    mask = denoising_attention_mask(groups, size, queries)
    base = dec(content, reference, memory, shapes, ratios, memory_mask, mask)[0][-1]
    changed = content.clone()
    changed[:, size:2 * size] += 5.0  # change group 1 only
    out = dec(changed, reference, memory, shapes, ratios, memory_mask, mask)[0][-1]
    torch.testing.assert_close(out[:, 2 * size:], base[:, 2 * size:])  # matching queries
    torch.testing.assert_close(out[:, :size], base[:, :size])  # group 0
    assert not torch.allclose(out[:, size:2 * size], base[:, size:2 * size])
    changed = content.clone()
    changed[:, 2 * size:] += 5.0  # denoising queries do see the matching queries
    out = dec(changed, reference, memory, shapes, ratios, memory_mask, mask)[0][-1]
    assert not torch.allclose(out[:, :size], base[:, :size])
    # collaborative query groups: block-diagonal
    blocks = group_attention_mask([3, 4])
    base = dec(content[:, :7], reference[:, :7], memory, shapes, ratios, memory_mask, blocks)[0][-1]
    changed = content[:, :7].clone()
    changed[:, 3:] -= 3.0
    out = dec(changed, reference[:, :7], memory, shapes, ratios, memory_mask, blocks)[0][-1]
    torch.testing.assert_close(out[:, :3], base[:, :3])


def test_denoising_queries_noise_and_layout():
    torch.manual_seed(3)
    emb = torch.nn.Embedding(9, 8)
    gt_boxes = [torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.6, 0.1, 0.3]]),
                torch.tensor([[0.5, 0.4, 0.3, 0.2]])]
    gt_labels = [torch.tensor([2, 7]), torch.tensor([0])]
    dn = denoising_queries(gt_labels, gt_boxes, label_embedding=emb, num_classes=9,
                           dn_number=10, label_noise_ratio=0.0, box_noise_scale=1.0)
    assert dn.num_groups == 5 and dn.group_size == 4 and dn.content.shape == (2, 20, 8)
    # image 1 has one GT: slots 1 (positive) and 3 (negative) of every group are padding
    assert dn.valid[1].view(5, 2, 2)[:, :, 1].sum() == 0 and dn.valid[0].all()
    for b in range(2):
        q, g = dn.matches[b]
        assert len(q) == 5 * len(gt_labels[b])
        # without label noise the content is the label embedding of the matched GT
        torch.testing.assert_close(dn.content[b, q], emb(gt_labels[b][g]))
        half = torch.cat([gt_boxes[b][:, 2:], gt_boxes[b][:, 2:]], 1) / 2
        gt_xyxy = box_convert(gt_boxes[b], "cxcywh", "xyxy")
        pos = box_convert(dn.reference[b, q], "cxcywh", "xyxy")
        assert ((pos - gt_xyxy[g]).abs() < half[g] + 1e-5).all()
        neg_ref = dn.reference[b, q + dn.group_size // 2]
        neg = box_convert(neg_ref, "cxcywh", "xyxy")
        # corners pushed past each other collapse to a zero-size box (as in DINO); every
        # other negative has each corner moved by at least half the box size
        proper = (neg_ref[:, 2:] > 1e-3).all(1)
        assert proper.sum() >= 2
        assert ((neg - gt_xyxy[g]).abs()[proper] >= half[g][proper] - 1e-5).all()
    assert denoising_queries([torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)],
                             label_embedding=emb, num_classes=9) is None


# ---------------------------------------------------------------------- ATSS, soft-NMS
def naive_atss(anchors, counts, gt, topk):
    result = torch.full((anchors.shape[0],), -1)
    best = torch.full((anchors.shape[0],), -1.0)
    iou = box_iou(anchors, gt)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for g in range(gt.shape[0]):
        gc = (gt[g, :2] + gt[g, 2:]) / 2
        cand, start = [], 0
        for n in counts:
            d = ((centres[start:start + n] - gc) ** 2).sum(1).sqrt()
            cand += (d.argsort()[:min(topk, n)] + start).tolist()
            start += n
        ious = iou[cand, g]
        thr = ious.mean() + ious.std()
        for a, v in zip(cand, ious.tolist()):
            cx, cy = centres[a].tolist()
            inside = min(cx - gt[g, 0], cy - gt[g, 1], gt[g, 2] - cx, gt[g, 3] - cy) > 0.01
            if v >= thr and inside and v > best[a]:
                best[a], result[a] = v, g
    return result


def test_atss_assign_matches_naive_reference():
    g = torch.Generator().manual_seed(4)
    anchors, counts = [], []
    for stride in (8, 16):
        ys, xs = torch.meshgrid(torch.arange(64 // stride), torch.arange(96 // stride), indexing="ij")
        c = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride
        anchors.append(torch.cat([c - 2 * stride, c + 2 * stride], 1))
        counts.append(c.shape[0])
    anchors = torch.cat(anchors)
    xy = torch.rand(4, 2, generator=g) * torch.tensor([60.0, 40.0])
    gt = torch.cat([xy, xy + torch.rand(4, 2, generator=g) * 40 + 20], 1)
    fast = atss_assign(anchors, counts, gt, topk=5)
    assert torch.equal(fast, naive_atss(anchors, counts, gt, 5))
    assert (fast >= 0).sum() > 0
    assert (atss_assign(anchors, counts, torch.zeros(0, 4)) == -1).all()


def test_centerness_targets_hand_computed():
    points = torch.tensor([[5.0, 5.0], [2.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(centerness_targets(points, boxes),
                               torch.tensor([1.0, math.sqrt(2.0 / 8.0)]))


def test_soft_nms_hand_computed():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], [50, 50, 60, 60]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    labels = torch.tensor([[1, 1, 2, 1]])
    out = soft_nms(boxes, scores, labels, method="gaussian", sigma=0.5)
    # box 1 overlaps box 0 (same class) with IoU 0.5: 0.8 * exp(-0.25 / 0.5); box 2 is of
    # another class
    expected = torch.tensor([[0.9, 0.8 * math.exp(-0.5), 0.7, 0.6]])
    torch.testing.assert_close(out, expected)
    # linear: only overlaps above the IoU threshold decay, by 1 - IoU
    torch.testing.assert_close(soft_nms(boxes, scores, labels), scores)  # 0.5 <= 0.8
    torch.testing.assert_close(soft_nms(boxes, scores, labels, iou_threshold=0.4),
                               torch.tensor([[0.9, 0.4, 0.7, 0.6]]))
    iou = box_iou_batched(boxes)
    torch.testing.assert_close(iou[0], box_iou(boxes[0], boxes[0]))


def test_soft_nms_a_box_below_the_threshold_leaves_the_set():
    # IoU(A, B) = 0.8, IoU(A, C) = 70/110, IoU(B, C) = 70/90: B decays to 0.5 * 0.2 = 0.1 < 0.3
    # and leaves; had it stayed, it would have decayed C (0.45 * (1 - 7/9) = 0.1).
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 2, 10, 10], [0, 3, 10, 11]]])
    scores = torch.tensor([[0.9, 0.5, 0.45]])
    out = soft_nms(boxes, scores, torch.ones(1, 3, dtype=torch.int64), method="linear",
                   iou_threshold=0.7, score_threshold=0.3)
    torch.testing.assert_close(out, torch.tensor([[0.9, 0.0, 0.45]]))
    # a box below the threshold from the start is 0 and decays nothing (A would have taken B
    # to 0.1); B then takes C to 0.1, out too
    out = soft_nms(boxes, torch.tensor([[0.2, 0.5, 0.45]]), torch.ones(1, 3, dtype=torch.int64),
                   iou_threshold=0.7, score_threshold=0.3)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 0.0]]))
    out = soft_nms(boxes, torch.tensor([[0.2, 0.5, 0.45]]), torch.ones(1, 3, dtype=torch.int64),
                   iou_threshold=0.7, score_threshold=0.05)
    # B is picked first now: A falls to 0.04 and leaves, C to 0.1 and stays
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 0.45 * (1 - 7 / 9)]]))
    with pytest.raises(ConfigError, match="method"):
        soft_nms(boxes, scores, torch.ones(1, 3, dtype=torch.int64), method="hard")


def naive_soft_nms(boxes, scores, labels, method, iou_threshold, sigma, score_threshold):
    """Box by box, as the definition reads (Python floats)."""
    out = []
    for b in range(boxes.shape[0]):
        s = scores[b].tolist()
        remaining = [i for i in range(len(s)) if s[i] >= score_threshold]
        iou = box_iou(boxes[b].double(), boxes[b].double()).tolist()
        while remaining:
            i = max(remaining, key=lambda j: (s[j], -j))  # highest; the first one on ties
            remaining.remove(i)
            for j in list(remaining):
                if int(labels[b, j]) != int(labels[b, i]):
                    continue
                ov = iou[i][j]
                if method == "linear":
                    s[j] *= (1.0 - ov) if ov > iou_threshold else 1.0
                else:
                    s[j] *= math.exp(-ov * ov / sigma)
                if s[j] < score_threshold:
                    remaining.remove(j)
        out.append([v if v >= score_threshold else 0.0 for v in s])
    return torch.tensor(out)


@pytest.mark.parametrize("method,iou_threshold,score_threshold,seed", [
    ("linear", 0.8, 1e-3, 0), ("linear", 0.5, 0.05, 1), ("linear", 0.3, 0.2, 2),
    ("gaussian", 0.8, 1e-3, 3), ("gaussian", 0.8, 0.1, 4),
])
def test_soft_nms_matches_naive_reference(method, iou_threshold, score_threshold, seed):
    g = torch.Generator().manual_seed(seed)
    # clusters of jittered boxes, so that many pairs overlap strongly
    centres = torch.rand(2, 6, 1, 2, generator=g) * 80
    centres = (centres + torch.randn(2, 6, 8, 2, generator=g) * 2.0).view(2, 48, 2)
    wh = 10 + torch.rand(2, 48, 2, generator=g) * 3
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], dim=-1)
    scores = torch.rand(2, 48, generator=g)
    labels = torch.randint(1, 4, (2, 48), generator=g)
    out = soft_nms(boxes, scores, labels, method=method, iou_threshold=iou_threshold,
                   score_threshold=score_threshold)
    want = naive_soft_nms(boxes, scores, labels, method, iou_threshold, 0.5, score_threshold)
    torch.testing.assert_close(out, want.float(), atol=1e-5, rtol=1e-4)
    assert ((out > 0) & (out < scores)).any()  # some decayed
    if score_threshold > 0.01:
        assert ((out == 0) & (scores >= score_threshold)).any()  # some left the set


# ---------------------------------------------------------------------- the model
def test_training_losses_every_family_finite_and_trainable():
    model = tiny_model()
    images, targets = sample_batch()
    model.train()
    losses = model(images, targets)
    layers = len(model.decoder.layers)
    for i in range(layers):
        for kind in ("cls", "bbox", "giou"):
            for tag in (f"d{i}", f"dn_d{i}", f"aux0_d{i}", f"aux1_d{i}"):
                assert f"loss_{kind}_{tag}" in losses
    for key in ("loss_cls_enc", "loss_bbox_enc", "loss_giou_enc", "loss_rpn_cls",
                "loss_rpn_bbox", "loss_roi_cls", "loss_roi_giou", "loss_cb_scr",
                "loss_atss_cls", "loss_atss_giou", "loss_atss_centerness"):
        assert key in losses
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.backbone.conv1.weight.grad is not None  # from scratch the stem trains too


def test_training_without_branches_and_with_empty_targets():
    model = tiny_model(aux_branches=(), dn_number=0)
    images, targets = sample_batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model.train()(images, targets)
    assert not any("aux" in k or "dn" in k or "rpn" in k for k in losses)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    model = tiny_model(aux_branches=("rpn", "roi", "atss"))
    losses = model.train()(images, empty)
    assert "loss_cls_aux1_d0" in losses and "loss_giou_dn_d1" in losses
    assert all(torch.isfinite(v) for v in losses.values())


def test_encoder_checkpoint_gives_the_same_gradients():
    model = tiny_model(aux_branches=(), dn_number=0, num_encoder_layers=2).train()
    images, targets = sample_batch()

    def step():
        model.zero_grad()
        loss = sum(model(images, targets).values())
        loss.backward()
        return loss.detach(), model.encoder.layers[0].self_attn.value_proj.weight.grad.clone()

    loss_plain, grad_plain = step()
    model.encoder.checkpoint = True
    loss_ckpt, grad_ckpt = step()
    torch.testing.assert_close(loss_ckpt, loss_plain)
    torch.testing.assert_close(grad_ckpt, grad_plain)


def test_mixed_precision_step_on_cpu():
    """Autocast (bfloat16 on CPU) through every branch: losses stay float32 and finite."""
    model = tiny_model()
    images, targets = sample_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.eval()(images)
    assert out[0]["boxes"].dtype == torch.float32 and len(out[0]["boxes"]) <= 300


@pytest.mark.parametrize("use_soft_nms", [None, "linear", "gaussian"])
def test_eval_contract(use_soft_nms):
    model = tiny_model(soft_nms=use_soft_nms, pre_nms_topk=400).eval()
    images = [torch.rand(3, 300, 500), torch.rand(3, 200, 180)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        h, w = img.shape[-2:]
        assert set(o) == {"boxes", "labels", "scores"}
        assert 0 < len(o["boxes"]) <= 300
        assert o["labels"].dtype == torch.int64
        assert o["labels"].min() >= 1 and o["labels"].max() <= 9
        assert (o["boxes"][:, 0] >= 0).all() and (o["boxes"][:, 1] >= 0).all()
        assert (o["boxes"][:, 2] <= w + 1e-3).all() and (o["boxes"][:, 3] <= h + 1e-3).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()


def test_user_errors_name_the_fix():
    model = tiny_model(aux_branches=())
    images, targets = sample_batch()
    with pytest.raises(ConfigError, match="targets"):
        model.train()(images)
    bad = [dict(targets[0], labels=torch.tensor([0, 3])), targets[1]]
    with pytest.raises(DatasetError, match="labels"):
        model.train()(images, bad)
    with pytest.raises(ConfigError, match="num_querys"):
        build_moqam(num_querys=10)
    with pytest.raises(ConfigError, match="aux_branches"):
        build_moqam(backbone="resnet18", aux_branches=("fcos",))
    with pytest.raises(ConfigError, match="rpn"):
        build_collaborative_branches(("roi",), num_classes=9, embed_dim=64)
    with pytest.raises(ConfigError, match="backbone"):
        build_moqam(backbone="vgg16")


def test_profiles_and_release_defaults(monkeypatch):
    # Serve a random ResNet-50's weights instead of downloading ImageNet's: the release starts
    # from them, and the freezing rule applies to pretrained weights.
    import torchvision

    state = torchvision.models.resnet50().state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: state)
    assert set(MOQAM_PROFILES) == {"tiny", "release_scale", "colab", "full"}
    model = build_moqam(**MOQAM_PROFILES["full"], pretrained_backbone=True)
    assert isinstance(model, MOQAM)
    assert model.num_queries == 900 and len(model.decoder.layers) == 6
    assert len(model.encoder.layers) == 6 and model.embed_dim == 256
    assert model.decoder.layers[0].ffn.linear1.out_features == 2048
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    assert model.branches.rpn is not None and model.branches.atss is not None
    assert model.branches.roi.roi_heads.cb_scr is not None
    w = model.branches.roi
    assert (w.cls_weight, w.giou_weight) == (12.0, 120.0)
    assert model.loss_weights == {"cls": 1.0, "bbox": 5.0, "giou": 2.0}
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert any(n.startswith("layer1") for n in frozen) and "conv1.weight" in frozen
    assert all(p.requires_grad for n, p in model.backbone.named_parameters()
               if n.startswith("layer2"))


def test_backbone_from_scratch_trains_everything():
    # The one freezing rule (oralx_lib.models.backbones.freeze_rule): random weights have nothing
    # to keep, so every layer trains with ordinary BatchNorm; ImageNet weights are frozen like
    # the release (test_profiles_and_release_defaults).
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    model = build_moqam(**MOQAM_PROFILES["tiny"])
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    kept = build_moqam(**MOQAM_PROFILES["tiny"], trainable_backbone_layers=3,
                       freeze_batchnorm=True)
    frozen = [n for n, p in kept.backbone.named_parameters() if not p.requires_grad]
    assert "conv1.weight" in frozen and any(n.startswith("layer1") for n in frozen)


def test_build_model_factory_returns_moqam():
    from oralx_lib.models.factory import build_model

    model = build_model("moqam", backbone="resnet18", embed_dim=64, num_heads=4,
                        num_encoder_layers=1, num_decoder_layers=1, aux_branches=())
    assert isinstance(model, MOQAM)


@pytest.mark.slow
def test_overfits_one_synthetic_image():
    """Tiny config, query head only, 60 AdamW steps on one 128 x 230 image (~25 s on 1 core)."""
    torch.manual_seed(0)
    height, width = 128, 230
    model = tiny_model(aux_branches=(), min_size=height, max_size=width)
    image = torch.full((3, height, width), 0.1)
    boxes = torch.tensor([[16.0, 24, 64, 88], [120, 32, 152, 56], [160, 72, 216, 120]])
    labels = torch.tensor([2, 5, 7])
    for (x1, y1, x2, y2), value in zip(boxes.int().tolist(), [0.9, 0.6, 0.4]):
        image[:, y1:y2, x1:x2] = value
    image[1] += torch.rand(height, width) * 0.05
    targets = [{"boxes": boxes, "labels": labels}]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    model.train()
    history = []
    for _ in range(60):
        loss = sum(model([image], targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.5 * history[0]
    model.eval()
    with torch.no_grad():
        out = model([image])[0]
    top = out["boxes"][:10]
    iou = box_iou(boxes, top)
    assert (iou.max(1).values >= 0.5).all(), iou.max(1)
    for g in range(3):  # some box that finds a GT carries its label
        hits = (iou[g] >= 0.5).nonzero().flatten()
        assert (out["labels"][:10][hits] == labels[g]).any()


def test_inverse_sigmoid_round_trip():
    x = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid()[1:4], x[1:4])
    assert torch.isfinite(inverse_sigmoid(x)).all()
