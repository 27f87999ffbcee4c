"""Our MOQAM query head against Hugging Face ``transformers``' Deformable DETR, same sizes, same
images, same run; then what the complete MOQAM costs on top of its query head.

::

    pip install "oralx-lib[peer]"        # transformers: for this benchmark only
    python benchmarks/bench_peer.py --out benchmarks/results/peer_cpu.json
    python benchmarks/bench_peer.py --device cuda --amp --out benchmarks/results/peer_gpu.json

Both models, randomly initialised, at the release's sizes: ResNet-50 (stem and first stage
frozen, frozen BatchNorm: both libraries' rule with ImageNet weights), 5 feature levels at
strides 4..64 (the backbone's C2..C5 projected to 256 channels, plus a stride-2 3x3 convolution
on C5), a 6-layer deformable encoder and 6-layer decoder, 8 heads, 4 points, FFN 2048, no
dropout, two-stage query selection of ``--queries`` proposals, iterative box refinement,
Hungarian matching and a loss on the encoder proposals and every decoder layer.

- ours, the **query head**: ``build_moqam(aux_branches=(), dn_number=0, soft_nms=None)``;
- ours, the **complete MOQAM**: the default branches (DI-RPN RPN, CB-SCR RoI head, ATSS),
  denoising and linear soft-NMS (its inference differs from the query head only by soft-NMS);
- the peer: ``DeformableDetrForObjectDetection(DeformableDetrConfig(two_stage=True,
  with_box_refine=True, num_feature_levels=5, backbone_config=ResNetConfig(out_features=
  ["stage1", ..., "stage4"]), auxiliary_loss=True, dropout=0, ...))``.

The peer's backbone trains the same parameters as ours (ResNet ``layer2..layer4``): transformers
intends that, but with a ResNet configuration its name test misses and it freezes the whole
backbone, which would spare it the backbone's backward pass.

Every repetition times one training step (forward, loss, backward, AdamW step) of each model
in turn on the same batch, then one inference pass of each, so that the machine's load drifts
alike for all; the ratios (ours / peer, per repetition, and their median) are what to read,
not the absolute times. On a CPU the ratios are of **CPU time** (``time.process_time``, all
threads of this process): on a shared machine other processes stretch wall time by whatever
they take, CPU time much less; wall times are kept too. On a GPU they are of synchronised wall
time. Results with provenance go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import provenance, write_results  # noqa: E402


def peer_model(queries: int, num_classes: int):
    try:
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
    except ImportError as err:  # the benchmark-only extra
        raise SystemExit(
            f"bench_peer.py needs Hugging Face transformers ({err}): pip install "
            "'oralx-lib[peer]' (or pip install transformers). The library does not need it."
        ) from None
    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                            layer_type="bottleneck",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DeformableDetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        num_labels=num_classes, num_queries=queries, two_stage=True, with_box_refine=True,
        two_stage_num_proposals=queries, num_feature_levels=5, d_model=256,
        encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_n_points=4, decoder_n_points=4,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, auxiliary_loss=True, disable_custom_kernels=True,
    )
    model = DeformableDetrForObjectDetection(config)
    # transformers means to train the ResNet's stages 1..3 (layer2..layer4) and freeze the
    # stem and stage 0, as the release and our library do, but it tests the parameter names
    # for "stage.1" where the AutoBackbone ResNet names them "stages.1": the whole backbone
    # ends up frozen (transformers 5.24). Train the same stages as ours, for a fair comparison.
    for name, param in model.model.backbone.named_parameters():
        param.requires_grad_(any(f"stages.{i}." in name for i in (1, 2, 3)))
    return model


def our_models(queries: int, width: int, height: int):
    from oralx_lib.models import build_moqam

    common = dict(backbone="resnet50", num_queries=queries, min_size=min(width, height),
                  max_size=max(width, height), size_divisible=1,
                  trainable_backbone_layers=3, freeze_batchnorm=True)
    torch.manual_seed(0)
    head = build_moqam(aux_branches=(), dn_number=0, soft_nms=None, **common)
    torch.manual_seed(0)
    full = build_moqam(**common)
    return head, full


def batch(n: int, width: int, height: int, device: str, seed: int = 0):
    """Images already at the input size (ours normalise them, the peer gets them normalised)
    and 8 boxes per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, height, width, generator=g)
    xy = torch.rand(n, 8, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = torch.rand(n, 8, 2, generator=g) * torch.tensor([width * 0.15, height * 0.15]) + 8
    boxes = torch.cat([xy, xy + wh], -1)
    labels = torch.randint(1, 10, (n, 8), generator=g)
    ours = ([img.to(device) for img in images],
            [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels)])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    cxcywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
                       -1) / scale
    peer = ((images - mean) / std).to(device), [
        {"class_labels": (lab - 1).to(device), "boxes": c.to(device)}
        for lab, c in zip(labels, cxcywh)]
    return ours, peer


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stepper(name: str, model, inputs, device: str, amp: bool):
    """``(train_step, infer)`` closures for one model."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    dtype = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=amp and dtype == torch.float16)

    def loss_of():
        if name == "peer":
            pixels, labels = inputs
            return model(pixel_values=pixels, labels=labels).loss
        images, targets = inputs
        return sum(model(images, targets).values())

    def train_step():
        model.train()
        with torch.autocast(device, dtype=dtype, enabled=amp):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    @torch.no_grad()
    def infer():
        model.eval()
        with torch.autocast(device, dtype=dtype, enabled=amp):
            if name == "peer":
                return model(pixel_values=inputs[0]).pred_boxes
            return model(inputs[0])

    return train_step, infer


def timed(fn, device: str) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of one call."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", default="512x320", help="WIDTHxHEIGHT of the input")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--amp", action="store_true", help="autocast (bf16, or fp16 + scaler)")
    parser.add_argument("--no-full", action="store_true", help="skip the complete MOQAM")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no GPU; use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    peer = peer_model(args.queries, 9).to(args.device)
    head, full = our_models(args.queries, width, height)
    models = {"peer": peer, "ours_head": head.to(args.device)}
    if not args.no_full:
        models["ours_full"] = full.to(args.device)
    ours_in, peer_in = batch(args.batch, width, height, args.device)
    steps = {name: stepper("peer" if name == "peer" else "ours", m,
                           peer_in if name == "peer" else ours_in, args.device, args.amp)
             for name, m in models.items()}
    times = {name: {"train_s": [], "inference_s": [], "train_cpu_s": [], "inference_cpu_s": []}
             for name in models}
    for rep in range(args.warmup + args.repeat):
        for name, (train_step, infer) in steps.items():
            t_train, c_train = timed(train_step, args.device)
            t_infer, c_infer = timed(infer, args.device)
            if rep >= args.warmup:
                for key, value in (("train_s", t_train), ("inference_s", t_infer),
                                   ("train_cpu_s", c_train), ("inference_cpu_s", c_infer)):
                    times[name][key].append(value)
            print(f"rep {rep + 1}/{args.warmup + args.repeat} {name:<10} train {t_train:7.2f} s"
                  f" (CPU {c_train:7.2f} s)  inference {t_infer:7.2f} s (CPU {c_infer:7.2f} s)"
                  + ("  (warm-up)" if rep < args.warmup else ""), flush=True)
    # the ratios are of CPU time on a CPU, of (synchronised) wall time on a GPU
    train_key, infer_key = (("train_cpu_s", "inference_cpu_s") if args.device == "cpu"
                            else ("train_s", "inference_s"))

    def ratios(a: str, b: str, key: str) -> list[float]:
        return [x / y for x, y in zip(times[a][key], times[b][key])]

    result = {
        "settings": {"device": args.device, "input": f"{width}x{height}", "batch": args.batch,
                     "queries": args.queries, "amp": args.amp, "warmup": args.warmup,
                     "repeat": args.repeat},
        "parameters_M": {name: sum(p.numel() for p in m.parameters()) / 1e6
                         for name, m in models.items()},
        "times": times,
        "median": {name: {k: statistics.median(v) for k, v in t.items()}
                   for name, t in times.items()},
        "ratios_of": "CPU time" if args.device == "cpu" else "wall time",
        "ours_head_over_peer": {
            "train_step_ratios": ratios("ours_head", "peer", train_key),
            "inference_ratios": ratios("ours_head", "peer", infer_key),
            "train_step_wall_ratios": ratios("ours_head", "peer", "train_s"),
            "inference_wall_ratios": ratios("ours_head", "peer", "inference_s"),
        },
        "peer": "transformers " + __import__("transformers").__version__
                + " DeformableDetrForObjectDetection (two_stage, with_box_refine, 5 levels)",
    }
    r = result["ours_head_over_peer"]
    r["train_step_ratio_median"] = statistics.median(r["train_step_ratios"])
    r["inference_ratio_median"] = statistics.median(r["inference_ratios"])
    if "ours_full" in models:
        result["full_over_head"] = {
            "train_step_ratios": ratios("ours_full", "ours_head", train_key),
            "inference_ratios": ratios("ours_full", "ours_head", infer_key),
        }
        f = result["full_over_head"]
        f["train_step_ratio_median"] = statistics.median(f["train_step_ratios"])
        f["inference_ratio_median"] = statistics.median(f["inference_ratios"])
    print(json.dumps({k: result[k] for k in ("parameters_M", "ours_head_over_peer")
                      + (("full_over_head",) if "full_over_head" in result else ())}, indent=1))
    write_results(args.out, result)
    return {"provenance": provenance(), **result}


if __name__ == "__main__":
    main()
