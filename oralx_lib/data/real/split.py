"""The test split: carve a deterministic test split out of ``val`` when the release ships only
``train`` and ``val``.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import ConfigError
from ..dataset import DatasetError, SPLITS, annotation_file, image_dir, load_coco_json
from .common import _place, _run_cli, _write_json_atomic


def split_dataset(
    root: str | os.PathLike,
    *,
    source: str = "val",
    fraction: float = 0.3,
    seed: int = 0,
    out_split: str = "test",
    force: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Carve a deterministic ``out_split`` out of ``source`` when the release has no test set.

    The images of ``source`` are ordered by id and shuffled with ``random.Random(seed)``; the
    first ``round(fraction * n)`` go to ``out_split`` with their annotations, the rest stay.
    Written: ``instances_{source}2017.orig.json`` (the original, kept once),
    ``instances_{source}2017.json`` (the remaining ``1 - fraction``) and
    ``instances_{out_split}2017.json``; the chosen images are hard-linked (else moved) into
    ``{out_split}2017/``. Everything else in the JSON (``info``, ``categories``...) is kept.

    Running it twice is refused unless ``force``: then the split is redone from the backup (so
    ``val`` does not shrink twice) and images of the previous ``out_split`` go back.

    Returns:
        ``{source: {"images", "boxes"}, out_split: {"images", "boxes"}}``.
    """
    root = Path(root)
    if source == out_split or source not in SPLITS or out_split not in SPLITS:
        raise ConfigError(f"source={source!r}, out_split={out_split!r}: use two different splits "
                          f"among {SPLITS}.")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction={fraction}: use a number between 0 and 1 (e.g. 0.3).")
    src_json, out_json = annotation_file(root, source), annotation_file(root, out_split)
    backup = src_json.with_name(src_json.stem + ".orig.json")
    if out_json.exists() and not backup.exists():
        raise DatasetError(
            f"{out_json} already exists and was not made by split_dataset (no {backup.name}): "
            f"the dataset already has a {out_split} split. Delete that file yourself if you "
            "really want to replace it.")
    if backup.exists() and not force:
        raise DatasetError(
            f"{root} was already split ({backup} exists). Pass --force (force=True) to redo the "
            "split from that backup.")
    original = load_coco_json(backup if backup.exists() else src_json)
    previous = load_coco_json(out_json) if out_json.exists() else {"images": []}

    for img in original["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("id"), (int, str)) or (
                "file_name" not in img):
            raise DatasetError(f"{src_json}: image entry {img!r} lacks an 'id' or 'file_name'; "
                               f"fix it (verify_dataset.py {root} lists all such problems).")
    ids = sorted({img["id"] for img in original["images"]}, key=lambda i: (isinstance(i, str), i))
    n_out = round(fraction * len(ids))
    if not 1 <= n_out <= len(ids) - 1:
        raise DatasetError(f"{src_json}: {len(ids)} images cannot be split with fraction "
                           f"{fraction}; both parts need at least one image.")
    order = list(ids)
    random.Random(seed).shuffle(order)
    chosen = set(order[:n_out])

    def part(keep) -> dict:
        d = dict(original)
        d["images"] = [im for im in original["images"] if keep(im["id"])]
        wanted = {im["id"] for im in d["images"]}
        d["annotations"] = [a for a in original["annotations"] if a.get("image_id") in wanted]
        return d

    new_src, new_out = part(lambda i: i not in chosen), part(lambda i: i in chosen)
    src_dir, out_dir = image_dir(root, source), image_dir(root, out_split)
    new_names = {str(im["file_name"]) for im in new_out["images"]}
    for im in previous["images"]:  # undo the previous split's files that change side
        name = str(im["file_name"])
        old = out_dir / name
        if name in new_names or not old.is_file():
            continue
        if (src_dir / name).is_file():
            old.unlink()
        else:
            _place(old, src_dir / name, keep_source=False)
    for im in tqdm(new_out["images"], desc=f"{source} -> {out_split}", unit="img",
                   disable=not progress):
        name = str(im["file_name"])
        dst, src = out_dir / name, src_dir / name
        if not dst.is_file() and src.is_file():
            _place(src, dst, keep_source=False)

    if not backup.exists():
        os.replace(src_json, backup)
    _write_json_atomic(src_json, new_src)
    _write_json_atomic(out_json, new_out)
    return {
        source: {"images": len(new_src["images"]), "boxes": len(new_src["annotations"])},
        out_split: {"images": len(new_out["images"]), "boxes": len(new_out["annotations"])},
    }


def split_main(argv: Sequence[str] | None = None) -> int:
    """``split_dataset.py``: :func:`split_dataset`. Exit 0 on success, 2 with a message when
    refused (already split, bad arguments)."""
    parser = argparse.ArgumentParser(
        prog="split_dataset.py",
        description="Carve a deterministic test split out of val (for a release that ships only "
                    "train and val). Keeps annotations/instances_val2017.orig.json; links (or "
                    "moves) the chosen images into test2017/.")
    parser.add_argument("root", type=Path, metavar="DIR", help="dataset root")
    parser.add_argument("--fraction", type=float, default=0.3,
                        help="share of val that becomes test (default 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--source", default="val", choices=SPLITS, help="split to cut (val)")
    parser.add_argument("--out-split", default="test", choices=SPLITS, help="new split (test)")
    parser.add_argument("--force", action="store_true",
                        help="redo an earlier split from the kept original")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(argv):
        args = parser.parse_args(argv)
        counts = split_dataset(args.root, source=args.source, fraction=args.fraction,
                               seed=args.seed, out_split=args.out_split, force=args.force,
                               progress=not args.quiet)
        for split, c in counts.items():
            print(f"{split}: {c['images']} images, {c['boxes']} boxes")
        return 0

    return _run_cli(run, argv)
