"""Seconds to rewrite report.html (+ its cohort plot) for a folder of N scans: what `mrivol predict` pays per update.

    python benchmarks/report_speed.py [--rows 10 1000 10000] [--rounds 3]

Rows are made up (brain volumes, every QC picture present as an empty file, so the existence checks are real);
prints one line per size with the median of ``--rounds`` rewrites.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mrivol_monai.batch_report import write_report


def time_report(rows: int, rounds: int) -> float:
    """Median seconds of ``rounds`` rewrites of a ``rows``-scan report in a temp folder."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        table, pictures = [], {}
        for i in range(rows):
            scan = f"sub-{i:06d}"
            (out / f"{scan}_qc.png").touch()
            pictures[scan] = str(out / f"{scan}_qc.png")
            table.append({"scan": scan, "subject": f"{i:06d}", "session": "", "input": f"/data/{scan}_T1w.nii.gz",
                          "mask": str(out / f"{scan}_seg.nii.gz"), "brain_ml": f"{1000 + (i * 37) % 600:.3f}",
                          "qc": "pass" if i % 10 else "low SNR: 4.2 < 5"})
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            write_report(out, table, ["brain_ml"], pictures)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| scans in the folder | seconds per report.html rewrite (median) |")
    print("| --- | --- |")
    for rows in args.rows:
        print(f"| {rows} | {time_report(rows, args.rounds):.3f} |")


if __name__ == "__main__":
    main()
