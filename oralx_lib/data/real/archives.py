"""Archives: multi-part zips, safe member paths, password-protected extraction (``pyzipper``,
or the ``unzip`` program when it is faster), nested zips.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import ConfigError, DownloadError
from ...files import atomic_write
from .common import ARCHIVE_PASSWORD, PART_SUFFIX, _CHUNK, _STAGING, _import_optional, _walk_files


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
        by_program: of ``extracted``, the members the ``unzip`` program wrote (the rest went
            through pyzipper).
    """

    dest: Path
    extracted: int = 0
    by_program: int = 0
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
    on_member: Callable[[Path], None] | None = None,
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
        on_member: called with each member's path once it is complete at its final name (e.g.
            to report progress elsewhere, or to stop: an exception it raises ends the run
            there, leaving only complete files).

    Returns:
        An :class:`ExtractResult` with the counts of extracted and skipped members.
    """
    return _extract(Path(archive), Path(dest), password=password, progress=progress,
                    nested=nested, engine=engine, depth=0, on_member=on_member)


def _extract(archive: Path, dest: Path, *, password, progress, nested, engine,
             depth, on_member=None) -> ExtractResult:
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
                todo = _unzip_members(archive, todo, dest, pwd, bar, result, on_member)
            for info, target in todo:
                _extract_member(zf, info, target, archive, pwd, bar)
                result.extracted += 1
                if on_member is not None:
                    on_member(target)

    if nested and depth < 3:
        for info, target in targets:
            if not info.is_dir() and target.suffix.lower() == ".zip":
                sub = _extract(target, target.with_suffix(""), password=password,
                               progress=progress, nested=True, engine=engine, depth=depth + 1,
                               on_member=on_member)
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


def _unzip_members(archive: Path, todo, dest: Path, pwd: bytes | None, bar, result,
                   on_member=None) -> list:
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
                result.by_program += 1
                if on_member is not None:
                    on_member(target)
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
