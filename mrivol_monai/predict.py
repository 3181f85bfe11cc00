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
row per scan (:mod:`mrivol_monai.volumes_csv`). Which inputs are scans is :mod:`mrivol_monai.scan_discovery`;
what is written per scan, and where, is :mod:`mrivol_monai.prediction_outputs` (their names stay importable
from here).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

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
from mrivol_monai.atomic_io import make_writable_dir, write_atomic
from mrivol_monai.batch_report import write_report
from mrivol_monai.bids import write_derivative_metadata
from mrivol_monai.data.nifti_reader import read_nifti
from mrivol_monai.distributed import shard as take_shard
from mrivol_monai.data.nifti_files import voxel_mm3
from mrivol_monai.errors import InputError
from mrivol_monai import intervals
from mrivol_monai.intervals import soft_hard_gap
from mrivol_monai.native_grid import CROP_MARGIN, GridMap, channel_argmax, model_input
from mrivol_monai.networks import SliceSegmenter, fold_batch_norm
from mrivol_monai.scan_discovery import (  # discovery lives there; these names stay importable from here
    dicom_series,
    discover_scans,
    find_scans,
    label_file_reason,
    skipped_line,
)
from mrivol_monai.scan_discovery import is_nifti as _is_nifti
from mrivol_monai.scan_discovery import scan_id as _scan_id
from mrivol_monai.prediction_outputs import (  # what predict writes lives there; these names stay importable here
    LAYOUTS,
    append_csv_row,
    label_table,
    output_paths,
    predict_columns,
    qc_picture_of,
    qc_title_volumes,
    save_mask,
    save_qc_png,
    scan_json,
    volume_columns,
    volume_row,
)
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
    "LAYOUTS",
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
REPORT_WAIT = 3.0  # report.html waits this many times its last rewrite's duration before the next (see predict)
VOLUMES_CSV = "volumes.csv"
LABELS_JSON = "labels.json"
MIN_HEAD_VOXELS = 16  # per axis: fewer cannot show a head (an 8x8x8 volume, a single slab)
MIN_HEAD_MM = 20.0  # per axis, field of view in mm
SLICES_PER_CALL = 10  # peak RSS vs speed on an IXI-size scan: see benchmarks/inference_speed.py --slices-per-call


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
    voxel_ml = voxel_mm3(affine) / 1000.0
    mask = np.asarray(mask)  # one count per class: np.bincount would first widen 10M uint8 voxels to int64
    return {name: float(np.count_nonzero(mask == i)) * voxel_ml for i, name in enumerate(class_names) if i > 0}


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


def _check_out_dir(out: Path) -> None:
    try:
        make_writable_dir(out)
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
                volumes = qc_title_volumes(seg.volumes)
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

