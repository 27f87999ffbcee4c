"""Data: the OralXrays-9 dataset, transforms, statistics, the synthetic generator
(:mod:`oralx_lib.data.synthetic`) and the tools that get the real release onto disk
(:mod:`oralx_lib.data.real`); both are imported on use.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError
from ..paths import default_data_root
from . import transforms
from .dataset import (
    SPLITS,
    DatasetWarning,
    OralXrays9,
    annotation_file,
    class_label,
    collate_fn,
    dataset_fingerprint,
    image_dir,
    load_coco_json,
)

__all__ = [
    "SPLITS",
    "DatasetError",
    "DatasetWarning",
    "OralXrays9",
    "annotation_file",
    "class_label",
    "collate_fn",
    "dataset_fingerprint",
    "ensure_synthetic",
    "image_dir",
    "load_coco_json",
    "resolve_data_root",
    "transforms",
]


def ensure_synthetic(root=None, **kwargs):
    """Generate the embedded synthetic set at ``root`` if it is not there yet; return the root.
    See :func:`oralx_lib.data.synthetic.ensure_synthetic`."""
    from .synthetic import ensure_synthetic as _ensure

    return _ensure(root, **kwargs)


def resolve_data_root(root: str | os.PathLike | None = None, *, prepare: bool = True) -> Path:
    """The dataset root a run uses: ``root`` if given, else ``$ORALX_DATA``, else the embedded
    synthetic set, generated first when ``prepare`` (a no-op when it is there and up to date).

    The project's one data-root rule (training, the book's runs and the command line use it).
    """
    if root is not None:
        return Path(root).expanduser()
    path = default_data_root()
    if prepare and not os.environ.get("ORALX_DATA"):
        ensure_synthetic(path)
    return path
