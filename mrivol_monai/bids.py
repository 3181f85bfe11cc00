"""BIDS in and out: find the T1w scans of a BIDS dataset, name BIDS-derivatives outputs.

In: a BIDS dataset root holds ``sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz]``; the subject and session come from
the file name's ``sub-``/``ses-`` entities (BIDS 1.9, "Filename structure"). The ``derivatives/`` and
``sourcedata/`` folders of a dataset are not searched (only ``sub-*`` folders at the root are).

Out (``mrivol predict --layout bids``): the derivatives layout of BIDS 1.9 ("Derivatives", "Segmentations"):
``sub-X/[ses-Y/]anat/sub-X[_ses-Y][_acq-..][_run-..]_space-orig_dseg.nii.gz`` (the input's grid and affine),
beside it the per-scan JSON and QC picture, and at the root ``dseg.tsv`` (``index``, ``name`` of each mask value,
inherited by every ``*_dseg`` file) and ``dataset_description.json`` (``DatasetType`` ``derivative``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from mrivol_monai.atomic_io import plain_name, write_atomic

__all__ = [
    "BIDS_VERSION",
    "DSEG_SUFFIX",
    "bids_entities",
    "bids_t1w_scans",
    "dataset_description",
    "derivative_stem",
    "dseg_tsv",
    "enclosing_bids_root",
    "is_bids_root",
]

BIDS_VERSION = "1.9.0"
T1W_SUFFIXES = ("_T1w.nii.gz", "_T1w.nii")
DSEG_SUFFIX = "_space-orig_dseg.nii.gz"  # native grid of the input: "orig" as in the naming
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


def bids_entities(name: str) -> dict[str, str]:
    """``sub-01_ses-a_run-2_T1w.nii.gz`` -> ``{"sub": "01", "ses": "a", "run": "2"}`` (key-value parts only)."""
    stem = name.split(".", 1)[0]
    return {m.group(1): m.group(2) for part in stem.split("_") if (m := _ENTITY.match(part))}


def _t1w_files(anat: Path) -> list[Path]:
    return sorted(p for p in anat.iterdir() if p.is_file() and p.name.endswith(T1W_SUFFIXES)) if anat.is_dir() else []


def _anat_folders(root: Path) -> list[Path]:
    """``sub-*/anat`` and ``sub-*/ses-*/anat`` under ``root``, sorted."""
    folders = []
    for sub in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        folders.append(sub / "anat")
        folders.extend(ses / "anat" for ses in sorted(p for p in sub.glob("ses-*") if p.is_dir()))
    return [f for f in folders if f.is_dir()]


def is_bids_root(folder: str | os.PathLike) -> bool:
    """True if ``folder`` has a ``dataset_description.json`` and ``sub-*`` folders, or any
    ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` file."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / "dataset_description.json").is_file() and any(p.is_dir() for p in folder.glob("sub-*")):
        return True
    return any(_t1w_files(anat) for anat in _anat_folders(folder))


def enclosing_bids_root(folder: str | os.PathLike) -> Path | None:
    """The BIDS dataset root that ``folder`` (a ``sub-*``, ``sub-*/ses-*`` or ``.../anat`` folder) belongs to,
    else None."""
    folder = Path(folder).absolute()
    for depth, parent in enumerate(folder.parents):
        if depth >= 3:
            return None
        if folder.relative_to(parent).parts[0].startswith("sub-") and is_bids_root(parent):
            return parent
    return None


def bids_t1w_scans(root: str | os.PathLike) -> list[dict[str, str]]:
    """Every T1w scan of the BIDS dataset at ``root`` as ``{"image", "scan", "subject", "session"}`` (session
    ``""`` without ``ses-`` folders), sorted by subject, session, name. ``scan`` is the file name without
    ``_T1w.nii[.gz]`` (``sub-01_ses-a``, ``sub-01_ses-a_run-2``): unique within a dataset. A file whose
    ``sub-``/``ses-`` entities disagree with its folders is left out (it is not valid BIDS)."""
    root = Path(root)
    found = []
    for anat in _anat_folders(root):
        subject = anat.parts[-2][4:] if anat.parent.name.startswith("sub-") else anat.parts[-3][4:]
        session = anat.parent.name[4:] if anat.parent.name.startswith("ses-") else ""
        for path in _t1w_files(anat):
            entities = bids_entities(path.name)
            if entities.get("sub") != subject or entities.get("ses", "") != session:
                continue
            scan = next(path.name[: -len(s)] for s in T1W_SUFFIXES if path.name.endswith(s))
            found.append({"image": str(path), "scan": scan, "subject": subject, "session": session})
    return found


def derivative_stem(out: str | os.PathLike, scan: str, subject: str = "", session: str = "") -> Path:
    """Where a scan's derivatives go, without suffix: ``out/sub-X/[ses-Y/]anat/<scan>`` for a BIDS scan; a scan
    without subject (a plain file given to ``--layout bids``) goes to ``out/<scan>``."""
    out, scan = Path(out), plain_name(scan)
    if not subject:
        return out / scan
    folder = out / f"sub-{plain_name(subject)}"
    if session:
        folder = folder / f"ses-{plain_name(session)}"
    return folder / "anat" / scan


def dseg_tsv(class_names: Sequence[str]) -> str:
    """``dseg.tsv`` text: a header ``index<TAB>name`` and one line per mask value."""
    return "index\tname\n" + "".join(f"{i}\t{name}\n" for i, name in enumerate(class_names))


def dataset_description(name: str, version: str, description: str = "") -> dict[str, object]:
    """``dataset_description.json`` of a BIDS derivative dataset generated by ``name`` ``version``."""
    generated = {"Name": name, "Version": version}
    if description:
        generated["Description"] = description
    return {"Name": f"{name} segmentations and volumes", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [generated]}


def write_derivative_metadata(out: str | os.PathLike, class_names: Sequence[str], name: str, version: str,
                              description: str = "") -> None:
    """Write ``dseg.tsv`` and ``dataset_description.json`` at the root of the derivatives folder ``out``."""
    out = Path(out)
    write_atomic(out / "dseg.tsv", dseg_tsv(class_names))
    write_atomic(out / "dataset_description.json",
                 json.dumps(dataset_description(name, version, description), indent=2) + "\n")
