"""Connect the validation's ``EarlyStopHandler`` to the trainer it should stop.

MONAI's ``EarlyStopHandler`` lives in the evaluator's handler list but must call ``terminate()`` on the
trainer, which is built later in the config; the bundle wires the two in its ``training`` step. Finding the
handler by type (not by its index in ``validate#handlers``) keeps that working when handlers are added,
removed or reordered by an overlay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import EarlyStopHandler

__all__ = ["attach_early_stop"]


def attach_early_stop(handlers: Sequence[Any], trainer: Any) -> EarlyStopHandler:
    """Give the one :class:`~monai.handlers.EarlyStopHandler` in ``handlers`` the ``trainer`` to stop; returns it.

    ``ValueError`` if ``handlers`` holds none or more than one (which trainer each should stop would be a guess).
    """
    found = [h for h in handlers if isinstance(h, EarlyStopHandler)]
    if len(found) != 1:
        names = ", ".join(type(h).__name__ for h in handlers)
        raise ValueError(f"expected exactly one EarlyStopHandler among the validation handlers, found {len(found)} "
                         f"({names})")
    found[0].set_trainer(trainer=trainer)
    return found[0]
