"""Calibrated 95 % intervals on volumes: split-conformal prediction scaled by a per-scan difficulty score.

A volume ``v`` predicted for a scan comes with a difficulty ``d >= 0`` (:func:`soft_hard_gap`: how far the soft
volume, the sum of class probabilities, is from the hard count, relative to the hard count: 0 for a confident
segmentation, larger where the boundary is uncertain). On calibration subjects with known volumes ``t`` the
conformity score is the signed, scaled relative error

    e = (t - v) / (v * s),    s = d + s0,

with ``s0`` the median difficulty of the calibration set (so that a scan with d = 0 still gets an interval).
For a level 1 - a the interval of a new scan is ``[v (1 + q_lo s), v (1 + q_hi s)]`` where ``q_lo`` and ``q_hi``
are the ``floor(a/2 (n + 1))``-th smallest and ``ceil((1 - a/2)(n + 1))``-th smallest of the n calibration
scores. If the new scan is exchangeable with the calibration scans, each side misses with probability at most
a/2, so the interval holds the true volume with probability >= 1 - a (split conformal; Lei et al., 2018,
"Distribution-free predictive inference for regression", JASA 113:1094-1111; Romano et al., 2019, conformalized
quantile regression, for the two-sided signed form). Signed scores also remove a systematic bias of the model
(an over-estimating model gets an interval shifted down). With n < 2/a - 1 calibration scans a side cannot be
bounded and is infinite: at a = 0.05 that needs n >= 39.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.errors import InputError

LEVEL = 0.95


def soft_hard_gap(probs: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """(C, *spatial) class probabilities (and their argmax labels, computed if not given) -> (C,) difficulty per
    class: |sum of p_c - count of voxels labelled c| / max(count, 1). On one grid, so no voxel size is needed."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    if labels is None:
        labels = torch.argmax(probs, dim=0)
    labels = torch.as_tensor(labels).reshape(-1).long()
    counts = torch.bincount(labels, minlength=probs.shape[0]).double()
    soft = probs.reshape(probs.shape[0], -1).double().sum(dim=1)
    return ((soft - counts).abs() / counts.clamp(min=1.0)).numpy()


def conformal_rank(n: int, quantile: float) -> int | None:
    """1-based rank among n sorted scores that bounds the ``quantile`` side, or None if n is too small."""
    if quantile >= 0.5:
        rank = math.ceil(quantile * (n + 1))
        return rank if rank <= n else None
    rank = math.floor(quantile * (n + 1))
    return rank if rank >= 1 else None


@dataclass
class StructureCalibration:
    """Fitted interval of one structure: scale offset ``s0``, score quantiles ``q_lo``/``q_hi`` (None: unbounded),
    the ``level`` and how many calibration scans ``n`` it rests on."""

    s0: float
    q_lo: float | None
    q_hi: float | None
    level: float
    n: int
    median_width: float | None = None  # median (high - low) / volume on the calibration scans

    def is_wide(self, volume: float, difficulty: float, factor: float = 2.0) -> bool:
        """True if this scan's interval is unbounded or wider than ``factor`` x the calibration scans' median."""
        low, high = self.interval(volume, difficulty)
        if not math.isfinite(high) or volume <= 0:
            return True
        return self.median_width is not None and (high - low) / volume > factor * self.median_width

    def interval(self, volume: float, difficulty: float) -> tuple[float, float]:
        """Predicted volume (mL) + its difficulty -> (low, high) mL; an unbounded side is -inf / inf."""
        s = max(float(difficulty), 0.0) + self.s0
        low = volume * (1.0 + self.q_lo * s) if self.q_lo is not None else -math.inf
        high = volume * (1.0 + self.q_hi * s) if self.q_hi is not None else math.inf
        return max(low, 0.0), high


def fit_structure(predicted: Sequence[float], true: Sequence[float], difficulty: Sequence[float],
                  level: float = LEVEL) -> StructureCalibration:
    """Calibrate one structure on n scans: predicted and true volumes (mL, predicted > 0) and difficulties."""
    v, t, d = (np.asarray(a, dtype=np.float64) for a in (predicted, true, difficulty))
    if not (v.shape == t.shape == d.shape) or v.ndim != 1 or len(v) == 0:
        raise ValueError("predicted, true and difficulty must be equal-length 1D sequences")
    keep = v > 0
    v, t, d = v[keep], t[keep], d[keep]
    s0 = float(np.median(d)) if len(d) and np.median(d) > 0 else 1e-3
    scores = np.sort((t - v) / (v * (d + s0)))
    alpha = 1.0 - level
    lo, hi = conformal_rank(len(scores), alpha / 2), conformal_rank(len(scores), 1 - alpha / 2)
    fitted = StructureCalibration(s0, float(scores[lo - 1]) if lo else None, float(scores[hi - 1]) if hi else None,
                                  level, int(len(scores)))
    if lo and hi:
        fitted.median_width = float(np.median([np.subtract(*fitted.interval(1.0, di)[::-1]) for di in d]))
    return fitted


def fit(rows: Sequence[Mapping[str, float]], structures: Sequence[str], level: float = LEVEL
        ) -> dict[str, StructureCalibration]:
    """Rows with ``<name>_pred``, ``<name>_true``, ``<name>_difficulty`` per structure -> calibration per name."""
    return {name: fit_structure([r[f"{name}_pred"] for r in rows], [r[f"{name}_true"] for r in rows],
                                [r[f"{name}_difficulty"] for r in rows], level) for name in structures}


def coverage(rows: Sequence[Mapping[str, float]], calibration: Mapping[str, StructureCalibration]
             ) -> dict[str, dict[str, float]]:
    """Empirical coverage and mean relative width (% of the predicted volume) per structure on ``rows``."""
    out = {}
    for name, cal in calibration.items():
        inside, widths = [], []
        for r in rows:
            low, high = cal.interval(r[f"{name}_pred"], r[f"{name}_difficulty"])
            inside.append(low <= r[f"{name}_true"] <= high)
            widths.append(100.0 * (high - low) / r[f"{name}_pred"] if r[f"{name}_pred"] > 0 else math.nan)
        out[name] = {"coverage": float(np.mean(inside)), "mean_width_pct": float(np.nanmean(widths)), "n": len(rows)}
    return out


def interval_columns(names: Sequence[str]) -> list[str]:
    """``volumes.csv`` columns of the intervals of ``names``: ``<name>_ml_lo95``, ``<name>_ml_hi95`` (at 95 %)."""
    return [f"{name}_ml_{side}{round(100 * LEVEL)}" for name in names for side in ("lo", "hi")]


def interval_cells(calibration: Mapping[str, StructureCalibration], volumes: Mapping[str, float],
                   difficulty: Mapping[str, float]) -> dict[str, str]:
    """The :func:`interval_columns` cells of one scan (mL, 3 decimals; ``inf`` for an unbounded side)."""
    cells = {}
    for name, cal in calibration.items():
        low, high = cal.interval(volumes[name], difficulty.get(name, 0.0))
        lo_col, hi_col = interval_columns([name])
        cells[lo_col], cells[hi_col] = f"{low:.3f}", (f"{high:.3f}" if math.isfinite(high) else "inf")
    return cells


def wide_reason(calibration: Mapping[str, StructureCalibration], volumes: Mapping[str, float],
                difficulty: Mapping[str, float]) -> list[str]:
    """QC reasons for intervals unbounded or wider than twice the calibration scans' median width."""
    return [f"wide 95 % interval for {name}" for name, cal in calibration.items()
            if name in volumes and cal.is_wide(volumes[name], difficulty.get(name, 0.0))]


def save(calibration: Mapping[str, StructureCalibration], path: str | os.PathLike, note: str = "") -> Path:
    """Write the calibration as JSON (atomically)."""
    body = {"level": next(iter(calibration.values())).level if calibration else LEVEL, "note": note,
            "structures": {name: asdict(cal) for name, cal in calibration.items()}}
    return write_atomic(Path(path), json.dumps(body, indent=2) + "\n")


def load(path: str | os.PathLike) -> dict[str, StructureCalibration]:
    """Read a calibration written by :func:`save`; :class:`InputError` for a missing or malformed file."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
        return {name: StructureCalibration(**fields) for name, fields in body["structures"].items()}
    except OSError as err:
        raise InputError(path, f"cannot read the interval calibration ({err.strerror})") from err
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not an interval calibration file ({err})") from err
