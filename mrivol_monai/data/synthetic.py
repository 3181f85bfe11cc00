"""SynthIXI: a procedural multi-site T1 head-MRI cohort with exact ground-truth labels.

Sites and proportions follow IXI (Guys 311 : HH 181 : IOP 74). Per subject the generator writes, with
IXI-style names, an int16 T1 image, a uint8 brain mask (as ROBEX draws it) and a uint8 subcortical label
map (0 background, 1 thalamus, 2 caudate, 3 putamen, 4 amygdala), then ``cohort.csv`` with demographics,
voxel sizes and ground-truth volumes counted from the written label files.

Each subject draws from its own ``numpy`` generator seeded by ``(seed, subject number)``, so files do not
depend on the number of worker processes. Anatomy: ``synthetic_anatomy``; scanners: ``synthetic_acquisition``.
"""

from __future__ import annotations

import csv
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from mrivol_monai.atomic_io import atomic_path
from mrivol_monai.data import synthetic_acquisition as acq
from mrivol_monai.data import synthetic_anatomy as anat
from mrivol_monai.errors import InputError

SITES = ("Guys", "HH", "IOP")
SITE_WEIGHTS = {"Guys": 311, "HH": 181, "IOP": 74}
SUBCORTICAL_LABELS = {0: "background", 1: "thalamus", 2: "caudate", 3: "putamen", 4: "amygdala"}
GEOMETRIES = tuple(acq.GEOMETRIES)
DEFAULT_N_SUBJECTS = 150
DEFAULT_SEED = 0
COLUMNS = (
    "subject", "site", "age", "sex", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "shape", "image",
    "brain_label", "subcortical_label", "brain_ml", "thalamus_ml", "caudate_ml", "putamen_ml", "amygdala_ml",
)


@dataclass(frozen=True)
class SyntheticSubject:
    """One generated subject: (X, Y, Z) arrays on the site's grid and the (4, 4) voxel -> RAS affine."""

    name: str  # e.g. "SYN0001-Guys-0001"
    site: str
    age: float
    sex: str
    image: np.ndarray  # int16 T1
    brain: np.ndarray  # uint8 0/1
    subcortical: np.ndarray  # uint8 0..4
    affine: np.ndarray


def site_counts(n_subjects: int) -> dict[str, int]:
    """Subjects per site in IXI's proportions (largest remainder); every site gets one when N >= 3."""
    total = sum(SITE_WEIGHTS.values())
    exact = {s: n_subjects * SITE_WEIGHTS[s] / total for s in SITES}
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


def generate_subject(number: int, site: str, seed: int = DEFAULT_SEED, geometry: str = "default",
                     site_number: int = 1) -> SyntheticSubject:
    """Simulate subject ``number`` (1-based) scanned at ``site`` on the ``geometry`` grid (see GEOMETRIES)."""
    if site not in acq.SITE_PROTOCOLS:
        raise InputError(None, f"unknown site {site!r}; expected one of {', '.join(SITES)}")
    if geometry not in acq.GEOMETRIES:
        raise InputError(None, f"unknown geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(number,)))
    anatomy = anat.sample_anatomy(rng)
    protocol = acq.SITE_PROTOCOLS[site]
    shape, spacing = acq.GEOMETRIES[geometry]
    affine = acq.grid_affine(protocol.axcodes, shape, spacing)
    world = acq.voxel_centres(shape, affine)
    tissue, brain = anat.rasterise(world, anatomy)
    subcortical = np.zeros(anat.N_TISSUES, np.uint8)
    for tissue_class, label in anat.SUBCORTICAL_OF_TISSUE.items():
        subcortical[tissue_class] = label
    tissue = tissue.reshape(shape)
    return SyntheticSubject(
        name=subject_name(number, site, site_number),
        site=site,
        age=anatomy.age,
        sex=anatomy.sex,
        image=acq.acquire(tissue, world, protocol, spacing, rng),
        brain=brain.reshape(shape).astype(np.uint8),
        subcortical=subcortical[tissue] * brain.reshape(shape).astype(np.uint8),
        affine=affine,
    )


def _save(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = description.encode()[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def label_volumes_ml(path: str | os.PathLike, labels: tuple[int, ...]) -> dict[int, float]:
    """Volume (mL) of each label in a label file: voxel count x |det(affine[:3, :3])| / 1000."""
    image = nib.load(path)
    voxel_ml = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    data = np.asarray(image.dataobj)
    return {label: float(np.count_nonzero(data == label)) * voxel_ml for label in labels}


def _write_subject(task: tuple[str, int, str, int, int, str]) -> dict[str, str]:
    """Generate and write one subject; return its cohort.csv row (volumes read back from the files)."""
    out_dir, number, site, site_number, seed, geometry = task
    subject = generate_subject(number, site, seed, geometry, site_number)
    out = Path(out_dir)
    files = {kind: f"{subject.name}-{kind}.nii.gz" for kind in ("T1", "brain", "subcortical")}
    protocol = acq.SITE_PROTOCOLS[site]
    _save(subject.image, subject.affine, out / files["T1"], f"SynthIXI T1 {site} {protocol.scanner}")
    _save(subject.brain, subject.affine, out / files["brain"], "SynthIXI brain mask")
    _save(subject.subcortical, subject.affine, out / files["subcortical"], "SynthIXI subcortical labels")
    brain_ml = label_volumes_ml(out / files["brain"], (1,))[1]
    structures = label_volumes_ml(out / files["subcortical"], tuple(range(1, len(SUBCORTICAL_LABELS))))
    zooms = nib.load(out / files["T1"]).header.get_zooms()[:3]
    row = {
        "subject": subject.name, "site": site, "age": f"{subject.age:.1f}", "sex": subject.sex,
        "spacing_x_mm": f"{zooms[0]:.4f}", "spacing_y_mm": f"{zooms[1]:.4f}", "spacing_z_mm": f"{zooms[2]:.4f}",
        "shape": "x".join(str(n) for n in subject.image.shape), "image": files["T1"],
        "brain_label": files["brain"], "subcortical_label": files["subcortical"], "brain_ml": f"{brain_ml:.4f}",
    }
    for label, ml in structures.items():
        row[f"{SUBCORTICAL_LABELS[label]}_ml"] = f"{ml:.4f}"
    return row


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
                    geometry: str = "default", workers: int | None = None, progress: bool = True) -> Path:
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
    sites = site_sequence(int(n_subjects), seed)
    seen = dict.fromkeys(SITES, 0)
    tasks = []
    for number, site in enumerate(sites, start=1):
        seen[site] += 1
        tasks.append((str(out), number, site, seen[site], int(seed), geometry))
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
    csv_path = out / "cohort.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
