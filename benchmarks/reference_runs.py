"""Reference runs: every arm of the paper's claims, trained until validation AP stops improving.

Each (arm, seed) is trained with the engine (``oralx_lib.engine.train``) at the ``release_scale``
profile by default (objects at the release's pixel size, training on random 384 x 384 crops,
evaluation on whole 1333 x 755 images; ``oralx_lib.profiles``), on the rare-eval synthetic set
(validation and test hold >= 50 boxes of every class, the training split keeps the long tail;
generated on first use), with a constant learning rate after a linear warm-up.

Arms (:data:`ARMS`; ``--arms`` picks some):

===================  ==========================================================================
baseline             faster_rcnn, the fixed IoU rule 0.7 / 0.3
di_rpn               DI-RPN as released: effective threshold min(0.55, thr(s)) (capped)
di_rpn_unclamped     DI-RPN as the formula reads: thr(s) in [0.5, 0.7], no cap at 0.55
fixed_055            DI-RPN's assigner with slope 0: 0.55 for every size (same low-quality
                     rule as DI-RPN; separates "a lower threshold" from "a size-adaptive one")
cb_scr               CB-SCR as released (weight 1, temperature 1)
cb_scr_w0.1 ...      CB-SCR's weight 0.1 / 0.5 at temperature 1, temperature 0.2 / 0.5 at
                     weight 1 (the sweep)
moqam_rcnn           DI-RPN + CB-SCR on the two-stage detector
moqam                the complete query-based MOQAM (its own, smaller step cap)
===================  ==========================================================================

The stopping rule. Training goes in chunks of ``--eval-every`` epochs (an epoch is one pass
over the training split: 80 steps of batch 2 on 160 images); after each chunk the engine
evaluates COCO AP on the validation images ``1..--plateau-val-images`` (the split's regular,
un-enriched images come first). With evaluations ``a_1 .. a_n``, the run has reached its plateau
when ``n > P`` and ``max(a_{n-P+1} .. a_n) <= max(a_1 .. a_{n-P}) + eps`` (``--patience P``,
``--eps``): the last P evaluations did not beat the earlier best by more than eps. A run also
stops at ``--max-steps`` (``--moqam-max-steps`` for MOQAM). The curve of every evaluation is kept.

What is recorded, per (arm, seed), in ``<out>/<arm>_seed<k>.json`` (and over seeds in
``<out>/summary.json``): the validation curve (AP, AP50, APs, APm per evaluation), the learning
rate and every loss term per logged step, where and why the run stopped, and for the best
checkpoint (by plateau-validation AP) on the **whole** validation and test splits: AP, AP50,
AP75, APs, APm, APl, per-class AP with the rare classes (fewest training boxes) apart, and for
the two-stage models the RPN's proposal recall per size bin (IoU >= 0.5, network-input pixels)
and the median proposal and ground-truth ``w x h`` (a collapsed regression shows there); the
provenance of every invocation (command, commit, hardware, wall time). With ``--final-tile PX``
the best checkpoint is also scored with sliding windows of the training crop's size
(``"<split>_tiled"``): the input scale a model trained on crops saw in training, on whole images.

Resumable: the engine writes ``last.pt`` every ``--checkpoint-every`` steps and at every epoch
end, a killed runner continues the (arm, seed) it was on from there, and an (arm, seed) whose
history already satisfies the stopping rule is not trained again (raising ``--max-steps``
continues it). A run folder trained with other settings (model, options, lr, data, ...) is
refused rather than mixed.

    python benchmarks/reference_runs.py --list
    python benchmarks/reference_runs.py                      # everything: many CPU hours
    python benchmarks/reference_runs.py --arms baseline di_rpn --seeds 0 1 2 --lr 2e-4
    python benchmarks/reference_runs.py --arms baseline --seeds 0 --max-steps 8 \\
        --eval-every 1 --epoch-steps 4 --plateau-val-images 2 --final-val-images 4 \\
        --out /tmp/ref --runs /tmp/ref_runs                  # a smoke test
    python benchmarks/reference_runs.py --arms moqam --seeds 2 --moqam-max-steps 480 \
        --final-splits test --final-tile 384 ...             # + sliding windows (no training)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm  # noqa: E402

from _common import provenance  # noqa: E402
from oralx_lib import CLASSES, paths  # noqa: E402
from oralx_lib.errors import ConfigError  # noqa: E402
from oralx_lib.files import write_text_atomic  # noqa: E402

#: arm -> the model and its options (``build_model`` overrides). Defaults are the release's.
ARMS: dict[str, dict] = {
    "baseline": {"model": "faster_rcnn", "options": {}},
    "di_rpn": {"model": "di_rpn", "options": {}},
    "di_rpn_unclamped": {"model": "di_rpn", "options": {"di_rpn_cap_at_base": False}},
    "fixed_055": {"model": "di_rpn", "options": {"di_rpn_slope": 0.0}},
    "cb_scr": {"model": "cb_scr", "options": {}},
    "cb_scr_w0.1": {"model": "cb_scr", "options": {"cb_scr_weight": 0.1}},
    "cb_scr_w0.5": {"model": "cb_scr", "options": {"cb_scr_weight": 0.5}},
    "cb_scr_t0.2": {"model": "cb_scr", "options": {"cb_scr_temperature": 0.2}},
    "cb_scr_t0.5": {"model": "cb_scr", "options": {"cb_scr_temperature": 0.5}},
    "moqam_rcnn": {"model": "moqam_rcnn", "options": {}},
    "moqam": {"model": "moqam", "options": {}},
}
TWO_STAGE = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn")
#: Summary numbers (final evaluation of the best checkpoint) averaged over seeds.
METRICS = ("AP", "AP50", "APs", "APm", "rare_AP", "frequent_AP")
#: Defaults of the command line (see ``--help``).
DEFAULTS = {
    "profile": "release_scale", "seeds": [0, 1, 2], "lr": 2e-4, "warmup": 100,
    "eval_every": 2, "patience": 5, "eps": 0.001, "max_steps": 6000, "moqam_max_steps": 2000,
    "plateau_val_images": 40, "checkpoint_every": 40, "rare": 3, "proposal_images": 40,
}
RESULTS = Path(__file__).resolve().parent / "results" / "reference_runs"


# ------------------------------------------------------------------------------------------------
# The stopping rule
# ------------------------------------------------------------------------------------------------
def plateau_reached(values: list[float], patience: int, eps: float) -> bool:
    """True when the last ``patience`` values did not beat the best before them by more than
    ``eps`` (and there was a value before them)."""
    if patience < 1:
        raise ConfigError(f"--patience {patience}: must be >= 1")
    if len(values) <= patience:
        return False
    return max(values[-patience:]) <= max(values[:-patience]) + eps


def stop_reason(curve: list[dict], steps: int, max_steps: int, patience: int,
                eps: float) -> str | None:
    """``"plateau"``, ``"max_steps"`` or ``None`` (go on) for a validation curve."""
    if plateau_reached([c["AP"] for c in curve], patience, eps):
        return "plateau"
    if steps >= max_steps:
        return "max_steps"
    return None


# ------------------------------------------------------------------------------------------------
# One (arm, seed)
# ------------------------------------------------------------------------------------------------
def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_settings(arm: str, seed: int, args, data_root: Path) -> dict:
    """What must not change inside one run folder (the weights and the curve depend on it)."""
    from oralx_lib.data import dataset_fingerprint

    spec = ARMS[arm]
    return {"arm": arm, "model": spec["model"], "options": spec["options"], "seed": seed,
            "profile": args.profile, "lr": args.lr, "warmup": args.warmup,
            "batch_size": args.batch_size, "epoch_steps": args.epoch_steps,
            "eval_every_epochs": args.eval_every,
            "plateau_val_images": args.plateau_val_images,
            "data": dataset_fingerprint(data_root, ("train", "val"))}


def make_run_config(arm: str, seed: int, args, data_root: Path, out_dir: Path, epochs: int):
    """The engine config of one (arm, seed) trained for ``epochs`` epochs."""
    from oralx_lib.engine import make_config

    spec = ARMS[arm]
    return make_config(
        args.profile, model=spec["model"], seed=seed, data_root=str(data_root),
        out_dir=str(out_dir), epochs=epochs, max_iters_per_epoch=args.epoch_steps,
        batch_size=args.batch_size, lr=args.lr, backbone_lr_mult=1.0, clip_grad_norm=10.0,
        warmup_iters=args.warmup, lr_milestones=[10 ** 6], eval_every=args.eval_every,
        val_subset=args.plateau_val_images, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, num_threads=args.threads,
        model_overrides=dict(spec["options"]))


def curve_of(history: list[dict]) -> list[dict]:
    """The evaluations of an engine history: step, epoch and the validation numbers."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return [{"step": h["step"], "epoch": h["epoch"], "train_loss": h.get("train_loss"),
             "lr": h.get("lr"), **{k: h[f"val_{k}"] for k in keys if f"val_{k}" in h}}
            for h in history if "val_AP" in h]


def loss_curve(out_dir: Path) -> list[dict]:
    """Every logged training step: step, lr, total loss and each loss term."""
    from oralx_lib.engine import read_jsonl

    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for rec in read_jsonl(path):
        if rec.get("kind") == "train":
            rows[rec["step"]] = {"step": rec["step"], "lr": rec["lr"], "loss": rec["loss"],
                                 "losses": rec.get("losses", {})}
    return [rows[k] for k in sorted(rows)]  # a resumed run logs some steps twice: keep the last


def rare_classes(data_root: Path, k: int) -> list[str]:
    """The ``k`` classes with the fewest training boxes (ties in the released order)."""
    from oralx_lib.data import OralXrays9, stats

    counts = stats.class_counts(OralXrays9(data_root, "train"))
    return sorted(CLASSES, key=lambda n: (int(counts[n]), CLASSES.index(n)))[:k]


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def split_metrics(metrics: dict, rare: list[str]) -> dict:
    """The reported numbers of one COCO evaluation, with the rare classes apart."""
    per_class = metrics["per_class_AP"]
    return {
        **{k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
        "per_class_AP": per_class,
        "per_class_AP50": metrics.get("per_class_AP50"),
        "rare_AP": _mean(per_class.get(c) for c in rare),
        "frequent_AP": _mean(per_class.get(c) for c in CLASSES if c not in rare),
        "num_images": metrics.get("num_images"),
        "max_dets": metrics.get("max_dets"),
    }


def proposal_stats(model, dataset, images: int) -> dict:
    """RPN proposal recall (IoU >= 0.5) per size bin and median proposal / ground-truth sizes,
    on the first ``images`` items, in network-input pixels."""
    from oralx_lib.book import rpn_stats

    indices = list(range(min(images, len(dataset))))
    table = rpn_stats.proposal_table(model, dataset, indices=indices, progress=False)
    by_size = rpn_stats.recall_by(table, "size")
    sizes = rpn_stats.proposal_sizes(model, dataset, indices=indices)
    return {
        "images": len(indices), "iou": 0.5,
        "recall": float(table["recalled"].mean()),
        "recall_by_size": {str(k): {"count": int(r["count"]), "recall": float(r["mean"])}
                           for k, r in by_size.iterrows()},
        "median_proposal_wh": list(sizes["proposal_wh"]),
        "median_gt_wh": list(sizes["gt_wh"]),
        "collapsed": bool(sizes["collapsed"]),
    }


def final_evaluation(out_dir: Path, data_root: Path, rare: list[str], args, model_name: str,
                     progress: bool) -> dict:
    """The best checkpoint on the whole validation and test splits (cached beside it).

    With ``--final-tile PX`` the same checkpoint is also evaluated with sliding windows of
    PX x PX (:class:`oralx_lib.engine.tiling.TiledDetector`) on the same splits, recorded as
    ``"<split>_tiled"`` with the window settings; whole-image numbers already cached are kept.
    """
    import torch
    from torch.utils.data import Subset

    from oralx_lib.data import OralXrays9, annotation_file
    from oralx_lib.engine import evaluate_model, load_model
    from oralx_lib.engine.checkpoint import load_checkpoint

    best = out_dir / "best.pt"
    if not best.is_file():
        best = out_dir / "last.pt"
    cache = out_dir / "reference_final.json"
    key = {"checkpoint": best.name, "mtime_ns": best.stat().st_mtime_ns,
           "final_val_images": args.final_val_images, "proposal_images": args.proposal_images,
           "rare": rare, "final_splits": list(args.final_splits)}
    tile = ({"tile": args.final_tile, "overlap": args.final_tile_overlap}
            if args.final_tile else None)
    result = None
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            result = stored["result"]
            todo = [s for s in args.final_splits
                    if tile and (result.get(f"{s}_tiled") or {}).get("tile") != tile]
            if not todo:
                return result
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(best)

    def split_set(split):
        dataset = OralXrays9(data_root, split)
        if args.final_val_images is not None:
            dataset = Subset(dataset, range(min(args.final_val_images, len(dataset))))
        return dataset

    splits = [s for s in args.final_splits if annotation_file(data_root, s).is_file()]
    if result is None:  # the whole images, as the release evaluates
        step = int(load_checkpoint(best, map_location="cpu")["step"])
        result = {"checkpoint": best.name, "step": step}
        for split in splits:
            metrics, _ = evaluate_model(model, split_set(split), progress=progress, max_dets=100)
            result[split] = split_metrics(metrics, rare)
        if model_name in TWO_STAGE and args.proposal_images > 0:
            result["proposals_val"] = proposal_stats(model, OralXrays9(data_root, "val"),
                                                     args.proposal_images)
        else:
            result["proposals_val"] = None  # MOQAM: no single RPN proposal set to measure
        write_text_atomic(cache, json.dumps({"key": key, "result": result}, indent=1))
    if tile:  # sliding windows of the training crop's size (oralx_lib.engine.tiling)
        from oralx_lib.engine.tiling import TiledDetector

        tiled = TiledDetector(model, tile=tile["tile"], overlap=tile["overlap"])
        for split in splits:
            if (result.get(f"{split}_tiled") or {}).get("tile") == tile:
                continue
            metrics, _ = evaluate_model(tiled, split_set(split), progress=progress, max_dets=100)
            result[f"{split}_tiled"] = {**split_metrics(metrics, rare), "tile": tile}
            # each split is kept as soon as it is measured: an interrupted run loses no split
            write_text_atomic(cache, json.dumps({"key": key, "result": result}, indent=1))
    return result


def run_one(arm: str, seed: int, args, data_root: Path, rare: list[str]) -> dict:
    """Train (or continue) one (arm, seed) until its stopping rule holds; return its record."""
    from oralx_lib.engine import train
    from oralx_lib.engine.checkpoint import load_checkpoint

    spec = ARMS[arm]
    out_dir = Path(args.runs) / f"{arm}_seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = run_settings(arm, seed, args, data_root)
    stamp = out_dir / "reference_settings.json"
    if stamp.is_file():
        stored = json.loads(stamp.read_text())
        if stored.get("fingerprint") != _fingerprint(settings):
            changed = sorted(k for k in settings if stored.get("settings", {}).get(k) != settings[k])
            raise ConfigError(
                f"{stamp}: this run folder was trained with other settings (changed: {changed}). "
                "Use the same settings to continue it, or another --runs folder (or delete "
                f"{out_dir}) to start again."
            )
    else:
        write_text_atomic(stamp, json.dumps({"fingerprint": _fingerprint(settings),
                                             "settings": settings}, indent=1))
    max_steps = args.moqam_max_steps if spec["model"] == "moqam" else args.max_steps
    wall_file = out_dir / "reference_wall.json"
    sessions = json.loads(wall_file.read_text()) if wall_file.is_file() else []

    def state():
        last = out_dir / "last.pt"
        if not last.is_file():
            return 0, 0, []
        ckpt = load_checkpoint(last, map_location="cpu")
        return int(ckpt["epoch"]), int(ckpt["step"]), curve_of(ckpt.get("history", []))

    epochs, steps, curve = state()
    reason = stop_reason(curve, steps, max_steps, args.patience, args.eps)
    tic = time.perf_counter()
    session = {**provenance(), "started_at_step": steps}
    sessions.append(session)
    while reason is None:
        # a killed chunk resumes mid-epoch from last.pt; a finished one ends at an evaluation
        target = (epochs // args.eval_every + 1) * args.eval_every
        config = make_run_config(arm, seed, args, data_root, out_dir, target)
        train(config, progress=args.progress, resume=True)
        epochs, steps, curve = state()
        reason = stop_reason(curve, steps, max_steps, args.patience, args.eps)
        session["wall_s"] = round(time.perf_counter() - tic, 1)
        write_text_atomic(wall_file, json.dumps(sessions, indent=1))
        if curve:
            tqdm.write(f"{arm} seed {seed}: step {steps}, val AP {curve[-1]['AP']:.4f} "
                       f"(best {max(c['AP'] for c in curve):.4f})")
    final = final_evaluation(out_dir, data_root, rare, args, spec["model"], args.progress)
    session["wall_s"] = round(time.perf_counter() - tic, 1)
    write_text_atomic(wall_file, json.dumps(sessions, indent=1))
    best = max(curve, key=lambda c: c["AP"]) if curve else None
    config = json.loads((out_dir / "config.json").read_text())
    return {
        "arm": arm, "seed": seed, "model": spec["model"], "options": spec["options"],
        "run_dir": paths.shown(out_dir), "settings": settings, "config": config,
        "rare_classes": rare,
        "stopping": {"rule": {"eval_every_epochs": args.eval_every,
                              "eval_every_steps": (curve[0]["step"] // curve[0]["epoch"]
                                                   * args.eval_every) if curve else None,
                              "patience": args.patience, "eps": args.eps,
                              "max_steps": max_steps,
                              "plateau_val_images": args.plateau_val_images},
                     "reason": reason, "steps": steps, "epochs": epochs,
                     "best_step": best["step"] if best else None,
                     "best_plateau_val_AP": best["AP"] if best else None},
        "val_curve": curve,
        "loss_curve": loss_curve(out_dir),
        "final": final,
        "wall_s_total": round(sum(s.get("wall_s", 0.0) for s in sessions), 1),
        "sessions": sessions,
    }


# ------------------------------------------------------------------------------------------------
# Summary over seeds
# ------------------------------------------------------------------------------------------------
def summarise(records: list[dict]) -> dict:
    """Per arm: seeds, and mean / std (``ddof=1``) / values of :data:`METRICS` on val and test,
    the stopping steps and the median proposal sizes."""
    out = {}
    for arm in ARMS:
        mine = [r for r in records if r["arm"] == arm]
        if not mine:
            continue
        entry = {"model": ARMS[arm]["model"], "options": ARMS[arm]["options"],
                 "seeds": [r["seed"] for r in mine],
                 "stopped_at_steps": [r["stopping"]["steps"] for r in mine],
                 "best_steps": [r["stopping"]["best_step"] for r in mine],
                 "stop_reasons": [r["stopping"]["reason"] for r in mine]}
        for split in ("val", "test", "val_tiled", "test_tiled"):
            if split.endswith("_tiled") and not any(split in r["final"] for r in mine):
                continue
            block = {}
            for name in METRICS:
                values = [r["final"][split][name] for r in mine if split in r["final"]]
                values = [v for v in values if v is not None and not math.isnan(v)]
                # null, not NaN, where there is nothing to average: the file stays strict JSON
                block[name] = {"mean": statistics.fmean(values) if values else None,
                               "std": statistics.stdev(values) if len(values) > 1 else None,
                               "values": values}
            entry[split] = block
        entry["median_proposal_wh"] = [r["final"]["proposals_val"]["median_proposal_wh"]
                                       for r in mine if r["final"].get("proposals_val")]
        out[arm] = entry
    return out


def _mean_std(block: dict) -> str:
    if block["mean"] is None:
        return "-"
    return f"{block['mean']:.4f} +- " + ("-" if block["std"] is None else f"{block['std']:.4f}")


def table(summary: dict, split: str = "test") -> str:
    head = f"{'arm':<18} {'seeds':>5} " + " ".join(f"{m:>17}" for m in METRICS)
    lines = [f"({split} split, best checkpoint, mean +- std over seeds)", head, "-" * len(head)]
    for arm, entry in summary.items():
        cells = [_mean_std(entry[split][m]) for m in METRICS]
        lines.append(f"{arm:<18} {len(entry['seeds']):>5} " + " ".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def default_data() -> Path:
    """The rare-eval synthetic set beside the embedded one (generated on first use)."""
    from oralx_lib.paths import synthetic_data_root

    return synthetic_data_root(rare_eval=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=d["seeds"])
    parser.add_argument("--profile", default=d["profile"],
                        help="engine profile (default release_scale; tiny for the book's scale)")
    parser.add_argument("--lr", type=float, default=d["lr"], help="AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=d["warmup"], help="linear warm-up steps")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epoch-steps", type=int, default=None,
                        help="steps per engine epoch (default: one pass over the training split)")
    parser.add_argument("--eval-every", type=int, default=d["eval_every"],
                        help="epochs between validation evaluations")
    parser.add_argument("--patience", type=int, default=d["patience"],
                        help="evaluations without an improvement > eps before the run stops")
    parser.add_argument("--eps", type=float, default=d["eps"], help="AP improvement that counts")
    parser.add_argument("--max-steps", type=int, default=d["max_steps"])
    parser.add_argument("--moqam-max-steps", type=int, default=d["moqam_max_steps"])
    parser.add_argument("--plateau-val-images", type=int, default=d["plateau_val_images"],
                        help="validation images of the stopping rule (the first N: the regular, "
                             "un-enriched ones)")
    parser.add_argument("--final-val-images", type=int, default=None,
                        help="images of the final val/test evaluation (default: all)")
    parser.add_argument("--final-splits", nargs="+", default=["val", "test"],
                        choices=["val", "test"],
                        help="splits the best checkpoint is evaluated on at the end (whole "
                             "image sets; each image costs about 4.5 s on one CPU thread)")
    parser.add_argument("--final-tile", type=int, default=0, metavar="PX",
                        help="also evaluate the best checkpoint with sliding windows of PX x PX "
                             "(oralx_lib.engine.tiling; the release_scale profile trains on "
                             "384 x 384 crops): splits '<split>_tiled' in the record. 0: off. "
                             "A recorded run is evaluated again without training; its "
                             "whole-image numbers are kept")
    parser.add_argument("--final-tile-overlap", type=int, default=None, metavar="PX",
                        help="overlap of neighbouring windows (default: half the window)")
    parser.add_argument("--proposal-images", type=int, default=d["proposal_images"],
                        help="validation images for proposal recall and sizes (0: skip)")
    parser.add_argument("--rare", type=int, default=d["rare"],
                        help="how many of the rarest training classes count as rare")
    parser.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"])
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset root (default: data/synthetic-rare-eval, generated with "
                             "--rare-eval on first use)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="run folders (default: <runs root>/reference_runs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--list", action="store_true", help="print the plan and each run's state")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing: rewrite summary.json from the recorded runs (after "
                             "several runners wrote to the same folder at once)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    for name in ("eval_every", "patience", "max_steps", "moqam_max_steps", "batch_size",
                 "checkpoint_every", "log_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.eps < 0 or args.warmup < 0:
        raise ConfigError("--lr must be > 0, --eps and --warmup >= 0")
    if args.final_tile < 0:
        raise ConfigError("--final-tile must be >= 0 (0: whole images only), e.g. --final-tile 384")
    if args.final_tile_overlap is not None and not args.final_tile:
        raise ConfigError("--final-tile-overlap needs --final-tile (e.g. --final-tile 384 "
                          "--final-tile-overlap 192)")
    if args.final_tile and args.final_tile_overlap is None:
        args.final_tile_overlap = args.final_tile // 2
    if args.final_tile and not 0 <= args.final_tile_overlap < args.final_tile:
        raise ConfigError(f"--final-tile-overlap must be in [0, {args.final_tile}) for "
                          f"--final-tile {args.final_tile}")
    if args.runs is None:
        from oralx_lib.paths import runs_root

        args.runs = runs_root() / "reference_runs"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from oralx_lib.data import ensure_synthetic
    from oralx_lib.data.synthetic import RARE_EVAL_MIN_BOXES

    if args.data is None:
        data_root = ensure_synthetic(default_data(), min_boxes_per_class_eval=RARE_EVAL_MIN_BOXES,
                                     progress=args.progress)
    else:
        data_root = args.data
    data_root = Path(data_root).resolve()
    rare = rare_classes(data_root, args.rare)
    todo = [(arm, seed) for arm in args.arms for seed in args.seeds]
    if args.list:
        for arm, seed in todo:
            folder = Path(args.runs) / f"{arm}_seed{seed}"
            done = (Path(args.out) / f"{arm}_seed{seed}.json").is_file()
            print(f"{arm:<18} seed {seed}: {'recorded' if done else 'to run'} "
                  f"({'started' if (folder / 'last.pt').is_file() else 'not started'}: {folder})")
        print(f"data: {data_root}; rare classes: {rare}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"data: {data_root}; rare classes (fewest training boxes): {rare}")
    if not args.summary_only:
        for arm, seed in tqdm(todo, desc="reference runs", unit="run", disable=not args.progress):
            record = run_one(arm, seed, args, data_root, rare)
            write_text_atomic(out / f"{arm}_seed{seed}.json", json.dumps(record, indent=1) + "\n")
    # the summary covers every recorded (arm, seed) in the folder, not only this invocation's
    recorded = [json.loads(p.read_text()) for p in sorted(out.glob("*_seed*.json"))]
    if not recorded:
        print(f"no recorded run in {out}")
        return 0
    summary = summarise(recorded)
    write_text_atomic(out / "summary.json", json.dumps(
        {"provenance": provenance(), "data": paths.shown(data_root), "rare_classes": rare,
         "summary": summary}, indent=1) + "\n")
    print(table(summary, "test" if any("test" in r["final"] for r in recorded) else "val"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
