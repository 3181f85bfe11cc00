"""Cohort throughput of ``mrivol predict`` in scans per minute, one process against torchrun with several.

Writes ``--scans`` IXI-size scans (hard links to one 256x256x150 int16 SynthIXI scan, as
``benchmarks/inference_speed.py`` makes it; the work per scan does not depend on its content), then times the
whole command, start-up included, into a fresh output folder:

- 1 process: ``mrivol predict DIR --out OUT`` with ``--threads`` torch threads (default: all CPUs);
- N processes: ``torchrun --standalone --nproc_per_node=N -m mrivol_monai predict DIR --out OUT`` with
  CPUs / N threads each, so the processes do not fight over cores.

Both write masks, QC pictures and ``volumes.csv`` (``--no-qc`` to skip the pictures); the table shows
scans per minute end to end and the median seconds per scan inside each process.

    python benchmarks/cohort_throughput.py                 # 20 scans, 1 and 2 processes, 2 rounds
    python benchmarks/cohort_throughput.py --scans 40 --procs 1 2 4 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import make_scan  # noqa: E402  (a sibling benchmark script, not a package)


def make_cohort(folder: Path, scans: int, seed: int) -> Path:
    """``scans`` hard links (copies where links fail) of one IXI-size scan in ``folder/scans``."""
    source = make_scan(folder, seed)
    cohort = folder / "scans"
    cohort.mkdir(exist_ok=True)
    for i in range(scans):
        target = cohort / f"scan{i:04d}.nii.gz"
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return cohort


def run(procs: int, cohort: Path, out: Path, cpus: int, qc: bool) -> dict:
    """One timed command with ``procs`` processes; returns wall seconds and the medians each process printed."""
    shutil.rmtree(out, ignore_errors=True)
    threads = max(1, cpus // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    args = ["predict", str(cohort), "--out", str(out), "--quiet"] + ([] if qc else ["--no-qc"])
    if procs == 1:
        command = [sys.executable, "-m", "mrivol_monai", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   f"--nproc_per_node={procs}", "-m", "mrivol_monai", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {procs} process(es) failed:\n{done.stderr[-2000:]}")
    with open(out / "volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    medians = [float(m) for m in re.findall(r"median ([0-9.]+) s/scan", done.stdout)]
    return {"wall": wall, "rows": len(rows), "unique": len({r["scan"] for r in rows}), "medians": medians,
            "threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--rounds", type=int, default=2, help="each process count runs once per round, in turn")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="threads shared out over processes")
    parser.add_argument("--no-qc", action="store_true", help="skip the QC PNGs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where scans and outputs go (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        cohort = make_cohort(root, args.scans, args.seed)
        results: dict[int, list[dict]] = {p: [] for p in args.procs}
        for _ in range(args.rounds):
            for procs in args.procs:
                result = run(procs, cohort, root / f"out{procs}", args.cpus, not args.no_qc)
                if result["rows"] != args.scans or result["unique"] != args.scans:
                    raise SystemExit(f"error: {procs} process(es) wrote {result['rows']} rows "
                                     f"({result['unique']} scans) for {args.scans} scans")
                results[procs].append(result)
    print(f"{args.scans} IXI-size scans (256x256x150 int16), {'no ' if args.no_qc else ''}QC pictures; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; wall time of the whole "
          f"command (start-up included), median of {args.rounds} round(s)")
    print("| processes | threads each | wall s | scans/min | median s/scan in a process | rows in volumes.csv |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for procs in args.procs:
        runs = results[procs]
        wall = statistics.median(r["wall"] for r in runs)
        per_scan = statistics.median(m for r in runs for m in r["medians"]) if runs[0]["medians"] else float("nan")
        rate = 60.0 * args.scans / wall
        base = base or rate
        print(f"| {procs} | {runs[0]['threads']} | {wall:.1f} | {rate:.1f} ({rate / base:.2f}x) | {per_scan:.2f} | "
              f"{runs[-1]['rows']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
