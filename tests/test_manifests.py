"""Manifests: file-name parsing, pairing in both layouts, the paper's split, bad input, MONAI round trip."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from mrivol_monai.data.manifests import (
    build_manifest,
    format_counts,
    load_manifest,
    main,
    parse_subject,
    remap_labels,
    split_subjects,
    write_manifest,
)
from mrivol_monai.errors import InputError

from conftest import SHARED_DATA, shared_data_reason

IXI_IDS_CSV = SHARED_DATA / "ixitiny_ids_sites.csv"
SHAPE = (8, 8, 8)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _cohort(folder: Path, sites: dict[str, int], layout: str = "ixi", prefix: str = "SYN") -> list[str]:
    """Tiny volumes named as SynthIXI (one folder, both tasks) or IXITiny (image/ + label/); returns subject ids."""
    rng = np.random.default_rng(7)
    subjects = []
    for site, n in sites.items():
        for _ in range(n):
            number = len(subjects) + 1
            subject = f"{prefix}{number:04d}-{site}-{number + 100:04d}"
            subjects.append(subject)
            image = rng.integers(0, 200, SHAPE).astype(np.int16)
            brain = (rng.random(SHAPE) > 0.5).astype(np.uint8)
            if layout == "ixi":
                _save(folder / f"{subject}-T1.nii.gz", image)
                _save(folder / f"{subject}-brain.nii.gz", brain)
                _save(folder / f"{subject}-subcortical.nii.gz", rng.integers(0, 5, SHAPE).astype(np.uint8))
            else:
                _save(folder / "image" / f"{subject}_image.nii.gz", image)
                _save(folder / "label" / f"{subject}_label.nii.gz", brain)
    return subjects


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthixi")
    _cohort(folder, {"Guys": 12, "HH": 8, "IOP": 5})
    (folder / "cohort.csv").write_text("subject,site\n")  # non-NIfTI files are ignored
    return folder


def test_parse_subject_both_layouts() -> None:
    assert parse_subject("IXI002-Guys-0828-T1.nii.gz") == ("IXI002-Guys-0828", "Guys", "T1")
    assert parse_subject("/data/SYN0001-HH-0003-T1.nii.gz") == ("SYN0001-HH-0003", "HH", "T1")
    assert parse_subject("SYN0001-HH-0003-brain.nii") == ("SYN0001-HH-0003", "HH", "brain")
    assert parse_subject(Path("x/IXI650-IOP-1242-subcortical.nii.gz")) == ("IXI650-IOP-1242", "IOP", "subcortical")
    assert parse_subject("image/IXI002-Guys-0828_image.nii.gz") == ("IXI002-Guys-0828", "Guys", "image")
    assert parse_subject("label/IXI002-Guys-0828_label.nii.gz") == ("IXI002-Guys-0828", "Guys", "label")


@pytest.mark.parametrize(
    "name, problem",
    [("IXI002-KCL-0828-T1.nii.gz", "unknown site 'KCL'"), ("IXI002-Guys-0828-T2.nii.gz", "name not understood"), ("notes.txt", "not a NIfTI")],
)
def test_parse_subject_rejects(name: str, problem: str) -> None:
    with pytest.raises(InputError) as err:
        parse_subject(f"/d/{name}")
    assert str(err.value).startswith(f"/d/{name}: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_split_rule_exact() -> None:
    """Guys+HH sorted, permuted by default_rng(seed), first round(0.85 n) train; IOP -> test."""
    subjects = [f"S{i:03d}" for i in range(566)]
    sites = ["Guys"] * 311 + ["HH"] * 181 + ["IOP"] * 74
    split = split_subjects(subjects[::-1], sites[::-1], seed=3)  # input order must not matter
    assert (len(split["training"]), len(split["validation"]), len(split["test"])) == (418, 74, 74)
    pool = subjects[:492]
    expected = [pool[i] for i in np.random.default_rng(3).permutation(492)]
    assert split["training"] + split["validation"] == expected
    assert split["test"] == subjects[492:]
    other = split_subjects(subjects, sites, seed=4)
    assert other["training"] != split["training"] and sorted(other["training"] + other["validation"]) == pool
    assert len(split_subjects(subjects, sites, seed=0, val_fraction=0.5)["validation"]) == 246
    # small pools keep one subject in each of training and validation
    assert [len(split_subjects(["a", "b", "c"], ["Guys", "HH", "Guys"], seed=s)["validation"]) for s in range(3)] == [1, 1, 1]


def test_build_splits_cohort(cohort: Path) -> None:
    manifest = build_manifest(cohort, task="brain", seed=0)
    train, val, test = (manifest[k] for k in ("training", "validation", "test"))
    assert (len(train), len(val), len(test)) == (17, 3, 5)  # round(0.85 * 20) = 17
    ids = [e["subject"] for e in train + val + test]
    assert len(set(ids)) == 25
    assert {e["site"] for e in test} == {"IOP"} and not any(e["site"] == "IOP" for e in train + val)
    assert [e["subject"] for e in test] == sorted(e["subject"] for e in test)
    assert all(e["image"] == f"{e['subject']}-T1.nii.gz" and e["label"] == f"{e['subject']}-brain.nii.gz" for e in train + val + test)
    assert manifest["counts"]["test"] == {"Guys": 0, "HH": 0, "IOP": 5}
    assert sum(manifest["counts"]["training"].values()) == 17
    assert manifest["counts"]["training"]["Guys"] + manifest["counts"]["validation"]["Guys"] == 12
    assert manifest["labels"] == {"0": "background", "1": "brain"}
    assert (manifest["task"], manifest["seed"], manifest["test_site"], manifest["val_fraction"]) == ("brain", 0, "IOP", 0.15)
    assert build_manifest(cohort, task="brain", seed=0) == manifest
    reseeded = build_manifest(cohort, task="brain", seed=1)
    assert [e["subject"] for e in reseeded["validation"]] != [e["subject"] for e in val]
    assert reseeded["test"] == test
    table = format_counts(manifest).splitlines()
    assert table[0].split() == ["split", "Guys", "HH", "IOP", "total"]
    assert table[3].split() == ["test", "0", "0", "5", "5"] and table[4].split()[-1] == "25"


def test_a_recorded_anatomy_split_wins_over_the_seed(tmp_path: Path) -> None:
    """A SynthIXI cohort.csv records each subject's split (its anatomy was drawn per split): any seed keeps it."""
    subjects = _cohort(tmp_path, {"Guys": 6, "HH": 4, "IOP": 2})
    (tmp_path / f"{subjects[0]}-aseg.nii.gz").write_bytes(
        (tmp_path / f"{subjects[0]}-subcortical.nii.gz").read_bytes())  # an aseg file beside them is ignored
    recorded = {s: ("test" if "-IOP-" in s else "validation" if s in subjects[:3] else "training") for s in subjects}
    lines = ["subject,site,split"] + [f"{s},{s.split('-')[1]},{recorded[s]}" for s in subjects]
    (tmp_path / "cohort.csv").write_text("\n".join(lines) + "\n")
    for seed in (0, 1, 2):
        manifest = build_manifest(tmp_path, task="brain", seed=seed)
        for split in ("training", "validation", "test"):
            assert sorted(e["subject"] for e in manifest[split]) == sorted(s for s in subjects if recorded[s] == split)
        assert "split by anatomy" in manifest["description"]
    # another test site than the recorded one: the site-and-seed rule, as for any folder
    other = build_manifest(tmp_path, task="brain", test_site="HH")
    assert {e["site"] for e in other["test"]} == {"HH"} and "split by anatomy" not in other["description"]


def test_subcortical_and_other_test_site(cohort: Path) -> None:
    manifest = build_manifest(cohort, task="subcortical", seed=0, test_site="HH", val_fraction=0.25)
    assert all(e["label"].endswith("-subcortical.nii.gz") for k in ("training", "validation", "test") for e in manifest[k])
    assert (len(manifest["training"]), len(manifest["validation"]), len(manifest["test"])) == (13, 4, 8)
    assert manifest["labels"]["4"] == "amygdala" and len(manifest["labels"]) == 5


def test_write_and_monai_round_trip(cohort: Path, tmp_path: Path) -> None:
    manifest = build_manifest(cohort, task="brain", seed=0)
    out = write_manifest(manifest, tmp_path / "manifests" / "brain.json")
    written = json.loads(out.read_text())
    assert (out.parent / written["data_root"]).resolve() == cohort.resolve()
    assert not Path(written["data_root"]).is_absolute()
    assert [p.name for p in out.parent.iterdir()] == ["brain.json"]  # no temp file left
    root = out.parent / written["data_root"]
    for split in ("training", "validation", "test"):
        items = load_decathlon_datalist(out, data_list_key=split, base_dir=root)
        assert [Path(i["image"]).resolve() for i in items] == [(cohort / e["image"]).resolve() for e in manifest[split]]
        assert all(Path(i["label"]).is_file() for i in items)
        loaded = load_manifest(out, split)
        assert [i["subject"] for i in loaded] == [e["subject"] for e in manifest[split]]
        assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in loaded)


def test_ixitiny_layout(tmp_path: Path) -> None:
    subjects = _cohort(tmp_path / "IXITiny", {"Guys": 3, "HH": 2, "IOP": 2}, layout="tiny", prefix="IXI")
    explicit = build_manifest(tmp_path / "IXITiny" / "image", tmp_path / "IXITiny" / "label", task="brain")
    implicit = build_manifest(tmp_path / "IXITiny", task="brain")  # root with image/ and label/
    assert explicit == implicit
    assert Path(explicit["data_root"]) == (tmp_path / "IXITiny").absolute()
    entries = explicit["training"] + explicit["validation"] + explicit["test"]
    assert sorted(e["subject"] for e in entries) == sorted(subjects)
    assert all(e["image"] == f"image/{e['subject']}_image.nii.gz" and e["label"] == f"label/{e['subject']}_label.nii.gz" for e in entries)
    assert [e["subject"] for e in explicit["test"]] == ["IXI0006-IOP-0106", "IXI0007-IOP-0107"]


def _ixi_ids() -> list[tuple[str, str]]:
    with IXI_IDS_CSV.open() as f:
        return [(row["ixi_id"], row["site"]) for row in csv.DictReader(f)]


@pytest.mark.skipif(not IXI_IDS_CSV.is_file(), reason=shared_data_reason(IXI_IDS_CSV.name, "the IXITiny id list"))
def test_real_ixi_ids(tmp_path: Path) -> None:
    ids = _ixi_ids()
    names = [f"{ixi}-{site}-{1000 + i:04d}_image.nii.gz" for i, (ixi, site) in enumerate(ids)]
    assert Counter(parse_subject(n)[1] for n in names) == {"Guys": 311, "HH": 181, "IOP": 74}
    split = split_subjects([parse_subject(n)[0] for n in names], [parse_subject(n)[1] for n in names], seed=0)
    assert (len(split["training"]), len(split["validation"]), len(split["test"])) == (418, 74, 74)
    handful = ids[::40]  # 15 real ids spread over the file
    for i, (ixi, site) in enumerate(handful):
        subject = f"{ixi}-{site}-{1000 + i:04d}"
        _save(tmp_path / "image" / f"{subject}_image.nii.gz", np.zeros(SHAPE, np.int16))
        _save(tmp_path / "label" / f"{subject}_label.nii.gz", np.zeros(SHAPE, np.uint8))
    manifest = build_manifest(tmp_path / "image", tmp_path / "label", seed=0)
    expected = Counter(site for _, site in handful)
    got = Counter({site: sum(manifest["counts"][k][site] for k in ("training", "validation", "test")) for site in expected})
    assert got == expected
    assert sorted(e["subject"].split("-")[0] for e in manifest["test"]) == sorted(ixi for ixi, site in handful if site == "IOP")
    assert all(e["image"].startswith("image/") and e["label"] == f"label/{e['subject']}_label.nii.gz" for e in manifest["training"])


def _expect_error(folder: Path, culprit: Path | str, problem: str, **kwargs: object) -> None:
    with pytest.raises(InputError) as err:
        build_manifest(folder, **kwargs)
    message = str(err.value)
    assert message.startswith(f"{Path(culprit).absolute()}: ") and problem in message, message
    assert "\n" not in message


def test_bad_inputs(tmp_path: Path) -> None:
    base = tmp_path / "c"
    subjects = _cohort(base, {"Guys": 3, "HH": 1, "IOP": 1})
    build_manifest(base)  # valid before each breakage below

    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(empty, empty, "no images found")
    _expect_error(tmp_path / "missing", tmp_path / "missing", "not a directory")

    bad_site = _save(base / "SYN0099-KCL-0001-T1.nii.gz", np.zeros(SHAPE, np.int16))
    _expect_error(base, bad_site, "unknown site 'KCL'")
    bad_site.unlink()

    lonely = _save(base / "SYN0098-HH-0001-T1.nii.gz", np.zeros(SHAPE, np.int16))
    _expect_error(base, lonely, "image without label")
    lonely.unlink()

    orphan = _save(base / "SYN0097-HH-0001-brain.nii.gz", np.zeros(SHAPE, np.uint8))
    _expect_error(base, orphan, "label without image")
    orphan.unlink()

    twin = _save(base / f"{subjects[0]}-T1.nii", np.zeros(SHAPE, np.int16))
    with pytest.raises(InputError, match="duplicate subject SYN0001-Guys-0101") as err:
        build_manifest(base)
    assert str(err.value).split(": ")[0] in (str(twin), str(base / f"{subjects[0]}-T1.nii.gz"))
    twin.unlink()

    other_site = _save(base / "SYN0001-HH-0555-T1.nii.gz", np.zeros(SHAPE, np.int16))  # same person, other scan
    _save(base / "SYN0001-HH-0555-brain.nii.gz", np.zeros(SHAPE, np.uint8))
    _expect_error(base, other_site, "duplicate subject SYN0001")
    other_site.unlink()
    (base / "SYN0001-HH-0555-brain.nii.gz").unlink()

    image = base / f"{subjects[1]}-T1.nii.gz"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])  # truncated gzip
    _expect_error(base, image, "cannot read image")
    image.write_bytes(b"not a nifti at all")
    _expect_error(base, image, "cannot read image")
    _save(image, np.zeros((8, 8), np.int16))
    _expect_error(base, image, "expected a 3D image, got shape (8, 8)")
    image.write_bytes(good)

    label = base / f"{subjects[2]}-brain.nii.gz"
    good_label = label.read_bytes()
    _save(label, np.zeros((8, 8, 6), np.uint8))
    _expect_error(base, label, "label shape (8, 8, 6) differs from image shape (8, 8, 8)")
    _save(label, np.zeros(SHAPE, np.uint8), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    _expect_error(base, label, "grid (affine) differs")
    _save(label, np.full(SHAPE, 10, np.uint8))
    _expect_error(base, label, "label values 10 are not brain ids 0..1")
    label.write_bytes(good_label)

    iop = base / f"{subjects[4]}-T1.nii.gz"
    iop.rename(tmp_path / "aside.nii.gz")
    (base / f"{subjects[4]}-brain.nii.gz").rename(tmp_path / "aside-brain.nii.gz")
    _expect_error(base, base, "no subjects from test site IOP")
    assert build_manifest(base, test_site="HH")["test"][0]["site"] == "HH"
    with pytest.raises(InputError, match="unknown test site 'KCL'"):
        build_manifest(base, test_site="KCL")
    with pytest.raises(InputError, match="val_fraction"):
        build_manifest(base, val_fraction=1.5)


@pytest.mark.slow
def test_cli_prints_counts_and_fails_cleanly(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m" / "sub.json"
    assert main(["build", "--images", str(cohort), "--task", "subcortical", "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].split() == ["total", "12", "8", "5", "25"]
    assert json.loads(out.read_text())["task"] == "subcortical"

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["build", "--images", str(cohort), "--out", str(blocker / "x.json")]) == 1
    assert main(["build", "--images", str(cohort), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {blocker / 'x.json'}: cannot write here") and err[1].startswith(f"error: {tmp_path}: is a directory")

    broken = tmp_path / "broken"
    _cohort(broken, {"Guys": 2, "HH": 1, "IOP": 1})
    (broken / "SYN0002-Guys-0102-brain.nii.gz").unlink()
    target = tmp_path / "never" / "brain.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mrivol_monai.manifests", "build", "--images", str(broken), "--task", "brain", "--out", str(target)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: {broken / 'SYN0002-Guys-0102-T1.nii.gz'}: image without label: "
        f"no SYN0002-Guys-0102-brain.nii.gz or SYN0002-Guys-0102_label.nii.gz in {broken}"
    )
    assert not target.parent.exists()


def test_load_manifest_errors(cohort: Path, tmp_path: Path) -> None:
    out = write_manifest(build_manifest(cohort, seed=0), tmp_path / "brain.json")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    relocated = moved / "brain.json"
    relocated.write_text(out.read_text())  # its relative data_root no longer points at the data
    with pytest.raises(InputError, match="missing image file listed in"):
        load_manifest(relocated, "training")
    assert len(load_manifest(relocated, "training", data_root=cohort)) == 17
    with pytest.raises(InputError, match=f"^{tmp_path / 'nope.json'}: cannot read manifest"):
        load_manifest(tmp_path / "nope.json", "training")
    with pytest.raises(InputError, match="unknown split 'train'"):
        load_manifest(out, "train")
    content = json.loads(out.read_text())
    content["validation"] = []
    out.write_text(json.dumps(content))
    with pytest.raises(InputError, match=f"^{out}: split 'validation' is missing or empty"):
        load_manifest(out, "validation")
    out.write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        load_manifest(out, "training")


def test_remap_freesurfer_labels(tmp_path: Path) -> None:
    images = tmp_path / "t1"
    _save(images / "IXI002-Guys-0828-T1.nii.gz", np.zeros(SHAPE, np.int16))
    aseg = np.zeros(SHAPE, np.int16)
    for i, source in enumerate([10, 49, 11, 50, 12, 51, 18, 54, 2, 41]):  # 2/41 white matter -> background
        aseg[i % 8, i // 8, :] = source
    _save(tmp_path / "fastsurfer" / "IXI002-Guys-0828" / "mri" / "aseg.nii.gz", aseg)
    # a second subject in a 2 mm grid: resampled (nearest) onto its 1 mm T1 grid
    _save(images / "IXI012-HH-1211-T1.nii.gz", np.zeros(SHAPE, np.int16))
    coarse = np.zeros((4, 4, 4), np.int16)
    coarse[1, 1, 1] = 17  # hippocampus: not mapped
    coarse[2, 2, 2] = 54
    _save(tmp_path / "fastsurfer" / "IXI012-HH-1211" / "mri" / "aseg.nii.gz", coarse, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    _save(tmp_path / "fastsurfer" / "IXI002-Guys-0828" / "mri" / "orig.nii.gz", np.zeros(SHAPE, np.int16))
    with pytest.raises(InputError, match="duplicate subject IXI002-Guys-0828"):
        remap_labels(tmp_path / "fastsurfer", tmp_path / "sub", "freesurfer", "subcortical", images=images)
    written = remap_labels(tmp_path / "fastsurfer", tmp_path / "sub", "freesurfer", "subcortical", images=images, pattern="aseg.nii.gz")
    assert [p.name for p in written] == ["IXI002-Guys-0828-subcortical.nii.gz", "IXI012-HH-1211-subcortical.nii.gz"]
    first = nib.load(str(written[0]))
    assert first.get_data_dtype() == np.uint8
    assert np.asarray(first.dataobj)[:, 0, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert np.asarray(first.dataobj)[:2, 1, 0].tolist() == [0, 0]
    second = np.asarray(nib.load(str(written[1])).dataobj)
    assert second.shape == SHAPE and int((second == 4).sum()) == 8 and second[4, 4, 4] == 4 and int(second.sum()) == 32
    # the remapped labels pair with the T1s for a manifest (IOP subject added so a test split exists)
    _save(images / "IXI650-IOP-1242-T1.nii.gz", np.zeros(SHAPE, np.int16))
    _save(tmp_path / "sub" / "IXI650-IOP-1242-subcortical.nii.gz", np.zeros(SHAPE, np.uint8))
    manifest = build_manifest(images, tmp_path / "sub", task="subcortical")
    assert manifest["data_root"] == str(tmp_path) and manifest["test"][0]["label"] == "sub/IXI650-IOP-1242-subcortical.nii.gz"
    assert main(["remap", "--labels", str(tmp_path / "fastsurfer"), "--out", str(tmp_path / "sub2"), "--label-map", str(tmp_path / "nope.json")]) == 1

