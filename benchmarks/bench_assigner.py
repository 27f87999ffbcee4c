"""Anchor assignment speed: our assigners against torchvision's ``Matcher`` on the same IoU matrix.

100k anchors x 50 ground-truth boxes by default (about one 1333 x 800 image's RPN anchors).
The reference is ``torchvision.models.detection._utils.Matcher(0.7, 0.3, True)`` in the same
run; the target is DI-RPN's assignment at most 2x its time.

    python benchmarks/bench_assigner.py [--anchors 100000] [--gts 50] [--repeats 30]
                                        [--device cpu|cuda] [--out FILE.json]
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
from torchvision.models.detection._utils import Matcher  # noqa: E402
from tqdm import tqdm  # noqa: E402

from _common import write_results  # noqa: E402
from oralx_lib.models import DynamicIoUAssigner, FixedIoUAssigner, safe_box_iou  # noqa: E402


def random_boxes(n: int, generator: torch.Generator, size=(1333.0, 800.0), max_wh=300.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * torch.tensor(size)
    wh = 4.0 + torch.rand(n, 2, generator=generator) ** 2 * max_wh
    return torch.cat([xy, xy + wh], dim=1)


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--gts", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    gt = random_boxes(args.gts, g).to(device)
    anchors = random_boxes(args.anchors, g).to(device)
    iou = safe_box_iou(gt, anchors)

    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    cases = {
        "reference: torchvision Matcher(0.7, 0.3, low-quality)": lambda: matcher(iou),
        "FixedIoUAssigner(iou)": lambda: FixedIoUAssigner()(iou),
        "DynamicIoUAssigner(iou, gt) [released, capped]": lambda: DynamicIoUAssigner()(iou, gt),
        "DynamicIoUAssigner(iou, gt) [uncapped]": lambda: DynamicIoUAssigner(cap_at_base=False)(iou, gt),
        "IoU matrix alone (safe_box_iou)": lambda: safe_box_iou(gt, anchors),
        "DynamicIoUAssigner.assign(anchors, gt) [IoU + assign]": lambda: DynamicIoUAssigner().assign(anchors, gt),
    }
    rows = []
    for name, fn in tqdm(cases.items(), desc="assigners", leave=False):
        for _ in range(3):  # warm-up
            fn()
        rows.append({"what": name, "ms": 1000 * median_seconds(fn, args.repeats, device)})
    ref = rows[0]["ms"]
    for row in rows:
        row["ratio_to_matcher"] = row["ms"] / ref

    print(f"{args.anchors} anchors x {args.gts} GTs on {device} ({args.threads} thread(s)), median of {args.repeats}")
    print(f"{'what':<58} {'ms':>9} {'x Matcher':>10}")
    for row in rows:
        print(f"{row['what']:<58} {row['ms']:9.2f} {row['ratio_to_matcher']:10.2f}")
    capped = rows[2]["ratio_to_matcher"]
    print(f"DI-RPN (released) / Matcher = {capped:.2f} (target <= 2.0): {'OK' if capped <= 2.0 else 'OVER'}")
    write_results(
        args.out,
        {"anchors": args.anchors, "gts": args.gts, "device": str(device), "repeats": args.repeats, "rows": rows},
    )


if __name__ == "__main__":
    main()
