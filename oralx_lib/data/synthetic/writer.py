"""The set on disk: COCO files and JPEGs in the released layout, atomic and resumable
(:func:`generate_dataset`, :func:`ensure_synthetic`, the ``synthesize`` command).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ... import CLASSES
from ...errors import ConfigError, DatasetError
from ...files import write_bytes_atomic
from ...paths import default_data_root
from ..dataset import SPLITS
from .render import _check_size, image_rng, render_panoramic
from .settings import DEFAULTS, DESCRIPTION, GENERATOR_VERSION, MARKER, _FILE_RE, _JPEG_QUALITY


def _params(train, val, test, seed, width, height) -> dict[str, int]:
    out = {}
    for name, value in (("train", train), ("val", val), ("test", test), ("seed", seed),
                        ("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"synthetic set parameter {name}={value!r} must be an integer.")
        out[name] = int(value)
    for name in ("train", "val", "test"):
        if out[name] < 0:
            raise ConfigError(f"synthetic set parameter {name}={out[name]} must be >= 0 (images in that split).")
    if out["seed"] < 0:
        raise ConfigError(f"synthetic set parameter seed={out['seed']} must be >= 0.")
    _check_size(out["width"], out["height"])
    return out


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8")


def _is_foreign(root: Path) -> Path | None:
    """An annotation file under ``root`` that this module did not write (a real dataset)."""
    for split in SPLITS:
        f = root / "annotations" / f"instances_{split}2017.json"
        if f.is_file():
            try:
                with open(f, encoding="utf-8") as fh:
                    info = json.load(fh).get("info", {})
            except (OSError, ValueError, AttributeError):
                return f
            if not (isinstance(info, dict) and info.get("description") == DESCRIPTION):
                return f
    return None


def _encode_jpeg(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def generate_dataset(out: str | os.PathLike, *, train: int, val: int, test: int, seed: int,
                     width: int, height: int, progress: bool = True) -> Path:
    """Write a synthetic set in the released OralXrays-9 layout under ``out``; return ``out``.

    Writes ``annotations/instances_{split}2017.json`` (complete COCO: ``info``, ``licenses``,
    ``images``, ``annotations`` with ``area = w h`` and ``iscrowd = 0``, ``categories`` with ids
    1..9 in :data:`oralx_lib.CLASSES` order) and ``{split}2017/000001.jpg ...`` for every split
    with at least one image, then :data:`MARKER` with the parameters, last. JSON files and
    images are written atomically (temporary file + rename). Files of an earlier synthetic set
    in ``out`` that the new one does not have (more images, a split now empty) are removed;
    a folder holding a real dataset is refused.

    Raises:
        ConfigError: a parameter is not a usable integer.
        DatasetError: ``out`` holds annotation files this module did not write.
    """
    from tqdm.auto import tqdm

    params = _params(train, val, test, seed, width, height)
    width, height = params["width"], params["height"]
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: the output path is a file, not a folder; choose another --out.")
    foreign = _is_foreign(root)
    if foreign is not None:
        raise DatasetError(
            f"{foreign}: this folder holds annotations that the synthetic generator did not write "
            "(a real OralXrays-9 copy?). Refusing to overwrite it: choose another --out folder."
        )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if marker.exists():
        marker.unlink()  # a set being (re)written is incomplete until the marker is back

    categories = [{"id": i + 1, "name": n, "supercategory": "oral anomaly"} for i, n in enumerate(CLASSES)]
    cat_id = {n: i + 1 for i, n in enumerate(CLASSES)}
    counts = {}
    total = params["train"] + params["val"] + params["test"]
    with tqdm(total=total, desc="synthesize", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            n = params[split]
            img_dir = root / f"{split}2017"
            ann_file = root / "annotations" / f"instances_{split}2017.json"
            keep = {f"{i:06d}.jpg" for i in range(1, n + 1)}
            if img_dir.is_dir():
                for f in img_dir.iterdir():
                    if _FILE_RE.match(f.name) and f.name not in keep:
                        f.unlink()
            if n == 0:
                if ann_file.exists():
                    ann_file.unlink()
                if img_dir.is_dir() and not any(img_dir.iterdir()):
                    img_dir.rmdir()
                counts[split] = {"images": 0, "annotations": 0}
                continue
            images, annotations = [], []
            for i in range(n):
                img, anns = render_panoramic(image_rng(params["seed"], split, i), width, height)
                name = f"{i + 1:06d}.jpg"
                write_bytes_atomic(img_dir / name, _encode_jpeg(img))
                images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
                for a in anns:
                    x, y, w, h = (round(float(v), 2) for v in a["bbox"])
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id[a["category"]],
                        "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                    })
                bar.update(1)
            coco = {
                "info": {"description": DESCRIPTION, "version": str(GENERATOR_VERSION), "year": 2025,
                         "contributor": "oralx_lib", "url": "", "date_created": ""},
                "licenses": [{"id": 1, "name": "CC0 1.0 (synthetic data)",
                              "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            write_bytes_atomic(ann_file, _json_bytes(coco))
            counts[split] = {"images": len(images), "annotations": len(annotations)}
    write_bytes_atomic(marker, _json_bytes({"generator": "oralx_lib.data.synthetic", "version": GENERATOR_VERSION,
                                       "params": params, "counts": counts}))
    return root


def _marker_params(root: Path) -> dict | None:
    try:
        with open(root / MARKER, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("version") != GENERATOR_VERSION:
        return None
    return m.get("params")


def ensure_synthetic(root: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Make sure ``root`` holds the synthetic set with the given parameters; return ``root``.

    ``root`` defaults to :func:`oralx_lib.paths.default_data_root` (``$ORALX_DATA`` or the
    embedded ``data/synthetic``). Parameters default to :data:`DEFAULTS`; ``kwargs`` may
    override ``train, val, test, seed, width, height`` and pass ``progress``. The set is
    (re)generated when the marker is missing (never generated, or interrupted), was written by
    another generator version, or records other parameters; otherwise nothing is touched.
    A root that holds a real dataset (annotation files this module did not write, no marker) is
    returned as it is: the notebooks then run on the real data.

    Raises:
        ConfigError: an unknown keyword or a bad parameter value.
    """
    progress = kwargs.pop("progress", True)
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"ensure_synthetic(): unknown parameter(s) {unknown}; "
                          f"use {sorted(DEFAULTS)} or progress.")
    params = _params(**{**DEFAULTS, **kwargs})
    root = Path(root) if root is not None else default_data_root()
    if _marker_params(root) == params:
        return root
    if not (root / MARKER).exists() and _is_foreign(root) is not None:
        return root
    return generate_dataset(root, progress=progress, **params)


def main(argv: list[str] | None = None) -> int:
    """``python -m oralx_lib synthesize`` / ``data_scripts/make_synthetic.py``: write a set."""
    p = argparse.ArgumentParser(
        prog="make_synthetic",
        description="Write an OralXrays-9-like synthetic set of panoramic X-rays in the released COCO layout.",
    )
    p.add_argument("--out", type=Path, default=None,
                   help="dataset root to write (default: $ORALX_DATA or the embedded data/synthetic)")
    for name in ("train", "val", "test"):
        p.add_argument(f"--{name}", type=int, default=DEFAULTS[name],
                       help=f"images in {name} (default {DEFAULTS[name]})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help=f"random seed (default {DEFAULTS['seed']})")
    p.add_argument("--width", type=int, default=DEFAULTS["width"],
                   help=f"image width (default {DEFAULTS['width']})")
    p.add_argument("--height", type=int, default=DEFAULTS["height"],
                   help=f"image height (default {DEFAULTS['height']})")
    p.add_argument("--if-needed", action="store_true",
                   help="only generate when the folder lacks this exact set (what `make` uses)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    params = dict(train=a.train, val=a.val, test=a.test, seed=a.seed, width=a.width, height=a.height)
    out = a.out if a.out is not None else default_data_root()
    try:
        if a.if_needed:
            root = ensure_synthetic(out, progress=not a.quiet, **params)
        else:
            root = generate_dataset(out, progress=not a.quiet, **params)
    except (ConfigError, ValueError) as exc:
        p.exit(2, f"make_synthetic: error: {exc}\n")
    print(f"synthetic set ready at {root}")
    return 0
