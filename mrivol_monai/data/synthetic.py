"""SynthIXI: a multi-site T1 head-MRI cohort rendered from real anatomy, with exact ground-truth labels.

Sites and proportions follow IXI (Guys 311 : HH 181 : IOP 74). Each subject is one of 20 real whole-head
label maps (:mod:`~mrivol_monai.data.label_maps`), aged, moved and warped (:mod:`synthetic_anatomy`),
then scanned by its site (:mod:`synthetic_acquisition`) on IXI's grid by default. Per subject, with
IXI-style names, the generator writes:

- ``<subject>-T1.nii.gz``: int16 T1 image (a share of subjects is skull-stripped: zero outside the ICV);
- ``<subject>-brain.nii.gz``: uint8 brain mask, 1 = brain;
- ``<subject>-subcortical.nii.gz``: uint8, 0 background, 1 thalamus, 2 caudate, 3 putamen, 4 amygdala
  (left and right merged: the paper's 4-structure task);
- ``<subject>-aseg.nii.gz``: uint16 FreeSurfer labels on the same grid (left/right kept, hippocampus,
  CSF, extra-cerebral classes), from which the two masks above are derived;

and ``cohort.csv`` with demographics, anatomy source, split and volumes counted from those label arrays.

Definitions (mL = voxel count x voxel volume): **brain** = FreeSurfer labels 1-499 except 24 (cerebral
and cerebellar grey and white matter, ventricles, deep grey matter, brainstem; not extra-cerebral CSF);
**ICV** (intracranial volume) = labels 1-499 (brain + CSF); **thalamus, caudate, putamen, amygdala**
left/right = FreeSurfer 10/49, 11/50, 12/51, 18/54; their ``_ml`` totals add left and right.

Split by anatomy and by site: subjects are assigned to training / validation / test by the manifest
rule (:func:`mrivol_monai.data.manifests.split_subjects`, seed :data:`SPLIT_SEED`: every IOP subject is
test), and each subject's label map is drawn only from its split's maps
(:data:`~mrivol_monai.data.label_maps.MAPS_OF_SPLIT`), so test anatomy is never seen in training.
Each split's subjects use its maps in turn. Each subject draws from its own ``numpy`` generator seeded by ``(seed, subject number)``, so files do not
depend on the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.data import label_maps
from mrivol_monai.data import synthetic_acquisition as acq
from mrivol_monai.data import synthetic_anatomy as anat
from mrivol_monai.data.ixi import SITE_SUBJECTS, SITES
from mrivol_monai.data.nifti_files import voxel_mm3
from mrivol_monai.errors import InputError

GEOMETRIES = tuple(acq.GEOMETRIES)
DEFAULT_GEOMETRY = acq.DEFAULT_GEOMETRY
DEFAULT_N_SUBJECTS = 150
DEFAULT_SEED = 0
SPLIT_SEED = 0  # the committed manifests' split seed: anatomy follows the same split
SKULL_STRIPPED_FRACTION = 0.3
TEST_SITE = "IOP"
VAL_FRACTION = 0.15
_SIDES = ("left", "right")
COLUMNS = (
    "subject", "site", "age", "sex", "split", "anatomy", "skull_stripped", "spacing_x_mm", "spacing_y_mm",
    "spacing_z_mm", "shape", "image", "brain_label", "subcortical_label", "aseg_label", "brain_ml", "icv_ml",
    "thalamus_ml", "caudate_ml", "putamen_ml", "amygdala_ml",
    *(f"{s}_{side}_ml" for s in label_maps.SUBCORTICAL_LR for side in _SIDES),
    *(f"hippocampus_{side}_ml" for side in _SIDES),
)


@dataclass(frozen=True)
class SyntheticSubject:
    """One generated subject: (X, Y, Z) arrays on the site's grid and the (4, 4) voxel -> RAS affine."""

    name: str  # e.g. "SYN0001-Guys-0001"
    site: str
    split: str  # training, validation or test
    anatomy: str  # source label map, e.g. "training_seg_07"
    skull_stripped: bool
    age: float
    sex: str
    image: np.ndarray  # int16 T1
    aseg: np.ndarray  # uint16 FreeSurfer labels
    affine: np.ndarray

    @property
    def brain(self) -> np.ndarray:
        """uint8 brain mask (FreeSurfer labels 1-499 except 24)."""
        return label_maps.brain_mask(self.aseg).astype(np.uint8)

    @property
    def subcortical(self) -> np.ndarray:
        """uint8 0 background, 1 thalamus, 2 caudate, 3 putamen, 4 amygdala (left and right merged)."""
        lut = np.zeros(int(self.aseg.max()) + 1 if self.aseg.size else 1, np.uint8)
        for value, (left, right) in enumerate(label_maps.SUBCORTICAL_LR.values(), start=1):
            lut[[x for x in (left, right) if x < lut.size]] = value
        return lut[self.aseg]


def site_counts(n_subjects: int) -> dict[str, int]:
    """Subjects per site in IXI's proportions (largest remainder); every site gets one when N >= 3."""
    total = sum(SITE_SUBJECTS.values())
    exact = {s: n_subjects * SITE_SUBJECTS[s] / total for s in SITES}
    counts = {s: int(exact[s]) for s in SITES}
    for s in sorted(SITES, key=lambda s: exact[s] - counts[s], reverse=True)[: n_subjects - sum(counts.values())]:
        counts[s] += 1
    if n_subjects >= len(SITES):
        for s in SITES:
            while counts[s] == 0:
                counts[max(SITES, key=counts.__getitem__)] -= 1
                counts[s] += 1
    return counts


def site_sequence(n_subjects: int, seed: int) -> list[str]:
    """Site of subject 1..N: the site counts in a seeded random order."""
    counts = site_counts(n_subjects)
    sites = [s for s in SITES for _ in range(counts[s])]
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(n_subjects)
    return [sites[i] for i in order]


def subject_name(number: int, site: str, site_number: int) -> str:
    """IXI-style stem, e.g. ``SYN0001-Guys-0001`` (global number, site, running number within the site)."""
    return f"SYN{number:04d}-{site}-{site_number:04d}"


def cohort_plan(n_subjects: int, seed: int = DEFAULT_SEED) -> list[tuple[int, str, int, str, int]]:
    """``(number, site, site_number, split, map_index)`` of subjects 1..N.

    The split is the manifest rule's (test = IOP; the others 0.85 / 0.15 with :data:`SPLIT_SEED`); each
    split's subjects take its label maps in turn (a seeded order), so every map is used about equally.
    """
    from mrivol_monai.data.manifests import split_subjects

    sites = site_sequence(n_subjects, seed)
    seen = dict.fromkeys(SITES, 0)
    rows = []
    for number, site in enumerate(sites, start=1):
        seen[site] += 1
        rows.append((number, site, seen[site]))
    names = [subject_name(*row) for row in rows]
    split_of = {}
    if sum(site != TEST_SITE for site in sites) >= 2:
        for split, members in split_subjects(names, sites, SPLIT_SEED, TEST_SITE, VAL_FRACTION).items():
            split_of.update(dict.fromkeys(members, split))
    else:  # too few subjects for a validation split (tiny test cohorts): every non-test subject trains
        split_of = {n: "test" if site == TEST_SITE else "training" for n, site in zip(names, sites)}
    order_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, 1)))
    maps = {split: [int(m) for m in order_rng.permutation(pool)] for split, pool in label_maps.MAPS_OF_SPLIT.items()}
    used = dict.fromkeys(maps, 0)
    plan = []
    for (number, site, site_number), name in zip(rows, names):
        split = split_of[name]
        plan.append((number, site, site_number, split, maps[split][used[split] % len(maps[split])]))
        used[split] += 1
    return plan


def generate_subject(number: int, site: str, seed: int = DEFAULT_SEED, geometry: str = DEFAULT_GEOMETRY,
                     site_number: int = 1, split: str = "training", map_index: int | None = None,
                     skull_stripped: bool | None = None) -> SyntheticSubject:
    """Simulate subject ``number`` (1-based) of ``split`` scanned at ``site`` on the ``geometry`` grid.

    ``map_index`` (a shipped label map of that split) defaults to the split's first map; ``skull_stripped``
    None draws it (probability :data:`SKULL_STRIPPED_FRACTION`), True/False forces it.
    """
    if site not in acq.SITE_PROTOCOLS:
        raise InputError(None, f"unknown site {site!r}; expected one of {', '.join(SITES)}")
    if geometry not in acq.GEOMETRIES:
        raise InputError(None, f"unknown geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    if split not in label_maps.MAPS_OF_SPLIT:
        raise InputError(None, f"unknown split {split!r}; expected one of {', '.join(label_maps.MAPS_OF_SPLIT)}")
    map_index = label_maps.MAPS_OF_SPLIT[split][0] if map_index is None else int(map_index)
    if map_index not in label_maps.MAPS_OF_SPLIT[split]:
        raise InputError(None, f"label map {map_index} is not one of the {split} maps {label_maps.MAPS_OF_SPLIT[split]}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(number,)))
    anatomy = anat.sample_anatomy(rng, map_index)
    stripped = bool(rng.random() < SKULL_STRIPPED_FRACTION)
    stripped = stripped if skull_stripped is None else bool(skull_stripped)
    protocol = acq.SITE_PROTOCOLS[site]
    shape, spacing = acq.GEOMETRIES[geometry]
    affine = acq.grid_affine(protocol.axcodes, shape, spacing)
    coords = anat.map_coordinates_for_grid(anatomy, shape, affine)
    image, aseg = acq.acquire(anat.aged_labels(anatomy), coords, protocol, spacing, rng, skull_stripped=stripped)
    return SyntheticSubject(
        name=subject_name(number, site, site_number), site=site, split=split,
        anatomy=label_maps.map_name(anatomy.map_index), skull_stripped=stripped, age=anatomy.age,
        sex=anatomy.sex, image=image, aseg=aseg, affine=affine,
    )


def _save(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    """NIfTI-1 with qform = sform = ``affine``; gzip by ISA-L at level 1 (the T1's noise makes zlib's level 1,
    nibabel's default, take 0.65 s per IXI-size image; ISA-L 0.1 s)."""
    from isal import igzip

    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = description.encode()[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    write_atomic(path, igzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def label_volumes_ml(path: str | os.PathLike, labels: tuple[int, ...]) -> dict[int, float]:
    """Volume (mL) of each label in a label file: voxel count x |det(affine[:3, :3])| / 1000."""
    image = nib.load(path)
    voxel_ml = voxel_mm3(image.affine) / 1000.0
    data = np.asarray(image.dataobj)
    return {label: float(np.count_nonzero(data == label)) * voxel_ml for label in labels}


def subject_volumes_ml(aseg: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """cohort.csv volumes (mL) of a FreeSurfer label array: brain, ICV, each structure left/right and total."""
    voxel_ml = voxel_mm3(affine) / 1000.0
    counts = np.bincount(aseg.reshape(-1), minlength=label_maps.EXTRACEREBRAL_MIN)
    icv = float(counts[1:label_maps.EXTRACEREBRAL_MIN].sum())
    out = {"brain": (icv - float(counts[label_maps.CSF])) * voxel_ml, "icv": icv * voxel_ml}
    for name, (left, right) in {**label_maps.SUBCORTICAL_LR, "hippocampus": label_maps.HIPPOCAMPUS_LR}.items():
        out[f"{name}_left"], out[f"{name}_right"] = counts[left] * voxel_ml, counts[right] * voxel_ml
        if name != "hippocampus":
            out[name] = float(counts[left] + counts[right]) * voxel_ml
    return out


def write_subject(subject: SyntheticSubject, out: Path, scanner: str) -> dict[str, str]:
    """Write a subject's four NIfTI files into ``out``; return its cohort.csv row."""
    out = Path(out)
    files = {kind: f"{subject.name}-{kind}.nii.gz" for kind in ("T1", "brain", "subcortical", "aseg")}
    stripped = " skull-stripped" if subject.skull_stripped else ""
    _save(subject.image, subject.affine, out / files["T1"], f"SynthIXI T1 {subject.site} {scanner}{stripped}")
    _save(subject.brain, subject.affine, out / files["brain"], "SynthIXI brain mask (FreeSurfer 1-499 minus 24)")
    _save(subject.subcortical, subject.affine, out / files["subcortical"],
          "SynthIXI subcortical 1 thal 2 caud 3 put 4 amyg")
    _save(subject.aseg, subject.affine, out / files["aseg"], f"SynthIXI FreeSurfer labels from {subject.anatomy}")
    zooms = np.sqrt((subject.affine[:3, :3] ** 2).sum(axis=0))
    row = {
        "subject": subject.name, "site": subject.site, "age": f"{subject.age:.1f}", "sex": subject.sex,
        "split": subject.split, "anatomy": subject.anatomy, "skull_stripped": str(int(subject.skull_stripped)),
        "spacing_x_mm": f"{zooms[0]:.4f}", "spacing_y_mm": f"{zooms[1]:.4f}", "spacing_z_mm": f"{zooms[2]:.4f}",
        "shape": "x".join(str(n) for n in subject.image.shape), "image": files["T1"],
        "brain_label": files["brain"], "subcortical_label": files["subcortical"], "aseg_label": files["aseg"],
    }
    row.update({f"{name}_ml": f"{ml:.4f}" for name, ml in subject_volumes_ml(subject.aseg, subject.affine).items()})
    return row


def _write_subject(task: tuple[str, int, str, int, int, str, str, int]) -> dict[str, str]:
    """Generate and write one subject (a worker's job); return its cohort.csv row."""
    out_dir, number, site, site_number, seed, geometry, split, map_index = task
    subject = generate_subject(number, site, seed, geometry, site_number, split, map_index)
    return write_subject(subject, Path(out_dir), acq.SITE_PROTOCOLS[site].scanner)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _writable_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise InputError(out_dir, f"cannot write the cohort here ({err.strerror or err})") from None


def generate_cohort(out_dir: str | os.PathLike, n_subjects: int = DEFAULT_N_SUBJECTS, seed: int = DEFAULT_SEED,
                    geometry: str = DEFAULT_GEOMETRY, workers: int | None = None, progress: bool = True) -> Path:
    """Write ``n_subjects`` SynthIXI subjects and ``cohort.csv`` into ``out_dir``; return the CSV's path.

    ``workers`` None uses up to 2 processes (the cohort is the same for any worker count); cohort.csv is
    written (atomically) only after every subject's files are in place.
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise InputError(None, f"number of subjects must be a positive integer, got {n_subjects!r}")
    if geometry not in acq.GEOMETRIES:
        raise InputError(None, f"unknown geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    out = Path(out_dir)
    _writable_dir(out)
    tasks = [(str(out), number, site, site_number, int(seed), geometry, split, map_index)
             for number, site, site_number, split, map_index in cohort_plan(int(n_subjects), seed)]
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = dict(total=len(tasks), desc="SynthIXI", unit="subject", disable=not progress)
    if workers == 1 or len(tasks) == 1:
        rows = [_write_subject(task) for task in tqdm(tasks, **bar)]
    else:
        # spawn, not fork: the caller may have torch (and its thread pools) loaded already. Workers inherit
        # the environment at spawn time: one BLAS/OpenMP thread each, so 2 workers use 2 cores, not 4+.
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
        try:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                results = pool.map(_write_subject, tasks)
                _restore_env(saved)
                rows = list(tqdm(results, **bar))
        finally:
            _restore_env(saved)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(out / "cohort.csv", text.getvalue())
