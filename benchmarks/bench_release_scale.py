"""What the ``release_scale`` profile costs next to the book's ``fast`` (``tiny``) profile.

``fast`` trains and evaluates on whole panoramas resized to 508 x 288; ``release_scale`` resizes
them to the release's test scale (1333 x 755, objects 2.62 times larger) and trains on random
384 x 384 crops of that, evaluating on whole 1333 x 755 images (``oralx_lib.profiles``).

Measured, per model and profile, on real batches of the training split (the profile's own data
pipeline, batch 2):

- one training step (forward + backward + AdamW step), in process CPU time with one thread
  (other jobs on a shared machine disturb it far less than wall time; wall time is kept too).
  The profiles are timed round-robin (one step of each in turn) after ``--warmup`` rounds, and
  the median is reported with its ratio to ``fast``;
- loading one training item (JPEG decode + the profile's transforms);
- one evaluation forward of a whole validation image;
- the share of training crops that hold no box (``--crops`` draws).

``train_input_hw`` in the results is what the data pipeline hands the model: for ``fast`` the
stored 580 x 1024 image, which the model itself resizes to 288 x 508 inside the timed step; for
``release_scale`` the 384 x 384 crop, already at the network-input scale and not resized again.
``eval_input_wh`` is the size of a whole image at the network input in evaluation.

    python benchmarks/bench_release_scale.py --out benchmarks/results/release_scale_cpu.json
    python benchmarks/bench_release_scale.py --models faster_rcnn moqam --steps 5
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
from tqdm import tqdm  # noqa: E402

from _common import write_results  # noqa: E402

PROFILES = ("fast", "release_scale")


def _clock():
    return time.process_time(), time.perf_counter()


def setup(profile: str, model: str, data_root: str | None):
    """``(config, train set wrapped for seeded items, val set, model, optimizer)``."""
    from oralx_lib.engine import make_config
    from oralx_lib.engine.inference import build_from_config
    from oralx_lib.engine.train import SeededItems, build_datasets, make_optimizer
    from oralx_lib.profiles import BOOK_SCHEDULES, engine_profile

    name = engine_profile(profile)
    config = make_config(name, model=model, data_root=data_root,
                         **{k: v for k, v in BOOK_SCHEDULES.get(name, {}).items()
                            if k not in ("val_subset",)})
    train_set, val_set = build_datasets(config)
    torch.manual_seed(0)
    net = build_from_config(config)
    return config, SeededItems(train_set), val_set, net, make_optimizer(net, config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["faster_rcnn"])
    parser.add_argument("--steps", type=int, default=6, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=3)
    parser.add_argument("--crops", type=int, default=200,
                        help="training items drawn to count crops without a box")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=None, help="dataset root (default: $ORALX_DATA or the "
                        "synthetic set)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from oralx_lib.data import collate_fn

    rows = []
    for model in args.models:
        runs = {p: setup(p, model, args.data) for p in PROFILES}
        cpu = {p: [] for p in PROFILES}
        wall = {p: [] for p in PROFILES}
        load = {p: [] for p in PROFILES}
        shapes = {}
        for r in tqdm(range(args.warmup + args.steps), desc=f"{model} steps", unit="round"):
            for p in PROFILES:
                config, items, _, net, opt = runs[p]
                net.train()
                c0, w0 = _clock()
                batch = [items[(2 * r + j, 1000 + 2 * r + j)] for j in range(2)]
                c1, _ = _clock()
                images, targets = collate_fn(batch)
                shapes[p] = [list(im.shape[-2:]) for im in images]
                c2, w2 = _clock()
                losses = net(list(images), list(targets))
                total = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm or 1e9)
                opt.step()
                c3, w3 = _clock()
                if r >= args.warmup:
                    cpu[p].append(c3 - c2)
                    wall[p].append(w3 - w2)
                    load[p].append((c1 - c0) / 2)
        evals = {p: [] for p in PROFILES}
        eval_sizes = {}
        with torch.no_grad():
            for p in PROFILES:
                _, _, val_set, net, _ = runs[p]
                net.eval()
                for i in range(args.eval_images + 1):
                    image, _ = val_set[i]
                    c0, _ = _clock()
                    net([image])
                    c1, _ = _clock()
                    if i:
                        evals[p].append(c1 - c0)
                from oralx_lib.profiles import eval_scale, input_scale

                h, w = image.shape[-2:]
                s = input_scale(w, h, *eval_scale(p, model))
                eval_sizes[p] = [round(w * s), round(h * s)]
        base = statistics.median(cpu["fast"])
        for p in PROFILES:
            med = statistics.median(cpu[p])
            rows.append({"model": model, "profile": p, "train_input_hw": shapes[p],
                         "step_cpu_s_median": med, "step_cpu_s": cpu[p],
                         "step_wall_s_median": statistics.median(wall[p]),
                         "ratio_to_fast": med / base,
                         "load_item_cpu_s_median": statistics.median(load[p]),
                         "eval_input_wh": eval_sizes[p],
                         "eval_image_cpu_s_median": statistics.median(evals[p])})
            tqdm.write(f"{model:<12} {p:<14} step {med:6.2f} s CPU (x{med / base:.2f} of fast), "
                       f"load {rows[-1]['load_item_cpu_s_median']:.3f} s/item, eval "
                       f"{rows[-1]['eval_image_cpu_s_median']:.2f} s/image at "
                       f"{eval_sizes[p][0]} x {eval_sizes[p][1]}")

    # crops without a box (the release's crop branch allows them: they train as negatives)
    _, items, _, _, _ = setup("release_scale", "faster_rcnn", args.data)
    empty = sum(len(items[(i % len(items), 5000 + i)][1]["boxes"]) == 0
                for i in tqdm(range(args.crops), desc="crops", unit="item"))
    tqdm.write(f"release_scale crops without a box: {empty} of {args.crops}")
    write_results(args.out, {"threads": args.threads, "batch": 2, "warmup": args.warmup,
                             "steps": args.steps, "rows": rows,
                             "crops_drawn": args.crops, "crops_without_box": empty})
    return 0


if __name__ == "__main__":
    sys.exit(main())
