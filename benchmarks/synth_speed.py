"""Time the SynthIXI generator: the default cohort (wall and CPU seconds), plus one subject per geometry.

    python benchmarks/synth_speed.py [--subjects N] [--workers W] [--skip-ixi]

Wall time depends on what else runs on the machine; CPU seconds (this process and its workers) do not,
so both are printed. Target: <= 2 s per IXI-size (256x256x150) subject on 2 cores, i.e. the default
cohort (150 subjects on IXI's grid) in <= 300 s wall on 2 free cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from mrivol_monai.data import synthetic
from mrivol_monai.data.synthetic_acquisition import GEOMETRIES


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=synthetic.DEFAULT_N_SUBJECTS)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-ixi", action="store_true", help="do not time one subject on the 256x256x150 grid")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'what':<38} {'wall s':>8} {'cpu s':>8}")
    for geometry in ("tiny", "half") + (() if args.skip_ixi else ("ixi",)):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        synthetic.generate_subject(1, "Guys", synthetic.DEFAULT_SEED, geometry)
        shape = "x".join(map(str, GEOMETRIES[geometry][0]))
        print(f"{'1 subject, ' + geometry + ' ' + shape:<38} {time.perf_counter() - wall:8.2f} "
              f"{_cpu_seconds() - cpu:8.2f}")
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        synthetic.generate_cohort(out, n_subjects=args.subjects, workers=args.workers, progress=False)
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    label = f"default cohort, {args.subjects} subjects"
    print(f"{label:<38} {wall:8.2f} {cpu:8.2f}")
    print(f"per subject: {wall / args.subjects:.2f} s wall, {cpu / args.subjects:.2f} s cpu")
    print(f"load average after: {os.getloadavg()[0]:.2f}; cpu s / 2 cores = {cpu / 2:.1f} s "
          "(the wall time on 2 otherwise idle cores)")


if __name__ == "__main__":
    main()
