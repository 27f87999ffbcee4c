"""Distributed data parallel (DDP) in a few helpers: set up from ``torchrun``'s environment,
reduce numbers across processes, gather Python objects (the local launcher for CPU demos is
:mod:`oralx_lib.engine.launch`).

``torchrun --nproc_per_node N -m oralx_lib train ...`` starts ``N`` processes with the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Each process trains on its own shard of every epoch
(``DistributedSampler``); gradients are averaged across processes after every backward pass
(``DistributedDataParallel``), so with ``N`` processes and batch ``b`` per process one step sees
``N x b`` images. Only rank 0 writes files and prints. The backend is ``nccl`` on CUDA and
``gloo`` on CPU (what the tests use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from oralx_lib.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU.

    Asking for ``"cuda"`` without a GPU raises :class:`ConfigError` (with the fix).
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "device='cuda' but PyTorch sees no GPU: use --device cpu (or auto), or on Colab "
                "choose Runtime > Change runtime type > GPU."
            )
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device={device!r}: choose 'auto', 'cpu' or 'cuda'.")


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number: launch with torchrun."
        ) from None


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun described (or the one already initialised).

    Without ``WORLD_SIZE > 1`` and without an initialised group this is a single process on
    the resolved device. Returns a :class:`DistContext`; call :func:`cleanup_distributed` at
    the end (it only tears down a group this call created).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(rank, world, local_rank, dev, initialized_here=False)
    world = env_world_size()
    if world <= 1:
        return DistContext(0, 1, 0, resolve_device(device, 0), initialized_here=False)
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConfigError(
                f"WORLD_SIZE={world} but {var} is not set: launch distributed runs with "
                "`torchrun --nproc_per_node N -m oralx_lib train ...`."
            )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                            rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, dev, initialized_here=True)


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Average a tensor over processes (a copy; unchanged in a single process)."""
    if not ctx.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj`` as a list indexed by rank (``[obj]`` in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    return model.module if hasattr(model, "module") else model


__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "env_world_size",
    "resolve_device",
    "setup_distributed",
    "unwrap_model",
]
