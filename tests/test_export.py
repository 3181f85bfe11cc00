"""Export (TorchScript, ONNX), the onnxruntime backend, shipped-weights packaging, and the inference bundle."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_predict import SPATIAL, ellipsoid_scan, save, tiny_checkpoint

from mrivol_monai.cli import main
from mrivol_monai.export import load_onnx
from mrivol_monai.networks import UNet2d
from mrivol_monai.predict import Predictor, predict
from mrivol_monai.weights import load_model, task_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    image, _, affine = ellipsoid_scan(shape=(24, 40, 36), seed=3)
    return save(tmp_path_factory.mktemp("scan") / "s.nii.gz", image, affine)


def test_onnx_backend_agrees_with_torch_on_a_scan(tmp_path, scan):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", task="subcortical", seed=2, bias=0.0)
    torch_seg = Predictor.from_model(ckpt, backend="torch").segment(scan)
    onnx_seg = Predictor.from_model(ckpt, backend="onnx").segment(scan)
    counts = np.bincount(torch_seg.mask.ravel(), minlength=5)
    assert (counts[1:] > 0).sum() >= 2, counts  # the random net draws several classes: agreement means something
    assert np.mean(torch_seg.mask == onnx_seg.mask) >= 0.999
    for name, ml in torch_seg.volumes.items():
        assert onnx_seg.volumes[name] == pytest.approx(ml, rel=0.01, abs=0.05)


def test_cli_export_onnx_and_torchscript_carry_the_spec(tmp_path, scan, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", seed=4)
    net, spec = load_model(ckpt)
    assert main(["export", "--format", "onnx", "--model", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", "--format", "torchscript", "--model", str(ckpt), "--out", str(tmp_path / "m.ts")]) == 0
    session, onnx_spec = load_onnx(tmp_path / "m.onnx")
    assert onnx_spec == spec
    x = torch.randn(5, 1, *SPATIAL[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = net(x)
    extra = {"mrivol.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.ts"), _extra_files=extra)
    assert json.loads(extra["mrivol.json"]) == spec.to_dict()
    assert torch.allclose(scripted(x), eager, atol=1e-4)
    assert torch.allclose(session(x), eager, atol=1e-4)  # batch 5 though exported with batch 2: dynamic axis
    capsys.readouterr()
    assert main(["predict", str(scan), "--model", str(tmp_path / "m.onnx"), "--backend", "onnx", "--out",
                 str(tmp_path / "out"), "--quiet", "--no-qc"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    reference = Predictor.from_model(ckpt).segment(scan)
    assert float(rows[0]["brain_ml"]) == pytest.approx(reference.volumes["brain"], rel=0.01)
    assert main(["predict", str(scan), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "o2")]) == 2
    assert "needs --backend onnx" in capsys.readouterr().err


def test_export_weights_packages_a_bundle_checkpoint_with_its_spec(tmp_path):
    torch.manual_seed(0)
    trained = tmp_path / "models" / "subcortical" / "model.pt"
    trained.parent.mkdir(parents=True)
    torch.save({"model": UNet2d(1, 5, ed_blocks=4, width=16).state_dict()}, trained)  # as CheckpointSaver writes it
    status = main(["export-weights", "--task", "subcortical", "--checkpoint", str(trained), "--config",
                   str(REPO / "bundle" / "configs" / "train.json"), "--out-dir", str(tmp_path / "w"), "--note", "test"])
    assert status == 0
    meta = json.loads((tmp_path / "w" / "subcortical_unet.json").read_text())
    assert (meta["task"], meta["num_classes"], meta["spatial_size"], meta["depth_axis"]) == (
        "subcortical", 5, [40, 128, 128], "axial")
    assert meta["network_def"]["width"] == 16 and meta["network_def"]["out_channels"] == 5
    assert meta["produced_by"]["source_sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest()
    net, spec = load_model(tmp_path / "w" / "subcortical_unet.pt", "subcortical")
    assert spec.to_dict() == meta
    source = torch.load(trained, weights_only=True)["model"]
    assert all(torch.equal(v, source[k]) for k, v in net.state_dict().items())
    assert main(["export-weights", "--task", "brain", "--checkpoint", str(trained), "--out-dir", str(tmp_path / "w"),
                 "--config", str(REPO / "bundle" / "configs" / "train.json")]) == 2  # 5 classes are not brain


@pytest.mark.slow
def test_inference_bundle_matches_mrivol_predict(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    image, _, affine = ellipsoid_scan(shape=(18, 36, 34))
    save(scans / "a.nii.gz", image, affine)
    save(scans / "b.nii.gz", image[:, ::-1].copy(), affine)
    spatial = [8, 32, 32]
    ckpt = tmp_path / "model.pt"
    torch.manual_seed(1)
    net = UNet2d(1, 2, ed_blocks=4, width=16)  # train.json's network_def, on a smaller grid
    with torch.no_grad():
        net.head.conv.bias.copy_(torch.tensor([0.0, 0.3]))
    spec = task_spec("brain", spatial_size=spatial)
    torch.save({"model": net.state_dict(), "meta": spec.to_dict()}, ckpt)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
         "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "bundle_out"), "--ckpt_path", str(ckpt),
         "--spatial_size", json.dumps(spatial)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = predict([scans], tmp_path / "cli_out", model=ckpt, progress=False, qc=False)
    bundle_rows = {r["scan"]: r for r in csv.DictReader(open(tmp_path / "bundle_out" / "volumes.csv"))}
    assert sorted(bundle_rows) == ["a", "b"]
    for row in result.rows:
        theirs = bundle_rows[row["scan"]]
        assert theirs["brain_ml"] == row["brain_ml"] and float(row["brain_ml"]) > 1.0
        ours, bundled = nib.load(row["mask"]), nib.load(theirs["mask"])
        assert np.array_equal(bundled.affine, nib.load(scans / f"{row['scan']}.nii.gz").affine)
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(bundled.dataobj))
