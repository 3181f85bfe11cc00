"""Subcortical volumes in two stages: the whole-head grid model finds the deep grey matter, a 2.5D network
segments left and right structures in the 1 mm box around it (:mod:`mrivol_monai.deep_grey_box`).

Per scan: stage 1 (:class:`mrivol_monai.predict.Predictor` with the grid subcortical model) gives class
probabilities on its grid; the centroid of the native voxels where thalamus, caudate or putamen wins
(:meth:`~mrivol_monai.predict.Predictor.region`) centres the box; the scan is resampled into
the box (trilinear), z-scored over its non-zero voxels, each of the D slices gets its two neighbours as
channels, and stage 2 predicts (C, D, H, W) class probabilities slice by slice. Volumes in mL per structure
and side: ``hard`` = native mask voxels x native voxel volume (the scores resampled onto the native grid,
then argmax), ``soft`` = sum of the box probabilities x 1 mm^3; plus left + right totals of the paper's
four structures. The native mask holds class indices (:data:`~mrivol_monai.deep_grey_box.CLASS_NAMES`,
written to ``labels.json`` beside it with their FreeSurfer ids).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import MapTransform, NormalizeIntensity

from mrivol_monai import deep_grey_box as box
from mrivol_monai.errors import InputError
from mrivol_monai.networks import SliceSegmenter, fold_batch_norm
from mrivol_monai.predict import Predictor, Segmentation
from mrivol_monai.transforms.slab_sampling import stack_neighbours
from mrivol_monai.weights import ModelSpec, load_model

FINE_TASK = "subcortical_fine"
# grid subcortical classes that centre the box (1 thalamus, 2 caudate, 3 putamen; not the amygdala)
STAGE1_CENTRE_CLASSES = (1, 2, 3)


def volume_names() -> list[str]:
    """``volumes.csv`` structures of the two-stage task: per side (hard), the four totals, then soft per side."""
    sides = list(box.CLASS_NAMES[1:])
    return sides + list(box.REPORTED_STRUCTURES) + [f"{name}_soft" for name in sides]


def stage1_centre(mask: np.ndarray, affine: np.ndarray, source: str) -> np.ndarray:
    """(X, Y, Z) stage-1 class mask (or a boolean mask of its thalamus, caudate and putamen voxels) -> RAS centre
    of the box; :class:`InputError` if stage 1 found nothing."""
    found = mask if mask.dtype == bool else np.isin(mask, STAGE1_CENTRE_CLASSES)
    if not found.any():
        raise InputError(source, "stage 1 found no thalamus, caudate or putamen: not a head T1, or the head crop "
                                 "failed; no subcortical volumes")
    centre = box.centroid_ras(found, affine)
    box.check_centre(centre, affine, mask.shape, source)
    return centre


def box_difficulty(probs: torch.Tensor) -> dict[str, float]:
    """(C, D, H, W) stage-2 probabilities -> :func:`~mrivol_monai.intervals.soft_hard_gap` per structure side and
    for the left + right totals of the reported structures (their two channels merged)."""
    from mrivol_monai.intervals import soft_hard_gap
    from mrivol_monai.native_grid import channel_argmax

    labels = channel_argmax(probs)[0].long()
    gap = soft_hard_gap(probs, labels)
    out = {name: float(g) for name, g in zip(box.CLASS_NAMES[1:], gap[1:])}
    for name in box.REPORTED_STRUCTURES:
        left, right = box.CLASS_NAMES.index(f"{name}_left"), box.CLASS_NAMES.index(f"{name}_right")
        merged = probs[left] + probs[right]
        count = float(((labels == left) | (labels == right)).sum())
        out[name] = abs(float(merged.double().sum()) - count) / max(count, 1.0)
    return out


class FineSegmenter:
    """Stage 2: ``network`` maps (N, 2n + 1, H, W) slabs to (N, C, H, W) logits; ``spec`` is its checkpoint's."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], spec: ModelSpec,
                 slices_per_call: int | None = 8) -> None:
        if spec.num_classes != box.NUM_CLASSES:
            raise InputError(None, f"stage-2 model has {spec.num_classes} classes, expected {box.NUM_CLASSES}")
        if isinstance(network, SliceSegmenter):
            network = fold_batch_norm(network).to(memory_format=torch.channels_last)
        self.network, self.spec = network, spec
        self.neighbours = (int(spec.network_def.get("in_channels", 3)) - 1) // 2
        self.size = tuple(int(s) for s in spec.spatial_size)
        d, h, w = self.size
        self.inferer = SliceInferer(roi_size=(h, w), spatial_dim=0, sw_batch_size=min(d, slices_per_call or d),
                                    progress=False)
        self.normalise = NormalizeIntensity(nonzero=True)
        self.backend, self.source, self.shipped = "torch", "<in memory>", False  # as Predictor's, for model_line

    @classmethod
    def from_model(cls, model: str | os.PathLike | None = None) -> "FineSegmenter":
        """Stage-2 checkpoint ``model`` (None: the shipped default)."""
        from mrivol_monai.weights import checkpoint_path

        net, spec = load_model(model, FINE_TASK)
        segmenter = cls(net, spec)
        segmenter.source, segmenter.shipped = str(checkpoint_path(model, FINE_TASK)), model is None
        return segmenter

    def box_input(self, image: np.ndarray, affine: np.ndarray, centre: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(X, Y, Z) scan, its affine, RAS centre -> ((2n + 1, D, H, W) model input, (4, 4) box affine)."""
        grid = box.box_affine(centre, self.size)
        x = box.to_box(image, affine, grid, self.size, crop=True)
        x = torch.as_tensor(self.normalise(x[None]))
        return stack_neighbours(x, self.neighbours), grid

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(2n + 1, D, H, W) input -> (C, D, H, W) class probabilities."""
        with torch.inference_mode():
            logits = self.inferer(x[None], self.network)[0]
        return torch.softmax(logits.float(), dim=0)


class DeepGreyBoxSegmentd(MapTransform):
    """Bundle post-processing step (``configs/inference_two_stage.json``): stage 2 after the bundle's stage 1.

    ``keys``: the stage-1 (C, X, Y, Z) class scores on the scan's native grid (after ``Invertd``), a MetaTensor
    whose ``filename_or_obj`` names the scan. The centroid of the native voxels whose argmax is thalamus, caudate
    or putamen centres the 1 mm box; the scan is read again as stored (the preprocessed image is on the model
    grid), stage 2 segments the box, and the key is replaced by the (1, X, Y, Z) uint8 left/right class mask
    (:data:`~mrivol_monai.deep_grey_box.CLASS_NAMES`) with the stage-1 meta (same affine and grid).
    """

    def __init__(self, keys: KeysCollection, fine_model: str | os.PathLike | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stage2 = FineSegmenter.from_model(fine_model)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        from mrivol_monai.data.nifti_reader import read_nifti
        from mrivol_monai.native_grid import channel_argmax

        d = dict(data)
        for key in self.key_iterator(d):
            scores = d[key]
            meta = dict(scores.meta) if isinstance(scores, MetaTensor) else {}
            source = str(meta.get("filename_or_obj", "<in memory>"))
            image, affine = read_nifti(source)
            if image.ndim == 4 and image.shape[3] == 1:
                image = image[..., 0]
            stage1 = channel_argmax(torch.as_tensor(scores).float().cpu())[0].numpy()
            if stage1.shape != image.shape:
                raise InputError(source, f"stage-1 mask {stage1.shape} is not on the scan's grid {image.shape}")
            centre = stage1_centre(stage1, affine, source)
            x, grid = self.stage2.box_input(image, affine, centre)
            mask = box.box_to_native(self.stage2.probabilities(x), grid, affine, image.shape)
            d[key] = MetaTensor(torch.from_numpy(mask)[None], meta=meta)
        return d


@dataclass
class TwoStageSpec:
    """What ``mrivol predict`` needs to know of a two-stage predictor (a :class:`ModelSpec` look-alike)."""

    task: str
    class_names: list[str]


class TwoStagePredictor:
    """Stage 1 (grid model, :class:`Predictor`) + stage 2 (:class:`FineSegmenter`); same ``segment`` interface
    as :class:`Predictor`, with left/right class indices in the mask and hard + soft volumes."""

    def __init__(self, stage1: Predictor, stage2: FineSegmenter) -> None:
        if stage1.spec.task != "subcortical":
            raise InputError(None, f"stage 1 must be a subcortical grid model, got task {stage1.spec.task!r}")
        self.stage1, self.stage2 = stage1, stage2
        self.backend = stage1.backend
        self.spec = TwoStageSpec("subcortical", list(box.CLASS_NAMES))
        self.volume_names = ["background"] + volume_names()

    def model_lines(self) -> list[str]:
        """Which models segment (see :func:`mrivol_monai.predict.model_line`), one line per stage."""
        from mrivol_monai.predict import model_line

        return [f"stage 1: {model_line(self.stage1)}", f"stage 2: {model_line(self.stage2)}"]

    def segment(self, path: str | os.PathLike) -> Segmentation:
        """One scan -> native (X, Y, Z) uint8 class indices and volumes (mL) named as :func:`volume_names`."""
        image, affine, found = self.stage1.region(path, STAGE1_CENTRE_CLASSES)
        centre = stage1_centre(found, affine, str(path))
        x, fine_grid = self.stage2.box_input(image, affine, centre)
        probs = self.stage2.probabilities(x)
        mask = box.box_to_native(probs, fine_grid, affine, image.shape)
        hard = box.with_totals(box.hard_volumes_ml(mask, affine))
        soft = box.soft_volumes_ml(probs)
        volumes = {**hard, **{f"{name}_soft": v for name, v in soft.items()}}
        return Segmentation(str(path), image, mask, affine, {k: volumes[k] for k in volume_names()},
                            box_difficulty(probs))


def predictor_for(model: str | os.PathLike | None = None, task: str | None = None, backend: str = "torch",
                  fine_model: str | os.PathLike | None = None, threads: int | None = None,
                  trust_bundle: bool = False, series: str | None = None) -> Predictor | TwoStagePredictor:
    """The predictor ``mrivol predict`` uses: two stages for ``task`` subcortical when a stage-2 model is given
    (``fine_model``) or shipped and no other grid model was asked for; else the grid model alone."""
    from mrivol_monai.weights import default_checkpoint

    options = {"threads": threads, "trust_bundle": trust_bundle, "series": series}
    if task == "subcortical" and (fine_model is not None or (model is None and default_checkpoint(FINE_TASK).is_file())):
        return TwoStagePredictor(Predictor.from_model(model, "subcortical", backend, **options),
                                 FineSegmenter.from_model(fine_model))
    if task == FINE_TASK:
        raise InputError(None, "the stage-2 model segments a box found by stage 1: use --task subcortical")
    return Predictor.from_model(model, task, backend, **options)
