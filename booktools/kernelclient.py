"""A guard against a lost wake-up between a notebook executor and its kernel.

What happens without it
-----------------------
Executing the book's chapters here, nbclient (under ``jupyter-book build``, nbmake and plain
nbclient alike) sometimes stopped after a cell had finished: the kernel idle in its event loop
and still answering other clients (a ``kernel_info`` request from a second client got its reply
at once), the executor idle in ``epoll`` with no CPU used, waiting for a reply the kernel had
already sent. jupyter_client's asyncio channels wait for a message with one
``socket.poll(timeout)`` whose timeout is the whole cell timeout (25 minutes in ``_config.yml``);
when that poll misses the socket's edge-triggered wake-up, nothing wakes it until the timeout.
When the timeout fires, pyzmq's poller checks the socket again and finds the message.

The guard
---------
:func:`install` makes every asyncio channel of jupyter_client wait in slices of at most
:data:`SLICE` seconds, each slice a fresh poll that first checks the socket, until the caller's
timeout is used up; a missed wake-up then costs at most one slice. Messages, their order and
the callers' timeouts are unchanged. ``booktools.bookbuild`` installs it in the process that
executes a chapter (``make book`` and ``make test`` alike). Its watchdog stays as the second
line of defence.
"""

from __future__ import annotations

import time
from queue import Empty

#: Longest single wait on a kernel socket, in seconds.
SLICE = 1.0

_ORIGINAL = None


async def _sliced_get_msg(self, timeout: float | None = None):
    """``AsyncZMQSocketChannel.get_msg`` waiting in slices of at most :data:`SLICE` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
        try:
            return await _ORIGINAL(self, timeout=left)
        except Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def install() -> bool:
    """Make jupyter_client's asyncio channels wait in slices (idempotent); return whether it
    was installed now."""
    global _ORIGINAL
    from jupyter_client.channels import AsyncZMQSocketChannel

    if _ORIGINAL is not None:
        return False
    _ORIGINAL = AsyncZMQSocketChannel.get_msg
    AsyncZMQSocketChannel.get_msg = _sliced_get_msg
    return True


def installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return _ORIGINAL is not None

