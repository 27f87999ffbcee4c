"""Download: the release's Google Drive folder (``gdown``), and the whole path
(:func:`prepare_oralxrays9`, ``python -m oralx_lib download``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...errors import DownloadError
from ..dataset import DatasetError, annotation_file
from .archives import _find_archives, extract_archive
from .common import (
    ARCHIVE_PASSWORD,
    DRIVE_FOLDER_URL,
    STATE_FILE,
    _import_optional,
    _manual_hint,
    _run_cli,
    _write_json_atomic,
)
from .layout import _coco_jsons, normalise_layout
from .verify import verify_dataset


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
               "then: export ORALX_DATA=data/oralxrays9\n"
               "the authors' trained checkpoints (oralx_lib.release):\n"
               "  python -m oralx_lib download --checkpoints --out checkpoints",
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
