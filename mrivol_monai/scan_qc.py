"""Quality control of one segmented scan: ``pass`` or the reasons, from the image, the native mask and the volumes.

Reasons (each one short line; :func:`qc_verdict` joins them with ``;`` for the ``qc`` column of ``volumes.csv``):

- ``cut off``: the mask touches the border of the field of view, so part of the structure is probably outside the
  image (a brain mask reaching the first or last voxel of any axis).
- ``head crop failed``: the head foreground (the threshold the model's head crop uses,
  :func:`mrivol_monai.transforms.head_foreground`) covers more than :data:`MAX_HEAD_FRACTION` of the field of
  view (no dark background: the crop keeps everything) or less than :data:`MIN_HEAD_FRACTION` (a speck).
- ``low SNR``: mean intensity inside the mask over the noise sigma below :data:`MIN_SNR`; sigma from the
  standard deviation of the eight corner blocks of the field of view (air in a head scan) divided by 0.655, the
  ratio of a Rayleigh (magnitude-image background) standard deviation to the underlying Gaussian sigma
  (Gudbjartsson & Patz 1995, Magn Reson Med 34:910-914). A background of exact zeros (skull-stripped or
  zero-filled) has no measurable noise and is not flagged.
- ``<name>_ml outside adult range``: a volume outside :data:`ADULT_RANGES_ML`.
- ``<name> asymmetry``: ``|left - right| / max(left, right)`` above :data:`MAX_ASYMMETRY` for a structure with
  ``<name>_left`` and ``<name>_right`` volumes (the two-stage subcortical task).

Normative sources (numbers as their abstracts report them):

- Brain volume: 800-1700 mL. Ahmad, Jalaluddin & Abdullah, "MR volumetry of total intracranial and brain volume
  in normal adult population aged 40 years old and above", J Biomed Clin Sci (jbcs.amdi.usm.my, article 232):
  58 adults aged 41-77, total brain volume 1338 +/- 92 mL (men) and 1164 +/- 90 mL (women); the range is the
  women's mean - 4 SD (804) to the men's mean + 4 SD (1706), rounded. It contains the 791-1500 cm3 observed on
  CT in 58 healthy adults aged 18-95 ("On two equations about brain volume, cranial capacity and age", Surg
  Radiol Anat, doi:10.1007/s00276-010-0650-4). Our ``brain`` class is the SynthIXI brain mask; its definition
  (e.g. brainstem, cerebellum) differs from each study's, hence the wide range.
- Subcortical structures: no range is applied (no normative table whose numbers we checked; Potvin et al. 2016,
  NeuroImage 137:9-20 and Data in Brief 9:732-736, give FreeSurfer norms as formulas of age, sex, eTIV and
  scanner, which need inputs we do not have).
- Asymmetry: Lucarelli et al., "MR imaging of hippocampal asymmetry at 3T in a multiethnic, population-based
  sample: results from the Dallas Heart Study", AJNR 2013;34(4):752-757, doi:10.3174/ajnr.A3308: in 2082 adults
  the 90th percentile of |L - R| / larger hippocampus was 8.5 % (FreeSurfer) and 17.9 % (FSL-FIRST). The limit
  0.35 is about twice the larger of the two, applied to every left/right structure (population subcortical
  asymmetries are subtle: Guadalupe et al. 2017, Brain Imaging Behav 11:1497-1514, 15,847 scans; their
  per-structure spreads are not used here).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mrivol_monai.transforms.intensity import HEAD_THRESHOLD_FRACTION, head_sample_index

__all__ = [
    "ADULT_RANGES_ML",
    "MAX_ASYMMETRY",
    "QC_PASS",
    "asymmetry",
    "estimate_snr",
    "head_fraction",
    "qc_reasons",
    "qc_verdict",
    "touches_border",
]

QC_PASS = "pass"
ADULT_RANGES_ML: dict[str, tuple[float, float]] = {"brain": (800.0, 1700.0)}
MAX_ASYMMETRY = 0.35
MIN_SNR = 5.0
MAX_HEAD_FRACTION = 0.85
MIN_HEAD_FRACTION = 0.02
RAYLEIGH_STD_RATIO = 0.655  # std of a Rayleigh variable / sigma of the Gaussian noise behind it: sqrt(2 - pi/2)
CORNER_FRACTION = 8  # corner blocks are 1/8 of each axis (at least 2 voxels)


def touches_border(mask: np.ndarray) -> bool:
    """True if any non-zero voxel of the (X, Y, Z) mask lies on a face of the array."""
    mask = np.asarray(mask)
    return any(mask.take(i, axis=a).any() for a in range(mask.ndim) for i in (0, -1))


def head_fraction(image: np.ndarray) -> float:
    """Fraction of the (X, Y, Z) voxels above the head threshold (10 % of the 99th percentile), on the ~250k-voxel
    sample the model's head crop uses."""
    sample = np.asarray(image)[head_sample_index(tuple(image.shape))].astype(np.float32)
    threshold = HEAD_THRESHOLD_FRACTION * np.percentile(sample, 99)
    return float(np.mean(sample > threshold))


def _corners(image: np.ndarray) -> np.ndarray:
    sizes = [max(2, n // CORNER_FRACTION) for n in image.shape]
    blocks = []
    for ends in np.ndindex(2, 2, 2):
        index = tuple(slice(0, s) if e == 0 else slice(n - s, n) for e, s, n in zip(ends, sizes, image.shape))
        blocks.append(np.asarray(image[index], dtype=np.float64).ravel())
    return np.concatenate(blocks)


def estimate_snr(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean (X, Y, Z) ``image`` intensity inside the non-zero ``mask`` over the noise sigma of the corner blocks;
    ``inf`` if the corners are constant (no noise to measure), ``nan`` for an empty mask."""
    inside = np.asarray(mask) > 0
    if not inside.any():
        return float("nan")
    spread = float(np.std(_corners(image)))
    if spread == 0.0:
        return float("inf")
    return float(np.mean(np.asarray(image)[inside], dtype=np.float64)) / (spread / RAYLEIGH_STD_RATIO)


def asymmetry(left: float, right: float) -> float:
    """``|left - right| / max(left, right)``; 0 when both are 0."""
    larger = max(left, right)
    return abs(left - right) / larger if larger > 0 else 0.0


def qc_reasons(image: np.ndarray, mask: np.ndarray, volumes: Mapping[str, float]) -> list[str]:
    """Reasons to doubt one scan's volumes (empty: it passes): (X, Y, Z) ``image`` as read, its native label
    ``mask`` and ``volumes`` in mL by structure name."""
    reasons = []
    if touches_border(mask):
        reasons.append("cut off: mask touches the field-of-view border")
    fraction = head_fraction(image)
    if fraction > MAX_HEAD_FRACTION or fraction < MIN_HEAD_FRACTION:
        reasons.append(f"head crop failed: head foreground is {100 * fraction:.0f}% of the field of view "
                       f"(expected {100 * MIN_HEAD_FRACTION:.0f}-{100 * MAX_HEAD_FRACTION:.0f}%)")
    snr = estimate_snr(image, mask)
    if snr < MIN_SNR:  # nan (empty mask) compares False: an empty mask is judged by the volume ranges
        reasons.append(f"low SNR: {snr:.1f} < {MIN_SNR:.0f}")
    for name, (low, high) in ADULT_RANGES_ML.items():
        if name in volumes and not low <= volumes[name] <= high:
            reasons.append(f"{name}_ml {volumes[name]:.0f} outside adult range {low:.0f}-{high:.0f}")
    for name in volumes:
        if name.endswith("_left") and f"{name[:-5]}_right" in volumes:
            ai = asymmetry(volumes[name], volumes[f"{name[:-5]}_right"])
            if ai > MAX_ASYMMETRY:
                reasons.append(f"{name[:-5]} asymmetry {ai:.2f} > {MAX_ASYMMETRY:.2f}")
    return reasons


def qc_verdict(reasons: list[str]) -> str:
    """The ``qc`` column: ``pass``, or the reasons joined by ``;``."""
    return "; ".join(r.replace(";", ",") for r in reasons) if reasons else QC_PASS
