"""Evaluate the two-stage subcortical predictor on a SynthIXI split against the native labels (what the bundle's
``configs/evaluate_two_stage.json`` runs).

For every subject of ``--split`` (default: test = IOP, held-out anatomy) in the cohort's ``cohort.csv``: run
stage 1 (grid model) and stage 2 (1 mm box) as ``mrivol predict --task subcortical`` does, then compare the
native left/right mask with the subject's ``-aseg`` file (Dice per class on the native grid) and the hard and
soft volumes with the native label volumes (signed % error). Writes ``two_stage_<split>.csv`` (one row per
subject and structure side) and ``two_stage_<split>.md`` (means per structure side) into ``--out``, and prints
the Markdown table.

    python -m mrivol_monai.two_stage_evaluation --cohort bundle/data/synthixi \
        --fine-model bundle/models/subcortical_fine/model.pt --out bundle/eval/subcortical_two_stage
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mrivol_monai import deep_grey_box as box
from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.errors import InputError
from mrivol_monai.two_stage import predictor_for

COLUMNS = ("subject", "structure", "true_ml", "hard_ml", "soft_ml", "hard_pct_error", "soft_pct_error", "dice",
           "seconds")


def cohort_subjects(cohort: str | os.PathLike, split: str) -> list[dict]:
    """The ``cohort.csv`` rows of ``split`` in the SynthIXI folder ``cohort``; :class:`InputError` (one line) for a
    missing or unreadable table, one without the columns it needs, or a split with no subject."""
    table = Path(cohort) / "cohort.csv"
    try:
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise InputError(table, f"cannot read the cohort table ({err.strerror or err}); give a SynthIXI folder") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise InputError(table, f"not a cohort table ({err})") from err
    if rows and not {"split", "subject", "image"} <= set(rows[0]):
        raise InputError(table, "not a cohort table (needs the columns subject, split, image)")
    subjects = [r for r in rows if r.get("split") == split]
    if not subjects:
        raise InputError(table, f"no {split} subjects")
    return subjects


def evaluate(cohort: Path, split: str, model: str | None, fine_model: str | None, limit: int | None = None) -> list[dict]:
    """Rows of ``two_stage_<split>.csv`` for the ``split`` subjects of ``cohort``."""
    subjects = cohort_subjects(cohort, split)[:limit]
    predictor = predictor_for(model, "subcortical", "torch", fine_model)
    if not hasattr(predictor, "stage2"):
        raise InputError(None, "no stage-2 model: pass --fine-model or ship one")
    rows = []
    for number, subject in enumerate(subjects, 1):
        start = time.perf_counter()
        seg = predictor.segment(cohort / subject["image"])
        seconds = time.perf_counter() - start
        aseg = nib.load(cohort / subject["aseg_label"])
        truth = box.fine_classes(np.asarray(aseg.dataobj))
        true_ml = box.hard_volumes_ml(truth, aseg.affine)
        for index, name in enumerate(box.CLASS_NAMES[1:], start=1):
            pred, ref = seg.mask == index, truth == index
            both = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
            dice = 2.0 * np.count_nonzero(pred & ref) / both if both else 1.0
            hard, soft, true = seg.volumes[name], seg.volumes[f"{name}_soft"], true_ml[name]
            rows.append({"subject": subject["subject"], "structure": name, "true_ml": true, "hard_ml": hard,
                         "soft_ml": soft, "hard_pct_error": 100 * (hard - true) / true if true else float("nan"),
                         "soft_pct_error": 100 * (soft - true) / true if true else float("nan"), "dice": dice, "seconds": seconds})
        print(f"[{number}/{len(subjects)}] {subject['subject']}: {seconds:.2f} s, Dice "
              + " ".join(f"{r['dice']:.2f}" for r in rows[-10:]), file=sys.stderr, flush=True)
    return rows


def summary_markdown(rows: list[dict], split: str) -> str:
    """Per structure side: mean Dice, mean signed and mean absolute % volume error (hard, soft)."""
    lines = [f"| structure ({split}, n={len({r['subject'] for r in rows})}) | Dice | hard vol. error | "
             "hard abs | soft vol. error | soft abs |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in box.CLASS_NAMES[1:]:
        sel = [r for r in rows if r["structure"] == name]
        dice = np.array([r["dice"] for r in sel])
        hard = np.array([r["hard_pct_error"] for r in sel])
        soft = np.array([r["soft_pct_error"] for r in sel])
        lines.append(f"| {name} | {dice.mean():.3f} | {hard.mean():+.1f} % ± {hard.std(ddof=1) if len(hard) > 1 else 0:.1f} "
                     f"| {np.abs(hard).mean():.1f} % | {soft.mean():+.1f} % ± {soft.std(ddof=1) if len(soft) > 1 else 0:.1f} "
                     f"| {np.abs(soft).mean():.1f} % |")
    seconds = np.array(sorted({(r["subject"], r["seconds"]) for r in rows}))[:, 1].astype(float)
    lines.append(f"\nBoth stages, median {np.median(seconds):.2f} s per scan (including reading the scan).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", default="bundle/data/synthixi")
    parser.add_argument("--split", default="test", choices=("training", "validation", "test"))
    parser.add_argument("--model", default=None, help="stage-1 grid checkpoint (default: shipped)")
    parser.add_argument("--fine-model", default=None, help="stage-2 checkpoint (default: shipped)")
    parser.add_argument("--out", default="bundle/eval/subcortical_two_stage")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        rows = evaluate(Path(args.cohort), args.split, args.model, args.fine_model, args.limit)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(write_report(rows, args.split, args.out))
    return 0


def write_report(rows: list[dict], split: str, out: str | os.PathLike) -> str:
    """Write ``two_stage_<split>.csv`` and ``.md`` into ``out`` (atomically); return the Markdown table."""
    out = Path(out)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    write_atomic(out / f"two_stage_{split}.csv", text.getvalue())
    table = summary_markdown(rows, split)
    write_atomic(out / f"two_stage_{split}.md", table)
    return table


def run(cohort: str | os.PathLike, model: str | None, fine_model: str | None, out: str | os.PathLike,
        split: str = "test", limit: int | None = None) -> str:
    """Bundle entry point: evaluate ``split`` of ``cohort`` with both stages and write the report into ``out``."""
    table = write_report(evaluate(Path(cohort), split, model and str(model), fine_model and str(fine_model), limit),
                         split, out)
    print(table)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
