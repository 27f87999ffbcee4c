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


def _params(train, val, test, seed, width, height, min_boxes_per_class_eval=0) -> dict[str, int]:
    out = {}
    for name, value in (("train", train), ("val", val), ("test", test), ("seed", seed),
                        ("width", width), ("height", height),
                        ("min_boxes_per_class_eval", min_boxes_per_class_eval)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"synthetic set parameter {name}={value!r} must be an integer.")
        out[name] = int(value)
    for name in ("train", "val", "test", "min_boxes_per_class_eval"):
        if out[name] < 0:
            raise ConfigError(f"synthetic set parameter {name}={out[name]} must be >= 0 (images in that split).")
    if out["seed"] < 0:
        raise ConfigError(f"synthetic set parameter seed={out['seed']} must be >= 0.")
    if out["min_boxes_per_class_eval"] > MAX_MIN_BOXES_PER_CLASS_EVAL:
        raise ConfigError(
            f"synthetic set parameter min_boxes_per_class_eval={out['min_boxes_per_class_eval']}: "
            f"at most {MAX_MIN_BOXES_PER_CLASS_EVAL} (the rare-eval sets use {RARE_EVAL_MIN_BOXES})."
        )
    _check_size(out["width"], out["height"])
    if out["min_boxes_per_class_eval"] == 0:
        del out["min_boxes_per_class_eval"]  # the default sets' marker stays as it always was
    return out


#: ``--rare-eval``: every class gets at least this many boxes in the validation and test splits.
RARE_EVAL_MIN_BOXES = 50
#: The largest minimum accepted (the rarest class, bridges, is in ~6 % of mouths).
MAX_MIN_BOXES_PER_CLASS_EVAL = 1000
#: Candidates drawn per missing box before enrichment gives up (bridges need ~18 per box).
_MAX_CANDIDATES_PER_BOX = 2000
#: The splits enriched by ``min_boxes_per_class_eval`` (training keeps the long tail).
EVAL_SPLITS = ("val", "test")


def enrichment_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of enrichment candidate ``index`` of ``split``: its own stream,
    ``SeedSequence(seed, spawn_key=(split_index, index, 1))``, apart from the split's regular
    images (``image_rng``, spawn key ``(split_index, index)``)."""
    return np.random.default_rng(
        np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split), int(index), 1)))


def _enrichment(seed: int, split: str, width: int, height: int, counts: dict[str, int],
                minimum: int):
    """Yield ``(image, annotations, candidate index)`` of the enrichment images of a split.

    Candidates ``j = 0, 1, ...`` of :func:`enrichment_rng` are tested in order. A candidate is
    taken when it holds a box of a class that still has fewer than ``minimum`` boxes in the
    split (its scene is tested first, :func:`~.scene._scene_classes`, and only scenes that may
    help are rendered); ``counts`` is updated in place. Deterministic: the same parameters
    give the same images. Each image is an ordinary draw of the generator; the split is
    enriched only by which draws it keeps.
    """
    from .scene import _sample_scene, _scene_classes

    def short():
        return {c for c in CLASSES if counts[c] < minimum}

    budget = _MAX_CANDIDATES_PER_BOX * sum(minimum - counts[c] for c in short())
    j = 0
    while short():
        if j >= budget:
            raise DatasetError(
                f"synthetic {split!r} split: {budget} candidates did not give every class "
                f"{minimum} boxes (still short: {sorted(short())}); lower "
                "min_boxes_per_class_eval."
            )
        if _scene_classes(_sample_scene(enrichment_rng(seed, split, j))) & short():
            img, anns = render_panoramic(enrichment_rng(seed, split, j), width, height)
            if {a["category"] for a in anns} & short():
                for a in anns:
                    counts[a["category"]] += 1
                yield img, anns, j
        j += 1


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
                     width: int, height: int, min_boxes_per_class_eval: int = 0,
                     progress: bool = True) -> Path:
    """Write a synthetic set in the released OralXrays-9 layout under ``out``; return ``out``.

    ``min_boxes_per_class_eval = m > 0`` (``--rare-eval``: 50) enriches the validation and
    test splits: after their ``val`` / ``test`` regular images come the enrichment images
    (:func:`_enrichment`, a stream of their own) until each of the nine classes has at least
    ``m`` boxes there, so that per-class AP of the rare classes can be measured. The training
    split is untouched (the same images, the long tail), and so are the regular images of every
    split. The marker records the parameter and the per-class counts of every split.

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

    params = _params(train, val, test, seed, width, height, min_boxes_per_class_eval)
    width, height = params["width"], params["height"]
    minimum = params.get("min_boxes_per_class_eval", 0)
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
            if n == 0:
                if ann_file.exists():
                    ann_file.unlink()
                if img_dir.is_dir():
                    for f in img_dir.iterdir():
                        if _FILE_RE.match(f.name):
                            f.unlink()
                if img_dir.is_dir() and not any(img_dir.iterdir()):
                    img_dir.rmdir()
                counts[split] = {"images": 0, "annotations": 0}
                continue
            images, annotations = [], []
            per_class = dict.fromkeys(CLASSES, 0)

            def add(img, anns, **extra):
                i = len(images)
                name = f"{i + 1:06d}.jpg"
                write_bytes_atomic(img_dir / name, _encode_jpeg(img))
                images.append({"id": i + 1, "file_name": name, "width": width, "height": height,
                               **extra})
                for a in anns:
                    x, y, w, h = (round(float(v), 2) for v in a["bbox"])
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id[a["category"]],
                        "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                    })

            for i in range(n):
                img, anns = render_panoramic(image_rng(params["seed"], split, i), width, height)
                add(img, anns)
                for a in anns:
                    per_class[a["category"]] += 1
                bar.update(1)
            enriched = 0
            if minimum and split in EVAL_SPLITS:
                for img, anns, j in _enrichment(params["seed"], split, width, height, per_class,
                                                minimum):
                    add(img, anns, enrichment_candidate=j)
                    enriched += 1
                    bar.total += 1
                    bar.update(1)
            keep = {im["file_name"] for im in images}
            if img_dir.is_dir():
                for f in img_dir.iterdir():
                    if _FILE_RE.match(f.name) and f.name not in keep:
                        f.unlink()
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
            if minimum:
                counts[split].update(enriched_images=enriched, per_class=per_class)
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

    ``min_boxes_per_class_eval`` (default 0, off) may be passed too (:func:`generate_dataset`).

    Raises:
        ConfigError: an unknown keyword or a bad parameter value.
    """
    progress = kwargs.pop("progress", True)
    unknown = sorted(set(kwargs) - set(DEFAULTS) - {"min_boxes_per_class_eval"})
    if unknown:
        raise ConfigError(f"ensure_synthetic(): unknown parameter(s) {unknown}; "
                          f"use {sorted(DEFAULTS)} or progress.")
    params = _params(**{**DEFAULTS, **kwargs})
    root = Path(root) if root is not None else default_data_root()
    if _marker_params(root) == params:
        return root
    if not (root / MARKER).exists() and _is_foreign(root) is not None:
        return root
    # two processes (chapters executed side by side) write a set once: the second waits
    from filelock import FileLock

    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(root) + ".lock"):
            if _marker_params(root) == params:
                return root
            return generate_dataset(root, progress=progress, **params)
    except NotImplementedError:  # a file system without file locks
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
    p.add_argument("--rare-eval", type=int, nargs="?", const=RARE_EVAL_MIN_BOXES, default=0,
                   metavar="N",
                   help="enrich val and test until every class has at least N boxes there "
                        f"(N = {RARE_EVAL_MIN_BOXES} without a value; training keeps the long "
                        "tail; default: off)")
    p.add_argument("--if-needed", action="store_true",
                   help="only generate when the folder lacks this exact set (what `make` uses)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    params = dict(train=a.train, val=a.val, test=a.test, seed=a.seed, width=a.width, height=a.height,
                  min_boxes_per_class_eval=a.rare_eval)
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
