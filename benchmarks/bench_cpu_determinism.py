"""Does one reference-run setting give one training path? The first steps of one (arm, seed),
repeated on this machine with the CPU kernels held to other vector instruction sets.

The reference runs pair arms by seed, so a paired difference is only an effect of the arm if one
seed's run takes the same path wherever it is made. This script measures what a run's path
depends on beyond its settings: it trains the first ``--steps`` steps of one reference-run arm
and seed (the settings of ``benchmarks/reference_runs.py``, logging every step) in a fresh
process per variant:

- ``native``, twice: the kernels this machine picks by itself (the repeat shows whether two
  runs on one machine agree);
- ``onednn_avx2``: oneDNN's kernels (convolutions) held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``);
- ``aten_avx2``: PyTorch's own vectorised kernels held to AVX2 (``ATEN_CPU_CAPABILITY=avx2``);
- ``both_avx2``: both.

A CPU without AVX-512 runs the AVX2 kernels by itself, so the variants stand for machines of
other generations. It records each variant's loss at every step and the kernel capability the
process reported.

    python benchmarks/bench_cpu_determinism.py [--arm di_rpn] [--seed 1] [--steps 5]
                                               [--out benchmarks/results/cpu_determinism.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm  # noqa: E402

from _common import write_results  # noqa: E402

VARIANTS: dict[str, dict[str, str]] = {
    "native": {},
    "native_repeat": {},
    "onednn_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "both_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
PIN_KEYS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def child(arm: str, seed: int, steps: int, out_dir: Path) -> dict:
    """Train ``steps`` steps of (arm, seed) with the reference runs' settings; the losses."""
    import torch

    import reference_runs as runs
    from oralx_lib.data import ensure_synthetic
    from oralx_lib.data.synthetic import RARE_EVAL_MIN_BOXES
    from oralx_lib.engine import read_jsonl, train

    args = runs.parse_args(["--arms", arm, "--seeds", str(seed), "--threads", "1",
                            "--epoch-steps", str(steps), "--log-every", "1",
                            "--checkpoint-every", str(10 * steps), "--no-progress"])
    data_root = ensure_synthetic(runs.default_data(), min_boxes_per_class_eval=RARE_EVAL_MIN_BOXES,
                                 progress=False)
    config = runs.make_run_config(arm, seed, args, data_root, out_dir, 1)
    config = config.replace(eval_every=10 ** 6)
    train(config, progress=False, resume=False)
    losses = {rec["step"]: rec["loss"] for rec in read_jsonl(out_dir / "metrics.jsonl")
              if rec.get("kind") == "train"}
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "losses": [losses[k] for k in sorted(losses)]}


def summarise(results: dict[str, dict]) -> dict:
    """Whether the native repeat agrees, which variants leave the native path and from which
    step (1-based), and the range of the last step's loss over all variants."""
    native = results["native"]["losses"]

    def first_difference(losses):
        return next((i + 1 for i, (x, y) in enumerate(zip(losses, native)) if x != y), None)

    return {
        "repeat_identical": results["native_repeat"]["losses"] == native,
        "variants_differing_from_native": sorted(
            n for n, r in results.items() if r["losses"] != native),
        "first_different_step": {n: first_difference(r["losses"]) for n, r in results.items()
                                 if n != "native"},
        "last_step_loss_range": [min(r["losses"][-1] for r in results.values()),
                                 max(r["losses"][-1] for r in results.values())],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", default="di_rpn")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_determinism.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(child(args.arm, args.seed, args.steps, Path(tmp) / "run")))
        return 0

    base_env = {k: v for k, v in os.environ.items() if k not in PIN_KEYS}
    results = {}
    for name, pins in tqdm(VARIANTS.items(), desc="variants"):
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--arm", args.arm, "--seed", str(args.seed),
             "--steps", str(args.steps)],
            env={**base_env, **pins}, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"variant {name} ({pins or 'no pins'}) failed with code {done.returncode}")
        results[name] = {"env": pins, **json.loads(done.stdout.strip().splitlines()[-1])}
        tqdm.write(f"{name:>14} [{results[name]['cpu_capability']}]: losses "
                   + " ".join(f"{x:.6f}" for x in results[name]["losses"]))
    summary = summarise(results)
    print(json.dumps(summary, indent=1))
    write_results(args.out, {"arm": args.arm, "seed": args.seed, "steps": args.steps,
                             "variants": results, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
