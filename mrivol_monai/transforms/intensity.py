"""Head mask and intensity centring (z-score over the head).

MONAI's ``NormalizeIntensityd(nonzero=True)`` masks on exact zeros only; scanner background carries Rician
noise, so we compute statistics inside a thresholded head mask instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

HEAD_THRESHOLD_FRACTION = 0.1


def head_foreground(img: torch.Tensor | np.ndarray, fraction: float = HEAD_THRESHOLD_FRACTION):
    """(C, *spatial) image -> boolean mask of the head: voxels above ``fraction`` x the 99th percentile.

    A robust percentile instead of the maximum so that one hot voxel (fat, vessel, artefact) does not push
    the threshold up. Works on numpy arrays and torch tensors (``CropForegroundd`` passes either).
    """
    if isinstance(img, torch.Tensor):
        # plain tensor: MetaTensor's per-op metadata handling made the bounding-box search 3x slower
        img = img.as_tensor() if isinstance(img, MetaTensor) else img
        # every k-th voxel in flat (C-order) index, ~250k of them, gives the percentile to well under 1 %, 5x
        # faster than all; gathered by index, because flattening a permuted (re-oriented) view copies it whole
        step = max(1, img.numel() // 250_000)
        flat_index = torch.arange(0, img.numel(), step, device=img.device)
        sample = img.detach()[torch.unravel_index(flat_index, img.shape)].float()
        high = sample.kthvalue(max(1, int(round(0.99 * sample.numel())))).values
    else:
        high = np.percentile(img, 99)
    return img > fraction * high


class HeadZScored(MapTransform):
    """Z-score each image with the mean and std of its head voxels; background is shifted and scaled alike.

    Input and output (C, *spatial) float. A volume with no head voxels (all zero) is returned unchanged.
    """

    def __init__(self, keys: KeysCollection, fraction: float = HEAD_THRESHOLD_FRACTION,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fraction = fraction

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            mask = head_foreground(img, self.fraction)
            if not bool(mask.any()):
                continue
            voxels = img[mask]
            mean, std = voxels.mean(), voxels.std()
            d[key] = (img - mean) / (std if float(std) > 0 else 1.0)
        return d
