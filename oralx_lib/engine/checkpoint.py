"""Checkpoints that are safe to write and safe to open.

*Safe to write*: :func:`save_checkpoint` writes to a temporary file in the target's folder,
flushes it to disk (``fsync``) and renames it over the target with ``os.replace``, which is atomic
on POSIX and Windows. A crash or a full disk mid-save leaves the previous checkpoint intact (a
full disk is reported as a :class:`CheckpointError` saying "no space left"); the temporary file
a killed process leaves behind (``.last.pt.XXXX.tmp``) is removed by
:func:`remove_stale_temporaries` when the next run starts. The checkpoint gets the permissions of
any other output (``0666`` minus the umask, e.g. ``0644``).

*Safe to open*: :func:`load_checkpoint` uses ``torch.load(..., weights_only=True)``, whose
unpickler accepts only tensors and plain containers, so opening a checkpoint someone sent you
cannot run code. A checkpoint therefore holds only tensors, dicts, lists, tuples, str, int,
float, bool and None: RNG states are converted (:func:`capture_rng_state`), the config is a
dict, and :func:`plain_state` rewrites the few objects PyTorch state dicts may contain (the
``Counter`` of ``MultiStepLR``).

A training checkpoint (``last.pt`` / ``best.pt``) is a dict::

    {"format": 1, "epoch": int, "iteration": int, "step": int, "model": state_dict,
     "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": [per-rank RNG states],
     "config": dict, "history": [per-epoch dicts], "best_ap": float | None, ...}

where ``(epoch, iteration)`` is the position of the *next* step to run (0-based epoch,
iterations already done in it) and ``step`` counts optimizer steps so far.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oralx_lib.errors import CheckpointError
from oralx_lib.files import atomic_write

CHECKPOINT_FORMAT = 1
_COUNTER_KEY = "__counter__"


# ------------------------------------------------------------------------------------------------
# Writing and reading
# ------------------------------------------------------------------------------------------------
def check_plain(obj: Any, where: str = "state") -> None:
    """Raise :class:`CheckpointError` naming the first value ``weights_only`` loading rejects."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.Size,
                                       torch.dtype, torch.device)):
        return
    if isinstance(obj, (dict, OrderedDict)) and type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise CheckpointError(f"{where}: key {key!r} ({type(key).__name__}) is not plain")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint holds only "
        "tensors and plain containers (convert it first, e.g. with plain_state)."
    )


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    ``state`` must hold only tensors and plain containers (checked first, so a bad value fails
    before anything is written). Returns the path.
    """
    path = Path(path)
    check_plain(state)
    try:
        with atomic_write(path, "wb", suffix=TEMP_SUFFIX) as handle:
            torch.save(state, handle)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise CheckpointError(
                f"{path}: no space left on the device while writing the checkpoint "
                f"(about {_state_megabytes(state):,.0f} MB; {_free_megabytes(path.parent):,.0f} "
                f"MB free in {path.parent}). "
                + (f"The previous {path.name} is kept. " if path.is_file() else "")
                + "Free some space, then continue with --resume."
            ) from None
        raise
    return path


#: Suffix of the temporary file a checkpoint is written to before the rename.
TEMP_SUFFIX = ".tmp"
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _state_megabytes(state: Any) -> float:
    total = 0

    def walk(obj):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(state)
    return total / 2**20


def _free_megabytes(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return 0.0


def remove_stale_temporaries(folder: str | os.PathLike,
                             names: tuple[str, ...] = ("last.pt", "best.pt")) -> list[Path]:
    """Delete the temporary files (``.last.pt.XXXX.tmp``) that :func:`save_checkpoint` leaves
    behind when the process is killed mid-write; call it before a run starts writing into
    ``folder``. Returns the paths removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
            try:
                if tmp.is_file():
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: no code from the file runs.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, corrupt or
    holds objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint there. Train first (python -m oralx_lib train ...) or "
            "pass the path of an existing last.pt / best.pt."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to open: it holds objects other than tensors and plain containers "
            f"({str(exc).splitlines()[0]}). Only open checkpoints written by oralx_lib."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a damaged file
        raise CheckpointError(
            f"{path}: the file is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Delete it and use "
            "another checkpoint (best.pt, or last.pt of an earlier save)."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of state, found {type(state).__name__}.")
    return state


def shape_mismatches(model: torch.nn.Module, weights: dict) -> str | None:
    """Describe the weights of ``weights`` whose shape differs from ``model``'s (e.g. a head
    trained for another number of classes), or ``None`` when every shared name fits."""
    own = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items()
           if k in own and torch.is_tensor(v) and tuple(v.shape) != tuple(own[k].shape)]
    if not bad:
        return None
    shown = "; ".join(f"{k} is {list(a)} in the checkpoint but {list(b)} in the model"
                      for k, a, b in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    heads = [(a[0], b[0]) for k, a, b in bad
             if a and b and a[0] != b[0] and ("cls" in k or "class" in k or "logits" in k)]
    hint = ""
    if heads:
        ckpt, ours = heads[0]
        hint = (f" Its classification head has {ckpt} outputs where this model has {ours}: it "
                "was trained for a different number of classes (this library detects the 9 "
                "OralXrays-9 classes).")
    return f"{len(bad)} weight(s) have another shape: {shown}{more}.{hint}"


# ------------------------------------------------------------------------------------------------
# Plain conversions
# ------------------------------------------------------------------------------------------------
def plain_state(obj: Any) -> Any:
    """Rewrite ``Counter`` (MultiStepLR's milestones), numpy arrays / scalars and paths into
    plain values; :func:`restore_state` undoes the ``Counter`` rewrite."""
    if isinstance(obj, Counter):
        return {_COUNTER_KEY: [[k, v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        converted = [plain_state(v) for v in obj]
        return converted if isinstance(obj, list) else tuple(converted)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def restore_state(obj: Any) -> Any:
    """Inverse of :func:`plain_state` for ``Counter``."""
    if isinstance(obj, dict):
        if set(obj) == {_COUNTER_KEY}:
            return Counter({k: v for k, v in obj[_COUNTER_KEY]})
        return {k: restore_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [restore_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(restore_state(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------
# Random number generators
# ------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generator states as tensors and plain values.

    - Python's Mersenne Twister: ``(version, 625 ints, gauss_next)`` -> int64 tensor;
    - numpy's legacy global generator: ``("MT19937", 624 uint32, pos, has_gauss, cached)``;
    - torch: ``get_rng_state()`` (uint8 tensor), and one per CUDA device when CUDA is in use.
    """
    version, internal, gauss = random.getstate()
    key, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version),
                   "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"key": str(key), "state": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what :func:`capture_rng_state` recorded."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["key"], npst["state"].cpu().numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])


__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "check_plain",
    "load_checkpoint",
    "plain_state",
    "remove_stale_temporaries",
    "restore_rng_state",
    "restore_state",
    "save_checkpoint",
    "shape_mismatches",
]
