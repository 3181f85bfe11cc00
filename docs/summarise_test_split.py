"""Break an evaluation's test-site results down by held-out anatomy map and by skull / skull-stripped scans.

    python docs/summarise_test_split.py [--eval bundle/eval/brain] [--cohort bundle/data/synthixi/cohort.csv]

Reads ``volumes.csv`` written by the evaluate workflow and the cohort's ``cohort.csv`` (which records each
subject's source label map and whether it was skull-stripped) and prints a Markdown table per structure:
subjects, mean Dice, mean signed and absolute volume error in mL against the native label.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _read(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as err:
        raise SystemExit(f"error: {path}: {err.strerror or err}") from None


def summarise(eval_dir: Path, cohort_csv: Path) -> str:
    """Markdown tables (one per foreground structure) grouped by scan type and anatomy map."""
    cohort = {row["subject"]: row for row in _read(cohort_csv)}
    rows = [r for r in _read(eval_dir / "volumes.csv") if r["structure"] != "background"]
    missing = sorted({r["subject"] for r in rows} - set(cohort))
    if missing:
        raise SystemExit(f"error: {cohort_csv}: no row for {missing[0]} (evaluated on another cohort?)")
    lines = []
    for structure in dict.fromkeys(r["structure"] for r in rows):
        groups: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in rows:
            if r["structure"] != structure:
                continue
            subject = cohort[r["subject"]]
            groups["all"].append(r)
            groups["skull-stripped" if subject["skull_stripped"] == "1" else "with skull"].append(r)
            groups[f"anatomy {subject['anatomy']}"].append(r)
        lines += [f"**{structure}**", "", "| test subjects | n | Dice | signed error (mL) | abs. error (mL) |",
                  "| --- | --- | --- | --- | --- |"]
        order = ["all", "with skull", "skull-stripped"] + sorted(k for k in groups if k.startswith("anatomy"))
        for name in (k for k in order if k in groups):
            members = groups[name]
            dice = np.array([float(m["dice"]) for m in members])
            err = np.array([float(m["pct_error_ml"]) for m in members])
            lines.append(f"| {name} | {len(members)} | {dice.mean():.3f} | {err.mean():+.2f}% ± {err.std(ddof=1) if len(err) > 1 else 0:.2f}% "
                         f"| {np.abs(err).mean():.2f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=Path, default=Path("bundle/eval/brain"), help="evaluation output folder")
    parser.add_argument("--cohort", type=Path, default=Path("bundle/data/synthixi/cohort.csv"))
    args = parser.parse_args(argv)
    print(summarise(args.eval, args.cohort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
