"""Training data for stage 2 of the subcortical task: each cohort subject's T1 and labels cut into a 1 mm box
around its deep grey matter (:mod:`mrivol_monai.deep_grey_box`), written as NIfTI with the box's affine.

The stored box is larger than the network's box by ``margin`` voxels per side, so training can cut the
network's box at a random offset (the centre stage 1 finds at inference is a few mm off the label's). The
stored centre is the label centroid moved by a seeded random offset (``jitter_mm`` standard deviation per
axis); validation and test use the middle of the stored box. Image: trilinear; labels: nearest, as
:data:`mrivol_monai.deep_grey_box.FINE_CLASSES` indices. The split is the cohort's own (``cohort.csv``).

    python -m mrivol_monai.data.deep_grey_boxes --cohort bundle/data/synthixi --out bundle/data/synthixi_fine \
        --datalist bundle/datalists/synthixi_subcortical_fine.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from mrivol_monai import deep_grey_box as box
from mrivol_monai.atomic_io import atomic_path, write_atomic
from mrivol_monai.errors import InputError

logger = logging.getLogger(__name__)

MARGIN = 8
JITTER_MM = 2.0
SPLITS = ("training", "validation", "test")


def stored_size(margin: int = MARGIN) -> tuple[int, int, int]:
    """(D, H, W) of a stored training box: the network's box plus ``margin`` voxels on each side."""
    return tuple(s + 2 * margin for s in box.BOX_SIZE)  # type: ignore[return-value]


def write_subject_box(image_path: Path, aseg_path: Path, out_dir: Path, subject: str, seed: int = 0,
                      jitter_mm: float = JITTER_MM, margin: int = MARGIN) -> dict[str, str]:
    """Cut one subject's box; write ``<subject>-T1box.nii.gz`` (float32) and ``<subject>-labelbox.nii.gz``
    (uint8 class indices). Returns its datalist entry (file names relative to ``out_dir``)."""
    t1, aseg = nib.load(image_path), nib.load(aseg_path)
    labels = np.asarray(aseg.dataobj)
    rng = np.random.default_rng([seed, zlib.crc32(subject.encode())])
    centre = box.label_centre(labels, aseg.affine) + rng.normal(0.0, jitter_mm, 3)
    size = stored_size(margin)
    affine = box.box_affine(centre, size)
    image = box.to_box(np.asarray(t1.dataobj, dtype=np.float32), t1.affine, affine, size).numpy()
    classes = box.to_box(box.fine_classes(labels), aseg.affine, affine, size, mode="nearest").numpy()
    files = {"image": f"{subject}-T1box.nii.gz", "label": f"{subject}-labelbox.nii.gz"}
    for key, data in (("image", image.astype(np.float32)), ("label", np.rint(classes).astype(np.uint8))):
        with atomic_path(out_dir / files[key]) as tmp:
            nib.save(nib.Nifti1Image(data, affine), str(tmp))
    return {**files, "subject": subject}


def _cohort_rows(cohort: Path) -> list[dict[str, str]]:
    csv_path = cohort / "cohort.csv"
    if not csv_path.is_file():
        raise InputError(csv_path, "no cohort.csv: generate the cohort first (python -m mrivol_monai.synth)")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [k for k in ("subject", "site", "split", "image", "aseg_label") if rows and k not in rows[0]]
    if not rows or missing:
        raise InputError(csv_path, f"not a SynthIXI cohort table (missing {', '.join(missing) or 'rows'})")
    return rows


def write_boxes(cohort: str | os.PathLike, out: str | os.PathLike, datalist: str | os.PathLike,
                seed: int = 0, jitter_mm: float = JITTER_MM, margin: int = MARGIN, progress: bool = True) -> Path:
    """Write every cohort subject's box into ``out`` and a MONAI datalist (training/validation/test as in
    ``cohort.csv``, ``data_root`` relative to the datalist) at ``datalist``. Returns the datalist path."""
    cohort, out, datalist = Path(cohort), Path(out), Path(datalist)
    rows = _cohort_rows(cohort)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for row in tqdm(rows, desc="deep grey matter boxes", unit="subject", disable=not progress):
        entry = write_subject_box(cohort / row["image"], cohort / row["aseg_label"], out, row["subject"], seed,
                                  jitter_mm, margin)
        if row["split"] not in entries:
            raise InputError(cohort / "cohort.csv", f"subject {row['subject']}: unknown split {row['split']!r}")
        entries[row["split"]].append({**entry, "site": row["site"]})
    manifest = {
        "description": "SynthIXI 1 mm deep grey matter boxes (stage 2 of the subcortical task); split as the "
                       "cohort was rendered (cohort.csv 'split')",
        "data_root": os.path.relpath(out.absolute(), datalist.absolute().parent),
        "task": "subcortical_fine",
        "labels": {str(i): name for i, name in enumerate(box.CLASS_NAMES)},
        "box_size": list(box.BOX_SIZE), "stored_size": list(stored_size(margin)), "seed": seed,
        "jitter_mm": jitter_mm,
        **entries,
    }
    write_atomic(datalist, json.dumps(manifest, indent=2) + "\n")
    return datalist


def ensure_boxes(cohort: str | os.PathLike, out: str | os.PathLike, datalist: str | os.PathLike,
                 seed: int = 0) -> Path:
    """:func:`write_boxes` unless ``out`` already holds every box the datalist names (bundle ``initialize``)."""
    out, datalist = Path(out), Path(datalist)
    if datalist.is_file():
        content = json.loads(datalist.read_text())
        names = [e[k] for s in SPLITS for e in content.get(s, []) for k in ("image", "label")]
        if names and all((out / n).is_file() for n in names):
            return datalist
    logger.info("writing the 1 mm deep grey matter boxes of %s into %s", cohort, out)
    return write_boxes(cohort, out, datalist, seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", required=True, help="SynthIXI cohort folder (with cohort.csv)")
    parser.add_argument("--out", required=True, help="folder for the boxes")
    parser.add_argument("--datalist", required=True, help="datalist JSON to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = write_boxes(args.cohort, args.out, args.datalist, args.seed)
    except InputError as err:
        print(f"error: {err}", flush=True)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
