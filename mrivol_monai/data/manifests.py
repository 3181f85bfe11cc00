"""Data manifests with the paper's split: MONAI datalist JSON built from IXI-style NIfTI file names.

Sites other than the test site (Guys + HH by default) are shuffled with an explicit seed and split
0.85 / 0.15 into ``training`` / ``validation``; every subject of the test site (IOP by default)
becomes ``test``, simulating a new hospital at test time.

Two file layouts are understood:

* IXI / SynthIXI names in one folder (or images and labels in two folders):
  ``IXI002-Guys-0828-T1.nii.gz`` with ``IXI002-Guys-0828-brain.nii.gz`` or
  ``IXI002-Guys-0828-subcortical.nii.gz`` (the image stem with ``-T1`` replaced by the task).
* IXITiny: ``image/IXI002-Guys-0828_image.nii.gz`` with ``label/IXI002-Guys-0828_label.nii.gz``.

CLI: ``python -m mrivol_monai.manifests build --images DIR [--labels DIR] --task brain --out FILE.json``
and ``python -m mrivol_monai.manifests remap --labels DIR --label-map freesurfer --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist

from mrivol_monai.deep_grey_box import CLASS_NAMES as _FINE_CLASS_NAMES
from mrivol_monai.atomic_io import atomic_path, write_atomic
from mrivol_monai.data.ixi import SITES
from mrivol_monai.data.nifti_files import NIFTI_SUFFIXES
from mrivol_monai.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "SITES",
    "SPLITS",
    "TASK_LABELS",
    "LABEL_MAPS",
    "parse_subject",
    "find_pairs",
    "split_subjects",
    "build_manifest",
    "write_manifest",
    "load_manifest",
    "format_counts",
    "remap_labels",
    "main",
]

SPLITS: tuple[str, ...] = ("training", "validation", "test")
TASK_LABELS: dict[str, dict[str, str]] = {
    "brain": {"0": "background", "1": "brain"},
    "subcortical": {"0": "background", "1": "thalamus", "2": "caudate", "3": "putamen", "4": "amygdala"},
    # stage 2 of the subcortical task: left/right structures in the 1 mm deep grey matter box
    "subcortical_fine": {str(i): name for i, name in enumerate(_FINE_CLASS_NAMES)},
}
# Named label maps for `remap`: source label id -> task label id (left and right merged).
LABEL_MAPS: dict[str, dict[int, int]] = {
    # FreeSurfer aseg ids, as written by FreeSurfer, FastSurfer and SynthSeg.
    "freesurfer": {10: 1, 49: 1, 11: 2, 50: 2, 12: 3, 51: 3, 18: 4, 54: 4},
}

IMAGE_KINDS = ("T1", "image")
_IXI_NAME = re.compile(r"^(?P<subject>(?P<person>[A-Za-z]+\d+)-(?P<site>[A-Za-z]+)-\d+)-(?P<kind>T1|brain|subcortical|aseg)$")
_TINY_NAME = re.compile(r"^(?P<subject>(?P<person>[A-Za-z]+\d+)-(?P<site>[A-Za-z]+)-\d+)_(?P<kind>image|label)$")
_SUBJECT_IN_PATH = re.compile(r"(?P<subject>[A-Za-z]+\d+-(?:Guys|HH|IOP)-\d+)")


def _nifti_stem(name: str) -> str | None:
    """File name without its NIfTI suffix, or None if it is not a NIfTI file."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _parse(filename: str | os.PathLike) -> tuple[str, str, str, str]:
    """(subject_id, site, kind, person) of an IXI-style or IXITiny file name; raises InputError."""
    name = Path(filename).name
    stem = _nifti_stem(name)
    if stem is None:
        raise InputError(filename, "not a NIfTI file (.nii or .nii.gz)")
    match = _IXI_NAME.match(stem) or _TINY_NAME.match(stem)
    if match is None:
        raise InputError(
            filename,
            "name not understood; expected e.g. IXI002-Guys-0828-T1.nii.gz, IXI002-Guys-0828-brain.nii.gz, "
            "IXI002-Guys-0828-subcortical.nii.gz or IXI002-Guys-0828_image.nii.gz / _label.nii.gz",
        )
    if match["site"] not in SITES:
        raise InputError(filename, f"unknown site {match['site']!r}; expected one of {', '.join(SITES)}")
    return match["subject"], match["site"], match["kind"], match["person"]


def parse_subject(filename: str | os.PathLike) -> tuple[str, str, str]:
    """Parse ``(subject_id, site, kind)`` from a file name (directories are ignored).

    ``IXI002-Guys-0828-T1.nii.gz`` -> ``("IXI002-Guys-0828", "Guys", "T1")``;
    ``SYN0001-HH-0003-subcortical.nii.gz`` -> ``("SYN0001-HH-0003", "HH", "subcortical")``;
    ``label/IXI002-Guys-0828_label.nii.gz`` -> ``("IXI002-Guys-0828", "Guys", "label")``.
    ``kind`` is one of ``T1``, ``brain``, ``subcortical`` (IXI / SynthIXI) or ``image``, ``label``
    (IXITiny). Raises InputError naming the file for other names and for sites other than Guys, HH, IOP.
    """
    subject, site, kind, _ = _parse(filename)
    return subject, site, kind


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(folder, "not a directory")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _nifti_stem(p.name) is not None)


def _resolve_layout(images: Path, labels: Path | None) -> tuple[Path, Path]:
    """IXITiny root given as --images without --labels -> its image/ and label/ subfolders."""
    if labels is None:
        tiny_images, tiny_labels = images / "image", images / "label"
        if tiny_images.is_dir() and tiny_labels.is_dir() and not _nifti_files(images):
            return tiny_images, tiny_labels
        return images, images
    return images, labels


def find_pairs(images: str | os.PathLike, labels: str | os.PathLike | None = None, task: str = "brain") -> list[dict[str, str]]:
    """Pair image and label files by subject id; no file is opened.

    Images are ``*-T1.nii[.gz]`` or ``*_image.nii[.gz]``; labels are ``*-<task>.nii[.gz]`` or
    ``*_label.nii[.gz]``. Label files of the other task are ignored. Returns one dict per subject,
    sorted by subject: ``{"image": abs path, "label": abs path, "subject": id, "site": site}``.
    Raises InputError (naming the file) for an empty folder, an unknown site or name, an image without
    label, a label without image, or a subject (or IXI person number) that appears twice.
    """
    if task not in TASK_LABELS:
        raise InputError(None, f"unknown task {task!r}; expected one of {', '.join(TASK_LABELS)}")
    images_dir, labels_dir = _resolve_layout(Path(images).absolute(), None if labels is None else Path(labels).absolute())
    label_kinds = (task, "label")
    found: dict[str, dict[str, dict[str, Any]]] = {"image": {}, "label": {}}
    person_file: dict[str, Path] = {}
    folders = [(images_dir, ("image", "label") if labels_dir == images_dir else ("image",))]
    if labels_dir != images_dir:
        folders.append((labels_dir, ("label",)))
    for folder, roles in folders:
        for path in _nifti_files(folder):
            subject, site, kind, person = _parse(path)
            role = "image" if kind in IMAGE_KINDS else "label" if kind in label_kinds else None
            if role is None or role not in roles:
                continue  # e.g. subcortical labels next to brain masks, or T1s in the label folder
            if subject in found[role]:
                raise InputError(path, f"duplicate subject {subject}: also {found[role][subject]['path']}")
            if role == "image":
                if person in person_file:
                    raise InputError(path, f"duplicate subject {person}: also {person_file[person]}")
                person_file[person] = path
            found[role][subject] = {"path": path, "site": site}
    if not found["image"]:
        raise InputError(images_dir, "no images found (expected *-T1.nii.gz, or *_image.nii.gz in image/)")
    for subject, image in found["image"].items():
        if subject not in found["label"]:
            raise InputError(image["path"], f"image without label: no {subject}-{task}.nii.gz or {subject}_label.nii.gz in {labels_dir}")
    for subject, label in found["label"].items():
        if subject not in found["image"]:
            raise InputError(label["path"], f"label without image: no {subject}-T1.nii.gz or {subject}_image.nii.gz in {images_dir}")
    return [
        {"image": str(found["image"][s]["path"]), "label": str(found["label"][s]["path"]), "subject": s, "site": found["image"][s]["site"]}
        for s in sorted(found["image"])
    ]


def _open_volume(path: str | os.PathLike, read_data: bool) -> tuple[nib.spatialimages.SpatialImage, np.ndarray | None]:
    """Open a NIfTI with nibabel, require a 3D grid; optionally read all voxels (catches truncated files)."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj) if read_data else None
    except Exception as err:  # nibabel/gzip/zlib raise many types for corrupt files; re-raise with the name
        raise InputError(path, f"cannot read image: {type(err).__name__}: {err}".splitlines()[0]) from err
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
        data = None if data is None else data[..., 0]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D image, got shape {tuple(img.shape)}")
    return img, data


def check_pair(entry: Mapping[str, str], task: str, read_data: bool) -> None:
    """Image and label open, are 3D, share shape and grid; the image has a usable affine and (``read_data``)
    only finite voxels as stored in the file; label values are task ids."""
    from mrivol_monai.data.nifti_reader import checked_affine

    image, image_data = _open_volume(entry["image"], read_data)
    checked_affine(image, entry["image"])
    if image_data is not None and not np.all(np.isfinite(image_data)):
        # checked here, on what the file holds: the ITK reader of train.json turns NaN/inf into 0 on loading
        raise InputError(entry["image"], "image contains NaN or infinite values")
    label, label_data = _open_volume(entry["label"], read_data)
    if image.shape[:3] != label.shape[:3]:
        raise InputError(entry["label"], f"label shape {tuple(label.shape[:3])} differs from image shape {tuple(image.shape[:3])} of {entry['image']}")
    if not np.allclose(image.affine, label.affine, atol=1e-2):
        raise InputError(entry["label"], f"label grid (affine) differs from that of {entry['image']}")
    if label_data is not None:
        values = np.unique(label_data)
        allowed = np.arange(len(TASK_LABELS[task]))
        bad = values[~np.isin(values, allowed)]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise InputError(entry["label"], f"label values {shown} are not {task} ids 0..{allowed[-1]} (map them with `remap --label-map`)")


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5 + 1e-9))


def _check_split_options(test_site: str, val_fraction: float) -> None:
    if test_site not in SITES:
        raise InputError(None, f"unknown test site {test_site!r}; expected one of {', '.join(SITES)}")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(None, f"val_fraction must be between 0 and 1, got {val_fraction}")


def split_subjects(subjects: Sequence[str], sites: Sequence[str], seed: int = 0, test_site: str = "IOP", val_fraction: float = 0.15) -> dict[str, list[str]]:
    """The paper's split of subject ids into ``training`` / ``validation`` / ``test``.

    Subjects of ``test_site`` -> ``test`` (sorted). The others, sorted by id, are permuted with
    ``numpy.random.default_rng(seed)``; the first ``round((1 - val_fraction) * n)`` (half up) go to
    ``training`` and the rest to ``validation``, keeping at least one subject in each of the two.
    """
    _check_split_options(test_site, val_fraction)
    test = sorted(s for s, site in zip(subjects, sites) if site == test_site)
    pool = sorted(s for s, site in zip(subjects, sites) if site != test_site)
    order = np.random.default_rng(seed).permutation(len(pool))
    shuffled = [pool[i] for i in order]
    n_train = min(max(_round_half_up((1.0 - val_fraction) * len(pool)), 1), len(pool) - 1)
    return {"training": shuffled[:n_train], "validation": shuffled[n_train:], "test": test}


def _cohort_split(images: Path, subjects: Sequence[str], test_site: str) -> dict[str, str] | None:
    """Subject -> split as recorded in a SynthIXI ``cohort.csv`` beside the images, or None if there is none.

    A SynthIXI cohort draws each subject's anatomy from its split's label maps, so re-splitting it with
    another seed would put test anatomy into training: the recorded split wins over ``seed``.
    """
    import csv

    path = images / "cohort.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = {row.get("subject"): row for row in csv.DictReader(handle)}
    if not all(s in rows and rows[s].get("split") in SPLITS for s in subjects):
        return None
    if any((rows[s]["split"] == "test") != (rows[s].get("site") == test_site) for s in subjects):
        logger.warning("%s: its recorded test split is not the %s site; splitting by site and seed instead, so "
                       "test anatomy may also be in training", path, test_site)
        return None
    return {s: rows[s]["split"] for s in subjects}


def build_manifest(
    images: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    task: str = "brain",
    seed: int = 0,
    test_site: str = "IOP",
    val_fraction: float = 0.15,
    read_data: bool = True,
) -> dict[str, Any]:
    """Pair, check and split a folder of IXI-style volumes into a MONAI datalist dict.

    Every image and label is opened with nibabel (all voxels read unless ``read_data`` is False,
    which then skips the truncation and label-value checks): each must be 3D, image and label must
    have the same shape and affine, label values must be the task's ids. ``data_root`` in the result
    is absolute (``write_manifest`` writes it relative to the manifest); entry paths are relative to it.
    Raises InputError naming the offending file.
    """
    _check_split_options(test_site, val_fraction)
    pairs = find_pairs(images, labels, task)
    for entry in pairs:
        check_pair(entry, task, read_data)
    root = Path(os.path.commonpath([str(Path(p[k]).parent) for p in pairs for k in ("image", "label")]))
    by_subject = {p["subject"]: p for p in pairs}
    subjects = list(by_subject)
    n_test = sum(p["site"] == test_site for p in pairs)
    if len(pairs) - n_test < 2:
        raise InputError(Path(images), f"need at least 2 subjects from sites other than {test_site} for training and validation, found {len(pairs) - n_test}")
    if n_test == 0:
        raise InputError(Path(images), f"no subjects from test site {test_site}")
    split = split_subjects(subjects, [by_subject[s]["site"] for s in subjects], seed, test_site, val_fraction)
    rule = f"{test_site} held out as test site, other sites split {1 - val_fraction:.2f}/{val_fraction:.2f}"
    recorded = _cohort_split(Path(images), subjects, test_site)
    if recorded is not None:
        order = [s for name in SPLITS for s in split[name]]
        split = {name: [s for s in order if recorded[s] == name] for name in SPLITS}
        rule = f"split by anatomy as the cohort was rendered (cohort.csv 'split' column; {test_site} = test)"
    manifest: dict[str, Any] = {
        "description": f"IXI-style {task} segmentation; {rule}",
        "data_root": str(root),
        "task": task,
        "labels": dict(TASK_LABELS[task]),
        "seed": int(seed),
        "test_site": test_site,
        "val_fraction": float(val_fraction),
    }
    counts: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        entries = [
            {
                "image": Path(by_subject[s]["image"]).relative_to(root).as_posix(),
                "label": Path(by_subject[s]["label"]).relative_to(root).as_posix(),
                "subject": s,
                "site": by_subject[s]["site"],
            }
            for s in split[name]
        ]
        manifest[name] = entries
        counts[name] = {site: sum(e["site"] == site for e in entries) for site in SITES}
    manifest["counts"] = counts
    return manifest


def _check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be written (a directory, or its folder missing / read-only)."""
    if out.is_dir():
        raise InputError(out, "is a directory, expected a .json file path")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot write here ({parent} is not a writable directory)")


def write_manifest(manifest: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Write ``manifest`` as JSON to ``out`` atomically (temp file in the same folder, then rename).

    ``data_root`` is written relative to the manifest's folder (absolute if that is impossible, e.g.
    another Windows drive). Returns the written path; on error nothing is left behind.
    """
    out = Path(out).absolute()
    _check_writable(out)
    content = dict(manifest)
    root = Path(content["data_root"])
    if root.is_absolute():
        try:
            content["data_root"] = Path(os.path.relpath(root, out.parent)).as_posix()
        except ValueError:
            content["data_root"] = root.as_posix()
    try:
        write_atomic(out, json.dumps(content, indent=2) + "\n")
    except OSError as err:
        raise InputError(out, f"cannot write manifest: {err.strerror or err}") from err
    return out


def load_manifest(path: str | os.PathLike, split: str, data_root: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Entries of one split with absolute ``image`` / ``label`` paths, checked to exist.

    ``data_root`` defaults to the manifest's own ``data_root``, taken relative to the manifest's
    folder. Raises InputError naming the manifest (missing, not JSON, no such split, empty split,
    entry without image/label) or the missing data file.
    """
    path = Path(path)
    if split not in SPLITS:
        raise InputError(path, f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    try:
        content = json.loads(path.read_text())
    except OSError as err:
        raise InputError(path, f"cannot read manifest: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise InputError(path, "not a datalist (expected a JSON object with training/validation/test lists)")
    entries = content.get(split)
    if not isinstance(entries, list) or not entries:
        raise InputError(path, f"split {split!r} is missing or empty")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise InputError(path, f"{split}[{i}] must be an object with 'image' and 'label' paths")
    if data_root is None:
        data_root = path.parent / content.get("data_root", ".")
    resolved = load_decathlon_datalist(path, is_segmentation=True, data_list_key=split, base_dir=Path(data_root).absolute())
    for entry in resolved:
        for key in ("image", "label"):
            entry[key] = os.path.normpath(entry[key])
            if not os.path.isfile(entry[key]):
                raise InputError(entry[key], f"missing {key} file listed in {path} ({split}, subject {entry.get('subject', '?')})")
    return resolved


def format_counts(manifest: Mapping[str, Any]) -> str:
    """Table of subjects per split (rows) and site (columns) with totals."""
    counts = manifest["counts"]
    header = f"{'split':<12}" + "".join(f"{site:>7}" for site in SITES) + f"{'total':>7}"
    lines = [header]
    for name in SPLITS:
        row = [counts[name][site] for site in SITES]
        lines.append(f"{name:<12}" + "".join(f"{n:>7d}" for n in row) + f"{sum(row):>7d}")
    totals = [sum(counts[name][site] for name in SPLITS) for site in SITES]
    lines.append(f"{'total':<12}" + "".join(f"{n:>7d}" for n in totals) + f"{sum(totals):>7d}")
    return "\n".join(lines)


def _read_label_map(spec: str) -> dict[int, int]:
    """A named map (``freesurfer``) or a JSON file ``{"source id": task id, ...}``."""
    if spec in LABEL_MAPS:
        return dict(LABEL_MAPS[spec])
    try:
        raw = json.loads(Path(spec).read_text())
        return {int(k): int(v) for k, v in raw.items()}
    except OSError as err:
        raise InputError(spec, f"not a named label map ({', '.join(LABEL_MAPS)}) and not readable: {err.strerror or err}") from err
    except (ValueError, AttributeError) as err:
        raise InputError(spec, 'label map must be a JSON object {"source id": target id}') from err


def remap_labels(
    labels: str | os.PathLike,
    out: str | os.PathLike,
    label_map: str | Mapping[int, int] = "freesurfer",
    task: str = "subcortical",
    images: str | os.PathLike | None = None,
    pattern: str = "*",
) -> list[Path]:
    """Convert segmentations (e.g. FreeSurfer/FastSurfer/SynthSeg aseg) into ``<subject>-<task>.nii.gz`` files.

    Every ``.nii``/``.nii.gz``/``.mgz`` below ``labels`` matching the glob ``pattern`` (e.g.
    ``aseg.mgz``, ``*_synthseg.nii.gz``) whose path contains an IXI subject id (``IXI002-Guys-0828``,
    in the file name or a parent folder such as FastSurfer's ``<subject>/mri/aseg.mgz``) is read; ids in ``label_map`` become the mapped task id, all others 0.
    With ``images`` (folder of ``<subject>-T1.nii.gz`` or ``<subject>_image.nii.gz``), each label is
    resampled (nearest neighbour) onto its T1 grid, as the manifests require. Files are written
    uint8 via temp name + rename. Returns the written paths, sorted.
    """
    from nibabel.processing import resample_from_to

    if task not in TASK_LABELS:
        raise InputError(None, f"unknown task {task!r}; expected one of {', '.join(TASK_LABELS)}")
    mapping = _read_label_map(label_map) if isinstance(label_map, str) else {int(k): int(v) for k, v in label_map.items()}
    if any(not 0 <= v < len(TASK_LABELS[task]) for v in mapping.values()):
        raise InputError(None, f"label map targets must be {task} ids 0..{len(TASK_LABELS[task]) - 1}")
    labels_dir, out_dir = Path(labels), Path(out)
    if not labels_dir.is_dir():
        raise InputError(labels_dir, "not a directory")
    sources: dict[str, Path] = {}
    for path in sorted(labels_dir.rglob(pattern)):
        if not path.is_file() or not (path.name.endswith(".mgz") or _nifti_stem(path.name) is not None):
            continue
        match = _SUBJECT_IN_PATH.search(path.relative_to(labels_dir).as_posix())
        if match is None:
            continue
        if match["subject"] in sources:
            raise InputError(path, f"duplicate subject {match['subject']}: also {sources[match['subject']]} (narrow with --pattern)")
        sources[match["subject"]] = path
    if not sources:
        raise InputError(labels_dir, f"no label volumes matching {pattern!r} with an IXI subject id (e.g. IXI002-Guys-0828) in their path")
    grids: dict[str, Path] = {}
    if images is not None:
        for path in _nifti_files(Path(images)):
            subject, _, kind, _ = _parse(path)
            if kind in IMAGE_KINDS:
                grids[subject] = path
    lut = np.zeros(max(mapping) + 1 if mapping else 1, dtype=np.uint8)
    for source_id, target_id in mapping.items():
        lut[source_id] = target_id
    jobs = []
    for subject, path in sources.items():
        if images is not None and subject not in grids:
            raise InputError(path, f"no T1 image for {subject} in {images} to resample onto")
        jobs.append((subject, path))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for subject, path in jobs:
        img, data = _open_volume(path, read_data=True)
        ids = np.rint(data).astype(np.int64)
        mapped = np.where((ids >= 0) & (ids < lut.size), lut[np.clip(ids, 0, lut.size - 1)], 0).astype(np.uint8)
        result = nib.Nifti1Image(mapped, img.affine)
        if subject in grids:
            target, _ = _open_volume(grids[subject], read_data=False)
            result = resample_from_to(result, (target.shape[:3], target.affine), order=0, mode="constant", cval=0)
            result = nib.Nifti1Image(np.asarray(result.dataobj).astype(np.uint8), target.affine)
        result.set_data_dtype(np.uint8)
        target_path = out_dir / f"{subject}-{task}.nii.gz"
        with atomic_path(target_path) as tmp:
            nib.save(result, str(tmp))
        written.append(target_path)
    return sorted(written)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mrivol_monai.manifests", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="pair, check and split IXI-style volumes into a datalist JSON")
    build.add_argument("--images", required=True, help="folder of *-T1.nii.gz (labels may sit alongside) or IXITiny image/ folder (or its parent)")
    build.add_argument("--labels", default=None, help="folder of *-<task>.nii.gz or IXITiny *_label.nii.gz (default: --images)")
    build.add_argument("--task", choices=sorted(TASK_LABELS), default="brain")
    build.add_argument("--out", required=True, help="manifest JSON to write")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--test-site", choices=SITES, default="IOP")
    build.add_argument("--val-fraction", type=float, default=0.15)
    build.add_argument("--header-only", action="store_true", help="read headers only (faster; skips truncation and label-value checks)")
    remap = sub.add_parser("remap", help="map segmentation ids (e.g. FreeSurfer aseg) to task ids as <subject>-<task>.nii.gz")
    remap.add_argument("--labels", required=True, help="folder searched recursively for .nii/.nii.gz/.mgz with an IXI id in the path")
    remap.add_argument("--label-map", default="freesurfer", help=f"named map ({', '.join(LABEL_MAPS)}) or JSON file {{\"source id\": task id}}")
    remap.add_argument("--task", choices=sorted(TASK_LABELS), default="subcortical")
    remap.add_argument("--pattern", default="*", help="glob for the label files, e.g. aseg.mgz or '*_synthseg.nii.gz' (default: all)")
    remap.add_argument("--images", default=None, help="T1 folder; labels are resampled onto each subject's T1 grid")
    remap.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (errors print one line to stderr and return 1)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            out = Path(args.out).absolute()
            _check_writable(out)
            manifest = build_manifest(args.images, args.labels, args.task, args.seed, args.test_site, args.val_fraction, read_data=not args.header_only)
            written = write_manifest(manifest, out)
            print(f"wrote {written} (task {args.task}, seed {args.seed}, test site {args.test_site})")
            print(format_counts(manifest))
        else:
            written_files = remap_labels(args.labels, args.out, args.label_map, args.task, args.images, args.pattern)
            print(f"wrote {len(written_files)} {args.task} label files to {Path(args.out).absolute()}")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
