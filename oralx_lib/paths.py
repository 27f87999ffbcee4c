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


def synthetic_data_root(rare_eval: bool = False) -> Path:
    """The folder of a synthetic set, whatever ``$ORALX_DATA`` says: ``data/synthetic`` in the
    checkout (the embedded set), or ``data/synthetic-rare-eval`` with ``rare_eval`` (the same
    set with validation and test enriched until every class has ``RARE_EVAL_MIN_BOXES`` boxes,
    :func:`oralx_lib.data.ensure_synthetic`); under ``~/.cache/oralx_book`` for a plain pip
    install."""
    name = "synthetic-rare-eval" if rare_eval else "synthetic"
    root = repo_root()
    if root is not None:
        return root / "data" / name
    return Path.home() / ".cache" / "oralx_book" / name


def default_data_root() -> Path:
    """The dataset root: ``$ORALX_DATA`` if set, else the embedded synthetic set's folder."""
    env = os.environ.get("ORALX_DATA")
    if env:
        return Path(env).expanduser()
    return synthetic_data_root()


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


def _anchors() -> list[tuple[Path, str]]:
    """Folders whose absolute path a page should not show, with what to show instead, the most
    specific first: ``$ORALX_DATA``, ``$ORALX_RUNS``, the checkout (relative paths), home."""
    anchors = []
    for name in ("ORALX_DATA", "ORALX_RUNS"):
        if os.environ.get(name):
            anchors.append((Path(os.environ[name]).expanduser(), f"${name}"))
    root = repo_root()
    if root is not None:
        anchors.append((root, "."))
    anchors.append((Path.home(), "~"))
    return anchors


def shown(path: str | os.PathLike) -> str:
    """``path`` as a page should print it: relative to the checkout (``data/synthetic``),
    under ``$ORALX_DATA`` / ``$ORALX_RUNS`` when it lies there, or under ``~``; other paths
    unchanged. Printed outputs then say the same on every machine and reveal no user's
    folders."""
    path = Path(path).expanduser()
    candidates = [path]
    if path.is_absolute():
        try:
            candidates.append(path.resolve())
        except OSError:
            pass
    for anchor, label in _anchors():
        for folder in dict.fromkeys((anchor, anchor.resolve())):
            for p in candidates:
                try:
                    rest = p.relative_to(folder)
                except ValueError:
                    continue
                if label == ".":
                    return rest.as_posix() or "."
                return label if str(rest) == "." else f"{label}/{rest.as_posix()}"
    return str(path)


def shown_in(text: str) -> str:
    """``text`` (a command's output, an error message) with every absolute path under the
    folders of :func:`shown` written as :func:`shown` writes it."""
    replacements = []
    for anchor, label in _anchors():
        for folder in dict.fromkeys((str(anchor), str(anchor.resolve()))):
            if folder not in ("", "/"):
                replacements.append((folder.rstrip("/"), label))
    for folder, label in sorted(replacements, key=lambda r: -len(r[0])):
        if label == ".":
            text = text.replace(folder + "/", "").replace(folder, ".")
        else:
            text = text.replace(folder, label)
    return text
