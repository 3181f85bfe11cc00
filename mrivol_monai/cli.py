"""``mrivol``: segment new scans and report volumes, export models, package trained weights.

    mrivol predict INPUT... --out DIR [--task brain|subcortical] [--model PATH] [--fine-model PATH]
                   [--backend torch|onnx] [--threads N] [--trust-bundle] [--series ID]
                   [--shard K/N] [--overwrite] [--layout flat|bids]
    torchrun --nproc_per_node=N -m mrivol_monai predict INPUT... --out DIR   (the scans split over N processes)
    mrivol export --format torchscript|onnx --out FILE [--task T] [--model PATH] [--trust-bundle]
    mrivol export-weights --task T --checkpoint bundle/models/model.pt [--config bundle/configs/train.json ...]
    mrivol bundle-model [--task T] [--bundle DIR]

``predict`` takes NIfTI files, folders, DICOM series folders and BIDS dataset roots; besides masks it writes
``volumes.csv`` (one row per scan, a ``qc`` column), a JSON per scan and ``report.html``; ``--layout bids`` names
the outputs as BIDS derivatives. It first says on stderr which model it uses (file, task, network, how it was
trained) and how many threads. Checkpoints are read with ``torch.load(weights_only=True)``. A bundle folder
given as ``--model`` is described by the literal values of its ``configs/train.json``; a bundle is code, and its
``$`` expressions run only with ``--trust-bundle``.

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
EXPORT_TASKS = TASKS + ("subcortical_fine",)  # the stage-2 model is exported and shipped on its own
TRUST_HELP = ("a bundle is code: let --model BUNDLE_DIR run the $ expressions of its configs when they are needed "
              "to describe the network (only for bundles you trust)")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``mrivol`` (sub-commands ``predict``, ``export``, ``export-weights``, ``bundle-model``)."""
    from mrivol_monai.export import FORMATS
    from mrivol_monai.predict import BACKENDS, LAYOUTS

    top = argparse.ArgumentParser(prog="mrivol", description="Brain-structure volumes (mL) from 3D T1 MRI.")
    sub = top.add_subparsers(dest="command", required=True)

    pred = sub.add_parser("predict", help="segment scans: native-space masks, volumes.csv, QC pictures")
    pred.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="NIfTI files, folders of them, DICOM series folders, or BIDS dataset roots "
                           "(their sub-*/[ses-*/]anat/*_T1w.nii[.gz] scans)")
    pred.add_argument("--out", required=True, help="output folder (masks, QC PNGs, volumes.csv)")
    pred.add_argument("--task", choices=TASKS, default=None,
                      help="structures to segment (default: the model's task; brain for the shipped default)")
    pred.add_argument("--model", default=None,
                      help="checkpoint (.pt), bundle folder, or .onnx file (default: the shipped model of --task)")
    pred.add_argument("--fine-model", default=None,
                      help="stage-2 checkpoint of --task subcortical (1 mm left/right box; default: the shipped "
                           "one when present, with the shipped grid model as stage 1)")
    pred.add_argument("--backend", choices=BACKENDS, default="torch")
    pred.add_argument("--threads", type=int, default=None,
                      help="torch/onnx threads (default: OMP_NUM_THREADS if set, else the cores the load average "
                           "leaves idle, at least 1)")
    pred.add_argument("--trust-bundle", action="store_true", help=TRUST_HELP)
    pred.add_argument("--series", default=None, metavar="ID",
                      help="for DICOM folders holding several series: the one to measure (its SeriesInstanceUID "
                           "or the start of it; without it such a folder is refused with the list of its series)")
    pred.add_argument("--no-qc", action="store_true", help="skip the QC PNGs")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    pred.add_argument("--shard", default=None, metavar="K/N",
                      help="segment only shard K of N (0 <= K < N; every N-th scan from the K-th), e.g. "
                           "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; under torchrun each rank "
                           "further takes its share of that shard")
    pred.add_argument("--layout", choices=LAYOUTS, default="flat",
                      help="flat: every file in --out (default); bids: BIDS-derivatives folders and names "
                           "(sub-X/[ses-Y/]anat/sub-X[_ses-Y]_space-orig_dseg.nii.gz, dseg.tsv, "
                           "dataset_description.json)")
    pred.add_argument("--overwrite", action="store_true",
                      help="redo scans that already have a row in volumes.csv and a mask (default: skip them)")

    exp = sub.add_parser("export", help="export a model to TorchScript or ONNX")
    exp.add_argument("--format", choices=FORMATS, required=True)
    exp.add_argument("--out", required=True, help="output file (.ts / .onnx)")
    exp.add_argument("--task", choices=EXPORT_TASKS, default=None)
    exp.add_argument("--model", default=None, help="checkpoint or bundle folder (default: the shipped model)")
    exp.add_argument("--trust-bundle", action="store_true", help=TRUST_HELP)

    wts = sub.add_parser("export-weights", help="make a trained bundle checkpoint the shipped default of a task")
    wts.add_argument("--task", choices=EXPORT_TASKS, required=True)
    wts.add_argument("--checkpoint", required=True, help="e.g. bundle/models/model.pt")
    wts.add_argument("--config", nargs="+", default=["bundle/configs/train.json"],
                     help="the config(s) it was trained with: base, then overlays")
    wts.add_argument("--out-dir", default=None, help="default: the installed package's weights folder")
    wts.add_argument("--note", default="", help="how the checkpoint was produced (recorded in the JSON)")

    bun = sub.add_parser("bundle-model", help="write the shipped weights into the bundle as models/model.pt")
    bun.add_argument("--task", choices=EXPORT_TASKS, default="brain",
                     help="brain -> models/model.pt, subcortical -> models/subcortical/model.pt, subcortical_fine "
                          "(stage 2) -> models/subcortical_fine/model.pt")
    bun.add_argument("--bundle", default=None,
                     help="bundle folder (default: '.' inside a bundle, 'bundle' from the repository root)")
    return top


def _predict(args: argparse.Namespace) -> int:
    import itk

    import torch

    from mrivol_monai.predict import default_threads, model_line, predict, summary_line
    from mrivol_monai.two_stage import predictor_for

    itk.ProcessObject.SetGlobalWarningDisplay(False)  # unreadable DICOM gets our one-line error instead
    threads, why = default_threads(args.threads)
    torch.set_num_threads(threads)
    predictor = predictor_for(args.model, args.task, args.backend, args.fine_model, threads=threads,
                              trust_bundle=args.trust_bundle, series=args.series)
    result = predict(args.inputs, args.out, predictor=predictor, qc=not args.no_qc, progress=not args.quiet,
                     shard=_shard(args.shard), overwrite=args.overwrite, layout=args.layout,
                     header=[*(predictor.model_lines() if hasattr(predictor, "model_lines") else [model_line(predictor)]),
                             f"threads: {threads} ({why})"])
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

    net, spec = load_model(args.model, args.task, trust_bundle=args.trust_bundle)
    path = export_model(net, spec, args.format, args.out)
    print(f"wrote {args.format} {spec.task} model ({spec.num_classes} classes) to {path}")
    return 0


def _export_weights(args: argparse.Namespace) -> int:
    from mrivol_monai.export import export_weights
    from mrivol_monai.weights import WEIGHTS_DIR

    pt, js = export_weights(args.task, args.checkpoint, args.config[0] if len(args.config) == 1 else args.config, args.out_dir or WEIGHTS_DIR, args.note)
    print(f"wrote {pt} and {js}")
    return 0


def _bundle_model(args: argparse.Namespace) -> int:
    from mrivol_monai.bundle_config import find_bundle_root
    from mrivol_monai.export import bundle_model

    path = bundle_model(args.task, args.bundle or find_bundle_root())
    print(f"wrote the shipped {args.task} model to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mrivol`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = parser().parse_args(argv)
    run = {"predict": _predict, "export": _export, "export-weights": _export_weights,
           "bundle-model": _bundle_model}[args.command]
    try:
        return run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
