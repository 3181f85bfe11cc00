"""The shipped default models on scans rendered from held-out anatomy (test label maps, IOP scanner), with and
without skull, through ``mrivol predict``: the mask on the native grid overlaps the truth and the volumes are
within the error the shipped models measure on the test site.

The issue's targets (brain within a few %) are NOT met by the shipped models (bundle/docs/README.md: brain
over-estimated by +8 % on the IOP test site; +16 % (stripped) and +8 % on these two scans, Dice 0.90 and 0.91): these bounds guard against
regressions (the previous cartoon-trained subcortical model has Dice 0.10-0.25 on this test site), not the targets."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrivol_monai.cli import main
from mrivol_monai.data import label_maps, synthetic


def _write(subject: synthetic.SyntheticSubject, folder: Path, tag: str) -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{subject.name}-{tag}-T1.nii.gz"
    image = nib.Nifti1Image(subject.image, subject.affine)
    image.set_qform(subject.affine, code=1)
    image.set_sform(subject.affine, code=1)
    nib.save(image, path)
    return path, subject.aseg


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray, float]]:
    folder = tmp_path_factory.mktemp("held_out")
    scans = {}
    for stripped, map_index in ((True, label_maps.TEST_MAPS[0]), (False, label_maps.TEST_MAPS[1])):
        subject = synthetic.generate_subject(901, "IOP", seed=7, geometry="ixi", split="test", map_index=map_index,
                                             skull_stripped=stripped)
        path, aseg = _write(subject, folder, "stripped" if stripped else "skull")
        voxel_ml = abs(np.linalg.det(subject.affine[:3, :3])) / 1000.0
        scans["stripped" if stripped else "with skull"] = (path, aseg, voxel_ml)
    return scans


def _predict(paths: list[Path], out: Path, task: str, extra: list[str] = ()) -> dict[str, dict[str, str]]:
    assert main(["predict", *map(str, paths), "--out", str(out), "--task", task, "--no-qc", "--quiet", *extra]) == 0
    with open(out / "volumes.csv", newline="") as handle:
        return {row["scan"]: row for row in csv.DictReader(handle)}


def _row(rows: dict[str, dict[str, str]], path: Path) -> dict[str, str]:
    return next(r for scan, r in rows.items() if scan in path.name)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_shipped_brain_model_finds_held_out_brains_with_and_without_skull(held_out, tmp_path):
    rows = _predict([p for p, _, _ in held_out.values()], tmp_path, "brain")
    for kind, (path, aseg, voxel_ml) in held_out.items():
        truth = label_maps.brain_mask(aseg)
        row = _row(rows, path)
        mask = np.asarray(nib.load(row["mask"]).dataobj) == 1  # on the scan's own grid
        assert mask.shape == truth.shape
        assert _dice(mask, truth) > 0.85, kind  # measured 0.90 (stripped), 0.91 (with skull)
        error = (float(row["brain_ml"]) - truth.sum() * voxel_ml) / (truth.sum() * voxel_ml)
        assert -0.10 < error < 0.40, (kind, error)  # see the module docstring


def test_shipped_subcortical_grid_model_finds_deep_grey_matter_of_held_out_anatomy(held_out, tmp_path):
    from mrivol_monai.weights import default_checkpoint

    grid_only = ["--model", str(default_checkpoint("subcortical"))]  # a --model without --fine-model: one stage
    rows = _predict([p for p, _, _ in held_out.values()], tmp_path, "subcortical", grid_only)
    for kind, (path, aseg, _) in held_out.items():
        mask = np.asarray(nib.load(_row(rows, path)["mask"]).dataobj)
        for value, name in enumerate(("thalamus", "caudate", "putamen"), start=1):
            truth = np.isin(aseg, label_maps.SUBCORTICAL_LR[name])
            assert _dice(mask == value, truth) > 0.6, (kind, name, _dice(mask == value, truth))  # measured 0.70-0.82


def test_shipped_two_stage_model_finds_left_and_right_structures_of_held_out_anatomy(held_out, tmp_path):
    from mrivol_monai import deep_grey_box as box

    rows = _predict([p for p, _, _ in held_out.values()], tmp_path, "subcortical")
    for kind, (path, aseg, voxel_ml) in held_out.items():
        row = _row(rows, path)
        mask = np.asarray(nib.load(row["mask"]).dataobj)
        truth = box.fine_classes(aseg)
        for value, name in enumerate(box.CLASS_NAMES[1:9], start=1):  # thalamus .. amygdala, left and right
            dice = _dice(mask == value, truth == value)
            # measured on the IOP test split: 0.80-0.89 per structure side (bundle/docs/README.md)
            assert dice > (0.6 if name.startswith("amygdala") else 0.75), (kind, name, dice)
            true_ml = float((truth == value).sum()) * voxel_ml
            assert abs(float(row[f"{name}_ml"]) - true_ml) < 0.35 * true_ml, (kind, name)
