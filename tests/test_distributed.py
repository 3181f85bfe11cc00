"""torch.distributed: the multi_gpu_train.json overlay run by torchrun (gloo, 2 CPU processes, tiny cohort and
network, 1 epoch), and the rank helpers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mrivol_monai import distributed

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]


def torchrun_env() -> dict[str, str]:
    """Environment for torchrun children: this checkout first on the path, one thread per process."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


# appended to finalize on every rank: what the rank ended with and which handlers it ran
RANK_REPORT = {
    "+finalize": [
        "$torch.save(@network.module.state_dict(), @ckpt_dir + '/../rank' + str(mrivol_monai.distributed.rank()) + '.pt')",
        "$open(@ckpt_dir + '/../rank' + str(mrivol_monai.distributed.rank()) + '.json', 'w').write(json.dumps({"
        "'train': [type(h).__name__ for h in @train#handlers], 'validate': [type(h).__name__ for h in @validate#handlers],"
        "'tb_writer': @tb_writer is not None, 'checkpoint_saver': @train#checkpoint_saver is not None,"
        "'world_size': mrivol_monai.distributed.world_size(), 'backend': @dist_backend}))",
    ],
    "+imports": ["$import json"],
}
WRITERS = {"TensorBoardStatsHandler", "TensorBoardImageHandler", "AtomicCheckpointSaver", "ProgressBar", "StatsHandler",
           "TrainingConsole"}


def test_ddp_overlay_trains_on_two_ranks_with_identical_weights_and_rank0_writes(tiny_cohort, tmp_path):
    data_dir, datalist = tiny_cohort
    report = tmp_path / "rank_report.json"
    report.write_text(json.dumps(RANK_REPORT))
    ckpt_dir, log_dir = tmp_path / "models", tmp_path / "logs"
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(report)]
    proc = subprocess.run(
        TORCHRUN + ["-m", "monai.bundle", "run", "training", "--config_file", str(configs),
                    "--dataset_dir", str(data_dir), "--datalist", str(datalist),
                    "--ckpt_dir", str(ckpt_dir), "--output_dir", str(log_dir), "--cache_dir", str(tmp_path / "cache"),
                    "--dataset_cache", "disk", "--spatial_size", "[8,32,32]", "--network_def#ed_blocks", "2",
                    "--network_def#width", "4", "--batch_size", "1", "--epochs", "1", "--augmentations", "none",
                    "--learning_rate", "0.01", "--cache_workers", "1"],
        cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    ranks = [torch.load(tmp_path / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # parameters and BatchNorm buffers
    best = torch.load(ckpt_dir / "model.pt", map_location="cpu", weights_only=True)
    assert set(best["model"]) == set(ranks[0])  # saved unwrapped: no "module." prefix
    assert best["meta"]["produced_by"]["seed"] == 0  # with the training record, as single-process runs
    from mrivol_monai.networks import UNet2d

    torch.manual_seed(0)
    untrained = UNet2d(in_channels=1, out_channels=2, ed_blocks=2, width=4).state_dict()
    assert any(not torch.equal(untrained[k], ranks[0][k]) for k in untrained if k.endswith("weight"))

    n_train = len(json.loads(Path(datalist).read_text())["training"])
    latest = list(ckpt_dir.glob("latest_*.pt"))
    assert len(latest) == 1
    trainer = torch.load(latest[0], map_location="cpu", weights_only=True)["trainer"]
    assert trainer["epoch_length"] == math.ceil(n_train / 2)  # DistributedSampler: half the volumes per rank

    events = list(log_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1  # one SummaryWriter: rank 0's
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert len(acc.Scalars("train_loss")) == math.ceil(n_train / 2)
    assert len(acc.Scalars("val_mean_dice")) == 1

    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0]["world_size"] == seen[1]["world_size"] == 2
    assert seen[0]["backend"] == ("nccl" if torch.cuda.is_available() else "gloo")
    assert seen[0]["tb_writer"] and seen[0]["checkpoint_saver"]
    assert WRITERS - {"ProgressBar"} <= set(seen[0]["train"]) | set(seen[0]["validate"])
    assert not seen[1]["tb_writer"] and not seen[1]["checkpoint_saver"]
    assert not WRITERS & (set(seen[1]["train"]) | set(seen[1]["validate"]))
    # what keeps the ranks in step runs everywhere: validation, LR schedule, early stopping
    assert "ValidationHandler" in seen[1]["train"]
    assert {"LrScheduleHandler", "EarlyStopHandler"} <= set(seen[1]["validate"])


def test_shards_are_disjoint_cover_and_parse():
    items = [f"scan{i}" for i in range(7)]
    parts = [distributed.shard(items, k, 3) for k in range(3)]
    assert parts == [["scan0", "scan3", "scan6"], ["scan1", "scan4"], ["scan2", "scan5"]]
    assert sorted(sum(parts, [])) == sorted(items)
    assert distributed.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            distributed.parse_shard(bad)


def test_rank_and_world_come_from_torchrun_variables_before_a_group_exists(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (3, 4, False)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_ddp_evaluate_overlay_gives_the_single_process_results_written_once(tiny_cohort, tmp_path):
    from mrivol_monai.networks import UNet2d

    data_dir, datalist = tiny_cohort
    torch.manual_seed(0)
    net = UNet2d(1, 2, ed_blocks=2, width=4)
    with torch.no_grad():
        net.head.conv.bias.copy_(torch.tensor([0.0, 0.3]))  # so the random net marks part of the head
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    args = ["--dataset_dir", str(data_dir), "--datalist", str(datalist), "--ckpt_dir", str(tmp_path / "models"),
            "--spatial_size", "[8,32,32]", "--network_def#ed_blocks", "2", "--network_def#width", "4",
            # 5 training subjects as the evaluated set: 3 on rank 0, 2 on rank 1
            "--validate#dataset#data", "$mrivol_monai.data.prepare.load_split(@datalist, 'training', @dataset_dir, 5)",
            "--validate#handlers#3#plots", "false"]
    base = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    single = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", str(base),
                             "--eval_dir", str(tmp_path / "single"), *args],
                            cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(TORCHRUN + ["-m", "monai.bundle", "run", "evaluating", "--config_file",
                                       str(base + [str(CONFIGS / "multi_gpu_evaluate.json")]),
                                       "--eval_dir", str(tmp_path / "multi"), *args],
                           cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    for name in ("volumes.csv", "summary.json"):  # every subject once, in datalist order, same numbers
        assert (tmp_path / "multi" / name).read_text() == (tmp_path / "single" / name).read_text()
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["n_subjects"] == 5 and summary["complete"] is True
    assert len(list((tmp_path / "multi").glob("events.out.tfevents.*"))) == 1


def test_cli_shard_combines_array_job_shard_with_torchrun_rank(monkeypatch):
    from mrivol_monai.cli import _shard
    from mrivol_monai.errors import InputError

    assert _shard(None) == (0, 1)
    assert _shard("2/5") == (2, 5)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _shard(None) == (1, 2)
    assert _shard("1/3") == (3, 6)  # array task 1 of 3, rank 1 of 2: shard 3 of 6, disjoint from all others
    with pytest.raises(InputError, match="expected K/N"):
        _shard("half")
