"""Stage 2 of the subcortical task: the 1 mm deep grey matter box, its way back to the native grid, volumes,
and the two-stage predictor inside ``mrivol predict``."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrivol_monai import deep_grey_box as box
from mrivol_monai.errors import InputError
from mrivol_monai.networks import UNet2d
from mrivol_monai.predict import predict
from mrivol_monai.two_stage import FineSegmenter, TwoStagePredictor, stage1_centre, volume_names
from mrivol_monai.weights import ModelSpec

SMALL_BOX = (24, 32, 32)


def _blobs(shape, affine, centres_labels, radius_mm):
    """Label array with a ball of ``radius_mm`` per (RAS centre, label)."""
    idx = np.indices(shape).reshape(3, -1)
    ras = (affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]
    out = np.zeros(shape, dtype=np.int16)
    for centre, label in centres_labels:
        inside = ((ras - np.asarray(centre)[:, None]) ** 2).sum(0) <= radius_mm ** 2
        out.reshape(-1)[inside] = label
    return out


def _oblique_1mm_affine():
    """Stored axes P, I, R (a permutation with flips), 1 mm voxels, voxel centres on integer mm."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 0], affine[2, 1], affine[3, 3] = 1.0, -1.0, -1.0, 1.0
    affine[:3, 3] = (-30.0, 35.0, 30.0)
    return affine


def _roundtrip(labels, affine, centre, size=SMALL_BOX):
    grid = box.box_affine(centre, size)
    classes = box.to_box(box.fine_classes(labels), affine, grid, size, mode="nearest").long()
    onehot = torch.nn.functional.one_hot(classes, box.NUM_CLASSES).permute(3, 0, 1, 2).float()
    return box.box_to_native(onehot, grid, affine, labels.shape), onehot


def test_box_maps_back_exactly_on_a_permuted_flipped_1mm_grid():
    affine = _oblique_1mm_affine()
    labels = _blobs((60, 60, 60), affine, [((-8, 2, 3), 10), ((8, 2, 3), 49), ((-6, -4, -5), 18)], 5.0)
    back, onehot = _roundtrip(labels, affine, centre=(0.5, 0.5, 0.5))
    assert np.array_equal(box.freesurfer_labels(back), labels)  # every voxel, both sides
    true = box.hard_volumes_ml(box.fine_classes(labels), affine)
    for name, ml in box.hard_volumes_ml(back, affine).items():
        assert ml == pytest.approx(true[name], rel=1e-3, abs=1e-9)
    assert box.soft_volumes_ml(onehot)["thalamus_left"] == pytest.approx(true["thalamus_left"], rel=1e-3)


def test_box_on_an_anisotropic_ixi_grid_keeps_volumes_to_a_few_percent():
    """IXI's 0.94 x 0.94 x 1.2 mm grid: labels go to the 1 mm box (nearest) and back (trilinear scores, argmax),
    two resamplings; a 4.2 mL ball (an amygdala is ~1.5 mL, a thalamus ~8) keeps its volume to 2 %."""
    affine = np.diag([-0.9375, 0.9375, 1.2, 1.0])
    affine[:3, 3] = (30.0, -30.0, -30.0)
    labels = _blobs((64, 64, 50), affine, [((-12, 1, 0), 10), ((12, 1, 0), 49)], 10.0)
    true = box.hard_volumes_ml(box.fine_classes(labels), affine)
    for centre in ((0.2, 0.7, -0.3), (0.5, 0.1, 0.4)):
        back, onehot = _roundtrip(labels, affine, centre=centre, size=(32, 48, 48))
        got, soft = box.hard_volumes_ml(back, affine), box.soft_volumes_ml(onehot)
        for name in ("thalamus_left", "thalamus_right"):
            assert got[name] == pytest.approx(true[name], rel=0.02)
            assert soft[name] == pytest.approx(true[name], rel=0.02)
        assert np.array_equal(np.unique(box.freesurfer_labels(back)), [0, 10, 49])


def test_left_and_right_never_swap_with_a_left_right_flipped_affine():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-29.5, -29.5, -29.5)
    labels = _blobs((60, 60, 60), affine, [((-10, 0, 0), 10), ((10, 0, 0), 49)], 5.0)  # RAS: left is x < 0
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[:3, 3] = (29.5, -29.5, -29.5)
    stored_flipped = labels[::-1].copy()  # same head, stored right to left
    grid = box.box_affine((0, 0, 0), SMALL_BOX)
    a = box.to_box(box.fine_classes(labels), affine, grid, SMALL_BOX, mode="nearest")
    b = box.to_box(box.fine_classes(stored_flipped), flipped, grid, SMALL_BOX, mode="nearest")
    assert torch.equal(a, b)  # the network sees the same box whichever way the scan is stored
    w_left = torch.nonzero(a == 1)[:, 2].float().mean()  # W runs right -> left (axis code L)
    w_right = torch.nonzero(a == 2)[:, 2].float().mean()
    assert w_left > w_right
    back, _ = _roundtrip(stored_flipped, flipped, centre=(0, 0, 0))
    assert np.array_equal(box.freesurfer_labels(back), stored_flipped)


def test_soft_volume_of_a_one_hot_prediction_equals_its_hard_count():
    classes = torch.randint(0, box.NUM_CLASSES, SMALL_BOX)
    onehot = torch.nn.functional.one_hot(classes, box.NUM_CLASSES).permute(3, 0, 1, 2).float()
    soft = box.soft_volumes_ml(onehot)
    hard = box.hard_volumes_ml(classes.numpy(), np.eye(4))
    assert soft == pytest.approx(hard)
    totals = box.with_totals(hard)
    assert totals["putamen"] == pytest.approx(hard["putamen_left"] + hard["putamen_right"])


def test_fine_classes_and_freesurfer_labels_are_inverse_on_the_structures():
    aseg = np.array([0, 2, 10, 49, 11, 50, 12, 51, 18, 54, 17, 53, 24, 507])
    classes = box.fine_classes(aseg)
    assert classes.tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0]
    assert box.freesurfer_labels(classes).tolist() == [0, 0, 10, 49, 11, 50, 12, 51, 18, 54, 17, 53, 0, 0]


def test_stage1_that_finds_nothing_is_one_line():
    with pytest.raises(InputError, match="scan.nii.gz: stage 1 found no thalamus"):
        stage1_centre(np.zeros((8, 8, 8), np.uint8), np.eye(4), "scan.nii.gz")


class _FakeStage1:
    """Stage 1 stand-in: a fixed native region per scan (empty for scans named ``blank``)."""

    backend = "torch"

    def __init__(self, affine):
        self.spec = type("Spec", (), {"task": "subcortical"})()
        self.affine = affine

    def region(self, path, classes):
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        found = np.zeros(data.shape, bool)
        if "blank" not in str(path):
            found[28:32, 28:32, 28:32] = True
        return data, image.affine, found


def test_two_stage_predict_writes_left_right_mask_labels_and_soft_volumes_and_survives_a_bad_scan(tmp_path):
    affine = _oblique_1mm_affine()
    head = _blobs((60, 60, 60), affine, [((0, 0, 0), 100)], 25.0).astype(np.float32)
    for name in ("scan", "blank"):
        nib.save(nib.Nifti1Image(head + np.float32(1), affine), str(tmp_path / f"{name}.nii.gz"))
    torch.manual_seed(0)
    net = UNet2d(in_channels=3, out_channels=box.NUM_CLASSES, ed_blocks=2, width=4).eval()
    spec = ModelSpec("subcortical_fine", box.NUM_CLASSES, list(box.CLASS_NAMES),
                     {"_target_": "UNet2d", "in_channels": 3, "ed_blocks": 2, "width": 4}, list(SMALL_BOX))
    predictor = TwoStagePredictor(_FakeStage1(affine), FineSegmenter(net, spec))
    result = predict([tmp_path / "scan.nii.gz", tmp_path / "blank.nii.gz"], tmp_path / "out",
                     predictor=predictor, progress=False, qc=False, report=lambda msg: None)
    assert len(result.rows) == 1 and len(result.failed) == 1 and "stage 1 found no" in result.failed[0][1]
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [r["scan"] for r in rows] == ["scan"]
    assert {f"{n}_ml" for n in volume_names()} <= set(rows[0])
    mask = nib.load(tmp_path / "out" / "scan_seg.nii.gz")
    assert np.array_equal(mask.affine, affine) and mask.shape == head.shape
    values = np.unique(np.asarray(mask.dataobj))
    assert values.max() < box.NUM_CLASSES
    # the box is 24 x 32 x 32 mm: nothing outside it
    assert np.count_nonzero(np.asarray(mask.dataobj)) <= np.prod(SMALL_BOX)
    table = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert table["1"] == {"name": "thalamus_left", "freesurfer_label": 10}
    assert table["2"] == {"name": "thalamus_right", "freesurfer_label": 49}
    total = float(rows[0]["caudate_left_ml"]) + float(rows[0]["caudate_right_ml"])
    assert float(rows[0]["caudate_ml"]) == pytest.approx(total, abs=2e-3)


def test_training_boxes_hold_each_subjects_structures_and_keep_the_cohort_split(tiny_cohort, tmp_path):
    from mrivol_monai.data import deep_grey_boxes

    cohort, _ = tiny_cohort
    datalist = deep_grey_boxes.write_boxes(cohort, tmp_path / "boxes", tmp_path / "fine.json", progress=False)
    content = json.loads(datalist.read_text())
    rows = list(csv.DictReader(open(cohort / "cohort.csv")))
    for split in deep_grey_boxes.SPLITS:
        assert sorted(e["subject"] for e in content[split]) == sorted(r["subject"] for r in rows if r["split"] == split)
    row = rows[0]
    label = nib.load(tmp_path / "boxes" / f"{row['subject']}-labelbox.nii.gz")
    image = nib.load(tmp_path / "boxes" / f"{row['subject']}-T1box.nii.gz")
    assert label.shape == image.shape == deep_grey_boxes.stored_size()
    assert np.allclose(label.affine[:3, :3], box.box_affine((0, 0, 0), label.shape)[:3, :3])
    classes = np.asarray(label.dataobj)
    aseg = nib.load(cohort / row["aseg_label"])
    truth = box.fine_classes(np.asarray(aseg.dataobj))
    voxel_ml = abs(np.linalg.det(aseg.affine[:3, :3])) / 1000
    for index in (1, 2, 5, 6):  # thalamus and putamen, both sides: in the box, about their native volume
        assert np.count_nonzero(classes == index) / 1000 == pytest.approx(np.count_nonzero(truth == index) * voxel_ml,
                                                                          rel=0.25)
    assert float(np.asarray(image.dataobj).std()) > 0
    again = deep_grey_boxes.ensure_boxes(cohort, tmp_path / "boxes", tmp_path / "fine.json")
    assert again == datalist and json.loads(again.read_text()) == content  # complete: not rewritten


def test_bundle_stage_two_step_segments_the_box_centred_on_the_stage_one_argmax(tmp_path):
    from monai.data import MetaTensor

    from mrivol_monai.two_stage import DeepGreyBoxSegmentd

    affine = _oblique_1mm_affine()
    head = _blobs((60, 60, 60), affine, [((0, 0, 0), 100)], 25.0).astype(np.float32) + np.float32(1)
    nib.save(nib.Nifti1Image(head, affine), str(tmp_path / "scan.nii.gz"))
    torch.manual_seed(0)
    net = UNet2d(in_channels=3, out_channels=box.NUM_CLASSES, ed_blocks=2, width=4).eval()
    spec = ModelSpec("subcortical_fine", box.NUM_CLASSES, list(box.CLASS_NAMES),
                     {"_target_": "UNet2d", "in_channels": 3, "out_channels": box.NUM_CLASSES, "ed_blocks": 2,
                      "width": 4}, list(SMALL_BOX))
    torch.save({"model": net.state_dict(), "meta": spec.to_dict()}, tmp_path / "fine.pt")
    scores = torch.zeros((5, 60, 60, 60))
    scores[0] = 1.0
    scores[2, 20:30, 24:34, 28:38] = 2.0  # stage 1: caudate in one block, elsewhere background
    meta = {"filename_or_obj": str(tmp_path / "scan.nii.gz"), "affine": torch.as_tensor(affine)}
    out = DeepGreyBoxSegmentd("pred", fine_model=tmp_path / "fine.pt")({"pred": MetaTensor(scores, meta=meta)})
    mask = out["pred"]
    assert tuple(mask.shape) == (1, 60, 60, 60) and mask.dtype == torch.uint8
    assert np.array_equal(np.asarray(mask.affine), affine)
    fine = FineSegmenter.from_model(tmp_path / "fine.pt")
    block = np.zeros((60, 60, 60), bool)
    block[20:30, 24:34, 28:38] = True
    x, grid = fine.box_input(head, affine, stage1_centre(block, affine, "scan"))
    expected = box.box_to_native(fine.probabilities(x), grid, affine, head.shape)
    assert np.array_equal(mask[0].numpy(), expected)
    scores[2] = 0.0  # stage 1 found nothing: one line naming the scan
    with pytest.raises(InputError, match="scan.nii.gz.*stage 1 found no"):
        DeepGreyBoxSegmentd("pred", fine_model=tmp_path / "fine.pt")({"pred": MetaTensor(scores, meta=meta)})


def test_evaluate_two_stage_overlay_scores_both_stages_on_the_test_split(tiny_cohort, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from mrivol_monai.weights import task_spec

    cohort, _ = tiny_cohort
    repo = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    grid = UNet2d(1, 5, ed_blocks=2, width=4)
    with torch.no_grad():
        grid.head.conv.bias.copy_(torch.tensor([0.0, 4.0, 0.0, 0.0, 0.0]))  # "thalamus" wherever there is head
    spec = task_spec("subcortical", {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 2,
                                     "width": 4}, spatial_size=[8, 32, 32])
    (tmp_path / "grid").mkdir()
    torch.save({"model": grid.state_dict(), "meta": spec.to_dict()}, tmp_path / "grid" / "model.pt")
    fine = UNet2d(in_channels=3, out_channels=box.NUM_CLASSES, ed_blocks=2, width=4)
    fine_spec = ModelSpec("subcortical_fine", box.NUM_CLASSES, list(box.CLASS_NAMES),
                          {"_target_": "UNet2d", "in_channels": 3, "out_channels": box.NUM_CLASSES, "ed_blocks": 2,
                           "width": 4}, list(SMALL_BOX))
    torch.save({"model": fine.state_dict(), "meta": fine_spec.to_dict()}, tmp_path / "fine.pt")
    config = "['bundle/configs/train.json','bundle/configs/evaluate_two_stage.json']"
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config,
                          "--dataset_dir", str(cohort), "--ckpt_dir", str(tmp_path / "grid"),
                          "--fine_ckpt_path", str(tmp_path / "fine.pt"), "--eval_dir", str(tmp_path / "eval")],
                         cwd=repo, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "two_stage_test.csv")))
    tests = [r["subject"] for r in csv.DictReader(open(cohort / "cohort.csv")) if r["split"] == "test"]
    assert tests and sorted({r["subject"] for r in rows}) == sorted(tests)
    assert len(rows) == len(tests) * (box.NUM_CLASSES - 1)
    assert all(0.0 <= float(r["dice"]) <= 1.0 and float(r["true_ml"]) >= 0.0 for r in rows)
    assert "| thalamus_left |" in (tmp_path / "eval" / "two_stage_test.md").read_text()


def test_box_difficulty_is_zero_for_one_hot_and_counts_both_sides_for_totals():
    from mrivol_monai.two_stage import box_difficulty

    labels = torch.zeros((4, 6, 6), dtype=torch.long)
    labels[1:3, 1:3, 1:3] = box.CLASS_NAMES.index("caudate_left")
    labels[1:3, 3:5, 3:5] = box.CLASS_NAMES.index("caudate_right")
    onehot = torch.nn.functional.one_hot(labels, box.NUM_CLASSES).permute(3, 0, 1, 2).float()
    assert all(v == 0.0 for v in box_difficulty(onehot).values())
    soft = onehot.clone()
    soft[:, 0, 0, 0] = 0.0
    soft[box.CLASS_NAMES.index("caudate_left"), 0, 0, 0] = 0.4  # a background voxel, 0.4 caudate_left
    soft[0, 0, 0, 0] = 0.6
    got = box_difficulty(soft)
    assert got["caudate_left"] == pytest.approx(0.4 / 8) and got["caudate"] == pytest.approx(0.4 / 16)
    assert got["caudate_right"] == 0.0


def test_qc_title_names_hard_totals_not_every_side_and_soft_volume():
    from mrivol_monai.prediction_outputs import qc_title_volumes

    volumes = {"thalamus_left": 8.0, "thalamus_right": 7.0, "hippocampus_left": 4.0, "thalamus": 15.0,
               "thalamus_left_soft": 8.2}
    assert qc_title_volumes(volumes) == "hippocampus_left 4.0 mL, thalamus 15.0 mL"
    assert qc_title_volumes({"brain": 1123.45}) == "brain 1123.5 mL"


def test_a_missing_or_foreign_cohort_table_is_one_line(tmp_path):
    from mrivol_monai.two_stage_evaluation import cohort_subjects

    with pytest.raises(InputError, match="cohort.csv: cannot read the cohort table"):
        cohort_subjects(tmp_path, "test")
    (tmp_path / "cohort.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a cohort table"):
        cohort_subjects(tmp_path, "test")
    (tmp_path / "cohort.csv").write_text("subject,split,image\ns1,training,s1.nii.gz\n")
    with pytest.raises(InputError, match="no test subjects"):
        cohort_subjects(tmp_path, "test")
    assert cohort_subjects(tmp_path, "training")[0]["subject"] == "s1"
