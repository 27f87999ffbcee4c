"""Training configuration: one dataclass of plain values, and named profiles.

A :class:`TrainConfig` holds only JSON types (str, int, float, bool, None, lists, dicts), so it
is stored inside every checkpoint and in ``config.json`` next to it, and a run can be rebuilt
from either. Profiles (defined in :mod:`oralx_lib.profiles`) give complete starting points:

- ``tiny`` (alias ``fast``): a CPU run of a few minutes on 2 cores: a light backbone without
  pre-trained weights, images resized to 288 px (long side <= 512), a few iterations, batch 2.
- ``colab``: the released recipe at a smaller scale for one 16 GB T4.
- ``full``: the released recipe (MOQAM.md, "Training recipe in the release"): AdamW lr 2e-4,
  weight decay 1e-4, backbone lr x 0.1, gradient clipping at global L2 norm 0.1, 12 epochs,
  lr x 0.1 after epoch 11, no warm-up, batch 1 per GPU, seed 42, ResNet-50 from ImageNet
  weights, multi-scale training with short side 480..800 (step 32, long side <= 1333) and
  single-scale testing at 800 / 1333.

Every field can be overridden: ``make_config("tiny", epochs=3, lr=1e-4)``; a name that is not a
field raises :class:`~oralx_lib.errors.ConfigError` listing the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oralx_lib.data.transforms import PRESETS as TRAIN_PRESETS
from oralx_lib.errors import ConfigError
from oralx_lib.paths import runs_root
from oralx_lib.profiles import ENGINE_PROFILES as PROFILES
from oralx_lib.profiles import (
    PROFILE_ALIASES,
    TWO_STAGE_TINY,
    _lists_not_tuples,
    engine_profile,
    model_profile,
)

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything a training run needs, as plain values (see the module docstring).

    Model:
        model: a name for :func:`oralx_lib.models.build_model` (``faster_rcnn``, ``di_rpn``,
            ``cb_scr``, ``moqam_rcnn``, ``moqam``).
        backbone: backbone name passed to ``build_model`` (``resnet50``, ``resnet18``, ...).
        pretrained_backbone: start the backbone from ImageNet weights (needs them cached or a
            network).
        model_overrides: extra keyword arguments of ``build_model`` (e.g. ``min_size``,
            ``max_size``, ``box_detections_per_img``). Lists become tuples when passed on.
        init_from: a checkpoint whose ``model`` weights the run starts from (fine-tuning, e.g.
            the authors' weights converted by ``convert-release``); ``None`` = ImageNet /
            random. Ignored when resuming (``last.pt`` holds the weights then).

    Data:
        data_root: dataset root in the OralXrays-9 layout; ``None`` = ``$ORALX_DATA`` or the
            embedded synthetic set (generated on first use).
        train_split, val_split: split names; ``val_split=None`` trains without evaluation.
        train_preset: augmentation preset of :func:`oralx_lib.data.transforms.train_transforms`.
        train_resize: ``[min_size, max_size]``: resize every training image to that network-input
            scale before augmenting (the model must not resize again:
            ``model_overrides["resize_in_training"] = False``); ``None`` = the model resizes.
        train_crop: ``[min, max]``: train on random crops of ``h, w`` in that range (pixels
            after ``train_resize``); ``None`` = whole images. The ``release_scale`` profile
            uses both: objects at the release's pixel size, steps at the cost of a crop.
        train_subset, val_subset: use only the first N images (fast runs); ``None`` = all.
        batch_size: images per step and per process; workers: DataLoader worker processes.

    Optimisation:
        epochs; max_iters_per_epoch (``None`` = the whole split); lr (AdamW, non-backbone
        parameters); weight_decay; backbone_lr_mult (backbone lr = lr x mult);
        clip_grad_norm (global L2 norm, ``None`` = off); lr_milestones (epochs after which
        lr is multiplied by lr_gamma); warmup_iters / warmup_factor (linear warm-up from
        lr x factor, 0 = off); amp (``auto``: bf16 on CUDA where supported, else fp16 with a
        grad scaler; always off on CPU; ``off``; or force ``bf16`` / ``fp16``).

    Run:
        device (``auto`` | ``cpu`` | ``cuda``); seed; out_dir; checkpoint_every (also write
        ``last.pt`` every N iterations, 0 = only at epoch ends); eval_every (epochs);
        eval_batch_size; eval_max_dets (COCO's maxDets: at most this many detections per image,
        every AP read at it; 100); eval_release_protocol (also report the release's numbers,
        ``val_release``: 300 detections per image, maxDets [100, 300, 1000], see
        :func:`oralx_lib.evaluation.release_metrics`); log_every (iterations between ``metrics.jsonl``
        lines); num_threads (torch CPU threads, ``None`` = leave as is);
        find_unused_parameters (DDP: for models with parameters unused in some steps);
        profile (the profile this config started from, for the record).
    """

    # model
    model: str = "faster_rcnn"
    backbone: str = "resnet50"
    pretrained_backbone: bool = True
    model_overrides: dict = field(default_factory=dict)
    init_from: str | None = None
    # data
    data_root: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    train_preset: str = "released"
    train_resize: list | None = None
    train_crop: list | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    batch_size: int = 1
    workers: int = 2
    # optimisation
    epochs: int = 12
    max_iters_per_epoch: int | None = None
    lr: float = 2e-4
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 0.1
    clip_grad_norm: float | None = 0.1
    lr_milestones: list = field(default_factory=lambda: [11])
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    amp: str = "auto"
    # run
    device: str = "auto"
    seed: int = 42
    out_dir: str = "runs/train"
    checkpoint_every: int = 0
    eval_every: int = 1
    eval_batch_size: int = 2
    eval_max_dets: int = 100
    eval_release_protocol: bool = False
    log_every: int = 1
    num_threads: int | None = None
    find_unused_parameters: bool = False
    profile: str = "custom"

    def __post_init__(self) -> None:
        self.model_overrides = _lists_not_tuples(dict(self.model_overrides or {}))
        if isinstance(self.lr_milestones, (tuple, range)):
            self.lr_milestones = list(self.lr_milestones)
        for name in ("train_resize", "train_crop"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        if isinstance(self.data_root, Path):
            self.data_root = str(self.data_root)
        if isinstance(self.out_dir, Path):
            self.out_dir = str(self.out_dir)
        if isinstance(self.init_from, Path):
            self.init_from = str(self.init_from)
        self.validate()

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field with a wrong type or value."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ConfigError(
                    f"config field {f.name!r} = {value!r} has the wrong type: expected "
                    f"{_type_name(hints[f.name])}."
                )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(
                    f"config field {f.name!r} = {value}: must be a finite number"
                    + (" > 0." if f.name == "lr" else ".")
                )
        _choice("amp", self.amp, AMP_CHOICES)
        _choice("device", self.device, DEVICE_CHOICES)
        _choice("train_preset", self.train_preset, TRAIN_PRESETS)
        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "eval_max_dets",
                     "log_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("workers", "warmup_iters", "checkpoint_every"):
            _at_least(name, getattr(self, name), 0)
        for name in ("max_iters_per_epoch", "train_subset", "val_subset", "num_threads"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.lr <= 0:
            raise ConfigError(f"config field 'lr' = {self.lr}: the learning rate must be > 0.")
        if self.weight_decay < 0 or self.backbone_lr_mult < 0 or self.lr_gamma <= 0:
            raise ConfigError(
                "config fields 'weight_decay' and 'backbone_lr_mult' must be >= 0 and "
                f"'lr_gamma' > 0 (got {self.weight_decay}, {self.backbone_lr_mult}, "
                f"{self.lr_gamma})."
            )
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(
                f"config field 'clip_grad_norm' = {self.clip_grad_norm}: use a norm > 0, or "
                "null to switch clipping off."
            )
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(
                f"config field 'warmup_factor' = {self.warmup_factor}: must be in (0, 1]."
            )
        if any(not isinstance(m, int) or isinstance(m, bool) or m < 1
               for m in self.lr_milestones):
            raise ConfigError(
                f"config field 'lr_milestones' = {self.lr_milestones}: a list of epoch "
                "numbers >= 1 (lr is multiplied by lr_gamma after each)."
            )
        self._check_scale_and_crop()
        try:
            json.dumps(self.model_overrides)
        except TypeError as exc:
            raise ConfigError(
                f"config field 'model_overrides' must hold JSON values only ({exc})."
            ) from None

    def _check_scale_and_crop(self) -> None:
        for name, what in (("train_resize", "[min_size, max_size]"), ("train_crop", "[min, max]")):
            value = getattr(self, name)
            if value is None:
                continue
            if (len(value) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                                       for v in value)):
                raise ConfigError(
                    f"config field {name!r} = {value!r}: give {what} as two integers >= 1, or "
                    "null to switch it off."
                )
        if self.train_crop is not None and self.train_crop[0] > self.train_crop[1]:
            raise ConfigError(
                f"config field 'train_crop' = {self.train_crop}: the first (smallest crop side) "
                "must not exceed the second."
            )
        if self.train_resize is not None and self.model_overrides.get("resize_in_training",
                                                                        True):
            raise ConfigError(
                f"config field 'train_resize' = {self.train_resize} resizes training images to "
                "the network-input scale, but the model would resize them again: add "
                "model_overrides={'resize_in_training': False} (or set train_resize to null)."
            )

    # -- plain dict / JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy as a plain, JSON-serialisable dict."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a dict, got {type(data).__name__}.")
        _check_names(data)
        return cls(**copy.deepcopy(data))

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the config; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read a training config ({exc}).") from None
        return cls.from_dict(data)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (validated; unknown names raise ConfigError)."""
        _check_names(changes)
        data = self.to_dict()
        data.update(copy.deepcopy(changes))
        return TrainConfig(**data)


def field_names() -> tuple[str, ...]:
    """The names of every :class:`TrainConfig` field."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


# ------------------------------------------------------------------------------------------------
# Profiles (defined in oralx_lib.profiles)
# ------------------------------------------------------------------------------------------------
def make_config(profile: str = "tiny", **overrides) -> TrainConfig:
    """The config of a named profile with some fields overridden.

    Precedence: the profile, then what it adds for the chosen model (:func:`model_profile`),
    then ``overrides``. ``out_dir`` defaults to ``runs_root() / profile`` (``$ORALX_RUNS``,
    e.g. a mounted Google Drive, else ``<repo>/runs``). ``model_overrides`` is merged key by
    key (a key set to ``None`` removes it); every other field replaces the profile's value.
    Unknown field names raise :class:`ConfigError` listing the valid ones.
    """
    name = engine_profile(profile)
    _check_names(overrides)
    overrides = copy.deepcopy(overrides)
    data = copy.deepcopy(PROFILES[name])
    data["profile"] = name
    data["out_dir"] = str(runs_root() / name)
    model = overrides.get("model", data.get("model", TrainConfig.model))
    extra = model_profile(name, model)
    if "backbone" in extra:
        data["backbone"] = extra["backbone"]
    merged = {**data.get("model_overrides", {}), **extra["model_overrides"]}
    for key, value in dict(overrides.pop("model_overrides", None) or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    data["model_overrides"] = merged
    data.update(overrides)
    return TrainConfig(**data)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def _check_names(data: dict) -> None:
    valid = field_names()
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {unknown}; valid fields: {', '.join(valid)}."
        )


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config field {name!r} = {value!r}: choose one of {choices}.")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"config field {name!r} = {value}: must be >= {low}.")


def _matches(value, hint) -> bool:
    """A small runtime check of the annotation kinds TrainConfig uses."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is list or origin is list:
        return isinstance(value, list)
    return True


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


__all__ = [
    "PROFILES",
    "PROFILE_ALIASES",
    "TWO_STAGE_TINY",
    "TrainConfig",
    "field_names",
    "make_config",
    "model_profile",
]
