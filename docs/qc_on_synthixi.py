"""QC reasons on SynthIXI subjects with their true brain masks: which clean scans the QC rules would flag.

    python docs/qc_on_synthixi.py [--subjects 8] [--seed 0]

Generates the subjects (IXI grid) in a temp folder and prints, per subject, the numbers behind the QC rules of
:mod:`mrivol_monai.scan_qc` (SNR, head foreground fraction, brain volume) and its verdict, computed on the
ground-truth brain label instead of a model's mask: a rule that fires here fires on a clean scan.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from mrivol_monai.data import synthetic
from mrivol_monai.predict import volumes_ml
from mrivol_monai.scan_qc import estimate_snr, head_fraction, qc_reasons, qc_verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| subject | skull | SNR | head fraction | brain_ml | qc |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        cohort = synthetic.generate_cohort(folder, n_subjects=args.subjects, seed=args.seed, workers=1, progress=False)
        for row in csv.DictReader(open(cohort, newline="")):
            scan = nib.load(Path(folder) / row["image"])
            image = np.asarray(scan.dataobj)
            mask = (np.asarray(nib.load(Path(folder) / row["brain_label"]).dataobj) > 0).astype(np.uint8)
            volumes = volumes_ml(mask, scan.affine, ["background", "brain"])
            skull = "stripped" if row["skull_stripped"] == "1" else "head"
            print(f"| {row['subject']} | {skull} | {estimate_snr(image, mask):.1f} | {head_fraction(image):.2f} | "
                  f"{volumes['brain']:.0f} | {qc_verdict(qc_reasons(image, mask, volumes))} |")


if __name__ == "__main__":
    main()
