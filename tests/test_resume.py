"""Training survives a crash: checkpoint saves killed half-way keep the previous files, and a bundle run killed
in epoch k and resumed with ``--resume true`` ends exactly as an uninterrupted run with the same seed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrivol_monai.errors import InputError
from mrivol_monai.handlers import check_epochs, check_training_run, latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundle" / "configs" / "train.json")
KILL = str(REPO / "tests" / "configs" / "kill_during_epoch.json")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

# A tiny engine saving the latest checkpoint (n_saved=1) and the best model (model.pt) every epoch, whose
# torch.save is replaced, at save number KILL_AT, by one that writes half the bytes and SIGKILLs the process.
FAULT_SCRIPT = r"""
import io, os, signal, sys
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from mrivol_monai.handlers import AtomicCheckpointSaver

kind, folder, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
Saver = {"monai": CheckpointSaver, "atomic": AtomicCheckpointSaver}[kind]
net = torch.nn.Linear(64, 64)
engine = Engine(lambda e, b: None)

@engine.on(Events.EPOCH_COMPLETED)
def step(e):  # weights and score change every epoch; epoch 1's weights are all 1.0
    with torch.no_grad():
        net.weight.fill_(float(e.state.epoch))
    e.state.metrics["score"] = float(e.state.epoch)

Saver(folder, {"model": net}, save_key_metric=True, key_metric_name="score", key_metric_filename="model.pt").attach(engine)
Saver(folder, {"model": net, "trainer": engine}, save_interval=1, n_saved=1, file_prefix="latest").attach(engine)
real_save, calls = torch.save, [0]

def dying_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] < kill_at:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
engine.run([0], max_epochs=3)
"""


def _loadable(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


@pytest.mark.parametrize("killed", ["model.pt", "latest"])
@pytest.mark.parametrize("kind", ["monai", "atomic"])
def test_kill_during_checkpoint_save_keeps_the_previous_files(tmp_path, kind, killed):
    # saves per epoch: 1 = model.pt, 2 = latest; epoch 2 starts at save 3
    kill_at = 3 if killed == "model.pt" else 4
    proc = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, kind, str(tmp_path), str(kill_at)], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed, in the middle of the save
    best = _loadable(tmp_path / "model.pt")
    latest = [p for p in tmp_path.glob("latest_*.pt") if _loadable(p) is not None]
    if kind == "monai":  # what the issue measured: MONAI/ignite lose the previous file
        if killed == "model.pt":
            assert best is None
        else:
            assert latest == []
        return
    # killed writing model.pt: epoch 1's model.pt is intact; killed writing latest: epoch 2's model.pt was done
    assert best is not None and float(best["weight"].mean()) == (1.0 if killed == "model.pt" else 2.0)
    assert [p.name for p in latest] == ["latest_checkpoint_epoch=1.pt"]
    assert float(torch.load(latest[0], weights_only=True)["model"]["weight"].mean()) == 1.0


def test_atomic_saver_replaces_the_previous_latest_after_writing(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, "atomic", str(tmp_path), "999"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest_checkpoint_epoch=3.pt", "model.pt"]
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"].mean()) == 3.0


def _train(cohort, ckpt: Path, logs: Path, *extra: str, config: str = TRAIN) -> subprocess.CompletedProcess:
    data_dir, datalist = cohort
    args = ["run", "training", "--config_file", config, "--dataset_dir", str(data_dir), "--datalist", str(datalist),
            "--ckpt_dir", str(ckpt), "--output_dir", str(logs), "--spatial_size", "[8,32,32]",
            "--network_def#ed_blocks", "3", "--network_def#width", "4", "--slices_per_volume", "4",
            "--batch_size", "2", "--learning_rate", "0.01", "--cache_workers", "1",
            # early stop after epoch 3 (min_delta too large to count as progress): tests the restored counter
            "--epochs", "8", "--early_stop_patience", "2", "--early_stop_min_delta", "0.5", *extra]
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_run_resumed_ends_as_the_uninterrupted_run(tiny_cohort, tmp_path):
    whole = _train(tiny_cohort, tmp_path / "whole" / "models", tmp_path / "whole" / "logs")
    assert whole.returncode == 0, whole.stderr[-3000:]
    ckpt, logs = tmp_path / "killed" / "models", tmp_path / "killed" / "logs"
    killed = _train(tiny_cohort, ckpt, logs, config=str([TRAIN, KILL]))
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL in the first iteration of epoch 3
    assert latest_checkpoint(ckpt).name == "latest_checkpoint_epoch=2.pt"
    best_before = _digest(ckpt / "model.pt")

    again = _train(tiny_cohort, ckpt, logs)  # a plain re-run must not replace the model
    assert again.returncode != 0
    line = _last_line(again)
    assert line.startswith("error: ") and str(ckpt) in line and "--resume true" in line, again.stderr[-2000:]
    assert "epoch 2 of 8" in line and "Traceback" not in again.stderr
    assert _digest(ckpt / "model.pt") == best_before

    resumed = _train(tiny_cohort, ckpt, logs, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert sorted(p.name for p in ckpt.glob("*.pt")) == sorted(p.name for p in (tmp_path / "whole" / "models").glob("*.pt"))
    a = torch.load(latest_checkpoint(ckpt), weights_only=True)
    b = torch.load(latest_checkpoint(tmp_path / "whole" / "models"), weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 3 * b["trainer"]["epoch_length"]
    assert b["run_state"]["finished"] and a["run_state"]["finished"]  # both stopped early, at epoch 3 of 8
    assert a["run_state"]["best_metric"] == pytest.approx(b["run_state"]["best_metric"], abs=1e-4)
    assert a["run_state"]["best_metric_epoch"] == b["run_state"]["best_metric_epoch"]
    assert a["run_state"]["early_stop"] == b["run_state"]["early_stop"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in b["optimizer"]["state"].values()]
    assert len(moments) > 0
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip([(s["exp_avg"], 0) for s in a["optimizer"]["state"].values()],
                                                         [(m[0], 0) for m in moments]))
    assert a["lr_scheduler"] == b["lr_scheduler"]
    best_a = torch.load(ckpt / "model.pt", weights_only=True)["model"]  # the best model's state dict (+ "meta")
    best_b = torch.load(tmp_path / "whole" / "models" / "model.pt", weights_only=True)["model"]
    assert all(torch.allclose(best_a[k], best_b[k], atol=1e-6) for k in best_b)

    files = {p.name: _digest(p) for p in ckpt.glob("*.pt")}
    finished = _train(tiny_cohort, ckpt, logs, "--resume", "true")  # resuming a run that stopped early
    assert finished.returncode == 0 and "nothing to resume" in finished.stdout + finished.stderr
    assert {p.name: _digest(p) for p in ckpt.glob("*.pt")} == files


def test_resume_with_nothing_to_resume_says_so(tmp_path):
    with pytest.raises(InputError, match="no latest_.*checkpoint to resume from"):
        check_training_run(tmp_path / "m", tmp_path / "l", "true")


@pytest.mark.parametrize("epochs", [0, -2, "ten", 2.5])
def test_epochs_below_one_is_one_line(epochs):
    with pytest.raises(InputError, match=r"epochs must be a whole number >= 1, got .*--epochs"):
        check_epochs(epochs)


@pytest.mark.parametrize("setting", ["ckpt_dir", "output_dir"])
def test_unwritable_folder_in_the_bundle_run_is_one_line(tiny_cohort, tmp_path, setting):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    folders = {"ckpt_dir": tmp_path / "m", "output_dir": tmp_path / "l", setting: blocker / "sub"}
    proc = _train(tiny_cohort, folders["ckpt_dir"], folders["output_dir"])
    assert proc.returncode == 1
    assert _last_line(proc) == (f"error: {blocker / 'sub'}: {setting} is not writable (Not a directory); choose another "
                                f"with --{setting} DIR")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("setting", ["ckpt_dir", "output_dir"])
def test_unwritable_checkpoint_or_log_folder_is_one_line(tmp_path, setting):
    blocker = tmp_path / "a_file"  # a folder under a file cannot be made, even by root (chmod would not stop root)
    blocker.write_text("")
    folders = {"ckpt_dir": tmp_path / "m", "output_dir": tmp_path / "l", setting: blocker / "sub"}
    with pytest.raises(InputError, match=f"{setting} is not writable"):
        check_training_run(folders["ckpt_dir"], folders["output_dir"], False)
