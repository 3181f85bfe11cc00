"""torch.distributed glue for the ``multi_gpu_*.json`` overlays and sharded ``mrivol predict``.

``torchrun`` starts one process per GPU (or per CPU share) and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...). The functions here read that place, choose the
backend (NCCL on GPUs, gloo on CPU) and split a list of scans over ranks. Before a process group exists they
answer from the environment, so a config can ask "am I rank 0?" while it is being parsed, and a plain
single process is rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "backend",
    "destroy",
    "device",
    "init",
    "is_main",
    "local_rank",
    "parse_shard",
    "rank",
    "shard",
    "sync_buffers",
    "world_size",
]

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def rank() -> int:
    """This process's global rank: from the process group if there is one, else ``RANK`` (torchrun), else 0."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes: from the process group if there is one, else ``WORLD_SIZE``, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """Rank within this node (``LOCAL_RANK``, set by torchrun), else 0: selects the GPU on multi-GPU nodes."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0, the one process that writes checkpoints, logs and results files."""
    return rank() == 0


def backend() -> str:
    """``nccl`` when CUDA is available, ``gloo`` otherwise (CPU-only machines, tests)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` on a GPU node (the local rank, not the global one, so multi-node runs pick an
    existing GPU), ``cpu`` otherwise."""
    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


def init(backend_name: str | None = None) -> bool:
    """Join the process group torchrun describes (``env://``) with ``backend_name`` (default :func:`backend`),
    once; on GPUs also make :func:`device` the current CUDA device. Returns True when a group exists afterwards."""
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group(backend=backend_name or backend())
    return dist.is_initialized()


def destroy() -> None:
    """Leave the process group if this process is in one (the overlays' ``finalize``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (shard K of N, K in 0..N-1, as scheduler array jobs number tasks) -> ``(K, N)``."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= K < N")
    return k, n


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every ``count``-th item starting at ``index``: shards are disjoint, cover ``items``, differ in size by
    at most one, and depend only on the order of ``items`` (the same on every rank)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    return list(items[index::count])


def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank; no-op without a group.

    DDP keeps parameters equal, but each rank's last training forward updates the running statistics with
    its own batch; the overlays call this when validation starts, so every rank validates the same model
    (they validate the DDP-unwrapped module, whose forward runs no collectives and so tolerates ranks with
    different numbers of validation volumes)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
