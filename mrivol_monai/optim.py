"""Optimisers and the learning-rate scheduler by name, for configs (paper section 3).

Per-model optimiser and learning rate live in ``mrivol_monai.networks.PAPER_DEFAULTS``; every model
uses ReduceLROnPlateau on the validation Dice (:func:`build_scheduler`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["OPTIMIZERS", "build_optimizer", "build_scheduler"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


def build_optimizer(name: str, params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """torch optimiser ``name`` (case-insensitive: Adam, AdamW, RMSprop, SGD) over ``params``.

    Extra keyword arguments (``weight_decay``, ``momentum``, ...) go to the torch class.
    Raises ``ValueError`` naming the known optimisers for any other name or a non-positive ``lr``.
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        names = ", ".join(cls.__name__ for cls in OPTIMIZERS.values())
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {names}")
    if not lr > 0:
        raise ValueError(f"optimizer {name}: lr must be > 0, got {lr!r}")
    return OPTIMIZERS[key](params, lr=lr, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, factor: float = 0.5, patience: int = 2, min_lr: float = 1e-7
) -> ReduceLROnPlateau:
    """ReduceLROnPlateau stepped with the validation Dice (mode "max").

    The paper gives no factor/patience; patience 2 lets the rate drop before the paper's early
    stopping (5 epochs without improvement) ends the run.
    """
    return ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience, min_lr=min_lr)
