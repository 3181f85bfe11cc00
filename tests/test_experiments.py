"""The study runner: overlays, statistics, grid bookkeeping, and one tiny E1 study (2 variants x 2 seeds,
1 epoch, real bundle workflows in subprocesses) checked for its tables, aggregates and resume behaviour."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mrivol_monai.errors import InputError
from mrivol_monai.experiments import __main__ as cli
from mrivol_monai.experiments import aggregate, convergence, grid_search, report, runner, stats, verdicts
from mrivol_monai.experiments import variants
from mrivol_monai.experiments.variants import EXPERIMENTS, PROFILES, select_variants
from mrivol_monai.networks import FCN2d, SegNet2d, UNet2d, count_parameters
from mrivol_monai.transforms.slab_sampling import NeighbourSlicesd, stack_neighbours

CONFIGS = runner.CONFIGS


def _parse(overlays, **updates):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")] + [str(CONFIGS / o) for o in overlays])
    parser.update(updates)
    return parser


def test_every_variant_overlay_builds_the_network_it_names(tmp_path):
    expected = {"model_fcn": FCN2d, "model_segnet": SegNet2d}
    for exp in EXPERIMENTS.values():
        for v in exp.variants:
            assert all((CONFIGS / o).is_file() for o in v.overlays), v
            if "model_unet3d" in " ".join(v.overlays):
                continue  # 3D: checked below
            parser = _parse(v.overlays, **{"network_def#width": 4})
            net = parser.get_parsed_content("network_def")
            cls = next((c for k, c in expected.items() if k in " ".join(v.overlays)), UNet2d)
            assert type(net) is cls, (exp.key, v.name)
            if v.name.startswith(("unet_ed", "fcn_ed")):
                assert net.ed_blocks == int(v.name[-1])
    fcn = _parse(("experiments/model_fcn.json", "experiments/ed3.json"))
    assert fcn.get_parsed_content("learning_rate") == pytest.approx(1e-4)
    assert fcn.get_parsed_content("loss_name") == "bce"
    assert fcn["optimizer"]["_target_"] == "torch.optim.RMSprop"
    sub = _parse(("subcortical.json", "experiments/ed7.json"))
    assert sub.get_parsed_content("num_classes") == 5
    assert _parse(("experiments/e3_slices20.json",)).get_parsed_content("slices_per_volume") == 20
    # profile width lies under the variant: E2's width axis wins
    spec = runner.plan("E2", PROFILES["quick"], tmp_path, 1, ["unet_width32"], cache=False)[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "profile.json").write_text(json.dumps(spec.settings))
    (spec.run_dir / "run.json").write_text(json.dumps(spec.run_settings()))
    width = ConfigParser()
    width.read_config(spec.train_files())
    assert spec.settings["network_def#width"] == 8
    assert width.get_parsed_content("network_def").width == 32


def test_each_overlay_alone_does_what_its_name_says():
    """A file name never lies: every overlay in experiments/, laid alone over train.json, sets what it is named
    after, and none is only run folders (the runner sets ckpt_dir / output_dir)."""
    families = {"model_fcn": FCN2d, "model_segnet": SegNet2d}
    files = sorted((CONFIGS / "experiments").glob("*.json"))
    assert files
    for path in files:
        content = json.loads(path.read_text())
        assert set(content) - {"ckpt_dir", "output_dir"}, path.name
        stem = path.stem
        parser = _parse((f"experiments/{path.name}",), **{"network_def#width": 4})
        if stem in families:
            assert type(parser.get_parsed_content("network_def")) is families[stem], stem
        elif stem.startswith("ed"):
            net = parser.get_parsed_content("network_def")
            assert type(net) is UNet2d and net.ed_blocks == int(stem[2:]), stem
        elif stem.startswith("e2_unet_width"):
            parser = _parse((f"experiments/{path.name}",))
            assert parser.get_parsed_content("network_def").width == int(stem.rsplit("width", 1)[1]), stem
        elif stem.startswith("e3_slices"):
            assert parser.get_parsed_content("slices_per_volume") == int(stem.rsplit("slices", 1)[1]), stem
        elif stem.startswith("e1_"):
            augs = parser.get_parsed_content("augmentations")
            assert stem[3:] in ("_".join(augs) if isinstance(augs, list) else augs), stem
        elif stem == "model_unet25d":
            assert parser.get_parsed_content("network_def#in_channels") == 3
        elif stem == "model_unet3d":
            assert parser["network_def"]["_target_"].endswith("unet3d")
        else:
            raise AssertionError(f"{path.name}: no rule says what this overlay should do")


def test_unet25d_and_unet3d_overlays_shape_data_and_outputs(tiny_cohort):
    data_dir, datalist = tiny_cohort
    small = {"dataset_dir": str(data_dir), "datalist": str(datalist), "spatial_size": [8, 32, 32],
             "augmentations": "none", "slices_per_volume": 2}
    p25 = _parse(("experiments/model_unet25d.json", "experiments/ed5.json"),
                 **small, **{"network_def#ed_blocks": 3, "network_def#width": 4})
    p25.get_parsed_content("imports")
    item = p25.get_parsed_content("train#dataset")[0][0]
    assert tuple(item["image"].shape) == (3, 32, 32) and tuple(item["label"].shape) == (2, 32, 32)
    assert p25.get_parsed_content("network_def")(item["image"][None]).shape == (1, 2, 32, 32)
    p3 = _parse(("experiments/model_unet3d.json",), **small)
    p3.get_parsed_content("imports")
    vol = p3.get_parsed_content("train#dataset")[0]
    assert tuple(vol["label"].shape) == (2, 16, 32, 32)  # depth 8 padded to the 3D UNet's multiple of 16
    assert p3.get_parsed_content("validate#inferer").roi_size == [16, 32, 32]


def test_stack_neighbours_puts_adjacent_slices_in_channels_and_clamps_at_the_ends():
    img = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 2, 2).clone()  # slice d holds value d
    out = stack_neighbours(img, 1)
    assert out.shape == (3, 4, 2, 2)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 3]]
    assert torch.equal(stack_neighbours(img, 0), img)
    d = NeighbourSlicesd("image", neighbours=2)({"image": img, "label": img})
    assert d["image"].shape == (5, 4, 2, 2) and d["label"].shape == (1, 4, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        stack_neighbours(torch.zeros(4, 2, 2), 1)


def test_describe_gives_sample_std_and_t_interval():
    d = aggregate.describe([0.90, 0.94, 0.95, None, math.nan])
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.93)
    assert d["std"] == pytest.approx(0.026457513, rel=1e-6)
    assert d["ci95_high"] - d["mean"] == pytest.approx(4.302652730 * 0.026457513 / math.sqrt(3), rel=1e-6)
    one = aggregate.describe([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci95_low"])


def test_profiles_and_variant_selection():
    quick, paper = PROFILES["quick"], PROFILES["paper"]
    assert paper.repeats == 10 and paper.settings["network_def#width"] == 64
    assert quick.repeats >= 5 and quick.repeats >= verdicts.MIN_RUNS  # enough seeds for the verdicts' tests
    names = [v.name for v in select_variants(EXPERIMENTS["E2"], quick)]
    assert "unet_width64" not in names and "unet_ed2" in names
    assert [v.name for v in select_variants(EXPERIMENTS["E2"], paper)][-1] == "unet_width64"
    with pytest.raises(InputError, match="unknown variants"):
        select_variants(EXPERIMENTS["E1"], quick, ["nope"])


def test_grid_space_points_ids_and_leaderboard_use_validation_only(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("name: g\nseeds: [0, 1]\ngrid:\n  learning_rate: [0.001, 0.01]\n  batch_size: [2]\n")
    space = grid_search.load_space(space_file)
    pts = grid_search.points(space["grid"])
    assert pts == [{"learning_rate": 0.001, "batch_size": 2}, {"learning_rate": 0.01, "batch_size": 2}]
    assert grid_search.point_id({"batch_size": 2, "learning_rate": 0.01}) == grid_search.point_id(pts[1])
    specs = grid_search.grid_specs(space, tmp_path)
    assert len(specs) == 4 and not any(s.evaluate for _, s in specs)
    assert specs[1][1].settings["learning_rate"] == 0.001 and specs[1][1].seed == 1
    a, b = (grid_search.point_id(p) for p in pts)
    fake = [{"variant": a, "val_dice": 0.80, "test_dice": 0.99, "train_dice": 0.9, "epochs": 3, "params": 10,
             "train_seconds": 1.0},
            {"variant": a, "val_dice": 0.82, "test_dice": 0.99, "train_dice": 0.9, "epochs": 3, "params": 10,
             "train_seconds": 1.0},
            {"variant": b, "val_dice": 0.85, "test_dice": 0.10, "train_dice": 0.9, "epochs": 3, "params": 10,
             "train_seconds": 1.0}]
    board = grid_search.leaderboard(space, fake)
    assert [r["point"] for r in board] == [b, a]  # validation decides, test Dice is ignored
    assert board[1]["val_dice_mean"] == pytest.approx(0.81)
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  learning_rate: 0.1\n")
    with pytest.raises(InputError, match="bad.yaml: grid 'learning_rate'"):
        grid_search.load_space(bad)


def test_cli_reports_bad_input_in_one_line(capsys):
    assert cli.main(["run", "E9", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown experiment 'E9'; known: E1, E2, E3, E4, E5"]


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("E1/*/seed*/result.json"))}


class _FakeChild:
    pid = 0


def _fake_runs(monkeypatch) -> list:
    """run_one without a child process: the command it would start is recorded, the child 'measures' 99 MB
    and 7 CPU seconds, and collect reports 5 training seconds."""
    launched: list = []
    monkeypatch.setattr(runner.subprocess, "Popen", lambda args, **kw: launched.append(args) or _FakeChild())
    monkeypatch.setattr(runner, "_wait_with_rusage", lambda proc: (0, 99.0, 7.0))
    monkeypatch.setattr(runner, "collect", lambda spec, **kw: {"val_dice": 0.5, "train_seconds": 5.0, **kw})
    return launched


def test_a_killed_run_resumes_from_its_latest_checkpoint_and_leaves_its_time_out(tmp_path, monkeypatch):
    launched = _fake_runs(monkeypatch)
    killed, unsaved = runner.plan("E1", PROFILES["quick"], tmp_path / "runs", 2, ["none"], cache=False)
    for spec, files in ((killed, ("model.pt", "latest_checkpoint_epoch=3.pt")), (unsaved, ("model.pt",))):
        for name in files:  # what an attempt killed in epoch 4 (or in epoch 1, before the latest save) left
            (spec.run_dir / "models").mkdir(parents=True, exist_ok=True)
            (spec.run_dir / "models" / name).write_bytes(name.encode())
        for name in ("logs/events.out", "eval/volumes.csv"):
            (spec.run_dir / name).parent.mkdir(exist_ok=True)
            (spec.run_dir / name).write_text("first attempt")
        (spec.run_dir / "run.log").write_text("first attempt\n")

    result, ran = runner.run_one(killed)
    assert ran and result["resumed_from"] == "latest_checkpoint_epoch=3.pt" and result["peak_rss_mb"] == 99.0
    assert [result[k] for k in ("train_seconds", "wall_seconds", "cpu_seconds")] == [None, None, None]
    assert json.loads((killed.run_dir / "result.json").read_text())["train_seconds"] is None
    assert json.loads((killed.run_dir / "run.json").read_text())["resume"] is True
    parser = ConfigParser()
    parser.read_config(killed.train_files())  # what the child's training workflow reads: it resumes
    assert parser["resume"] is True and parser["ckpt_dir"] == str(killed.run_dir / "models")
    assert (killed.run_dir / "models" / "model.pt").read_bytes() == b"model.pt"  # the best model is kept
    assert (killed.run_dir / "logs" / "events.out").exists() and not (killed.run_dir / "eval").exists()
    assert (killed.run_dir / "run.log").read_text().startswith(
        "first attempt\n--- mrivol runner: resuming from latest_checkpoint_epoch=3.pt\n")

    result, ran = runner.run_one(unsaved)  # nothing to resume from: cleared and run from the start
    assert ran and "resumed_from" not in result and result["train_seconds"] == 5.0 and result["cpu_seconds"] == 7.0
    assert "resume" not in json.loads((unsaved.run_dir / "run.json").read_text())
    assert not (unsaved.run_dir / "models").exists() and not (unsaved.run_dir / "logs").exists()
    assert len(launched) == 2
    assert runner.run_one(killed) == (json.loads((killed.run_dir / "result.json").read_text()), False)


@pytest.mark.slow
def test_a_run_killed_mid_training_resumed_by_the_runner_ends_as_the_uninterrupted_run(tiny_cohort, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from mrivol_monai.handlers.checkpoints import latest_checkpoint

    data_dir, datalist = tiny_cohort
    settings = {"dataset_dir": str(data_dir), "datalist": str(datalist), "spatial_size": [8, 32, 32],
                "network_def#ed_blocks": 3, "network_def#width": 4, "epochs": 12, "early_stop_patience": 20,
                "batch_size": 2, "slices_per_volume": 2, "limit_subjects": None, "val_interval": 1}
    whole, killed = (runner.plan("E1", PROFILES["quick"], tmp_path / name, 1, ["none"], settings, cache=False)[0]
                     for name in ("whole", "killed"))

    def saved_epoch() -> int:
        latest = latest_checkpoint(killed.run_dir / "models")
        return -1 if latest is None else int(re.search(r"epoch=(\d+)", latest.name).group(1))

    runner._prepare(killed)  # the runner's first attempt, killed once epoch 3's checkpoint is written
    with open(killed.run_dir / "run.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "mrivol_monai.experiments.runner", str(killed.run_dir)],
                                 cwd=runner.BUNDLE.parent, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        while saved_epoch() < 3:
            assert child.poll() is None, (killed.run_dir / "run.log").read_text()[-2000:]
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert 3 <= saved_epoch() < 12  # killed mid-run
    left = latest_checkpoint(killed.run_dir / "models").name
    resumed, ran = runner.run_one(killed, threads=1)
    uninterrupted, _ = runner.run_one(whole, threads=1)
    assert ran and resumed["resumed_from"] == left
    for key in ("epochs", "best_epoch", "val_dice", "test_dice"):
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-4), key


def test_disk_cache_key_follows_every_preprocessing_setting(tmp_path):
    train = [str(runner.CONFIGS / "train.json")]
    base = runner.cache_overlay(train, tmp_path)["train#dataset"]["cache_dir"]
    changes = {"crop_margin": 5, "head_threshold_fraction": 0.2, "image_resize_mode": "trilinear",
               "label_resize_mode": "nearest", "spatial_size": [8, 32, 32], "depth_axis": "coronal"}
    for key, value in changes.items():
        overlay = tmp_path / f"{key}.json"
        overlay.write_text(json.dumps({key: value}))
        assert runner.cache_overlay(train + [str(overlay)], tmp_path)["train#dataset"]["cache_dir"] != base, key


@pytest.mark.slow
def test_tiny_study_tables_aggregates_and_resume(tiny_cohort, tmp_path, monkeypatch):
    data_dir, datalist = tiny_cohort
    # one epoch at a one-epoch cap never converges by the rule; here every run counts, to check the arithmetic
    monkeypatch.setattr(aggregate, "run_status", lambda r: ("converged", "counted by this test"))
    out = tmp_path / "runs"
    args = ["run", "E1", "--variants", "none,mix", "--repeats", "2", "--out", str(out), "--jobs", "2",
            "--threads", "1", "--set", f"dataset_dir={data_dir}", "--set", f"datalist={datalist}",
            "--set", "spatial_size=[8,32,32]", "--set", "network_def#ed_blocks=3", "--set", "network_def#width=4",
            "--set", "epochs=1", "--set", "batch_size=2", "--set", "slices_per_volume=2",
            "--set", "limit_subjects=null", "--set", "val_interval=1"]
    assert cli.main(args) == 0
    results = {(r["variant"], r["seed"]): r for r in aggregate.load_results(out / "E1")}
    assert set(results) == {("none", 0), ("none", 1), ("mix", 0), ("mix", 1)}
    params = count_parameters(UNet2d(1, 2, ed_blocks=3, width=4))
    for (variant, seed), r in results.items():
        run_dir = out / "E1" / variant / f"seed{seed}"
        assert r["params"] == params and r["epochs"] == 1 and r["n_data_points"] == 6 * 2
        assert 0.0 <= r["val_dice"] <= 1.0 and r["peak_rss_mb"] > 50
        with open(run_dir / "eval" / "volumes.csv") as f:
            brain = [row for row in csv.DictReader(f) if row["structure"] == "brain"]
        assert r["test_dice"] == pytest.approx(np.mean([float(b["dice"]) for b in brain]))
        assert r["vol_abs_pct_mean"] == pytest.approx(np.mean([abs(float(b["pct_error_voxels"])) for b in brain]))
        assert json.loads((run_dir / "run.json").read_text())["seed"] == seed
        assert "monai.bundle run evaluating" in (run_dir / "command.txt").read_text()
    # seeds differ, so the runs differ
    assert results[("none", 0)]["val_dice"] != results[("none", 1)]["val_dice"] or \
        results[("none", 0)]["test_dice"] != results[("none", 1)]["test_dice"]
    with open(out / "E1" / "results.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["none", "mix"]
    for variant, row in rows.items():
        dice = [results[(variant, s)]["test_dice"] for s in (0, 1)]
        assert int(row["n_runs"]) == 2
        assert float(row["test_dice_mean"]) == pytest.approx(np.mean(dice), rel=1e-5)
        assert float(row["test_dice_std"]) == pytest.approx(np.std(dice, ddof=1), rel=1e-4, abs=1e-9)
        half = 12.7062047 * np.std(dice, ddof=1) / math.sqrt(2)
        assert float(row["test_dice_ci95_high"]) == pytest.approx(np.mean(dice) + half, rel=1e-4, abs=1e-6)
        assert float(row["params_mean"]) == params
    md = (out / "E1" / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| Dataset augmentation", "| No transform", "| Mix"]
    assert "0.939" in table[1] and "0.959" in table[2]  # the paper's numbers side by side
    assert (out / "E1" / "results.png").stat().st_size > 1000

    before = _mtimes(out)
    assert cli.main(args) == 0  # resume: everything finished, nothing reruns
    assert _mtimes(out) == before
    (out / "E1" / "mix" / "seed1" / "result.json").unlink()
    specs = runner.plan("E1", PROFILES["quick"], out, 2, ["none", "mix"],
                        dict(cli._setting(a) for a in args[args.index("--set") + 1::2]))
    ran = [runner.run_one(s, threads=1)[1] for s in specs]
    assert ran == [False, False, False, True]
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if "mix/seed1" not in k} == \
        {k: v for k, v in before.items() if "mix/seed1" not in k}
    assert after["E1/mix/seed1/result.json"] != before["E1/mix/seed1/result.json"]

    notes = tmp_path / "discussion.md"
    notes.write_text("# Notes\n\n## E1 augmentation\nMix helps here.\n\n## E3\nSlices: no data.\n")
    doc = report.write_report(out, tmp_path / "docs" / "results.md", intro="Tiny run.", discussion=notes)
    text = doc.read_text()
    e1 = text[text.index("### E1"):text.index("### E2")]
    assert "**Does the paper's finding hold here?** Mix helps here." in e1
    assert e1.index("Check against the paper (computed)") < e1.index("Mix helps here.")
    assert "Slices: no data." not in text  # E3 has no results, so no section to put its paragraph under
    assert (tmp_path / "docs" / "img" / "results_E1.png").is_file()


def test_discussion_file_sections_and_bad_files(tmp_path):
    good = tmp_path / "d.md"
    good.write_text("intro\n## E2 parameters\nDepth: plateau.\nSecond line.\n## E5\nHard task.\n")
    assert report.load_discussion(good) == {"E2": "Depth: plateau.\nSecond line.", "E5": "Hard task."}
    (tmp_path / "none.md").write_text("no sections\n")
    with pytest.raises(InputError, match="none.md: no '## E1'-style"):
        report.load_discussion(tmp_path / "none.md")
    (tmp_path / "e9.md").write_text("## E9\nx\n")
    with pytest.raises(InputError, match=r"e9.md: sections for unknown experiments \['E9'\]"):
        report.load_discussion(tmp_path / "e9.md")
    with pytest.raises(InputError, match="missing.md: discussion file not found"):
        report.load_discussion(tmp_path / "missing.md")


def test_report_writes_into_the_runs_folder_and_never_empties_a_report(tmp_path, capsys):
    committed = Path(__file__).resolve().parents[1] / "bundle" / "docs" / "results.md"
    before = committed.stat().st_mtime_ns
    runs = tmp_path / "runs"
    runs.mkdir()
    assert cli.main(["report", "--out", str(runs)]) == 0  # nothing there yet: an empty report, in the runs folder
    assert capsys.readouterr().out.strip() == f"wrote {runs / 'results.md'}"
    assert "Not run yet." in (runs / "results.md").read_text()
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nE1 table that took a day to compute\n")
    assert cli.main(["report", "--out", str(runs), "--doc", str(doc)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {doc}: no experiment results under {runs}; not overwriting") and "\n" not in err
    assert doc.read_text() == "# Results\n\nE1 table that took a day to compute\n"
    assert committed.stat().st_mtime_ns == before


def _fake_logs(run_dir: Path, train: dict[int, float], val: dict[int, float], max_epochs: int) -> None:
    """TensorBoard logs and timing.json as a finished training leaves them (steps are trainer epochs)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "logs"))
    for epoch, dice in train.items():
        writer.add_scalar("train_mean_dice", dice, epoch)
    for epoch, dice in val.items():
        writer.add_scalar("val_mean_dice", dice, epoch)
    writer.close()
    (run_dir / "timing.json").write_text(json.dumps({
        "train_seconds": 1.0, "params": 10, "n_train_subjects": 4, "slices_per_volume": 2, "max_epochs": max_epochs,
        "task": "brain", "spatial_size": [8, 32, 32]}))


def test_collect_maps_validations_to_epochs_at_val_interval_2(tmp_path):
    """Validation every 2nd epoch logs at epochs 2, 4, 6: the best (epoch 4) takes epoch 4's train Dice, not the
    train Dice of the 2nd list entry (epoch 2), which is what indexing the validation list gave."""
    spec = runner.RunSpec("E4", "unet", 0, tmp_path / "run", ("experiments/ed5.json",), evaluate=False)
    spec.run_dir.mkdir()
    train = {1: 0.10, 2: 0.20, 3: 0.30, 4: 0.40, 5: 0.50, 6: 0.60}
    _fake_logs(spec.run_dir, train, {2: 0.50, 4: 0.80, 6: 0.70}, max_epochs=6)
    r = runner.collect(spec)
    assert r["best_epoch"] == 4 and r["val_dice"] == pytest.approx(0.80)
    assert r["train_dice"] == pytest.approx(0.40)  # the old code gave 0.20 (epoch 2)
    assert r["epochs"] == 6 and r["early_stopped"] is False
    assert r["val_curve"] == [[2, pytest.approx(0.5)], [4, pytest.approx(0.8)], [6, pytest.approx(0.7)]]
    # stopped early at epoch 4 of 10: epochs counts trainer epochs, not validations
    spec2 = runner.RunSpec("E4", "unet", 1, tmp_path / "run2", ("experiments/ed5.json",), evaluate=False)
    spec2.run_dir.mkdir()
    _fake_logs(spec2.run_dir, {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}, {2: 0.6, 4: 0.6}, max_epochs=10)
    r2 = runner.collect(spec2)
    assert r2["epochs"] == 4 and r2["early_stopped"] is True and r2["best_epoch"] == 2
    assert r2["train_dice"] == pytest.approx(0.2)


def test_holm_matches_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = stats.holm([0.02, math.nan, 0.01])  # NaN is not a test: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_hodges_lehmann_is_the_walsh_median_with_the_exact_interval():
    # 21 Walsh averages of (-1, 2, 3, 5, 7, 10), sorted: -1, .5, 1, 2, 2, 2.5, 3, 3, 3.5, 4, 4.5 (11th), ...;
    # n = 6: P(T+ <= 0) = 1/64 <= 0.025 < P(T+ <= 1) = 2/64, so k = 1: [smallest, largest] Walsh average
    assert stats.hodges_lehmann([-1, 2, 3, 5, 7, 10]) == pytest.approx((4.5, -1.0, 10.0))
    counts = stats.signed_rank_counts(4)  # T+ over 16 sign patterns of ranks 1..4
    assert list(counts) == [1, 1, 1, 2, 2, 2, 2, 2, 1, 1, 1]
    # tables of the signed-rank test, two-sided 5 %: critical T = 8 (n = 10), 52 (n = 20) -> k = T + 1
    est, low, high = stats.hodges_lehmann(list(range(1, 11)))
    walsh = sorted((i + j) / 2 for i in range(1, 11) for j in range(i, 11))
    assert (est, low, high) == (5.5, walsh[8], walsh[55 - 9])
    x = np.random.default_rng(0).normal(size=20)
    walsh20 = sorted((x[i] + x[j]) / 2 for i in range(20) for j in range(i, 20))
    assert stats.hodges_lehmann(x)[1:] == pytest.approx((walsh20[52], walsh20[210 - 53]))
    est5, low5, high5 = stats.hodges_lehmann([1, 2, 3, 4, 5])  # n = 5: no 95 % interval exists
    assert est5 == 3 and low5 == -math.inf and high5 == math.inf


def test_wilcoxon_and_equivalence_p_values():
    from scipy.stats import wilcoxon

    assert stats.wilcoxon_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)  # all 6 positive: exact two-sided
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    x = np.random.default_rng(1).normal(0.3, 1.0, size=15)
    assert stats.wilcoxon_p(x) == pytest.approx(wilcoxon(x).pvalue)
    # |d| < 0.01 for all 6: d + 0.01 all positive, d - 0.01 all negative -> each one-sided exact p = 1/64
    assert stats.tost_p([0.001, -0.002, 0.0, 0.003, -0.001, 0.002], 0.01) == pytest.approx(1 / 64)
    assert stats.tost_p([0.05] * 6, 0.01) == pytest.approx(1.0)  # far outside the margin
    with pytest.raises(ValueError, match="margin"):
        stats.tost_p([0.1], 0.0)
    r = stats.paired([0.05, 0.04, 0.06, 0.05, 0.07, 0.03, 0.05, 0.04, 0.06, 0.05], 0.01)
    assert r.n == 10 and r.effect == pytest.approx(0.05) and r.p_difference == pytest.approx(2 / 1024)
    assert r.ci_low == pytest.approx(0.04) and r.ci_high == pytest.approx(0.06)


def _history(val: list[float], max_epochs: int = 10, interval: int = 2, early: bool = False) -> dict:
    epochs = len(val) * interval
    return {"val_dice": max(val), "val_curve": [[interval * (i + 1), v] for i, v in enumerate(val)],
            "epochs": epochs, "max_epochs": max_epochs, "early_stopped": early}


def test_convergence_rule_on_synthetic_histories():
    rule = convergence.ConvergenceRule(window=3, min_delta=0.002, collapse_floor=0.5)
    status = lambda r: convergence.run_status(r, rule)[0]  # noqa: E731
    assert status(_history([0.6, 0.7, 0.8], early=True, max_epochs=10)) == "converged"
    assert status(_history([0.6, 0.80, 0.801, 0.800, 0.8015])) == "converged"  # flat: +0.0015 < 0.002
    assert status(_history([0.6, 0.70, 0.75, 0.78, 0.80])) == "not converged"  # still rising at the cap
    assert status(_history([0.6, 0.70, 0.80])) == "not converged"  # 3 validations: the flat test needs 4
    assert status(_history([0.02, 0.03, 0.03, 0.03, 0.03])) == "collapsed"  # flat, but all-background
    assert status(_history([0.0], early=True)) == "collapsed"
    old = {"val_dice": 0.9, "epochs": 10, "max_epochs": 10, "early_stopped": False}  # result.json before val_curve
    assert convergence.run_status(old, rule) == ("not converged", "hit the 10-epoch cap with no recorded "
                                                                  "validations (the flat test needs 4)")
    assert "below 0.5" in rule.text() and "last 3 validations" in rule.text()


def _fake_run(runs: Path, exp: str, variant: str, seed: int, scores: dict[str, float], val: list[float],
              early: bool = True) -> None:
    run_dir = runs / exp / variant / f"seed{seed}"
    run_dir.mkdir(parents=True)
    record = {"experiment": exp, "variant": variant, "label": variant, "seed": seed, "settings": {"epochs": 10},
              **_history(val, early=early), "test_dice": float(np.mean(list(scores.values()))), "params": 1000,
              "train_seconds": 10.0, "n_train_subjects": 4, "n_test_subjects": len(scores),
              "vol_floor_signed_pct": 1.5,
              "per_subject": {s: {"dice": d, "vol_abs_pct": 3.0} for s, d in scores.items()}}
    (run_dir / runner.RESULT_FILE).write_text(json.dumps(record))


def test_aggregate_averages_converged_runs_only(tmp_path):
    runs = tmp_path / "runs"
    for seed, (test, val, early) in enumerate([(0.90, [0.8, 0.9], True), (0.80, [0.7, 0.85], True),
                                               (0.05, [0.02, 0.03], True), (0.50, [0.6, 0.7, 0.8, 0.9], False)]):
        _fake_run(runs, "E4", "unet", seed, {"s1": test, "s2": test}, val, early)
    rows = aggregate.aggregate(EXPERIMENTS["E4"], aggregate.load_results(runs / "E4"))
    (row,) = rows
    assert (row["n_runs"], row["n_counted"], row["n_collapsed"], row["n_not_converged"]) == (4, 2, 1, 1)
    assert row["seeds"] == [0, 1] and row["metrics"]["test_dice"]["mean"] == pytest.approx(0.85)
    assert row["metrics"]["vol_floor_signed_pct"]["mean"] == pytest.approx(1.5)
    assert aggregate.runs_cell(row) == "2/4 (1 collapsed, 1 not converged)"
    md = aggregate.results_markdown(EXPERIMENTS["E4"], rows)
    assert "| UNet | " in md and "2/4 (1 collapsed, 1 not converged) |" in md and "Resampling floor" in md


def test_verdicts_for_better_equivalent_and_collapsed_comparisons(tmp_path, capsys):
    """E2 on a made-up runs folder, 10 test subjects, 5 seeds: 4 ED blocks beat 2 by 0.05 Dice on every subject
    (reproduced), 5 blocks are within 0.002 of 4 (equivalence within the 0.01 margin: reproduced), FCN 7 blocks
    collapse in 3 of 5 seeds (not tested), UNet 7 blocks never ran (not tested)."""
    runs = tmp_path / "runs"
    subjects = [f"sub{i:02d}" for i in range(10)]
    base = {s: 0.85 + 0.01 * i for i, s in enumerate(subjects)}
    wobble = [0.001, -0.001, 0.0015, -0.0005, 0.0]  # per seed, |.| < margin
    for seed in range(5):
        w = wobble[seed]
        _fake_run(runs, "E2", "unet_ed4", seed, {s: d + w for s, d in base.items()}, [0.8, 0.9])
        _fake_run(runs, "E2", "unet_ed2", seed, {s: d - 0.05 + 0.002 * (i % 3) + w for i, (s, d) in
                                                   enumerate(base.items())}, [0.7, 0.8])
        _fake_run(runs, "E2", "unet_ed5", seed, {s: d + 0.0015 * ((i % 3) - 1) - w for i, (s, d) in
                                                   enumerate(base.items())}, [0.8, 0.9])
        _fake_run(runs, "E2", "fcn_ed5", seed, {s: d - 0.1 for s, d in base.items()}, [0.7, 0.8])
        _fake_run(runs, "E2", "fcn_ed7", seed, {s: (0.0 if seed < 3 else d) for s, d in base.items()},
                  [0.01, 0.02] if seed < 3 else [0.7, 0.8])
    judged = {row["finding"].key: row for row in verdicts.verdicts(EXPERIMENTS["E2"],
                                                                   aggregate.load_results(runs / "E2"))}
    better, same = judged["E2.unet_depth"], judged["E2.unet_plateau5"]
    assert better["verdict"] == "reproduced" and better["test"].n == 10 and better["runs"] == (5, 5)
    diffs = sorted(0.05 - 0.002 * (i % 3) for i in range(10))  # ed4 - ed2 per subject (the seed wobble cancels)
    assert better["test"].effect == pytest.approx(float(np.median([(a + b) / 2 for i, a in enumerate(diffs)
                                                                    for b in diffs[i:]])))
    assert better["test"].ci_low > 0
    assert same["verdict"] == "reproduced" and abs(same["test"].effect) < 0.002
    assert -0.01 < same["test"].ci_low < same["test"].ci_high < 0.01
    # Holm over the 4 p-values of the two tested findings: the smallest is multiplied by 4
    raw = sorted([better["test"].p_difference, better["test"].p_equivalence, same["test"].p_difference,
                  same["test"].p_equivalence])
    assert min(better["p_difference"], same["p_equivalence"]) == pytest.approx(4 * raw[0])
    collapsed, missing = judged["E2.fcn_depth"], judged["E2.unet_plateau7"]
    assert collapsed["verdict"] == "not tested" and collapsed["test"] is None
    assert collapsed["reason"] == "fcn_ed7: 2 of 5 runs converged (3 collapsed, 0 not converged); 5 needed"
    assert missing["verdict"] == "not tested" and missing["reason"] == "unet_ed7: not run"
    assert {row["verdict"] for row in judged.values()} <= set(verdicts.VOCABULARY)

    # the CLI report writes the rule and the verdict table into the runs folder
    assert cli.main(["report", "--out", str(runs)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {runs / 'results.md'}"
    text = (runs / "results.md").read_text()
    assert convergence.RULE.text() in text and verdicts.RULE_TEXT in text
    e2 = text[text.index("### E2"):text.index("### E3")]
    table = {line.split(" | ")[0][2:]: line for line in e2.splitlines() if line.startswith("| E2.")}
    assert "| **reproduced** |" in table["E2.unet_depth"] and "| **reproduced** |" in table["E2.unet_plateau5"]
    assert "| **not tested** | fcn_ed7: 2 of 5 runs converged (3 collapsed" in table["E2.fcn_depth"]
    assert "| **not tested** | unet_ed7: not run |" in table["E2.unet_plateau7"]
    fcn7 = next(line for line in e2.splitlines() if line.startswith("| 7 |") and "3 collapsed" in line)
    assert "2/5 (3 collapsed)" in fcn7
    # every finding of the paper has a verdict line at the top, unrun experiments included
    summary = text[text.index("## Verdicts"):text.index("### E1")]
    assert summary.count("\n| E") == sum(len(e.findings) for e in EXPERIMENTS.values())
    assert "| E2.unet_depth | UNet: 4 ED blocks beat 2 (0.939 vs 0.872) | reproduced |" in summary
    assert "| E4.unet_fcn | UNet beats FCN (0.939 vs 0.890) | not tested |" in summary
    e4 = text[text.index("### E4"):text.index("### E5")]
    assert "Not run yet." in e4 and "| **not tested** | unet: not run; fcn: not run |" in e4


def test_decide_refutes_by_the_written_rule():
    better = EXPERIMENTS["E4"].findings[0]
    plateau = next(f for f in EXPERIMENTS["E2"].findings if f.kind == "no_gain")
    worse = stats.PairedResult(20, -0.03, -0.05, -0.01, 0.001, 0.9)
    assert verdicts.decide(better, worse, 0.004, 0.9)[0] == "refuted"  # b significantly better
    tie = stats.PairedResult(20, 0.001, -0.003, 0.004, 0.6, 0.001)
    assert verdicts.decide(better, tie, 0.6, 0.004)[0] == "refuted"  # equivalent: the claimed gain is absent
    assert verdicts.decide(plateau, tie, 0.6, 0.004)[0] == "reproduced"
    gain = stats.PairedResult(20, 0.03, 0.02, 0.05, 0.001, 0.9)
    assert verdicts.decide(plateau, gain, 0.004, 0.9)[0] == "refuted"
    unclear = stats.PairedResult(20, 0.005, -0.01, 0.02, 0.3, 0.2)
    verdict, reason = verdicts.decide(better, unclear, 0.3, 0.2)
    assert verdict == "not tested" and reason.startswith("inconclusive")


def _volumes_csv(path: Path, rows: list[tuple[str, int, str, float, float, float]]) -> None:
    """eval/volumes.csv with (subject, class index, structure, dice, grid % error, resampling % error) rows."""
    from mrivol_monai.handlers.volume_estimation import COLUMNS

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for subject, c, name, dice, err, floor in rows:
            writer.writerow({k: "" for k in COLUMNS} | {
                "subject": subject, "site": "HH", "class_index": c, "structure": name, "pred_voxels": 1,
                "true_voxels": 1, "dice": dice, "pct_error_voxels": err, "resampling_pct_error": floor,
                "estimate": "over"})


_EVAL_ROWS = [("s1", 0, "background", 0.99, 0.1, 0.01), ("s1", 1, "brain", 0.90, -2.0, 1.2),
              ("s2", 0, "background", 0.99, 0.1, 0.01), ("s2", 1, "brain", 0.80, 4.0, 1.8)]


def test_collect_keeps_per_subject_scores_and_the_resampling_floor(tmp_path):
    spec = runner.RunSpec("E1", "none", 0, tmp_path / "run", ("experiments/e1_none.json",))
    spec.run_dir.mkdir()
    _fake_logs(spec.run_dir, {1: 0.5, 2: 0.6}, {1: 0.7, 2: 0.8}, max_epochs=2)
    _volumes_csv(spec.run_dir / "eval" / "volumes.csv", _EVAL_ROWS)
    (spec.run_dir / "eval" / "summary.json").write_text(json.dumps({
        "n_subjects": 2, "mean_dice_foreground": 0.85, "structures": [
            {"structure": "background", "dice_mean": 0.99, "voxels": {"signed_pct_mean": 0.1, "abs_pct_mean": 0.1}},
            {"structure": "brain", "dice_mean": 0.85, "voxels": {"signed_pct_mean": 1.0, "abs_pct_mean": 3.0}}]}))
    r = runner.collect(spec)
    assert r["per_subject"] == {"s1": {"dice": pytest.approx(0.9), "vol_abs_pct": pytest.approx(2.0)},
                                "s2": {"dice": pytest.approx(0.8), "vol_abs_pct": pytest.approx(4.0)}}
    assert r["vol_floor_signed_pct"] == pytest.approx(1.5)  # brain: mean of +1.2 and +1.8
    assert r["structures"]["brain"]["floor_signed_pct"] == pytest.approx(1.5)
    assert r["vol_abs_pct_mean"] == pytest.approx(3.0)
    # a result.json written before collect kept these gets them from eval/volumes.csv when read
    old = {k: v for k, v in r.items() if k not in ("per_subject", "vol_floor_signed_pct")}
    old["structures"] = {n: {k: v for k, v in s.items() if k != "floor_signed_pct"} for n, s in r["structures"].items()}
    target = tmp_path / "runs" / "E1" / "none" / "seed0"
    _volumes_csv(target / "eval" / "volumes.csv", _EVAL_ROWS)
    (target / runner.RESULT_FILE).write_text(json.dumps(old))
    (loaded,) = aggregate.load_results(tmp_path / "runs" / "E1")
    assert loaded["per_subject"] == r["per_subject"] and loaded["vol_floor_signed_pct"] == pytest.approx(1.5)


def test_every_finding_names_variants_of_its_experiment_and_a_margin():
    for exp in EXPERIMENTS.values():
        names = {v.name for v in exp.variants}
        assert exp.findings, exp.key
        for f in exp.findings:
            assert f.key.startswith(exp.key + ".") and {f.a, f.b} <= names and f.margin > 0, f
    with pytest.raises(ValueError, match="E9.x: kind must be"):
        variants.Finding("E9.x", "claim", "worse", "a", "b", "dice", 0.01)
