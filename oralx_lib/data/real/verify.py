"""Verification: check a dataset folder (layout, JSON, images, classes) and report counts,
problems and warnings (:class:`VerifyReport`).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from ... import CLASSES
from ...errors import ImageReadError
from ..dataset import (DatasetError, SPLITS, annotation_file, class_label, image_dir,
                       load_coco_json, normalisation_twin)
from .common import PAPER_COUNTS, _run_cli, _write_json_atomic


@dataclass
class SplitStats:
    """Counts for one split: images, boxes (all annotations), boxes per class (by our names),
    ``iscrowd`` regions and the image sizes seen, ``(width, height) -> count``."""

    images: int = 0
    boxes: int = 0
    crowd: int = 0
    per_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    image_sizes: dict[tuple[int, int], int] = field(default_factory=dict)


@dataclass
class VerifyReport:
    """The result of :func:`verify_dataset`.

    ``problems`` would break training or evaluation (missing or undecodable images, unknown
    categories, malformed boxes); ``warnings`` are worth knowing (no test split, boxes the loader
    drops or clips, totals that differ from the paper's while a split is missing).
    """

    root: Path
    splits: dict[str, SplitStats] = field(default_factory=dict)
    missing_splits: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    expected: dict[str, int] | None = None
    images_checked: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def totals(self) -> dict[str, int]:
        return {"images": sum(s.images for s in self.splits.values()),
                "boxes": sum(s.boxes for s in self.splits.values())}

    def per_class_total(self) -> dict[str, int]:
        return {c: sum(s.per_class[c] for s in self.splits.values()) for c in CLASSES}

    def summary(self, max_lines: int = 20) -> str:
        """A human-readable report: a table per split, boxes per class, sizes, warnings,
        problems (at most ``max_lines`` of each) and the verdict."""
        lines = [f"OralXrays-9 dataset at {self.root}", f"{'split':<8}{'images':>9}{'boxes':>9}"]
        for split in SPLITS:
            s = self.splits.get(split)
            if s is not None:
                lines.append(f"{split:<8}{s.images:>9,}{s.boxes:>9,}")
            else:
                why = "missing" if split in self.missing_splits else "unreadable"
                lines.append(f"{split:<8}{'-':>9}{'-':>9}  ({why})")
        t = self.totals
        paper = ""
        if self.expected:
            paper = f"  (paper: {self.expected['images']:,} / {self.expected['boxes']:,})"
        lines.append(f"{'total':<8}{t['images']:>9,}{t['boxes']:>9,}{paper}")
        lines.append("boxes per class: " + ", ".join(f"{c} {n:,}"
                                                     for c, n in self.per_class_total().items()))
        sizes: Counter = Counter()
        for s in self.splits.values():
            sizes.update(s.image_sizes)
        if sizes:
            src = "decoded" if self.images_checked else "from the JSON"
            lines.append(f"image sizes ({src}): " + ", ".join(
                f"{w}x{h} ({n:,})" for (w, h), n in sizes.most_common(4))
                + (f", {len(sizes) - 4} more" if len(sizes) > 4 else ""))
        for title, items in (("warnings", self.warnings), ("problems", self.problems)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {x}" for x in items[:max_lines]]
                if len(items) > max_lines:
                    lines.append(f"  ... and {len(items) - max_lines} more")
        lines.append("result: OK" if self.ok else f"result: {len(self.problems)} problem(s)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content (image sizes as ``"WxH"`` keys)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "totals": self.totals,
            "expected": self.expected,
            "splits": {k: {"images": s.images, "boxes": s.boxes, "crowd": s.crowd,
                           "per_class": s.per_class,
                           "image_sizes": {f"{w}x{h}": n for (w, h), n in s.image_sizes.items()}}
                       for k, s in self.splits.items()},
            "missing_splits": self.missing_splits,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _examples(items: Sequence[Any], k: int = 3) -> str:
    shown = ", ".join(str(x) for x in items[:k])
    return shown + (f", ... ({len(items)} in all)" if len(items) > k else "")


def _check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """Open and fully decode an image; JPEGs at 1/8 scale (every byte is still read and
    entropy-decoded, so truncation shows, at a fraction of the cost)."""
    from ..images import open_image

    try:
        with open_image(path) as im:
            size = im.size
            im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
        return size, None
    except ImageReadError as exc:  # names the file; says how to allow a very large image
        return None, str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; all mean "cannot decode"
        return None, f"{type(exc).__name__}: {exc}"


def verify_dataset(
    root: str | os.PathLike,
    *,
    expected: Mapping[str, int] | None = PAPER_COUNTS,
    check_images: bool = True,
    progress: bool = True,
    workers: int | None = None,
) -> VerifyReport:
    """Check a dataset root in the OralXrays-9 layout and count what is in it.

    Per split (``annotations/instances_{split}2017.json`` + ``{split}2017/``): the JSON loads and
    has ``images``/``annotations``/``categories``; every category is one of the nine names (by
    the loader's rule: case, spaces, ``_``, ``-`` ignored) and all nine are present; image ids
    and file names are unique; each annotation points at a listed image and category and has a
    finite ``[x, y, w, h]``; every listed image exists and (``check_images``) decodes, with the
    size the JSON states. Boxes the loader drops (``w < 1``, ``h < 1``) or clips (outside the
    image) are warnings. Totals are compared with ``expected`` (the paper's 12,688 images /
    84,113 boxes): a mismatch is a problem when all three splits are there, a warning otherwise.

    Args:
        root: the dataset root.
        expected: ``{"images": int, "boxes": int}`` totals, or ``None`` to skip the comparison.
        check_images: decode every image (slow on the real set: minutes); ``False`` only checks
            that the files exist.
        progress: tqdm bars.
        workers: threads decoding images (default: up to 8, one per CPU).

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is ``False`` when there are problems.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: dataset folder not found. Get the data with `python "
            "data_scripts/download_oralxrays9.py --out DIR`, or check the path."
        )
    report = VerifyReport(root=root, expected=dict(expected) if expected else None,
                          images_checked=check_images)
    for split in SPLITS:
        ann = annotation_file(root, split)
        if not ann.is_file():
            report.missing_splits.append(split)
            if split == "test":
                report.warnings.append(
                    f"no test split ({ann} not found; the release may ship only train and val): "
                    f"make one with `python data_scripts/split_dataset.py {root}`.")
            else:
                report.problems.append(f"{split}: {ann} not found; the {split} split is needed.")
            continue
        _verify_split(report, split, ann, check_images, progress, workers)

    if expected and report.splits:
        t = report.totals
        if (t["images"], t["boxes"]) != (expected["images"], expected["boxes"]):
            msg = (f"totals {t['images']:,} images / {t['boxes']:,} boxes differ from the "
                   f"expected {expected['images']:,} / {expected['boxes']:,}")
            if report.missing_splits:
                report.warnings.append(msg + f" (split(s) {', '.join(report.missing_splits)} "
                                             "missing, so this may be expected)")
            else:
                report.problems.append(msg + ": a file or an archive may be missing.")
    return report


def _verify_split(report: VerifyReport, split: str, ann: Path, check_images: bool,
                  progress: bool, workers: int | None) -> None:
    try:
        data = load_coco_json(ann)
    except DatasetError as exc:
        report.problems.append(f"{split}: {exc}")
        return
    stats = SplitStats()
    report.splits[split] = stats
    p, w = report.problems, report.warnings

    cat_name: dict[int, str] = {}
    unknown = []
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            p.append(f"{split}: {ann}: a category lacks 'id' or 'name': {cat!r}.")
            continue
        label = class_label(cat["name"])  # the loader's name rule
        name = CLASSES[label - 1] if label is not None else None
        if not isinstance(cat["id"], (int, str)):
            p.append(f"{split}: {ann}: category {cat['name']!r} has id {cat['id']!r}; ids are "
                     "integers.")
        elif name is None:
            close = difflib.get_close_matches(str(cat["name"]), CLASSES, n=1)
            unknown.append(f"{cat['name']!r} (id {cat['id']})"
                           + (f", did you mean {close[0]!r}?" if close else ""))
        elif cat["id"] in cat_name:
            p.append(f"{split}: {ann}: category id {cat['id']} appears twice.")
        else:
            cat_name[cat["id"]] = name
    if unknown:
        p.append(f"{split}: {ann}: unknown category name(s) {'; '.join(unknown)}. The nine "
                 f"OralXrays-9 classes are {list(CLASSES)}: rename them in the JSON.")
    absent = [c for c in CLASSES if c not in cat_name.values()]
    if absent:
        p.append(f"{split}: {ann}: categories {absent} are missing from 'categories'.")

    img_dir = image_dir(report.root, split)
    sizes_json: dict[Any, tuple[Any, Any]] = {}
    paths: dict[Any, Path] = {}
    bad_entry, dup_id, dup_name, unsafe, missing = [], [], [], [], []
    seen_names: set[str] = set()
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            bad_entry.append(repr(img)[:80])
            continue
        iid, fname = img["id"], str(img["file_name"])
        if not isinstance(iid, (int, str)):
            bad_entry.append(repr(img)[:80])
            continue
        if iid in sizes_json:
            dup_id.append(iid)
            continue
        sizes_json[iid] = (img.get("width"), img.get("height"))
        if fname in seen_names:
            dup_name.append(fname)
        seen_names.add(fname)
        rel = PurePosixPath(fname.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts:
            unsafe.append(fname)
            continue
        path = img_dir.joinpath(*rel.parts)
        if path.is_file():
            paths[iid] = path
        else:
            missing.append(fname)
    stats.images = len(sizes_json)
    for items, what in ((bad_entry, "image entries lack 'id' or 'file_name'"),
                        (dup_id, "image ids appear more than once"),
                        (dup_name, "file names appear more than once"),
                        (unsafe, "file names point outside the image folder")):
        if items:
            p.append(f"{split}: {ann}: {len(items)} {what}: {_examples(items)}.")
    twins = [(m, t) for m in missing if (t := normalisation_twin(img_dir, m))]
    if twins:
        missing = [m for m in missing if m not in dict(twins)]
        p.append(f"{split}: {ann}: {len(twins)} file name(s) differ from the files in "
                 f"{img_dir} only in Unicode normalisation (NFC vs NFD, e.g. after copying "
                 "from macOS): " + _examples([f"{m!r} is on disk as {t!r}" for m, t in twins])
                 + ". Rename the files to the JSON's names, or write the names as they are "
                 "on disk into the JSON.")
    if missing:
        p.append(f"{split}: {len(missing)} image(s) listed in {ann.name} are missing from "
                 f"{img_dir}: {_examples(missing)}. Extract the archives again (or rerun the "
                 "download), then verify again.")

    bad_ref, bad_cat, bad_box, degenerate, outside = [], [], [], [], []
    ann_ids: Counter = Counter()
    no_id = 0
    for a in data["annotations"]:
        if not isinstance(a, dict):
            bad_box.append(repr(a)[:60])
            continue
        aid = a.get("id", "?")
        if not isinstance(a.get("id"), (int, str)) or isinstance(a.get("id"), bool):
            no_id += 1
        else:
            ann_ids[a["id"]] += 1
        stats.boxes += 1
        image_id, category_id = a.get("image_id"), a.get("category_id")
        if not isinstance(image_id, (int, str)) or image_id not in sizes_json:
            bad_ref.append(aid)
        name = cat_name.get(category_id) if isinstance(category_id, (int, str)) else None
        if name is None:
            bad_cat.append(f"{aid} (category_id {a.get('category_id')})")
        box = a.get("bbox")
        try:
            x, y, bw, bh = (float(v) for v in box)
            finite = all(math.isfinite(v) for v in (x, y, bw, bh))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            bad_box.append(f"{aid} {box!r}")
            continue
        if name is not None:
            stats.per_class[name] += 1
        if a.get("iscrowd"):
            stats.crowd += 1
        if bw < 1 or bh < 1:
            degenerate.append(aid)
            continue
        W, H = (sizes_json.get(image_id, (None, None)) if isinstance(image_id, (int, str))
                else (None, None))
        if isinstance(W, (int, float)) and isinstance(H, (int, float)) and (
                x < -1 or y < -1 or x + bw > W + 1 or y + bh > H + 1):
            outside.append(aid)
    for items, what in ((bad_ref, "annotations point at an image id not in 'images'"),
                        (bad_cat, "annotations have a category_id not in 'categories'"),
                        (bad_box, "annotations have no finite [x, y, w, h] bbox")):
        if items:
            p.append(f"{split}: {ann}: {len(items)} {what} (ids {_examples(items)}).")
    dup_ann = [f"{i} ({n} times)" for i, n in ann_ids.items() if n > 1]
    if dup_ann:
        p.append(f"{split}: {ann}: {len(dup_ann)} annotation ids appear more than once "
                 f"({_examples(dup_ann)}); COCO evaluation keys ground truth by id and would "
                 "merge them, so scores come out wrong: renumber the annotations, e.g. 1..N.")
    if no_id:
        p.append(f"{split}: {ann}: {no_id} annotation(s) have no integer 'id'; every "
                 "annotation needs a unique id.")
    if degenerate:
        w.append(f"{split}: {len(degenerate)} box(es) with w < 1 or h < 1 (the loader drops "
                 f"them; ids {_examples(degenerate)}).")
    if outside:
        w.append(f"{split}: {len(outside)} box(es) reach outside their image (the loader clips "
                 f"them; ids {_examples(outside)}).")

    sizes: Counter = Counter()
    if check_images and paths:
        ids = list(paths)
        n_workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            results = list(tqdm(pool.map(_check_image, (paths[i] for i in ids)), total=len(ids),
                                desc=f"decode {split}", unit="img", disable=not progress))
        broken, wrong_size = [], []
        for iid, (size, err) in zip(ids, results):
            if err is not None:
                broken.append(f"{paths[iid].name} ({err})")
                continue
            sizes[size] += 1
            jw, jh = sizes_json[iid]
            if jw is not None and jh is not None and (jw, jh) != size:
                wrong_size.append(f"{paths[iid].name} (JSON {jw}x{jh}, file {size[0]}x{size[1]})")
        if broken:
            p.append(f"{split}: {len(broken)} image(s) in {img_dir} cannot be decoded: "
                     f"{_examples(broken)}. Extract them again from the archive.")
        if wrong_size:
            p.append(f"{split}: {len(wrong_size)} image(s) differ in size from their JSON "
                     f"width/height, so their boxes may be misplaced: {_examples(wrong_size)}.")
    else:
        for iid in paths:
            jw, jh = sizes_json[iid]
            if isinstance(jw, int) and isinstance(jh, int):
                sizes[(jw, jh)] += 1
    stats.image_sizes = dict(sizes)


def verify_main(argv: Sequence[str] | None = None) -> int:
    """``verify_dataset.py``: print :func:`verify_dataset`'s summary. Exit 0 when OK, 1 when
    there are problems, 2 when the folder cannot be checked at all."""
    parser = argparse.ArgumentParser(
        prog="verify_dataset.py",
        description="Check an OralXrays-9 dataset root: annotation files, the nine class names, "
                    "every image present and decodable, boxes well formed, totals against the "
                    "paper's 12,688 images / 84,113 boxes. Exit 1 when problems are found.")
    parser.add_argument("root", type=Path, metavar="DIR", help="dataset root")
    parser.add_argument("--no-images", action="store_true",
                        help="only check that image files exist (do not decode them)")
    parser.add_argument("--no-paper-counts", action="store_true",
                        help="do not compare the totals with the paper's (e.g. the synthetic set)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(argv):
        args = parser.parse_args(argv)
        report = verify_dataset(args.root, check_images=not args.no_images,
                                expected=None if args.no_paper_counts else PAPER_COUNTS,
                                progress=not args.quiet)
        print(report.summary())
        if args.json:
            _write_json_atomic(args.json, report.to_dict())
        return 0 if report.ok else 1

    return _run_cli(run, argv)
