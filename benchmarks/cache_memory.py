"""Peak RSS of the training job against cohort size, per ``dataset_cache`` setting (memory / disk / none).

For each cohort size a SynthIXI cohort is generated once (``--geometry``, default ``tiny``: 40x40x30 scans;
every volume is resampled to the bundle's 40x128x128 grid, so what a cache holds per subject is what it holds
for IXI-size scans), then the real bundle training runs for one epoch in its own process
(``monai.bundle run training`` with the cohort, one epoch and the given cache) and reports its peak resident
memory (VmHWM). With ``disk`` the cache folder starts empty, so the run includes filling it.

Peak RSS varies by ~150 MB between identical runs (allocator, thread timing), so ``--repeats`` runs each
configuration several times in turn and the table shows the lowest and highest peak.

    python benchmarks/cache_memory.py                       # 16 and 128 subjects, memory and disk, 2 repeats
    python benchmarks/cache_memory.py --subjects 16 64 --caches memory disk none --workdir /tmp/cachebench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundle" / "configs" / "train.json"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM: starts afresh at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_cohort(folder: Path, subjects: int, geometry: str, seed: int) -> Path:
    """Generate (once) ``subjects`` SynthIXI subjects in ``folder`` and their brain datalist; returns the datalist."""
    from mrivol_monai.data import manifests, synthetic

    datalist = folder / "datalist_brain.json"
    if not datalist.exists():
        synthetic.generate_cohort(folder, n_subjects=subjects, seed=seed, geometry=geometry, workers=1,
                                  progress=False)
        manifests.write_manifest(manifests.build_manifest(folder, task="brain", seed=seed), datalist)
    return datalist


def worker(cohort: Path, cache: str, run_dir: Path, width: int) -> dict:
    """One epoch of the bundle's training in this process; returns counts, seconds and peak RSS."""
    from monai.bundle import run

    start = time.perf_counter()
    run("training", config_file=str(TRAIN), dataset_dir=str(cohort), datalist=str(cohort / "datalist_brain.json"),
        ckpt_dir=str(run_dir / "models"), output_dir=str(run_dir / "logs"), cache_dir=str(run_dir / "cache"),
        dataset_cache=cache, epochs=1, cache_workers=1, **{"network_def#width": width})
    seconds = time.perf_counter() - start
    split = json.loads((cohort / "datalist_brain.json").read_text())
    return {"cache": cache, "train": len(split["training"]), "validation": len(split["validation"]),
            "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[16, 128], help="cohort sizes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (taken in turn)")
    parser.add_argument("--caches", nargs="+", choices=("memory", "disk", "none"), default=["memory", "disk"])
    parser.add_argument("--geometry", default="tiny", help="SynthIXI grid of the scans (tiny, half, ixi)")
    parser.add_argument("--width", type=int, default=8, help="network width (memory of the net is not the point)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where cohorts and runs go (default: a temp folder)")
    parser.add_argument("--worker", nargs=3, metavar=("COHORT", "CACHE", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        cohort, cache, run_dir = args.worker
        print(json.dumps(worker(Path(cohort), cache, Path(run_dir), args.width)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        results = []
        for n in args.subjects:
            (root / f"cohort{n}").mkdir(parents=True, exist_ok=True)
            make_cohort(root / f"cohort{n}", n, args.geometry, args.seed)
        for n, cache, _ in [(n, c, r) for r in range(args.repeats) for n in args.subjects for c in args.caches]:
            cohort = root / f"cohort{n}"
            run_dir = root / f"run{n}_{cache}"
            shutil.rmtree(run_dir, ignore_errors=True)
            done = subprocess.run([sys.executable, __file__, "--width", str(args.width), "--worker", str(cohort),
                                   cache, str(run_dir)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode != 0:
                raise SystemExit(f"error: {n} subjects, cache {cache} failed:\n{done.stderr[-2000:]}")
            results.append({"subjects": n, **json.loads(done.stdout.strip().splitlines()[-1])})
    print(f"one training epoch (bundle/configs/train.json, 40x128x128 grid, UNet width {args.width}), SynthIXI "
          f"{args.geometry} scans; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"| subjects | train / val volumes | dataset_cache | peak RSS MB (min-max of {args.repeats}) | seconds |")
    print("| ---: | ---: | --- | ---: | ---: |")
    peaks = {}
    for n in args.subjects:
        for cache in args.caches:
            runs = [r for r in results if r["subjects"] == n and r["cache"] == cache]
            rss = [r["peak_rss_mb"] for r in runs]
            peaks[n, cache] = (min(rss), max(rss))
            print(f"| {n} | {runs[0]['train']} / {runs[0]['validation']} | {cache} | {min(rss):.0f}-{max(rss):.0f} | "
                  f"{min(r['seconds'] for r in runs):.0f} |")
    first, last = args.subjects[0], args.subjects[-1]
    for cache in args.caches:
        if first != last:
            print(f"{cache}: peak RSS {peaks[first, cache][0]:.0f}-{peaks[first, cache][1]:.0f} MB with {first} subjects, "
                  f"{peaks[last, cache][0]:.0f}-{peaks[last, cache][1]:.0f} MB with {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
