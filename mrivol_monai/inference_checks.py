"""The input checks of ``mrivol predict`` as dictionary transforms, so the inference bundle
(``configs/inference.json``) refuses the same inputs instead of measuring them: an image too small to hold a
head (0 mL with exit 0 otherwise), and a DICOM folder that holds several series (MONAI's ``ITKReader`` would
silently read the first) unless the bundle's ``series`` setting names one of them.

The checks themselves are :mod:`mrivol_monai.predict`'s (``check_field_of_view``, ``dicom_series``); this
module only applies them to the bundle's data dictionaries.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from mrivol_monai.errors import InputError
from mrivol_monai.predict import check_field_of_view, dicom_series

__all__ = ["CheckDicomSeriesd", "CheckFieldOfViewd"]


class CheckDicomSeriesd(MapTransform):
    """Before loading: a DICOM folder in ``keys`` must hold one series, or ``series`` (a full id, as the
    error lists them) must be one of its series; otherwise :class:`InputError` listing its series (ids,
    descriptions, file counts). Files pass unchanged. Give the loader ``ITKReader(series_name=series)``."""

    def __init__(self, keys: KeysCollection, series: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series = series or None

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            folder = Path(str(d[key]))
            if not folder.is_dir():
                continue
            found = dicom_series(folder)
            ids = [uid for uid, _, _ in found]
            if (len(found) <= 1 and self.series is None) or self.series in ids:
                continue
            listed = "; ".join(f"{uid} ({desc or 'no description'}, {n} files)" for uid, desc, n in found)
            if self.series is None:
                raise InputError(folder, f"holds {len(found)} DICOM series, so it is not clear which to measure: "
                                         f"{listed}; choose one with --series ID (or give each series its own folder)")
            raise InputError(folder, f"has no DICOM series {self.series!r} (--series takes a full id): {listed or 'none'}")
        return d


class CheckFieldOfViewd(MapTransform):
    """After loading: :class:`InputError` unless each loaded (1, X, Y, Z) image in ``keys`` is large enough to
    hold a head (:func:`mrivol_monai.predict.check_field_of_view`, voxel sizes from the file's affine)."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = img.meta if isinstance(img, MetaTensor) else {}
            affine = meta.get("original_affine", meta.get("affine", np.eye(4)))
            check_field_of_view(tuple(img.shape[1:]), np.asarray(affine, dtype=np.float64),
                                meta.get("filename_or_obj", key))
        return d
