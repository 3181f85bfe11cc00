"""Inputs that used to give a wrong number with exit 0, or a traceback: each now gives one line naming the file
or setting and the fix (issue 16)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mrivol_monai.cli import main
from mrivol_monai.data.nifti_reader import read_nifti
from mrivol_monai.errors import InputError, find_input_error
from mrivol_monai.networks import UNet2d
from mrivol_monai.weights import load_model, task_spec

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundle" / "configs" / "train.json")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
ZOOMS = (1.2, 1.0, 1.1)


def head(shape=(24, 28, 26)) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    return (np.where(r < 0.8, 100.0, 0.0) + np.where(r < 0.5, 50.0, 0.0)).astype(np.float32)


def write_with_header(path: Path, data: np.ndarray, **fields) -> Path:
    """A valid NIfTI (sform and qform code 1), then header ``fields`` overwritten in the file's bytes, so
    nibabel cannot 'fix' them on saving."""
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = -10.0
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr = img.header.copy()
    for key, value in fields.items():
        hdr[key] = value
    hdr.set_data_offset(352)
    raw = hdr.binaryblock + b"\0" * 4 + np.asfortranarray(data).tobytes(order="F")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


BROKEN_AFFINES = {
    "pixdim0_qform_only": {"pixdim": [1, 0, 0, 0, 1, 1, 1, 1], "sform_code": 0},
    "zero_row_sform": {"srow_y": [0, 0, 0, -10], "qform_code": 0},
    "duplicated_row_sform": {"srow_y": [ZOOMS[0], 0, 0, -10], "qform_code": 0},
    "nan_sform": {"srow_x": [np.nan, 0, 0, -10], "qform_code": 0},
    "no_form_pixdim0": {"pixdim": [1, 0, 1, 1, 1, 1, 1, 1], "sform_code": 0, "qform_code": 0},
}


@pytest.mark.parametrize("case", BROKEN_AFFINES)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_without_a_usable_affine_is_refused(tmp_path, case, suffix):
    path = write_with_header(tmp_path / f"{case}{suffix}", head(), **BROKEN_AFFINES[case])
    with pytest.raises(InputError, match="no usable voxel-to-world affine") as err:
        read_nifti(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_broken_sform_with_a_valid_qform_uses_the_qform(tmp_path, caplog):
    path = write_with_header(tmp_path / "q.nii.gz", head(), srow_x=[np.nan, 0, 0, -10])
    _, affine = read_nifti(path)
    assert abs(np.linalg.det(affine[:3, :3])) == pytest.approx(np.prod(ZOOMS), rel=1e-5)
    assert "using its qform" in caplog.text


def test_a_valid_file_written_the_same_way_reads_its_true_voxel_size(tmp_path):
    path = write_with_header(tmp_path / "ok.nii.gz", head())  # the helper itself does not break files
    _, affine = read_nifti(path)
    assert abs(np.linalg.det(affine[:3, :3])) == pytest.approx(np.prod(ZOOMS), rel=1e-5)


def tiny_checkpoint(path: Path, task: str = "brain") -> Path:
    spec = task_spec(task, {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 2, "width": 4},
                     spatial_size=[8, 16, 16])
    torch.save({"model": UNet2d(1, spec.num_classes, ed_blocks=2, width=4).state_dict(), "meta": spec.to_dict()}, path)
    return path


@pytest.mark.parametrize("shape", [(8, 8, 8), (64, 64, 1), (64, 64, 3)])
def test_image_too_small_to_hold_a_head_is_refused_not_zero_ml(tmp_path, capsys, shape):
    path = write_with_header(tmp_path / "small.nii.gz", np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32))
    status = main(["predict", str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_checkpoint(tmp_path / "m.pt")),
                   "--quiet", "--no-qc"])
    err = capsys.readouterr().err
    assert status == 1
    assert f"error: {path}: image of {'x'.join(map(str, shape))} voxels" in err and "too small to hold a head" in err
    assert not (tmp_path / "out" / "volumes.csv").exists()


def test_nan_in_a_training_image_is_caught_on_what_the_file_holds(tmp_path):
    from monai.transforms import LoadImage

    from mrivol_monai.data.manifests import check_pair

    data = head()
    data[3, 4, 5], data[6, 7, 8] = np.nan, np.inf
    image = write_with_header(tmp_path / "s-T1.nii.gz", data)
    label = write_with_header(tmp_path / "s-brain.nii.gz", (head() > 120).astype(np.float32))
    # the point: train.json's ITK reader hands the network finite numbers for this file
    loaded = LoadImage(reader="ITKReader", image_only=True)(str(image))
    assert bool(torch.isfinite(torch.as_tensor(loaded)).all())
    with pytest.raises(InputError, match="NaN or infinite") as err:
        check_pair({"image": str(image), "label": str(label)}, "brain", read_data=True)
    assert str(err.value).startswith(str(image))


def test_predict_with_a_zero_byte_model_is_one_line(tmp_path, capsys):
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    scan = write_with_header(tmp_path / "scan.nii.gz", head())
    assert main(["predict", str(scan), "--out", str(tmp_path / "out"), "--model", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {empty}: checkpoint is empty (0 bytes: its save was interrupted); use another checkpoint or retrain"


def test_model_whose_load_error_has_no_message_is_one_line(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path / "m.pt")

    def fail(*args, **kwargs):
        raise IndexError()  # torch errors with an empty message made the old formatting crash

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(InputError, match=r"not a loadable torch checkpoint \(IndexError\)$"):
        load_model(path)


def _bundle_with_code(tmp_path: Path, code: bool) -> Path:
    """A bundle folder whose models/model.pt has no spec, so its configs/train.json describes it."""
    bundle = tmp_path / ("coded" if code else "plain")
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    marker = tmp_path / "code_ran"
    config = json.loads(Path(TRAIN).read_text())
    config["network_def"] = {"_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1,
                             "out_channels": "@num_classes", "ed_blocks": 2, "width": 4}
    config["spatial_size"] = [8, 16, 16]
    if code:
        config["num_classes"] = f"$open({str(marker)!r}, 'w').write('x') and 2"
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    torch.save({"model": UNet2d(1, 2, ed_blocks=2, width=4).state_dict()}, bundle / "models" / "model.pt")
    return bundle


def test_bundle_model_runs_no_config_code_without_trust_bundle(tmp_path, capsys):
    plain = _bundle_with_code(tmp_path, code=False)
    net, spec = load_model(plain)  # literal values (and @references to them) need no code
    assert spec.spatial_size == [8, 16, 16] and spec.network_def["ed_blocks"] == 2
    coded = _bundle_with_code(tmp_path, code=True)
    scan = write_with_header(tmp_path / "scan.nii.gz", head())
    assert main(["predict", str(scan), "--out", str(tmp_path / "out"), "--model", str(coded), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {coded / 'configs' / 'train.json'}: describes the model with code") and "--trust-bundle" in err
    assert not (tmp_path / "code_ran").exists()
    assert main(["predict", str(scan), "--out", str(tmp_path / "out"), "--model", str(coded), "--quiet",
                 "--no-qc", "--trust-bundle"]) == 0
    assert (tmp_path / "code_ran").exists()  # the opt-in does run the bundle's code


def _bundle_run(run_id: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # if a check failed to fire, only a 2-subject tiny cohort would be generated
    safe = ["--dataset_dir", str(tmp_path / "data"), "--datalist", str(tmp_path / "data.json"),
            "--synthixi_subjects", "2", "--synthixi_geometry", "tiny"]
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", run_id, *safe, *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def test_unknown_network_target_is_one_line(tmp_path):
    proc = _bundle_run("training", tmp_path, "--config_file", TRAIN, "--ckpt_dir", str(tmp_path / "m"),
                       "--output_dir", str(tmp_path / "l"), "--network_def#_target_", "mrivol_monai.networks.UNet9")
    assert proc.returncode == 1
    assert _last_line(proc).startswith("error: network_def#_target_: cannot find 'mrivol_monai.networks.UNet9'; use one of")
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_zero_or_negative_in_the_bundle_is_one_line(tmp_path, epochs):
    proc = _bundle_run("training", tmp_path, "--config_file", TRAIN, "--ckpt_dir", str(tmp_path / "m"),
                       "--output_dir", str(tmp_path / "l"), "--epochs", epochs)
    assert proc.returncode == 1
    assert _last_line(proc) == f"error: epochs must be a whole number >= 1, got {int(epochs)}; e.g. --epochs 30"
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()


EVALUATE = str(REPO / "bundle" / "configs" / "evaluate.json")


@pytest.mark.parametrize("case", ["missing", "empty", "other_task"])
def test_evaluation_with_a_missing_empty_or_other_task_model_is_one_line(tiny_cohort, tmp_path, case):
    data_dir, datalist = tiny_cohort
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    if case == "empty":
        ckpt.write_bytes(b"")
    elif case == "other_task":  # a subcortical (5-class) model under a brain config
        torch.save({"model": UNet2d(1, 5, ed_blocks=2, width=4).state_dict()}, ckpt)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", json.dumps([TRAIN, EVALUATE]),
         "--dataset_dir", str(data_dir), "--datalist", str(datalist), "--ckpt_dir", str(ckpt.parent),
         "--eval_dir", str(tmp_path / "eval"), "--spatial_size", "[8,32,32]", "--network_def#ed_blocks", "2",
         "--network_def#width", "4"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    expected = {"missing": "no trained model here: train first", "empty": "is empty (0 bytes",
                "other_task": "does not fit this config's network (5 output classes in the file)"}[case]
    assert _last_line(proc).startswith(f"error: {ckpt}: {expected}"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("subject", ["../../escaped", "/tmp/absolute_subject", "..", "a/../../b"])
def test_subject_ids_never_write_outside_the_evaluation_folder(tmp_path, subject):
    from monai.data import MetaTensor

    from mrivol_monai.handlers import VolumeEstimationHandler

    out = tmp_path / "deep" / "eval"
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:6, 2:6] = 1
    native = tmp_path / "native-brain.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), native)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 2).permute(3, 0, 1, 2).float()
    label = MetaTensor(onehot, affine=torch.eye(4), meta={"filename_or_obj": str(native)})
    handler = VolumeEstimationHandler(out, ["background", "brain"], plots=False, save_masks=True)
    before = set(tmp_path.rglob("*"))
    handler.add_subject(MetaTensor(onehot.clone(), affine=torch.eye(4)), label, subject=subject)
    written = set(tmp_path.rglob("*")) - before
    masks = sorted(p for p in written if p.name.endswith(".nii.gz"))
    assert len(masks) == 2 and all(p.parent == out / "masks" for p in masks), masks
    assert all(p.is_relative_to(out) for p in written if p.is_file())
    assert not Path("/tmp/absolute_subject_pred.nii.gz").exists()
    rows = (out / "volumes.csv").read_text().splitlines()
    assert rows[1].startswith(subject + ",")  # the csv keeps the id as given


def _write_series(folder: Path, prefix: str, volume_zyx: np.ndarray, description: str) -> None:
    import itk

    folder.mkdir(parents=True, exist_ok=True)
    image = itk.image_from_array(np.ascontiguousarray(volume_zyx.astype(np.int16)))
    image.SetSpacing([1.0, 1.5, 2.0])
    names = itk.NumericSeriesFileNames.New()
    names.SetSeriesFormat(str(folder / f"{prefix}%04d.dcm"))
    names.SetStartIndex(1)
    names.SetEndIndex(volume_zyx.shape[0])
    names.SetIncrementIndex(1)
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New()
    writer.SetInput(image)
    io = itk.GDCMImageIO.New()
    io.GetMetaDataDictionary()["0008|103e"] = description  # a new SeriesInstanceUID per write
    writer.SetImageIO(io)
    writer.SetFileNames(names.GetFileNames())
    writer.Update()


def test_dicom_folder_with_two_series_lists_them_or_takes_series(tmp_path, capsys):
    import csv

    from mrivol_monai.predict import dicom_series

    folder = tmp_path / "patient"
    _write_series(folder, "A", head((20, 30, 30)), "T1 MPRAGE")
    _write_series(folder, "B", head((18, 30, 30)), "T2 FLAIR")
    series = {desc: uid for uid, desc, _ in dicom_series(folder)}
    assert sorted(series) == ["T1 MPRAGE", "T2 FLAIR"]
    model = str(tiny_checkpoint(tmp_path / "m.pt"))
    assert main(["predict", str(folder), "--out", str(tmp_path / "o1"), "--model", model, "--quiet", "--no-qc"]) == 1
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and line[0].startswith(f"error: {folder}: holds 2 DICOM series")
    assert all(uid in line[0] for uid in series.values()) and "T1 MPRAGE" in line[0] and "--series" in line[0]
    assert not (tmp_path / "o1" / "volumes.csv").exists()
    uid = series["T1 MPRAGE"][:40]  # a unique start of the id is enough
    assert main(["predict", str(folder), "--out", str(tmp_path / "o2"), "--model", model, "--quiet", "--no-qc",
                 "--series", uid]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o2" / "volumes.csv")))
    assert len(rows) == 1 and nib.load(rows[0]["mask"]).shape[2] == 20  # the T1's 20 slices, not the FLAIR's 18


# ---- the inference bundle refuses what mrivol predict refuses ---------------------------------------------------

def _refusal(chain, data: dict) -> str:
    """The one-line InputError ``chain`` raises on ``data`` (MONAI's Compose wraps it in a RuntimeError)."""
    with pytest.raises(Exception) as err:
        chain(data)
    found = find_input_error(err.value)
    assert found is not None, err.value
    return str(found)


def _inference_preprocessing(**settings):
    """inference.json's preprocessing (bundle_root = this repository's bundle) with ``settings`` overridden."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(REPO / "bundle"), **settings})
    parser.get_parsed_content("imports")
    return parser.get_parsed_content("preprocessing")


@pytest.mark.parametrize("shape", [(8, 8, 8), (64, 64, 1), (64, 64, 3)])
def test_inference_bundle_refuses_an_image_too_small_to_hold_a_head(tmp_path, shape):
    path = write_with_header(tmp_path / "small.nii.gz", np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32))
    line = _refusal(_inference_preprocessing(), {"image": str(path)})
    assert line.startswith(f"{path}: image of {'x'.join(map(str, shape))} voxels")
    assert "too small to hold a head" in line and "\n" not in line
    big = write_with_header(tmp_path / "big.nii.gz", head())  # 24x28x26 voxels of ~1 mm: measured
    assert tuple(_inference_preprocessing()({"image": str(big)})["image"].shape) == (1, 40, 128, 128)


def test_inference_bundle_refuses_a_two_series_dicom_folder_or_reads_the_named_series(tmp_path):
    from mrivol_monai.predict import dicom_series

    folder = tmp_path / "patient"
    _write_series(folder, "A", head((20, 30, 30)), "T1 MPRAGE")
    _write_series(folder, "B", head((18, 30, 30)), "T2 FLAIR")
    series = {desc: uid for uid, desc, _ in dicom_series(folder)}
    line = _refusal(_inference_preprocessing(), {"image": str(folder)})
    assert line.startswith(f"{folder}: holds 2 DICOM series") and "--series" in line and "\n" not in line
    assert all(uid in line for uid in series.values()) and "T2 FLAIR" in line
    assert "has no DICOM series '1.2.3'" in _refusal(_inference_preprocessing(series="1.2.3"), {"image": str(folder)})
    for description, slices in (("T1 MPRAGE", 20), ("T2 FLAIR", 18)):
        chain = _inference_preprocessing(series=series[description])
        loaded = chain.transforms[1](chain.transforms[0]({"image": str(folder)}))  # series check, loader
        assert loaded["image"].shape[-1] == slices  # the named series, not the first


@pytest.mark.slow
def test_inference_bundle_run_on_a_too_small_image_is_one_line(tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(REPO / "bundle", repo / "bundle", ignore=shutil.ignore_patterns("models", "logs", "data", "eval",
                                                                                   "predictions", "cache", "runs"))
    env = {**ENV, "PYTHONPATH": str(REPO)}  # this checkout's package, whatever is installed
    made = subprocess.run([sys.executable, "-m", "mrivol_monai.cli", "bundle-model"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    scans = tmp_path / "scans"
    scans.mkdir()
    small = write_with_header(scans / "small.nii.gz", np.random.default_rng(0).uniform(0, 100, (8, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--dataset_dir", str(scans), "--output_dir", str(out)], cwd=repo / "bundle", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in proc.stderr.splitlines() if line.strip()][-1:]  # the last line, no traceback
    assert errors[0].startswith(f"error: {small}: image of 8x8x8 voxels") and "Traceback" not in proc.stderr
    assert not (out / "volumes.csv").exists()
