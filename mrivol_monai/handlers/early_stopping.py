"""Connect the validation's ``EarlyStopHandler`` to the trainer it should stop.

MONAI's ``EarlyStopHandler`` lives in the evaluator's handler list but must call ``terminate()`` on the
trainer, which is built later in the config; the bundle wires the two in its ``training`` step. Finding the
handler by type (not by its index in ``validate#handlers``) keeps that working when handlers are added,
removed or reordered by an overlay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.handlers import CheckpointSaver, EarlyStopHandler

__all__ = ["attach_early_stop", "best_model_saver", "only_handler"]


def attach_early_stop(handlers: Sequence[Any], trainer: Any) -> EarlyStopHandler:
    """Give the one :class:`~monai.handlers.EarlyStopHandler` in ``handlers`` the ``trainer`` to stop; returns it.

    ``ValueError`` if ``handlers`` holds none or more than one (which trainer each should stop would be a guess).
    """
    handler = only_handler(handlers, EarlyStopHandler)
    handler.set_trainer(trainer=trainer)
    return handler


def only_handler(handlers: Sequence[Any], kind: type, where: Callable[[Any], bool] = lambda h: True) -> Any:
    """The one handler in ``handlers`` that is a ``kind`` (and satisfies ``where``); ``ValueError`` if there is
    none or more than one (config ids by list position break when a handler is added)."""
    found = [h for h in handlers if isinstance(h, kind) and where(h)]
    if len(found) != 1:
        names = ", ".join(type(h).__name__ for h in handlers)
        raise ValueError(f"expected exactly one {kind.__name__} among the validation handlers, found {len(found)} "
                         f"({names})")
    return found[0]


def best_model_saver(handlers: Sequence[Any], required: bool = True) -> CheckpointSaver | None:
    """The validation handler that saves the best model (a ``CheckpointSaver`` with ``save_key_metric``); None
    when it is absent and not ``required`` (ranks other than 0 of a distributed run write no files)."""
    if not required and not any(isinstance(h, CheckpointSaver) for h in handlers):
        return None
    return only_handler(handlers, CheckpointSaver, lambda h: getattr(h, "_key_metric_checkpoint", None) is not None)
