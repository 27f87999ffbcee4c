"""Layout: find the COCO files and images of an extracted release and arrange them as
``<out>/annotations/instances_{split}2017.json`` and ``<out>/{split}2017/<file_name>``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ...errors import DownloadError
from ..dataset import annotation_file, image_dir
from .common import IMAGE_SUFFIXES, _place, _same_file, _walk_files


_SPLIT_WORDS = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
                "test": ("test", "testing")}


def _split_of(path: Path, root: Path) -> str | None:
    """``train`` / ``val`` / ``test`` from a file name (``instances_val2017.json``, ``val.json``,
    ``valid_annotations.json`` ...), else from its folders below ``root``; ``None`` when
    ambiguous or absent."""
    folders = path.relative_to(root).parent.parts[::-1]
    for text in [path.stem, *folders]:
        tokens = re.split(r"[^a-z]+", text.lower())
        hits = {split for split, keys in _SPLIT_WORDS.items() for t in tokens if t in keys}
        if len(hits) == 1:
            return hits.pop()
        if len(hits) > 1:
            return None
    return None


def _coco_jsons(folder: Path) -> dict[str, tuple[Path, list]]:
    """Split -> (COCO annotation file found anywhere under ``folder``, its ``images``)."""
    found: dict[str, list[tuple[Path, list]]] = {}
    undecided: list[Path] = []
    for p in _walk_files(folder):
        if p.suffix.lower() != ".json" or p.name.endswith(".orig.json"):
            continue
        try:
            with open(p, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if not (isinstance(data, dict) and all(isinstance(data.get(k), list)
                                               for k in ("images", "annotations", "categories"))):
            continue
        split = _split_of(p, folder)
        if split is None:
            undecided.append(p)
        else:
            found.setdefault(split, []).append((p, data["images"]))
    for split, entries in found.items():
        if len(entries) > 1:
            raise DownloadError(
                f"Several annotation files look like the {split} split: "
                + ", ".join(str(p) for p, _ in entries)
                + ". Keep one (delete or rename the others) and run again."
            )
    if undecided:
        raise DownloadError(
            "Cannot tell which split these annotation files belong to: "
            + ", ".join(str(p) for p in undecided)
            + ". Rename each to instances_{train,val,test}2017.json and run again."
        )
    return {s: entries[0] for s, entries in found.items()}


def normalise_layout(
    extracted_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    keep_source: bool = False,
    progress: bool = True,
) -> Path:
    """Arrange whatever an archive unpacked into the layout the project reads.

    Annotation files are found anywhere under ``extracted_dir`` (any ``*.json`` holding COCO
    ``images``/``annotations``/``categories``; the split comes from its name or folder, e.g.
    ``instances_val2017.json``, ``val.json``, ``annotations/train/…``). Each image a file lists is
    looked up by its ``file_name`` (preferring a match on the whole relative path, then a folder
    named after the split). Results::

        out/annotations/instances_{split}2017.json
        out/{split}2017/<file_name>

    Files are hard-linked when possible, else moved (copied when ``keep_source``, for a folder
    the user owns), so nothing is stored twice. Running it again is cheap: files already in
    place are skipped. An annotation file that :func:`split_dataset` rewrote is left alone.

    Returns:
        ``out``.
    """
    src_root, out = Path(extracted_dir), Path(out)
    if not src_root.is_dir():
        raise DownloadError(f"{src_root}: folder not found; extract the archives first.")
    jsons = _coco_jsons(src_root)
    if not jsons:
        raise DownloadError(
            f"No COCO annotation file (a .json with 'images', 'annotations' and 'categories') "
            f"under {src_root}. The archives may be incomplete: check that every zip of the "
            "Drive folder was downloaded and extracted, then run again."
        )
    index: dict[str, list[Path]] = {}
    for p in _walk_files(src_root):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(p.name, []).append(p)

    for split, (src_json, images) in sorted(jsons.items()):
        dst_json = annotation_file(out, split)
        backup = dst_json.with_name(dst_json.stem + ".orig.json")
        if not _same_file(src_json, dst_json) and not backup.exists():
            _place(src_json, dst_json, keep_source=True)  # small; the original stays for reruns
        img_dir = image_dir(out, split)
        missing = []
        for img in tqdm(images, desc=f"arrange {split}", unit="img", disable=not progress):
            if not isinstance(img, dict):
                continue
            rel = PurePosixPath(str(img.get("file_name", "")).replace("\\", "/"))
            if not rel.name or rel.is_absolute() or ".." in rel.parts:
                missing.append(str(rel))
                continue
            dst = img_dir.joinpath(*rel.parts)
            src = _best_match(index.get(rel.name, []), rel, split, src_root)
            if src is None:
                if not dst.is_file():
                    missing.append(str(rel))
                continue
            if dst.is_file() and (_same_file(src, dst) or dst.stat().st_size == src.stat().st_size):
                continue
            _place(src, dst, keep_source=keep_source)
        if missing and progress:
            tqdm.write(f"{split}: {len(missing)} image(s) listed in {src_json.name} were not "
                       f"found under {src_root} (e.g. {missing[0]}); verify_dataset lists them.")
    return out


def _best_match(candidates: list[Path], rel: PurePosixPath, split: str, root: Path) -> Path | None:
    """The file for ``rel`` among same-named candidates: one whose path ends with the whole
    ``rel`` first; among those, one under a folder named after the split (``val2017/``), then one
    under no split's folder, last one under another split's folder."""
    if not candidates:
        return None
    whole = [c for c in candidates if c.as_posix().endswith("/" + rel.as_posix())]

    def rank(c: Path) -> int:
        words = {t for part in c.relative_to(root).parent.parts
                 for t in re.split(r"[^a-z]+", part.lower())}
        if words & set(_SPLIT_WORDS[split]):
            return 0
        return 2 if any(words & set(w) for w in _SPLIT_WORDS.values()) else 1

    return min(whole or candidates, key=rank)  # min keeps the first of equal ranks
