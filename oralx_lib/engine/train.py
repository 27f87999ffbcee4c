"""The training loop: one function, :func:`train`, for one CPU, one GPU or many (torchrun).

One step on a batch ``(images, targets)`` of ``b`` images:

1. ``losses = model(images, targets)`` (a dict of named terms; autocast on CUDA when AMP is on),
   ``L = sum(losses.values())``; a NaN or inf term stops the run with :class:`TrainingError`
   before the weights change;
2. ``L.backward()`` (scaled by the grad scaler with fp16), then gradient clipping
   ``g <- g * min(1, c / ||g||_2)`` over all parameters together (``clip_grad_norm``, 0.1 in the
   release);
3. AdamW with two parameter groups: the backbone at ``lr x backbone_lr_mult``, everything else
   at ``lr``; the learning rate is multiplied by ``lr_gamma`` after each epoch in
   ``lr_milestones`` (``MultiStepLR`` counted in iterations, optionally after a linear
   warm-up).

Around it: a seeded per-epoch sample order (``DistributedSampler``, also in one process) and
per-sample augmentation seeds, so an interrupted run resumed from ``last.pt`` (written every
epoch and every ``checkpoint_every`` steps, atomically) continues with *exactly* the losses of an
uninterrupted one on CPU; evaluation with COCO AP after each ``eval_every`` epochs and
``best.pt`` by validation AP; ``metrics.jsonl`` and ``curves.png`` in ``out_dir``.

Files in ``out_dir``: ``config.json``, ``last.pt``, ``best.pt``, ``metrics.jsonl``,
``curves.png``, ``summary.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm.auto import tqdm

from oralx_lib import __version__
from oralx_lib.data import collate_fn
from oralx_lib.evaluation import (
    RELEASE_DETECTIONS_PER_IMAGE,
    evaluate_coco,
    release_metrics,
    top_per_image,
)
from oralx_lib.errors import ConfigError, TrainingError
from oralx_lib.paths import shown

from .checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    plain_state,
    remove_stale_temporaries,
    restore_rng_state,
    restore_state,
    save_checkpoint,
    shape_mismatches,
)
from .config import TrainConfig
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    setup_distributed,
    unwrap_model,
)
from .history import MetricsLog, plot_history
from .inference import build_from_config, model_detections, unwrap_dataset
from .outputs import check_out_dir

#: Config fields that must not change when a run is resumed (the weights would not fit).
RESUME_LOCKED = ("model", "backbone", "model_overrides")
#: Config fields a resumed run applies to the restored optimiser / lr schedule when changed.
RESUME_APPLIED = ("lr", "backbone_lr_mult", "weight_decay", "lr_milestones", "lr_gamma",
                  "warmup_iters", "warmup_factor", "clip_grad_norm")
#: Config fields that change the sample order or the steps per epoch when changed on resume.
RESUME_LAYOUT = ("batch_size", "seed", "train_subset", "max_iters_per_epoch")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def resolve_data_root(config: TrainConfig, ctx: DistContext | None = None) -> Path:
    """``config.data_root``, else ``$ORALX_DATA``, else the embedded synthetic set (generated
    on first use, by rank 0): :func:`oralx_lib.data.resolve_data_root`."""
    from oralx_lib.data import resolve_data_root as data_root

    if config.data_root is not None:
        return data_root(config.data_root)
    root = data_root(prepare=ctx is None or ctx.is_main)
    if ctx is not None:
        barrier(ctx)
    return root


def build_datasets(config: TrainConfig, ctx: DistContext | None = None):
    """``(train, val)`` datasets of a config (``val`` is ``None`` without ``val_split``)."""
    from oralx_lib.data import OralXrays9
    from oralx_lib.data import transforms as T

    root = resolve_data_root(config, ctx)
    train_set = OralXrays9(root, config.train_split,
                           transforms=T.train_transforms(config.train_preset,
                                                         scale_to=config.train_resize,
                                                         crop=config.train_crop))
    if len(train_set) == 0:
        raise ConfigError(f"{train_set.ann_file}: the {config.train_split!r} split has no images.")
    if config.train_subset is not None:
        train_set = Subset(train_set, range(min(config.train_subset, len(train_set))))
    val_set = None
    if config.val_split is not None:
        from oralx_lib.data import annotation_file

        ann = annotation_file(root, config.val_split)
        if not ann.is_file():
            raise ConfigError(
                f"{ann}: no {config.val_split!r} split to evaluate on. Train without evaluation "
                "(--set val_split=null), pick another split (--set val_split=test), or carve "
                f"one out with `python -m oralx_lib split {root}`."
            )
        val_set = OralXrays9(root, config.val_split, transforms=T.eval_transforms())
        if config.val_subset is not None:
            val_set = Subset(val_set, range(min(config.val_subset, len(val_set))))
    return train_set, val_set


def check_dataset_images(*datasets, progress: bool = False) -> None:
    """Open the header of every image the datasets (``OralXrays9`` or ``Subset`` s of one; ``None``
    is skipped) will read, so a missing, empty, damaged or oversized file is named before the
    first step instead of when training reaches it."""
    for dataset in datasets:
        if dataset is None:
            continue
        base, indices = unwrap_dataset(dataset)
        base.check_images(indices, progress=progress)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for the augmentation of item ``index`` in ``epoch`` (SeedSequence mix)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler):
    """The items one process sees in one epoch, as ``(index, augmentation seed)`` keys.

    The order is ``DistributedSampler``'s (a permutation seeded by ``seed + epoch``, padded and
    split by rank; also used in one process), restricted to the batches
    ``start_iter .. num_iters - 1``: resuming mid-epoch skips exactly the batches done.
    """

    def __init__(self, dataset, *, seed: int, epoch: int, rank: int, world_size: int,
                 batch_size: int, start_iter: int, num_iters: int) -> None:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                  seed=seed, drop_last=False)
        base.set_epoch(epoch)
        order = list(base)[start_iter * batch_size:num_iters * batch_size]
        self.keys = [(i, sample_seed(seed, epoch, i)) for i in order]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def iters_per_epoch(num_items: int, config: TrainConfig, world_size: int = 1) -> int:
    """Steps per epoch for each process: ``ceil(ceil(N / world) / batch)``, capped."""
    per_rank = math.ceil(num_items / world_size)
    steps = math.ceil(per_rank / config.batch_size)
    if config.max_iters_per_epoch is not None:
        steps = min(steps, config.max_iters_per_epoch)
    return steps


class SeededItems(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is augmented under its own seed.

    Python's, numpy's and torch's global generators are seeded with ``seed`` for the item and
    put back afterwards, so augmentation neither depends on which worker loads the item nor
    disturbs the random state of the training process.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ------------------------------------------------------------------------------------------------
# Optimisation
# ------------------------------------------------------------------------------------------------
def backbone_prefix(model: torch.nn.Module) -> str:
    """``backbone.body.`` for torchvision-style backbones with an FPN (the release's "backbone"
    is the ResNet alone, not the neck), else ``backbone.``."""
    names = [n for n, _ in unwrap_model(model).named_parameters()]
    return "backbone.body." if any(n.startswith("backbone.body.") for n in names) else "backbone."


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: group 0 ``"head"`` at ``lr``, group 1
    ``"backbone"`` at ``lr x backbone_lr_mult`` (absent when the model has no backbone)."""
    prefix = backbone_prefix(model)
    head, body = [], []
    for name, param in unwrap_model(model).named_parameters():
        if param.requires_grad:
            (body if name.startswith(prefix) else head).append(param)
    groups = [{"params": head, "lr": config.lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": config.lr * config.backbone_lr_mult,
                       "name": "backbone"})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """``MultiStepLR`` at iterations ``m x steps_per_epoch`` for each milestone epoch ``m``,
    chained after a ``LinearLR`` warm-up when ``warmup_iters > 0``; stepped every iteration."""
    milestones = [m * steps_per_epoch for m in config.lr_milestones]
    step = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones,
                                                gamma=config.lr_gamma)
    if config.warmup_iters == 0:
        return step
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=config.warmup_factor,
                                               total_iters=config.warmup_iters)
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, step], optimizer=optimizer)


def amp_settings(config: TrainConfig, device: torch.device):
    """``(enabled, dtype, GradScaler)``: bf16 where the GPU supports it, else fp16 with a
    scaler; AMP is always off on CPU."""
    if device.type != "cuda" or config.amp == "off":
        return False, None, torch.amp.GradScaler(device.type, enabled=False)
    if config.amp == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return True, dtype, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def _to_device(images, targets, device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in t.items()} for t in targets]
    return images, targets


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
class _Run:
    """The state of one training run (model, optimiser, position, history) and its steps."""

    def __init__(self, config: TrainConfig, ctx: DistContext, progress: bool,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.on_step = on_step
        self.ctx = ctx
        self.progress = progress and ctx.is_main
        self.out = Path(config.out_dir)
        self.last_path = self.out / "last.pt"
        self.best_path = self.out / "best.pt"
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=ctx.is_main)
        self.device = ctx.device

        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.train_set, self.val_set = build_datasets(config, ctx)
        check_dataset_images(self.train_set, self.val_set, progress=self.progress)
        self.steps_per_epoch = iters_per_epoch(len(self.train_set), config, ctx.world_size)

        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        net = build_from_config(config).to(self.device)
        torch.manual_seed(config.seed + ctx.rank)
        self.optimizer = make_optimizer(net, config)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.amp, self.amp_dtype, self.scaler = amp_settings(config, self.device)
        self.net = net
        self.model = net
        if ctx.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters)

        self.epoch = 0          # epoch of the next step (0-based)
        self.iteration = 0      # steps already done in that epoch
        self.step = 0           # optimizer steps so far
        self.history: list[dict] = []
        self.best_ap: float | None = None
        self.best_epoch: int | None = None
        self.saved_step: int | None = None  # the step last.pt holds
        self._reset_epoch_totals()

    # -- position and checkpoints ---------------------------------------------------------------
    def _reset_epoch_totals(self) -> None:
        self.totals = {"loss": 0.0, "terms": {}, "count": 0, "time_s": 0.0}

    def state(self) -> dict:
        rng = all_gather_objects(capture_rng_state(), self.ctx)
        return {
            "format": CHECKPOINT_FORMAT,
            "library_version": __version__,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_state(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "config": self.config.to_dict(),
            "history": self.history,
            "best_ap": self.best_ap,
            "best_epoch": self.best_epoch,
            "epoch_totals": self.totals,
            "world_size": self.ctx.world_size,
        }

    def save(self, *paths: Path) -> None:
        state = self.state()  # every rank takes part (RNG states are gathered)
        if self.ctx.is_main:
            for path in paths:
                save_checkpoint(path, state)
        if self.last_path in paths:
            self.saved_step = self.step
        barrier(self.ctx)

    def restore(self, state: dict) -> None:
        stored = state.get("config", {})
        for name in RESUME_LOCKED:
            if stored.get(name) != getattr(self.config, name):
                raise ConfigError(
                    f"--resume: {self.last_path} was trained with {name}={stored.get(name)!r}, "
                    f"but this run asks for {name}={getattr(self.config, name)!r}. Resume with "
                    "the same setting, or start a new run in another --out folder."
                )
        mismatch = shape_mismatches(self.net, state.get("model", {}))
        if mismatch:
            raise ConfigError(
                f"--resume: {self.last_path} does not fit this run: {mismatch} Start a new run "
                "in another --out folder."
            )
        try:
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(restore_state(state["scheduler"]))
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"--resume: {self.last_path} does not fit this run ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}). Start a new run in another --out folder."
            ) from None
        rng = state.get("rng") or []
        if rng:
            restore_rng_state(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.step = int(state["step"])
        self.saved_step = self.step
        self.history = list(state.get("history", []))
        self.best_ap, self.best_epoch = state.get("best_ap"), state.get("best_epoch")
        self.totals = state.get("epoch_totals") or self.totals
        self.apply_changed_settings(stored, state.get("world_size", 1))

    def apply_changed_settings(self, stored: dict, stored_world_size: int) -> None:
        """After a resume, make the restored optimiser and lr schedule follow the settings of
        *this* run where they differ from the checkpoint's (e.g. a lower ``lr`` after a NaN
        stop), and print what changed.

        The learning rate of each parameter group becomes what a run started with the new
        settings would use at the current position (``lr`` or ``lr x backbone_lr_mult``, times
        the warm-up and milestone factors reached so far); ``weight_decay`` is set in every
        group; ``clip_grad_norm`` is read at every step anyway. AdamW's moment estimates are
        kept. Unchanged settings leave the restored state untouched (an exact resume).
        """
        cfg = self.config
        changed = {k: (stored.get(k), getattr(cfg, k)) for k in RESUME_APPLIED
                   if k in stored and stored.get(k) != getattr(cfg, k)}
        layout = {k: (stored.get(k), getattr(cfg, k)) for k in RESUME_LAYOUT
                  if k in stored and stored.get(k) != getattr(cfg, k)}
        if stored_world_size != self.ctx.world_size:
            layout["world size"] = (stored_world_size, self.ctx.world_size)
        if not changed and not layout:
            return
        if any(k != "clip_grad_norm" for k in changed) or any(k != "seed" for k in layout):
            for group in self.optimizer.param_groups:
                base = cfg.lr * (cfg.backbone_lr_mult if group.get("name") == "backbone" else 1)
                group["lr"] = group["initial_lr"] = base
                group["weight_decay"] = cfg.weight_decay
            self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
            position = self.epoch * self.steps_per_epoch + self.iteration
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                for _ in range(position):
                    self.scheduler.step()
        if self.ctx.is_main:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in {**changed, **layout}.items())
            lrs = ", ".join(f"{g.get('name', i)} {g['lr']:.3g}"
                            for i, g in enumerate(self.optimizer.param_groups))
            text = (f"note: resuming {self.last_path} with changed settings: {what}. The restored "
                    f"optimiser and lr schedule follow them (lr now: {lrs}).")
            if layout:
                text += (" The sample order or batch differs, so training goes on, but not "
                         "step-for-step like the interrupted run.")
            tqdm.write(text)

    def load_initial_weights(self, path: str) -> None:
        """Start from the ``model`` weights of checkpoint ``path`` (``config.init_from``).

        Every tensor must fit: a missing or unexpected key (BatchNorm update counters aside,
        which frozen BatchNorm does not keep) or a shape that differs raises
        :class:`ConfigError` naming them.
        """
        state = load_checkpoint(path, map_location="cpu")
        if "model" not in state:
            raise ConfigError(
                f"--init-from {path}: no 'model' entry; pass a checkpoint written by oralx_lib "
                "(train's best.pt / last.pt, or convert-release's output).")
        stored = state.get("config") or {}
        for name in ("model", "backbone"):
            if name in stored and stored[name] != getattr(self.config, name):
                raise ConfigError(
                    f"--init-from {path}: its weights are for {name}={stored[name]!r}, but this "
                    f"run builds {name}={getattr(self.config, name)!r}. Train with --{name} "
                    f"{stored[name]}.")
        weights = state["model"]
        own = self.net.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
                 for k, v in weights.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in weights if k not in own
                      and not k.endswith("num_batches_tracked")]
        if wrong or missing or unexpected:
            raise ConfigError(
                f"--init-from {path}: the weights do not fit this model (shape differs: "
                f"{wrong[:5]}; missing: {missing[:5]}; unexpected: {unexpected[:5]}). Use the "
                "model settings the checkpoint was written with (its config).")
        self.net.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
        if self.ctx.is_main and self.progress:
            tqdm.write(f"initial weights: {path}")

    # -- one step -------------------------------------------------------------------------------
    def train_step(self, images, targets) -> tuple[float, dict[str, float]]:
        images, targets = _to_device(images, targets, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = self.model(images, targets)
        if not isinstance(losses, dict) or not losses:
            raise TrainingError(
                f"model {self.config.model!r} returned {type(losses).__name__} in train mode; a "
                "detector must return a non-empty dict of named losses."
            )
        names = sorted(losses)
        total = sum(losses[n] for n in names)
        values = torch.stack([total.detach().float()] + [losses[n].detach().float().reshape(())
                                                         for n in names])
        values = all_reduce_mean(values, self.ctx).cpu().tolist()
        where = (f"step {self.step + 1} (epoch {self.epoch + 1}, iteration "
                 f"{self.iteration + 1})")
        for name, value in zip(names + ["total loss"], values[1:] + values[:1]):
            if not math.isfinite(value):
                self._stop(where, f"loss term {name!r} is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]],
                self.config.clip_grad_norm)
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                self._stop(where, f"the gradient norm is {float(norm)}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values[0], dict(zip(names, values[1:]))

    def _stop(self, where: str, what: str) -> None:
        self.log.append({"kind": "error", "step": self.step + 1, "message": f"{where}: {what}"})
        lower = f"{self.config.lr / 10:.3g}"
        if self.last_path.is_file():
            step = "?" if self.saved_step is None else self.saved_step
            advice = (
                f"{self.last_path} keeps the last good state (step {step}). Continue from it with "
                f"a lower learning rate: run the same command again with `--resume --set "
                f"lr={lower}` (now lr={self.config.lr:g}; the new rate is applied to the "
                "restored optimiser)."
            )
        else:
            advice = ("no checkpoint was written yet. Start again with a lower learning rate: "
                      f"the same command with `--set lr={lower}` (now lr={self.config.lr:g}).")
        raise TrainingError(
            f"{where}: {what}; training stopped before updating the weights, and {advice} Keep "
            "gradient clipping on (clip_grad_norm), and if it happens again check the data."
        )

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """COCO metrics on the validation set, sharded over processes, merged on rank 0."""
        cfg, ctx = self.config, self.ctx
        shard = list(range(ctx.rank, len(self.val_set), ctx.world_size))
        keep = cfg.eval_max_dets
        if cfg.eval_release_protocol:
            keep = max(keep, RELEASE_DETECTIONS_PER_IMAGE)
        dets, ids = model_detections(self.model, self.val_set, shard,
                                     batch_size=cfg.eval_batch_size, device=self.device,
                                     progress=self.progress, max_dets=keep)
        gathered = all_gather_objects((dets, ids), ctx)
        metrics = None
        if ctx.is_main:
            all_dets = [d for part, _ in gathered for d in part]
            all_ids = sorted({i for _, part in gathered for i in part})
            base, _ = unwrap_dataset(self.val_set)
            metrics = evaluate_coco(base.coco, top_per_image(all_dets, cfg.eval_max_dets),
                                    max_dets=cfg.eval_max_dets, img_ids=all_ids)
            if cfg.eval_release_protocol:
                metrics["release"] = release_metrics(base.coco, all_dets, img_ids=all_ids)
        return broadcast_object(metrics, ctx)

    # -- the loop -------------------------------------------------------------------------------
    def loader(self, epoch: int, start_iter: int) -> DataLoader:
        cfg = self.config
        sampler = EpochSampler(self.train_set, seed=cfg.seed, epoch=epoch, rank=self.ctx.rank,
                               world_size=self.ctx.world_size, batch_size=cfg.batch_size,
                               start_iter=start_iter, num_iters=self.steps_per_epoch)
        return DataLoader(SeededItems(self.train_set), batch_size=cfg.batch_size,
                          sampler=sampler, num_workers=cfg.workers, collate_fn=collate_fn,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(cfg.seed + epoch))

    def run(self) -> dict:
        cfg = self.config
        while self.epoch < cfg.epochs:
            self.run_epoch()
        return self.summary()

    def run_epoch(self) -> None:
        cfg, epoch = self.config, self.epoch
        bar = tqdm(total=self.steps_per_epoch, initial=self.iteration, unit="it",
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress,
                   dynamic_ncols=True)
        self.model.train()
        try:
            for images, targets in self.loader(epoch, self.iteration):
                lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses
                tic = time.perf_counter()
                loss, terms = self.train_step(images, targets)
                seconds = time.perf_counter() - tic
                self.iteration += 1
                self.step += 1
                self.totals["loss"] += loss
                self.totals["count"] += 1
                self.totals["time_s"] += seconds
                for name, value in terms.items():
                    self.totals["terms"][name] = self.totals["terms"].get(name, 0.0) + value
                self.totals["lr"] = lr
                if self.step % cfg.log_every == 0 or self.iteration == self.steps_per_epoch:
                    self.log.append({"kind": "train", "epoch": epoch + 1,
                                     "iter": self.iteration, "step": self.step, "lr": lr,
                                     "loss": loss, "losses": terms,
                                     "sec": round(seconds, 4)})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                        and self.iteration < self.steps_per_epoch):
                    self.save(self.last_path)
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            bar.close()
        self.end_epoch()

    def end_epoch(self) -> None:
        cfg, epoch = self.config, self.epoch
        count = max(self.totals["count"], 1)
        record = {
            "kind": "epoch", "epoch": epoch + 1, "step": self.step,
            "train_loss": self.totals["loss"] / count,
            "train_losses": {k: v / count for k, v in self.totals["terms"].items()},
            "lr": self.totals.get("lr", self.optimizer.param_groups[0]["lr"]),
            "time_s": round(self.totals["time_s"], 2),
        }
        due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        improved = False
        if self.val_set is not None and due:
            metrics = self.evaluate()
            for key, value in metrics.items():
                record[f"val_{key}"] = value
            if self.best_ap is None or metrics["AP"] > self.best_ap:
                self.best_ap, self.best_epoch, improved = metrics["AP"], epoch + 1, True
        self.history.append(record)
        self.log.append(record)
        self.epoch, self.iteration = epoch + 1, 0
        self._reset_epoch_totals()
        self.save(*([self.best_path, self.last_path] if improved else [self.last_path]))
        if self.ctx.is_main:
            self.plot()
            if self.progress:
                ap = record.get("val_AP")
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train loss "
                           f"{record['train_loss']:.4f}"
                           + (f", val AP {ap:.4f} AP50 {record['val_AP50']:.4f}"
                              if ap is not None else ""))

    def plot(self) -> None:
        import matplotlib.pyplot as plt

        fig = plot_history(self.log.path, out=self.out / "curves.png",
                           title=f"{self.config.model} ({self.config.backbone})")
        plt.close(fig)

    def summary(self) -> dict:
        return {
            "out_dir": str(self.out),
            "last_checkpoint": str(self.last_path),
            "best_checkpoint": str(self.best_path) if self.best_ap is not None else None,
            "best_AP": self.best_ap,
            "best_epoch": self.best_epoch,
            "epochs_completed": self.epoch,
            "steps": self.step,
            "metrics_log": str(self.log.path),
            "curves": str(self.out / "curves.png"),
            "history": self.history,
        }


def train(config: TrainConfig | dict, *, progress: bool = True, resume: bool = False,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train the model a config describes; see the module docstring for the step.

    Args:
        config: a :class:`TrainConfig` (or its dict).
        progress: tqdm bars and one line per epoch (rank 0 only).
        resume: continue from ``out_dir/last.pt`` exactly where it stopped, mid-epoch included
            (the config's ``epochs`` may be raised to train longer). Without a ``last.pt``
            training starts from scratch (or from ``config.init_from``). Without ``resume``, an ``out_dir`` that already
            holds a ``last.pt`` is refused (it would be overwritten).
        on_step: called with the number of optimizer steps done after each step has been
            logged and checkpointed (e.g. to report progress elsewhere, or to stop: an
            exception it raises ends the run there, as an interruption would).

    Returns:
        A summary: ``best_AP``, ``best_epoch``, ``best_checkpoint``, ``last_checkpoint``,
        ``metrics_log``, ``curves``, ``epochs_completed``, ``steps``, ``history`` (one dict per
        epoch, as in ``metrics.jsonl``), also written to ``out_dir/summary.json``.

    Raises:
        TrainingError: a NaN / inf loss (naming the step and the term; ``last.pt`` keeps the
            last good state). ConfigError / DatasetError for bad settings or data.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    check_out_dir(config.out_dir)
    threads = torch.get_num_threads()  # config.num_threads holds for this run only
    ctx = setup_distributed(config.device)
    try:
        out, last = Path(config.out_dir), Path(config.out_dir) / "last.pt"
        if last.is_file() and not resume:
            raise ConfigError(
                f"{out} already holds a run ({last}): pass --resume (resume=True) to continue "
                "it, or choose another output folder."
            )
        if ctx.is_main:
            for stale in remove_stale_temporaries(out):
                if progress:
                    tqdm.write(f"note: removed {stale.name}, a checkpoint half-written when an "
                               "earlier run was killed.")
        barrier(ctx)
        run = _Run(config, ctx, progress, on_step)
        state = None
        if resume and last.is_file():
            state = load_checkpoint(last, map_location="cpu")
            run.restore(state)
        elif resume and ctx.is_main and progress:
            tqdm.write(f"note: no {shown(last)} yet; starting from scratch.")
        if state is None and config.init_from:
            run.load_initial_weights(config.init_from)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            config.to_json(out / "config.json")
        run.log.start(run.step if state is not None else None)
        barrier(ctx)
        summary = run.run()
        if ctx.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        barrier(ctx)
        return summary
    finally:
        torch.set_num_threads(threads)
        cleanup_distributed(ctx)


__all__ = [
    "EpochSampler",
    "SeededItems",
    "TrainingError",
    "amp_settings",
    "backbone_prefix",
    "build_datasets",
    "check_dataset_images",
    "iters_per_epoch",
    "make_optimizer",
    "make_scheduler",
    "resolve_data_root",
    "sample_seed",
    "train",
]
