"""Which files and folders are scans: NIfTI files, DICOM series folders, BIDS datasets; label maps and masks
left out of folders (by name or by content); scan ids unique per run; the series of a DICOM folder.

``mrivol predict`` (:func:`mrivol_monai.predict.predict`) segments what :func:`discover_scans` finds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrivol_monai.bids import bids_t1w_scans, enclosing_bids_root, is_bids_root
from mrivol_monai.data.nifti_files import NIFTI_SUFFIXES
from mrivol_monai.data.nifti_reader import read_nifti

__all__ = ["LABEL_NAME_PARTS", "MAX_LABEL_VALUES", "dicom_series", "discover_scans", "find_scans",
           "label_file_reason", "scan_id", "skipped_line"]


def is_nifti(path: Path) -> bool:
    """True for a ``.nii`` / ``.nii.gz`` file name."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def scan_id(path: Path) -> str:
    """A scan's id: its file name without the NIfTI suffix (a folder's name as it is)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# name parts (split at _ - . +) that mark a label map or mask, not a scan: our own *_seg output, FreeSurfer
# aseg / aparc+aseg, BIDS dseg / probseg / *_mask, *_label*, SynthSeg's *_synthseg
LABEL_NAME_PARTS = ("seg", "aseg", "aparc", "dseg", "probseg", "mask", "brainmask", "labels", "labelmap")
# an integer image with at most this many distinct values (in a 1-in-27 voxel sample) is a label map: the 20
# SynthSeg maps hold 53-54 labels, a T1 scan hundreds of grey levels
MAX_LABEL_VALUES = 128


def label_file_reason(path: str | os.PathLike, read_content: bool = True) -> str | None:
    """Why the NIfTI file at ``path`` looks like a label map or mask rather than a scan (``"name"`` or
    ``"integer image with N values"``), or None. Unreadable files are not judged here (None): they fail as
    a scan later, with their own error line."""
    parts = [t for t in re.split(r"[_\-.+]", scan_id(Path(path)).lower()) if t]
    if any(t in LABEL_NAME_PARTS or t.startswith("label") or t.endswith("seg") for t in parts):
        return "name"
    if not read_content:
        return None
    try:
        image, _ = read_nifti(path)
    except Exception:  # noqa: BLE001 -- unreadable: not our call to make here, predict reports it
        return None
    if image.dtype.kind not in "iub" or image.ndim < 3:
        return None
    values = np.unique(np.asarray(image[::3, ::3, ::3]))
    return f"integer image with {values.size} values" if values.size <= MAX_LABEL_VALUES else None


def discover_scans(inputs: Sequence[str | os.PathLike] | str | os.PathLike
                   ) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """:func:`find_scans`, plus the files it left out of folders: ``[(path, reason), ...]``."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[dict[str, str]] = []  # {"image": path} or a BIDS scan's {"image", "scan", "subject", "session"}
    skipped: list[tuple[str, str]] = []

    def expand(path: Path) -> None:
        if not path.is_dir():
            found.append({"image": str(path)})
            return
        if is_bids_root(path):
            bids = bids_t1w_scans(path)
            found.extend(bids or [{"image": str(path), "error": "BIDS dataset without any "
                                   "sub-*/[ses-*/]anat/*_T1w.nii[.gz] file"}])
            return
        root = enclosing_bids_root(path)
        if root is not None:  # a subject, session or anat folder of a BIDS dataset: its T1w scans only
            inside = [s for s in bids_t1w_scans(root) if Path(s["image"]).absolute().is_relative_to(path.absolute())]
            found.extend(inside or [{"image": str(path), "error": f"no *_T1w.nii[.gz] scan in this folder of the "
                                                                  f"BIDS dataset {root}"}])
            return
        entries = sorted(path.iterdir())
        niftis = [p for p in entries if p.is_file() and is_nifti(p)]
        if niftis:
            for nifti in niftis:
                reason = label_file_reason(nifti)
                if reason:
                    skipped.append((str(nifti), reason))
                else:
                    found.append({"image": str(nifti)})
        elif any(p.is_file() for p in entries) or not entries:
            found.append({"image": str(path)})  # a DICOM series (or an empty folder, reported when read)
        else:
            for sub in entries:
                if sub.is_dir():
                    expand(sub)

    for item in inputs:
        expand(Path(item))
    scans, seen = [], {}
    for item in found:
        base = item.get("scan") or scan_id(Path(item["image"]))
        seen[base] = seen.get(base, 0) + 1
        scans.append({**item, "scan": base if seen[base] == 1 else f"{base}-{seen[base]}"})
    return scans, skipped


def find_scans(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[dict[str, str]]:
    """Expand INPUT arguments into ``[{"image": path, "scan": id}, ...]`` in argument order.

    A file is one scan (whatever its name; unreadable files fail later, one by one). A BIDS dataset root
    (:func:`mrivol_monai.bids.is_bids_root`) contributes its ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` files, with
    ``subject`` and ``session`` entries and the file name without ``_T1w`` as ``scan``
    (:func:`mrivol_monai.bids.bids_t1w_scans`; a BIDS root without such files gives one item with an ``error``);
    so does a ``sub-*``, session or ``anat`` folder of a BIDS dataset, with the T1w scans inside it.
    Any other folder contributes its NIfTI files (sorted) except label maps and masks
    (:func:`label_file_reason`: by name, or integer images with few values; :func:`discover_scans` lists them);
    a folder with no NIfTI files but with other files is one DICOM series; a folder holding only sub-folders is
    expanded recursively. Missing paths are kept, so they fail as a scan. ``scan`` ids (file stem or folder
    name) are made unique with a ``-2``, ``-3`` suffix.
    """
    return discover_scans(inputs)[0]


def skipped_line(skipped: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """One line saying which folder files were not segmented and why (the first ``shown`` of each reason)."""
    by_name = [Path(p).name for p, r in skipped if r == "name"]
    by_content = [Path(p).name for p, r in skipped if r != "name"]
    parts = []
    for what, names in (("by name", by_name), (f"by content: integer images with <= {MAX_LABEL_VALUES} values",
                                                   by_content)):
        if names:
            more = f", ... {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {what} ({', '.join(names[:shown])}{more})")
    return f"skipped {len(skipped)} label/mask files in the input folders: " + "; ".join(parts)


def dicom_series(folder: str | os.PathLike) -> list[tuple[str, str, int]]:
    """``(series id, description, number of files)`` of each DICOM series in ``folder``, ids as MONAI's
    ``ITKReader`` names them (its ``series_name``): SeriesInstanceUID plus ITK's series details."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)  # the settings of MONAI's ITKReader, so the ids are the ones it takes
    names.AddSeriesRestriction("0008|0021")
    names.SetDirectory(str(folder))
    found = []
    for uid in names.GetSeriesUIDs():
        files = names.GetFileNames(uid)
        description = ""
        try:
            reader = itk.GDCMImageIO.New()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            meta = reader.GetMetaDataDictionary()
            description = str(meta["0008|103e"]).strip() if meta.HasKey("0008|103e") else ""
        except Exception:  # a description is only a help for choosing; the id is what counts
            pass
        found.append((str(uid), description, len(files)))
    return found
