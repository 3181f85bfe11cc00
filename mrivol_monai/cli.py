"""``mrivol``: segment new scans and report volumes, export models, package trained weights.

    mrivol predict INPUT... --out DIR [--task brain|subcortical] [--model PATH] [--backend torch|onnx]
                                      [--shard K/N] [--overwrite]
    torchrun --nproc_per_node=N -m mrivol_monai predict INPUT... --out DIR   (the scans split over N processes)
    mrivol export --format torchscript|onnx --out FILE [--task T] [--model PATH]
    mrivol export-weights --task T --checkpoint bundle/models/model.pt [--config bundle/configs/train.json]

Bad input prints ``error: <file>: <problem>`` on stderr (no traceback); the exit status is 1 if any scan
failed, 2 if nothing could run (bad model, output folder, options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mrivol_monai.errors import InputError

__all__ = ["main", "parser"]

TASKS = ("brain", "subcortical")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``mrivol`` (sub-commands ``predict``, ``export``, ``export-weights``)."""
    from mrivol_monai.export import FORMATS
    from mrivol_monai.predict import BACKENDS

    top = argparse.ArgumentParser(prog="mrivol", description="Brain-structure volumes (mL) from 3D T1 MRI.")
    sub = top.add_subparsers(dest="command", required=True)

    pred = sub.add_parser("predict", help="segment scans: native-space masks, volumes.csv, QC pictures")
    pred.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="NIfTI files, folders of them, or DICOM series folders")
    pred.add_argument("--out", required=True, help="output folder (masks, QC PNGs, volumes.csv)")
    pred.add_argument("--task", choices=TASKS, default=None,
                      help="structures to segment (default: the model's task; brain for the shipped default)")
    pred.add_argument("--model", default=None,
                      help="checkpoint (.pt), bundle folder, or .onnx file (default: the shipped model of --task)")
    pred.add_argument("--backend", choices=BACKENDS, default="torch")
    pred.add_argument("--no-qc", action="store_true", help="skip the QC PNGs")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    pred.add_argument("--shard", default=None, metavar="K/N",
                      help="segment only shard K of N (0 <= K < N; every N-th scan from the K-th), e.g. "
                           "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; under torchrun each rank "
                           "further takes its share of that shard")
    pred.add_argument("--overwrite", action="store_true",
                      help="redo scans that already have a row in volumes.csv and a mask (default: skip them)")

    exp = sub.add_parser("export", help="export a model to TorchScript or ONNX")
    exp.add_argument("--format", choices=FORMATS, required=True)
    exp.add_argument("--out", required=True, help="output file (.ts / .onnx)")
    exp.add_argument("--task", choices=TASKS, default=None)
    exp.add_argument("--model", default=None, help="checkpoint or bundle folder (default: the shipped model)")

    wts = sub.add_parser("export-weights", help="make a trained bundle checkpoint the shipped default of a task")
    wts.add_argument("--task", choices=TASKS, required=True)
    wts.add_argument("--checkpoint", required=True, help="e.g. bundle/models/model.pt")
    wts.add_argument("--config", default="bundle/configs/train.json", help="the config it was trained with")
    wts.add_argument("--out-dir", default=None, help="default: the installed package's weights folder")
    wts.add_argument("--note", default="", help="how the checkpoint was produced (recorded in the JSON)")
    return top


def _predict(args: argparse.Namespace) -> int:
    import itk

    from mrivol_monai.predict import predict, summary_line

    itk.ProcessObject.SetGlobalWarningDisplay(False)  # unreadable DICOM gets our one-line error instead
    result = predict(args.inputs, args.out, task=args.task, model=args.model, backend=args.backend,
                     qc=not args.no_qc, progress=not args.quiet, shard=_shard(args.shard), overwrite=args.overwrite)
    print(summary_line(result))
    return 1 if result.failed else 0


def _shard(text: str | None) -> tuple[int, int]:
    """``--shard K/N`` combined with this process's torchrun rank R of W -> shard (K * W + R, N * W)."""
    from mrivol_monai import distributed

    try:
        k, n = distributed.parse_shard(text) if text else (0, 1)
        rank, world = distributed.rank(), distributed.world_size()
    except ValueError as err:
        raise InputError(None, str(err)) from None
    return k * world + rank, n * world


def _export(args: argparse.Namespace) -> int:
    from mrivol_monai.export import export_model
    from mrivol_monai.weights import load_model

    net, spec = load_model(args.model, args.task)
    path = export_model(net, spec, args.format, args.out)
    print(f"wrote {args.format} {spec.task} model ({spec.num_classes} classes) to {path}")
    return 0


def _export_weights(args: argparse.Namespace) -> int:
    from mrivol_monai.export import export_weights
    from mrivol_monai.weights import WEIGHTS_DIR

    pt, js = export_weights(args.task, args.checkpoint, args.config, args.out_dir or WEIGHTS_DIR, args.note)
    print(f"wrote {pt} and {js}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mrivol`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = parser().parse_args(argv)
    run = {"predict": _predict, "export": _export, "export-weights": _export_weights}[args.command]
    try:
        return run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
