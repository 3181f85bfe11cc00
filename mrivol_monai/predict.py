"""Segment new scans: NIfTI files or DICOM series -> native-space masks, volumes in mL, QC pictures.

Per scan (:meth:`Predictor.segment`): read (nibabel with ISA-L gunzip for NIfTI, ITK for DICOM series
folders) -> the training preprocessing on the image alone (depth-first orientation, head crop, resize to the
model's (D, H, W) grid, head z-score; :func:`preprocessing` is that chain in MONAI transforms) ->
``SliceInferer`` over the D slices -> softmax -> back through resize, crop and orientation onto the input's
own voxel grid -> argmax. Both directions run through :mod:`mrivol_monai.native_grid`, which does what
those MONAI transforms and ``Invertd`` do without whole-volume copies (tests check it against them).
Volumes are voxel counts of the native mask times the input's voxel volume. :func:`predict` runs that over
many scans (files, folders, DICOM series, BIDS datasets), writes ``<scan>_seg.nii.gz`` (the input's affine and
shape), ``<scan>_qc.png``, ``<scan>_volumes.json`` and one ``volumes.csv`` row per scan with its QC verdict
(:mod:`mrivol_monai.scan_qc`), or the same as BIDS derivatives (:mod:`mrivol_monai.bids`), keeps
``report.html`` current (:mod:`mrivol_monai.batch_report`), and reports bad inputs one line each without
stopping. It can take one shard of the scans (torchrun ranks, ``--shard K/N`` array jobs) and skips scans a
previous or parallel run already finished (a row and a mask), so any number of processes and re-runs leave one
row per scan (:mod:`mrivol_monai.volumes_csv`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ITKReader, MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
)
from tqdm import tqdm

from mrivol_monai import __version__
from mrivol_monai.atomic_io import atomic_path, plain_name, write_atomic
from mrivol_monai.batch_report import write_report
from mrivol_monai.bids import (
    DSEG_SUFFIX,
    bids_t1w_scans,
    derivative_stem,
    enclosing_bids_root,
    is_bids_root,
    write_derivative_metadata,
)
from mrivol_monai.data.nifti_reader import read_nifti
from mrivol_monai.distributed import shard as take_shard
from mrivol_monai.errors import InputError
from mrivol_monai import intervals
from mrivol_monai.intervals import soft_hard_gap
from mrivol_monai.native_grid import CROP_MARGIN, GridMap, channel_argmax, model_input
from mrivol_monai.networks import SliceSegmenter, fold_batch_norm
from mrivol_monai.scan_qc import qc_reasons, qc_verdict
from mrivol_monai.transforms import (
    CheckVolumed,
    HeadZScored,
    depth_axcodes,
    head_foreground,
    keep_largest_components,
    largest_component_labels,
)
from mrivol_monai.volumes_csv import VolumesTable
from mrivol_monai.weights import ModelSpec

__all__ = [
    "BACKENDS",
    "Predictor",
    "PredictReport",
    "Segmentation",
    "append_csv_row",
    "default_threads",
    "discover_scans",
    "find_scans",
    "label_file_reason",
    "model_line",
    "output_paths",
    "predict_columns",
    "channel_argmax",
    "check_field_of_view",
    "dicom_series",
    "preprocessing",
    "predict",
    "save_mask",
    "save_qc_png",
    "skipped_line",
    "summary_line",
    "volume_columns",
    "volume_row",
    "volumes_ml",
    "VolumesCSVd",
]

BACKENDS = ("torch", "onnx")
LAYOUTS = ("flat", "bids")  # flat: every file in --out; bids: BIDS-derivatives folders and names (mrivol_monai.bids)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIX = "_seg.nii.gz"
MASK_SUFFIXES = {"flat": MASK_SUFFIX, "bids": DSEG_SUFFIX}
QC_SUFFIX = "_qc.png"
SCAN_JSON_SUFFIX = "_volumes.json"
REPORT_WAIT = 3.0  # report.html waits this many times its last rewrite's duration before the next (see predict)
PREDICT_COLUMNS = ("subject", "session", "qc")  # after volume_columns in mrivol predict's volumes.csv
VOLUMES_CSV = "volumes.csv"
LABELS_JSON = "labels.json"
MIN_HEAD_VOXELS = 16  # per axis: fewer cannot show a head (an 8x8x8 volume, a single slab)
MIN_HEAD_MM = 20.0  # per axis, field of view in mm
SLICES_PER_CALL = 10  # peak RSS vs speed on an IXI-size scan: see benchmarks/inference_speed.py --slices-per-call


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _scan_id(path: Path) -> str:
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
    parts = [t for t in re.split(r"[_\-.+]", _scan_id(Path(path)).lower()) if t]
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
        niftis = [p for p in entries if p.is_file() and _is_nifti(p)]
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
        base = item.get("scan") or _scan_id(Path(item["image"]))
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
            io = itk.GDCMImageIO.New()
            io.SetFileName(files[0])
            io.ReadImageInformation()
            meta = io.GetMetaDataDictionary()
            description = str(meta["0008|103e"]).strip() if meta.HasKey("0008|103e") else ""
        except Exception:  # a description is only a help for choosing; the id is what counts
            pass
        found.append((str(uid), description, len(files)))
    return found


def check_field_of_view(shape: Sequence[int], affine: np.ndarray, path: str | os.PathLike) -> None:
    """:class:`InputError` unless every axis of the (X, Y, Z) ``shape`` has at least ``MIN_HEAD_VOXELS`` voxels
    and ``MIN_HEAD_MM`` mm: a smaller image cannot hold a head, and segmenting it gives 0 mL with no error."""
    if len(shape) != 3:
        return  # model_input reports the dimensionality
    sizes = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    extent = [n * z for n, z in zip(shape, sizes)]
    if min(shape) < MIN_HEAD_VOXELS or min(extent) < MIN_HEAD_MM:
        raise InputError(path, f"image of {'x'.join(map(str, shape))} voxels ({' x '.join(f'{e:.0f}' for e in extent)} mm) "
                               f"is too small to hold a head (at least {MIN_HEAD_VOXELS} voxels and {MIN_HEAD_MM:.0f} mm "
                               "along each axis); is this the whole-head T1?")


def preprocessing(spatial_size: Sequence[int], depth_axis: str = "axial") -> Compose:
    """The image-only part of ``train.json``'s preprocessing, on a loaded ``{"image": (1, X, Y, Z)}``:
    checks -> depth-first orientation -> head crop -> resize to ``spatial_size`` (D, H, W) -> head z-score.
    Output ``image`` is (1, D, H, W) float32 with its transforms traced for ``Invertd``."""
    return Compose([
        CheckVolumed(num_classes=1),
        Orientationd("image", axcodes=depth_axcodes(depth_axis), labels=None),
        CropForegroundd("image", source_key="image", select_fn=head_foreground, margin=CROP_MARGIN),
        Resized("image", spatial_size=list(spatial_size), mode="area"),
        HeadZScored("image"),
        EnsureTyped("image", dtype=torch.float32),
    ])


def volumes_ml(mask: np.ndarray, affine: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """(X, Y, Z) label mask + (4, 4) affine -> ``{name: mL}`` for every class except background (index 0)."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    mask = np.asarray(mask)  # one count per class: np.bincount would first widen 10M uint8 voxels to int64
    return {name: float(np.count_nonzero(mask == i)) * voxel_ml for i, name in enumerate(class_names) if i > 0}


def volume_row(scan: str, source: str, mask_path: str, volumes: dict[str, float]) -> dict[str, str]:
    """One ``volumes.csv`` row (columns of :func:`volume_columns`), mL to 3 decimals."""
    return {"scan": scan, "input": source, "mask": mask_path, **{f"{k}_ml": f"{v:.3f}" for k, v in volumes.items()}}


class VolumesCSVd(MapTransform):
    """Bundle post-processing step: append the ``volumes.csv`` row of the (1, X, Y, Z) native label mask in
    ``keys`` (voxel volume from its ``original_affine``; ``scan`` from the data's ``scan`` entry or the file
    name; mask path from ``SaveImaged``'s ``saved_to``). Returns the data unchanged."""

    def __init__(self, keys: KeysCollection, csv_path: str | os.PathLike, class_names: Sequence[str],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.csv_path, self.class_names = Path(csv_path), list(class_names)
        self.columns = volume_columns(self.class_names)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            meta = mask.meta if isinstance(mask, MetaTensor) else {}
            affine = np.asarray(meta.get("original_affine", meta.get("affine", np.eye(4))), dtype=np.float64)
            source = str(meta.get("filename_or_obj", ""))
            volumes = volumes_ml(torch.as_tensor(mask)[0].cpu().numpy(), affine, self.class_names)
            scan = str(d.get("scan") or _scan_id(Path(source)))
            append_csv_row(self.csv_path, self.columns, volume_row(scan, source, str(meta.get("saved_to", "")), volumes))
        return d


@dataclass
class Segmentation:
    """One segmented scan on its native grid: ``image`` (X, Y, Z) voxels as stored (int16 for most scans),
    ``mask`` (X, Y, Z) uint8 labels, ``affine`` (4, 4) voxel -> RAS mm of the input, ``volumes`` mL per structure,
    ``difficulty`` per structure (:func:`mrivol_monai.intervals.soft_hard_gap` on the model's grid: what the
    calibrated intervals scale with)."""

    source: str
    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    volumes: dict[str, float]
    difficulty: dict[str, float] = field(default_factory=dict)


class Predictor:
    """A loaded model plus the per-scan pipeline. ``network``: (N, 1, H, W) -> (N, C, H, W) logits (a torch
    module or :class:`mrivol_monai.export.OnnxSegmenter`). ``slices_per_call``: slices per network call
    (None: all D at once); 10 keeps the activations of a width-16 UNet to ~60 MB instead of ~240 MB.
    A torch network is run as an eval-mode copy with its BatchNorms folded into the convolutions."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], spec: ModelSpec, backend: str = "torch",
                 slices_per_call: int | None = SLICES_PER_CALL, series: str | None = None) -> None:
        if isinstance(network, SliceSegmenter):
            # NHWC convolutions: ~1.4x faster for these 2D nets on CPU (oneDNN), same numbers
            network = fold_batch_norm(network).to(memory_format=torch.channels_last)
        if slices_per_call is not None and slices_per_call < 1:
            raise ValueError(f"slices_per_call must be >= 1 or None (all slices), got {slices_per_call}")
        if spec.image_resize_mode != "area":  # native_grid resizes by area only; another mode would be served wrong
            raise InputError(None, f"the model was trained with image_resize_mode {spec.image_resize_mode!r}; "
                                   "mrivol predict serves 'area' only (retrain with it, or use the bundle's inference.json)")
        self.network, self.spec, self.backend, self.series = network, spec, backend, series
        self.source: str = "<in memory>"  # where the model was loaded from (set by from_model)
        self.shipped = False  # the shipped default of its task
        self.dicom_loader = LoadImaged("image", reader="ITKReader", ensure_channel_first=True, image_only=True)
        d, h, w = spec.spatial_size
        self.inferer = SliceInferer(roi_size=(h, w), spatial_dim=0, sw_batch_size=min(d, slices_per_call or d),
                                    progress=False)

    @classmethod
    def from_model(cls, model: str | os.PathLike | None = None, task: str | None = None, backend: str = "torch",
                   threads: int | None = None, slices_per_call: int | None = SLICES_PER_CALL,
                   trust_bundle: bool = False, series: str | None = None) -> "Predictor":
        """Load ``model`` (checkpoint, bundle folder, ``.onnx`` file, or None = shipped default of ``task``)
        for ``backend`` (``torch`` or ``onnx``; a torch checkpoint is converted to ONNX in memory).
        ``trust_bundle``: allow running a bundle's ``$`` config code to describe its checkpoint (a bundle is code).
        ``series``: which series to read from DICOM folders that hold several (see :meth:`read`)."""
        from mrivol_monai.weights import checkpoint_path, load_model

        if backend not in BACKENDS:
            raise InputError(None, f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if model is not None and str(model).lower().endswith(".onnx"):
            from mrivol_monai.export import load_onnx

            if backend != "onnx":
                raise InputError(model, "an .onnx model needs --backend onnx")
            session, spec = load_onnx(model, task, threads)
            predictor = cls(session, spec, backend, slices_per_call, series)
            predictor.source = str(model)
            return predictor
        net, spec = load_model(model, task, trust_bundle=trust_bundle)
        if backend == "onnx":
            from mrivol_monai.export import OnnxSegmenter, onnx_from_network

            predictor = cls(OnnxSegmenter(onnx_from_network(net, spec).SerializeToString(), threads), spec, backend,
                            slices_per_call, series)
        else:
            predictor = cls(net, spec, backend, slices_per_call, series)
        predictor.source, predictor.shipped = str(checkpoint_path(model, task)), model is None
        return predictor

    def read(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """Read a NIfTI file or DICOM series folder -> ((X, Y, Z) voxels as stored, (4, 4) voxel -> RAS affine).

        NIfTI: :func:`read_nifti` (ISA-L gunzip, no MONAI C-order float32 copy); a trailing 4th axis of size 1 is
        dropped (MONAI's loader reads it as the channel). DICOM: MONAI's ``ITKReader``.
        """
        path = Path(path)
        if not path.exists():
            raise InputError(path, "no such file or folder")
        nifti = path.is_file() and _is_nifti(path)
        what = "NIfTI image" if nifti else ("DICOM series" if path.is_dir() else "image")
        try:
            if nifti:
                image, affine = read_nifti(path)
            else:
                loaded = self._dicom_loader(path)({"image": str(path)})["image"]
                image, affine = loaded.numpy()[0], np.asarray(loaded.affine, dtype=np.float64)
        except InputError:
            raise
        except Exception as err:  # reader libraries raise many types; all mean the same thing here
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise InputError(path, f"cannot read as a {what} ({first.strip()[:160]})") from err
        if image.ndim == 4 and image.shape[3] == 1:
            image = image[..., 0]
        return image, affine

    def _dicom_loader(self, path: Path) -> LoadImaged:
        """MONAI's loader for the DICOM folder ``path``; for a folder of several series, the chosen one."""
        if not path.is_dir():
            return self.dicom_loader
        series = dicom_series(path)
        if len(series) <= 1:
            return self.dicom_loader
        listed = "; ".join(f"{uid} ({desc or 'no description'}, {n} files)" for uid, desc, n in series)
        if not self.series:
            raise InputError(path, f"holds {len(series)} DICOM series, so it is not clear which to measure: {listed}; "
                                   "choose one with --series ID (or give each series its own folder)")
        chosen = [uid for uid, _, _ in series if uid == self.series] or \
            [uid for uid, _, _ in series if uid.startswith(self.series)]
        if len(chosen) != 1:
            raise InputError(path, f"--series {self.series} matches {len(chosen)} of its series: {listed}")
        return LoadImaged("image", reader=ITKReader(series_name=chosen[0]), ensure_channel_first=True, image_only=True)

    def model_input(self, path: str | os.PathLike) -> tuple[torch.Tensor, GridMap, np.ndarray, np.ndarray]:
        """Read and preprocess one scan -> ((1, D, H, W) float32 model input, its GridMap, stored voxels, affine)."""
        image, affine = self.read(path)
        check_field_of_view(image.shape, affine, path)
        try:
            x, grid = model_input(image, affine, self.spec.spatial_size, self.spec.depth_axis,
                                  margin=self.spec.crop_margin, fraction=self.spec.head_threshold_fraction)
        except InputError as err:
            raise InputError(path, err.problem) from None
        return x, grid, image, affine

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """(1, D, H, W) preprocessed image -> (C, D, H, W) logits, slice by slice along D."""
        with torch.inference_mode():
            return self.inferer(torch.as_tensor(image)[None], self.network)[0]

    def segment(self, path: str | os.PathLike) -> Segmentation:
        """Segment one scan; :class:`InputError` for unreadable or unusable input."""
        x, grid, image, affine = self.model_input(path)
        probs = torch.softmax(self.logits(x).float(), dim=0)
        probs = keep_largest_components(probs, largest_component_labels(self.spec.task))
        gap = soft_hard_gap(probs, channel_argmax(probs)[0])
        mask = grid.to_native(probs)
        del probs
        if mask.shape != image.shape:  # the inverse must land exactly on the input grid; anything else is a bug
            raise RuntimeError(f"{path}: native mask has shape {mask.shape}, input has {image.shape}")
        return Segmentation(str(path), image, mask, affine, volumes_ml(mask, affine, self.spec.class_names),
                            {name: float(g) for name, g in zip(self.spec.class_names[1:], gap[1:])})

    def region(self, path: str | os.PathLike, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One scan -> (stored voxels, affine, (X, Y, Z) bool native mask of the voxels where one of ``classes``
        beats every other class).

        One score (best of ``classes`` minus best of the rest) goes to the native grid through the two-class
        path of :meth:`~mrivol_monai.native_grid.GridMap.to_native`, not all C classes: 0.04 s instead of
        0.33-0.41 s for the five-class subcortical model on an IXI-size scan (1 thread, busy 2-core VM); the
        region differed from the C-class argmax's in 30 of 32,051 voxels (ties at the border)."""
        x, grid, image, affine = self.model_input(path)
        probs = torch.softmax(self.logits(x).float(), dim=0)
        wanted = torch.zeros(probs.shape[0], dtype=torch.bool)
        wanted[list(classes)] = True
        score = (probs[wanted].amax(dim=0) - probs[~wanted].amax(dim=0))[None]
        return image, affine, grid.to_native(score) > 0


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


QC_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2", "#64d2ff", "#ff9f0a")


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
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
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


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".mrivol-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(out, f"output folder is not writable ({err.strerror or err})") from err


@dataclass
class PredictReport:
    """Outcome of :func:`predict`: rows written (one dict per scan, as in ``volumes.csv``), failures as
    ``(input, message)``, ``seconds`` per successful scan, folder files ``skipped`` as label maps
    ``(path, reason)``, inputs ``done`` by an earlier run (not redone), and which ``shard`` (K, N) of the inputs
    this process took."""

    rows: list[dict[str, object]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    csv_path: Path | None = None
    task: str = ""
    backend: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shard: tuple[int, int] = (0, 1)


def predict(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, task: str | None = None,
            model: str | os.PathLike | None = None, backend: str = "torch", qc: bool = True,
            progress: bool = True, predictor: Predictor | None = None,
            report: Callable[[str], None] | None = None, header: Sequence[str] = (),
            fine_model: str | os.PathLike | None = None, trust_bundle: bool = False,
            series: str | None = None, shard: tuple[int, int] = (0, 1), overwrite: bool = False,
            layout: str = "flat", html_report: bool = True) -> PredictReport:
    """Segment every scan of ``inputs`` (see :func:`find_scans`), or shard ``(K, N)`` of them (every N-th scan
    from the K-th: the same split in every process given the same inputs), into ``out``.

    Writes ``<scan>_seg.nii.gz``, ``<scan>_qc.png`` (unless ``qc`` is False), ``<scan>_volumes.json`` and a row in
    ``volumes.csv`` per scan, with its QC verdict (:func:`mrivol_monai.scan_qc.qc_reasons`); ``labels.json`` names
    the mask's values. ``layout`` ``bids`` names and places them as BIDS derivatives instead (:func:`output_paths`)
    and adds ``dseg.tsv`` and ``dataset_description.json``. ``report.html`` and its cohort plot
    (:mod:`mrivol_monai.batch_report`) are rewritten after each scan (throttled for big folders, ``REPORT_WAIT``)
    and at the end, unless ``html_report`` is False. ``task`` subcortical runs two stages when a stage-2 model is
    shipped or given as ``fine_model`` (:mod:`mrivol_monai.two_stage`). A scan that already has a row for the same
    input and a mask in ``out`` (an earlier or parallel run) is skipped unless ``overwrite``; a redone scan's row
    replaces its old one. A bad scan is reported through ``report`` (default: ``error: <path>: <problem>`` on
    stderr) and skipped; so are the ``header`` lines and the label/mask files left out of folders (one line). A bad
    model or output folder raises :class:`InputError` before any scan is read.
    """
    say = report or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out = Path(out)
    if predictor is None:
        from mrivol_monai.two_stage import predictor_for

        predictor = predictor_for(model, task, backend, fine_model, trust_bundle=trust_bundle, series=series)
    calibration = shipped_intervals(predictor)
    columns = predict_columns(getattr(predictor, "volume_names", predictor.spec.class_names)) + \
        intervals.interval_columns(list(calibration))
    output_paths(out, {"scan": "x"}, layout)  # an unknown layout fails before any work
    result = PredictReport(csv_path=out / VOLUMES_CSV, task=predictor.spec.task, backend=predictor.backend,
                           shard=tuple(shard))
    _check_out_dir(out)
    table = VolumesTable(result.csv_path, columns)
    table.repair()  # header of another task -> InputError; a torn last line or duplicates from older versions
    write_atomic(out / LABELS_JSON, json.dumps(label_table(predictor.spec), indent=2) + "\n")
    if layout == "bids":
        write_derivative_metadata(out, predictor.spec.class_names, "mrivol_monai", __version__,
                                  f"mrivol predict, task {predictor.spec.task}")
    volume_cols = [c for c in columns if c.endswith("_ml")]

    last_report = {"at": -float("inf"), "took": 0.0, "pending": True}

    def update_report(final: bool = False) -> None:
        """Rewrite report.html from volumes.csv; between scans only once ``REPORT_WAIT`` x the last rewrite's
        time has passed since it (10,000 rows took 0.72 s: benchmarks/report_speed.py), so the report costs at
        most ~1/4 of a run."""
        started = time.perf_counter()
        if not html_report or (not final and started - last_report["at"] < REPORT_WAIT * last_report["took"]):
            return
        rows = table.rows()
        try:
            write_report(out, rows, [c for c in volume_cols if not c.endswith("_soft_ml")],
                         {r["scan"]: qc_picture_of(r["mask"]) for r in rows},
                         title=f"mrivol {predictor.spec.task} volumes")
        except Exception as err:  # the report is a view of volumes.csv: losing one update must not stop the batch
            say(f"warning: {out / 'report.html'} not updated: {type(err).__name__}: {str(err)[:200]}")
        last_report.update(at=time.perf_counter(), took=time.perf_counter() - started, pending=False)
    for line in header:  # e.g. which model and how many threads, once the model and output folder are good
        say(line)
    found, result.skipped = discover_scans(inputs)
    if result.skipped:
        say(skipped_line(result.skipped))
    scans = take_shard(found, *shard)
    desc = f"mrivol {predictor.spec.task}" + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    for item in tqdm(scans, desc=desc, unit="scan", disable=not progress, file=sys.stderr):
        start = time.perf_counter()
        paths = output_paths(out, item, layout)
        mask_path = paths["mask"]
        try:
            if item.get("error"):
                raise InputError(item["image"], item["error"])
            done = table.get(item["scan"])
            if done is not None and not overwrite and mask_path.is_file():
                if os.path.realpath(done["input"]) != os.path.realpath(item["image"]):
                    raise InputError(item["image"], f"scan id {item['scan']!r} is already in {result.csv_path} for "
                                                    f"another input ({done['input']}); use another --out")
                result.done.append(item["image"])
                continue
            seg = predictor.segment(item["image"])
            save_mask(seg.mask, seg.affine, mask_path)
            verdict = qc_verdict(qc_reasons(seg.image, seg.mask, seg.volumes) +
                                 intervals.wide_reason(calibration, seg.volumes, seg.difficulty))
            if qc:
                volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in seg.volumes.items())
                save_qc_png(seg.image, seg.mask, seg.affine, paths["qc"], predictor.spec.class_names,
                            f"{item['scan']}: {volumes}; QC {verdict}")
            row = {**volume_row(item["scan"], item["image"], str(mask_path), seg.volumes),
                   "subject": item.get("subject", ""), "session": item.get("session", ""), "qc": verdict,
                   **intervals.interval_cells(calibration, seg.volumes, seg.difficulty)}
            write_atomic(paths["json"], scan_json(row))
            table.put(row)  # last: a scan counts as done only once its mask, QC picture and JSON are in place
        except InputError as err:
            result.failed.append((item["image"], str(err)))
            say(f"error: {err}")
            continue
        except Exception as err:  # an unexpected failure on one scan must not lose the rest of the batch
            message = f"{item['image']}: unexpected {type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
            result.failed.append((item["image"], message))
            say(f"error: {message}")
            continue
        result.rows.append(row)
        last_report["pending"] = True
        update_report()  # current during a long run
        result.seconds.append(time.perf_counter() - start)
    if last_report["pending"]:  # the last scans' rows, or (nothing new) a report of what the folder holds
        update_report(final=True)
    return result


def shipped_intervals(predictor: Any) -> dict[str, "intervals.StructureCalibration"]:
    """The calibrated 95 % intervals that go with the shipped models (``mrivol_monai/weights/<task>_intervals.json``,
    written by ``docs/calibrate_intervals.py``): for the shipped brain model, and for both shipped subcortical
    stages; none for other models (a calibration holds only for the model it was measured on)."""
    from mrivol_monai.weights import WEIGHTS_DIR

    if hasattr(predictor, "stage2"):
        shipped = getattr(predictor.stage1, "shipped", False) and getattr(predictor.stage2, "shipped", False)
        name = "subcortical_fine"
    else:
        shipped, name = getattr(predictor, "shipped", False), predictor.spec.task
    path = WEIGHTS_DIR / f"{name}_intervals.json"
    return intervals.load(path) if shipped and path.is_file() else {}


def model_line(predictor: Predictor) -> str:
    """One line: which model segments (file, shipped default or not), its task, network and grid, and how it
    was trained (:func:`mrivol_monai.provenance.describe`; the export note for older shipped weights)."""
    from mrivol_monai.provenance import describe, provenance_of

    spec = predictor.spec
    net = dict(spec.network_def)
    name = str(net.pop("_target_", "?")).rsplit(".", 1)[-1]
    args = " ".join(f"{k}={v}" for k, v in net.items() if k not in ("in_channels", "out_channels"))
    grid = "x".join(str(s) for s in spec.spatial_size)
    how = describe(provenance_of(spec.to_dict()), overrides=True)
    if provenance_of(spec.to_dict()) is None and spec.produced_by.get("note"):
        how += f" (export note: {spec.produced_by['note']})"
    kind = "shipped default" if predictor.shipped else "model"
    return (f"{kind} {predictor.source}: task {spec.task}, {name} {args}, {grid} {spec.depth_axis}, "
            f"{predictor.backend} backend; {how}")


def default_threads(requested: int | None = None) -> tuple[int, str]:
    """Torch threads for prediction and why: ``requested`` if given, else ``OMP_NUM_THREADS`` if set, else the
    cores the 1-minute load average leaves idle (at least 1, at most the cores this process may use).

    On this project's 2-core VM with other jobs running (load 3-8) torch's default (one thread per core) took
    6.30 s per IXI-size scan against 0.98 s with one thread (``benchmarks/inference_speed.py
    --compare-threads``, 2026-12-04): a thread that waits for a busy core stalls every parallel region.
    """
    if requested is not None:
        if requested < 1:
            raise InputError(None, f"--threads must be >= 1, got {requested}")
        return int(requested), "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores, f"{cores} cores, load unknown"
    n = max(1, min(cores, int(cores - load + 0.5)))
    return n, f"{cores} cores, load average {load:.1f}"


def summary_line(result: PredictReport) -> str:
    """One line: how many scans worked and failed, the median time per scan, where the volumes are."""
    n = len(result.rows) + len(result.failed) + len(result.done)
    timing = f"median {float(np.median(result.seconds)):.2f} s/scan" if result.seconds else "no timing"
    where = f"shard {result.shard[0]}/{result.shard[1]}: " if result.shard[1] > 1 else ""
    skipped = f", {len(result.done)} already done (skipped; --overwrite redoes them)" if result.done else ""
    return (f"{where}{len(result.rows)}/{n} scans segmented ({result.task}, {result.backend} backend, {timing}), "
            f"{len(result.failed)} failed{skipped}; volumes in {result.csv_path}")

