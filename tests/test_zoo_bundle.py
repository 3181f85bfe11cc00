"""The bundle as the MONAI Model Zoo sees it: self-contained and relocatable (LICENSE, datalists, models/model.pt
from one command, bundle_root from the working directory), metadata against the offline schema, MONAI's
standard property ids, and the zoo's own ``ci/verify_bundle.py`` (skipped when no model-zoo copy is around)."""

from __future__ import annotations

import configparser
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata

from mrivol_monai.bundle_config import find_bundle_root, train_setting
from mrivol_monai.errors import InputError

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SCHEMA = CONFIGS / "metadata_schema.json"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
# a Project-MONAI/model-zoo checkout or git directory; absent in CI, so the zoo tests skip there
ZOO_CANDIDATES = [os.environ.get("MRIVOL_MODEL_ZOO", ""), "/work/.mirror/Project-MONAI+model-zoo/repo"]
ZOO = next((Path(z) for z in ZOO_CANDIDATES if z and Path(z).exists()), None)
needs_zoo = pytest.mark.skipif(ZOO is None, reason="no Project-MONAI/model-zoo copy (set MRIVOL_MODEL_ZOO)")


def _copy_bundle(dest: Path) -> Path:
    """The committed bundle (no generated folders) at ``dest``."""
    generated = {"data", "logs", "eval", "models", "runs", "predictions", "new_scans", "__pycache__"}
    shutil.copytree(BUNDLE, dest, ignore=lambda d, names: [n for n in names if Path(d) == BUNDLE and n in generated])
    return dest


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


# ---- self-contained -------------------------------------------------------------------------------------------

def test_bundle_carries_its_licences_and_datalists():
    licence = (BUNDLE / "LICENSE").read_text()
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["metadata"]["license"] == "Apache-2.0"  # the bundle's licence is the package's
    data = (BUNDLE / "docs" / "data_license.txt").read_text()
    assert "CC BY-SA 3.0" in data or "Attribution-ShareAlike 3.0" in data  # IXI
    assert "SynthSeg" in data and "Apache License 2.0" in data  # the label maps
    for task in ("brain", "subcortical"):
        datalist = BUNDLE / "datalists" / f"synthixi_{task}.json"
        assert json.loads(datalist.read_text())["task"] == task
        # train.json reads it from inside the bundle, wherever the bundle is
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({"bundle_root": "/somewhere/else", "task": task})
        assert Path(parser.get_parsed_content("datalist")) == Path("/somewhere/else/datalists") / datalist.name


def test_find_bundle_root_inside_the_bundle_from_the_repo_root_and_elsewhere(tmp_path):
    assert find_bundle_root(BUNDLE) == "."
    assert find_bundle_root(REPO) == "bundle"
    with pytest.raises(InputError, match="--bundle_root"):
        find_bundle_root(tmp_path)


def test_inference_config_has_no_cwd_relative_macros():
    text = (CONFIGS / "inference.json").read_text()
    assert "%bundle/" not in text and '"bundle_root": "bundle"' not in text
    # what it reads from train.json follows an overlay's class count (subcortical: 5 output channels)
    net = train_setting(BUNDLE, "network_def", num_classes=5)
    assert net(torch.zeros(1, 1, 16, 16)).shape == (1, 5, 16, 16)


def test_bundle_model_command_writes_the_shipped_weights_as_a_bare_state_dict(tmp_path):
    from mrivol_monai.weights import load_model

    copy = _copy_bundle(tmp_path / "bundle")
    # run inside the copy without --bundle: the command finds the bundle it is started in
    proc = _run(["-m", "mrivol_monai.cli", "bundle-model"], cwd=copy, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run(["-m", "mrivol_monai.cli", "bundle-model", "--task", "subcortical", "--bundle", str(copy)],
                cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for task, path in (("brain", copy / "models" / "model.pt"),
                       ("subcortical", copy / "models" / "subcortical" / "model.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert "model" not in state and "meta" not in state  # what ckpt_export and CheckpointLoader expect
        shipped, _ = load_model(None, task)
        assert state.keys() == shipped.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in shipped.state_dict().items())


def test_bundle_model_refuses_a_network_the_weights_do_not_fit(tmp_path):
    from mrivol_monai.export import bundle_model

    copy = _copy_bundle(tmp_path / "bundle")
    train = json.loads((copy / "configs" / "train.json").read_text())
    train["network_def"]["width"] = 8
    (copy / "configs" / "train.json").write_text(json.dumps(train))
    with pytest.raises(InputError, match="do not fit"):
        bundle_model("brain", copy)
    assert not (copy / "models" / "model.pt").exists()


# ---- metadata -------------------------------------------------------------------------------------------------

def test_metadata_passes_the_offline_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    verify_metadata(meta_file=[str(CONFIGS / "metadata.json"), str(CONFIGS / "metadata_subcortical.json")],
                    filepath=str(SCHEMA))


@pytest.mark.parametrize("path", ["optional_packages_version", "required_packages_version", "numpy_version",
                                  "authors", "network_data_format/outputs",
                                  "network_data_format/inputs/image/num_channels",
                                  "network_data_format/inputs/image/value_range"])
def test_offline_schema_rejects_metadata_without_a_required_key(tmp_path, path):
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    *parents, last = path.split("/")
    node = meta
    for key in parents:
        node = node[key]
    del node[last]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=last):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


def _min_version(requirement: str) -> tuple[int, ...] | None:
    found = re.search(r">=\s*([0-9.]+)", requirement)
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


def test_metadata_pins_agree_with_setup_cfg_and_with_each_other():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    # MONAI >= 1.4 renames optional_packages_version to required_packages_version when it reads metadata,
    # replacing the latter: identical content means the rename loses nothing
    assert meta["optional_packages_version"] == meta["required_packages_version"]
    assert meta["version"] in meta["changelog"]
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    requires = {re.split(r"[\[<>=!\s]", r.strip(), maxsplit=1)[0].lower(): r.strip()
                for r in setup["options"]["install_requires"].strip().splitlines()}
    pins = {**meta["required_packages_version"], "monai": meta["monai_version"], "torch": meta["pytorch_version"],
            "numpy": meta["numpy_version"]}
    for name in ("monai", "torch", "numpy", "nibabel", "itk", "scipy", "matplotlib", "onnx", "onnxruntime", "isal"):
        assert name in requires, name
        low = _min_version(requires[name])
        assert low is not None and tuple(int(p) for p in pins[name].split(".")) >= low, (name, pins[name], low)


# ---- MONAI's standard property ids ----------------------------------------------------------------------------

def _wrong_optional_ids(workflow: ConfigWorkflow) -> list[str]:
    return [n for n, p in workflow.properties.items()
            if not p.get("required", False) and not workflow._check_optional_id(name=n, property=p)]


def test_training_config_uses_the_standard_property_ids(tmp_path):
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train",
                              meta_file=str(CONFIGS / "metadata.json"), logging_file=False)
    assert _wrong_optional_ids(workflow) == []
    for alias in ("train#postprocessing", "validate#preprocessing", "validate#postprocessing"):
        assert alias in workflow.parser
    # the check is real: an evaluator that bypasses the alias is reported
    train = json.loads((CONFIGS / "train.json").read_text())
    train["validate"]["evaluator"]["postprocessing"] = "@postprocessing"
    (tmp_path / "train.json").write_text(json.dumps(train))
    broken = ConfigWorkflow(config_file=str(tmp_path / "train.json"), workflow_type="train",
                            meta_file=str(CONFIGS / "metadata.json"), logging_file=False)
    assert _wrong_optional_ids(broken) == ["val_postprocessing"]


def test_check_properties_passes_for_training_and_inference(tiny_cohort, tmp_path, monkeypatch):
    data_dir, datalist = tiny_cohort
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # train.json's initialize installs its own
    train = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train",
                           meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
                           dataset_dir=str(data_dir), datalist=str(datalist), spatial_size=[8, 32, 32],
                           ckpt_dir=str(tmp_path / "m"), output_dir=str(tmp_path / "l"), cache_workers=0)
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), workflow_type="infer",
                           meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
                           dataset_dir=str(data_dir), output_dir=str(tmp_path / "p"))
    infer.initialize()
    assert infer.check_properties() == []


def test_early_stop_handler_is_found_by_type_not_position():
    from monai.handlers import EarlyStopHandler, StatsHandler

    from mrivol_monai.handlers.early_stopping import attach_early_stop

    training = json.loads((CONFIGS / "train.json").read_text())["training"]
    assert not any(re.search(r"handlers#\d", step) for step in training)

    from ignite.engine import Engine

    stop = EarlyStopHandler(patience=2, score_function=lambda e: 0.0, trainer=None)
    trainer = Engine(lambda engine, batch: None)
    assert attach_early_stop([StatsHandler(), stop, StatsHandler()], trainer) is stop
    assert stop._handler is not None and stop._handler.trainer is trainer  # ignite's EarlyStopping now exists
    with pytest.raises(ValueError, match="found 0"):
        attach_early_stop([StatsHandler()], trainer)


# ---- relocatable: the real bundle command from two working directories -------------------------------------------

@pytest.mark.slow
def test_inference_runs_from_inside_the_bundle_and_from_the_repo_root(tiny_cohort, tmp_path):
    data_dir, _ = tiny_cohort
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = sorted(data_dir.glob("*-T1.nii.gz"))[0]
    shutil.copy(scan, scans / scan.name)
    repo = tmp_path / "repo"
    copy = _copy_bundle(repo / "bundle")
    assert _run(["-m", "mrivol_monai.cli", "bundle-model"], cwd=repo, timeout=300).returncode == 0
    volumes = {}
    for cwd, config in ((copy, "configs/inference.json"), (repo, "bundle/configs/inference.json")):
        out = tmp_path / f"out_{cwd.name}"
        proc = _run(["-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(scans),
                     "--output_dir", str(out)], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(out / "volumes.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["scan"] for r in rows] == [scan.name[: -len(".nii.gz")]]
        volumes[cwd.name] = float(rows[0]["brain_ml"])
    assert volumes["bundle"] > 0 and volumes["bundle"] == volumes["repo"]


# ---- the Model Zoo's own verification ---------------------------------------------------------------------------

@pytest.mark.slow
@needs_zoo
def test_model_zoo_verify_bundle_passes_min_regular_and_full():
    proc = _run([str(REPO / "docs" / "verify_zoo_bundle.py"), "--zoo", str(ZOO)], cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for mode in ("min", "regular", "full"):
        assert re.search(rf"^{mode}\s+passed$", proc.stdout, re.M), proc.stdout


@pytest.mark.slow
@needs_zoo
def test_model_zoo_verify_bundle_fails_without_a_licence(tmp_path):
    copy = _copy_bundle(tmp_path / "bundle")
    (copy / "LICENSE").unlink()
    proc = _run([str(REPO / "docs" / "verify_zoo_bundle.py"), "--zoo", str(ZOO), "--bundle", str(copy),
                 "--modes", "min"], cwd=REPO, timeout=600)
    assert proc.returncode == 1
    assert re.search(r"^min\s+FAILED$", proc.stdout, re.M)
    assert "LICENSE is not existing" in proc.stderr
