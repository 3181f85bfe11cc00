"""SynthIXI generator: volumes in cohort.csv equal the label files, determinism, held-out anatomy, a warp without
folds, site geometry and orientation, T1 contrast of real anatomy, CLI errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrivol_monai.data import label_maps, synthetic
from mrivol_monai.data import synthetic_acquisition as acq
from mrivol_monai.data import synthetic_anatomy as anat
from mrivol_monai.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    synthetic.generate_cohort(out, n_subjects=6, seed=3, geometry="tiny", workers=1, progress=False)
    return out


def test_cohort_csv_volumes_equal_an_independent_count_of_the_written_files(tiny: Path) -> None:
    with open(tiny / "cohort.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == synthetic.COLUMNS
    rows = _rows(tiny / "cohort.csv")
    assert len(rows) == 6
    for row in rows:
        image, brain = nib.load(tiny / row["image"]), nib.load(tiny / row["brain_label"])
        merged, aseg = nib.load(tiny / row["subcortical_label"]), nib.load(tiny / row["aseg_label"])
        assert image.get_data_dtype() == np.int16 and aseg.get_data_dtype() == np.uint16
        assert brain.get_data_dtype() == np.uint8 and merged.get_data_dtype() == np.uint8
        assert image.shape == (40, 40, 30) and row["shape"] == "40x40x30"
        for other in (brain, merged, aseg):
            assert np.array_equal(other.affine, image.affine)
        a = np.asarray(aseg.dataobj).astype(int)
        voxel_ml = 6.0 ** 3 / 1000.0
        # brain = FreeSurfer 1-499 except 24; ICV = 1-499; structures left/right by FreeSurfer id
        assert float(row["brain_ml"]) == pytest.approx(np.count_nonzero(np.asarray(brain.dataobj)) * voxel_ml, abs=1e-3)
        assert float(row["brain_ml"]) == pytest.approx(((a > 0) & (a < 500) & (a != 24)).sum() * voxel_ml, abs=1e-3)
        assert float(row["icv_ml"]) == pytest.approx(((a > 0) & (a < 500)).sum() * voxel_ml, abs=1e-3)
        m = np.asarray(merged.dataobj)
        for value, (name, (left, right)) in enumerate(label_maps.SUBCORTICAL_LR.items(), start=1):
            assert float(row[f"{name}_left_ml"]) == pytest.approx((a == left).sum() * voxel_ml, abs=1e-3)
            assert float(row[f"{name}_right_ml"]) == pytest.approx((a == right).sum() * voxel_ml, abs=1e-3)
            assert float(row[f"{name}_ml"]) == pytest.approx((m == value).sum() * voxel_ml, abs=1e-3)
        assert float(row["hippocampus_left_ml"]) == pytest.approx((a == 17).sum() * voxel_ml, abs=1e-3)
        assert set(np.unique(m)) <= {0, 1, 2, 3, 4}
        assert 700 < float(row["brain_ml"]) < 1800 and float(row["brain_ml"]) < float(row["icv_ml"]) < 2300
        if row["skull_stripped"] == "1":  # nothing outside the intracranial labels
            assert not np.asarray(image.dataobj)[(a == 0) | (a >= 500)].any()
    assert not [p.name for p in tiny.iterdir() if "tmp" in p.name]  # temp files were all renamed


def test_same_seed_is_byte_identical_and_a_new_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthetic.generate_cohort(again, n_subjects=6, seed=3, geometry="tiny", workers=2, progress=False)
    assert (again / "cohort.csv").read_bytes() == (tiny / "cohort.csv").read_bytes()
    names = sorted(p.name for p in tiny.glob("*.nii.gz"))
    assert names == sorted(p.name for p in again.glob("*.nii.gz")) and len(names) == 6 * 4
    for name in names:
        assert (tiny / name).read_bytes() == (again / name).read_bytes()
    other = tmp_path / "other"
    synthetic.generate_cohort(other, n_subjects=6, seed=4, geometry="tiny", workers=1, progress=False)
    assert (other / "cohort.csv").read_bytes() != (tiny / "cohort.csv").read_bytes()


def test_held_out_anatomy_never_reaches_training_or_validation(tiny: Path) -> None:
    assert not set(label_maps.TEST_MAPS) & set(label_maps.TRAINING_MAPS + label_maps.VALIDATION_MAPS)
    assert not set(label_maps.VALIDATION_MAPS) & set(label_maps.TRAINING_MAPS)
    assert sorted(label_maps.TEST_MAPS + label_maps.VALIDATION_MAPS + label_maps.TRAINING_MAPS) == list(range(1, 21))
    for row in _rows(tiny / "cohort.csv"):
        assert int(row["anatomy"][-2:]) in label_maps.MAPS_OF_SPLIT[row["split"]]
        assert (row["split"] == "test") == (row["site"] == "IOP")
    # The committed manifests describe the default cohort: map each listed subject to its anatomy.
    plan = {synthetic.subject_name(n, site, k): m for n, site, k, _, m in synthetic.cohort_plan(150, 0)}
    for task in ("brain", "subcortical"):
        manifest = json.loads((REPO / "bundle" / "datalists" / f"synthixi_{task}.json").read_text())
        maps = {split: {plan[e["subject"]] for e in manifest[split]} for split in ("training", "validation", "test")}
        assert maps["test"] == set(label_maps.TEST_MAPS)
        assert maps["validation"] == set(label_maps.VALIDATION_MAPS)
        assert maps["training"] == set(label_maps.TRAINING_MAPS)


def test_every_map_is_used_about_equally_within_its_split() -> None:
    plan = synthetic.cohort_plan(150, 0)
    for split, pool in label_maps.MAPS_OF_SPLIT.items():
        counts = [sum(1 for *_, s, m in plan if s == split and m == index) for index in pool]
        assert max(counts) - min(counts) <= 1 and min(counts) >= 1


@pytest.mark.parametrize("number", range(1, 9))
def test_the_warp_does_not_fold_jacobian_positive_on_the_grid(number: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(number,)))
    anatomy = anat.sample_anatomy(rng, 1 + number % 20)
    shape, spacing = acq.GEOMETRIES["half"]
    coords = anat.map_coordinates_for_grid(anatomy, shape, acq.grid_affine("PIR", shape, spacing))
    jacobian = np.stack([np.stack(np.gradient(coords[c].astype(np.float64)), axis=-1) for c in range(3)], axis=-2)
    det = np.linalg.det(jacobian)
    # No fold: the Jacobian keeps one sign everywhere (its sign is the handedness of grid vs map axes),
    # and its size stays near the volume ratio of the two grids (map voxels are 1 mm).
    sign = np.sign(det[64, 64, 37])
    assert (det * sign).min() > 0
    expected = np.prod(spacing)
    assert 0.5 * expected < np.median(det * sign) < 1.6 * expected


def test_the_warp_moves_anatomy_smoothly_and_head_size_varies() -> None:
    brains = []
    for number in range(1, 7):
        subject = synthetic.generate_subject(number, "HH", seed=0, geometry="half", split="training",
                                             map_index=label_maps.TRAINING_MAPS[0])
        brains.append(float(subject.brain.sum()) * np.prod(acq.GEOMETRIES["half"][1]) / 1000.0)
    # one map, six subjects: continuous variation (not one volume six times), all in an adult range
    assert len({round(b) for b in brains}) == 6 and max(brains) - min(brains) > 40
    assert all(800 < b < 1700 for b in brains)


def test_sites_store_their_own_orientation_and_the_ixi_grid() -> None:
    shape, spacing = acq.GEOMETRIES["ixi"]
    assert (shape, spacing) == ((256, 256, 150), (0.9375, 0.9375, 1.2))
    assert synthetic.DEFAULT_GEOMETRY == "ixi"
    subjects = {site: synthetic.generate_subject(7, site, seed=0, geometry="half", split="training")
                for site in synthetic.SITES}
    codes = {site: "".join(nib.aff2axcodes(s.affine)) for site, s in subjects.items()}
    assert codes == {site: p.axcodes for site, p in acq.SITE_PROTOCOLS.items()}
    assert len(set(codes.values())) == 3
    for site, s in subjects.items():
        assert np.allclose(nib.affines.voxel_sizes(s.affine), acq.GEOMETRIES["half"][1])
        assert s.image.shape == acq.GEOMETRIES["half"][0]
    # Same subject number and map at every site: the same anatomy in scanner space, whatever the storage.
    canonical = {site: nib.as_closest_canonical(nib.Nifti1Image(s.brain, s.affine)) for site, s in subjects.items()}
    centroids = {site: nib.affines.apply_affine(img.affine, np.argwhere(np.asarray(img.dataobj) > 0)).mean(axis=0)
                 for site, img in canonical.items()}
    for site in ("HH", "IOP"):
        assert np.abs(centroids[site] - centroids["Guys"]).max() < 2.0
    assert np.abs(centroids["Guys"]).max() < 15  # the brain sits near the scanner centre


def test_t1_contrast_follows_real_tissue_and_sites_differ() -> None:
    medians = {}
    for site in synthetic.SITES:
        ratios = []
        for number in (3, 4, 5):
            subject = synthetic.generate_subject(number, site, seed=0, geometry="half", split="training")
            t1, aseg = subject.image.astype(float), subject.aseg
            wm, gm = np.median(t1[np.isin(aseg, (2, 41))]), np.median(t1[np.isin(aseg, (3, 42))])
            csf = np.median(t1[np.isin(aseg, (4, 43))])
            assert csf < gm < wm  # T1: ventricles dark, cortex grey, white matter bright
            ratios.append((wm, gm / wm, np.median(t1[np.isin(aseg, (10, 49))]) / wm))
        medians[site] = np.median(ratios, axis=0)
        # thalamus between cortex and white matter (per subject the tissue jitter can bring it close to WM)
        assert medians[site][1] < medians[site][2] < 1.0
    assert medians["HH"][1] < medians["Guys"][1] < medians["IOP"][1]  # 3T: most grey/white contrast
    assert medians["IOP"][0] > 2.5 * medians["Guys"][0]  # stored intensity scales differ


def test_bad_arguments_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="positive integer"):
        synthetic.generate_cohort(tmp_path, n_subjects=0, progress=False)
    with pytest.raises(InputError, match="unknown geometry"):
        synthetic.generate_cohort(tmp_path, n_subjects=2, geometry="huge", progress=False)
    with pytest.raises(InputError, match="not one of the training maps"):
        synthetic.generate_subject(1, "Guys", geometry="tiny", split="training", map_index=label_maps.TEST_MAPS[0])
    assert not (tmp_path / "cohort.csv").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrivol_monai.synth", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
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
