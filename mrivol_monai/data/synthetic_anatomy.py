"""SynthIXI anatomy: a real whole-head label map per subject, aged, then moved and warped onto a scanner grid.

A subject is one of the 20 shipped FreeSurfer label maps (:mod:`mrivol_monai.data.label_maps`) with
- age-related atrophy in the map's own space: the lateral ventricles grow into the white matter around
  them (0-3 mm) and the cortex thins (cortical voxels that touch the extra-cerebral CSF become CSF where
  a smooth random field says so), both scaled by age;
- a random similarity-plus-stretch transform (head size +-10 %, per-axis stretch +-3 %, rotation
  +-8 degrees per axis, translation +-6 mm) and a smooth random displacement (2 mm RMS per component
  on a 5x5x5 control grid across the field of view, 45-60 mm apart, interpolated trilinearly), small enough that the map stays a diffeomorphism in
  practice (tests check the Jacobian on the grid).

Coordinates are mm in scanner RAS. The brain's centre of mass (ICV) lands near the world origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from mrivol_monai.data import label_maps

WHITE_MATTER = {2: 4, 41: 43}  # cerebral WM label -> lateral ventricle label on the same side
LATERAL_VENTRICLES = (4, 43)
CORTEX = (3, 42)
MAX_VENTRICLE_GROWTH_MM = 3
DISPLACEMENT_RMS_MM = 2.0


@dataclass(frozen=True)
class Anatomy:
    """Random draw of one subject's anatomy (everything needed to place its label map on any grid)."""

    map_index: int
    age: float
    sex: str
    atrophy: float  # 0 (young) .. 1 (strong)
    linear: np.ndarray  # (3, 3) subject mm -> map mm (inverse of scale/stretch/rotation)
    translation: np.ndarray  # (3,) mm: where the map's ICV centre lands in the scanner frame
    displacement: np.ndarray  # (3, 5, 5, 5) mm control grid of the smooth warp, map axes
    cortex_field_seed: int


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_anatomy(rng: np.random.Generator, map_index: int) -> Anatomy:
    """Draw a subject built on shipped label map ``map_index`` with IXI-like age (20-86) and sex."""
    age = float(rng.uniform(20.0, 86.0))
    sex = "F" if rng.random() < 0.55 else "M"
    atrophy = float(np.clip((age - 40.0) / 45.0, 0.0, 1.0) * rng.uniform(0.4, 1.0))
    scale = float(np.clip(rng.normal(1.0, 0.045), 0.9, 1.1)) * rng.uniform(0.97, 1.03, 3)
    rotation = _rotation(np.radians(rng.uniform(-8.0, 8.0, 3)))
    linear = np.diag(1.0 / scale) @ rotation.T
    translation = rng.uniform(-6.0, 6.0, 3)
    displacement = rng.normal(0.0, DISPLACEMENT_RMS_MM, (3, 5, 5, 5))
    return Anatomy(map_index, age, sex, atrophy, linear, translation, displacement, int(rng.integers(2**31)))


@lru_cache(maxsize=label_maps.N_MAPS)
def _map_geometry(map_index: int) -> dict[str, np.ndarray]:
    """Per-map quantities reused by every subject drawn from it (computed once per process).

    ``rings[k]``: flat indices of white-matter voxels k+1 mm (6-neighbour steps) from the lateral
    ventricles; ``cortex_edge``: flat indices of cortical voxels touching extra-cerebral CSF;
    ``centre``: the ICV centre of mass in map voxels.
    """
    labels, _ = label_maps.load_map(map_index)
    ventricles = np.isin(labels, LATERAL_VENTRICLES)
    box = tuple(slice(max(s.start - 5, 0), s.stop + 5) for s in ndimage.find_objects(ventricles.astype(np.uint8))[0])
    sub_labels, grown = labels[box], ventricles[box]
    white = np.isin(sub_labels, tuple(WHITE_MATTER))
    index = np.arange(labels.size).reshape(labels.shape)[box]
    rings = []
    for _ in range(MAX_VENTRICLE_GROWTH_MM):
        new = ndimage.binary_dilation(grown) & ~grown
        rings.append(index[new & white])
        grown = grown | new
    csf_near = ndimage.binary_dilation(labels == label_maps.CSF)
    cortex_edge = np.flatnonzero(csf_near & np.isin(labels, CORTEX))
    centre = np.array(ndimage.center_of_mass(label_maps.icv_mask(labels)))
    return {"rings": rings, "cortex_edge": cortex_edge, "centre": centre}


def _linear_weights(k: int, n: int) -> np.ndarray:
    """(n, k) float32 weights of linear interpolation from k control points to n samples, ends aligned."""
    pos = np.linspace(0.0, k - 1.0, n)
    lo = np.minimum(pos.astype(int), k - 2)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n, k), np.float32)
    weights[np.arange(n), lo] = 1.0 - frac
    weights[np.arange(n), lo + 1] = frac
    return weights


def smooth_field(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(a, b, c) or (C, a, b, c) control values -> (X, Y, Z) or (C, X, Y, Z) float32 trilinear interpolation
    with corners on corners.

    Separable, as three matrix products: ~30 ms for a 256x256x150 grid, >10x faster than
    ``torch.nn.functional.interpolate`` on the same grid (0.39 s measured).
    """
    coarse = np.asarray(coarse, np.float32)
    if coarse.ndim == 4:
        return np.stack([smooth_field(c, shape) for c in coarse])
    a, b, c = coarse.shape
    x, y, z = shape
    out = coarse @ _linear_weights(c, z).T  # (a, b, Z)
    out = _linear_weights(b, y) @ out  # (a, Y, Z)
    return (_linear_weights(a, x) @ out.reshape(a, y * z)).reshape(x, y, z)


def aged_labels(anatomy: Anatomy) -> np.ndarray:
    """The subject's label map in map space: the shipped map with this subject's atrophy applied."""
    labels, _ = label_maps.load_map(anatomy.map_index)
    geometry = _map_geometry(anatomy.map_index)
    out = labels.copy()
    flat = out.reshape(-1)
    growth = int(round(anatomy.atrophy * MAX_VENTRICLE_GROWTH_MM))
    for ring in geometry["rings"][:growth]:
        for white, ventricle in WHITE_MATTER.items():
            flat[ring[flat[ring] == white]] = ventricle
    edge = geometry["cortex_edge"]
    rng = np.random.default_rng(anatomy.cortex_field_seed)
    field = smooth_field(rng.uniform(0.0, 1.0, (8, 8, 8)), labels.shape).reshape(-1)[edge]
    flat[edge[field < 0.6 * anatomy.atrophy]] = label_maps.CSF
    return out


def map_coordinates_for_grid(anatomy: Anatomy, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) float32 map-voxel coordinates of every voxel centre of the target grid (shape, affine)."""
    _, map_affine = label_maps.load_map(anatomy.map_index)
    centre_mm = map_affine[:3, :3] @ _map_geometry(anatomy.map_index)["centre"] + map_affine[:3, 3]
    to_voxel = np.linalg.inv(map_affine[:3, :3])
    # voxel ijk -> world -> (minus translation) -> linear -> map mm around the ICV centre -> map voxel
    linear = to_voxel @ anatomy.linear @ affine[:3, :3]
    offset = to_voxel @ (anatomy.linear @ (affine[:3, 3] - anatomy.translation) + centre_mm - map_affine[:3, 3])
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    warp = smooth_field(np.tensordot(to_voxel, anatomy.displacement, axes=(1, 0)), shape)
    coords = np.empty((3, *shape), np.float32)
    for c in range(3):
        coords[c] = (linear[c, 0] * axes[0])[:, None, None] + (linear[c, 1] * axes[1])[None, :, None] \
            + (linear[c, 2] * axes[2])[None, None, :] + np.float32(offset[c])
        coords[c] += warp[c]
    return coords
