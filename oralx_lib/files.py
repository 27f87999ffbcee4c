"""Writing files so that a crash never leaves half a file: :func:`atomic_write`.

The data goes to a temporary file in the target's folder, is flushed to disk (``fsync``), and
is renamed over the target with ``os.replace``, which is atomic on POSIX and Windows: a reader
sees the old file or the new one, never a mixture. On any error the temporary file is removed
and the target is untouched. The file gets the permissions ``open()`` would give it (``0666``
minus the umask, e.g. ``0644``), not the ``0600`` of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, suffix: str = ".tmp",
                 encoding: str | None = None, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the file to (re)write; its folder is created if needed.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, ``encoding`` default UTF-8).
        suffix: the temporary name ends with it (``.<name>.<random><suffix>``), so that
            scanners can skip unfinished files.
        fsync: flush the data and the rename to disk (durable across a power cut).

    Example::

        with atomic_write(out / "summary.json", "w") as fh:
            json.dump(summary, fh)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        kwargs = {"encoding": encoding or "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        # mkstemp creates the file 0600; give it what open() would (0666 minus the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    """``path.write_bytes(data)``, atomically (see :func:`atomic_write`). Returns the path."""
    with atomic_write(path, "wb", **kwargs) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, **kwargs) -> Path:
    """``path.write_text(text)`` in UTF-8, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", **kwargs) as handle:
        handle.write(text)
    return Path(path)


def _umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic"]
