"""SynthIXI generator: ground-truth volumes, determinism, site proportions, orientation, anatomy, CLI errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrivol_monai.data import synthetic
from mrivol_monai.data import synthetic_acquisition as acq
from mrivol_monai.data import synthetic_anatomy as anat
from mrivol_monai.errors import InputError

EXPECTED_COLUMNS = [
    "subject", "site", "age", "sex", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "shape", "image",
    "brain_label", "subcortical_label", "brain_ml", "thalamus_ml", "caudate_ml", "putamen_ml", "amygdala_ml",
]


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    synthetic.generate_cohort(out, n_subjects=5, seed=3, geometry="tiny", workers=1, progress=False)
    return out


def test_cohort_csv_columns_files_and_volumes_match_an_independent_count(tiny: Path) -> None:
    with open(tiny / "cohort.csv", newline="") as handle:
        assert next(csv.reader(handle)) == EXPECTED_COLUMNS
    rows = _rows(tiny / "cohort.csv")
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):  # global SYN number, then a running number per site
        seen[row["site"]] = seen.get(row["site"], 0) + 1
        assert row["subject"] == f"SYN{number:04d}-{row['site']}-{seen[row['site']]:04d}"
        assert row["image"] == f"{row['subject']}-T1.nii.gz"
    names = {"brain": "brain_ml", 1: "thalamus_ml", 2: "caudate_ml", 3: "putamen_ml", 4: "amygdala_ml"}
    for row in rows:
        image = nib.load(tiny / row["image"])
        brain = nib.load(tiny / row["brain_label"])
        labels = nib.load(tiny / row["subcortical_label"])
        assert image.get_data_dtype() == np.int16
        assert brain.get_data_dtype() == np.uint8 and labels.get_data_dtype() == np.uint8
        assert row["shape"] == "40x40x30" and image.shape == (40, 40, 30)
        assert [float(row[f"spacing_{a}_mm"]) for a in "xyz"] == [6.0, 6.0, 6.0]
        b = np.asarray(brain.dataobj)
        lab = np.asarray(labels.dataobj)
        assert set(np.unique(b)) == {0, 1} and set(np.unique(lab)) <= {0, 1, 2, 3, 4}
        voxel_ml = abs(np.linalg.det(brain.affine[:3, :3])) / 1000.0
        assert voxel_ml == pytest.approx(0.216)
        assert float(row[names["brain"]]) == pytest.approx(b.sum() * voxel_ml, abs=1e-3)
        for label in (1, 2, 3, 4):
            assert float(row[names[label]]) == pytest.approx((lab == label).sum() * voxel_ml, abs=1e-3)
        assert 700 < float(row["brain_ml"]) < 1600
    assert not [p.name for p in tiny.iterdir() if "tmp" in p.name]  # temp files were all renamed


def test_same_seed_is_byte_identical_and_a_new_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthetic.generate_cohort(again, n_subjects=5, seed=3, geometry="tiny", workers=1, progress=False)
    assert (again / "cohort.csv").read_bytes() == (tiny / "cohort.csv").read_bytes()
    for path in sorted(tiny.glob("*.nii.gz")):
        a, b = nib.load(path), nib.load(again / path.name)
        assert a.header.binaryblock == b.header.binaryblock
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert path.read_bytes() == (again / path.name).read_bytes()
    other = tmp_path / "other"
    synthetic.generate_cohort(other, n_subjects=5, seed=4, geometry="tiny", workers=1, progress=False)
    assert (other / "cohort.csv").read_bytes() != (tiny / "cohort.csv").read_bytes()
    first_other = sorted(other.glob("SYN0001-*-T1.nii.gz"))[0]
    first_tiny = sorted(tiny.glob("SYN0001-*-T1.nii.gz"))[0]
    assert not np.array_equal(np.asarray(nib.load(first_other).dataobj), np.asarray(nib.load(first_tiny).dataobj))


def test_worker_processes_do_not_change_the_cohort(tiny: Path, tmp_path: Path) -> None:
    synthetic.generate_cohort(tmp_path, n_subjects=5, seed=3, geometry="tiny", workers=2, progress=False)
    assert (tmp_path / "cohort.csv").read_bytes() == (tiny / "cohort.csv").read_bytes()
    for path in sorted(tiny.glob("*T1.nii.gz")):
        assert path.read_bytes() == (tmp_path / path.name).read_bytes()


def test_site_counts_follow_ixi_proportions() -> None:
    assert synthetic.site_counts(100) == {"Guys": 55, "HH": 32, "IOP": 13}
    assert synthetic.site_counts(566) == synthetic.SITE_WEIGHTS
    assert synthetic.site_counts(3) == {"Guys": 1, "HH": 1, "IOP": 1}
    assert synthetic.site_counts(4) == {"Guys": 2, "HH": 1, "IOP": 1}
    assert synthetic.site_counts(2) == {"Guys": 1, "HH": 1, "IOP": 0}
    for n in range(3, 40):
        counts = synthetic.site_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1
    sequence = synthetic.site_sequence(100, seed=0)
    assert {s: sequence.count(s) for s in synthetic.SITES} == synthetic.site_counts(100)
    assert sequence != synthetic.site_sequence(100, seed=1)


def test_sites_store_different_orientations_that_agree_in_ras(tmp_path: Path) -> None:
    subjects = {site: synthetic.generate_subject(7, site, seed=0, geometry="tiny") for site in synthetic.SITES}
    codes = {site: "".join(nib.aff2axcodes(s.affine)) for site, s in subjects.items()}
    assert codes == {"Guys": "RAS", "HH": "PIR", "IOP": "LPS"}
    canonical = {site: nib.as_closest_canonical(nib.Nifti1Image(s.brain, s.affine)) for site, s in subjects.items()}
    guys, iop = (np.asarray(canonical[s].dataobj) for s in ("Guys", "IOP"))
    assert np.allclose(canonical["Guys"].affine, canonical["IOP"].affine)
    assert np.mean(guys == iop) > 0.999  # same anatomy, same voxel centres, stored mirrored
    centroids = {}
    for site, image in canonical.items():
        ijk = np.argwhere(np.asarray(image.dataobj) > 0)
        centroids[site] = nib.affines.apply_affine(image.affine, ijk).mean(axis=0)
    for site in ("HH", "IOP"):  # HH samples a different (sagittal) grid: same place within a voxel
        assert np.abs(centroids[site] - centroids["Guys"]).max() < 3.0
    # The brain sits near the scanner centre, its top below the top of the field of view.
    assert np.abs(centroids["Guys"][:2]).max() < 15 and -20 < centroids["Guys"][2] < 25


def test_default_grid_anatomy_is_nested_and_plausible() -> None:
    subject = synthetic.generate_subject(2, "Guys", seed=0, geometry="default")
    assert subject.image.shape == (128, 128, 75)
    labels, brain = subject.subcortical, subject.brain
    assert np.all(brain[labels > 0] == 1)  # every structure lies inside the brain mask
    voxel_ml = abs(np.linalg.det(subject.affine[:3, :3])) / 1000.0
    volumes = {synthetic.SUBCORTICAL_LABELS[k]: (labels == k).sum() * voxel_ml for k in (1, 2, 3, 4)}
    assert 8 < volumes["thalamus"] < 20 and 3 < volumes["caudate"] < 10
    assert 5 < volumes["putamen"] < 14 and 1.5 < volumes["amygdala"] < 5
    assert 800 < brain.sum() * voxel_ml < 1500
    world = {k: nib.affines.apply_affine(subject.affine, np.argwhere(labels == k)) for k in (1, 3, 4)}
    midline = world[1][:, 0].mean()
    # Thalamus medial to putamen; amygdala below the thalamus; both hemispheres populated.
    assert np.abs(world[1][:, 0] - midline).mean() < np.abs(world[3][:, 0] - midline).mean() - 8
    assert world[4][:, 2].mean() < world[1][:, 2].mean() - 15
    assert (world[3][:, 0] > midline).sum() > 0 and (world[3][:, 0] < midline).sum() > 0
    # T1 contrast: white matter (brain voxels brighter than the thalamus) beats deep grey and ventricles.
    t1 = subject.image.astype(float)
    assert np.median(t1[labels == 1]) < np.percentile(t1[brain == 1], 90)
    assert np.median(t1[brain == 0]) < np.median(t1[brain == 1]) / 2


def test_iop_looks_different_from_guys_and_hh() -> None:
    images = {site: synthetic.generate_subject(4, site, seed=0, geometry="tiny") for site in synthetic.SITES}
    median = {site: np.median(s.image[s.brain == 1]) for site, s in images.items()}
    assert median["IOP"] > 1.8 * median["HH"] and median["IOP"] > 2.5 * median["Guys"]
    for protocol in acq.SITE_PROTOCOLS.values():
        assert len(protocol.contrast) == anat.N_TISSUES
    iop, guys = acq.SITE_PROTOCOLS["IOP"], acq.SITE_PROTOCOLS["Guys"]
    assert iop.noise > 1.5 * guys.noise and iop.blur_mm > guys.blur_mm


def test_ixi_geometry_matches_the_real_ixi_t1_grid() -> None:
    shape, spacing = acq.GEOMETRIES["ixi"]
    assert shape == (256, 256, 150) and spacing == (0.9375, 0.9375, 1.2)
    affine = acq.grid_affine("PIR", shape, spacing)
    assert np.allclose(nib.affines.voxel_sizes(affine), spacing)
    assert "".join(nib.aff2axcodes(affine)) == "PIR"
    centre = nib.affines.apply_affine(affine, (np.array(shape) - 1) / 2)
    assert np.allclose(centre[:2], 0) and centre[2] == pytest.approx(acq.FOV_TOP_MM - 120.0)


def test_bad_arguments_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="positive integer"):
        synthetic.generate_cohort(tmp_path, n_subjects=0, progress=False)
    with pytest.raises(InputError, match="unknown geometry"):
        synthetic.generate_cohort(tmp_path, n_subjects=2, geometry="huge", progress=False)
    assert not (tmp_path / "cohort.csv").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrivol_monai.synth", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_writes_a_cohort_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    ok = _cli("--out", str(tmp_path / "c"), "--subjects", "3", "--seed", "5", "--geometry", "tiny", "--quiet",
              "--workers", "1")
    assert ok.returncode == 0, ok.stderr
    assert "3 subjects (Guys 1, HH 1, IOP 1)" in ok.stdout
    assert len(_rows(tmp_path / "c" / "cohort.csv")) == 3
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for args in (["--subjects", "0", "--out", str(tmp_path / "d")], ["--out", str(blocker / "sub"), "--subjects", "1"]):
        bad = _cli(*args, "--geometry", "tiny", "--quiet")
        assert bad.returncode != 0
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
    assert "a_file" in bad.stderr
