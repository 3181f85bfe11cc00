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
from mrivol_monai.experiments import aggregate, grid_search, report, runner
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


@pytest.mark.slow
def test_tiny_study_tables_aggregates_and_resume(tiny_cohort, tmp_path):
    data_dir, datalist = tiny_cohort
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
