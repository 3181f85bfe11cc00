"""One verdict per paper finding (``Experiment.findings``), from a fixed vocabulary and a written rule.

Each finding compares two variants on the same test subjects: per subject, the score (``per_subject`` of the
runs' ``result.json``) is averaged over that variant's converged runs (:mod:`.convergence`), and the paired
differences a − b, signed so that positive favours ``a``, go to :func:`.stats.paired`. Every tested finding of
an experiment adds two p-values (difference and equivalence) to one Holm family. :func:`decide` then applies
:data:`RULE_TEXT`; nothing in a verdict comes from prose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mrivol_monai.experiments.convergence import COLLAPSED, MIN_RUNS, counted, run_status
from mrivol_monai.experiments.stats import PairedResult, holm, paired
from mrivol_monai.experiments.variants import Experiment, Finding

__all__ = ["ALPHA", "MIN_RUNS", "MIN_SUBJECTS", "NOT_TESTED", "REFUTED", "REPRODUCED", "RULE_TEXT", "VOCABULARY",
           "decide", "subject_means", "verdicts", "verdicts_markdown"]

REPRODUCED, REFUTED, NOT_TESTED = "reproduced", "refuted", "not tested"
VOCABULARY = (REPRODUCED, REFUTED, NOT_TESTED)
ALPHA = 0.05
MIN_SUBJECTS = 6  # paired test subjects: the fewest with a finite 95 % Hodges-Lehmann interval
_HIGHER_IS_BETTER = {"dice": True, "vol_abs_pct": False}
_UNIT = {"dice": "Dice", "vol_abs_pct": "% volume error"}

RULE_TEXT = (
    f"Each finding compares variants a and b on the same test subjects: per subject, the score (mean foreground "
    f"3D Dice, or mean foreground |volume error| in grid voxels) is averaged over each variant's converged runs, "
    f"and the differences are signed so that a positive value favours a. Effect: Hodges-Lehmann median "
    f"difference with its exact 95 % interval. Tests: two-sided Wilcoxon signed-rank (difference) and two "
    f"one-sided Wilcoxon tests against the margin declared with the finding (equivalence, TOST); both p-values "
    f"of every tested finding of an experiment form one family, Holm-corrected. With Holm p < {ALPHA:g}: "
    f"a **'better' claim** (a beats b) is *reproduced* if the difference test is significant and the effect is "
    f"positive, *refuted* if it is significant and negative or if equivalence within the margin is shown; a "
    f"**'no gain' claim** (a and b within the margin) is *reproduced* if equivalence is shown, *refuted* if the "
    f"difference test is significant and |effect| >= margin. Anything else is *not tested (inconclusive)*. A "
    f"finding is *not tested* without a test when a variant has fewer than {MIN_RUNS} converged runs or the "
    f"variants share fewer than {MIN_SUBJECTS} test subjects; the reason names what is missing.")


def subject_means(results: Sequence[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """Runs of one variant -> {subject: mean of ``per_subject[subject][metric]`` over the runs (finite only)}."""
    sums: dict[str, list[float]] = {}
    for r in results:
        for subject, scores in (r.get("per_subject") or {}).items():
            v = scores.get(metric)
            if v is not None and math.isfinite(v):
                sums.setdefault(subject, []).append(float(v))
    return {s: sum(v) / len(v) for s, v in sums.items()}


def _runs_reason(name: str, finished: Sequence[Mapping[str, Any]], good: Sequence[Mapping[str, Any]]) -> str:
    if not finished:
        return f"{name}: not run"
    collapsed = sum(run_status(r)[0] == COLLAPSED for r in finished)
    return (f"{name}: {len(good)} of {len(finished)} runs converged ({collapsed} collapsed, "
            f"{len(finished) - len(good) - collapsed} not converged); {MIN_RUNS} needed")


def decide(finding: Finding, test: PairedResult, p_difference: float, p_equivalence: float) -> tuple[str, str]:
    """A tested finding's Holm-corrected p-values and effect -> (verdict, reason), by :data:`RULE_TEXT`."""
    different, equivalent = p_difference < ALPHA, p_equivalence < ALPHA
    effect = f"effect {test.effect:+.4g} [{test.ci_low:+.4g}, {test.ci_high:+.4g}] {_UNIT[finding.metric]}"
    tests = f"Holm p difference {p_difference:.3g}, equivalence (±{finding.margin:g}) {p_equivalence:.3g}"
    if finding.kind == "better":
        if different and test.effect > 0:
            return REPRODUCED, f"{finding.a} better: {effect}; {tests}"
        if different and test.effect < 0:
            return REFUTED, f"{finding.b} better: {effect}; {tests}"
        if equivalent:
            return REFUTED, f"equivalent within ±{finding.margin:g}: {effect}; {tests}"
    elif finding.kind == "no_gain":
        if equivalent:
            return REPRODUCED, f"equivalent within ±{finding.margin:g}: {effect}; {tests}"
        if different and abs(test.effect) >= finding.margin:
            return REFUTED, f"differ by at least the margin: {effect}; {tests}"
    else:
        raise ValueError(f"{finding.key}: unknown claim kind {finding.kind!r}; expected 'better' or 'no_gain'")
    return NOT_TESTED, f"inconclusive: {effect}; {tests}"


def verdicts(exp: Experiment, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every finding of ``exp`` judged on its finished ``results`` (``result.json`` records): one dict per
    finding with ``finding``, ``runs`` (converged a, b), ``test`` (:class:`PairedResult` or None), the Holm
    p-values, ``verdict`` (one of :data:`VOCABULARY`) and ``reason``."""
    rows, family = [], []
    for f in exp.findings:
        finished = {v: [r for r in results if r["variant"] == v] for v in (f.a, f.b)}
        good = {v: counted(runs) for v, runs in finished.items()}
        row: dict[str, Any] = {"finding": f, "runs": (len(good[f.a]), len(good[f.b])), "test": None,
                               "p_difference": math.nan, "p_equivalence": math.nan}
        missing = [_runs_reason(v, finished[v], good[v]) for v in (f.a, f.b) if len(good[v]) < MIN_RUNS]
        if missing:
            row.update(verdict=NOT_TESTED, reason="; ".join(missing))
            rows.append(row)
            continue
        a, b = subject_means(good[f.a], f.metric), subject_means(good[f.b], f.metric)
        subjects = sorted(set(a) & set(b))
        if len(subjects) < MIN_SUBJECTS:
            row.update(verdict=NOT_TESTED, reason=f"{len(subjects)} test subjects scored by both variants; "
                                                  f"{MIN_SUBJECTS} needed")
            rows.append(row)
            continue
        sign = 1.0 if _HIGHER_IS_BETTER[f.metric] else -1.0
        row["test"] = paired([sign * (a[s] - b[s]) for s in subjects], f.margin)
        family += [(len(rows), "p_difference", row["test"].p_difference),
                   (len(rows), "p_equivalence", row["test"].p_equivalence)]
        rows.append(row)
    for (i, key, _), adjusted in zip(family, holm([p for _, _, p in family])):
        rows[i][key] = adjusted
    for row in rows:
        if row["test"] is not None:
            row["verdict"], row["reason"] = decide(row["finding"], row["test"], row["p_difference"],
                                                   row["p_equivalence"])
    return rows


def _num(x: float, fmt: str = "+.4g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def verdicts_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The verdict table of one experiment (Markdown lines), one row per finding."""
    if not rows:
        return []
    lines = ["| Finding | Paper's claim | a vs b | Margin | Converged runs a/b | Subjects | Effect [95% CI] "
             "| Holm p (difference) | Holm p (equivalence) | Verdict | Why |",
             "| " + " | ".join(["---"] * 11) + " |"]
    for row in rows:
        f, t = row["finding"], row["test"]
        effect = "n/a" if t is None else f"{_num(t.effect)} [{_num(t.ci_low)}, {_num(t.ci_high)}]"
        kind = "better" if f.kind == "better" else "no gain"
        lines.append("| " + " | ".join([
            f.key, f"{f.claim} ({kind}, {_UNIT[f.metric]})", f"{f.a} vs {f.b}", f"±{f.margin:g}",
            f"{row['runs'][0]}/{row['runs'][1]}", "n/a" if t is None else str(t.n), effect,
            _num(row["p_difference"], ".3g"), _num(row["p_equivalence"], ".3g"), f"**{row['verdict']}**",
            row["reason"]]) + " |")
    return lines + [""]
