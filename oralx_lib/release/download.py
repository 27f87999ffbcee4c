"""Getting the authors' MOQAM checkpoints onto disk.

The paper's README publishes a second Google Drive folder, "Download Model Checkpoints", next to
the dataset's (:data:`CHECKPOINTS_URL`). ``python -m oralx_lib download --checkpoints --out DIR``
fetches it with the same path as the dataset (:func:`oralx_lib.data.real.download_folder`:
the folder is listed, then each file is fetched with ``resume=True``, so an interrupted run
continues and finished files are skipped; Drive's quota and permission refusals and a missing
network become a :class:`~oralx_lib.errors.DownloadError` that says what to do).

``--from-archive PATH`` takes a copy you already have instead (a ``.pth`` file, a zip of them,
or a folder, e.g. your own Google Drive copy mounted in Colab). Zips are extracted (the
dataset's password is tried for encrypted ones). Every checkpoint found is linked (or copied)
into ``DIR`` and opened once with the safe loader
(:func:`~oralx_lib.release.loading.load_release_checkpoint`), which reads it without running
code from it and reports its size and training metadata.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..data.real import common as _common
from ..data.real import download as _drive
from ..data.real.archives import extract_archive
from ..errors import DownloadError

#: The Google Drive folder "Download Model Checkpoints" of the paper's README.
CHECKPOINTS_URL = (
    "https://drive.google.com/drive/folders/1Nm1673tPy_t8x69e5tvQTan0dQsGf-OM?usp=drive_link"
)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
STATE_FILE = ".oralx_checkpoints.json"

_BY_HAND = (
    " For the checkpoints: open {url} in a browser, download the .pth files (or copy the folder "
    "into your own Google Drive and mount it in Colab), then run `python -m oralx_lib download "
    "--checkpoints --out DIR --from-archive <that folder or file>`."
)


def _is_checkpoint(path: Path) -> bool:
    return path.suffix.lower() in CHECKPOINT_SUFFIXES


def _is_zip(path: Path) -> bool:
    low = path.name.lower()
    return low.endswith(".zip") or re.fullmatch(r".+\.zip\.001", low) is not None


def _collect(sources: list[Path], out: Path, *, password, progress: bool) -> list[Path]:
    """Checkpoint files among ``sources``, extracting zips into ``out/_extracted``."""
    found: list[Path] = []
    for src in sources:
        if _is_checkpoint(src):
            found.append(src)
        elif _is_zip(src):
            stem = re.sub(r"(\.zip)?(\.\d{3})?$", "", src.name, flags=re.IGNORECASE)
            dest = out / "_extracted" / stem
            extract_archive(src, dest, password=password, progress=progress)
            found += [p for p in _common._walk_files(dest) if _is_checkpoint(p)]
    return found


def prepare_checkpoints(
    out: str | os.PathLike,
    *,
    from_archive: str | os.PathLike | None = None,
    url: str = CHECKPOINTS_URL,
    password: str | bytes | None = None,
    progress: bool = True,
    inspect: bool = True,
) -> list[Path]:
    """Download (unless ``from_archive``) the released checkpoints into ``out``.

    Args:
        out: folder to hold the checkpoints (``out/_download`` keeps Drive's files, linked
            into ``out``; ``out/_extracted`` holds unpacked zips).
        from_archive: a ``.pth`` file, a zip, or a folder holding them, instead of Drive.
        url: the Drive folder (the README's by default).
        password: for encrypted zips (default: the dataset's published password).
        progress: progress bars and one line per checkpoint.
        inspect: open each checkpoint with the safe loader and print what it holds.

    Returns:
        The checkpoint files in ``out``, sorted by name.

    Raises:
        DownloadError: Drive refused or could not be reached (the message says what to do),
            or no checkpoint file was found.
        ReleaseCheckpointError: a file is damaged or asks for more than tensors and plain data.
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if password is None:
        password = _common.ARCHIVE_PASSWORD
    state_path = out / STATE_FILE
    source = str(Path(from_archive).expanduser().resolve()) if from_archive else url
    state = _drive._load_state(state_path)

    def say(msg: str) -> None:
        if progress:
            tqdm.write(msg)

    done = state.get("source") == source and state.get("files") and all(
        (out / name).is_file() and (out / name).stat().st_size == size
        for name, size in state["files"].items())
    if done:
        placed = sorted(out / name for name in state["files"])
        say(f"checkpoints already in {out} (from {source}); nothing to do")
    else:
        if from_archive:
            src = Path(from_archive).expanduser()
            if not src.exists():
                raise DownloadError(f"--from-archive {src}: no such file or folder.")
            sources = [src] if src.is_file() else list(_common._walk_files(src))
            keep_source = True
        else:
            say(f"downloading {url} into {out / '_download'}")
            try:
                sources = _drive.download_folder(url, out / "_download", quiet=not progress)
            except DownloadError as exc:
                raise DownloadError(str(exc) + _BY_HAND.format(url=url)) from exc
            keep_source = False
        found = _collect(sources, out, password=password, progress=progress)
        if not found:
            names = sorted(p.name for p in sources)[:10]
            raise DownloadError(
                f"no checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) among {names or 'no files'} "
                f"from {source}." + _BY_HAND.format(url=url))
        placed = []
        for f in found:
            dst = out / f.name
            if dst.exists() and (_common._same_file(f, dst) or f.resolve() == dst.resolve()):
                placed.append(dst)
                continue
            if dst in placed:
                raise DownloadError(
                    f"two checkpoints are called {f.name} in {source}; put them in separate "
                    "folders and convert them one at a time.")
            _common._place(f, dst, keep_source=keep_source or "_extracted" in f.parts)
            placed.append(dst)
        placed = sorted(placed)
        _common._write_json_atomic(state_path, {"source": source,
                                           "files": {p.name: p.stat().st_size for p in placed}})
    if inspect:
        from .loading import load_release_checkpoint

        for path in placed:
            info = load_release_checkpoint(path).summary()
            meta = info["meta"]
            say(f"{path.name}: {info['num_tensors']} tensors, {info['num_values']:,} values"
                + (f", epoch {meta['epoch']}" if "epoch" in meta else "")
                + (f", mmdet {meta['mmdet_version']}" if "mmdet_version" in meta else "")
                + f", sha256 {info['sha256'][:12]}")
    return placed


def download_checkpoints_main(argv: Sequence[str] | None = None) -> int:
    """``python -m oralx_lib download --checkpoints``: :func:`prepare_checkpoints`, then the
    next command to run. Exit 0, or 2 with a message (the CLI reports project errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m oralx_lib download --checkpoints",
        description="Download the authors' trained MOQAM checkpoints (the README's 'Download "
                    "Model Checkpoints' Google Drive folder), or take a copy you have. "
                    "Interrupted? Run the same command again: finished files are skipped.",
        epilog="examples:\n  python -m oralx_lib download --checkpoints --out checkpoints\n"
               "  python -m oralx_lib download --checkpoints --out checkpoints "
               "--from-archive /content/drive/MyDrive/MOQAM-checkpoints\n"
               "then: python -m oralx_lib convert-release checkpoints/<file>.pth "
               "--out moqam_release.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the checkpoints")
    parser.add_argument("--from-archive", type=Path, metavar="PATH",
                        help="a .pth file, a zip or a folder of them (e.g. your Google Drive "
                             "copy), instead of downloading")
    parser.add_argument("--url", default=CHECKPOINTS_URL, help="Google Drive folder to fetch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    placed = prepare_checkpoints(args.out, from_archive=args.from_archive, url=args.url,
                                 progress=not args.quiet)
    for path in placed:
        print(f"checkpoint ready: {path}")
    print(f"next: python -m oralx_lib convert-release {placed[0]} --out moqam_release.pt")
    return 0


__all__ = ["CHECKPOINTS_URL", "CHECKPOINT_SUFFIXES", "STATE_FILE", "download_checkpoints_main",
           "prepare_checkpoints"]

