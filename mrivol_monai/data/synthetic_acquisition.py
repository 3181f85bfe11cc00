"""SynthIXI acquisition: per-site scanner grids, orientation codes, T1 contrast, bias field, blur and noise.

A site turns a tissue map into an int16 T1 image the way its scanner would: its own tissue contrast and
intensity scale, a smooth multiplicative bias field, partial-volume blur and Rician (magnitude) noise.
Sites store their volumes in different orientations (axis codes), each with an exact nibabel affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# name -> (shape, voxel size in mm along the array axes). Every grid covers the same 240 x 240 x 180 mm
# field of view as IXI's T1 scans; "default" is IXI at half resolution, "tiny" is for tests.
GEOMETRIES: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "default": ((128, 128, 75), (1.875, 1.875, 2.4)),
    "ixi": ((256, 256, 150), (0.9375, 0.9375, 1.2)),
    "tiny": ((40, 40, 30), (6.0, 6.0, 6.0)),
}
FOV_TOP_MM = 105.0  # superior edge of every field of view, mm above the brain centre


@dataclass(frozen=True)
class SiteProtocol:
    """How one IXI site's scanner renders tissue. ``contrast`` is indexed by anatomy tissue class, WM = 1."""

    name: str
    scanner: str
    axcodes: str  # nibabel axis codes of the stored array, e.g. "RAS", "PIR"
    contrast: tuple[float, ...]
    scale: float  # stored intensity of white matter
    noise: float  # Rician noise sigma as a fraction of white matter
    bias: float  # standard deviation of the log bias field's polynomial coefficients
    blur_mm: float  # Gaussian partial-volume blur (sigma, mm)
    texture: float  # relative amplitude of smooth within-tissue intensity variation


#             air  skin fat  bone marrow soft csf  gm   wm   vent thal caud put  amyg pall cbgm cbwm bstm eye  orbit
_GUYS = (0.0, .55, 1.05, .06, .70, .42, .20, .60, 1.0, .18, .84, .66, .70, .62, .88, .58, .92, .86, .16, 1.0)
_HH = (0.0, .50, .95, .05, .65, .38, .11, .50, 1.0, .10, .80, .59, .63, .55, .86, .50, .93, .85, .10, .92)
_IOP = (0.0, .72, 1.45, .09, .95, .58, .33, .72, 1.0, .30, .89, .76, .80, .74, .93, .70, .96, .90, .28, 1.35)

SITE_PROTOCOLS: dict[str, SiteProtocol] = {
    "Guys": SiteProtocol("Guys", "Philips Intera 1.5T", "RAS", _GUYS, 900.0, 0.030, 0.10, 0.7, 0.03),
    "HH": SiteProtocol("HH", "Philips Intera 3T", "PIR", _HH, 1500.0, 0.022, 0.25, 0.5, 0.03),
    "IOP": SiteProtocol("IOP", "GE Signa 1.5T", "LPS", _IOP, 3200.0, 0.055, 0.20, 1.1, 0.05),
}

_AXIS_OF = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def grid_affine(axcodes: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """(4, 4) voxel -> scanner RAS affine of a grid stored with ``axcodes``, centred on the head."""
    if sorted(_AXIS_OF[c][0] for c in axcodes) != [0, 1, 2]:
        raise ValueError(f"axis codes {axcodes!r} do not name three different axes")
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for array_axis, code in enumerate(axcodes):
        world_axis, sign = _AXIS_OF[code]
        affine[world_axis, array_axis] = sign * spacing[array_axis]
    extent = np.abs(affine[:3, :3]) @ np.asarray(shape, float)  # field of view along R, A, S (mm)
    centre = np.array([0.0, 0.0, FOV_TOP_MM - extent[2] / 2])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def voxel_centres(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """(X*Y*Z, 3) float32 scanner coordinates (mm) of voxel centres, in C order of the array."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:].astype(np.float32)).T


def _bias_field(world: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) mm -> (N,) smooth multiplicative field exp(quadratic polynomial), about 1 at the centre."""
    u = world / np.float32(100.0)
    x, y, z = u[:, 0], u[:, 1], u[:, 2] - np.float32(0.2)
    terms = (x, y, z, x * y, y * z, x * z, x * x, y * y, z * z)
    c = rng.normal(0.0, strength, len(terms)).astype(np.float32)
    return np.exp(sum(ci * t for ci, t in zip(c, terms)))


def acquire(tissue: np.ndarray, world: np.ndarray, protocol: SiteProtocol, spacing: tuple[float, float, float],
            rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) uint8 tissue map + (X*Y*Z, 3) voxel centres -> (X, Y, Z) int16 T1 image of this site."""
    lut = np.asarray(protocol.contrast, np.float32)
    image = lut[tissue]
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape, dtype=np.float32), 1.0)
    texture *= np.float32(protocol.texture) / max(float(texture.std()), 1e-6)
    image *= 1.0 + texture
    image *= _bias_field(world, protocol.bias, rng).reshape(tissue.shape)
    sigma = [protocol.blur_mm / s for s in spacing]
    image = ndimage.gaussian_filter(image, sigma, truncate=3.0)
    noise = np.float32(protocol.noise)
    real = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    imag = noise * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag) * np.float32(protocol.scale)
    return np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.int16)
