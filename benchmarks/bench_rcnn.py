"""Train-step time of the two-stage detectors, against each other and torchvision's stock model.

One step = forward + backward + SGD step on a fixed batch. Models are timed round-robin (one
step of each in turn, ``--repeats`` rounds after ``--warmup`` rounds), so a slower machine
phase hits all of them alike; the median is reported. On CPU the ratios use the process's CPU
time (``time.process_time``, 1 thread by default), which other jobs on a shared machine
disturb far less than wall time; wall time is reported too. The references in the same run:

- ``faster_rcnn`` with the same backbone and input (the target: ``moqam_rcnn`` <= 1.10 x);
- torchvision's ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
  num_classes=10, min_size, max_size)`` (3 anchors per location; ours default to the release's 9,
  so ``faster_rcnn_tv_anchors`` is also timed with ``anchors="torchvision"``).

    python benchmarks/bench_rcnn.py [--size 512x288] [--batch 2] [--repeats 3] [--out FILE.json]
    python benchmarks/bench_rcnn.py --device cuda --size 1333x754 --amp --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torchvision.models.detection import fasterrcnn_resnet50_fpn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from _common import write_results  # noqa: E402
from oralx_lib.models import build_model  # noqa: E402

MODELS = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "faster_rcnn_tv_anchors", "torchvision_stock")


def make_batch(width: int, height: int, batch: int, device: torch.device):
    """Images ``(3, H, W)`` and targets with small, medium and large boxes, seeded."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        n = 12
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
        wh = 8.0 + torch.rand(n, 2, generator=g) ** 2 * torch.tensor([width * 0.2, height * 0.2])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([width - 1.0, height - 1.0]))], dim=1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 10, (n,), generator=g).to(device)})
    return images, targets


def build(name: str, backbone: str, width: int, height: int) -> torch.nn.Module:
    size = {"min_size": min(width, height), "max_size": max(width, height)}
    if name == "torchvision_stock":
        return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=10, **size)
    if name == "faster_rcnn_tv_anchors":
        return build_model("faster_rcnn", backbone=backbone, anchors="torchvision", **size)
    return build_model(name, backbone=backbone, **size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512x288", help="WxH of the input images")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (CUDA)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.backbone != "resnet50" and "torchvision_stock" in args.models:
        args.models.remove("torchvision_stock")  # the stock model is ResNet-50 only

    images, targets = make_batch(width, height, args.batch, device)
    models, optimizers, scalers = {}, {}, {}
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, args.backbone, width, height).to(device).train()
        models[name] = model
        optimizers[name] = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        scalers[name] = torch.amp.GradScaler(device.type, enabled=args.amp)

    def step(name: str) -> tuple[float, float]:
        """One train step; returns (wall seconds, process CPU seconds)."""
        model, opt, scaler = models[name], optimizers[name], scalers[name]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp):
            losses = model(images, targets)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, time.process_time() - start_cpu

    use_cpu_time = device.type == "cpu"
    times = {name: [] for name in models}
    wall = {name: [] for name in models}
    peak = {}
    for round_ in tqdm(range(args.warmup + args.repeats), desc="rounds"):
        for name in models:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, cpu_seconds = step(name)
            if round_ >= args.warmup:
                times[name].append(cpu_seconds if use_cpu_time else seconds)
                wall[name].append(seconds)
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))

    rows = []
    base = statistics.median(times["faster_rcnn"]) if "faster_rcnn" in times else None
    stock = statistics.median(times["torchvision_stock"]) if "torchvision_stock" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        row = {
            "model": name,
            "clock": "process_cpu" if use_cpu_time else "wall",
            "median_s": med,
            "images_per_s": args.batch / med,
            "times_s": ts,
            "median_wall_s": statistics.median(wall[name]),
            "wall_times_s": wall[name],
        }
        row["ratio_to_faster_rcnn"] = med / base if base else None
        row["ratio_to_torchvision_stock"] = med / stock if stock else None
        if name in peak:
            row["peak_memory_mib"] = peak[name] / 2**20
        rows.append(row)

    print(
        f"train step (fwd+bwd+SGD), {args.backbone}, {width}x{height}, batch {args.batch}, {device}"
        f"{' amp' if args.amp else ''}, {args.threads} thread(s), median of {args.repeats}"
    )
    clock = "CPU s/step" if use_cpu_time else "s/step"
    print(f"{'model':<24} {clock:>10} {'wall s':>8} {'img/s':>7} {'x faster_rcnn':>14} {'x tv stock':>11} {'peak MiB':>9}")
    for r in rows:
        fr = f"{r['ratio_to_faster_rcnn']:.3f}" if r["ratio_to_faster_rcnn"] else "-"
        tv = f"{r['ratio_to_torchvision_stock']:.3f}" if r["ratio_to_torchvision_stock"] else "-"
        mem = f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else "-"
        print(
            f"{r['model']:<24} {r['median_s']:10.3f} {r['median_wall_s']:8.3f} {r['images_per_s']:7.2f} "
            f"{fr:>14} {tv:>11} {mem:>9}"
        )
    if base and "moqam_rcnn" in times:
        ratio = statistics.median(times["moqam_rcnn"]) / base
        print(f"moqam_rcnn / faster_rcnn = {ratio:.3f} (target <= 1.10): {'OK' if ratio <= 1.10 else 'OVER'}")
    write_results(
        args.out,
        {
            "size": [width, height],
            "batch": args.batch,
            "backbone": args.backbone,
            "device": str(device),
            "amp": args.amp,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
