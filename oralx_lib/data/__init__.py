"""Data: the OralXrays-9 dataset, transforms, statistics and the synthetic generator.

The generator (:mod:`oralx_lib.data.synthetic`) and the download tools
(:mod:`oralx_lib.data.download`) are imported on use.
"""

from .dataset import (
    SPLITS,
    DatasetError,
    DatasetWarning,
    OralXrays9,
    annotation_file,
    collate_fn,
    image_dir,
    load_coco_json,
)
from . import transforms

__all__ = [
    "SPLITS",
    "DatasetError",
    "DatasetWarning",
    "OralXrays9",
    "annotation_file",
    "collate_fn",
    "image_dir",
    "load_coco_json",
    "transforms",
    "ensure_synthetic",
]


def ensure_synthetic(root=None, **kwargs):
    """Generate the embedded synthetic set at ``root`` if it is not there yet; return the root.
    See :func:`oralx_lib.data.synthetic.ensure_synthetic`."""
    from .synthetic import ensure_synthetic as _ensure

    return _ensure(root, **kwargs)
