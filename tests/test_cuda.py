"""The GPU path: every model trains on CUDA in fp32, fp16 (with a gradient scaler) and bf16;
deformable attention agrees with the CPU; its forward makes no host synchronisation; training
resumes on CUDA exactly where it stopped.

Marked ``cuda`` and skipped without a GPU. ``python benchmarks/gpu_check.py`` runs them (with
the benchmarks) on one GPU; ``python -m pytest -m cuda`` runs them alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).parent))

MODELS = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "moqam")
PRECISIONS = ("fp32", "fp16", "bf16")


def _model(name):
    from oralx_lib.engine import make_config
    from oralx_lib.engine.inference import build_from_config

    torch.manual_seed(0)
    config = make_config("tiny", model=name, model_overrides={"min_size": 256, "max_size": 448})
    return build_from_config(config).cuda().train()


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 256, 448, generator=g).cuda(), torch.rand(3, 240, 400, generator=g).cuda()]
    targets = [
        {"boxes": torch.tensor([[30.3, 40.7, 120.1, 150.9], [200.0, 20.0, 260.0, 70.0]]).cuda(),
         "labels": torch.tensor([2, 7]).cuda()},
        {"boxes": torch.zeros(0, 4).cuda(), "labels": torch.zeros(0, dtype=torch.int64).cuda()},
    ]
    return images, targets


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_one_step(name, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = _model(name)
    images, targets = _batch()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    # fp16: a scaler as the engine uses it; a step it skips (inf gradients at the first
    # scale) is retried at the halved scale, as training would go on
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    before = [p.detach().clone() for p in params]
    for _ in range(8):
        with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            losses = model(images, targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == []  # DDP without find_unused_parameters needs every gradient
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        if not scaler.is_enabled() or scaler.get_scale() >= scale:
            break  # the step was taken
    changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    assert changed > 0.9 * len(params)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float16,
                                         enabled=dtype is not None):
        out = model(images)
    assert all(o["boxes"].dtype == torch.float32 and o["boxes"].is_cuda for o in out)


def test_deformable_attention_cuda_matches_cpu():
    from oralx_lib.models.deformable_attention import MSDeformAttn, multi_scale_deformable_attention

    g = torch.Generator().manual_seed(0)
    shapes = ((40, 56), (20, 28), (10, 14), (5, 7), (3, 4))
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 8, 32, generator=g, requires_grad=True)
    locations = (torch.rand(2, 300, 8, 5, 4, 2, generator=g) * 1.2 - 0.1).requires_grad_()
    weights = torch.rand(2, 300, 8, 5, 4, generator=g).softmax(-1).requires_grad_()
    cpu = multi_scale_deformable_attention(value, shapes, locations, weights)
    cpu.square().sum().backward()
    grads_cpu = [t.grad.clone() for t in (value, locations, weights)]
    v, lo, w = (t.detach().cuda().requires_grad_() for t in (value, locations, weights))
    gpu = multi_scale_deformable_attention(v, shapes, lo, w)
    gpu.square().sum().backward()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    for a, b in zip((v.grad, lo.grad, w.grad), grads_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)
    attn = MSDeformAttn(embed_dim=256, num_levels=5, num_heads=8, num_points=4)
    query = torch.randn(2, 300, 256, generator=g)
    ref = torch.rand(2, 300, 5, 4, generator=g) * 0.6 + 0.2
    memory = torch.randn(2, s, 256, generator=g)
    want = attn(query, ref, memory, shapes)
    got = attn.cuda()(query.cuda(), ref.cuda(), memory.cuda(), shapes)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


def test_query_head_forward_makes_no_host_sync():
    """The encoder and decoder (deformable attention with Python level sizes) never wait for
    the GPU: CUDA's sync debug mode raises on any synchronising call."""
    from oralx_lib.models.moqam_transformer import DeformableDecoder, DeformableEncoder

    shapes = ((32, 48), (16, 24), (8, 12), (4, 6), (2, 3))
    s = sum(h * w for h, w in shapes)
    sizes = dict(embed_dim=256, num_heads=8, num_levels=5, num_points=4, ffn_dim=2048)
    encoder = DeformableEncoder(num_layers=6, **sizes).cuda()
    decoder = DeformableDecoder(num_layers=6, **sizes).cuda()
    src, pos = torch.randn(2, s, 256, device="cuda"), torch.randn(2, s, 256, device="cuda")
    ratios = torch.ones(2, 5, 2, device="cuda")
    mask = torch.zeros(2, s, dtype=torch.bool, device="cuda")
    tgt = torch.randn(2, 900, 256, device="cuda")
    reference = torch.rand(2, 900, 4, device="cuda") * 0.5 + 0.25
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        memory = encoder(src, pos, shapes, ratios, mask)
        hidden, boxes = decoder(tgt, reference, memory, shapes, ratios, mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(boxes) == 6 and torch.isfinite(boxes[-1]).all()


def test_resume_on_cuda_reproduces_the_losses(tmp_path):
    from test_engine import make_tiny_set, tiny_config

    from oralx_lib.engine import load_checkpoint, read_jsonl, train

    root = make_tiny_set(tmp_path / "data")

    def losses(out):
        return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl")
                if r["kind"] == "train"}

    settings = dict(device="cuda", checkpoint_every=2, epochs=2, max_iters_per_epoch=3)
    ref_out = tmp_path / "ref"
    train(tiny_config(root, ref_out, **settings), progress=False)

    out = tmp_path / "resumed"

    def crash_after_step_5(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(root, out, **settings), progress=False, on_step=crash_after_step_5)
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4 and state["rng"][0]["cuda"]  # the CUDA generator is kept
    train(tiny_config(root, out, **settings), progress=False, resume=True)
    ref, resumed = losses(ref_out), losses(out)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):  # atomics in CUDA backward kernels: equal up to rounding
        assert resumed[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5), step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
