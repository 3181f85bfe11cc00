"""A scan's stored voxel array <-> the model's (D, H, W) grid, without whole-volume copies.

The model must see what ``train.json``'s preprocessing makes of a scan: ``Orientationd`` to depth-first axis
codes -> ``CropForegroundd`` (``head_foreground``, margin 2, zero padding where the box leaves the image) ->
``Resized`` (``area``) -> ``HeadZScored``; and a prediction goes back through MONAI's inverses of those
(``Invertd``). MONAI runs them on a channel-first, C-ordered float32 ``MetaTensor``, so an IXI-size scan
(256 x 256 x 150 int16, stored by NIfTI in Fortran order) is first copied whole into C order and float32,
re-oriented, searched for its head box on a permuted view and cropped: ~0.35 s of a ~0.9 s scan, more than
the network. Written by hand because MONAI's transforms need that tensor; the arithmetic is theirs:

- the array is used in its own memory order (a Fortran-ordered (X, Y, Z) array is a C-ordered (Z, Y, X)
  one), so no re-ordering copy is made; model axes map onto memory axes with a permutation and flips;
- the head threshold samples the very voxels ``head_foreground`` samples on the re-oriented image (the same
  flat C-order positions, read through a zero-copy re-oriented numpy view);
- the head box comes from max-projections (a plane holds a voxel above the threshold exactly when its
  maximum is above it), which are cheap on the contiguous array;
- the crop is a slice; ``area`` resizing (adaptive average pooling) is symmetric under flips and axis
  permutations, so it runs in memory order and only the small (D, H, W) result is re-oriented;
- on the way back the probabilities are re-oriented on the small grid, resized to the box one axis at a
  time (adaptive average pooling is separable; upsampling averages one or two neighbours per axis), then
  the argmax is pasted into a zero mask in memory order, returned as a view in the input's axis order.

``tests/test_native_grid.py`` checks the model input against MONAI's transforms and the mask against
``Invertd`` + argmax, for several orientations, memory orders and boxes that leave the image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from mrivol_monai.errors import InputError
from mrivol_monai.transforms import (
    CheckVolumed,
    HeadZScored,
    depth_axcodes,
    head_sample_index,
    head_threshold,
)
from mrivol_monai.transforms.intensity import HEAD_THRESHOLD_FRACTION

__all__ = ["CROP_MARGIN", "IMAGE_RESIZE_MODE", "GridMap", "area_resize", "channel_argmax", "model_input"]

CROP_MARGIN = 2  # voxels around the head box: train.json's crop_margin for the shipped models
IMAGE_RESIZE_MODE = "area"  # the one resize mode model_input and GridMap implement
TIE_BREAK = 2.0**-16  # weight moved to the nearer of two upsampled neighbours (see _pool_weights)
# dtypes MONAI's loader would turn into the same float32 values by a plain cast, so they can stay as stored
_KEPT_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.float32)


def _windows(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's adaptive-pooling windows for n -> m samples: output i averages inputs [start[i], stop[i])."""
    i = torch.arange(m)
    return (i * n) // m, ((i + 1) * n + m - 1) // m


def _nearer_first(n: int, m: int) -> torch.Tensor:
    """For n -> m upsampling: whether output i's centre is nearer input start[i] than start[i] + 1 (a tie at
    the exact midpoint counts as nearer the first)."""
    start, _ = _windows(n, m)
    return (2 * torch.arange(m) + 1) * n <= 2 * m * (start + 1)


def _pool_weights(n: int, m: int, lo: int = 0, hi: int | None = None, nearest_ties: bool = False) -> torch.Tensor:
    """(m, hi - lo) float32 matrix of the n -> m adaptive average, restricted to input columns [lo, hi): the
    columns outside are zero padding, which adds nothing to a window's sum but still counts in its size.

    ``nearest_ties`` (upsampling only): a two-input window weighs the input whose centre is nearer by
    1/2 + 2**-16 instead of 1/2, so that two classes with equal mean probability go to the nearer model voxel
    rather than always to the lower class index (saturated or symmetric probabilities tie exactly, and
    always-lower would shave about half a voxel off every structure's boundary)."""
    hi = n if hi is None else hi
    start, stop = _windows(n, m)
    cols = torch.arange(lo, hi)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < stop[:, None])
    weights = inside.float() / (stop - start).float()[:, None]
    if nearest_ties and m >= n:
        pair = (stop - start == 2)[:, None]
        nearer = torch.where(_nearer_first(n, m), start, start + 1)[:, None]
        weights += torch.where(pair & inside, torch.where(cols[None, :] == nearer, TIE_BREAK, -TIE_BREAK), 0.0)
    return weights


def _resize_axis(x: torch.Tensor, axis: int, weights: torch.Tensor) -> torch.Tensor:
    """Apply an (m, n) weight matrix along ``axis`` of ``x`` (size n there) with one matrix product."""
    pre, n = int(np.prod(x.shape[:axis])), x.shape[axis]
    if axis == x.ndim - 1:
        y = x.reshape(pre, n) @ weights.T
    else:
        y = torch.matmul(weights, x.reshape(pre, n, -1))
    return y.reshape(*x.shape[:axis], weights.shape[0], *x.shape[axis + 1:])


def area_resize(x: torch.Tensor, size: Sequence[int], nearest_ties: bool = False) -> torch.Tensor:
    """(C, *spatial) float -> (C, *size): torch's ``area`` interpolation (adaptive average pooling) one axis at a
    time, each a matrix product. The pooling is separable, so this equals ``F.interpolate(x[None], size,
    mode="area")[0]`` up to float rounding, ~5x faster than torch's 3D kernel when upsampling to a native grid.
    Axes that shrink most go first. ``nearest_ties``: see :func:`_pool_weights`."""
    for a in sorted(range(len(size)), key=lambda a: size[a] / x.shape[a + 1]):
        if x.shape[a + 1] != size[a]:
            x = _resize_axis(x, a + 1, _pool_weights(x.shape[a + 1], int(size[a]), nearest_ties=nearest_ties))
    return x.contiguous()


@dataclass(frozen=True)
class GridMap:
    """Where the model grid sits in one scan's stored array.

    ``native_shape``: (X, Y, Z) of the stored array; ``memory_axes``: its axes from slowest- to
    fastest-varying in memory; ``model_axes[k]``/``flips[k]``: the memory axis that model axis k (D, H, W) runs
    along, and whether it runs backwards; ``box_start``/``box_end``: the head box (margin included) in memory
    coordinates, which may leave the array (zero padding); ``spatial_size``: the model grid (D, H, W);
    ``threshold``: the head threshold (``head_foreground``'s) the box was found with.
    """

    native_shape: tuple[int, int, int]
    memory_axes: tuple[int, int, int]
    model_axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    box_start: tuple[int, int, int]
    box_end: tuple[int, int, int]
    spatial_size: tuple[int, int, int]
    threshold: float = float("nan")

    @property
    def memory_shape(self) -> tuple[int, ...]:
        return tuple(self.native_shape[a] for a in self.memory_axes)

    @property
    def box_shape(self) -> tuple[int, ...]:
        return tuple(e - s for s, e in zip(self.box_start, self.box_end))

    def _overlap(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices of the stored array, slices of the box) of the part of the box inside the array."""
        inside, in_box = [], []
        for s, e, n in zip(self.box_start, self.box_end, self.memory_shape):
            lo, hi = max(s, 0), min(e, n)
            inside.append(slice(lo, hi))
            in_box.append(slice(lo - s, hi - s))
        return tuple(inside), tuple(in_box)

    def _flip_dims(self, offset: int) -> list[int]:
        return [offset + self.model_axes[k] for k in range(3) if self.flips[k]]

    def to_model_order(self, x: torch.Tensor) -> torch.Tensor:
        """(C, *box-like grid in memory order) -> (C, D', H', W') in model axis order (a copy)."""
        x = torch.flip(x, self._flip_dims(1)) if any(self.flips) else x
        return x.permute(0, *(1 + a for a in self.model_axes)).contiguous()

    def to_memory_order(self, x: torch.Tensor) -> torch.Tensor:
        """(C, D, H, W) in model axis order -> (C, ...) in memory axis order (a copy)."""
        x = x.permute(0, *(1 + self.model_axes.index(w) for w in range(3)))
        return (torch.flip(x, self._flip_dims(1)) if any(self.flips) else x).contiguous()

    def to_native(self, probs: torch.Tensor) -> np.ndarray:
        """(C, D, H, W) class probabilities on the model grid -> (X, Y, Z) uint8 argmax labels on the stored grid.

        The labels MONAI's ``Invertd`` (inverse resize, crop, orientation) followed by an argmax gives, up to
        float rounding at exact ties. The result is a view in the input's axis order over a C-ordered buffer
        in memory order (a Fortran-ordered input gives a Fortran-ordered mask, which nibabel writes as is).
        """
        probs = torch.as_tensor(probs).float()
        if probs.shape[0] == 2:
            # the argmax of two classes is the sign of their difference, which (linear) resizing keeps:
            # one channel to resize instead of two
            probs = (probs[1] - probs[0])[None]
        scores = self.to_memory_order(probs)
        n0, (b0, b1, b2) = scores.shape[1], self.box_shape
        scores = area_resize(scores, (n0, b1, b2), nearest_ties=True)
        inside, in_box = self._overlap()
        if b0 >= n0:
            # along the slowest axis every box plane averages one model plane or two neighbouring ones (weighted
            # towards the nearer, see _pool_weights): argmax those 3 * n0 - 2 distinct planes only (trimmed to
            # the image), then repeat their labels (a uint8 copy instead of a float pass over the whole box)
            start, stop = _windows(n0, b0)
            first, second = scores[:, :-1], scores[:, 1:]
            distinct = torch.cat([_argmax(scores), _argmax(torch.lerp(first, second, 0.5 - TIE_BREAK)),
                                  _argmax(torch.lerp(first, second, 0.5 + TIE_BREAK))])[:, in_box[1], in_box[2]]
            which = torch.where(stop - start == 1, start,
                                torch.where(_nearer_first(n0, b0), n0 + start, 2 * n0 - 1 + start))
            labels = distinct.contiguous().index_select(0, which[in_box[0]])
        else:
            labels = _argmax(area_resize(scores, (b0, b1, b2), nearest_ties=True))[in_box]
        del scores
        if tuple(labels.shape) == self.memory_shape:  # the box holds the whole image (it usually pads)
            mask = labels.contiguous()
        else:
            mask = torch.zeros(self.memory_shape, dtype=torch.uint8)
            mask[inside] = labels
        return mask.numpy().transpose(np.argsort(self.memory_axes))


def channel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) scores -> (1, *spatial) uint8 index of the largest (ties: lowest); a MetaTensor keeps its meta.

    Not ``AsDiscrete(argmax=True)``: ``torch.argmax`` over the short channel axis of a permuted native-size
    volume is ~50x slower on CPU than these C elementwise passes (8 s vs 0.15 s for 2 x 256 x 256 x 150).
    """
    scores = torch.as_tensor(probs)
    best = scores[0].clone()
    label = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        label[better] = c
        best = torch.where(better, scores[c], best)
    if isinstance(probs, MetaTensor):
        return MetaTensor(label[None], meta=dict(probs.meta), applied_operations=list(probs.applied_operations))
    return label[None]


def _argmax(scores: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) scores -> (*spatial) uint8 labels; one channel is a two-class score difference (label 1
    where it is positive, i.e. where class 1 beats class 0; ties go to class 0, as in an argmax)."""
    if scores.shape[0] == 1:
        return (scores[0] > 0).view(torch.uint8)  # bool and uint8 share a layout: no copy
    return channel_argmax(scores)[0]


def _memory_view(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(X, Y, Z) array -> (C-ordered array over its memory, its axes slowest first); copies only if needed."""
    axes = tuple(int(a) for a in np.argsort([-abs(s) for s in image.strides], kind="stable"))
    work = image.transpose(axes)
    if work.dtype.type not in _KEPT_DTYPES or not work.dtype.isnative:
        work = work.astype(np.float32)  # what MONAI's loader casts to; also float64 from scaled NIfTI data
    if not work.flags.c_contiguous:
        work = np.ascontiguousarray(work)
    return work, axes


def model_input(image: np.ndarray, affine: np.ndarray, spatial_size: Sequence[int], depth_axis: str = "axial",
                margin: int = CROP_MARGIN, fraction: float = HEAD_THRESHOLD_FRACTION
                ) -> tuple[torch.Tensor, GridMap]:
    """(X, Y, Z) stored scan + (4, 4) voxel -> RAS affine -> ((1, D, H, W) float32 model input, its GridMap).

    Equal (to float rounding) to ``CheckVolumed`` -> ``Orientationd`` -> ``CropForegroundd`` -> ``Resized`` ->
    ``HeadZScored`` of :func:`mrivol_monai.predict.preprocessing` on the loaded image. Raises
    :class:`InputError` (no file name: the caller adds it) for a non-3D, non-finite, constant or headless image.
    """
    image = np.asanyarray(image)
    if image.ndim != 3:
        raise InputError(None, f"expected a single 3D image, got array shape {tuple(image.shape)}")
    work, memory_axes = _memory_view(image)
    with warnings.catch_warnings():  # a read-only view over the file's bytes: only ever read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        volume = torch.from_numpy(work)
    try:  # NaN/inf or a constant image
        CheckVolumed(num_classes=1)({"image": volume[None]})
    except InputError as err:
        raise InputError(None, err.problem) from None

    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64)),
                                           nib.orientations.axcodes2ornt(depth_axcodes(depth_axis)))
    model_of_native = [int(k) for k in ornt[:, 0]]
    model_axes = tuple(memory_axes.index(model_of_native.index(k)) for k in range(3))
    flips = tuple(bool(ornt[model_of_native.index(k), 1] < 0) for k in range(3))

    # the head threshold from the voxels head_foreground samples on the re-oriented image: its flat C-order
    # positions, mapped through the orientation onto memory offsets and gathered from the stored array
    grid_shape = tuple(work.shape[model_axes[k]] for k in range(3))
    offsets = torch.zeros(1, dtype=torch.int64)
    for k, index in enumerate(head_sample_index(grid_shape)):
        index = torch.from_numpy(index)
        offsets = offsets + (grid_shape[k] - 1 - index if flips[k] else index) * work.strides[model_axes[k]] \
            // work.itemsize
    threshold = head_threshold(volume.reshape(-1)[offsets], fraction)
    plane = volume.amax(dim=0)
    profiles = (volume.amax(dim=(1, 2)), plane.amax(dim=1), plane.amax(dim=0))
    start, end = [], []
    for profile in profiles:
        hits = torch.nonzero(profile > threshold)
        if hits.numel() == 0:
            raise InputError(None, "no voxel above the head threshold: nothing to segment")
        start.append(int(hits[0]) - margin)
        end.append(int(hits[-1]) + margin + 1)
    grid = GridMap(tuple(image.shape), memory_axes, model_axes, flips, tuple(start), tuple(end),
                   tuple(int(s) for s in spatial_size), float(threshold))

    # Resized(mode="area") on the zero-padded crop, without making either: the slowest memory axis by summing
    # each window's planes (int16 -> float32 on the fly), the other two by matrix products; the padding is
    # left out of the sums but counted in the window sizes
    inside, in_box = grid._overlap()
    crop, size = volume[inside], [grid.spatial_size[grid.model_axes.index(w)] for w in range(3)]
    lo0, hi0 = in_box[0].start, in_box[0].stop
    small = torch.zeros((size[0], *crop.shape[1:]), dtype=torch.float32)
    for j, (s, e) in enumerate(zip(*(t.tolist() for t in _windows(grid.box_shape[0], size[0])))):
        a, b = max(s, lo0), min(e, hi0)
        if a < b:
            small[j] = crop[a - lo0:b - lo0].sum(dim=0, dtype=torch.float32) / (e - s)
    for axis in (1, 2):
        small = _resize_axis(small, axis, _pool_weights(grid.box_shape[axis], size[axis], in_box[axis].start,
                                                        in_box[axis].stop))
    model = grid.to_model_order(small[None])
    return HeadZScored("image", fraction=fraction)({"image": model})["image"].float(), grid
