"""Write a test set from a scanner none of the SynthIXI sites is, on held-out anatomy: for evaluating how a
model trained on the three sites meets another T1 contrast (E1's "unseen contrast" column).

    python docs/make_unseen_scanner_set.py --out runs/unseen_scanner [--subjects 12] [--seed 0]

Subjects are rendered from the test label maps only (never seen in training), each with its own random
T1 contrast, noise, bias and blur (``synthetic_acquisition.unseen_scanner``), axially stored on a 1 mm grid,
a third of them skull-stripped. Writes ``<subject>-T1/-brain/-subcortical/-aseg.nii.gz``, ``cohort.csv`` and
two datalists (``datalist_brain.json``, ``datalist_subcortical.json``: every subject in ``test``), then
prints the evaluate commands.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.data import label_maps, synthetic
from mrivol_monai.data import synthetic_acquisition as acq
from mrivol_monai.data import synthetic_anatomy as anat

SHAPE, SPACING = (180, 240, 240), (1.0, 1.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for number in range(1, args.subjects + 1):
        rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(9000 + number,)))
        map_index = label_maps.TEST_MAPS[(number - 1) % len(label_maps.TEST_MAPS)]
        anatomy = anat.sample_anatomy(rng, map_index)
        protocol = acq.unseen_scanner(rng)
        affine = acq.grid_affine(protocol.axcodes, SHAPE, SPACING)
        stripped = number % 3 == 0
        image, aseg = acq.acquire(anat.aged_labels(anatomy), anat.map_coordinates_for_grid(anatomy, SHAPE, affine),
                                  protocol, SPACING, rng, skull_stripped=stripped)
        subject = synthetic.SyntheticSubject(f"SYN{9000 + number:04d}-IOP-{number:04d}", "IOP", "test",
                                             label_maps.map_name(map_index), stripped, anatomy.age, anatomy.sex,
                                             image, aseg, affine)
        row = synthetic.write_subject(subject, args.out, protocol.scanner)
        rows.append(row)
        print(f"{row['subject']}: {row['anatomy']}, skull-stripped {row['skull_stripped']}, brain {row['brain_ml']} mL",
              flush=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=synthetic.COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(args.out / "cohort.csv", text.getvalue())
    for task, key in (("brain", "brain_label"), ("subcortical", "subcortical_label")):
        entries = [{"image": r["image"], "label": r[key], "subject": r["subject"], "site": "IOP"} for r in rows]
        datalist = {"description": "unseen T1 scanner, held-out anatomy", "data_root": ".", "task": task,
                    "training": [], "validation": [], "test": entries}
        write_atomic(args.out / f"datalist_{task}.json", json.dumps(datalist, indent=2) + "\n")
    print(f"evaluate: python -m monai.bundle run evaluating --config_file \"['bundle/configs/train.json',"
          f"'bundle/configs/evaluate.json']\" --dataset_dir {args.out} --datalist {args.out}/datalist_brain.json "
          f"--eval_dir {args.out}/eval_brain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
