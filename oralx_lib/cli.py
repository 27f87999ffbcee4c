"""Command line: ``python -m oralx_lib {train,evaluate,predict,synthesize,download,verify,split,
convert-release,grade}``.

A mistake the user can fix (a bad path, setting or file) prints ``error: <what and how to fix>``
on stderr and exits with status 2, without a traceback. ``torchrun --nproc_per_node N -m
oralx_lib train ...`` trains on N processes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from oralx_lib.errors import ConfigError, OralXError
from oralx_lib.profiles import engine_profile

PROG = "python -m oralx_lib"

TRAIN_EXAMPLES = f"""examples:
  # a few CPU minutes on the embedded synthetic set
  {PROG} train --model faster_rcnn --out runs/demo
  # the released recipe on the real data, one GPU; continue after an interruption
  {PROG} train --model moqam_rcnn --profile full --data data/OralXrays-9 --out runs/moqam
  {PROG} train --model moqam_rcnn --profile full --data data/OralXrays-9 --out runs/moqam --resume
  # any config field: --set key=value (JSON values), model settings with model_overrides.KEY
  {PROG} train --model di_rpn --out runs/di --set lr=1e-4 batch_size=4 \\
      --set model_overrides.min_size=320 lr_milestones=[8,11]
  # fine-tune the authors' converted weights for one epoch (see convert-release)
  {PROG} train --model moqam --profile full --data data/OralXrays-9 --out runs/finetune \\
      --epochs 1 --init-from moqam_release.pt
  # two GPUs (or two CPU processes with gloo)
  torchrun --nproc_per_node 2 -m oralx_lib train --model faster_rcnn --profile full --out runs/ddp
"""

EVALUATE_EXAMPLES = f"""examples:
  {PROG} evaluate --checkpoint runs/demo/best.pt --split val --out runs/demo/val.json
  {PROG} evaluate --checkpoint runs/moqam/best.pt --data data/OralXrays-9 --split test \\
      --out runs/moqam/test.json --release-protocol
  # a model trained on 384 x 384 crops (release_scale profile), run on 384 x 384 windows
  {PROG} evaluate --checkpoint runs/moqam/best.pt --split val --out runs/moqam/val_tiled.json \\
      --tile 384
"""

PREDICT_EXAMPLES = f"""examples:
  {PROG} predict --checkpoint runs/demo/best.pt xray1.png xray2.jpg --out preds/
  {PROG} predict --checkpoint runs/demo/best.pt my_xrays/ --out preds/ --score-thr 0.5
  # next to the images: writes my_xrays/NAME.pred.png and NAME.pred.json, inputs untouched
  {PROG} predict --checkpoint runs/demo/best.pt my_xrays/ --out my_xrays/
  {PROG} predict --checkpoint runs/moqam/best.pt xray1.png --out preds/ --tile 384
"""

#: Subcommands owned by the data tools: name -> (module, function, help). They are imported
#: only when used and receive the remaining arguments unchanged.
FORWARDED: dict[str, tuple[str, str, str]] = {
    "synthesize": ("oralx_lib.data.synthetic", "main",
                   "generate the synthetic OralXrays-9-like set"),
    "download": ("oralx_lib.data.real", "download_main",
                 "download and extract OralXrays-9 (Google Drive); with --checkpoints, the "
                 "authors' trained MOQAM checkpoints"),
    "verify": ("oralx_lib.data.real", "verify_main",
               "check a dataset folder: layout, JSON, images, classes"),
    "split": ("oralx_lib.data.real", "split_main",
              "carve a test split out of val"),
    "convert-release": ("oralx_lib.release.convert", "convert_release_main",
                        "convert the authors' MOQAM checkpoint into an oralx_lib checkpoint"),
    "grade": ("oralx_lib.grading", "main",
              "grade students' chapter notebooks with the self-checks (CSV)"),
}
#: ``download --checkpoints``: the authors' checkpoints instead of the dataset.
CHECKPOINTS_DOWNLOAD = ("oralx_lib.release.download", "download_checkpoints_main")


def project_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the user can fix this" (message, exit 2, no traceback): every
    :class:`~oralx_lib.errors.OralXError`."""
    return (OralXError,)


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
_NON_FINITE = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
               "-infinity")


def parse_set(items: Sequence[str]) -> dict:
    """``["lr=1e-4", "model_overrides.min_size=320"]`` -> ``{"lr": 1e-4, "model_overrides":
    {"min_size": 320}}``. Values are read as JSON (numbers, true/false, null, lists), else
    kept as text."""
    result: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set lr=1e-4.")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            # nan / inf are numbers to the user (and refused by the config as not finite).
            value = float(text) if text.strip().lower() in _NON_FINITE else text
        if "." in key:
            outer, inner = key.split(".", 1)
            if outer != "model_overrides":
                raise ConfigError(
                    f"--set {item!r}: only model_overrides.KEY takes a dotted name."
                )
            result.setdefault("model_overrides", {})[inner] = value
        else:
            result[key] = value
    return result


def _tile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="sliding-window inference: run the model on overlapping N x N windows "
                        "of each image at its own input scale and merge them "
                        "(oralx_lib.engine.tiling); for a model trained on N x N crops, e.g. "
                        "384 for the release_scale profile")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="least overlap of neighbouring windows (default: N / 2; at least the "
                        "largest object's side)")


def _tiled(model, args):
    """``model``, or its :class:`~oralx_lib.engine.tiling.TiledDetector` with ``--tile``."""
    if args.tile is None:
        if args.tile_overlap is not None:
            raise ConfigError(f"--tile-overlap {args.tile_overlap} without --tile: give the "
                              "window's side too (e.g. --tile 384).")
        return model
    from oralx_lib.engine.tiling import TiledDetector

    return TiledDetector(model, tile=args.tile, overlap=args.tile_overlap)


def build_parser() -> argparse.ArgumentParser:
    from oralx_lib.profiles import ENGINE_PROFILES as PROFILES

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=formatter,
        description="OralX Book: train, evaluate and run the MOQAM re-implementation "
                    "(OralXrays-9).",
        epilog="Run `%(prog)s COMMAND --help` for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a detector", formatter_class=formatter,
                       description="Train a detector; writes last.pt, best.pt, metrics.jsonl, "
                                   "curves.png and summary.json into --out.",
                       epilog=TRAIN_EXAMPLES)
    p.add_argument("--model", help="faster_rcnn, di_rpn, cb_scr, moqam_rcnn or moqam "
                                   "(default: faster_rcnn)")
    p.add_argument("--backbone", help="resnet50, resnet18 or mobilenet_v3 (default: the "
                                      "profile's)")
    p.add_argument("--data", help="dataset root (default: $ORALX_DATA, else the embedded "
                                  "synthetic set)")
    p.add_argument("--out", required=True, help="output folder of the run")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the profile's)")
    p.add_argument("--profile", choices=sorted(PROFILES) + ["fast"], default=None,
                   help="tiny (CPU minutes), colab (one T4) or full (the released recipe); "
                        "default: $ORALX_PROFILE (fast = tiny)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt exactly where it stopped")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of this checkpoint (e.g. moqam_release.pt from "
                        "convert-release, or another run's best.pt) instead of ImageNet / "
                        "random ones; optimiser and schedule start fresh")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="any config field (see oralx_lib.engine.TrainConfig)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", help="COCO AP of a checkpoint on a split",
                       formatter_class=formatter, epilog=EVALUATE_EXAMPLES,
                       description="COCO box AP/AR and per-class AP of a checkpoint on a "
                                   "split, written as JSON.")
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt")
    p.add_argument("--data", help="dataset root (default: the one the model was trained on)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--out", required=True, help="JSON file for the metrics")
    p.add_argument("--max-dets", type=int, default=100,
                   help="COCO's maxDets: detections per image, every AP read at it (100)")
    p.add_argument("--release-protocol", action="store_true",
                   help="also report the release's numbers: 300 detections per image, "
                        "maxDets [100, 300, 1000] (AP at 100, AP50/AP75/APs/m/l at 1000)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--detections", help="also write the COCO detections to this JSON file")
    _tile_arguments(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("predict", help="detections on image files (overlays + JSON)",
                       formatter_class=formatter, epilog=PREDICT_EXAMPLES,
                       description="Run a checkpoint on images (files or folders); write "
                                   "NAME.pred.png (overlay) and NAME.pred.json per image. "
                                   "--out may be the images' own folder: inputs are never "
                                   "overwritten and *.pred.png files are never taken as "
                                   "inputs. An unreadable file is skipped with a warning.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thr", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=1,
                   help="images decoded and run together (memory grows with it; default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the *.pred.png / *.pred.json of an earlier run in --out "
                        "(input images are never overwritten)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _tile_arguments(p)
    p.add_argument("--no-progress", action="store_true")

    # ---- data tools: thin wrappers, arguments forwarded as they are ---------------------------
    for name, (_, _, text) in FORWARDED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------
def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args) -> int:
    from oralx_lib.engine import make_config, train

    overrides = parse_set(args.set)
    for field, value in (("model", args.model), ("backbone", args.backbone),
                         ("data_root", args.data), ("out_dir", args.out),
                         ("epochs", args.epochs), ("device", args.device),
                         ("init_from", args.init_from)):
        if value is not None:
            overrides[field] = value
    config = make_config(engine_profile(args.profile), **overrides)
    summary = train(config, progress=not args.no_progress, resume=args.resume)
    if _is_main_process():
        best = summary["best_AP"]
        print(f"done: {summary['epochs_completed']} epochs, {summary['steps']} steps; "
              + (f"best val AP {best:.4f} (epoch {summary['best_epoch']}) -> "
                 f"{summary['best_checkpoint']}" if best is not None else "not evaluated")
              + f"; last: {summary['last_checkpoint']}")
    return 0


def _at_least_one(flag: str, value: int, what: str) -> None:
    if value < 1:
        raise ConfigError(f"{flag} {value}: {what} must be at least 1.")


def cmd_evaluate(args) -> int:
    from oralx_lib.data import OralXrays9
    from oralx_lib.data.transforms import eval_transforms
    from oralx_lib.engine import load_checkpoint
    from oralx_lib.engine.distributed import resolve_device
    from oralx_lib.engine.inference import evaluate_model, load_model
    from oralx_lib.engine.outputs import check_out_file
    from oralx_lib.paths import default_data_root

    _at_least_one("--max-dets", args.max_dets, "the number of detections kept per image "
                  "(the release reports 100 and 1000)")
    _at_least_one("--batch-size", args.batch_size, "the number of images run together")
    check_out_file(args.out, "--out", "metrics.json")
    if args.detections:
        check_out_file(args.detections, "--detections", "detections.json")
    device = resolve_device(args.device)
    model = _tiled(load_model(args.checkpoint, map_location=device), args)
    root = args.data
    if root is None:
        stored = load_checkpoint(args.checkpoint).get("config", {}).get("data_root")
        root = stored if stored is not None else default_data_root()
    dataset = OralXrays9(root, args.split, transforms=eval_transforms())
    dataset.check_images(progress=not args.no_progress)
    metrics, detections = evaluate_model(model, dataset, batch_size=args.batch_size,
                                         device=device, progress=not args.no_progress,
                                         max_dets=args.max_dets,
                                         release=args.release_protocol)
    report = {"checkpoint": str(args.checkpoint), "data": str(root), "split": args.split,
              "max_dets": args.max_dets,
              "tile": None if args.tile is None else {"tile": model.tile,
                                                      "overlap": model.overlap},
              "metrics": metrics}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.detections:
        Path(args.detections).parent.mkdir(parents=True, exist_ok=True)
        Path(args.detections).write_text(json.dumps(detections))
    print(f"{args.split} (COCO, maxDets {args.max_dets}): AP {metrics['AP']:.4f}  "
          f"AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
          f"AR{args.max_dets} {metrics[f'AR{args.max_dets}']:.4f}")
    if "release" in metrics:
        r = metrics["release"]
        print(f"{args.split} (release: 300 per image; AP at maxDets 100, the rest at 1000): "
              f"AP {r['AP']:.4f}  AP50 {r['AP50']:.4f}  AP75 {r['AP75']:.4f}  "
              f"AR1000 {r['AR1000']:.4f}")
    for name, ap in metrics["per_class_AP"].items():
        print(f"  {name:<20} " + ("no ground truth" if ap is None else f"AP {ap:.4f}"))
    print(f"metrics -> {out}")
    return 0


def cmd_predict(args) -> int:
    from oralx_lib.engine.distributed import resolve_device
    from oralx_lib.engine.inference import load_model
    from oralx_lib.engine.outputs import check_out_dir
    from oralx_lib.engine.predict import image_paths, plan_outputs, predict_images

    _at_least_one("--batch-size", args.batch_size, "the number of images run together")
    check_out_dir(args.out)
    paths = image_paths(args.images)
    plan_outputs(paths, args.out, overwrite=args.overwrite)  # refuses before the model loads
    device = resolve_device(args.device)
    model = _tiled(load_model(args.checkpoint, map_location=device), args)
    results = predict_images(model, paths, score_thr=args.score_thr, out_dir=args.out,
                             device=device, progress=not args.no_progress,
                             batch_size=args.batch_size, overwrite=args.overwrite)
    total = sum(len(r["detections"]) for r in results)
    skipped = len(paths) - len(results)
    print(f"{len(results)} images, {total} detections (score >= {args.score_thr}) -> {args.out}"
          + (f"; {skipped} unreadable file(s) skipped (see the warnings above)"
             if skipped else ""))
    return 0


COMMANDS: dict[str, Callable] = {"train": cmd_train, "evaluate": cmd_evaluate,
                                 "predict": cmd_predict}


def _forward(name: str, argv: list[str]) -> int:
    module, function, _ = FORWARDED[name]
    if name == "download" and "--checkpoints" in argv:
        module, function = CHECKPOINTS_DOWNLOAD
        argv = [a for a in argv if a != "--checkpoints"]
    entry = getattr(importlib.import_module(module), function)
    result = entry(argv)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m oralx_lib`` and the ``oralx`` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            # The project's own warnings as one `warning: ...` line; others as usual.
            if category.__module__.startswith("oralx_lib."):
                print(f"warning: {message}", file=sys.stderr if file is None else file)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        if argv and argv[0] in FORWARDED:
            return _forward(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except project_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: a training run continues from its last.pt with --resume",
              file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "FORWARDED", "build_parser", "main", "parse_set", "project_errors"]
