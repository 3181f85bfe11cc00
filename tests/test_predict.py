"""mrivol predict: native-space masks and volumes, bad inputs, atomic volumes.csv, export backends, bundle run."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, CropForegroundd, LoadImaged, Orientationd, Resized
from torch import nn

from mrivol_monai.cli import main
from mrivol_monai.networks import UNet2d
from mrivol_monai.predict import (
    Predictor,
    append_csv_row,
    find_scans,
    predict,
)
from mrivol_monai.transforms import depth_axcodes, head_foreground
from mrivol_monai.weights import load_model, task_spec

REPO = Path(__file__).resolve().parents[1]
SPATIAL = [8, 16, 16]  # preprocessed (D, H, W) grid of the tiny test models
ZOOMS_SPL = (3.0, 1.2, 0.9)  # mm along S, P, L: anisotropic
STORED_AXCODES = ("A", "I", "R")  # how the test files are stored: neither RAS nor the depth-first SPL


def to_stored(array_spl: np.ndarray, affine_spl: np.ndarray, axcodes=STORED_AXCODES) -> tuple[np.ndarray, np.ndarray]:
    """Re-store an SPL-ordered array under ``axcodes`` (nibabel does the bookkeeping), affine to match."""
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("SPL"), nib.orientations.axcodes2ornt(axcodes))
    stored = nib.orientations.apply_orientation(array_spl, ornt)
    affine = affine_spl @ nib.orientations.inv_ornt_aff(ornt, array_spl.shape)
    assert nib.aff2axcodes(affine) == tuple(axcodes)
    return np.ascontiguousarray(stored), affine


def spl_affine(origin=(-20.0, 15.0, 30.0)) -> np.ndarray:
    """Voxel -> RAS for an SPL array: +i goes superior, +j posterior, +k left."""
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2] = ZOOMS_SPL[0], -ZOOMS_SPL[1], -ZOOMS_SPL[2]
    affine[:3, 3], affine[3, 3] = origin, 1.0
    return affine


def aligned_scan(seed: int = 0, num_classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label, affine) stored non-RAS, built so that preprocessing is an exact 2x decimation.

    In SPL order the head is a box whose crop (box + the 2-voxel margin) is exactly 2 x SPATIAL, and the
    label is constant on the 2x2x2 blocks of that crop: the native-space round trip then loses nothing.
    """
    rng = np.random.default_rng(seed)
    crop = [2 * s for s in SPATIAL]
    shape, start = (crop[0] + 6, crop[1] + 5, crop[2] + 7), (3, 2, 4)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    head = tuple(slice(a + 2, a + c - 2) for a, c in zip(start, crop))
    image[head] = rng.uniform(60, 140, size=[c - 4 for c in crop])
    blocks = rng.integers(0, num_classes, size=SPATIAL).astype(np.uint8)
    fine = blocks.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    inside = np.zeros(crop, bool)
    inside[2:-2, 2:-2, 2:-2] = True
    region = tuple(slice(a, a + c) for a, c in zip(start, crop))
    label[region] = np.where(inside, fine, 0)
    image[label > 0] += 30.0 * label[label > 0]
    stored_image, affine = to_stored(image, spl_affine())
    stored_label, _ = to_stored(label, spl_affine())
    return stored_image, stored_label, affine


def ellipsoid_scan(shape=(30, 44, 38), seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label, affine): an ellipsoidal head with a smaller ellipsoid label, stored non-RAS."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r_head = np.sqrt(((grid / np.array([0.8, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0))
    r_brain = np.sqrt(((grid / np.array([0.55, 0.6, 0.5])[:, None, None, None]) ** 2).sum(0))
    image = np.where(r_head < 1, 80.0, 0.0) + np.where(r_brain < 1, 40.0, 0.0) + rng.normal(0, 2, shape)
    label = (r_brain < 1).astype(np.uint8)
    stored_image, affine = to_stored(np.abs(image).astype(np.float32), spl_affine())
    stored_label, _ = to_stored(label, spl_affine())
    return stored_image, stored_label, affine


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


class Oracle(nn.Module):
    """Returns fixed logits: the preprocessed one-hot label of a scan, as a perfect network would."""

    def __init__(self, onehot: torch.Tensor) -> None:  # (C, D, H, W)
        super().__init__()
        self.logits = 10.0 * onehot.permute(1, 0, 2, 3).float()  # (D, C, H, W): one slice per row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.logits.shape[0], "SliceInferer should pass all D slices at once"
        return self.logits


def oracle_for(image_path: Path, label_path: Path, num_classes: int, spatial=SPATIAL) -> Oracle:
    """Preprocess the label the way train.json does (orientation, head crop from the image, nearest resize)."""
    keys = ["image", "label"]
    prep = Compose([
        LoadImaged(keys, ensure_channel_first=True, image_only=True),
        Orientationd(keys, axcodes=depth_axcodes("axial"), labels=None),
        CropForegroundd(keys, source_key="image", select_fn=head_foreground, margin=2),
        Resized(keys, spatial_size=spatial, mode=["area", "nearest-exact"]),
    ])
    label = torch.as_tensor(prep({"image": str(image_path), "label": str(label_path)})["label"])[0].long()
    return Oracle(torch.nn.functional.one_hot(label, num_classes).permute(3, 0, 1, 2))


def voxel_ml(affine: np.ndarray) -> float:
    return abs(np.linalg.det(affine[:3, :3])) / 1000.0


def test_oracle_mask_is_exact_on_native_non_ras_anisotropic_grid(tmp_path):
    image, label, affine = aligned_scan(num_classes=3)
    img_path = save(tmp_path / "scan1.nii.gz", image, affine)
    lab_path = save(tmp_path / "scan1_label.nii.gz", label, affine)
    spec = task_spec("brain", spatial_size=SPATIAL)
    # a 3-class task of its own: the label's classes are not single objects, so no largest-component clean-up
    spec.task, spec.num_classes, spec.class_names = "oracle", 3, ["background", "a", "b"]
    predictor = Predictor(oracle_for(img_path, lab_path, 3), spec, slices_per_call=None)

    result = predict([img_path], tmp_path / "out", predictor=predictor, progress=False)

    assert not result.failed
    written = nib.load(tmp_path / "out" / "scan1_seg.nii.gz")
    source = nib.load(img_path)
    assert written.shape == source.shape == label.shape
    assert np.array_equal(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == STORED_AXCODES
    mask = np.asarray(written.dataobj)
    assert np.array_equal(mask, label)  # every voxel back in place through orientation, crop and resize
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [r["scan"] for r in rows] == ["scan1"]
    for c, name in ((1, "a"), (2, "b")):
        truth = np.count_nonzero(label == c) * voxel_ml(affine)
        assert truth > 0.5
        assert float(rows[0][f"{name}_ml"]) == pytest.approx(truth, abs=1e-3)
    png = (tmp_path / "out" / "scan1_qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_oracle_volume_keeps_the_model_grid_volume_when_grids_do_not_align(tmp_path):
    """Box 28x40x34 -> model 16x32x32: no integer factors. The native mask must carry the volume the model-grid
    mask stands for (each model voxel = box volume / model voxels) to well under 1 %; against the true label
    the oracle itself is off by its nearest-neighbour resampling of the label (+3.9 % here), so 5 %."""
    image, label, affine = ellipsoid_scan()
    img_path = save(tmp_path / "e.nii.gz", image, affine)
    lab_path = save(tmp_path / "e_label.nii.gz", label, affine)
    spatial = [16, 32, 32]
    oracle = oracle_for(img_path, lab_path, 2, spatial)
    predictor = Predictor(oracle, task_spec("brain", spatial_size=spatial), slices_per_call=None)
    seg = predictor.segment(img_path)
    _, grid, _, _ = predictor.model_input(img_path)
    model_grid_ml = (oracle.logits[:, 1] > 0).float().mean().item() * np.prod(grid.box_shape) * voxel_ml(affine)
    truth = np.count_nonzero(label) * voxel_ml(affine)
    assert seg.mask.shape == label.shape
    assert seg.volumes["brain"] == pytest.approx(model_grid_ml, rel=0.01)
    assert seg.volumes["brain"] == pytest.approx(truth, rel=0.05)
    dice = 2 * np.count_nonzero(seg.mask & label) / (np.count_nonzero(seg.mask) + np.count_nonzero(label))
    assert dice > 0.95


def tiny_checkpoint(path: Path, task: str = "brain", seed: int = 0, meta: bool = True, bias: float = 0.5) -> Path:
    """A width-4 UNet checkpoint ({"model": state_dict, "meta": spec}) for the SPATIAL grid; its head bias
    rises linearly from 0 (background) to ``bias`` (last class)."""
    spec = task_spec(task, {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 2, "width": 4},
                     spatial_size=SPATIAL)
    torch.manual_seed(seed)
    net = UNet2d(1, spec.num_classes, ed_blocks=2, width=4)
    with torch.no_grad():  # a bias towards class 1 so the random net marks a sizeable part of the head
        net.head.conv.bias.copy_(torch.linspace(0.0, bias, spec.num_classes))
    payload = {"model": net.state_dict(), "meta": spec.to_dict()} if meta else {"model": net.state_dict()}
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs: two good NIfTI scans, then each kind of bad input of the issue."""
    d = tmp_path_factory.mktemp("scans")
    image, _, affine = ellipsoid_scan(shape=(18, 36, 34))
    out = {"good1": save(d / "good1.nii.gz", image, affine), "good2": save(d / "good2.nii", image[::-1].copy(), affine)}
    out["missing"] = d / "missing.nii.gz"
    out["text"] = d / "notes.txt"
    out["text"].write_text("not an image\n")
    out["flat2d"] = save(d / "flat2d.nii.gz", image[:, :, 5], affine)
    out["four_d"] = save(d / "four_d.nii.gz", np.stack([image] * 3, axis=-1), affine)
    out["zeros"] = save(d / "zeros.nii.gz", np.zeros_like(image), affine)
    nan = image.copy()
    nan[3, 4, 5] = np.nan
    out["nan"] = save(d / "nan.nii.gz", nan, affine)
    dicom = d / "bad_dicom"
    dicom.mkdir()
    for i in range(3):
        (dicom / f"IM{i:04d}.dcm").write_bytes(b"DICM" + os.urandom(300))
    out["bad_dicom"] = dicom
    return out


BAD_INPUTS = {
    "missing": "no such file",
    "text": "cannot read",
    "flat2d": "expected a single 3D image",
    "four_d": "expected a single 3D image",
    "zeros": "constant",
    "nan": "NaN",
    "bad_dicom": "cannot read as a DICOM series",
}


def test_cli_reports_each_bad_input_on_one_line_and_finishes_the_others(tmp_path, scans, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    order = ["good1", *BAD_INPUTS, "good2"]
    status = main(["predict", *[str(scans[k]) for k in order], "--out", str(tmp_path / "out"), "--model", str(ckpt),
                   "--quiet"])
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == len(BAD_INPUTS)
    for line, key in zip(lines, BAD_INPUTS):
        assert str(scans[key]) in line and BAD_INPUTS[key] in line, line
    assert "Traceback" not in err
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [r["scan"] for r in rows] == ["good1", "good2"]
    for r in rows:
        mask = nib.load(r["mask"])
        assert mask.shape == nib.load(scans[r["scan"]]).shape
        counted = np.count_nonzero(np.asarray(mask.dataobj) == 1) * voxel_ml(mask.affine)
        assert float(r["brain_ml"]) == pytest.approx(counted, abs=1e-3)
        assert counted > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [".volumes.csv.lock", "volumes.csv", "labels.json", "good1_seg.nii.gz", "good1_qc.png", "good2_seg.nii.gz",
         "good2_qc.png", "good1_volumes.json", "good2_volumes.json", "report.html", "cohort_volumes.png"])


def test_checkpoint_for_another_task_and_unwritable_out_fail_up_front(tmp_path, scans, capsys):
    brain = tiny_checkpoint(tmp_path / "brain.pt")
    bare = tmp_path / "bare_sub.pt"  # no spec: the default network with 5 output channels
    torch.save({"model": UNet2d(1, 5, ed_blocks=4, width=16).state_dict()}, bare)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (["--model", str(brain), "--task", "subcortical", "--out", str(tmp_path / "o1")],
         f"error: {brain}: checkpoint is for task 'brain' (2 output classes), not 'subcortical' (5 classes)"),
        (["--model", str(bare), "--task", "brain", "--out", str(tmp_path / "o2")],
         f"error: {bare}: checkpoint is for task 'subcortical' (5 output classes), not 'brain' (2 classes)"),
        (["--model", str(brain), "--out", str(blocker / "sub")], f"error: {blocker / 'sub'}: output folder is not writable"),
    ]
    for extra, expected in cases:
        assert main(["predict", str(scans["good1"]), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(expected) and "\n" not in err, err
    net, spec = load_model(bare)  # with no task asked for, the 5 channels say subcortical
    assert (spec.task, spec.class_names[1:]) == ("subcortical", ["thalamus", "caudate", "putamen", "amygdala"])


def test_volumes_csv_keeps_finished_rows_when_a_later_scan_crashes(tmp_path, scans):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    predictor = Predictor.from_model(ckpt)
    segment, calls = predictor.segment, []

    def crash_on_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # not an Exception: predict must not swallow it
        return segment(path)

    predictor.segment = crash_on_third
    with pytest.raises(KeyboardInterrupt):
        predict([scans["good1"], scans["good2"], scans["good1"]], tmp_path / "out", predictor=predictor,
                progress=False, qc=False)
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [r["scan"] for r in rows] == ["good1", "good2"]
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]  # no temp files left


def test_append_csv_row_refuses_a_csv_of_another_task(tmp_path):
    path = tmp_path / "v.csv"
    append_csv_row(path, ["scan", "brain_ml"], {"scan": "a", "brain_ml": "1.5"})
    append_csv_row(path, ["scan", "brain_ml"], {"scan": "b", "brain_ml": "2.5"})
    assert path.read_text() == "scan,brain_ml\na,1.5\nb,2.5\n"
    with pytest.raises(ValueError, match="another task"):
        append_csv_row(path, ["scan", "thalamus_ml"], {"scan": "c", "thalamus_ml": "1"})


def test_find_scans_expands_folders_and_keeps_ids_unique(tmp_path):
    for name in ("b.nii.gz", "a.nii", "readme.txt"):
        (tmp_path / "nifti" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "nifti" / name).write_bytes(b"")
    for sub in ("s1", "s2"):
        (tmp_path / "dicoms" / sub).mkdir(parents=True)
        (tmp_path / "dicoms" / sub / "IM0001.dcm").write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.nii.gz").write_bytes(b"")
    found = find_scans([tmp_path / "nifti", tmp_path / "dicoms", tmp_path / "other" / "a.nii.gz"])
    assert [(Path(f["image"]).relative_to(tmp_path).as_posix(), f["scan"]) for f in found] == [
        ("nifti/a.nii", "a"), ("nifti/b.nii.gz", "b"), ("dicoms/s1", "s1"), ("dicoms/s2", "s2"),
        ("other/a.nii.gz", "a-2")]


def _write_dicom_series(folder: Path, volume_zyx: np.ndarray, spacing_xyz=(1.0, 1.5, 2.0)) -> Path:
    """Write an int16 (Z, Y, X) array as a DICOM series of Z slices with ITK's GDCM series writer."""
    import itk

    folder.mkdir(parents=True)
    image = itk.image_from_array(np.ascontiguousarray(volume_zyx.astype(np.int16)))
    image.SetSpacing(list(spacing_xyz))
    names = itk.NumericSeriesFileNames.New()
    names.SetSeriesFormat(str(folder / "IM%04d.dcm"))
    names.SetStartIndex(1)
    names.SetEndIndex(volume_zyx.shape[0])
    names.SetIncrementIndex(1)
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New()
    writer.SetInput(image)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.SetFileNames(names.GetFileNames())
    writer.Update()
    return folder


def test_a_valid_dicom_series_folder_is_segmented_on_its_own_grid(tmp_path):
    from monai.transforms import LoadImage

    image, _, _ = ellipsoid_scan(shape=(18, 36, 34))
    series = _write_dicom_series(tmp_path / "patient1_t1", np.transpose(image, (2, 1, 0)))
    assert len(list(series.iterdir())) == image.shape[2]
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    status = main(["predict", str(series), "--out", str(tmp_path / "out"), "--model", str(ckpt), "--quiet"])
    assert status == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [r["scan"] for r in rows] == ["patient1_t1"]
    loaded = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)(str(series))
    mask = nib.load(rows[0]["mask"])
    assert mask.shape == tuple(loaded.shape[1:])  # the series' own grid, as ITK reads it
    assert np.allclose(mask.affine, np.asarray(loaded.affine), atol=1e-4)
    counted = np.count_nonzero(np.asarray(mask.dataobj) == 1) * voxel_ml(mask.affine)
    assert counted > 0 and float(rows[0]["brain_ml"]) == pytest.approx(counted, abs=1e-3)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_igzip_reader_gives_nibabel_readers_array_and_affine(tmp_path, endian):
    from mrivol_monai.data.nifti_reader import IgzipNibabelReader, read_nifti

    image, _, affine = ellipsoid_scan(shape=(9, 11, 7))
    header = nib.Nifti1Header(endianness=endian)
    nifti = nib.Nifti1Image(image.astype(np.int16), affine, header=header)
    nifti.set_qform(affine, code=1)
    path = tmp_path / "scan.nii.gz"
    nib.save(nifti, path)
    fast = LoadImaged("image", reader=IgzipNibabelReader, ensure_channel_first=True, image_only=True)({"image": str(path)})
    slow = LoadImaged("image", reader="NibabelReader", ensure_channel_first=True, image_only=True)({"image": str(path)})
    assert torch.equal(fast["image"].as_tensor(), slow["image"].as_tensor())
    assert torch.allclose(fast["image"].affine, slow["image"].affine)
    assert np.allclose(fast["image"].meta["original_affine"], affine)
    assert fast["image"].shape == (1, *image.shape)
    stored, stored_affine = read_nifti(path)  # what Predictor.read uses: same voxels and affine, no float copy
    assert np.array_equal(stored, np.asanyarray(nib.load(path).dataobj)) and stored.dtype.isnative
    assert np.allclose(stored_affine, affine)


def test_read_nifti_applies_scaling_like_nibabel(tmp_path):
    from mrivol_monai.data.nifti_reader import read_nifti

    image, _, affine = ellipsoid_scan(shape=(9, 11, 7))
    nifti = nib.Nifti1Image(image * 0.37 + 1000.0, affine)
    nifti.set_data_dtype(np.int16)  # nibabel stores int16 with a slope and intercept
    nib.save(nifti, tmp_path / "scaled.nii.gz")
    on_disk = nib.load(tmp_path / "scaled.nii.gz")
    assert on_disk.dataobj.slope != 1.0
    stored, _ = read_nifti(tmp_path / "scaled.nii.gz")
    assert np.array_equal(stored, np.asanyarray(on_disk.dataobj))
    assert np.allclose(stored, image * 0.37 + 1000.0, atol=0.1)


def test_batching_slices_does_not_change_the_mask_and_bad_batch_sizes_are_refused(tmp_path):
    image, _, affine = ellipsoid_scan()
    path = save(tmp_path / "e.nii.gz", image, affine)
    spec = task_spec("brain", {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 2,
                               "width": 4}, spatial_size=SPATIAL)
    torch.manual_seed(0)
    net = UNet2d(1, 2, ed_blocks=2, width=4).eval()
    with torch.no_grad():
        net.head.conv.bias.copy_(torch.tensor([0.0, 0.3]))
    masks = [Predictor(net, spec, slices_per_call=n).segment(path).mask for n in (None, 3)]
    assert 0 < np.count_nonzero(masks[0]) < masks[0].size  # a mask with both classes, so equality means something
    assert np.array_equal(masks[0], masks[1])
    with pytest.raises(ValueError, match="slices_per_call must be >= 1"):
        Predictor(net, spec, slices_per_call=0)


def test_predict_says_which_model_it_uses_and_takes_a_trained_bundles_model_pt(tmp_path, scans, capsys):
    from mrivol_monai.provenance import training_provenance
    from mrivol_monai.weights import default_checkpoint

    trained = tmp_path / "bundle" / "models" / "model.pt"  # where the bundle's training writes its best model
    trained.parent.mkdir(parents=True)
    tiny_checkpoint(trained)
    checkpoint = torch.load(trained, weights_only=True)
    record = training_provenance(3, [str(REPO / "bundle" / "configs" / "train.json")], {"epochs": 2}, argv=["x"])
    checkpoint["meta"]["produced_by"] = record
    torch.save(checkpoint, trained)
    assert main(["predict", str(scans["good1"]), "--model", str(trained), "--out", str(tmp_path / "o1"), "--quiet",
                 "--no-qc", "--threads", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    line = next(e for e in err if e.startswith("model "))
    assert line.startswith(f"model {trained}: task brain, UNet2d ed_blocks=2 width=4, 8x16x16 axial, torch backend")
    assert f"commit {record['commit'][:10]}" in line and "seed 3" in line and "--epochs 2" in line
    assert "threads: 1 (--threads)" in err
    assert main(["predict", str(scans["good1"]), "--model", str(tmp_path / "bundle"), "--out", str(tmp_path / "o2"),
                 "--quiet", "--no-qc"]) == 0  # the bundle folder finds models/model.pt
    assert f"model {trained}: task brain" in capsys.readouterr().err
    if default_checkpoint("brain").is_file():
        assert main(["predict", str(scans["good1"]), "--out", str(tmp_path / "o3"), "--quiet", "--no-qc"]) == 0
        err = capsys.readouterr().err
        assert f"shipped default {default_checkpoint('brain')}: task brain, UNet2d" in err


def test_label_file_names_are_recognised():
    from mrivol_monai.predict import label_file_reason

    labels = ["scan_seg.nii.gz", "SYN0001-HH-0001-aseg.nii.gz", "aparc+aseg.nii", "sub-01_dseg.nii.gz",
              "sub-01_desc-brain_mask.nii.gz", "case_label.nii.gz", "case_labels_v2.nii.gz", "t1_synthseg.nii.gz"]
    scans_ = ["IXI002-Guys-0828-T1.nii.gz", "sub-01_T1w.nii.gz", "SYN0001-HH-0001-T1.nii.gz", "brain.nii.gz"]
    assert [label_file_reason(n, read_content=False) for n in labels] == ["name"] * len(labels)
    assert [label_file_reason(n, read_content=False) for n in scans_] == [None] * len(scans_)


def test_cohort_folder_gives_one_row_per_scan_and_says_what_it_skipped(tiny_cohort, tmp_path, capsys):
    from mrivol_monai.predict import discover_scans

    cohort, _ = tiny_cohort
    found, skipped = discover_scans(cohort)
    t1 = sorted(p.name for p in cohort.glob("*-T1.nii.gz"))
    assert [Path(f["image"]).name for f in found] == t1 and len(t1) == 8
    reasons = {Path(p).name.split("-")[-1]: r for p, r in skipped}
    assert reasons["aseg.nii.gz"] == "name"
    assert reasons["brain.nii.gz"] == "integer image with 2 values"  # by content: its name says nothing
    assert reasons["subcortical.nii.gz"].startswith("integer image with")
    assert len(skipped) == 3 * 8
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    assert main(["predict", str(cohort), "--model", str(ckpt), "--out", str(tmp_path / "out"), "--quiet",
                 "--no-qc"]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("skipped")]
    assert said == [line for line in said if "24 label/mask files" in line] and len(said) == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert sorted(r["scan"] for r in rows) == [n[: -len(".nii.gz")] for n in t1]
    # a label file named on the command line is still taken: the user asked for it
    assert [f["scan"] for f in discover_scans(cohort / t1[0].replace("-T1", "-brain"))[0]] == [
        t1[0].replace("-T1.nii.gz", "-brain")]
