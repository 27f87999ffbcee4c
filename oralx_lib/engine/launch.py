"""Train with several processes on this machine, from Python: :func:`train_local_ddp`.

The same thing as ``torchrun --nproc_per_node N -m oralx_lib train ...``: the processes are
started with ``torch.multiprocessing.spawn`` and set up by
:func:`oralx_lib.engine.distributed.setup_distributed` (gloo on CPU). Meant for CPU demos and
tests; on GPUs prefer torchrun.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp

from oralx_lib.errors import ConfigError

from .config import TrainConfig
from .train import train


# ------------------------------------------------------------------------------------------------
# Local launcher (CPU demos and tests)
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on localhost nobody listens to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _local_worker(rank: int, world_size: int, port: int, config: dict, progress: bool) -> None:
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    })
    train(TrainConfig.from_dict(config), progress=progress and rank == 0)


def train_local_ddp(config, nproc: int = 2, *, progress: bool = False) -> dict:
    """Train with ``nproc`` processes on this machine (gloo on CPU) and return rank 0's summary.

    The same thing as ``torchrun --nproc_per_node nproc -m oralx_lib train ...``, from Python:
    the processes are started with ``torch.multiprocessing.spawn``. Meant for CPU demos and
    tests; on GPUs prefer torchrun.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    if nproc < 1:
        raise ConfigError(f"nproc={nproc}: start at least one process.")
    port = free_port()
    mp.spawn(_local_worker, args=(nproc, port, config.to_dict(), progress), nprocs=nproc,
             join=True)
    summary_path = Path(config.out_dir) / "summary.json"
    return json.loads(summary_path.read_text())


__all__ = ["free_port", "train_local_ddp"]
