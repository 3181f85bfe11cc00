"""Calibrated volume intervals (split conformal scaled by the soft-hard gap)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrivol_monai import intervals
from mrivol_monai.errors import InputError


def _cohort(n, rng, bias=0.06):
    """Scans whose relative error grows with their difficulty: true = pred * (1 - bias + d * noise)."""
    pred = rng.uniform(800.0, 1400.0, n)
    difficulty = rng.gamma(2.0, 0.02, n)
    true = pred * (1.0 - bias + difficulty * rng.standard_normal(n))
    return [{"brain_pred": p, "brain_true": t, "brain_difficulty": d} for p, t, d in zip(pred, true, difficulty)]


def test_intervals_cover_95_percent_of_fresh_scans_and_absorb_a_systematic_bias():
    rng = np.random.default_rng(0)
    cal = intervals.fit(_cohort(200, rng), ["brain"])
    rates = [intervals.coverage(_cohort(400, rng), cal)["brain"]["coverage"] for _ in range(10)]
    assert 0.90 <= np.mean(rates) <= 0.99
    # the model over-estimates by 6 %: the interval is shifted down, not centred on the prediction
    low, high = cal["brain"].interval(1000.0, 0.04)
    assert high < 1000.0 * 1.02 and low < 940.0 < high


def test_harder_scans_get_wider_intervals():
    cal = intervals.fit(_cohort(200, np.random.default_rng(1)), ["brain"])["brain"]
    easy, hard = cal.interval(1000.0, 0.0), cal.interval(1000.0, 0.2)
    assert hard[1] - hard[0] > 2 * (easy[1] - easy[0])


def test_too_few_calibration_scans_leave_a_side_unbounded():
    cal = intervals.fit(_cohort(20, np.random.default_rng(2)), ["brain"])["brain"]
    assert cal.q_hi is None and cal.q_lo is None  # 95 % needs n >= 39
    assert cal.interval(1000.0, 0.1) == (0.0, math.inf)
    assert intervals.conformal_rank(39, 0.975) == 39 and intervals.conformal_rank(39, 0.025) == 1


def test_soft_hard_gap_is_zero_for_one_hot_and_grows_with_uncertain_boundaries():
    labels = torch.zeros((6, 6), dtype=torch.long)
    labels[1:5, 1:5] = 1
    onehot = torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1).float()
    assert intervals.soft_hard_gap(onehot) == pytest.approx([0.0, 0.0])
    soft = onehot.clone()
    soft[1, 0, :] = 0.4  # a fringe of 6 voxels at p = 0.4 next to a 16-voxel structure
    soft[0, 0, :] = 0.6
    assert intervals.soft_hard_gap(soft)[1] == pytest.approx(6 * 0.4 / 16)


def test_calibration_round_trips_and_a_bad_file_is_one_line(tmp_path):
    cal = intervals.fit(_cohort(60, np.random.default_rng(3)), ["brain"])
    path = intervals.save(cal, tmp_path / "brain_intervals.json", note="test")
    assert intervals.load(path) == cal
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="bad.json.*not an interval calibration"):
        intervals.load(tmp_path / "bad.json")
