"""Opening the authors' checkpoints without running code from them.

MMDetection 2.x writes a checkpoint with ``torch.save`` as a pickle of::

    {"meta": {"mmdet_version": str, "CLASSES": tuple of str, "config": str, "epoch": int,
              "iter": int, "hook_msgs": {...}, ...},
     "state_dict": OrderedDict[str, Tensor],
     "optimizer": {...}}            # present when saved with save_optimizer=True

A pickle can name any Python function to call while it is read (``os.system`` included).
:func:`load_release_checkpoint` reads it with ``torch.load(weights_only=True)``, whose unpickler
refuses every global that is not on an allow-list, and widens that list by exactly the plain
types the ``meta`` of such files may hold (:data:`META_ALLOWED_GLOBALS`: numpy scalars, dtypes
and arrays, which carry only data). Nothing else is ever allowed, and there is no fallback to
``weights_only=False``: a file that needs more raises :class:`ReleaseCheckpointError` naming
the globals it asks for, found by scanning the pickle (not executing it).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import plain_state
from ..errors import ReleaseCheckpointError

def _numpy_globals() -> list[Any]:
    """numpy's data-only types, under the names numpy 1.x and 2.x pickles use."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    entries: list[Any] = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((multiarray.scalar, f"{module}.scalar"))
        entries.append((multiarray._reconstruct, f"{module}._reconstruct"))
    entries += [np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        entries += sorted((v for v in vars(dtypes).values()
                           if isinstance(v, type) and issubclass(v, np.dtype)),
                          key=lambda t: t.__name__)
    return entries


#: What a release checkpoint's ``meta`` may hold beyond what ``weights_only`` already accepts
#: (tensors, dict, OrderedDict, list, tuple, set, str, bytes, int, float, bool, None): numpy
#: scalars (``numpy.float64(0.71)`` in ``hook_msgs``), dtypes and arrays. All of them rebuild
#: data; none calls user code.
META_ALLOWED_GLOBALS: list[Any] = _numpy_globals()


@dataclass
class ReleaseCheckpoint:
    """The parts of a release checkpoint.

    Attributes:
        path: the file.
        state_dict: ``{key: tensor}`` in the file's order (a leading ``module.`` of a
            checkpoint saved from a data-parallel wrapper is removed).
        meta: the ``meta`` dict with numpy values turned into plain ones (``{}`` if absent).
        has_optimizer: whether the file also holds optimizer state (not used here).
        sha256: the file's SHA-256, for provenance.
        other_keys: top-level entries other than ``meta`` / ``state_dict`` / ``optimizer``.
    """

    path: Path
    state_dict: OrderedDict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    has_optimizer: bool = False
    sha256: str = ""
    other_keys: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Plain provenance: file name, hash, sizes and the scalar fields of ``meta``."""
        meta = {k: v for k, v in self.meta.items()
                if k in ("mmdet_version", "mmcv_version", "CLASSES", "epoch", "iter", "time",
                         "seed", "exp_name")}
        if "CLASSES" in meta:
            meta["CLASSES"] = list(meta["CLASSES"])
        return {"file": self.path.name, "sha256": self.sha256,
                "num_tensors": len(self.state_dict),
                "num_values": int(sum(t.numel() for t in self.state_dict.values())),
                "has_optimizer": self.has_optimizer, "meta": meta}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unsafe_globals(path: Path) -> list[str]:
    """The globals the pickle names that are not allowed, found without executing it."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None or not zipfile.is_zipfile(path):
        return []
    try:
        with torch.serialization.safe_globals(META_ALLOWED_GLOBALS):
            return sorted(finder(path))
    except Exception:  # noqa: BLE001 - only a better message is lost
        return []


def _refusal(path: Path, exc: BaseException) -> ReleaseCheckpointError:
    names = _unsafe_globals(path)
    if not names:  # legacy (non-zip) pickles: the unpickler's message names the global
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
    what = (f"it asks the unpickler for {', '.join(names)}" if names
            else "the unpickler met an object that is neither a tensor nor plain data")
    return ReleaseCheckpointError(
        f"{path}: refused to open: {what}. A release checkpoint holds only tensors, plain "
        "containers and numpy data (its 'meta'); this file needs more, and opening it would "
        "run code named inside it. Nothing from it was executed. Get the file again from the "
        "authors' Google Drive folder (python -m oralx_lib download --checkpoints --out DIR); "
        "if it really is the release, report the names above so the allow-list can be "
        "reviewed."
    )


def load_release_checkpoint(path: str | os.PathLike, *, hash_file: bool = True
                            ) -> ReleaseCheckpoint:
    """Open an MMDetection 2.x checkpoint safely (see the module docstring).

    Args:
        path: the ``.pth`` file.
        hash_file: compute its SHA-256 (one extra read of the file) for provenance.

    Raises:
        ReleaseCheckpointError: missing, truncated or corrupt file; a pickle that names globals
            outside the allow-list (the message lists them); no ``state_dict`` of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReleaseCheckpointError(
            f"{path}: no such file. Download the released checkpoints first "
            "(python -m oralx_lib download --checkpoints --out DIR) or pass the path of a "
            ".pth file from the authors' Drive folder.")
    try:
        with torch.serialization.safe_globals(META_ALLOWED_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - any other failure: a damaged file
        text = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise ReleaseCheckpointError(
            f"{path}: the file is truncated or corrupt ({type(exc).__name__}: {text}). "
            "Download it again (the download resumes and checks sizes)."
        ) from None
    if not isinstance(raw, dict):
        raise ReleaseCheckpointError(
            f"{path}: expected a dict with 'state_dict' and 'meta' (an MMDetection checkpoint), "
            f"found {type(raw).__name__}.")
    if "state_dict" in raw:
        state, meta = raw["state_dict"], raw.get("meta") or {}
        other = sorted(str(k) for k in raw if k not in ("state_dict", "meta", "optimizer"))
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, meta, other = raw, {}, []  # a bare state dict
    else:
        raise ReleaseCheckpointError(
            f"{path}: no 'state_dict' entry (top-level keys: {sorted(map(str, raw))[:8]}); this "
            "is not an MMDetection checkpoint of a model.")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not isinstance(state, dict) or bad:
        raise ReleaseCheckpointError(
            f"{path}: 'state_dict' must map names to tensors; entries {bad[:5]} are not tensors.")
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return ReleaseCheckpoint(
        path=path,
        state_dict=OrderedDict(state),
        meta=plain_state(dict(meta)) if isinstance(meta, dict) else {},
        has_optimizer="optimizer" in raw,
        sha256=_sha256(path) if hash_file else "",
        other_keys=other,
    )


__all__ = ["META_ALLOWED_GLOBALS", "ReleaseCheckpoint", "ReleaseCheckpointError",
           "load_release_checkpoint"]
