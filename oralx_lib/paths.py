"""Where things live: the dataset root, the run profile, the repository root.

Two environment variables steer every notebook and script:

- ``ORALX_DATA``: a dataset root in the OralXrays-9 layout. Unset, the embedded synthetic set is
  used (``<repo>/data/synthetic`` in a source checkout, else ``~/.cache/oralx_book/synthetic``).
- ``ORALX_PROFILE``: ``fast`` (default; CPU, minutes) or ``full`` (a GPU, the released recipe).
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("fast", "full")


class ConfigError(ValueError):
    """A setting the user chose (environment variable, CLI flag, config field) is invalid."""


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


def profile() -> str:
    """The run profile from ``$ORALX_PROFILE``: ``fast`` (default) or ``full``."""
    value = os.environ.get("ORALX_PROFILE", "fast").strip().lower() or "fast"
    if value not in PROFILES:
        raise ConfigError(
            f"ORALX_PROFILE={value!r} is not a profile; use one of {PROFILES} "
            "(fast: CPU, minutes; full: a GPU, the released recipe)."
        )
    return value


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
