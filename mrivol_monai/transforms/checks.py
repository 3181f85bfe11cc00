"""Checks on loaded volumes, so bad input fails with one line naming the file instead of deep in torch."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from mrivol_monai.errors import InputError


def _source(img: torch.Tensor, fallback: str) -> str:
    if isinstance(img, MetaTensor):
        return str(img.meta.get("filename_or_obj", fallback))
    return fallback


class CheckVolumed(Transform):
    """Validate a loaded, channel-first ``{"image": (1, X, Y, Z), "label": (1, X, Y, Z)}`` pair.

    Raises :class:`InputError` for: not a single-channel 3D image, NaN/inf voxels, an all-constant image,
    image/label shape mismatch, label values that are not integers in ``[0, num_classes)``.
    ``label_key`` may be absent (inference). A ``Transform`` subclass so ``CacheDataset`` caches past it.
    """

    def __init__(self, num_classes: int, image_key: str = "image", label_key: str = "label") -> None:
        self.num_classes = int(num_classes)
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        img = data[self.image_key]
        src = _source(img, self.image_key)
        if img.ndim != 4 or img.shape[0] != 1:
            raise InputError(src, f"expected a single 3D image, got array shape {tuple(img.shape)} (channel first)")
        # one pass: min and max are NaN or infinite exactly when some voxel is
        low, high = (float(v) for v in torch.aminmax(torch.as_tensor(img).detach()))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InputError(src, "image contains NaN or infinite values")
        if high == low:
            raise InputError(src, f"image is constant ({low}): nothing to segment")
        if self.label_key in data:
            lab = data[self.label_key]
            lsrc = _source(lab, self.label_key)
            if tuple(lab.shape) != tuple(img.shape):
                raise InputError(lsrc, f"label shape {tuple(lab.shape)[1:]} differs from image shape {tuple(img.shape)[1:]}")
            lab_t = torch.as_tensor(lab)
            values = torch.unique(lab_t)
            bad = values[(values < 0) | (values >= self.num_classes) | (values != torch.round(values))]
            if bad.numel():
                raise InputError(lsrc, f"label values {bad.tolist()[:5]} out of range 0..{self.num_classes - 1}")
        return data
