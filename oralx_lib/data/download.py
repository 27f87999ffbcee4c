"""Getting the real OralXrays-9 onto disk: download, extract, arrange, verify, split.

The release is a Google Drive folder of password-protected zip files. The whole path is::

    Drive folder --download_folder--> <out>/_download/*.zip
                 --extract_archive--> <out>/_extracted/<archive>/...
                 --normalise_layout-> <out>/annotations/instances_{split}2017.json
                                      <out>/{split}2017/<file_name>
                 --verify_dataset---> VerifyReport (counts, problems)

:func:`prepare_oralxrays9` runs it and records each finished step in ``<out>/.oralx_prepare.json``,
so an interrupted run picks up where it stopped. When Drive refuses (quota, permissions, no
network), copy the folder to your own Google Drive (or download it by hand) and pass the folder or
a zip as ``from_archive``.

Only ``train`` and ``val`` may ship; :func:`split_dataset` carves a deterministic test split out
of ``val``. Everything here runs on a CPU; ``gdown`` and ``pyzipper`` are imported only when
needed (``pip install "oralx-lib[download]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import json
import math
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from tqdm.auto import tqdm

from .. import CLASSES
from ..errors import ConfigError, DownloadError
from ..files import atomic_write
from .dataset import SPLITS, DatasetError, annotation_file, image_dir, load_coco_json

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


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------------
def _drive_error(exc: BaseException, url: str, what: str) -> DownloadError:
    """Turn whatever gdown / requests raised into a :class:`DownloadError` with a next step."""
    text = str(exc)
    low = text.lower()
    if "too many users" in low or "quota" in low:
        msg = (
            f"Google Drive refused {what}: its download quota is used up ('Too many users have "
            "viewed or downloaded this file recently'). Retry in a few hours (the quota resets "
            "within about 24 h; finished files are kept and skipped). " + _manual_hint(url)
        )
    elif "permission" in low or "many accesses" in low or re.search(
            r"\b(403|404)\b|forbidden|not found", low):
        msg = (
            f"Google Drive would not hand out {what}: the link is not public any more, the URL is "
            "wrong, or the file has had too many downloads recently. Check the URL "
            f"({url}; pass another with --url), retry later, or: " + _manual_hint(url)
        )
    elif isinstance(exc, OSError) or any(
        k in low for k in ("connection", "name resolution", "timed out", "network is unreachable")
    ):
        msg = (
            f"Could not reach Google Drive for {what} (offline, or the network blocks it): "
            f"{type(exc).__name__}: {text}. Check the connection and run again; finished files "
            "are kept and skipped. " + _manual_hint(url)
        )
    else:
        msg = (
            f"Downloading {what} from Google Drive failed: {type(exc).__name__}: {text}. Run "
            "again (finished files are skipped). " + _manual_hint(url)
        )
    return DownloadError(msg)


def download_folder(url: str, dest: str | os.PathLike, *, quiet: bool = False) -> list[Path]:
    """Fetch every file of a public Google Drive folder into ``dest`` with ``gdown``.

    First the folder is listed, then each file is fetched with ``resume=True``: a file that is
    already complete is skipped, a partial one continues where it stopped. Drive's quota and
    permission refusals and network failures become :class:`DownloadError` with a next step.

    Args:
        url: the folder's share link (``https://drive.google.com/drive/folders/<id>``).
        dest: the local folder; the Drive folder's tree is reproduced inside it.
        quiet: no progress output.

    Returns:
        The local paths of the folder's files, in the folder's order.
    """
    gdown = _import_optional("gdown", "Downloading from Google Drive")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    params = _signature_params(gdown.download_folder)
    if "skip_download" not in params:  # older gdown: one call does both listing and fetching
        kwargs = {"resume": True} if "resume" in params else {}
        try:
            files = gdown.download_folder(url=url, output=str(dest), quiet=quiet, **kwargs)
        except Exception as exc:  # noqa: BLE001 - gdown raises many kinds; all are mapped
            raise _drive_error(exc, url, "the folder") from exc
        if not files:
            raise DownloadError(f"Google Drive returned nothing for {url}. " + _manual_hint(url))
        return [Path(f) for f in files]

    try:
        listing = gdown.download_folder(url=url, output=str(dest), quiet=quiet, skip_download=True)
    except Exception as exc:  # noqa: BLE001
        raise _drive_error(exc, url, "the folder's file list") from exc
    if not listing:
        raise DownloadError(f"The Google Drive folder {url} looks empty. " + _manual_hint(url))
    paths: list[Path] = []
    for item in tqdm(listing, desc="files", unit="file", disable=quiet):
        local = Path(item.local_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = gdown.download(id=item.id, output=str(local), quiet=quiet, resume=True)
        except Exception as exc:  # noqa: BLE001
            raise _drive_error(exc, url, f"'{item.path}'") from exc
        if not got:
            raise DownloadError(f"Google Drive returned nothing for '{item.path}'. "
                                + _manual_hint(url))
        paths.append(Path(got))
    return paths


def _signature_params(fn) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


# ------------------------------------------------------------------------------------------------
# archives: parts, safety, extraction
# ------------------------------------------------------------------------------------------------
class _JoinedParts(io.RawIOBase):
    """A read-only, seekable view of several files laid end to end (a split archive)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self.starts = [0]
        for s in sizes:
            self.starts.append(self.starts[-1] + s)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self.starts[-1]:
            return 0
        i = max(k for k in range(len(self._files)) if self.starts[k] <= self._pos)
        f = self._files[i]
        f.seek(self._pos - self.starts[i])
        view = memoryview(buffer)[: min(len(buffer), self.starts[i + 1] - self._pos)]
        n = f.readinto(view)
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _archive_parts(archive: Path) -> tuple[list[Path], bool]:
    """The files that make up ``archive`` and whether it is a spanned (``.z01``) archive.

    ``x.zip.001, x.zip.002, ...`` (a zip cut into pieces) are read end to end; ``x.z01, x.z02,
    ..., x.zip`` (a spanned archive from zip/WinZip/7-Zip) likewise, with offsets corrected.
    """
    name = archive.name
    m = re.fullmatch(r"(.+)\.(\d{3})", name)
    if m:
        parts = []
        k = 1
        while (p := archive.with_name(f"{m.group(1)}.{k:03d}")).is_file():
            parts.append(p)
            k += 1
        if not parts:
            raise DownloadError(f"{archive.with_name(m.group(1) + '.001')}: first part not found.")
        return parts, False
    m = re.fullmatch(r"(.+)\.[zZ]\d{2}", name)
    if m:
        archive = archive.with_name(m.group(1) + ".zip")
    spans = []
    k = 1
    while (p := archive.with_name(f"{archive.stem}.z{k:02d}")).is_file():
        spans.append(p)
        k += 1
    return spans + [archive], bool(spans)


@contextlib.contextmanager
def _open_zip(parts: list[Path], spanned: bool):
    """A ``pyzipper.AESZipFile`` over the archive's parts (read end to end when several)."""
    pyzipper = _import_optional("pyzipper", "Opening the encrypted zip files")
    for p in parts:
        if not p.is_file():
            raise DownloadError(f"{p}: archive part not found; download it again.")
    with contextlib.ExitStack() as stack:
        fp = parts[0]
        if len(parts) > 1:
            fp = stack.enter_context(io.BufferedReader(_JoinedParts(parts), _CHUNK))
        zf = stack.enter_context(_open_pyzipper(pyzipper, fp, parts))
        if spanned:
            _fix_spanned_offsets(zf, parts)
        yield zf


def _open_pyzipper(pyzipper, fp, parts: list[Path]):
    try:
        return pyzipper.AESZipFile(fp)
    except (pyzipper.BadZipFile, OSError, EOFError) as exc:
        if "span multiple disks" in str(exc):
            hint = (f" Join the parts first: `zip -s 0 {parts[-1].name} --out joined.zip` "
                    "(Info-ZIP) or open it with 7-Zip, then extract joined.zip.")
        else:
            hint = (" The download may be incomplete or damaged: delete it and download it "
                    "again (or check that every part of a split archive is there).")
        raise DownloadError(f"{parts[-1]}: not a readable zip archive ({exc}).{hint}") from exc


def _fix_spanned_offsets(zf, parts: list[Path]) -> None:
    """In a spanned archive each member's offset counts from the start of *its* part (disk);
    read end to end, member ``m`` starts at ``start(part m.volume) + offset``."""
    with open(parts[-1], "rb") as fh:
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - (1 << 16) - 22))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise DownloadError(f"{parts[-1]}: end of central directory not found; download it again.")
    offset_cd = struct.unpack("<4s4H2LH", tail[at: at + 22])[6]
    shift = zf.start_dir - offset_cd  # what the zip reader added to every offset
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + p.stat().st_size)
    for info in zf.infolist():
        if info.volume >= len(parts):
            raise DownloadError(
                f"{parts[-1]}: member {info.filename!r} lives in part {info.volume + 1}, but only "
                f"{len(parts)} parts were found next to it. Download the missing parts."
            )
        info.header_offset = info.header_offset - shift + starts[info.volume]


def _member_target(info, dest: Path, archive: Path) -> Path:
    """Where member ``info`` goes under ``dest``; refuses anything that could land outside."""
    raw = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DownloadError(
            f"{archive}: member {raw!r} is a symbolic link; refusing to extract it (a link can "
            f"point outside {dest}). This is not the archive the project expects: download it "
            "again from the official folder."
        )
    name = raw.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DownloadError(
            f"{archive}: member {raw!r} would be written outside {dest} (absolute path, drive "
            "letter or '..'); refusing to extract the archive. Download it again from the "
            "official folder."
        )
    clean = [p for p in parts if p not in ("", ".")]
    return dest.joinpath(*clean) if clean else dest


def _is_zipcrypto(info) -> bool:
    return bool(info.flag_bits & 0x1) and info.compress_type != 99  # 99 marks WinZip AES


def _wrong_password(archive: Path, member: str, password: bytes | None) -> DownloadError:
    given = ("no password" if password is None
             else f"the password {password.decode(errors='replace')!r}")
    return DownloadError(
        f"{archive}: cannot decrypt member {member!r} with {given}. The OralXrays-9 zips open "
        f"with the password from the dataset's README, {ARCHIVE_PASSWORD!r} (the default). If "
        "the archive needs another one, pass it with --password '<password>' "
        "(Python: password='...')."
    )


@dataclass
class ExtractResult:
    """What :func:`extract_archive` did.

    Attributes:
        dest: the folder the members went to.
        extracted: members written in this run.
        skipped: members already there with the right size (an earlier, interrupted run).
        nested: archives found inside and extracted too (each into ``<its folder>/<its stem>/``).
    """

    dest: Path
    extracted: int = 0
    skipped: int = 0
    nested: list[Path] = field(default_factory=list)


def extract_archive(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    password: str | bytes | None = ARCHIVE_PASSWORD,
    progress: bool = True,
    nested: bool = True,
    engine: str = "auto",
) -> ExtractResult:
    """Extract a zip (plain, ZipCrypto or AES encrypted; split or spanned) into ``dest``.

    Safety first: every member is checked before anything is written; an absolute path, a drive
    letter, a ``..`` component or a symbolic-link entry raises :class:`DownloadError` naming the
    member. Resumable: a member already at its place with the right size is skipped; a member is
    written under a temporary name and renamed when complete, so a file at its final name is
    always whole. Zips found inside are extracted too (``nested``), each into a folder named
    after it.

    Args:
        archive: ``x.zip``; ``x.zip.001`` for a zip cut into ``.001, .002, ...`` pieces; ``x.zip``
            or ``x.z01`` for a spanned archive (``x.z01, x.z02, ..., x.zip``).
        dest: the output folder (created).
        password: the zip password (the release's by default); ``None`` for plain zips.
        progress: a tqdm bar over the bytes to write.
        nested: also extract ``*.zip`` members.
        engine: ``"python"`` (pyzipper for everything), ``"unzip"`` (the Info-ZIP ``unzip``
            program for ZipCrypto members, ~30x faster than pure-Python decryption) or
            ``"auto"`` (``unzip`` when installed and useful, else pyzipper). AES members always
            go through pyzipper (fast: its AES is compiled).

    Returns:
        An :class:`ExtractResult` with the counts of extracted and skipped members.
    """
    return _extract(Path(archive), Path(dest), password=password, progress=progress,
                    nested=nested, engine=engine, depth=0)


def _extract(archive: Path, dest: Path, *, password, progress, nested, engine,
             depth) -> ExtractResult:
    if engine not in ("auto", "python", "unzip"):
        raise ConfigError(f"engine={engine!r}: use 'auto', 'python' or 'unzip'.")
    if not archive.exists():
        raise DownloadError(f"{archive}: archive not found.")
    pwd = password.encode("utf-8") if isinstance(password, str) else password
    parts, spanned = _archive_parts(archive)
    result = ExtractResult(dest=dest)
    with _open_zip(parts, spanned) as zf:
        infos = zf.infolist()
        targets = [(info, _member_target(info, dest, archive)) for info in infos]  # all, first
        if pwd:
            zf.setpassword(pwd)
        dest.mkdir(parents=True, exist_ok=True)
        todo = []
        for info, target in targets:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif target.is_file() and target.stat().st_size == info.file_size:
                result.skipped += 1
            else:
                todo.append((info, target))
        encrypted = [info for info, _ in todo if info.flag_bits & 0x1]
        if encrypted and not pwd:
            raise _wrong_password(archive, encrypted[0].filename, None)

        bar = tqdm(total=sum(i.file_size for i, _ in todo), unit="B", unit_scale=True,
                   desc=f"extract {archive.name}", disable=not progress or not todo)
        with bar:
            use_unzip = engine in ("auto", "unzip") and len(parts) == 1
            if engine == "unzip" and not shutil.which("unzip"):
                raise DownloadError("engine='unzip' needs the `unzip` program (apt-get install "
                                    "unzip), or use engine='python'.")
            if use_unzip and shutil.which("unzip") and any(_is_zipcrypto(i) for i, _ in todo):
                todo = _unzip_members(archive, todo, dest, pwd, bar, result)
            for info, target in todo:
                _extract_member(zf, info, target, archive, pwd, bar)
                result.extracted += 1

    if nested and depth < 3:
        for info, target in targets:
            if not info.is_dir() and target.suffix.lower() == ".zip":
                sub = _extract(target, target.with_suffix(""), password=password,
                               progress=progress, nested=True, engine=engine, depth=depth + 1)
                result.nested.append(target)
                result.nested.extend(sub.nested)
    return result


def _extract_member(zf, info, target: Path, archive: Path, pwd: bytes | None, bar) -> None:
    pyzipper = sys.modules["pyzipper"]
    try:
        with zf.open(info) as src, atomic_write(target, "wb", suffix=PART_SUFFIX,
                                                fsync=False) as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    except RuntimeError as exc:
        if "password" in str(exc).lower():
            raise _wrong_password(archive, info.filename, pwd) from exc
        raise DownloadError(f"{archive}: cannot extract member {info.filename!r}: {exc}.") from exc
    except (pyzipper.BadZipFile, zlib.error, EOFError) as exc:
        if info.flag_bits & 0x1:
            raise DownloadError(
                f"{archive}: member {info.filename!r} does not decrypt to valid data ({exc}): "
                f"the password is wrong or the archive is damaged. The README's password is "
                f"{ARCHIVE_PASSWORD!r}; pass another with --password '<password>'. If the "
                "password is right, delete the archive and download it again."
            ) from exc
        raise DownloadError(
            f"{archive}: member {info.filename!r} is damaged ({exc}). Delete the archive and "
            "download it again."
        ) from exc


def _unzip_members(archive: Path, todo, dest: Path, pwd: bytes | None, bar, result) -> list:
    """Extract the ZipCrypto members of ``todo`` with the ``unzip`` program (compiled, fast)
    into a staging folder, moving each complete file to its place; return what is left."""
    exe = shutil.which("unzip")
    staging = dest / _STAGING
    easy = [(i, t) for i, t in todo
            if _is_zipcrypto(i) and not re.search(r"[\[\]*?\\]", i.filename)
            and not i.filename.startswith("-")]
    left = [(i, t) for i, t in todo if not any(i is e for e, _ in easy)]
    for start in range(0, len(easy), 200):
        batch = easy[start: start + 200]
        cmd = [exe, "-o", "-q"]
        if pwd:
            cmd += ["-P", pwd.decode("utf-8", errors="replace")]
        cmd += [str(archive), *(i.filename for i, _ in batch), "-d", str(staging)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if proc.returncode == 82 or "incorrect password" in (proc.stderr + proc.stdout):
            shutil.rmtree(staging, ignore_errors=True)
            raise _wrong_password(archive, batch[0][0].filename, pwd)
        for info, target in batch:
            staged = staging / _member_target(info, dest, archive).relative_to(dest)
            if staged.is_file() and staged.stat().st_size == info.file_size:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                bar.update(info.file_size)
                result.extracted += 1
            else:  # let pyzipper do it, and say precisely what is wrong if it fails too
                left.append((info, target))
    shutil.rmtree(staging, ignore_errors=True)
    return left


def _find_archives(folder: Path) -> list[Path]:
    """The archives under ``folder``: ``*.zip`` and ``*.001`` first parts; other parts of split
    or spanned archives are reached through their first part."""
    found = []
    for p in _walk_files(folder):
        low = p.name.lower()
        if low.endswith(".zip") or re.fullmatch(r".+\.zip\.001", low):
            found.append(p)
    return found


# ------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------------
def _class_key(name: str) -> str:
    """The loader's name rule: case, spaces, ``_`` and ``-`` do not matter."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


_CLASS_BY_KEY = {_class_key(n): n for n in CLASSES}


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
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
            im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
        return size, None
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
        name = _CLASS_BY_KEY.get(_class_key(cat["name"]))
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
    if missing:
        p.append(f"{split}: {len(missing)} image(s) listed in {ann.name} are missing from "
                 f"{img_dir}: {_examples(missing)}. Extract the archives again (or rerun the "
                 "download), then verify again.")

    bad_ref, bad_cat, bad_box, degenerate, outside = [], [], [], [], []
    for a in data["annotations"]:
        if not isinstance(a, dict):
            bad_box.append(repr(a)[:60])
            continue
        aid = a.get("id", "?")
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


# ------------------------------------------------------------------------------------------------
# test split
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# the whole path
# ------------------------------------------------------------------------------------------------
def _load_state(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def prepare_oralxrays9(
    out: str | os.PathLike,
    *,
    from_archive: str | os.PathLike | None = None,
    url: str = DRIVE_FOLDER_URL,
    password: str | bytes | None = ARCHIVE_PASSWORD,
    progress: bool = True,
    verify: bool = True,
) -> Path:
    """Download (unless ``from_archive``), extract, arrange and verify OralXrays-9 at ``out``.

    Each finished step (``download``, ``extract``, ``normalise``, ``verify``) is recorded in
    ``out/.oralx_prepare.json``; a second call skips them, and a step cut short resumes inside
    itself (complete downloads and extracted members are kept). Downloads go to
    ``out/_download``, archives are unpacked into ``out/_extracted/<archive>/`` and the dataset
    is hard-linked (else moved) into ``out/annotations`` and ``out/{split}2017``; the two
    underscore folders can be deleted once the dataset verifies.

    Args:
        out: the dataset root to create.
        from_archive: skip the download: a zip, or a folder holding the zips (e.g. a mounted
            Google Drive copy ``/content/drive/MyDrive/OralXrays-9``), or a folder already
            extracted (it is left untouched: files are linked or copied from it).
        url: the Drive folder (the release's by default).
        password: the zip password (the release's by default).
        progress: progress bars and a summary.
        verify: run :func:`verify_dataset` at the end and raise when it finds problems.

    Returns:
        ``out``, ready for :class:`oralx_lib.data.OralXrays9`.
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    source = str(Path(from_archive).expanduser().resolve()) if from_archive else url
    state = _load_state(state_path)
    if state.get("source") != source:
        state = {"source": source, "done": []}
    done: list[str] = state["done"]

    def finish(step: str) -> None:
        if step not in done:
            done.append(step)
        _write_json_atomic(state_path, state)

    def say(msg: str) -> None:
        if progress:
            tqdm.write(msg)

    extracted, keep_source = out / "_extracted", False
    if from_archive:
        src = Path(from_archive).expanduser()
        if not src.exists():
            raise DownloadError(f"--from-archive {src}: no such file or folder.")
        archives = [src] if src.is_file() else [
            a for a in _find_archives(src) if out.resolve() not in a.resolve().parents]
        if not archives:
            if src.is_dir() and _coco_jsons(src):
                extracted, keep_source = src, True  # an already extracted copy
            else:
                raise DownloadError(
                    f"--from-archive {src}: no .zip file (and no COCO annotation file) in it. "
                    "Point it at the folder that holds the downloaded zips, or at one zip.")
    elif "download" in done:
        archives = _find_archives(out / "_download")
    else:
        say(f"downloading {url} into {out / '_download'}")
        download_folder(url, out / "_download", quiet=not progress)
        archives = _find_archives(out / "_download")
        if not archives:
            raise DownloadError(f"No .zip in the downloaded folder {out / '_download'}. "
                                + _manual_hint(url))
        finish("download")

    if "extract" not in done and not keep_source:
        names: Counter = Counter()
        for archive in archives:
            stem = re.sub(r"(\.zip)?(\.\d{3})?$", "", archive.name, flags=re.IGNORECASE)
            names[stem] += 1
            sub = stem if names[stem] == 1 else f"{stem}_{names[stem]}"
            r = extract_archive(archive, extracted / sub, password=password, progress=progress)
            say(f"{archive.name}: {r.extracted} file(s) extracted, {r.skipped} already there")
        finish("extract")

    if "normalise" not in done:
        normalise_layout(extracted, out, keep_source=keep_source, progress=progress)
        finish("normalise")

    if verify and "verify" not in done:
        report = verify_dataset(out, progress=progress)
        say(report.summary())
        if not report.ok:
            raise DatasetError(
                f"The dataset at {out} has problems:\n{report.summary()}\nFix them (usually: "
                "download the archive that holds the missing files again, or pass "
                "--from-archive with a complete copy) and run again; finished steps are skipped.")
        finish("verify")
    if progress and not annotation_file(out, "test").exists():
        say(f"no test split: make one with `python data_scripts/split_dataset.py {out}`")
    return out


# ------------------------------------------------------------------------------------------------
# command lines
# ------------------------------------------------------------------------------------------------
def _run_cli(fn, argv) -> int:
    try:
        return fn(argv)
    except (DownloadError, DatasetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume.", file=sys.stderr)
        return 130


def download_main(argv: Sequence[str] | None = None) -> int:
    """``download_oralxrays9.py``: the whole path (:func:`prepare_oralxrays9`). Exit 0 on
    success, 2 with a message on a download / archive / dataset error."""
    parser = argparse.ArgumentParser(
        prog="download_oralxrays9.py",
        description="Download the OralXrays-9 dataset from Google Drive (or take the zips you\n"
                    "already have), extract the password-protected zips and arrange them in the\n"
                    "layout the project reads (annotations/instances_{split}2017.json,\n"
                    "{split}2017/). Interrupted? Run the same command again: finished steps\n"
                    "and files are skipped.",
        epilog="examples:\n  python data_scripts/download_oralxrays9.py --out data/oralxrays9\n"
               "  python data_scripts/download_oralxrays9.py --out data/oralxrays9 "
               "--from-archive /content/drive/MyDrive/OralXrays-9\n"
               "then: export ORALX_DATA=data/oralxrays9",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="dataset root to create")
    parser.add_argument("--from-archive", type=Path, metavar="PATH",
                        help="a zip, or a folder of zips (e.g. your Google Drive copy of the "
                             "release), instead of downloading")
    parser.add_argument("--password", default=ARCHIVE_PASSWORD,
                        help="zip password (default: the one in the dataset's README)")
    parser.add_argument("--url", default=DRIVE_FOLDER_URL, help="Google Drive folder to fetch")
    parser.add_argument("--no-verify", action="store_true", help="skip the final check")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(argv):
        args = parser.parse_args(argv)
        root = prepare_oralxrays9(args.out, from_archive=args.from_archive, url=args.url,
                                  password=args.password, progress=not args.quiet,
                                  verify=not args.no_verify)
        print(f"dataset ready at {root}  (export ORALX_DATA={root})")
        return 0

    return _run_cli(run, argv)


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


__all__ = [
    "ARCHIVE_PASSWORD",
    "DRIVE_FOLDER_URL",
    "PAPER_COUNTS",
    "DownloadError",
    "ExtractResult",
    "SplitStats",
    "VerifyReport",
    "download_folder",
    "download_main",
    "extract_archive",
    "normalise_layout",
    "prepare_oralxrays9",
    "split_dataset",
    "split_main",
    "verify_dataset",
    "verify_main",
]
