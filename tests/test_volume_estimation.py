"""Volume estimation: the handler's numbers against an independent nibabel + numpy computation from the masks it
saved, oracle predictions against the cohort's ground truth, the real ``evaluating`` bundle command, and result
files that stay whole when the run dies half way."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mrivol_monai
from mrivol_monai.data import manifests, prepare, synthetic
from mrivol_monai.handlers import VolumeEstimationHandler, error_stats, read_volumes_csv, subject_rows
from mrivol_monai.networks import UNet2d

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundle" / "configs" / "train.json")
EVALUATE = str(REPO / "bundle" / "configs" / "evaluate.json")
# one thread: on a shared 2-core machine a second torch thread makes these tiny nets ~20x slower, not faster
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
GRID = [8, 32, 32]
NET = {"network_def#ed_blocks": 2, "network_def#width": 4}
NAMES = {"brain": ["background", "brain"],
         "subcortical": ["background", "thalamus", "caudate", "putamen", "amygdala"]}
# cohort.csv stores mL with 4 decimals: that rounding is the only allowed gap to an exact computation
CSV_ROUNDING_ML = 5e-5 + 1e-9


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """6 tiny SynthIXI subjects (40x40x30, 6 mm); Guys (3 subjects) held out as the test site."""
    root = tmp_path_factory.mktemp("synthixi")
    synthetic.generate_cohort(root, n_subjects=6, seed=0, geometry="tiny", workers=1, progress=False)
    datalists = {}
    for task in NAMES:
        datalists[task] = root / f"datalist_{task}.json"
        manifests.write_manifest(manifests.build_manifest(root, task=task, seed=0, test_site="Guys"), datalists[task])
    with open(root / "cohort.csv", newline="") as handle:
        truth = {r["subject"]: r for r in csv.DictReader(handle)}
    return root, datalists, truth


def _parser(task: str, cohort, **overrides) -> ConfigParser:
    root, datalists, _ = cohort
    parser = ConfigParser(globals={"mrivol_monai": mrivol_monai})
    parser.read_config([TRAIN, EVALUATE])
    parser.update({"task": task, "num_classes": len(NAMES[task]), "dataset_dir": str(root),
                   "datalist": str(datalists[task]), "spatial_size": GRID, **NET, **overrides})
    return parser


def _test_items(task: str, cohort, spatial_size=GRID) -> list[dict]:
    parser = _parser(task, cohort, spatial_size=spatial_size)
    items = prepare.load_split(parser["datalist"], "test", parser["dataset_dir"])
    return [dict(Compose(parser.get_parsed_content("preprocessing"))(dict(e)), subject=e["subject"]) for e in items]


def _cohort_ml(truth, subject: str, structure: str) -> float:
    return float(truth[subject][f"{structure}_ml"])


def test_error_stats_on_known_errors():
    stats = error_stats([10.0, -5.0, math.nan, 20.0])  # NaN: structure absent in the truth, left out
    assert stats["signed_pct_mean"] == pytest.approx(25 / 3)
    assert stats["signed_pct_std"] == pytest.approx(np.std([10, -5, 20], ddof=1))
    assert stats["abs_pct_mean"] == pytest.approx(35 / 3)
    assert stats["abs_pct_std"] == pytest.approx(np.std([10, 5, 20], ddof=1))
    assert (stats["share_over"], stats["share_under"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3))


@pytest.mark.parametrize("task", ["brain", "subcortical"])
def test_oracle_on_an_identity_grid_reproduces_the_cohort_volumes(cohort, task):
    """With spatial_size = the head crop's own shape, Resized is the identity, so feeding the label as the
    prediction must give the cohort's mL to the CSV's rounding: this pins the unit and affine chain."""
    _, _, truth = cohort
    for item in _test_items(task, cohort):
        crop_shape = [op["orig_size"] for op in item["label"].applied_operations if op["class"] == "Resize"][0]
        exact = [i for i in _test_items(task, cohort, list(crop_shape)) if i["subject"] == item["subject"]][0]
        label = exact["label"]
        assert tuple(label.shape[1:]) == tuple(crop_shape)
        rows = subject_rows(label, label, NAMES[task], item["subject"])
        for r in rows[1:]:
            assert r["pred_ml"] == pytest.approx(_cohort_ml(truth, item["subject"], r["structure"]), abs=CSV_ROUNDING_ML)
            assert r["resampling_pct_error"] == pytest.approx(0.0, abs=1e-9)
        assert all(r["pct_error_voxels"] == 0 and r["dice"] == 1.0 for r in rows)


def test_oracle_on_the_coarse_grid_has_zero_grid_error_and_reports_the_resampling_floor(cohort, tmp_path):
    """On the 8x32x32 grid the label still gives 0 % voxel error and Dice 1; its mL differ from the cohort
    only by the nearest-neighbour resampling of the label, which the handler reports as the floor."""
    _, _, truth = cohort
    handler = VolumeEstimationHandler(tmp_path, {str(i): n for i, n in enumerate(NAMES["subcortical"])}, plots=False)
    for item in _test_items("subcortical", cohort):
        handler.add_subject(item["label"], item["label"], subject=item["subject"], site="Guys")
    for r in handler.rows:
        if r["class_index"] > 0:
            assert r["true_ml"] == pytest.approx(_cohort_ml(truth, r["subject"], r["structure"]), abs=CSV_ROUNDING_ML)
        assert r["pred_ml"] == pytest.approx(r["true_grid_ml"], rel=1e-12)
        if math.isfinite(r["pct_error_ml"]):
            assert r["pct_error_ml"] == pytest.approx(r["resampling_pct_error"], abs=1e-9)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_subjects"] == 3 and summary["complete"] is False  # epoch not finished
    for s in summary["structures"]:
        assert s["dice_mean"] == 1.0 and s["estimate"] == "exact"
        assert s["voxels"]["abs_pct_mean"] == 0.0 and s["voxels"]["share_over"] == 0.0
    # background: crop-box volume minus native foreground, so its floor is tiny
    assert abs(handler.rows[0]["resampling_pct_error"]) < 0.5


def _train_tiny_model(cohort, path: Path, seed: int = 0) -> None:
    """80 full-batch Adam steps of a width-4 UNet on the training volumes' slices; saved as {"model": state}."""
    torch.manual_seed(seed)
    parser = _parser("brain", cohort)
    items = prepare.load_split(parser["datalist"], "training", parser["dataset_dir"])
    pre = Compose(parser.get_parsed_content("preprocessing"))
    vols = [pre(dict(e)) for e in items]
    x = torch.cat([v["image"].as_tensor().permute(1, 0, 2, 3) for v in vols])  # (N*D, 1, H, W)
    y = torch.cat([v["label"].as_tensor().argmax(0) for v in vols]).long()  # (N*D, H, W)
    net = UNet2d(1, 2, ed_blocks=2, width=4)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(80):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict()}, path)


def _scalar(log_dir: Path, tag: str) -> float:
    for event_file in log_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            return acc.Scalars(tag)[-1].value
    raise KeyError(tag)


@pytest.mark.slow
def test_evaluating_bundle_matches_an_independent_computation(cohort, tmp_path):
    root, datalists, truth = cohort
    _train_tiny_model(cohort, tmp_path / "models" / "model.pt")
    eval_dir = tmp_path / "eval"
    args = ["--dataset_dir", str(root), "--datalist", str(datalists["brain"]), "--ckpt_dir", str(tmp_path / "models"),
            "--eval_dir", str(eval_dir), "--spatial_size", json.dumps(GRID), "--save_masks", "True"]
    for k, v in NET.items():
        args += [f"--{k}", str(v)]
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
                           json.dumps([TRAIN, EVALUATE]), *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    rows = read_volumes_csv(eval_dir / "volumes.csv")
    assert len(rows) == 3 * 2
    abs_err, dices = [], []
    for r in rows:
        pred_img = nib.load(eval_dir / "masks" / f"{r['subject']}_pred.nii.gz")
        pred = np.asarray(pred_img.dataobj) == r["class_index"]
        true = np.asarray(nib.load(eval_dir / "masks" / f"{r['subject']}_label.nii.gz").dataobj) == r["class_index"]
        assert pred.shape == tuple(GRID)
        voxel_mm3 = abs(np.linalg.det(pred_img.affine[:3, :3]))
        dice = 2 * (pred & true).sum() / (pred.sum() + true.sum())
        assert (r["pred_voxels"], r["true_voxels"]) == (pred.sum(), true.sum())
        assert r["pred_ml"] == pytest.approx(pred.sum() * voxel_mm3 / 1000, rel=1e-6)
        assert r["dice"] == pytest.approx(dice, abs=1e-6)
        assert r["pct_error_voxels"] == pytest.approx(100 * (pred.sum() - true.sum()) / true.sum(), rel=1e-6)
        if r["structure"] == "brain":
            native = nib.load(root / f"{r['subject']}-brain.nii.gz")
            native_ml = (np.asarray(native.dataobj) == 1).sum() * abs(np.linalg.det(native.affine[:3, :3])) / 1000
            assert r["true_ml"] == pytest.approx(native_ml, rel=1e-9)
            assert r["true_ml"] == pytest.approx(_cohort_ml(truth, r["subject"], "brain"), abs=CSV_ROUNDING_ML)
            assert r["pct_error_ml"] == pytest.approx(100 * (r["pred_ml"] - native_ml) / native_ml, rel=1e-6)
            abs_err.append(abs(r["pct_error_voxels"]))
            dices.append(dice)
    assert np.mean(dices) > 0.5  # the tiny model learned something: the errors below are not all -100 %
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["complete"] is True and summary["n_subjects"] == 3
    brain = summary["structures"][1]
    assert brain["voxels"]["abs_pct_mean"] == pytest.approx(np.mean(abs_err), rel=1e-6)
    assert brain["voxels"]["abs_pct_std"] == pytest.approx(np.std(abs_err, ddof=1), rel=1e-6)
    assert brain["dice_mean"] == pytest.approx(np.mean(dices), rel=1e-6)
    assert _scalar(eval_dir, "volume/brain/voxels_abs_pct_mean") == pytest.approx(np.mean(abs_err), rel=1e-5)
    assert "| brain |" in (eval_dir / "summary.md").read_text()
    # the test-site Dice is named for what it is, in TensorBoard and in the evaluation's log file
    assert _scalar(eval_dir, "test_mean_dice") == pytest.approx(np.mean(dices), abs=1e-5)
    with pytest.raises(KeyError):
        _scalar(eval_dir, "val_mean_dice")
    log = (eval_dir / "evaluation.log").read_text()
    assert "test_mean_dice" in log and "val_mean_dice" not in log
    for png in ("bland_altman.png", "pred_vs_true.png", "examples.png"):
        assert (eval_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_crash_mid_run_leaves_whole_files_with_the_finished_subjects(cohort, tmp_path):
    root, datalists, _ = cohort
    manifest = json.loads(datalists["brain"].read_text())
    test = manifest["test"]
    # the second test scan is not an image: loading it fails half way through the evaluation
    bad = tmp_path / "broken-T1.nii.gz"
    bad.write_bytes(b"not a NIfTI file")
    test[1] = dict(test[1], image=str(bad))
    manifest.update(data_root=str(root), test=test)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(manifest))
    torch.save({"model": UNet2d(1, 2, ed_blocks=2, width=4).state_dict()}, tmp_path / "model.pt")
    eval_dir = tmp_path / "eval"
    parser = _parser("brain", cohort, datalist=str(datalist), ckpt_dir=str(tmp_path), eval_dir=str(eval_dir))
    # load_split's up-front check would refuse the broken file before the run; skip it to stand for a file
    # that goes bad (or a reader that fails) after the run has started
    parser["validate#dataset#data"] = (
        "$mrivol_monai.data.prepare.load_split(@datalist, 'test', @dataset_dir, @limit_subjects, check=False)")
    with pytest.raises(RuntimeError, match="LoadImaged"):
        parser.get_parsed_content("validate#evaluator").run()
    rows = read_volumes_csv(eval_dir / "volumes.csv")
    assert [r["subject"] for r in rows] == [test[0]["subject"]] * 2
    assert all(isinstance(r["dice"], float) and r["true_ml"] > 0 for r in rows)
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["complete"] is False and summary["n_subjects"] == 1
    assert "run incomplete" in (eval_dir / "summary.md").read_text()
    assert not [p for p in eval_dir.iterdir() if p.name.endswith(".tmp")]
