"""Checks on the paths a command will write to, made before any long work starts.

Each raises :class:`~oralx_lib.errors.ConfigError` naming the option, the path and the fix, so
the command line prints one ``error:`` line and exits with status 2 instead of failing with a
traceback after minutes of training or inference.
"""

from __future__ import annotations

import os
from pathlib import Path

from oralx_lib.errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_parent_chain(folder: Path, path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``folder`` (where ``path`` goes); it must be a
    writable folder."""
    anchor = _nearest_existing(folder)
    if anchor.exists() and not anchor.is_dir():
        raise ConfigError(
            f"{flag} {path}: it would lie under {anchor}, which is a file, not a folder. Choose "
            "a path in a folder."
        )
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{flag} {path}: cannot write there ({anchor} is not writable for this user). "
            "Choose a folder you can write to."
        )
    return anchor


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` is, or can be created as, a writable folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{flag} {path}: this is a file, not a folder. Give a folder (it is created if "
            "needed), e.g. a new name next to it."
        )
    _check_parent_chain(path, path, flag)
    return path


def check_out_file(path: str | os.PathLike, flag: str = "--out",
                   example: str = "metrics.json") -> Path:
    """``path`` is, or can be created as, a writable file (not a folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(
            f"{flag} {path}: this is a folder; give a file name, e.g. {path / example}."
        )
    _check_parent_chain(path.parent, path, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path}: the file exists and is not writable for this user.")
    return path


__all__ = ["check_out_dir", "check_out_file"]
