"""Per-run ``result.json`` files -> per-variant mean, std and 95% CI over repeats, as CSV, paper-shaped
Markdown tables (tables 1-6, with the paper's numbers side by side) and one PNG plot per experiment.

Only runs that converged by :data:`mrivol_monai.experiments.convergence.RULE` enter the statistics; collapsed
and unconverged runs are counted (``n_collapsed``, ``n_not_converged``) and shown in the tables' Runs column.

The CI is Student's t interval of the mean over repeats (``scipy.stats.t``); with one repeat std and CI are
undefined (empty in the CSV, left out of the Markdown).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from mrivol_monai.experiments.convergence import COLLAPSED, CONVERGED, run_status
from mrivol_monai.experiments.runner import RESULT_FILE, resampling_floor, subject_scores
from mrivol_monai.experiments.variants import Column, Experiment, Table, get_experiment
from mrivol_monai.atomic_io import atomic_path, write_atomic

__all__ = ["METRICS", "STRUCTURE_METRICS", "describe", "load_results", "aggregate", "results_csv", "regions_csv",
           "results_markdown", "plot", "runs_cell", "write_tables"]

METRICS = ("test_dice", "val_dice", "train_dice", "vol_abs_pct_mean", "vol_abs_pct_std", "vol_signed_pct_mean",
           "vol_floor_signed_pct", "params", "train_seconds", "eval_seconds", "wall_seconds", "cpu_seconds", "epochs",
           "best_epoch", "peak_rss_mb", "n_data_points")
STRUCTURE_METRICS = ("dice", "signed_pct_mean", "abs_pct_mean", "abs_pct_std", "floor_signed_pct")
_STATS = ("mean", "std", "ci95_low", "ci95_high")
# a table column's run-level metric -> the per-structure metric it means in a per-structure table
_PER_STRUCTURE = {"test_dice": "dice", "vol_signed_pct_mean": "signed_pct_mean", "vol_abs_pct_mean": "abs_pct_mean",
                  "vol_abs_pct_std": "abs_pct_std", "vol_floor_signed_pct": "floor_signed_pct"}


def describe(values: Iterable[float | None]) -> dict[str, float]:
    """Finite values over repeats -> n, mean, sample std (ddof 1) and the 95% t-interval of the mean."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    out = {"n": float(a.size), **dict.fromkeys(_STATS, math.nan)}
    if a.size == 0:
        return out
    out["mean"] = float(a.mean())
    if a.size > 1:
        out["std"] = float(a.std(ddof=1))
        half = float(sps.t.ppf(0.975, a.size - 1)) * out["std"] / math.sqrt(a.size)
        out["ci95_low"], out["ci95_high"] = out["mean"] - half, out["mean"] + half
    return out


def load_results(exp_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``<variant>/seed<k>/result.json`` under an experiment folder (unfinished runs have none). A record
    written before ``collect`` kept per-subject scores and the resampling floor gets them from the run's
    ``eval/volumes.csv`` when that file is there."""
    out = []
    for path in sorted(Path(exp_dir).glob(f"*/seed*/{RESULT_FILE}")):
        result = json.loads(path.read_text())
        volumes = path.parent / "eval" / "volumes.csv"
        if "per_subject" not in result and volumes.is_file():
            from mrivol_monai.handlers.volume_estimation import read_volumes_csv  # lazy: pulls in torch and MONAI

            rows = read_volumes_csv(volumes)
            result["per_subject"] = subject_scores(rows)
            floors = resampling_floor(rows)
            for name, floor in floors.items():
                (result.setdefault("structures", {}).setdefault(name, {}))["floor_signed_pct"] = floor
            fg = [v for name, v in floors.items() if name != "background" and math.isfinite(v)]
            result["vol_floor_signed_pct"] = sum(fg) / len(fg) if fg else None
        out.append(result)
    return out


def aggregate(exp: Experiment, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Results of one experiment -> one record per variant that has runs, in the experiment's order:
    ``variant``, ``label``, ``n_runs`` (finished), ``n_counted`` (converged), ``n_collapsed``,
    ``n_not_converged``, ``seeds`` (of the counted runs), ``status`` {seed: (status, reason)}, ``metrics``
    {metric: describe()} and ``structures`` {structure: {metric: describe()}} over the counted runs only, ``paper``."""
    rows = []
    for v in exp.variants:
        finished = [r for r in results if r["variant"] == v.name]
        if not finished:
            continue
        status = {r["seed"]: run_status(r) for r in finished}
        mine = [r for r in finished if status[r["seed"]][0] == CONVERGED]
        names = list(dict.fromkeys(n for r in finished for n in (r.get("structures") or {})))
        n_collapsed = sum(s == COLLAPSED for s, _ in status.values())
        rows.append({
            "variant": v.name, "label": v.label, "n_runs": len(finished), "n_counted": len(mine),
            "n_collapsed": n_collapsed, "n_not_converged": len(finished) - len(mine) - n_collapsed,
            "status": dict(sorted(status.items())), "seeds": sorted(r["seed"] for r in mine),
            "metrics": {m: describe(r.get(m) for r in mine) for m in METRICS},
            "structures": {n: {m: describe((r.get("structures") or {}).get(n, {}).get(m) for r in mine)
                               for m in STRUCTURE_METRICS} for n in names},
            "paper": v.paper,
        })
    return rows


def _cell(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"


def results_csv(exp: Experiment, rows: Sequence[Mapping[str, Any]]) -> str:
    """One CSV row per variant: ``<metric>_{mean,std,ci95_low,ci95_high}`` for every metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "variant", "label", "n_runs", "n_counted", "n_collapsed", "n_not_converged",
                     "seeds"] + [f"{m}_{s}" for m in METRICS for s in _STATS])
    for row in rows:
        writer.writerow([exp.key, row["variant"], row["label"], row["n_runs"], row["n_counted"], row["n_collapsed"],
                         row["n_not_converged"], " ".join(map(str, row["seeds"]))]
                        + [_cell(row["metrics"][m][s]) for m in METRICS for s in _STATS])
    return buf.getvalue()


def regions_csv(exp: Experiment, rows: Sequence[Mapping[str, Any]]) -> str:
    """One CSV row per variant and structure (paper table 6)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "variant", "structure", "n_counted"]
                    + [f"{m}_{s}" for m in STRUCTURE_METRICS for s in _STATS])
    for row in rows:
        for name, metrics in row["structures"].items():
            writer.writerow([exp.key, row["variant"], name, row["n_counted"]]
                            + [_cell(metrics[m][s]) for m in STRUCTURE_METRICS for s in _STATS])
    return buf.getvalue()


def _duration(s: float) -> str:
    return f"{s:.0f}s" if s < 60 else f"{int(s // 60)}m{s % 60:02.0f}s"


def _params(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _fmt(kind: str, mean: float, std: float = math.nan) -> str:
    if isinstance(mean, str):
        return mean
    if mean is None or not math.isfinite(mean):
        return "n/a"
    pm = math.isfinite(std) and std > 0
    if kind == "dice":
        return f"{mean:.3f}" + (f" ± {std:.3f}" if pm else "")
    if kind == "pct":
        return f"{mean:.2f}%" + (f" ± {std:.2f}%" if pm else "")
    if kind == "params":
        return _params(mean) + (f" ± {_params(std)}" if pm else "")
    if kind == "seconds":
        return _duration(mean) + (f" ± {_duration(std)}" if pm else "")
    if kind == "mb":
        return f"{mean:.0f} MB" + (f" ± {std:.0f}" if pm else "")
    if kind == "estimate":
        return "over" if mean > 0 else "under" if mean < 0 else "exact"
    return (f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}") + (f" ± {std:.1f}" if pm else "")


def _ours(col: Column, d: Mapping[str, float]) -> str:
    if col.kind == "ci":
        return "n/a" if not math.isfinite(d["ci95_low"]) else f"[{d['ci95_low']:.3f}, {d['ci95_high']:.3f}]"
    return _fmt(col.kind, d["mean"], d["std"])


def runs_cell(row: Mapping[str, Any]) -> str:
    """'counted/finished' runs of a variant, with how many collapsed or did not converge."""
    notes = [f"{row[k]} {name}" for k, name in (("n_collapsed", "collapsed"), ("n_not_converged", "not converged"))
             if row[k]]
    return f"{row['n_counted']}/{row['n_runs']}" + (f" ({', '.join(notes)})" if notes else "")


def _table_markdown(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [r for r in rows if not table.variants or r["variant"] in table.variants]
    if table.per_structure:
        rows = [r for r in rows if len(r["structures"]) > 2]  # multi-class runs only
    if not rows:
        return []
    if table.per_structure:  # the paper's table 6 has a signed error and a direction per region
        paper_cols = [c for c in table.columns if c.paper_key in ("vol_error", "estimate")
                      and any("regions" in r["paper"] for r in rows)]
    else:
        paper_cols = [c for c in table.columns if c.paper_key and any(c.paper_key in r["paper"] for r in rows)]
    header = [table.row_header] + [c.header for c in table.columns] + [f"{c.header} (paper)" for c in paper_cols]
    lines = [f"**{table.title}**", "", "| " + " | ".join(header + ["Runs"]) + " |",
             "| " + " | ".join(["---"] * (len(header) + 1)) + " |"]
    for r in rows:
        if table.per_structure:
            regions = r["paper"].get("regions", {})
            for name, metrics in r["structures"].items():
                ours = [_ours(c, metrics[_PER_STRUCTURE[c.metric]]) if c.metric in _PER_STRUCTURE else "n/a"
                        for c in table.columns]
                ref = regions.get(name.lower())
                paper = [("n/a" if ref is None else ref[1] if c.kind == "estimate" else _fmt(c.kind, ref[0])
                          if c.paper_key == "vol_error" else "n/a") for c in paper_cols]
                lines.append("| " + " | ".join([f"{r['label']}: {name}"] + ours + paper + [runs_cell(r)]) + " |")
            continue
        ours = [_ours(c, r["metrics"][c.metric]) for c in table.columns]
        paper = [_fmt(c.kind, r["paper"][c.paper_key]) if c.paper_key in r["paper"] else "n/a" for c in paper_cols]
        lines.append("| " + " | ".join([r["label"]] + ours + paper + [runs_cell(r)]) + " |")
    return lines + [""]


def results_markdown(exp: Experiment, rows: Sequence[Mapping[str, Any]]) -> str:
    """Paper-shaped Markdown tables of one experiment: mean ± std over repeats, 95% CI, paper columns."""
    lines = [f"### {exp.key}: {exp.title}", "", exp.question, ""]
    for table in exp.tables:
        lines += _table_markdown(table, rows)
    lines += ["Cells are mean ± sample std over the converged repeats (seeds) only; Runs: converged/finished "
              "(collapsed and unconverged runs are not averaged). 95% CI is Student's t interval of the mean. "
              "Volume errors are per-run mean (and std) over test subjects of |100·(pred − true)/true| in grid "
              "voxels; 'Estimate' is the sign of the mean signed error. Resampling floor: mean signed "
              "100·(true grid − native)/native of the label itself, the error a perfect grid segmentation keeps "
              "(its sign comes from the grid's phase). Time: training wall time including validation.", ""]
    return "\n".join(lines)


def plot(exp: Experiment, rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """One PNG per experiment: bars of test Dice (E1, E4), Dice vs parameters (E2), Dice and time vs slices
    (E3), signed error per structure (E5). Error bars are the 95% CI (none with one repeat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None

    def m(r: Mapping[str, Any], key: str) -> tuple[float, tuple[float, float]]:
        """mean and (below, above) error-bar lengths of the 95% CI; a Dice CI is clipped to [0, 1]: with two
        repeats Student's t (12.7) makes it wider than the range a Dice can take."""
        d = r["metrics"][key]
        if not math.isfinite(d["ci95_high"]):
            return d["mean"], (0.0, 0.0)
        low, high = (max(0.0, d["ci95_low"]), min(1.0, d["ci95_high"])) if "dice" in key else \
            (d["ci95_low"], d["ci95_high"])
        return d["mean"], (d["mean"] - low, high - d["mean"])

    def bars(errors: Sequence[tuple[float, float]]) -> np.ndarray:
        return np.array(errors, dtype=float).T.reshape(2, -1)  # (2, N): matplotlib's asymmetric yerr

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if exp.plot == "params":
        groups = (("unet_ed", "UNet (ED blocks)"), ("fcn_ed", "FCN (ED blocks)"), ("unet_width", "UNet (width)"))
        for prefix, name in groups:
            group = [r for r in rows if r["variant"].startswith(prefix)]
            if group:
                x = [m(r, "params")[0] for r in group]
                y, e = zip(*(m(r, "test_dice") for r in group))
                ax.errorbar(x, y, yerr=bars(e), marker="o", capsize=3, label=name)
                for xi, yi, r in zip(x, y, group):
                    ax.annotate(r["label"], (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("parameters")
        ax.set_ylabel("test Dice")
        ax.legend()
    elif exp.plot == "slices":
        x = [int(r["label"]) for r in rows]
        y, e = zip(*(m(r, "test_dice") for r in rows))
        ax.errorbar(x, y, yerr=bars(e), marker="o", capsize=3, color="C0", label="test Dice")
        ax.set_xlabel("slices per volume")
        ax.set_ylabel("test Dice", color="C0")
        twin = ax.twinx()
        t, te = zip(*(m(r, "train_seconds") for r in rows))
        twin.errorbar(x, t, yerr=bars(te), marker="s", capsize=3, color="C1", label="training time")
        twin.set_ylabel("training time (s)", color="C1")
    elif exp.plot == "regions":
        multi = [r for r in rows if len(r["structures"]) > 2] or list(rows)
        names = list(multi[0]["structures"])
        width = 0.8 / len(multi)
        for i, r in enumerate(multi):
            vals = [r["structures"][n]["signed_pct_mean"] for n in names]
            ax.bar(np.arange(len(names)) + i * width, [v["mean"] for v in vals], width,
                   yerr=[v["ci95_high"] - v["mean"] if math.isfinite(v["ci95_high"]) else 0 for v in vals],
                   capsize=3, label=r["label"])
            regions = r["paper"].get("regions")
            if regions:
                ax.scatter([j + i * width for j, n in enumerate(names) if n.lower() in regions],
                           [regions[n.lower()][0] for n in names if n.lower() in regions], color="k", marker="x",
                           zorder=3, label=f"paper ({r['label']})")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.axhline(0, color="grey", lw=0.8)
        if max(abs(b.get_height()) for b in ax.patches) > 200:  # failed models err by 1000s of %: log past +-10 %
            ax.set_yscale("symlog", linthresh=10)
        ax.set_ylabel("signed volume error (%)")
        ax.legend(fontsize=8)
    else:
        y, e = zip(*(m(r, "test_dice") for r in rows))
        pos = np.arange(len(rows))
        ax.bar(pos, y, yerr=bars(e), capsize=3, label="ours")
        paper = [(i, r["paper"]["test_dice"]) for i, r in enumerate(rows) if "test_dice" in r["paper"]]
        if paper:
            ax.scatter(*zip(*paper), color="k", marker="x", zorder=3, label="paper")
        ax.set_xticks(pos, [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("test Dice")
        low = min((v for v in y if math.isfinite(v)), default=0.0)  # no counted run: every bar is NaN
        ax.set_ylim(max(0.0, low - 0.1), 1.0)
        ax.legend()
    ax.set_title(f"{exp.key}: {exp.title}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_tables(experiment: str, out: str | os.PathLike) -> list[dict[str, Any]]:
    """Aggregate ``<out>/<E>/*/seed*/result.json`` into ``results.csv``, ``regions.csv`` (multi-class runs),
    ``results.md`` and ``results.png`` in ``<out>/<E>/``. Returns the aggregated rows."""
    exp = get_experiment(experiment)
    exp_dir = Path(out) / exp.key
    rows = aggregate(exp, load_results(exp_dir))
    if not rows:
        return rows
    write_atomic(exp_dir / "results.csv", results_csv(exp, rows))
    if any(r["structures"] for r in rows):
        write_atomic(exp_dir / "regions.csv", regions_csv(exp, rows))
    write_atomic(exp_dir / "results.md", results_markdown(exp, rows))
    plot(exp, rows, exp_dir / "results.png")
    return rows
