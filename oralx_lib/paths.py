"""Where things live: the dataset root, the runs folder, the repository root.

- ``ORALX_DATA``: a dataset root in the OralXrays-9 layout. Unset, the embedded synthetic set is
  used (``<repo>/data/synthetic`` in a source checkout, else ``~/.cache/oralx_book/synthetic``).
- ``ORALX_RUNS``: where training runs go (default ``<repo>/runs``).

The run profile (``ORALX_PROFILE``) is read by :func:`oralx_lib.profiles.book_profile`.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path | None:
    """The source checkout that holds this package, or ``None`` for a plain pip install."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "oralx_lib").is_dir():
        return here
    return None


def default_data_root() -> Path:
    """The dataset root: ``$ORALX_DATA`` if set, else the embedded synthetic set's folder."""
    env = os.environ.get("ORALX_DATA")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    if root is not None:
        return root / "data" / "synthetic"
    return Path.home() / ".cache" / "oralx_book" / "synthetic"


def is_colab() -> bool:
    """True inside Google Colab."""
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


def runs_root() -> Path:
    """Where training runs go: ``$ORALX_RUNS`` (e.g. a folder on a mounted Google Drive, so that
    checkpoints survive a Colab disconnect), else ``<repo>/runs`` or ``./runs``."""
    env = os.environ.get("ORALX_RUNS")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "runs"
