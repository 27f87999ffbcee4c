"""Constants and small file helpers shared by the steps of getting the real OralXrays-9 onto disk
(see :mod:`oralx_lib.data.real`).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...errors import ConfigError, DatasetError, DownloadError
from ...files import atomic_write


#: The Google Drive folder of the release (from the dataset's README).
DRIVE_FOLDER_URL = (
    "https://drive.google.com/drive/folders/1_y7ERcFicnOYY2DMR6Qe1W4KGdCsoQ1n?usp=drive_link"
)
#: The password of the release's zip files (from the dataset's README).
ARCHIVE_PASSWORD = "CVPR2024-OralXrays-9"
#: Totals stated by the paper: 12,688 images and 84,113 annotated boxes (all splits together).
PAPER_COUNTS: Mapping[str, int] = MappingProxyType({"images": 12688, "boxes": 84113})

STATE_FILE = ".oralx_prepare.json"
PART_SUFFIX = ".oralx-part"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
_STAGING = ".oralx-staging"
_SKIP_DIRS = frozenset({"__MACOSX", _STAGING})
_CHUNK = 1 << 20


def _manual_hint(url: str = DRIVE_FOLDER_URL) -> str:
    return (
        f"Or get the files another way: open {url} in a browser, download the zips by hand (or "
        "'Add shortcut to Drive' / copy them into your own Google Drive and mount it in Colab), "
        "then run with --from-archive <the folder or zip> (Python: from_archive=...)."
    )


def _import_optional(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DownloadError(
            f"{purpose} needs the '{module}' package, which is not installed. Install it with "
            f"`pip install \"oralx-lib[download]\"` (or `pip install {module}`)."
        ) from exc


def _write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_write(path, "w", suffix=PART_SUFFIX) as fh:
        json.dump(obj, fh)


def _place(src: Path, dst: Path, *, keep_source: bool) -> None:
    """Make ``dst`` hold ``src``'s bytes without a second copy on disk.

    A hard link when the file system allows it (``src`` stays); otherwise a move, or a copy when
    ``keep_source`` (the source belongs to the user, e.g. a mounted Google Drive folder).
    The file appears at ``dst`` only when complete (temporary name, then a rename).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + PART_SUFFIX)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        if keep_source:
            shutil.copy2(src, tmp)
        else:
            shutil.move(str(src), str(tmp))
    os.replace(tmp, dst)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _walk_files(root: Path) -> Iterable[Path]:
    """Every regular file under ``root``, skipping hidden folders, ``__MACOSX`` and our
    temporary files, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(PART_SUFFIX) or name.startswith("._"):
                continue
            yield Path(dirpath) / name


def _run_cli(fn, argv) -> int:
    try:
        return fn(argv)
    except (DownloadError, DatasetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume.", file=sys.stderr)
        return 130
