"""Extra TensorBoard scalars for the training workflow.

MONAI's ``TensorBoardStatsHandler`` logs engine metrics and the loss but not the optimiser's learning rate;
``epoch_event_writer`` lets us add it without a handler class of our own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine


def learning_rate_writer(optimizer: torch.optim.Optimizer, tag: str = "learning_rate") -> Callable:
    """``(engine, writer) -> None`` writing the first param group's lr once per epoch (the engine's metrics are
    already written by the trainer's other ``TensorBoardStatsHandler``)."""

    def write(engine: Engine, writer) -> None:
        epoch = engine.state.epoch
        writer.add_scalar(tag, float(optimizer.param_groups[0]["lr"]), epoch)
        writer.flush()

    return write
