"""Where the bundle keeps preprocessed volumes: the ``dataset_cache`` switch of ``train.json``.

- ``memory``: MONAI ``CacheDataset``, every preprocessed volume held in RAM (fast epochs; RAM grows with the
  cohort, and every torchrun rank holds its own copy).
- ``disk``: MONAI ``PersistentDataset`` in ``cache_dir``: each volume is preprocessed once, saved as a ``.pt``
  file and read back every epoch, so RAM does not grow with the cohort; ranks and later runs share the files.
  A file's name hashes the datalist entry (paths plus each file's size and modification time) and the
  deterministic transforms (class, source code and settings, :func:`preprocessing_fingerprint`), so a changed
  scan or a changed preprocessing step gets a new file instead of a stale one.
- ``none``: MONAI ``Dataset``, preprocess on every access (lowest RAM, slowest).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset

from mrivol_monai import distributed
from mrivol_monai.errors import InputError

__all__ = ["CACHE_KINDS", "cached_dataset", "item_fingerprint", "preprocessing_fingerprint"]

CACHE_KINDS = ("memory", "disk", "none")
# private attributes are mostly run-time state (MONAI's ``_tracing`` appears after the first call); these hold
# settings: LoadImaged's loader with its readers
_PRIVATE_SETTINGS = ("_loader",)
_MAX_DEPTH = 12  # transform -> settings -> inner transform (Resized.resizer) -> its settings ...


def _stable(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A JSON-able description of ``obj`` with no memory addresses: the same settings give the same text in
    every process and run (``repr`` of most objects embeds ``0x7f...`` and would never hit the cache)."""
    seen = set() if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        array = np.ascontiguousarray(torch.as_tensor(obj).detach().cpu().numpy())
        return {"array": str(array.dtype), "shape": list(array.shape), "sha1": hashlib.sha1(array.tobytes()).hexdigest()}
    if isinstance(obj, (torch.dtype, np.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, type) or inspect.isroutine(obj):
        name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            source = ""
        return {"callable": name, "source_sha1": hashlib.sha1(source.encode()).hexdigest()}
    if depth >= _MAX_DEPTH:
        return type(obj).__qualname__
    if isinstance(obj, Mapping):
        return {str(k): _stable(v, depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_stable(v, depth + 1, seen) for v in items]
    if id(obj) in seen:  # an object met again (cycles): only objects that outlive the walk, so ids are not reused
        return type(obj).__qualname__
    seen.add(id(obj))
    state = {k: v for k, v in vars(obj).items() if not k.startswith("_") or k in _PRIVATE_SETTINGS} \
        if hasattr(obj, "__dict__") else {}
    return {"class": _stable(type(obj)), "state": _stable(state, depth + 1, seen)}


def preprocessing_fingerprint(transforms: Sequence[Any]) -> bytes:
    """Deterministic transforms (as ``PersistentDataset(hash_transform=...)`` passes them) -> hex digest
    bytes of their classes, source code and settings (attributes, nested transforms and readers included)."""
    text = json.dumps(_stable(list(transforms)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16].encode()


def item_fingerprint(item: Mapping[str, Any]) -> bytes:
    """A datalist entry -> hex digest bytes of its values plus the size and modification time of every
    value that names a file (a regenerated cohort in the same folder must not reuse old cache files)."""
    described = {}
    for key, value in sorted(item.items(), key=lambda kv: str(kv[0])):
        entry: Any = _stable(value)
        if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            stat = os.stat(value)
            entry = {"path": str(value), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        described[str(key)] = entry
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest().encode()


def _warm(dataset: PersistentDataset, num_workers: int) -> None:
    """Write every missing cache file now, this rank's share of them (then wait for the others).

    A partly filled cache mixes fresh items (numpy crop coordinates in the transform trace) with items read
    back from disk (tensors) in one batch, which does not collate; filling it first also keeps the cost where
    ``CacheDataset`` has it, before the first epoch. Results are dropped at once: RAM stays flat.
    """
    mine = distributed.shard(range(len(dataset.data)), distributed.rank(), distributed.world_size())

    def fill(index: int) -> None:
        dataset._cachecheck(dataset.data[index])  # MONAI's own cache-or-compute step; the result is not kept

    if num_workers > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            list(pool.map(fill, mine))
    else:
        for index in mine:
            fill(index)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory() -> bool:
    """Let glibc serve allocations of >= 128 kB (a cached slice stack, a loaded volume) from their own mmap, so
    that freeing them gives the memory back to the system (``mallopt(M_MMAP_THRESHOLD)``, what the environment
    variable ``MALLOC_MMAP_THRESHOLD_=131072`` does). Without it glibc raises that threshold as big blocks come and
    go and keeps them in its heap: with the disk cache, peak RSS grew from 1.05 to 1.2 GB between 16 and 128
    subjects; with the variable it stayed at 936-937 MB (``benchmarks/cache_memory.py``). Returns False where
    there is no glibc (macOS, Windows, musl): nothing changes there."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(-3, MMAP_THRESHOLD_BYTES) == 1)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def cached_dataset(kind: str, data: Sequence[dict], transform: Callable, cache_dir: str | os.PathLike | None = None,
                   num_workers: int = 1) -> Dataset:
    """The training or validation dataset of ``data`` (datalist entries) through ``transform``, cached as
    ``kind`` says (:data:`CACHE_KINDS`). ``memory`` is exactly the ``CacheDataset`` train.json always used;
    ``disk`` needs ``cache_dir`` and fills it before returning."""
    if kind == "memory":
        return CacheDataset(data=data, transform=transform, cache_rate=1.0, num_workers=num_workers)
    if kind == "none":
        return Dataset(data=data, transform=transform)
    if kind != "disk":
        raise InputError(None, f"dataset_cache must be one of {', '.join(CACHE_KINDS)}, got {kind!r}")
    if not cache_dir:
        raise InputError(None, "dataset_cache 'disk' needs a cache_dir")
    return_freed_memory()
    dataset = PersistentDataset(data=data, transform=transform, cache_dir=cache_dir, hash_func=item_fingerprint,
                                hash_transform=preprocessing_fingerprint)
    _warm(dataset, num_workers)
    return dataset
