"""Training runs the book's chapters share.

Several chapters need the same trained models (the baseline appears in the RPN, DI-RPN, CB-SCR
and evaluation chapters). :func:`run_experiment` trains a model once into
``runs/book/<name>`` and hands the finished run to every later caller whose configuration is
the same; an interrupted run is resumed from its ``last.pt``. Evaluations are cached beside
the checkpoints.

Runs are locked while they are checked and trained (a file lock beside the run's folder): two
chapters executed side by side, or two notebooks open at once, train a run once, and the
second waits for it. :func:`prepare_runs` trains the runs the chapters use (:data:`BOOK_RUNS`)
side by side before a build executes the chapters (``python -m oralx_lib.book.experiments``).

The ``fast`` book profile (``ORALX_PROFILE=fast``, the site build and CI) is the engine's
``tiny`` profile with :data:`BOOK_FAST` on top: a ResNet-18 FPN from scratch at 512 x 288 for a few
CPU minutes. The ``full`` profile is the released recipe on a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..data import dataset_fingerprint, resolve_data_root
from ..profiles import BOOK_SCHEDULES, engine_profile

@dataclass
class Experiment:
    """A finished training run: its folder, config, summary and metric history."""

    name: str
    out_dir: Path
    config: Any
    summary: dict
    _model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def history(self) -> list[dict]:
        """The records of ``metrics.jsonl`` (training steps and evaluations)."""
        from ..engine import read_jsonl

        return read_jsonl(self.out_dir / "metrics.jsonl")

    @property
    def checkpoint(self) -> Path:
        best = self.out_dir / "best.pt"
        return best if best.is_file() else self.out_dir / "last.pt"

    def model(self) -> torch.nn.Module:
        """The trained model (best checkpoint by val AP, else the last), in eval mode."""
        if self._model is None:
            from ..engine import load_model

            self._model = load_model(self.checkpoint).eval()
        return self._model

    def _dataset(self, split: str):
        from ..data import OralXrays9

        return OralXrays9(self.config.data_root, split)

    def _cached(self, stem: str):
        path = self.out_dir / f"{stem}.json"
        if path.is_file() and path.stat().st_mtime >= self.checkpoint.stat().st_mtime:
            return json.loads(path.read_text())
        return None

    def evaluate(self, split: str = "val", *, max_dets: int = 100, release: bool = False) -> dict:
        """COCO metrics (:func:`oralx_lib.evaluation.evaluate_coco`, every AP at
        ``maxDets = max_dets``) on a split, cached; with ``release=True`` also the release's
        numbers under ``"release"`` (:func:`oralx_lib.evaluation.release_metrics`)."""
        stem = f"eval_{split}_{max_dets}" + ("_release" if release else "")
        cached = self._cached(stem)
        if cached is not None:
            return cached
        # chapters executed side by side evaluate a run once: the second waits, then reads
        with run_lock(self.out_dir, progress=False):
            cached = self._cached(stem)
            if cached is not None:
                return cached
            from ..engine import evaluate_model
            from ..files import atomic_write

            metrics, detections = evaluate_model(self.model(), self._dataset(split),
                                                 max_dets=max_dets, release=release,
                                                 progress=False)
            if release:  # the detections file keeps COCO's top max_dets per image
                from ..evaluation import top_per_image

                detections = top_per_image(detections, max_dets)
            with atomic_write(self.out_dir / f"detections_{split}_{max_dets}.json", "w",
                              fsync=False) as f:
                f.write(json.dumps(detections))
            with atomic_write(self.out_dir / f"{stem}.json", "w", fsync=False) as f:
                f.write(json.dumps(metrics, indent=1))
        return metrics

    def detections(self, split: str = "val", *, max_dets: int = 100) -> list[dict]:
        """COCO result dicts on a split (computed with :meth:`evaluate`)."""
        self.evaluate(split, max_dets=max_dets)
        return json.loads((self.out_dir / f"detections_{split}_{max_dets}.json").read_text())

    @torch.no_grad()
    def predictions(self, dataset, indices=None) -> list[dict]:
        """torchvision-style outputs ``{"boxes", "labels", "scores"}`` for dataset items."""
        model = self.model()
        device = next(model.parameters()).device
        out = []
        for i in (range(len(dataset)) if indices is None else indices):
            image, _ = dataset[i]
            pred = model([image.to(device)])[0]
            out.append({k: v.detach().cpu() for k, v in pred.items()})
        return out


#: Config fields that say where a run and its data live, not what is trained: a checkout that
#: moved (a CI clone, a worktree, Drive mounted elsewhere) keeps its finished runs. The data's
#: identity is checked by the annotation files' fingerprint instead.
LOCATION_FIELDS = ("out_dir", "data_root")


def same_training(saved: dict, wanted: dict) -> bool:
    """Whether two configs (as dicts) train the same run, wherever it and its data live."""
    def strip(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in LOCATION_FIELDS}

    return strip(saved) == strip(wanted)


@contextmanager
def run_lock(out: Path, *, progress: bool = True):
    """Hold ``<out>.lock`` (an OS file lock, released when the holder ends, even killed).

    A second process waits, saying so once. On a file system without file locks (some network
    mounts) the run goes ahead unlocked: one process per run is then the user's care.
    """
    from filelock import FileLock, Timeout

    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out) + ".lock")
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                print(f"waiting for another process that trains {paths.shown(out)}", flush=True)
            lock.acquire()
    except NotImplementedError:  # no flock here: nothing to hold
        yield
        return
    try:
        yield
    finally:
        lock.release()


def run_experiment(model: str, *, seed: int = 0, profile: str | None = None, data=None,
                   name: str | None = None, progress: bool = True,
                   **overrides) -> Experiment:
    """Train ``model`` (a :func:`oralx_lib.models.build_model` name) or reuse a finished run.

    Args:
        model: ``faster_rcnn``, ``di_rpn``, ``cb_scr``, ``moqam_rcnn`` or ``moqam``.
        seed: the run's seed (part of the default name).
        profile: ``fast``/``tiny``, ``release_scale`` (the same schedule with objects at the
            release's pixel size) or ``full``/``colab``; default from ``ORALX_PROFILE``.
        data: dataset root (default: ``ORALX_DATA`` or the synthetic set).
        name: folder name under ``runs/book/`` (default ``<model>-<profile>-s<seed>``).
        **overrides: :class:`oralx_lib.engine.TrainConfig` fields.

    The run is locked while it is checked and trained (:func:`run_lock`): another process
    asking for the same run waits, then reuses it.

    A run whose saved ``config.json`` differs from the requested config (:func:`same_training`:
    where the run and the data live does not count), or that was trained on other annotation
    files, is moved aside to ``<name>.previous`` and trained again.
    """
    from ..engine import make_config, train

    prof = engine_profile(profile)
    data_root = resolve_data_root(data)
    name = name or f"{model}-{prof}-s{seed}"
    out = paths.runs_root() / "book" / name
    settings = {**BOOK_SCHEDULES.get(prof, {}), **overrides}
    config = make_config(prof, model=model, seed=seed, data_root=str(data_root.resolve()),
                         out_dir=str(out), **settings)
    with run_lock(out, progress=progress):
        saved, stamp = out / "config.json", out / "data_fingerprint.txt"
        fingerprint = dataset_fingerprint(data_root, (config.train_split, config.val_split))
        stale = saved.is_file() and (not same_training(json.loads(saved.read_text()),
                                                       json.loads(config.to_json()))
                                     or not stamp.is_file() or stamp.read_text() != fingerprint)
        if stale:
            previous = out.with_name(out.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            out.rename(previous)
        summary_path = out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        if summary is None or summary.get("epochs_completed", 0) < config.epochs:
            out.mkdir(parents=True, exist_ok=True)
            stamp.write_text(fingerprint)
            summary = train(config, progress=progress, resume=True)
        return Experiment(name=name, out_dir=out, config=config, summary=summary)


# --------------------------------------------------------------------- the chapters' runs

#: The runs the chapters train with :func:`run_experiment` (models at their defaults; seed 0),
#: longest first. ``tests/test_book_runs.py`` checks that every chapter asks for no other.
BOOK_RUNS: tuple[str, ...] = ("moqam", "cb_scr", "faster_rcnn", "di_rpn", "moqam_rcnn")


def _prepare_one(model: str, profile: str | None, data, overrides: dict) -> tuple[str, float]:
    """Worker of :func:`prepare_runs`: train (or reuse) one run; return its name and seconds."""
    start = time.monotonic()
    run = run_experiment(model, profile=profile, data=data, progress=False, **overrides)
    return run.name, time.monotonic() - start


def default_jobs(profile: str | None = None) -> int:
    """Runs trained side by side: one per CPU core (at most 4) in the CPU profiles, each on one
    torch thread; one in the GPU profiles (they share the one device)."""
    if engine_profile(profile) not in BOOK_SCHEDULES:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def prepare_runs(models=BOOK_RUNS, *, jobs: int | None = None, profile: str | None = None,
                 data=None, progress: bool = True, **overrides) -> dict[str, float]:
    """Train the chapters' runs that are not finished yet, ``jobs`` at a time, each in its own
    process; return ``{run name: seconds}`` (a finished run takes about none).

    The results are the runs :func:`run_experiment` trains one after another (the ``fast``
    profile fixes ``num_threads`` to 1, so a run's numbers do not depend on how many run beside
    it). A run that fails raises here, with the model named, after the others have finished.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    models = list(models)
    jobs = max(1, min(jobs or default_jobs(profile), len(models) or 1))
    done: dict[str, float] = {}
    errors: list[str] = []
    bar = tqdm(total=len(models), desc="book runs", unit="run", disable=not progress,
               file=sys.stderr)
    if jobs == 1:
        for model in models:
            name, took = _prepare_one(model, profile, data, overrides)
            done[name] = took
            bar.update()
    else:
        # spawn: a fresh interpreter per worker (no forked torch thread pools or open files)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_prepare_one, m, profile, data, overrides): m for m in models}
            for future in as_completed(futures):
                try:
                    name, took = future.result()
                    done[name] = took
                    if progress:
                        tqdm.write(f"{name}: {took:.0f} s")
                except Exception as exc:  # noqa: BLE001 - reported together below
                    errors.append(f"{futures[future]}: {type(exc).__name__}: {exc}")
                bar.update()
    bar.close()
    if errors:
        from ..errors import TrainingError

        raise TrainingError("the book's runs did not all train:\n" + "\n".join(errors))
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m oralx_lib.book.experiments [--jobs N]``: train the chapters' runs."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m oralx_lib.book.experiments",
        description="Train the runs the book's chapters use (runs/book/), several side by side; "
                    "finished runs are reused, interrupted ones resumed.")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at once (default: one per core, at most 4; 1 on a GPU)")
    parser.add_argument("--models", nargs="+", default=list(BOOK_RUNS), choices=BOOK_RUNS,
                        help="which runs (default: all of them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    args = parser.parse_args(argv)
    # the workers pickle prepare_runs' helper by its module's name, not as __main__'s
    from oralx_lib.book.experiments import prepare_runs

    start = time.monotonic()
    done = prepare_runs(args.models, jobs=args.jobs, progress=not args.quiet)
    if not args.quiet:
        print("book runs: " + ", ".join(f"{k} ({v:.0f} s)" for k, v in done.items())
              + f"; {time.monotonic() - start:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
