"""The OralXrays-9 dataset in its released COCO layout.

A dataset root holds::

    annotations/instances_{train,val,test}2017.json   COCO, boxes [x, y, w, h]
    train2017/  val2017/  test2017/                    the images

Item ``i`` is ``(image, target)`` in torchvision's detection contract:

- ``image``: float tensor ``(3, H, W)`` in ``[0, 1]`` (grayscale X-rays replicated to 3 channels);
- ``target``: ``boxes`` ``(N, 4)`` xyxy float32 pixels, ``labels`` ``(N,)`` int64 in ``1..9``
  (``CLASSES[label - 1]``; 0 is background), ``image_id`` (int, the file's id),
  ``ignore_boxes`` ``(M, 4)`` xyxy (``iscrowd`` regions, kept apart from ``boxes``: neither
  positive nor negative for a detector), ``orig_size`` ``(2,)`` int64 as ``(H, W)``.

Categories are mapped **by name** (case, spaces, ``_`` and ``-`` do not matter), never by their
id or position in the JSON, so a file that lists them in another order still gets the released
label order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import CLASSES
from ..errors import DatasetError
from ..paths import shown

SPLITS = ("train", "val", "test")




class DatasetWarning(UserWarning):
    """Something in the dataset was repaired or is unusual (dropped or clipped boxes, ...)."""


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


_NAME_TO_LABEL = {_norm_name(n): i + 1 for i, n in enumerate(CLASSES)}


def class_label(name: str) -> int | None:
    """The label ``1..9`` of a category name, or ``None`` if it is not one of the nine.

    The one name rule of the project (the loader's and the verifier's): case, spaces, ``_``
    and ``-`` do not matter (``"wisdom_tooth"`` is ``"Wisdom Tooth"``).
    """
    return _NAME_TO_LABEL.get(_norm_name(name))


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    """``root/annotations/instances_{split}2017.json``."""
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def dataset_fingerprint(root: str | os.PathLike, splits: Sequence[str | None] = SPLITS) -> str:
    """A SHA-256 over the annotation files of ``splits`` (``"missing"`` for an absent one): the
    project's one rule for "the same data" (a cached training run or an executed chapter is
    reused only on the very same annotations; regenerating the synthetic set changes it)."""
    digest = hashlib.sha256()
    for split in splits:
        if split:
            path = annotation_file(root, split)
            digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()


def image_dir(root: str | os.PathLike, split: str) -> Path:
    """``root/{split}2017``."""
    return Path(root) / f"{split}2017"


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO annotation file, with errors that name the file and the field."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            "The file is damaged or truncated: extract or download it again."
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file; is it really a COCO JSON?") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with 'images', "
                           "'annotations' and 'categories'.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f"{path}: field '{key}' is missing or not a list; a COCO detection file needs "
                "'images', 'annotations' and 'categories'."
            )
    return data


def category_label_map(categories: list[dict], path: Path | str = "<json>") -> dict[int, int]:
    """Map the file's category ids to our labels ``1..9`` by category **name**.

    Raises :class:`DatasetError` for a name that is not one of the nine; warns when one of the
    nine is absent.
    """
    mapping: dict[int, int] = {}
    for cat in categories:
        if "id" not in cat or "name" not in cat:
            raise DatasetError(f"{path}: a category lacks 'id' or 'name': {cat!r}.")
        label = class_label(cat["name"])
        if label is None:
            raise DatasetError(
                f"{path}: category name {cat['name']!r} (id {cat['id']}) is not one of the nine "
                f"OralXrays-9 classes {list(CLASSES)}. Rename it in the JSON, or remove its "
                "annotations."
            )
        mapping[int(cat["id"])] = label
    missing = sorted(set(range(1, len(CLASSES) + 1)) - set(mapping.values()))
    if missing:
        warnings.warn(
            f"{path}: no category for {[CLASSES[m - 1] for m in missing]}; those classes get no "
            "boxes from this file.",
            DatasetWarning,
            stacklevel=3,
        )
    return mapping


def normalisation_twin(folder: Path, name: str) -> str | None:
    """The name of a file in ``folder`` that equals ``name`` up to Unicode normalisation
    (NFC vs NFD) but not byte for byte, or ``None``."""
    parts = str(name).replace("\\", "/").split("/")
    current, found = Path(folder), []
    for part in parts:
        if (current / part).exists():
            current, found = current / part, found + [part]
            continue
        key = unicodedata.normalize("NFC", part)
        try:
            match = next((p.name for p in current.iterdir()
                          if unicodedata.normalize("NFC", p.name) == key), None)
        except OSError:
            return None
        if match is None:
            return None
        current, found = current / match, found + [match]
    result = "/".join(found)
    return result if result != str(name) and current.is_file() else None


class OralXrays9(Dataset):
    """OralXrays-9 (or the synthetic set) in the released COCO layout.

    Args:
        root: the dataset root (holds ``annotations/`` and ``{split}2017/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transforms: ``callable(image, target) -> (image, target)``, e.g. from
            :mod:`oralx_lib.data.transforms`. It receives ``tv_tensors.Image`` and a target whose
            ``boxes`` is a ``tv_tensors.BoundingBoxes`` holding the objects *and* the ignore
            regions, told apart by ``target["iscrowd"]``; the dataset splits them afterwards.
        strict: raise :class:`DatasetError` for every box that would otherwise be dropped or
            clipped (instead of one warning that counts them).

    Attributes:
        coco: a ``pycocotools.coco.COCO`` over the split's JSON (the file's own category ids), for
            evaluation.
        label_to_category_id: our label ``1..9`` -> the file's category id.
        image_ids: the file's image ids, in item order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable | None = None,
        strict: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.strict = strict
        if split not in SPLITS:
            raise DatasetError(f"split={split!r} is not one of {SPLITS}.")

        self.ann_file = annotation_file(root, split)
        if not self.ann_file.is_file():
            hint = ""
            if split == "test":
                hint = (
                    " The released archive may ship only train and val: carve a test split out "
                    f"of val with `python data_scripts/split_dataset.py {self.root}`."
                )
            elif not self.root.exists():
                hint = (
                    " The folder does not exist: generate the synthetic set with "
                    f"`python data_scripts/make_synthetic.py --out {self.root}` or get the real "
                    "data with `python data_scripts/download_oralxrays9.py --out DIR`."
                )
            raise DatasetError(f"{self.ann_file}: annotation file not found.{hint}")
        self.img_dir = image_dir(root, split)
        if not self.img_dir.is_dir():
            raise DatasetError(
                f"{self.img_dir}: image folder not found (needed by {self.ann_file}). "
                "Put the split's images there."
            )

        data = load_coco_json(self.ann_file)
        self.cat_to_label = category_label_map(data["categories"], self.ann_file)
        self.label_to_category_id = {lab: cid for cid, lab in self.cat_to_label.items()}
        self._records = self._build_records(data)
        self.image_ids = [r["id"] for r in self._records]

        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
        self.coco = coco

    # -- building -------------------------------------------------------------------------------
    def _build_records(self, data: dict) -> list[dict]:
        path = self.ann_file
        images: dict[int, dict] = {}
        present = {p.name for p in self.img_dir.iterdir()} if self.img_dir.is_dir() else set()
        missing: list[str] = []
        for img in data["images"]:
            if "id" not in img or "file_name" not in img:
                raise DatasetError(f"{path}: an image entry lacks 'id' or 'file_name': {img!r}.")
            iid = int(img["id"])
            if iid in images:
                raise DatasetError(f"{path}: image id {iid} appears twice in 'images'.")
            fname = str(img["file_name"])
            fpath = self.img_dir / fname
            if fname not in present and not fpath.is_file():
                missing.append(fname)
                continue
            width, height = img.get("width"), img.get("height")
            if not width or not height:
                from .images import ImageReadError, image_header

                try:
                    width, height, _ = image_header(fpath)
                except ImageReadError as exc:
                    raise DatasetError(
                        f"{exc} It is image id {iid} of {path}: replace the file or remove "
                        "its entry from the JSON."
                    ) from None
            images[iid] = {
                "id": iid,
                "file_name": fname,
                "width": int(width),
                "height": int(height),
                "boxes": [],
                "labels": [],
                "ignore": [],
            }
        twins = [(m, t) for m in missing if (t := normalisation_twin(self.img_dir, m))]
        if twins:
            shown = "; ".join(f"{m!r} is on disk as {t!r}" for m, t in twins[:3])
            more = f" and {len(twins) - 3} more" if len(twins) > 3 else ""
            raise DatasetError(
                f"{path}: {len(twins)} file name(s) differ from the files in {self.img_dir} "
                f"only in Unicode normalisation (the same letters, composed differently, e.g. "
                f"after copying from macOS): {shown}{more}. Rename the files to the JSON's "
                "names (NFC form, e.g. with `convmv -f utf8 -t utf8 --nfc -r --notest DIR`) or "
                "write the names as they are on disk into the JSON."
            )
        if missing:
            shown = ", ".join(str(self.img_dir / m) for m in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(
                f"{path}: {len(missing)} referenced image file(s) missing: {shown}{more}. "
                "Re-extract the archive, or check that the images sit in "
                f"{self.img_dir}/ (run `python data_scripts/verify_dataset.py {self.root}`)."
            )

        ids = [ann.get("id") if isinstance(ann, dict) else None for ann in data["annotations"]]
        for k, i in enumerate(ids):
            if not isinstance(i, (int, str)) or isinstance(i, bool):
                raise DatasetError(
                    f"{path}: annotation number {k + 1} in 'annotations' has no integer 'id' "
                    f"({str(data['annotations'][k])[:80]}); every annotation needs a unique id."
                )
        counts = Counter(ids)
        dups = sorted((i for i, n in counts.items() if n > 1), key=str)
        if dups:
            shown = ", ".join(f"{i} ({counts[i]} times)" for i in dups[:5])
            more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
            raise DatasetError(
                f"{path}: duplicate annotation ids: {shown}{more}. Annotation ids must be "
                "unique (COCO evaluation keys ground truth by id, so duplicates are silently "
                "merged and scores come out wrong): renumber the annotations, e.g. 1..N."
            )

        n_dropped = n_clipped = 0
        for ann in data["annotations"]:
            aid = ann.get("id", "?")
            if "image_id" not in ann or "bbox" not in ann or "category_id" not in ann:
                raise DatasetError(
                    f"{path}: annotation id {aid} lacks 'image_id', 'bbox' or 'category_id'."
                )
            rec = images.get(int(ann["image_id"]))
            if rec is None:
                raise DatasetError(
                    f"{path}: annotation id {aid} points at image id {ann['image_id']}, which "
                    "is not in 'images'. Remove the annotation or add the image."
                )
            label = self.cat_to_label.get(int(ann["category_id"]))
            if label is None:
                raise DatasetError(
                    f"{path}: annotation id {aid} has category_id {ann['category_id']}, which "
                    "is not in 'categories'."
                )
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (TypeError, ValueError):
                raise DatasetError(
                    f"{path}: annotation id {aid} has bbox {ann['bbox']!r}; expected [x, y, w, h]."
                ) from None
            area = float(ann.get("area", w * h))
            if not (w >= 1 and h >= 1 and area > 0) or not np.isfinite([x, y, w, h]).all():
                if self.strict:
                    raise DatasetError(
                        f"{path}: annotation id {aid} has a degenerate box {ann['bbox']} "
                        f"(area {area}); boxes need w >= 1, h >= 1 and area > 0."
                    )
                n_dropped += 1
                continue
            x1, y1, x2, y2 = x, y, x + w, y + h
            W, H = rec["width"], rec["height"]
            cx1, cy1 = min(max(x1, 0.0), W), min(max(y1, 0.0), H)
            cx2, cy2 = min(max(x2, 0.0), W), min(max(y2, 0.0), H)
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                if self.strict:
                    raise DatasetError(
                        f"{path}: annotation id {aid} box {ann['bbox']} reaches outside its "
                        f"{W}x{H} image {rec['file_name']}."
                    )
                if cx2 - cx1 < 1 or cy2 - cy1 < 1:
                    n_dropped += 1
                    continue
                n_clipped += 1
            if ann.get("iscrowd", 0):
                rec["ignore"].append((cx1, cy1, cx2, cy2))
            else:
                rec["boxes"].append((cx1, cy1, cx2, cy2))
                rec["labels"].append(label)
        if n_dropped or n_clipped:
            warnings.warn(
                f"{path}: dropped {n_dropped} degenerate box(es) (w < 1, h < 1 or area <= 0) and "
                f"clipped {n_clipped} box(es) to their image; pass strict=True to get an error "
                "naming each.",
                DatasetWarning,
                stacklevel=3,
            )

        records = sorted(images.values(), key=lambda r: r["id"])
        for r in records:
            r["boxes"] = np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4)
            r["labels"] = np.asarray(r["labels"], dtype=np.int64)
            r["ignore"] = np.asarray(r["ignore"], dtype=np.float32).reshape(-1, 4)
        return records

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def record(self, index: int) -> dict:
        """The annotations of item ``index`` without decoding its image (numpy arrays)."""
        return self._records[index]

    def check_images(self, indices=None, *, progress: bool = False,
                     workers: int | None = None) -> None:
        """Open the header of every image (of ``indices``, default all) without decoding it, so
        that a missing, empty, damaged or oversized file is named before a long run starts
        rather than when training reaches it. Fast: a few bytes per file, read by ``workers``
        threads (default up to 8; it helps on network drives such as a mounted Google Drive).

        Raises :class:`DatasetError` listing the files that cannot be opened; warns (one
        :class:`DatasetWarning`) about files whose size differs from the JSON's.
        """
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        from .images import ImageReadError, image_header

        def probe(i):
            try:
                return image_header(self.image_path(i)), None
            except ImageReadError as exc:
                return None, str(exc)

        chosen = list(range(len(self)) if indices is None else indices)
        broken, resized = [], []
        n_workers = workers or min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            results = list(tqdm(pool.map(probe, chosen), total=len(chosen),
                                desc=f"check {self.split} images", unit="img",
                                disable=not progress, leave=False))
        for i, (header, error) in zip(chosen, results):
            rec = self._records[i]
            if error is not None:
                broken.append(error)
                continue
            w, h, _ = header
            if (w, h) != (rec["width"], rec["height"]):
                resized.append(f"{rec['file_name']} (JSON {rec['width']}x{rec['height']}, "
                               f"file {w}x{h})")
        if broken:
            shown = "\n  ".join(broken[:5])
            more = f"\n  ... and {len(broken) - 5} more" if len(broken) > 5 else ""
            raise DatasetError(
                f"{len(broken)} image(s) of {self.ann_file} cannot be opened:\n  {shown}{more}\n"
                "Replace them (extract them again), or remove their entries from the JSON; "
                f"`python -m oralx_lib verify {self.root}` checks the whole dataset."
            )
        if resized:
            warnings.warn(
                f"{self.ann_file}: {len(resized)} image(s) differ in size from the JSON's "
                f"width/height; their boxes follow the JSON: {', '.join(resized[:3])}"
                + (" ..." if len(resized) > 3 else ""),
                DatasetWarning,
                stacklevel=2,
            )

    def image_path(self, index: int) -> Path:
        return self.img_dir / self._records[index]["file_name"]

    def load_image(self, index: int) -> torch.Tensor:
        """Decode item ``index``'s image as float ``(3, H, W)`` in ``[0, 1]``: the radiograph's
        gray levels replicated to 3 channels. 8-bit files are divided by 255 (colour files are
        converted to luminance first), 16-bit files by their bit depth's maximum (see
        :func:`oralx_lib.data.images.read_gray`), so the same picture stored at 8, 12 or 16 bits
        gives the same tensor."""
        from .images import ImageReadError, read_gray

        path = self.image_path(index)
        try:
            gray = read_gray(path)
        except ImageReadError as exc:
            raise DatasetError(
                f"{exc} Replace the file, or remove image id {self._records[index]['id']} from "
                f"{self.ann_file}."
            ) from None
        img = torch.from_numpy(gray).unsqueeze(0).repeat(3, 1, 1)
        rec = self._records[index]
        if tuple(img.shape[-2:]) != (rec["height"], rec["width"]):
            warnings.warn(
                f"{path}: decoded size {img.shape[-1]}x{img.shape[-2]} differs from the JSON's "
                f"{rec['width']}x{rec['height']}; boxes follow the JSON.",
                DatasetWarning,
                stacklevel=2,
            )
        return img

    def target(self, index: int) -> dict[str, torch.Tensor | int]:
        rec = self._records[index]
        return {
            "boxes": torch.from_numpy(rec["boxes"].copy()),
            "labels": torch.from_numpy(rec["labels"].copy()),
            "image_id": rec["id"],
            "ignore_boxes": torch.from_numpy(rec["ignore"].copy()),
            "orig_size": torch.tensor([rec["height"], rec["width"]], dtype=torch.int64),
        }

    def __getitem__(self, index: int):
        image = self.load_image(index)
        target = self.target(index)
        if self.transforms is not None:
            image, target = _apply_transforms(self.transforms, image, target)
        return image, target

    def __repr__(self) -> str:
        n_boxes = sum(len(r["labels"]) for r in self._records)
        return (f"OralXrays9(root='{shown(self.root)}', split='{self.split}', images={len(self)}, "
                f"boxes={n_boxes})")


def _apply_transforms(transforms: Callable, image: torch.Tensor, target: dict):
    """Run v2 transforms on objects and ignore regions together, then split them again."""
    from torchvision import tv_tensors

    h, w = image.shape[-2:]
    n, m = len(target["boxes"]), len(target["ignore_boxes"])
    boxes = torch.cat([target["boxes"], target["ignore_boxes"]])
    t = dict(target)
    t["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
    t["labels"] = torch.cat([target["labels"], torch.zeros(m, dtype=torch.int64)])
    t["iscrowd"] = torch.cat([torch.zeros(n, dtype=torch.int64), torch.ones(m, dtype=torch.int64)])
    del t["ignore_boxes"]
    image, t = transforms(tv_tensors.Image(image), t)
    crowd = t.pop("iscrowd").bool()
    all_boxes = t["boxes"].as_subclass(torch.Tensor)
    t["boxes"] = all_boxes[~crowd].float().reshape(-1, 4)
    t["ignore_boxes"] = all_boxes[crowd].float().reshape(-1, 4)
    t["labels"] = t["labels"][~crowd]
    return image.as_subclass(torch.Tensor), t


def collate_fn(batch):
    """Detection collate: ``[(img, tgt), ...] -> (list of images, list of targets)``."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
