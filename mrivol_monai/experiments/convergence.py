"""Which runs count: the convergence and collapse rule, written once here and quoted into every report.

A run is *collapsed* when its best validation Dice is below a floor (an all-background prediction scores 0);
otherwise it *converged* when training stopped on its own (``EarlyStopHandler`` fired before the epoch cap) or
its validation curve is flat at the end: the last ``window`` validations improved on the best validation
before them by less than ``min_delta`` (the test early stopping itself makes, applied to a run that hit the
cap). Anything else is *not converged*. Only converged runs enter the means, the tables and the paired tests;
collapsed and unconverged runs are counted and named in the tables instead. The rule uses validation Dice
only, never the test split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COLLAPSED", "CONVERGED", "MIN_RUNS", "NOT_CONVERGED", "RULE", "ConvergenceRule", "counted", "run_status"]

CONVERGED, COLLAPSED, NOT_CONVERGED = "converged", "collapsed", "not converged"
MIN_RUNS = 5  # converged runs a variant needs before its findings are tested (and the quick profile's repeats)


@dataclass(frozen=True)
class ConvergenceRule:
    """``window`` validations, ``min_delta`` validation Dice, ``collapse_floor`` validation Dice."""

    window: int = 3
    min_delta: float = 0.002  # train.json's early_stop_min_delta
    collapse_floor: float = 0.5

    def text(self) -> str:
        """The rule in one paragraph, for the report."""
        return (f"A run is **collapsed** if its best validation Dice is below {self.collapse_floor:g} (an "
                f"all-background prediction scores 0); collapsed runs are reported, never averaged. Otherwise it "
                f"**converged** if early stopping ended it before the epoch cap, or if its last {self.window} "
                f"validations improved on the best validation Dice before them by less than {self.min_delta:g} "
                f"(a flat curve at the cap; needs at least {self.window + 1} validations). Any other run is **not "
                f"converged** and is not averaged either. Means, intervals and paired tests use converged runs "
                f"only; the rule reads validation Dice, never the test split.")


RULE = ConvergenceRule()


def run_status(result: Mapping[str, Any], rule: ConvergenceRule = RULE) -> tuple[str, str]:
    """A run's ``result.json`` record -> (status, reason): status is :data:`CONVERGED`, :data:`COLLAPSED` or
    :data:`NOT_CONVERGED`; reason says which part of the rule decided, with the numbers."""
    best = result.get("val_dice")
    if best is None or not math.isfinite(best) or best < rule.collapse_floor:
        return COLLAPSED, f"best val Dice {best if best is None else f'{best:.3f}'} < {rule.collapse_floor:g}"
    cap, epochs = result.get("max_epochs"), result.get("epochs")
    if result.get("early_stopped"):
        return CONVERGED, f"early-stopped at epoch {epochs} of {cap}"
    curve: Sequence[Sequence[float]] = result.get("val_curve") or []
    if len(curve) < rule.window + 1:
        return NOT_CONVERGED, (f"hit the {cap}-epoch cap with {len(curve) or 'no recorded'} validations "
                               f"(the flat test needs {rule.window + 1})")
    values = [float(v) for _, v in sorted(curve)]
    gain = max(values[-rule.window:]) - max(values[:-rule.window])
    if gain < rule.min_delta:
        return CONVERGED, f"flat at the cap: last {rule.window} validations {gain:+.4f} < {rule.min_delta:g}"
    return NOT_CONVERGED, f"still improving at the cap: last {rule.window} validations {gain:+.4f}"


def counted(results: Sequence[Mapping[str, Any]], rule: ConvergenceRule = RULE) -> list[Mapping[str, Any]]:
    """The runs that count (converged by ``rule``), in input order."""
    return [r for r in results if run_status(r, rule)[0] == CONVERGED]
