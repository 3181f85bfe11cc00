"""2D slice augmentations of paper E1, each switchable by name from the bundle config.

Names: ``flip`` (horizontal and vertical, p=0.5 each), ``rotation`` (up to 30 degrees, p=0.3), ``noise``
(Gaussian, mean 0, std 0.1, p=0.4), ``contrast`` (contrast and brightness, factor 1.4, p=0.4), ``equalize``
(random histogram equalisation, p=0.4); ``mix`` = all of them; ``none`` or ``[]`` = no augmentation.

``domain`` is not from the paper: contrast-agnostic domain randomisation in the spirit of SynthSeg, so that
a model trained on three simulated scanners meets other contrasts and resolutions. On the z-scored
slice: a random monotone-or-not intensity remapping through 4-12 control points (``RandHistogramShiftd``,
p=0.8: each tissue's intensity band moves on its own, the slice-level stand-in for a random intensity
per label), a random gamma in [0.5, 2] (p=0.5), a smooth multiplicative bias (p=0.5), a random blur of
0.3-1.5 pixels (lower resolution, p=0.3) and Gaussian noise of 0-0.15 (p=0.4).

"Contrast/brightness change (factor 1.4)" is our reading of the paper: under the one ``contrast`` switch
(each part p=0.4), MONAI's ``RandScaleIntensityd(factors=0.4)`` multiplies intensities by 1 + f with
f in [-0.4, 0.4] (brightness), and ``RandAdjustContrastd`` applies a gamma in [1/1.4, 1.4] (contrast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianSmoothd,
    RandGaussianNoised,
    RandHistogramShiftd,
    RandLambdad,
    RandRotated,
    RandScaleIntensityd,
)
from monai.transforms.utils import equalize_hist

AUGMENTATIONS = ("flip", "rotation", "noise", "contrast", "equalize", "domain")
PAPER_AUGMENTATIONS = AUGMENTATIONS[:5]  # what ``mix`` means: the paper's five


def equalize(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float image -> histogram-equalised image mapped back onto the input's own value range.

    MONAI ships ``HistogramNormalize`` (deterministic, fixed output range) but no random equalise;
    ``RandLambdad`` supplies the probability and this keeps the z-scored range.
    """
    arr = torch.as_tensor(img).detach().cpu().numpy()
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return img
    scaled = (arr - lo) / (hi - lo) * 255.0
    eq = equalize_hist(scaled, num_bins=256, min=0, max=255).astype(np.float32)
    out = torch.as_tensor(eq / 255.0 * (hi - lo) + lo, dtype=torch.float32)
    return out


def resolve(names: str | Sequence[str] | None) -> list[str]:
    """Normalise a config value (``"mix"``, ``"none"``, ``"flip"``, a list of names) into a list of names."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        key = str(name).lower()
        if key == "mix":
            out.extend(a for a in PAPER_AUGMENTATIONS if a not in out)
        elif key == "none":
            continue
        elif key in AUGMENTATIONS:
            if key not in out:
                out.append(key)
        else:
            raise ValueError(f"unknown augmentation {name!r}; choose from {list(AUGMENTATIONS) + ['mix', 'none']}")
    if "domain" in out:  # intensity randomisation first, then the paper's ones (fixed order otherwise)
        out = ["domain"] + [a for a in out if a != "domain"]
    return out


def build(names: str | Sequence[str] | None, image_key: str = "image", label_key: str = "label") -> Compose:
    """Compose of 2D dictionary augmentations for (C, H, W) image/label slices, in the fixed order of
    :data:`AUGMENTATIONS`. Geometric ones move image and label together; intensity ones touch the image only.
    """
    keys = [image_key, label_key]
    parts = []
    for name in resolve(names):
        if name == "domain":
            parts += [RandHistogramShiftd(image_key, num_control_points=(4, 12), prob=0.8),
                      RandAdjustContrastd(image_key, prob=0.5, gamma=(0.5, 2.0)),
                      RandBiasFieldd(image_key, degree=3, coeff_range=(0.0, 0.3), prob=0.5),
                      RandGaussianSmoothd(image_key, sigma_x=(0.3, 1.5), sigma_y=(0.3, 1.5), prob=0.3),
                      RandGaussianNoised(image_key, prob=0.4, mean=0.0, std=0.15)]
        elif name == "flip":
            parts += [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1)]
        elif name == "rotation":
            parts.append(RandRotated(keys, range_x=math.radians(30), prob=0.3, keep_size=True,
                                     mode=("bilinear", "nearest"), padding_mode="border"))
        elif name == "noise":
            parts.append(RandGaussianNoised(image_key, prob=0.4, mean=0.0, std=0.1))
        elif name == "contrast":
            parts += [RandScaleIntensityd(image_key, factors=0.4, prob=0.4),
                      RandAdjustContrastd(image_key, prob=0.4, gamma=(1 / 1.4, 1.4))]
        elif name == "equalize":
            parts.append(RandLambdad(image_key, func=equalize, prob=0.4))
    return Compose(parts)
