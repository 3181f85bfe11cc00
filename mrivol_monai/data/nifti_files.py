"""What every module that finds NIfTI files or counts their voxels shares: the file suffixes and the volume
of one voxel. numpy only, so the cohort generator's spawned workers import it without MONAI.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NIFTI_SUFFIXES", "voxel_mm3"]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")  # longest first, so stripping one leaves the stem


def voxel_mm3(affine: np.ndarray) -> float:
    """Volume (mm^3) of one voxel of a (4, 4) voxel -> world affine: ``|det(affine[:3, :3])|``."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
