"""What ``mrivol predict`` writes per scan and per run: the native mask NIfTI, the QC picture, the
``volumes.csv`` columns and rows, the per-scan JSON, the label table, and where each file goes in the flat and
the BIDS-derivatives layouts (:mod:`mrivol_monai.bids`). Every file is written atomically."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mrivol_monai.atomic_io import atomic_path, plain_name
from mrivol_monai.bids import DSEG_SUFFIX, derivative_stem
from mrivol_monai.errors import InputError
from mrivol_monai.volumes_csv import VolumesTable

__all__ = ["LAYOUTS", "MASK_SUFFIX", "MASK_SUFFIXES", "PREDICT_COLUMNS", "QC_SUFFIX", "SCAN_JSON_SUFFIX",
           "append_csv_row", "label_table", "output_paths", "predict_columns", "qc_picture_of", "save_mask",
           "save_qc_png", "scan_json", "volume_columns", "volume_row"]

LAYOUTS = ("flat", "bids")  # flat: every file in --out; bids: BIDS-derivatives folders and names (mrivol_monai.bids)
MASK_SUFFIX = "_seg.nii.gz"
MASK_SUFFIXES = {"flat": MASK_SUFFIX, "bids": DSEG_SUFFIX}
QC_SUFFIX = "_qc.png"
SCAN_JSON_SUFFIX = "_volumes.json"
PREDICT_COLUMNS = ("subject", "session", "qc")  # after volume_columns in mrivol predict's volumes.csv


def volume_row(scan: str, source: str, mask_path: str, volumes: dict[str, float]) -> dict[str, str]:
    """One ``volumes.csv`` row (columns of :func:`volume_columns`), mL to 3 decimals."""
    return {"scan": scan, "input": source, "mask": mask_path, **{f"{k}_ml": f"{v:.3f}" for k, v in volumes.items()}}


def save_mask(mask: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (X, Y, Z) uint8 mask as NIfTI with ``affine`` (qform and sform), via a temp name + rename."""
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


# one distinct colour per class up to 10 (the two-stage mask has 10 foreground classes: 7 colours repeated, so
# thalamus_left and amygdala_right were both red)
QC_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2", "#64d2ff", "#ff9f0a", "#a2845e", "#ff2d92",
              "#5ac8a8")


def qc_title_volumes(volumes: Mapping[str, float]) -> str:
    """The volumes a QC picture's title names: hard volumes only (no ``*_soft``), and for left/right structures
    whose total is there, the total only (the two-stage task has 24 volumes; all of them ran off the picture)."""
    shown = []
    for name, value in volumes.items():
        base = name.rsplit("_", 1)[0]
        if name.endswith("_soft") or (name.endswith(("_left", "_right")) and base in volumes):
            continue
        shown.append(f"{name} {value:.1f} mL")
    return ", ".join(shown)


def save_qc_png(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
                class_names: Sequence[str], title: str = "") -> Path:
    """Three orthogonal slices (sagittal, coronal, axial through the mask's centre) of the (X, Y, Z) image in
    RAS display orientation with each structure's outline; PNG written via temp name + rename."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(image, ornt)
    lab = nib.orientations.apply_orientation(mask, ornt)
    zooms = np.empty(3)
    zooms[ornt[:, 0].astype(int)] = nib.affines.voxel_sizes(affine)
    fg = lab > 0
    total = np.count_nonzero(fg)
    # the mask's centroid from its three marginal profiles: np.argwhere on 10M voxels took 0.1 s
    centre = np.array([int(round(float(np.arange(n) @ fg.sum(axis=tuple(a for a in range(3) if a != i)))
                                 / total)) for i, n in enumerate(fg.shape)]) if total else np.array(lab.shape) // 2
    # display window from the three planes shown, not the whole volume (a full percentile took 0.1 s)
    planes = (img[centre[0]], img[:, centre[1]], img[:, :, centre[2]])
    lo, hi = np.percentile(np.concatenate([p.ravel() for p in planes]), [1, 99.5])
    fig = Figure(figsize=(10.5, 3.8), dpi=100)
    axes = fig.subplots(1, 3)
    views = (("sagittal", img[centre[0]], lab[centre[0]], zooms[2] / zooms[1]),
             ("coronal", img[:, centre[1]], lab[:, centre[1]], zooms[2] / zooms[0]),
             ("axial", img[:, :, centre[2]], lab[:, :, centre[2]], zooms[1] / zooms[0]))
    for ax, (name, plane, labels, aspect) in zip(axes, views):
        ax.imshow(plane.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        for c in range(1, len(class_names)):
            if (labels == c).any():
                ax.contour((labels == c).T.astype(float), levels=[0.5], colors=[QC_COLOURS[(c - 1) % len(QC_COLOURS)]],
                           linewidths=0.9)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=QC_COLOURS[(c - 1) % len(QC_COLOURS)], label=n)
               for c, n in enumerate(class_names) if c > 0]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(textwrap.fill(title, 150), fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def append_csv_row(path: str | os.PathLike, columns: Sequence[str], row: dict[str, object]) -> None:
    """Make ``row`` the one row of its scan (first column) in the CSV at ``path``: appended under a lock shared
    by all processes, or replacing the scan's earlier row (:class:`mrivol_monai.volumes_csv.VolumesTable`).
    A missing file is created with ``columns`` as header; a header that differs raises :class:`InputError`."""
    VolumesTable(path, columns).put(row)


def label_table(spec: Any) -> dict[str, dict[str, object]]:
    """``labels.json``: mask value -> its structure name (and FreeSurfer label for left/right classes)."""
    from mrivol_monai.deep_grey_box import FINE_CLASSES

    freesurfer = dict(FINE_CLASSES) if list(spec.class_names) == [n for n, _ in FINE_CLASSES] else {}
    return {str(i): {"name": name, **({"freesurfer_label": freesurfer[name]} if name in freesurfer else {})}
            for i, name in enumerate(spec.class_names)}


def volume_columns(class_names: Sequence[str]) -> list[str]:
    """``volumes.csv`` header: scan, input, mask, then ``<structure>_ml`` per foreground class."""
    return ["scan", "input", "mask"] + [f"{name}_ml" for name in class_names[1:]]


def predict_columns(class_names: Sequence[str]) -> list[str]:
    """``mrivol predict``'s ``volumes.csv`` header: :func:`volume_columns`, then subject, session (BIDS inputs;
    empty otherwise) and qc (``pass`` or the reasons, :mod:`mrivol_monai.scan_qc`)."""
    return volume_columns(class_names) + list(PREDICT_COLUMNS)


def output_paths(out: str | os.PathLike, item: Mapping[str, str], layout: str = "flat") -> dict[str, Path]:
    """Where one scan's files go: ``mask``, ``qc`` (PNG) and ``json`` (its ``volumes.csv`` row).

    ``flat``: ``out/<scan>_seg.nii.gz``, ``<scan>_qc.png``, ``<scan>_volumes.json``. ``bids``:
    ``out/sub-X/[ses-Y/]anat/<scan>_space-orig_dseg.nii.gz`` with ``<scan>_qc.png`` and the mask's sidecar
    ``<scan>_space-orig_dseg.json`` beside it (:func:`mrivol_monai.bids.derivative_stem`)."""
    if layout not in LAYOUTS:
        raise InputError(None, f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "bids":
        stem = derivative_stem(out, item["scan"], item.get("subject", ""), item.get("session", ""))
        return {"mask": Path(f"{stem}{DSEG_SUFFIX}"), "qc": Path(f"{stem}{QC_SUFFIX}"),
                "json": Path(f"{stem}{DSEG_SUFFIX[:-len('.nii.gz')]}.json")}
    stem = Path(out) / plain_name(item["scan"])
    return {"mask": Path(f"{stem}{MASK_SUFFIX}"), "qc": Path(f"{stem}{QC_SUFFIX}"),
            "json": Path(f"{stem}{SCAN_JSON_SUFFIX}")}


def qc_picture_of(mask_path: str) -> str:
    """The QC PNG beside a mask written by :func:`predict` (either layout)."""
    for suffix in MASK_SUFFIXES.values():
        if mask_path.endswith(suffix):
            return mask_path[: -len(suffix)] + QC_SUFFIX
    return ""


def scan_json(row: Mapping[str, str]) -> str:
    """The per-scan JSON: the ``volumes.csv`` row with its ``*_ml`` values as numbers (the same numbers)."""
    return json.dumps({k: float(v) if k.endswith("_ml") and v != "" else v for k, v in row.items()}, indent=2) + "\n"
