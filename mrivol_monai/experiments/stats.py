"""Paired statistics for the study's comparisons: per-subject differences on the same test subjects, the
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), Holm's step-down correction across the comparisons of one
experiment, an equivalence test (two one-sided Wilcoxon tests against a declared margin, TOST), and the
Hodges-Lehmann median difference with its exact distribution-free confidence interval.

Holm and the Hodges-Lehmann interval are written here (a few lines each) because scipy has neither and
statsmodels is not a dependency of the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["PairedResult", "holm", "hodges_lehmann", "paired", "signed_rank_counts", "tost_p", "wilcoxon_p"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest of m p-values is multiplied by (m - i + 1),
    made non-decreasing along the sorted order and capped at 1. NaN p-values stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def signed_rank_counts(n: int) -> np.ndarray:
    """Number of sign patterns of ranks 1..n giving each value t = 0 .. n(n+1)/2 of the signed-rank statistic T+
    (its exact null distribution is counts / 2**n), by adding one rank at a time."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=object)  # Python ints: 2**n overflows int64 past n = 62
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return counts


def hodges_lehmann(d: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Paired differences (N,) -> (estimate, low, high): the median of the N(N+1)/2 Walsh averages
    (d_i + d_j) / 2, i <= j, and the distribution-free interval [W_(k), W_(M+1-k)] of the sorted Walsh averages,
    k the largest rank with P(T+ <= k - 1) <= (1 - confidence) / 2 under the exact null of T+ (coverage at
    least ``confidence`` for continuous, untied differences; with ties it is approximate). When N is too small
    for that (N <= 5 at 95 %) the interval is (-inf, inf)."""
    x = np.asarray([v for v in d if math.isfinite(v)], dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    i, j = np.triu_indices(n)
    walsh = np.sort((x[i] + x[j]) / 2.0)
    estimate = float(np.median(walsh))
    cdf = np.cumsum(signed_rank_counts(n)) / 2 ** n
    k = int(np.sum(np.asarray(cdf, dtype=np.float64) <= (1.0 - confidence) / 2.0))  # P(T+ <= k - 1) <= alpha/2
    if k == 0:
        return estimate, -math.inf, math.inf
    return estimate, float(walsh[k - 1]), float(walsh[walsh.size - k])


def wilcoxon_p(d: Sequence[float], alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of paired differences ``d`` (zero differences dropped, scipy's default);
    1.0 when every difference is zero (no evidence of any shift), NaN with no differences."""
    x = np.asarray([v for v in d if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan
    if not np.any(x != 0):
        return 1.0
    return float(sps.wilcoxon(x, alternative=alternative).pvalue)


def tost_p(d: Sequence[float], margin: float) -> float:
    """Equivalence p-value of paired differences ``d`` within (-margin, margin): the larger of the one-sided
    Wilcoxon p-values of 'd + margin > 0' and 'd - margin < 0' (two one-sided tests). Small means the
    difference is shown to lie inside the margin."""
    if not margin > 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    x = np.asarray([v for v in d if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan
    return max(wilcoxon_p(x + margin, "greater"), wilcoxon_p(x - margin, "less"))


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison: ``n`` subjects, Hodges-Lehmann ``effect`` with its 95 % interval, the two-sided
    Wilcoxon ``p_difference`` and the TOST ``p_equivalence`` (both before any multiplicity correction)."""

    n: int
    effect: float
    ci_low: float
    ci_high: float
    p_difference: float
    p_equivalence: float


def paired(d: Sequence[float], margin: float) -> PairedResult:
    """Paired differences (N,) (one per test subject) and the declared equivalence margin -> :class:`PairedResult`."""
    x = [float(v) for v in d if math.isfinite(v)]
    est, low, high = hodges_lehmann(x)
    return PairedResult(len(x), est, low, high, wilcoxon_p(x), tost_p(x, margin))
