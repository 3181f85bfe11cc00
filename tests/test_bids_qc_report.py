"""mrivol predict's report: BIDS datasets in, BIDS derivatives out, per-scan JSON, QC reasons, report.html."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrivol_monai.bids import bids_entities, is_bids_root
from mrivol_monai.cli import main
from mrivol_monai.predict import Segmentation, find_scans, predict, volumes_ml
from mrivol_monai.scan_qc import QC_PASS, asymmetry, qc_reasons, qc_verdict
from test_predict import ellipsoid_scan, save, tiny_checkpoint

VOXEL_MM = 5.0  # the QC scans: a 40 x 48 x 40 grid of 5 mm voxels holds an adult-size brain in 77k voxels


def rows_of(out: Path) -> list[dict[str, str]]:
    with open(out / "volumes.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# -- BIDS ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    """sub-01 (sessions a and b) and sub-02 (no session), plus files a BIDS search must not take."""
    root = tmp_path_factory.mktemp("bids") / "ds"
    image, label, affine = ellipsoid_scan(shape=(18, 36, 34))
    for folder, name, flip in (("sub-01/ses-a/anat", "sub-01_ses-a_T1w.nii.gz", False),
                               ("sub-01/ses-b/anat", "sub-01_ses-b_T1w.nii.gz", True),
                               ("sub-02/anat", "sub-02_T1w.nii", False)):
        (root / folder).mkdir(parents=True)
        save(root / folder / name, image[::-1].copy() if flip else image, affine)
    save(root / "sub-02/anat/sub-02_T2w.nii.gz", image, affine)  # not a T1w
    save(root / "sub-02/anat/sub-02_dseg.nii.gz", label, affine)  # a label map
    (root / "derivatives/old/sub-01/anat").mkdir(parents=True)
    save(root / "derivatives/old/sub-01/anat/sub-01_T1w.nii.gz", image, affine)  # someone's derivative
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    return root


def test_bids_root_gives_its_t1w_scans_with_subject_and_session(bids_root):
    assert is_bids_root(bids_root) and not is_bids_root(bids_root / "sub-01")
    assert bids_entities("sub-01_ses-a_run-2_T1w.nii.gz") == {"sub": "01", "ses": "a", "run": "2"}
    scans = find_scans([bids_root])
    assert [(s["scan"], s["subject"], s["session"]) for s in scans] == [
        ("sub-01_ses-a", "01", "a"), ("sub-01_ses-b", "01", "b"), ("sub-02", "02", "")]
    assert [Path(s["image"]).name for s in scans] == ["sub-01_ses-a_T1w.nii.gz", "sub-01_ses-b_T1w.nii.gz",
                                                     "sub-02_T1w.nii"]
    # a subject, session or anat folder of the dataset: its T1w scans, with their ids (not the T2w or the dseg)
    assert [s["scan"] for s in find_scans([bids_root / "sub-01"])] == ["sub-01_ses-a", "sub-01_ses-b"]
    assert [s["scan"] for s in find_scans([bids_root / "sub-01" / "ses-b"])] == ["sub-01_ses-b"]
    assert [(s["scan"], s["subject"]) for s in find_scans([bids_root / "sub-02" / "anat"])] == [("sub-02", "02")]


def test_bids_in_bids_derivatives_out_three_rows_with_ids_files_and_json(bids_root, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "derivatives" / "mrivol"
    assert main(["predict", str(bids_root), "--out", str(out), "--model", str(ckpt), "--quiet",
                 "--layout", "bids"]) == 0
    rows = rows_of(out)
    assert [(r["scan"], r["subject"], r["session"]) for r in rows] == [
        ("sub-01_ses-a", "01", "a"), ("sub-01_ses-b", "01", "b"), ("sub-02", "02", "")]
    expected = {"sub-01_ses-a": "sub-01/ses-a/anat/sub-01_ses-a", "sub-01_ses-b": "sub-01/ses-b/anat/sub-01_ses-b",
                "sub-02": "sub-02/anat/sub-02"}
    for r in rows:
        stem = out / expected[r["scan"]]
        dseg = Path(f"{stem}_space-orig_dseg.nii.gz")
        assert Path(r["mask"]) == dseg and dseg.is_file() and Path(f"{stem}_qc.png").is_file()
        written, source = nib.load(dseg), nib.load(r["input"])
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        voxel_ml = abs(np.linalg.det(written.affine[:3, :3])) / 1000.0
        assert float(r["brain_ml"]) == pytest.approx(np.count_nonzero(np.asarray(written.dataobj) == 1) * voxel_ml,
                                                     abs=1e-3)
        sidecar = json.loads(Path(f"{stem}_space-orig_dseg.json").read_text())
        assert sidecar["brain_ml"] == float(r["brain_ml"]) and sidecar["qc"] == r["qc"]
        assert {k: str(v) if not k.endswith("_ml") else r[k] for k, v in sidecar.items()} == r
    assert (out / "dseg.tsv").read_text() == "index\tname\n0\tbackground\n1\tbrain\n"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "mrivol_monai" and description["GeneratedBy"][0]["Version"]
    assert not list(out.glob("*_seg.nii.gz"))  # the flat layout's names are not written as well


def test_bids_root_in_the_flat_layout_and_a_bids_root_without_t1w(bids_root, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    empty = tmp_path / "empty_ds"
    (empty / "sub-09" / "anat").mkdir(parents=True)
    (empty / "dataset_description.json").write_text("{}")
    out = tmp_path / "out"
    status = main(["predict", str(bids_root), str(empty), "--out", str(out), "--model", str(ckpt), "--quiet",
                   "--no-qc"])
    assert status == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {empty}: BIDS dataset without any sub-*/[ses-*/]anat/*_T1w.nii[.gz] file"]
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["sub-01_ses-a_seg.nii.gz", "sub-01_ses-b_seg.nii.gz",
                                                                 "sub-02_seg.nii.gz"]
    assert [r["subject"] for r in rows_of(out)] == ["01", "01", "02"]
    row = rows_of(out)[2]
    assert json.loads((out / "sub-02_volumes.json").read_text())["brain_ml"] == float(row["brain_ml"])


# -- QC --------------------------------------------------------------------------------------------------------------

def qc_scan(brain_radii=(12, 15, 12), noise: float = 2.0, background: float = 0.0, seed: int = 0,
            crop: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain mask, affine) on a 40 x 48 x 40 grid of 5 mm voxels: head 80, brain 120, magnitude noise of
    ``noise`` sigma over a ``background`` level; ``crop`` voxels cut off the first axis (the brain then reaches
    the border)."""
    shape = (40, 48, 40)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    r_head = np.sqrt(((grid / np.array([16, 19, 16])[:, None, None, None]) ** 2).sum(0))
    r_brain = np.sqrt(((grid / np.array(brain_radii)[:, None, None, None]) ** 2).sum(0))
    clean = background + np.where(r_head < 1, 80.0, 0.0) + np.where(r_brain < 1, 40.0, 0.0)
    rng = np.random.default_rng(seed)
    image = np.abs(clean + rng.normal(0, noise, shape) + 1j * rng.normal(0, noise, shape)).astype(np.float32)
    mask = (r_brain < 1).astype(np.uint8)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    return image[crop:], mask[crop:], affine


def brain_volumes(mask: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    return volumes_ml(mask, affine, ["background", "brain"])


def test_clean_scan_passes_and_each_reason_fires_on_its_trigger():
    image, mask, affine = qc_scan()
    volumes = brain_volumes(mask, affine)
    assert 1000 < volumes["brain"] < 1300  # an adult-size brain
    assert qc_reasons(image, mask, volumes) == [] and qc_verdict([]) == QC_PASS

    triggers = {
        "cut off": qc_scan(crop=10),
        "head crop failed": qc_scan(background=60.0),
        "low SNR": qc_scan(noise=40.0),
        "brain_ml": qc_scan(brain_radii=(7, 8, 7)),
    }
    for reason, (img, msk, aff) in triggers.items():
        found = qc_reasons(img, msk, brain_volumes(msk, aff))
        assert any(r.startswith(reason) for r in found), (reason, found)
    # the triggers that leave the rest of the scan clean give that one reason only
    for reason in ("cut off", "head crop failed", "brain_ml"):
        img, msk, aff = triggers[reason]
        assert len(qc_reasons(img, msk, brain_volumes(msk, aff))) == 1, reason
    assert qc_verdict(["a", "b"]) == "a; b"


def test_left_right_asymmetry_is_flagged_only_when_far_outside_normal():
    image, brain, affine = qc_scan()
    names = ["background", "thalamus_left", "thalamus_right"]
    half = np.zeros_like(brain)
    half[:, :, 20:] = 1
    symmetric = np.where(brain > 0, 1 + half, 0).astype(np.uint8)
    assert qc_reasons(image, symmetric, volumes_ml(symmetric, affine, names)) == []
    mild = symmetric.copy()
    mild[(symmetric == 2) & (np.arange(40)[None, None, :] > 26)] = 0  # right side loses its outer part: 15 %
    volumes = volumes_ml(mild, affine, names)
    assert 0.1 < asymmetry(volumes["thalamus_left"], volumes["thalamus_right"]) < 0.2
    assert qc_reasons(image, mild, volumes) == []  # within the population's spread of automated measures
    shrunk = symmetric.copy()
    shrunk[(symmetric == 2) & (np.arange(40)[None, None, :] > 23)] = 0
    volumes = volumes_ml(shrunk, affine, names)
    assert asymmetry(volumes["thalamus_left"], volumes["thalamus_right"]) > 0.35
    index = asymmetry(volumes["thalamus_left"], volumes["thalamus_right"])
    assert qc_reasons(image, shrunk, volumes) == [f"thalamus asymmetry {index:.2f} > 0.35"]


# -- predict end to end with QC, and the HTML report --------------------------------------------------------------

class FixedPredictor:
    """Gives each file the brain mask stored beside it (``<name>.mask.npy``): QC and report without a network."""

    class spec:  # noqa: N801 -- a ModelSpec look-alike
        task = "brain"
        class_names = ["background", "brain"]

    backend = "torch"

    def segment(self, path) -> Segmentation:
        image = nib.load(path)
        mask = np.load(f"{path}.mask.npy")
        return Segmentation(str(path), np.asarray(image.dataobj), mask, image.affine,
                            volumes_ml(mask, image.affine, self.spec.class_names))


class ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows += 1


@pytest.mark.parametrize("layout", ["flat", "bids"])
def test_qc_column_and_report_html_whose_images_all_exist(tmp_path, layout):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, kwargs in (("clean", {}), ("cut", {"crop": 10}), ("small", {"brain_radii": (7, 8, 7)})):
        image, mask, affine = qc_scan(**kwargs)
        path = save(scans / f"{name}.nii.gz", image, affine)
        np.save(f"{path}.mask.npy", mask)
    out = tmp_path / "out"
    result = predict([scans], out, predictor=FixedPredictor(), progress=False, layout=layout)
    assert not result.failed
    verdicts = {r["scan"]: r["qc"] for r in rows_of(out)}
    assert verdicts["clean"] == QC_PASS
    assert verdicts["cut"].startswith("cut off") and ";" not in verdicts["cut"]
    assert verdicts["small"].startswith("brain_ml") and "outside adult range 800-1700" in verdicts["small"]

    page = (out / "report.html").read_text()
    parser = ImageSources()
    parser.feed(page)
    assert parser.rows == 1 + 3  # header + one line per scan
    assert "cohort_volumes.png" in parser.images and len(parser.images) == 1 + 3  # cohort plot + 3 QC pictures
    for src in parser.images:
        assert not Path(src).is_absolute() and (out / src).is_file(), src
    assert (out / "cohort_volumes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for verdict in verdicts.values():
        assert verdict.split(";")[0] in page
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # every file written via temp + rename


def test_two_stage_volume_names_give_a_pair_per_structure_to_the_asymmetry_check():
    from mrivol_monai.two_stage import volume_names

    image, brain, _ = qc_scan()
    volumes = {name: 5.0 for name in volume_names()}
    assert qc_reasons(image, brain, volumes) == []
    pairs = sorted(n[: -len("_left")] for n in volume_names() if n.endswith("_left"))
    assert pairs == ["amygdala", "caudate", "hippocampus", "putamen", "thalamus"]
    for name in pairs:
        lopsided = {**volumes, f"{name}_right": 2.0}
        assert qc_reasons(image, brain, lopsided) == [f"{name} asymmetry 0.60 > 0.35"]


def test_an_earlier_versions_volumes_csv_is_widened_and_its_scans_not_redone(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("one", "two"):
        image, mask, affine = qc_scan()
        np.save(f"{save(scans / f'{name}.nii.gz', image, affine)}.mask.npy", mask)
    out = tmp_path / "out"
    predict([scans / "one.nii.gz"], out, predictor=FixedPredictor(), progress=False, qc=False)
    old = rows_of(out)[0]
    old_columns = ["scan", "input", "mask", "brain_ml"]  # volumes.csv before subject, session and qc
    (out / "volumes.csv").write_text(",".join(old_columns) + "\n" + ",".join(old[c] for c in old_columns) + "\n")
    stamp = (out / "one_seg.nii.gz").stat().st_mtime_ns

    result = predict([scans], out, predictor=FixedPredictor(), progress=False, qc=False)
    assert [Path(p).name for p in result.done] == ["one.nii.gz"] and [r["scan"] for r in result.rows] == ["two"]
    rows = rows_of(out)
    assert [(r["scan"], r["brain_ml"], r["qc"]) for r in rows] == [("one", old["brain_ml"], ""),
                                                                  ("two", old["brain_ml"], QC_PASS)]
    assert (out / "one_seg.nii.gz").stat().st_mtime_ns == stamp
    assert "1 pass QC, 0 flagged, 1 not checked" in (out / "report.html").read_text()


def test_report_is_current_while_the_batch_runs(tmp_path, monkeypatch):
    import mrivol_monai.predict as predict_module

    monkeypatch.setattr(predict_module, "REPORT_WAIT", 0.0)  # no throttling: these fake scans take milliseconds
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b", "c"):
        image, mask, affine = qc_scan()
        np.save(f"{save(scans / f'{name}.nii.gz', image, affine)}.mask.npy", mask)
    out = tmp_path / "out"
    seen = []

    class Watching(FixedPredictor):
        def segment(self, path):
            report = out / "report.html"
            seen.append(report.read_text().count("<tr>") - 1 if report.exists() else None)
            return super().segment(path)

    predict([scans], out, predictor=Watching(), progress=False, qc=False)
    assert seen == [None, 1, 2]  # when each scan starts, the report already lists the ones before it
    assert (out / "report.html").read_text().count("<tr>") - 1 == 3


def test_output_paths_of_both_layouts(tmp_path):
    from mrivol_monai.errors import InputError
    from mrivol_monai.predict import output_paths, qc_picture_of

    bids = {"scan": "sub-01_ses-a_run-2", "subject": "01", "session": "a"}
    paths = output_paths(tmp_path, bids, "bids")
    anat = tmp_path / "sub-01" / "ses-a" / "anat"
    assert paths == {"mask": anat / "sub-01_ses-a_run-2_space-orig_dseg.nii.gz",
                     "qc": anat / "sub-01_ses-a_run-2_qc.png", "json": anat / "sub-01_ses-a_run-2_space-orig_dseg.json"}
    assert output_paths(tmp_path, {"scan": "scan1"}, "bids")["mask"] == tmp_path / "scan1_space-orig_dseg.nii.gz"
    assert output_paths(tmp_path, {"scan": "scan1"}) == {"mask": tmp_path / "scan1_seg.nii.gz",
                                                         "qc": tmp_path / "scan1_qc.png",
                                                         "json": tmp_path / "scan1_volumes.json"}
    for layout in ("flat", "bids"):
        found = output_paths(tmp_path, bids, layout)
        assert qc_picture_of(str(found["mask"])) == str(found["qc"])
    with pytest.raises(InputError, match="unknown layout 'nested'"):
        output_paths(tmp_path, bids, "nested")


def test_shipped_model_rows_carry_calibrated_intervals_and_wide_ones_are_flagged(tmp_path, monkeypatch):
    from mrivol_monai import intervals, weights

    scans = tmp_path / "scans"
    scans.mkdir()
    image, mask, affine = qc_scan()
    np.save(f"{save(scans / 'clean.nii.gz', image, affine)}.mask.npy", mask)
    calibration = {"brain": intervals.StructureCalibration(s0=0.01, q_lo=-5.0, q_hi=2.0, level=0.95, n=60,
                                                           median_width=0.07)}
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "weights")
    intervals.save(calibration, tmp_path / "weights" / "brain_intervals.json")
    predictor = FixedPredictor()
    predict([scans], tmp_path / "own", predictor=predictor, progress=False, qc=False)
    assert "brain_ml_lo95" not in rows_of(tmp_path / "own")[0]  # not the shipped model: no calibration applies
    predictor.shipped = True
    predict([scans], tmp_path / "out", predictor=predictor, progress=False, qc=False)
    row = rows_of(tmp_path / "out")[0]
    volume = float(row["brain_ml"])  # one-hot mask: difficulty 0, so s = s0 = 0.01
    assert float(row["brain_ml_lo95"]) == pytest.approx(volume * 0.95, abs=2e-3)
    assert float(row["brain_ml_hi95"]) == pytest.approx(volume * 1.02, abs=2e-3)
    assert row["qc"] == QC_PASS
    assert f"{row['brain_ml']} [{row['brain_ml_lo95']}, {row['brain_ml_hi95']}]" in (tmp_path / "out" / "report.html").read_text()
    calibration["brain"].median_width = 0.02  # this scan's 7 % is now more than twice the usual width
    intervals.save(calibration, tmp_path / "weights" / "brain_intervals.json")
    predict([scans], tmp_path / "wide", predictor=predictor, progress=False, qc=False)
    assert rows_of(tmp_path / "wide")[0]["qc"] == "wide 95 % interval for brain"
