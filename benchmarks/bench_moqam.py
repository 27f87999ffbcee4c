"""Speed (and memory) of the complete MOQAM against the two-stage ``moqam_rcnn``, in one run.

CPU (default)::

    python benchmarks/bench_moqam.py --backbone resnet18,resnet50 --size 512x288 --batch 2

times one training step (forward, backward, SGD step) and inference per image for both models
at the same input size, and prints the MOQAM / moqam_rcnn ratios.

GPU::

    python benchmarks/bench_moqam.py --device cuda --size 1333x754 --amp

adds peak GPU memory. Every run reports images/s and the share of MOQAM's training step spent
in multi-scale deformable attention (its forward range plus ``grid_sampler`` backward, from
``torch.profiler``; device time on a GPU, CPU time otherwise).

Memory estimate without a GPU::

    python benchmarks/bench_moqam.py --memory colab

counts the bytes autograd saves for backward during one training step of that profile at its
input size (each storage once; once in fp32, once under CPU bfloat16 autocast standing in for
CUDA float16 AMP), plus parameters, gradients and AdamW state, and prints the estimates.

``--out FILE.json`` writes the results with the command, the git commit and the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oralx_lib.models.factory import build_model  # noqa: E402
from oralx_lib.profiles import MOQAM_PROFILES  # noqa: E402

HEADS = {
    # MOQAM head sizes at the release (the "full" profile) or smaller, without backbone/size
    name: {k: v for k, v in cfg.items() if k not in ("backbone", "min_size", "max_size")}
    for name, cfg in MOQAM_PROFILES.items()
}


def synthetic_batch(batch: int, width: int, height: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        n = 6
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.15, height * 0.15]) + 8
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append({"boxes": boxes.to(device),
                        "labels": torch.randint(1, 10, (n,), generator=g).to(device)})
    return images, targets


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(name: str, backbone: str, width: int, height: int, head: str, device: str):
    size = dict(min_size=min(width, height), max_size=max(width, height))
    if name == "moqam":
        model = build_model("moqam", backbone=backbone, **HEADS[head], **size)
    else:
        model = build_model("moqam_rcnn", backbone=backbone, **size)
    return model.to(device)


def time_model(model, images, targets, device: str, repeat: int, amp: bool):
    """Mean seconds of a training step and of batched inference (after one warm-up)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.startswith("cuda"))
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def train_step():
        model.train()
        with torch.autocast(dev_type, dtype=torch.float16, enabled=amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    train_step()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeat):
        train_step()
    sync(device)
    train_s = (time.perf_counter() - start) / repeat
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None

    model.eval()
    with torch.no_grad(), torch.autocast(dev_type, dtype=torch.float16, enabled=amp):
        model(images)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            model(images)
        sync(device)
    infer_s = (time.perf_counter() - start) / repeat
    return train_s, infer_s, peak, train_step


def attention_share(train_step, device: str) -> float:
    """Share of one profiled training step spent in deformable attention."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        train_step()
        sync(device)
    events = prof.key_averages()
    cuda = device.startswith("cuda")

    def total(e):
        return getattr(e, "device_time_total", 0.0) if cuda else e.cpu_time_total

    def self_time(e):
        return getattr(e, "self_device_time_total", 0.0) if cuda else e.self_cpu_time_total

    step = sum(self_time(e) for e in events)
    attn = sum(total(e) for e in events
               if e.key in ("multi_scale_deformable_attention", "GridSampler2DBackward0"))
    return float(attn / step) if step else float("nan")


def saved_activation_bytes(model, images, targets, low_precision: bool = False) -> int:
    """Bytes autograd saves for backward in one training forward (each storage once).

    ``low_precision``: run under CPU autocast with bfloat16, whose op lists (linear, conv and
    matmul in 16 bit; norms, losses and ``grid_sampler`` in fp32) mirror CUDA's float16 AMP,
    so the count approximates the activations of a GPU AMP step.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=low_precision):
        losses = model(images, targets)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = sum(n for ptr, n in seen.items() if ptr not in param_ptrs)
    del losses
    return total


def memory_estimate(profile_name: str, batch: int, scales: list[float]) -> dict:
    """Training memory of a profile at its input size, from CPU accounting.

    With one scale ``1.0`` the saved activations are counted at the profile's size. With
    several smaller scales (default 0.5 and 0.7 of each side, to stay inside a small machine's
    RAM) they are counted at each and extrapolated linearly in the pixel count (the backbone,
    encoder and branch activations grow with the pixels; the query part is constant).
    """
    from oralx_lib.engine import make_config

    config = make_config(profile_name, model="moqam")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_overrides.items()}
    torch.manual_seed(0)
    model = build_model("moqam", backbone=config.backbone, **cfg)
    # OralXrays-9 images are reported as 1991 x 1127; the model's transform resizes them, here
    # to the largest training size of the profile
    images, targets = synthetic_batch(batch, 1991, 1127, "cpu")
    min_size = max(model.transform.min_size)
    max_size = model.transform.max_size

    def input_size(factor: float) -> tuple[int, int]:
        scale = min(min_size * factor / 1127, max_size * factor / 1991)
        return round(1991 * scale), round(1127 * scale)

    start = time.perf_counter()
    points = []
    recomputed = model.encoder.checkpointed_layers
    for factor in tqdm(scales, desc="memory (fp32 + AMP) per scale"):
        model.transform.min_size = (round(min_size * factor),)
        model.transform.max_size = round(max_size * factor)
        w, h = input_size(factor)
        fp32 = saved_activation_bytes(model, images, targets)
        amp = saved_activation_bytes(model, images, targets, low_precision=True)
        stored = fp32
        if recomputed:  # fp32 with every encoder layer stored: what one layer keeps
            checkpoint, model.encoder.checkpoint = model.encoder.checkpoint, False
            stored = saved_activation_bytes(model, images, targets)
            model.encoder.checkpoint = checkpoint
        points.append((w * h, fp32, amp, (stored - fp32) / max(recomputed, 1)))
    elapsed = time.perf_counter() - start
    width, height = input_size(1.0)
    target = width * height
    if len(points) == 1:
        saved, saved_amp, layer = points[0][1], points[0][2], points[0][3]
    else:
        xs = torch.tensor([p[0] for p in points], dtype=torch.float64)
        design = torch.stack([torch.ones_like(xs), xs], 1)

        def extrapolate(ys):
            coef = torch.linalg.lstsq(design, torch.tensor(ys, dtype=torch.float64)[:, None]).solution
            return float(coef[0, 0] + coef[1, 0] * target)

        saved = extrapolate([p[1] for p in points])
        saved_amp = extrapolate([p[2] for p in points])
        layer = extrapolate([p[3] for p in points])
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # fp32 weights (4 B) + gradients (4 B) + AdamW moments (8 B) for trainable parameters
    state = 4 * n_params + 12 * n_train
    gib = 1024 ** 3
    # while one recomputed encoder layer runs its backward, its activations exist once more
    layer_amp = layer * (saved_amp / saved if saved else 1.0)
    return {
        "profile": profile_name, "batch": batch, "input": f"{width}x{height}",
        "params_M": n_params / 1e6, "saved_activations_GiB": saved / gib,
        "saved_activations_amp_GiB": saved_amp / gib,
        "encoder_layers_recomputed": recomputed,
        "one_encoder_layer_GiB": layer / gib,
        "estimate_fp32_GiB": (state + saved + layer) / gib,
        "estimate_amp_GiB": (state + saved_amp + layer_amp) / gib,
        "measured": [{"pixels": p[0], "fp32_GiB": p[1] / gib, "amp_GiB": p[2] / gib,
                      "one_encoder_layer_fp32_GiB": p[3] / gib} for p in points],
        "seconds_cpu": elapsed,
        "method": "bytes of tensors saved for backward (saved_tensors_hooks, one count per "
                  "storage), fp32 and under CPU bfloat16 autocast (as a stand-in for CUDA "
                  "float16 AMP), measured at the given scales and extrapolated linearly in "
                  "pixels, + 16 B per trainable and 4 B per frozen parameter, + the "
                  "activations of one recomputed encoder layer (fp32 count with the layers "
                  "stored minus recomputed, per layer; scaled by the AMP/fp32 ratio). "
                  "Excludes allocator fragmentation and transient workspaces (add ~20-30%). "
                  "An estimate made on a CPU, not a GPU measurement.",
    }


def hardware(device: str) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                       cwd=Path(__file__).resolve().parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="512x288", help="WIDTHxHEIGHT of the input images")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18",
                        help="comma-separated: resnet18,resnet50")
    parser.add_argument("--head", default="full", choices=sorted(HEADS),
                        help="MOQAM head sizes (full = the release)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-baseline", action="store_true", help="skip moqam_rcnn")
    parser.add_argument("--memory", default=None, choices=sorted(MOQAM_PROFILES),
                        help="only estimate the training memory of a profile (CPU)")
    parser.add_argument("--memory-scales", default="0.5,0.7",
                        help="side-length factors measured for --memory (1 = measure directly)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "commit": commit(), "hardware": hardware(args.device)}

    if args.memory:
        scales = [float(v) for v in args.memory_scales.split(",")]
        result = memory_estimate(args.memory, args.batch, scales)
        record["memory"] = result
        print(f"{'profile':10s} {'input':>10s} {'batch':>5s} {'params M':>9s} "
              f"{'saved fp32':>10s} {'saved AMP':>10s} {'fp32 GiB':>9s} {'AMP GiB':>8s}")
        print(f"{result['profile']:10s} {result['input']:>10s} {result['batch']:>5d} "
              f"{result['params_M']:9.1f} {result['saved_activations_GiB']:10.2f} "
              f"{result['saved_activations_amp_GiB']:10.2f} "
              f"{result['estimate_fp32_GiB']:9.2f} {result['estimate_amp_GiB']:8.2f}")
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        images, targets = synthetic_batch(args.batch, width, height, args.device)
        rows = []
        names = ["moqam"] + ([] if args.no_baseline else ["moqam_rcnn"])
        runs = [(b, n) for b in args.backbone.split(",") for n in names]
        progress = tqdm(total=len(runs), desc="models timed")
        for backbone in args.backbone.split(","):
            timings = {}
            for name in names:
                progress.set_postfix_str(f"{name} / {backbone}")
                torch.manual_seed(0)
                model = build(name, backbone, width, height, args.head, args.device)
                train_s, infer_s, peak, step = time_model(model, images, targets, args.device,
                                                          args.repeat, args.amp)
                row = {"model": name, "backbone": backbone, "train_step_s": train_s,
                       "inference_s_per_image": infer_s / args.batch,
                       "train_images_per_s": args.batch / train_s,
                       "inference_images_per_s": args.batch / infer_s}
                if peak is not None:
                    row["peak_memory_GiB"] = peak / 1024 ** 3
                if name == "moqam":
                    row["deformable_attention_share"] = attention_share(step, args.device)
                timings[name] = row
                rows.append(row)
                del model
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                progress.update()
            if "moqam_rcnn" in timings:
                m, r = timings["moqam"], timings["moqam_rcnn"]
                m["train_ratio_vs_moqam_rcnn"] = m["train_step_s"] / r["train_step_s"]
                m["inference_ratio_vs_moqam_rcnn"] = (m["inference_s_per_image"]
                                                     / r["inference_s_per_image"])
        progress.close()
        record.update(size=args.size, batch=args.batch, head=args.head, amp=args.amp,
                      device=args.device, results=rows)
        header = (f"{'model':11s} {'backbone':9s} {'train s/step':>12s} {'infer s/img':>11s} "
                  f"{'train img/s':>11s} {'ratio train':>11s} {'ratio infer':>11s}")
        extra = args.device.startswith("cuda")
        header += f" {'attn share':>10s}"
        if extra:
            header += f" {'peak GiB':>9s}"
        print(f"{args.size}, batch {args.batch}, {args.device}, head={args.head}, amp={args.amp}")
        print(header)
        for r in rows:
            line = (f"{r['model']:11s} {r['backbone']:9s} {r['train_step_s']:12.3f} "
                    f"{r['inference_s_per_image']:11.3f} {r['train_images_per_s']:11.2f} "
                    f"{r.get('train_ratio_vs_moqam_rcnn', float('nan')):11.2f} "
                    f"{r.get('inference_ratio_vs_moqam_rcnn', float('nan')):11.2f}")
            line += f" {r.get('deformable_attention_share', float('nan')):10.2f}"
            if extra:
                line += f" {r.get('peak_memory_GiB', float('nan')):9.2f}"
            print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
