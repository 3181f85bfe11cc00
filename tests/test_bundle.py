"""The base bundle: metadata verification, config overlays and overrides, and one end-to-end training run
of the real ``python -m monai.bundle run training`` command on a tiny SynthIXI cohort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.json")
SUBCORTICAL = str(CONFIGS / "subcortical.json")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}


def _bundle(*args: str, cwd: Path = REPO, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_verify_metadata_offline_passes_and_catches_a_missing_key(tmp_path):
    schema = str(CONFIGS / "metadata_schema.json")
    ok = _bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", schema)
    assert ok.returncode == 0, ok.stderr[-2000:]
    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    bad = _bundle("verify_metadata", "--meta_file", str(tmp_path / "metadata.json"), "--filepath", schema)
    assert bad.returncode != 0
    assert "num_channels" in bad.stderr


def test_subcortical_overlay_and_overrides_change_the_network():
    parser = ConfigParser()
    parser.read_config([TRAIN, SUBCORTICAL])
    parser["network_def#ed_blocks"] = 3
    assert parser.get_parsed_content("num_classes") == 5
    assert parser.get_parsed_content("task") == "subcortical"
    net = parser.get_parsed_content("network_def")
    out = net(torch.zeros(1, 1, 32, 32))
    assert tuple(out.shape) == (1, 5, 32, 32)
    assert parser.get_parsed_content("ckpt_dir").endswith("models/subcortical")
    loss = parser.get_parsed_content("loss")
    # batch Dice over all classes incl. background: foreground-only Dice left the background
    # unsupervised on slices without structures (bundle/docs/README.md)
    assert type(loss).__name__ == "DiceLoss" and loss.include_background is True and loss.batch is True
    base = ConfigParser()
    base.read_config(TRAIN)
    assert base.get_parsed_content("num_classes") == 2
    assert base.get_parsed_content("datalist").endswith("synthixi_brain.json")
    assert type(base.get_parsed_content("loss")).__name__ == "DiceCELoss"


def test_training_preprocessing_gives_n_slices_per_volume_with_onehot_labels(tiny_cohort):
    data_dir, datalist = tiny_cohort
    parser = ConfigParser()
    parser.read_config([TRAIN, SUBCORTICAL])
    parser.update({"dataset_dir": str(data_dir), "datalist": str(datalist), "spatial_size": [8, 32, 32],
                   "slices_per_volume": 3, "augmentations": "none", "any_slice_fraction": 0.0})
    parser.get_parsed_content("imports")  # as the bundle runner does first
    # the subcortical overlay wants a subcortical datalist: build one next to the brain one
    from mrivol_monai.data import manifests
    sub = data_dir / "datalist_subcortical.json"
    manifests.write_manifest(manifests.build_manifest(data_dir, task="subcortical", seed=0), sub)
    parser["datalist"] = str(sub)
    item = parser.get_parsed_content("train#dataset")[0]
    assert isinstance(item, list) and len(item) == 3
    for s in item:
        assert tuple(s["image"].shape) == (1, 32, 32)
        assert tuple(s["label"].shape) == (5, 32, 32)
        assert torch.allclose(s["label"].sum(0), torch.ones(32, 32))  # one-hot
        assert float(s["label"][1:].sum()) > 0  # only slices showing a structure
    volume = parser.get_parsed_content("train#dataset").transform.transforms
    deterministic = [t for t in volume if not hasattr(t, "randomize")][: len(parser["preprocessing"])]
    from monai.transforms import Compose
    from mrivol_monai.transforms import structure_slices
    entry = parser.get_parsed_content("train#dataset").data[0]
    candidates = set(structure_slices(Compose(deterministic)(dict(entry))["label"]).tolist())
    picked = {s["slice_index"] for s in item}
    assert picked <= candidates
    assert len(picked) == min(3, len(candidates))


def _scalars(log_dir: Path, tag: str) -> list[float]:
    values: list[float] = []
    for event_file in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


@pytest.mark.slow
def test_end_to_end_training_bundle_command(tiny_cohort, tmp_path):
    data_dir, datalist = tiny_cohort
    ckpt_dir, log_dir = tmp_path / "models", tmp_path / "logs"
    args = [
        "run", "training", "--config_file", TRAIN,
        "--dataset_dir", str(data_dir), "--datalist", str(datalist),
        "--ckpt_dir", str(ckpt_dir), "--output_dir", str(log_dir),
        "--spatial_size", "[8,32,32]", "--network_def#ed_blocks", "3", "--network_def#width", "8",
        "--slices_per_volume", "4", "--batch_size", "2", "--epochs", "3", "--augmentations", "none",
        "--learning_rate", "0.01",
    ]
    proc = _bundle(*args)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    best = ckpt_dir / "model.pt"
    assert best.is_file()
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert set(state) == {"model", "meta"} and any(k.endswith("weight") for k in state["model"])
    latest = list(ckpt_dir.glob("latest_*.pt"))
    assert len(latest) == 1
    resumable = torch.load(latest[0], map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "meta"} <= set(resumable)
    _check_console(proc.stdout, log_dir, best)
    _check_provenance(best, args, tmp_path)
    assert resumable["trainer"]["iteration"] == 3 * resumable["trainer"]["epoch_length"]  # saved after epoch 3
    assert list(log_dir.glob("events.out.tfevents.*"))
    dice = _scalars(log_dir, "val_mean_dice")
    assert len(dice) >= 1 and all(0.0 <= d <= 1.0 for d in dice)
    assert len(_scalars(log_dir, "learning_rate")) == 3
    losses = _scalars(log_dir, "train_loss")
    per_epoch = len(losses) // 3
    assert per_epoch >= 1
    assert sum(losses[-per_epoch:]) / per_epoch < sum(losses[:per_epoch]) / per_epoch


def _check_console(stdout: str, log_dir: Path, best: Path) -> None:
    """One line per epoch, no per-iteration lines, a closing summary; the full log in the output folder."""
    lines = stdout.splitlines()
    epochs = [line for line in lines if " epoch " in line and "val Dice" in line]
    assert len(epochs) == 3, stdout
    assert all(" loss " in e and "train Dice" in e and " lr " in e for e in epochs)
    assert not any("Iter:" in line or "Metrics --" in line for line in lines), stdout
    summary = stdout[stdout.index("done: 3 epochs"):]
    best_dice = max(_scalars(log_dir, "val_mean_dice"))
    assert f"best validation Dice {best_dice:.4f} at epoch" in summary
    assert f"model        {best}" in summary
    assert f"--model {best}" in summary and "run evaluating" in summary and f"--logdir {log_dir}" in summary
    full = (log_dir / "training.log").read_text()
    assert full.count("Iter: ") == 3 * 3 and "val_mean_dice" in full  # 3 iterations x 3 epochs


def _check_provenance(best: Path, args: list[str], tmp_path: Path) -> None:
    """The checkpoint's embedded provenance checks out against this repo and the command that made it; a wrong
    command, seed or commit does not; export-weights carries it into the shipped-weights files."""
    from mrivol_monai.cli import main as mrivol
    from mrivol_monai.provenance import check_provenance, git_state

    meta = torch.load(best, map_location="cpu", weights_only=True)["meta"]
    record = meta["produced_by"]
    assert record["commit"] == git_state(REPO)["commit"] and record["seed"] == 0
    assert record["overrides"]["epochs"] == 3 and record["overrides"]["spatial_size"] == [8, 32, 32]
    assert [f["repo_path"] for f in record["config_files"]] == ["bundle/configs/train.json"]
    assert meta["network_def"]["width"] == 8 and meta["spatial_size"] == [8, 32, 32]
    command = " ".join(["python", "-m", "monai.bundle", *(f"'{a}'" if "[" in a else a for a in args)])
    results = check_provenance(best, REPO, command)
    assert all(ok for ok, _ in results), results
    other = check_provenance(best, REPO, command.replace("--epochs 3", "--epochs 4"))
    assert [m for ok, m in other if not ok] and "overrides" in [m for ok, m in other if not ok][0]
    for key, value, word in (("seed", 1, "seed"), ("commit", "0" * 40, "commit")):
        tampered = torch.load(best, map_location="cpu", weights_only=True)
        tampered["meta"]["produced_by"][key] = value
        torch.save(tampered, tmp_path / f"tampered_{key}.pt")
        failed = [m for ok, m in check_provenance(tmp_path / f"tampered_{key}.pt", REPO) if not ok]
        assert failed and failed[0].startswith(word), failed
    assert mrivol(["export-weights", "--task", "brain", "--checkpoint", str(best), "--out-dir",
                   str(tmp_path / "w")]) == 0
    shipped = json.loads((tmp_path / "w" / "brain_unet.json").read_text())
    assert shipped["produced_by"]["training"] == record and shipped["network_def"] == meta["network_def"]
    assert all(ok for ok, _ in check_provenance(tmp_path / "w" / "brain_unet.pt", REPO, command))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_bad_training_file_gives_one_line_error(tiny_cohort, tmp_path, damage):
    import shutil

    data_dir, datalist = tiny_cohort
    copy = tmp_path / "cohort"
    shutil.copytree(data_dir, copy)
    from mrivol_monai.data import manifests

    manifest = copy / "datalist_brain.json"
    manifests.write_manifest(manifests.build_manifest(copy, task="brain", seed=0), manifest)
    victim = copy / json.loads(manifest.read_text())["training"][0]["image"]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:300])
    else:
        victim.unlink()
    proc = _bundle("run", "training", "--config_file", TRAIN, "--dataset_dir", str(copy), "--datalist", str(manifest),
                   "--ckpt_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "l"), "--epochs", "1")
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and victim.name in last, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["brain", "subcortical"])
def test_verify_net_in_out_for_the_bundle_network(task):
    meta = [str(CONFIGS / "metadata.json")]
    configs = [TRAIN]
    if task == "subcortical":
        meta.append(str(CONFIGS / "metadata_subcortical.json"))
        configs.append(SUBCORTICAL)
    ok = _bundle("verify_net_in_out", "network_def", "--meta_file", str(meta), "--config_file", str(configs))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "verified with no error" in ok.stdout + ok.stderr
    # the brain metadata does not describe the 5-class network: the check must notice
    if task == "subcortical":
        bad = _bundle("verify_net_in_out", "network_def", "--meta_file", meta[0], "--config_file", str(configs))
        assert bad.returncode != 0 and "doesn't match" in bad.stderr


def test_evaluation_and_inference_keep_the_largest_brain_component_and_training_does_not():
    def step(parser, key):
        transforms = parser.get_parsed_content(key).transforms
        return [t for t in transforms if type(t).__name__ == "KeepLargestComponentd"]

    train = ConfigParser()
    train.read_config(TRAIN)
    assert [t.labels for t in step(train, "postprocessing")] == [[]]
    for overlay, labels in (([], [1]), ([SUBCORTICAL], [])):
        evaluate = ConfigParser()
        evaluate.read_config([TRAIN, *overlay, str(CONFIGS / "evaluate.json")])
        assert [t.labels for t in step(evaluate, "postprocessing")] == [labels]
    inference = ConfigParser()
    inference.read_config(str(CONFIGS / "inference.json"))
    assert [t.labels for t in step(inference, "postprocessing")] == [[1]]


def test_subcortical_fine_overlay_trains_stage_two_on_the_deep_grey_matter_boxes():
    from mrivol_monai import deep_grey_box

    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "subcortical_fine.json")])
    assert parser.get_parsed_content("num_classes") == deep_grey_box.NUM_CLASSES == 11
    assert parser.get_parsed_content("spatial_size") == list(deep_grey_box.BOX_SIZE)
    net = parser.get_parsed_content("network_def")
    assert tuple(net(torch.zeros(1, 3, 96, 96)).shape) == (1, 11, 96, 96)  # a slice and its two neighbours
    init = parser["initialize"]
    assert any("ensure_dataset(@cohort_dir" in step for step in init) and "ensure_boxes" in init[-1]
    assert not any("ensure_dataset(@dataset_dir" in step for step in init)  # never renders a cohort into the boxes
    assert "flip" not in parser["augmentations"]  # a flip would swap left and right labels
    loss = parser.get_parsed_content("loss")
    assert loss.dice.include_background is False and loss.dice.batch is True
    train_steps = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    val_steps = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert "RandSpatialCropd" in train_steps and "CenterSpatialCropd" in val_steps
    assert "NeighbourSlicesd" in train_steps and "NeighbourSlicesd" in val_steps
    assert parser.get_parsed_content("datalist").endswith("synthixi_subcortical_fine.json")
