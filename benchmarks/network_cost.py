"""Cost of segmenting one 40x128x128 volume with each 2D network, and with MONAI's 3D UNet.

For every family x ed_blocks x width: parameters, GFLOPs per 1x128x128 slice, peak RSS of the
process, and the median CPU latency to segment a 1x40x128x128 volume slice by slice with MONAI's
``SliceInferer`` (all 40 slices in one batch). The 3D reference (``unet3d``: MONAI ``UNet``,
channels 16..256, strides 2) runs on the same volume zero-padded to 48x128x128, because its four
stride-2 levels need every side divisible by 16.

Each configuration runs in its own subprocess, so the peak RSS of one does not hide the next.
GFLOPs count one multiply-add as 2 FLOPs (``torch.utils.flop_counter``); pooling, norms and
activations are not counted.

    python benchmarks/network_cost.py --quick --output docs/network_cost.md
    python benchmarks/network_cost.py --families unet --widths 16 64 --blocks 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("unet", "segnet", "fcn")
WIDTHS = (16, 32, 64)
BLOCKS = (2, 3, 4, 5, 6, 7)
QUICK_WIDTHS = (16, 64)
QUICK_BLOCKS = (2, 5, 7)
VOLUME = (40, 128, 128)
REFERENCE_3D = "unet3d"


def measure(family: str, ed_blocks: int, width: int, repeats: int, threads: int | None, seed: int) -> dict:
    """Build one network, count it, time ``repeats`` volume segmentations; runs in the worker process."""
    import torch
    from monai.inferers import SliceInferer
    from torch.utils.flop_counter import FlopCounterMode

    from mrivol_monai.networks import build, count_parameters

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if family == REFERENCE_3D:
        net = build(REFERENCE_3D, in_channels=1, out_channels=2)
        padded = tuple(-(-s // 16) * 16 for s in VOLUME)  # DivisiblePad(k=16)
        volume = torch.rand(1, 1, *padded)
        flop_input = volume

        def segment() -> torch.Tensor:
            return net(volume)

    else:
        net = build(family, in_channels=1, out_channels=2, ed_blocks=ed_blocks, width=width)
        volume = torch.rand(1, 1, *VOLUME)
        flop_input = volume[:, :, 0]
        inferer = SliceInferer(spatial_dim=0, roi_size=VOLUME[1:], sw_batch_size=VOLUME[0], progress=False)

        def segment() -> torch.Tensor:
            return inferer(volume, net)

    net.eval()
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            net(flop_input)
        flops = counter.get_total_flops()
        out = segment()  # warm-up (allocator, oneDNN kernels)
        if out.shape[-3:] != volume.shape[-3:] or out.shape[1] != 2:
            raise RuntimeError(f"{family}: output {tuple(out.shape)} for volume {tuple(volume.shape)}")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            segment()
            times.append(time.perf_counter() - start)
    return {
        "family": family,
        "ed_blocks": ed_blocks if family != REFERENCE_3D else None,
        "width": width if family != REFERENCE_3D else 16,
        "params": count_parameters(net),
        "gflops": flops / 1e9,
        "gflops_per": "volume" if family == REFERENCE_3D else "slice",
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "threads": torch.get_num_threads(),
    }


def baseline_rss_mb() -> float:
    """Peak RSS of a worker that only imports torch, MONAI and the package (subtract to get the net's share)."""
    code = (
        "import resource, torch, monai, mrivol_monai.networks, monai.inferers;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def run_worker(family: str, ed_blocks: int, width: int, args: argparse.Namespace) -> dict:
    """Measure one configuration in a fresh interpreter and return its JSON result."""
    cmd = [
        sys.executable, __file__, "--worker", family, str(ed_blocks), str(width),
        "--repeats", str(args.repeats), "--seed", str(args.seed),
    ]  # fmt: skip
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"family": family, "ed_blocks": ed_blocks, "width": width, "error": tail[0]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def human(n: int) -> str:
    """Parameter count the way the paper prints it (99.3k, 17.3M)."""
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


def table(rows: list[dict]) -> str:
    """Markdown table of worker results."""
    lines = [
        "| network | ed_blocks | width | params | GFLOPs | peak RSS (MB) | median s / volume | min s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        blocks = "-" if r.get("ed_blocks") is None else r["ed_blocks"]
        if "error" in r:
            lines.append(f"| {r['family']} | {blocks} | {r['width']} | failed: {r['error']} ||||||")
            continue
        gflops = f"{r['gflops']:.2f}" + (" (volume)" if r["gflops_per"] == "volume" else "")
        lines.append(
            f"| {r['family']} | {blocks} | {r['width']} | {human(r['params'])} ({r['params']:,}) | {gflops} "
            f"| {r['peak_rss_mb']:.0f} | {r['median_s']:.2f} | {r['min_s']:.2f} |"
        )
    return "\n".join(lines)


def report(rows: list[dict], args: argparse.Namespace, baseline: float, load: tuple, wall_s: float) -> str:
    """The whole markdown document: how it was measured, then the table."""
    import monai
    import torch

    threads = sorted({r["threads"] for r in rows if "threads" in r})
    busy = load[0][0] > 0.5  # load before the first worker started comes from other jobs
    lines = [
        "# Network cost: one 40x128x128 volume on CPU",
        "",
        f"Generated by `python benchmarks/network_cost.py {' '.join(args.argv)}` "
        f"({wall_s / 60:.1f} min wall).",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} with {', '.join(map(str, threads))} thread(s), MONAI {monai.__version__}.",
        f"- Load average (1 min) at start / end: {load[0][0]:.2f} / {load[1][0]:.2f}."
        + (
            " Other jobs were using the same cores while this ran, so the times are upper bounds"
            " and comparable with each other only roughly."
            if busy
            else ""
        ),
        "- 2D nets: `SliceInferer(spatial_dim=0, sw_batch_size=40)`, all 40 slices in one batch; "
        "GFLOPs per 1x128x128 slice. `unet3d`: MONAI `UNet(spatial_dims=3, channels=(16, 32, 64, 128, 256), "
        "strides=(2, 2, 2, 2))` on the volume zero-padded to 48x128x128; GFLOPs per volume.",
        f"- Times: median and minimum of {args.repeats} runs after one warm-up, `torch.inference_mode()`.",
        f"- Peak RSS is the whole worker process; importing torch + MONAI alone peaks at {baseline:.0f} MB.",
        "- FLOPs count a multiply-add as 2 (`torch.utils.flop_counter`); pooling, norms, activations excluded.",
        "",
        table(rows),
        "",
    ]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"widths {QUICK_WIDTHS}, ed_blocks {QUICK_BLOCKS}")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--widths", nargs="+", type=int, default=None, help=f"default {WIDTHS}")
    parser.add_argument("--blocks", nargs="+", type=int, default=None, help=f"ed_blocks, default {BLOCKS}")
    parser.add_argument("--no-3d", action="store_true", help="skip the MONAI 3D UNet reference")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and the random volume")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "ED_BLOCKS", "WIDTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if any(b < 2 for b in args.blocks or ()) or any(w < 1 for w in args.widths or ()):
        parser.error("--blocks must be >= 2 and --widths >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        family, blocks, width = args.worker
        print(json.dumps(measure(family, int(blocks), int(width), args.repeats, args.threads, args.seed)))
        return 0
    widths = args.widths or (QUICK_WIDTHS if args.quick else WIDTHS)
    blocks = args.blocks or (QUICK_BLOCKS if args.quick else BLOCKS)
    configs = [(f, b, w) for f in args.families for b in blocks for w in widths]
    if not args.no_3d:
        configs.append((REFERENCE_3D, 0, 16))
    start, load_start = time.perf_counter(), os.getloadavg()
    baseline = baseline_rss_mb()
    rows = []
    for family, b, w in configs:
        row = run_worker(family, b, w, args)
        rows.append(row)
        status = row.get("error") or f"{row['median_s']:.2f} s, {row['peak_rss_mb']:.0f} MB"
        label = family if family == REFERENCE_3D else f"{family} ed_blocks={b} width={w}"
        print(f"{label}: {status}", file=sys.stderr, flush=True)
    text = report(rows, args, baseline, (load_start, os.getloadavg()), time.perf_counter() - start)
    print(text)
    if args.output is not None:
        write_atomic(args.output, text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
