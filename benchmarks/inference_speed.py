"""End-to-end time and memory of ``mrivol predict`` on one IXI-size scan, per model and backend.

Builds an IXI-size SynthIXI scan (256x256x150 int16 .nii.gz, 0.94x0.94x1.2 mm), then times
``Predictor.segment``: load -> preprocess -> 40 slices through the net -> stack -> back onto the native
256x256x150 grid (what ``Invertd`` does) -> argmax -> volumes (mask/QC writing excluded). Each configuration
runs in its own subprocess (peak RSS of one does not hide the next): one warm-up, then ``--runs`` timed runs;
the configurations take turns for ``--rounds`` rounds and the medians pool all rounds, with the speed-up
also printed per round (paired, so the VM's drift between minutes cancels). The
network alone (all D slices of the preprocessed scan, ``--slices-per-call`` at a time) is timed too, so the
printed ratios show both the end-to-end speed-up and the network's, and how much of a scan is fixed cost.

Configurations: the default model (UNet2d, 4 ED blocks, width 16: the shipped checkpoint if present,
otherwise the same network with random weights; time does not depend on the weights) on the torch and
onnx backends, the paper-size UNet2d (5 ED blocks, width 64), and MONAI's 3D UNet (``unet3d``) on the
same pipeline with the grid resized to 48x128x128 (its 4 stride-2 levels need sides divisible by 16).
For the subcortical task: the grid model alone (``subcortical-grid-torch``, 5 classes back on the native grid)
and both stages (``two-stage-torch``: grid model -> where the deep grey matter is -> 1 mm 88x96x96 box ->
2.5D stage-2 UNet -> 11 left/right classes back on the native grid; :mod:`mrivol_monai.two_stage`), with the
shipped checkpoints when present, else the same networks with random weights. "net s" of the two-stage row
is stage 2's network on its box.

    python benchmarks/inference_speed.py            # 3 rounds x 5 runs each
    python benchmarks/inference_speed.py --rounds 5 --runs 3 --threads 2
    python benchmarks/inference_speed.py --compare-threads   # default model: 1 thread vs mrivol's vs torch's default

``--compare-threads`` times the default torch configuration three ways, in turns: one thread, the thread count
``mrivol predict`` picks by default (``mrivol_monai.predict.default_threads``: the cores the load average
leaves idle) and torch's own default (one per core); ``OMP_NUM_THREADS`` is removed from the workers'
environment so that it does not decide for them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mrivol_monai.predict import SLICES_PER_CALL

CONFIGS = {
    "default-torch": ("default", "torch"),
    "default-onnx": ("default", "onnx"),
    "paper-unet-torch": ("paper", "torch"),
    "unet3d-torch": ("unet3d", "torch"),
    "subcortical-grid-torch": ("subcortical", "torch"),
    "two-stage-torch": ("two_stage", "torch"),
}
NETWORKS = {
    "default": {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 4, "width": 16},
    "paper": {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 5, "width": 64},
}


def make_scan(folder: Path, seed: int) -> Path:
    """Write (once) the IXI-geometry SynthIXI subject 1 of ``seed`` as int16 NIfTI; return its path."""
    import nibabel as nib
    import numpy as np

    from mrivol_monai.data.synthetic import generate_subject

    path = folder / f"ixi_size_seed{seed}.nii.gz"
    if not path.exists():
        subject = generate_subject(1, "Guys", seed=seed, geometry="ixi")
        image = nib.Nifti1Image(subject.image.astype(np.int16), subject.affine)
        image.set_qform(subject.affine, code=1)
        image.set_sform(subject.affine, code=1)
        tmp = folder / f".{path.name}.tmp.nii.gz"
        nib.save(image, tmp)
        os.replace(tmp, path)
    return path


def build_predictor(model: str, backend: str, seed: int, slices_per_call: int | None):
    """The Predictor of one configuration (and its parameter count)."""
    import torch
    from monai.inferers import SimpleInferer

    from mrivol_monai.networks import build, count_parameters
    from mrivol_monai.predict import Predictor
    from mrivol_monai.weights import build_network, default_checkpoint, load_model, task_spec

    torch.manual_seed(seed)
    if model == "default" and default_checkpoint("brain").is_file():
        net, _ = load_model(None, "brain")
        return Predictor.from_model(None, "brain", backend, slices_per_call=slices_per_call), count_parameters(net), \
            "shipped"
    if model == "subcortical":
        net, _ = load_model(None, "subcortical")
        return Predictor.from_model(None, "subcortical", backend, slices_per_call=slices_per_call), \
            count_parameters(net), "shipped"
    if model == "two_stage":
        from mrivol_monai.two_stage import FINE_TASK, FineSegmenter, TwoStagePredictor

        stage1 = Predictor.from_model(None, "subcortical", backend, slices_per_call=slices_per_call)
        if default_checkpoint(FINE_TASK).is_file():
            stage2, weights = FineSegmenter.from_model(None), "shipped"
        else:
            from mrivol_monai.deep_grey_box import BOX_SIZE, NUM_CLASSES

            spec = task_spec(FINE_TASK, {**NETWORKS["default"], "in_channels": 3, "out_channels": NUM_CLASSES},
                             spatial_size=list(BOX_SIZE))
            stage2, weights = FineSegmenter(build_network(spec.network_def).eval(), spec), "random stage 2"
        return TwoStagePredictor(stage1, stage2), count_parameters(stage1.network) + \
            count_parameters(stage2.network), weights
    if model == "unet3d":
        net = build("unet3d", in_channels=1, out_channels=2).eval()
        predictor = Predictor(net, task_spec("brain", spatial_size=[48, 128, 128]))
        predictor.inferer = SimpleInferer()  # the whole (1, 1, 48, 128, 128) volume in one call
        return predictor, count_parameters(net), "random"
    spec = task_spec("brain", NETWORKS[model])
    net = build_network(spec.network_def).eval()
    if backend == "onnx":
        from mrivol_monai.export import OnnxSegmenter, onnx_from_network

        return Predictor(OnnxSegmenter(onnx_from_network(net, spec).SerializeToString()), spec, "onnx",
                         slices_per_call), count_parameters(net), "random"
    return Predictor(net, spec, slices_per_call=slices_per_call), count_parameters(net), "random"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. VmHWM (Linux) starts afresh at exec; ``ru_maxrss`` does not:
    it keeps the peak of the parent this worker was forked from (the one that generated the scan)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name: str, scan: Path, runs: int, threads: int | str | None, seed: int, slices_per_call: int | None) -> dict:
    """Time one configuration in this process; returns the figures as a dict. ``net_s``: the network alone
    on the preprocessed (1, D, H, W) image (all slices), timed after the end-to-end runs. ``threads``: a count,
    ``"mrivol"`` (what ``mrivol predict`` picks by default) or ``"torch"``/None (torch's default)."""
    import torch

    if threads == "mrivol":
        from mrivol_monai.predict import default_threads

        torch.set_num_threads(default_threads()[0])
    elif threads and threads != "torch":
        torch.set_num_threads(int(threads))
    model, backend = CONFIGS[name]
    predictor, params, weights = build_predictor(model, backend, seed, slices_per_call)
    seconds = []
    for i in range(runs + 1):  # the first run warms up allocators and the onnxruntime session
        start = time.perf_counter()
        seg = predictor.segment(scan)
        elapsed = time.perf_counter() - start
        if i:
            seconds.append(elapsed)
    rss_mb = peak_rss_mb()
    if hasattr(predictor, "stage2"):  # two stages: stage 2's network on its box
        from mrivol_monai.two_stage import STAGE1_CENTRE_CLASSES, stage1_centre

        image, affine, found = predictor.stage1.region(scan, STAGE1_CENTRE_CLASSES)
        box_input = predictor.stage2.box_input(image, affine, stage1_centre(found, affine, str(scan)))[0]
        run_network = lambda: predictor.stage2.probabilities(box_input)  # noqa: E731
    else:
        image = predictor.model_input(scan)[0]
        run_network = lambda: predictor.logits(image)  # noqa: E731
    net_seconds = []
    for i in range(runs + 1):
        start = time.perf_counter()
        run_network()
        if i:
            net_seconds.append(time.perf_counter() - start)
    return {"config": name, "params": params, "weights": weights, "seconds": seconds, "net_seconds": net_seconds,
            "peak_rss_mb": rss_mb, "brain_ml": round(next(iter(seg.volumes.values())), 1),
            "mask_shape": list(seg.mask.shape), "threads": torch.get_num_threads(),
            "load_average": round(os.getloadavg()[0], 2)}


def pool(rounds: list[dict]) -> dict:
    """One configuration's figures over its rounds: medians of all timed runs, the largest peak RSS."""
    seconds = [t for r in rounds for t in r["seconds"]]
    return {**rounds[0], "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "net_s": statistics.median([t for r in rounds for t in r["net_seconds"]]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds), "rounds": len(rounds)}


def run_config(name: str, scan: Path, args: argparse.Namespace, threads: str | None = None) -> dict:
    threads = threads or (str(args.threads) if args.threads else None)
    command = [sys.executable, __file__, "--worker", name, "--scan", str(scan), "--runs", str(args.runs),
               "--seed", str(args.seed), "--slices-per-call", str(args.slices_per_call)] + \
        (["--threads", threads] if threads else [])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args.compare_threads:
        env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


THREAD_SETTINGS = {"1": "1 thread", "mrivol": "mrivol default", "torch": "torch default"}


def compare_threads(scan: Path, args: argparse.Namespace) -> None:
    """Print the default torch configuration's time per scan with 1 thread, mrivol's and torch's default."""
    rounds = {key: [] for key in THREAD_SETTINGS}
    for _ in range(args.rounds):
        for key in THREAD_SETTINGS:
            rounds[key].append(run_config("default-torch", scan, args, key))
    print(f"scan: 256x256x150 int16 SynthIXI (seed {args.seed}); default model, torch backend; {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds x {args.runs} timed runs per setting, settings in turn, each in its own process")
    print("| threads | torch threads used | load average (1 min) at the end of each round | median s/scan | "
          "min-max s | network alone s |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    base = statistics.median([t for r in rounds["1"] for t in r["seconds"]])
    for key, label in THREAD_SETTINGS.items():
        row = pool(rounds[key])
        used = ", ".join(str(r["threads"]) for r in rounds[key])
        loads = ", ".join(f"{r['load_average']:.1f}" for r in rounds[key])
        print(f"| {label} | {used} | {loads} | {row['median_s']:.2f} ({row['median_s'] / base:.2f}x 1 thread) | "
              f"{row['min_s']:.2f}-{row['max_s']:.2f} | {row['net_s']:.2f} |")


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["config"] == "default-torch")["median_s"]
    lines = ["| configuration | parameters | median s/scan | min-max s | network alone s | peak RSS MB | "
             "x default-torch time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['params']:,} | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | "
                     f"{r['net_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['median_s'] / base:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per configuration and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which every configuration runs once, in turn (medians over all runs)")
    parser.add_argument("--threads", default=None,
                        help="torch intra-op threads: a number, 'mrivol' (mrivol predict's default) or 'torch' "
                             "(default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="SynthIXI seed of the scan and network init seed")
    parser.add_argument("--workdir", default=None, help="where the scan is written (default: a temp folder)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--slices-per-call", type=int, default=SLICES_PER_CALL,
                        help="slices per network call (0: all 40 at once); trades peak RSS for speed")
    parser.add_argument("--compare-threads", action="store_true",
                        help="time the default torch configuration with 1 thread, mrivol's default and torch's")
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1:
        parser.error("--runs and --rounds must be >= 1")
    if args.slices_per_call < 0:
        parser.error("--slices-per-call must be >= 0 (0: all slices at once)")
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.scan), args.runs, args.threads, args.seed,
                                args.slices_per_call or None)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            scan = make_scan(folder, args.seed)
        except OSError as err:
            raise SystemExit(f"error: {folder}: cannot write the benchmark scan there ({err.strerror or err})") from None
        if args.compare_threads:
            compare_threads(scan, args)
            return 0
        # configurations take turns, round after round, so that the machine's speed drift (~10 % over
        # minutes on this VM) falls on all of them alike instead of on whichever ran last
        rounds = {name: [] for name in args.configs}
        for _ in range(args.rounds):
            for name in args.configs:
                rounds[name].append(run_config(name, scan, args))
    rows = [pool(rounds[name]) for name in args.configs]
    print(f"scan: 256x256x150 int16 SynthIXI (seed {args.seed}); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end; {args.rounds} rounds x {args.runs} timed runs (after 1 warm-up) "
          f"per configuration, each in its own process, configurations in turn; "
          f"{args.slices_per_call or 'all'} slices per network call")
    print(table(rows))
    by = {r["config"]: r["median_s"] for r in rows}
    net = {r["config"]: r["net_s"] for r in rows}
    pairs = [("default-onnx", "default-torch")] + [(fast, big) for big in ("paper-unet-torch", "unet3d-torch")
                                                   for fast in ("default-torch", "default-onnx")]
    for fast, slow in pairs:
        if fast in by and slow in by:
            paired = [statistics.median(b["seconds"]) / statistics.median(a["seconds"])
                      for a, b in zip(rounds[fast], rounds[slow])]
            print(f"{fast} takes {by[fast] / by[slow]:.2f}x the time of {slow} ({by[slow] / by[fast]:.1f}x speed-up "
                  f"end to end, {net[slow] / net[fast]:.1f}x for the network alone; per round "
                  f"{', '.join(f'{r:.1f}x' for r in paired)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
