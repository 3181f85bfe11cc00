"""SynthIXI anatomy: a procedural adult head as implicit shapes in a patient RAS frame (millimetres).

Every tissue is a signed-distance-like function of position (negative inside), so a subject can be
rasterised onto any scanner grid and orientation: the caller passes world coordinates of voxel centres
and gets one tissue class per voxel. Sizes are set in a "reference" adult brain and scaled per subject.

Coordinates: x = patient right, y = anterior, z = superior; origin near the centre of the brain.
Written by hand because neither MONAI nor scipy ships a head phantom with subcortical anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue classes (uint8 values of the internal tissue map).
AIR, SKIN, SCALP_FAT, BONE, MARROW, SOFT, CSF, GM, WM, VENTRICLE = range(10)
THALAMUS, CAUDATE, PUTAMEN, AMYGDALA, PALLIDUM, CB_GM, CB_WM, BRAINSTEM, EYE, ORBIT_FAT = range(10, 20)
N_TISSUES = 20
TISSUE_NAMES = (
    "air", "skin", "scalp_fat", "bone", "marrow", "soft_tissue", "csf", "grey_matter", "white_matter",
    "ventricle", "thalamus", "caudate", "putamen", "amygdala", "pallidum", "cerebellar_gm",
    "cerebellar_wm", "brainstem", "eye", "orbital_fat",
)
# Tissue class -> subcortical label (1 thalamus, 2 caudate, 3 putamen, 4 amygdala; left+right merged).
SUBCORTICAL_OF_TISSUE = {THALAMUS: 1, CAUDATE: 2, PUTAMEN: 3, AMYGDALA: 4}

# Volume (mL) of the unperturbed reference brain envelope (cerebrum + cerebellum + brainstem) at
# scale 1, measured once with `reference_envelope_ml(0.5)`; used to hit target ICVs.
REFERENCE_ENVELOPE_ML = 1411.0

_F32 = np.float32


@dataclass(frozen=True)
class Waves:
    """Sum of plane waves ``sum_k amp_k cos(k . p + phase_k)``: a cheap smooth random field."""

    k: np.ndarray  # (K, 3)
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K,)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) points -> (N,) field values."""
        return (np.cos(p @ self.k.T + self.phase) @ self.amp).astype(_F32)

    def distance_to_zero(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) points -> (N,) first-order distance |f| / |grad f| (mm) to the field's zero level set."""
        angle = p @ self.k.T + self.phase
        value = np.cos(angle) @ self.amp
        grad = (np.sin(angle) * self.amp) @ self.k
        return (np.abs(value) / np.maximum(_norm(grad), 1e-3)).astype(_F32)

    @staticmethod
    def random(rng: np.random.Generator, n: int, freq: tuple[float, float], rms: float) -> "Waves":
        """``n`` waves with random directions, ``|k|`` uniform in ``freq`` and field RMS ``rms``."""
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        k = direction * rng.uniform(*freq, size=(n, 1))
        amp = np.full(n, rms * np.sqrt(2.0 / n))
        return Waves(k.astype(_F32), rng.uniform(0, 2 * np.pi, n).astype(_F32), amp.astype(_F32))


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def ellipsoid_sd(p: np.ndarray, centre, radii, bumps: Waves | None = None, band: float = 0.3) -> np.ndarray:
    """(N, 3) points -> (N,) distance (mm, along the ray from ``centre``) to a bumpy ellipsoid; < 0 inside.

    Bumps are evaluated only within ``band`` (relative radius) of the surface, where distances matter.
    """
    rel = p - np.asarray(centre, _F32)
    q = rel / np.asarray(radii, _F32)
    d = _norm(q) + _F32(1e-6)
    surface = np.ones_like(d)
    if bumps is not None:
        near = np.flatnonzero(np.abs(d - 1.0) < band)
        surface[near] += bumps(q[near] / d[near, None])
    return _norm(rel) * (1.0 - surface / d)


def tube_sd(p: np.ndarray, nodes, radii, squash=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(N, 3) points -> (N,) distance to a chain of tapered capsules through ``nodes``; < 0 inside.

    ``squash`` scales the axes before measuring, flattening the tube's cross-section.
    """
    s = np.asarray(squash, _F32)
    nodes = np.asarray(nodes, _F32) * s
    q = p * s
    out = np.full(len(p), np.inf, _F32)
    for (a, b), (ra, rb) in zip(zip(nodes[:-1], nodes[1:]), zip(radii[:-1], radii[1:])):
        ab = b - a
        t = np.clip(((q - a) @ ab) / float(ab @ ab), 0.0, 1.0).astype(_F32)
        dist = _norm(q - a - t[:, None] * ab)
        np.minimum(out, dist - (ra + t * (rb - ra)), out=out)
    return out


@dataclass(frozen=True)
class Anatomy:
    """One subject's anatomy parameters. Lengths in the reference frame are multiplied by the scales."""

    age: float
    sex: str
    atrophy: float  # 0 (age 20) .. 1 (age ~85)
    icv_scale: float  # skull / intracranial cavity scale
    brain_scale: float  # brain envelope scale (< icv_scale: outer CSF)
    aspect: np.ndarray  # (3,) per-axis shape factors of the envelope
    rotation: np.ndarray  # (3, 3) patient frame -> world
    translation: np.ndarray  # (3,) mm
    skull_mm: float
    scalp_mm: float
    cortex_mm: float
    sulcus_mm: float
    ventricle_scale: float
    deep_scale: float
    envelope_bumps: Waves
    gyri: Waves
    folia: Waves
    deep_bumps: Waves
    jitter: np.ndarray  # (8, 3) mm offsets of the deep structures (4 structures x 2 sides)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw age, sex, head/brain size, atrophy, pose and shape noise for one adult (IXI ages 20-86)."""
    age = float(np.round(rng.uniform(20.0, 86.0), 1))
    sex = "F" if rng.random() < 0.55 else "M"
    atrophy = float(np.clip((age - 20.0) / 65.0, 0.0, 1.0))
    icv_ml = float(np.clip(rng.normal(1520.0 if sex == "M" else 1340.0, 110.0), 1100.0, 1800.0))
    brain_fraction = float(np.clip(0.86 - 0.13 * atrophy + rng.normal(0.0, 0.015), 0.66, 0.9))
    icv_scale = (icv_ml / REFERENCE_ENVELOPE_ML) ** (1 / 3)
    return Anatomy(
        age=age,
        sex=sex,
        atrophy=atrophy,
        icv_scale=icv_scale,
        brain_scale=icv_scale * brain_fraction ** (1 / 3),
        aspect=(1.0 + rng.normal(0.0, 0.03, 3)).astype(_F32),
        rotation=_rotation(rng.normal(0.0, [5.0, 3.0, 3.0])).astype(_F32),
        translation=np.clip(rng.normal(0.0, 3.0, 3), -6, 6).astype(_F32),
        skull_mm=float(rng.uniform(5.0, 7.5)),
        scalp_mm=float(rng.uniform(4.5, 7.0)),
        cortex_mm=float(2.8 - 0.5 * atrophy + rng.normal(0.0, 0.1)),
        sulcus_mm=float(2.0 + 2.4 * atrophy + rng.uniform(0.0, 0.4)),
        ventricle_scale=float(0.85 + 0.75 * atrophy + rng.normal(0.0, 0.08)),
        deep_scale=float(1.0 - 0.08 * atrophy + rng.normal(0.0, 0.04)),
        envelope_bumps=Waves.random(rng, 12, (1.5, 4.0), 0.025),
        gyri=Waves.random(rng, 36, (2 * np.pi / 32.0, 2 * np.pi / 22.0), 1.0),
        folia=Waves.random(rng, 16, (2 * np.pi / 12.0, 2 * np.pi / 9.0), 1.0),
        deep_bumps=Waves.random(rng, 6, (1.5, 3.0), 0.06),
        jitter=rng.normal(0.0, 1.2, (8, 3)).astype(_F32),
    )


# --- brain envelope (cerebrum, cerebellum, brainstem) in reference millimetres -------------------
_BASE_Y = np.array([-100, -60, -40, -25, 0, 20, 30, 45, 100], _F32)
_BASE_LATERAL = np.array([-14, -16, -22, -36, -40, -36, -22, -14, -10], _F32)
_BASE_MEDIAL = np.array([-14, -16, -22, -12, -12, -12, -20, -14, -10], _F32)


def _cerebrum_base(p: np.ndarray) -> np.ndarray:
    """Inferior limit (z) of the cerebrum: deep middle fossa laterally (temporal lobes), high medially."""
    lateral = np.interp(p[:, 1], _BASE_Y, _BASE_LATERAL)
    medial = np.interp(p[:, 1], _BASE_Y, _BASE_MEDIAL)
    w = np.clip((np.abs(p[:, 0]) - 12.0) / 10.0, 0.0, 1.0)
    return (medial + w * (lateral - medial) + 0.0025 * p[:, 0] ** 2).astype(_F32)  # curves up laterally


def _boxed(fn, p: np.ndarray, lo, hi) -> np.ndarray:
    """Evaluate a distance ``fn`` only for points inside the box [lo, hi]; +inf elsewhere (saves time)."""
    out = np.full(len(p), np.inf, _F32)
    mask = (p[:, 0] >= lo[0]) & (p[:, 0] <= hi[0]) & (p[:, 1] >= lo[1]) & (p[:, 1] <= hi[1])
    inside = np.flatnonzero(mask & (p[:, 2] >= lo[2]) & (p[:, 2] <= hi[2]))
    out[inside] = fn(p[inside])
    return out


def envelope_parts(p: np.ndarray, a: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) reference-frame points -> distances (reference mm) to cerebrum, cerebellum, brainstem.

    Cerebellum and brainstem distances are exact only within 20 mm of them (+inf further away).
    """
    cerebrum = ellipsoid_sd(p, (0, 0, 10), np.array([68, 86, 62]) * a.aspect, a.envelope_bumps)
    cerebrum = np.maximum(cerebrum, _cerebrum_base(p) - p[:, 2])

    def cerebellum_sd(q: np.ndarray) -> np.ndarray:
        d = ellipsoid_sd(q, (0, -52, -32), np.array([50, 30, 21]) * a.aspect, a.envelope_bumps)
        return np.maximum(d, q[:, 2] - (-14.0 + 0.12 * (q[:, 1] + 52.0)))

    def brainstem_sd(q: np.ndarray) -> np.ndarray:
        return tube_sd(q, [(0, -16, -6), (0, -26, -34), (0, -32, -66)], [11.0, 13.0, 9.0])

    cerebellum = _boxed(cerebellum_sd, p, (-82, -110, -80), (82, 6, 14))
    brainstem = _boxed(brainstem_sd, p, (-35, -62, -96), (35, 16, 26))
    return cerebrum, cerebellum, brainstem


def reference_envelope_ml(spacing_mm: float = 0.5) -> float:
    """Volume (mL) of the unperturbed reference brain envelope, counted on a regular grid."""
    flat = Anatomy(
        age=20.0, sex="F", atrophy=0.0, icv_scale=1.0, brain_scale=1.0, aspect=np.ones(3, _F32),
        rotation=np.eye(3, dtype=_F32), translation=np.zeros(3, _F32), skull_mm=6, scalp_mm=6,
        cortex_mm=3, sulcus_mm=2, ventricle_scale=1, deep_scale=1,
        envelope_bumps=Waves(np.zeros((1, 3), _F32), np.zeros(1, _F32), np.zeros(1, _F32)),
        gyri=None, folia=None, deep_bumps=None, jitter=np.zeros((8, 3), _F32),  # type: ignore[arg-type]
    )
    xs = np.arange(-75, 75, spacing_mm, dtype=_F32)
    ys = np.arange(-95, 95, spacing_mm, dtype=_F32)
    total = 0
    for z in np.arange(-75, 80, spacing_mm, dtype=_F32):
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        p = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z, _F32)], axis=1)
        total += int((np.minimum.reduce(envelope_parts(p, flat)) < 0).sum())
    return total * spacing_mm**3 / 1000.0


# --- deep structures (reference frame; side = +1 right, -1 left) -----------------------------------
_DEEP_ELLIPSOIDS = (  # tissue, centre (x for the right side), radii
    (THALAMUS, (11.0, -18.0, 4.0), (9.5, 19.0, 12.5)),
    (CAUDATE, (15.0, 14.0, 10.0), (6.5, 12.0, 10.5)),
    (PUTAMEN, (27.0, 3.0, 2.0), (6.0, 19.0, 14.0)),
    (AMYGDALA, (22.0, -3.0, -20.0), (8.5, 9.0, 7.2)),
)
_CAUDATE_BODY = ([(15.0, 4.0, 17.0), (17.0, -8.0, 21.0), (19.0, -18.0, 22.0)], [4.0, 3.4, 2.6])
_PALLIDUM = ((20.0, -1.0, 0.0), (3.5, 9.0, 6.0))
_VENTRICLE_BODY = ([(6, 30, 8), (7, 18, 12), (7.5, 0, 16), (11, -20, 17), (21, -34, 12), (17, -52, 6)],
                   [3.5, 4.5, 4.5, 4.5, 5.5, 3.0])
_TEMPORAL_HORN = ([(21, -34, 12), (30, -28, -4), (31, -12, -14)], [4.0, 3.0, 2.2])


def _mirror(points, side: int) -> list[tuple[float, float, float]]:
    return [(side * x, y, z) for x, y, z in points]


def _cerebrum_interior(p: np.ndarray, depth: np.ndarray, a: Anatomy, s: float) -> np.ndarray:
    """Cerebrum points (reference frame) and depth below its surface -> tissue classes (N,)."""
    out = np.full(len(p), WM, np.uint8)
    cortex, sulcus = a.cortex_mm / s, a.sulcus_mm / s
    sulcal_depth = 14.0
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    # Distance to the nearest fold wall: gyral field zero-crossings, the midline fissure and the
    # sylvian fissures (sulci are the zero level set of the random gyral field).
    fold = np.full(len(p), np.inf, _F32)
    shell = depth < sulcal_depth + cortex + 1.0
    fold[shell] = a.gyri.distance_to_zero(p[shell])
    callosum = (y > -40) & (y < 34) & (z < 25 - 0.008 * (y + 3) ** 2)  # the fissure stops at the arch
    midline = np.where(callosum, np.inf, np.abs(x))
    # Lateral sulcus: rises medially towards the insula and backwards, with a gentle wave along its length.
    sylvian_plane = np.abs(0.94 * (z + 6.0 + 0.35 * (np.abs(x) - 50.0) + 2.5 * np.cos(y / 7.0)) - 0.34 * (y - 5.0))
    sylvian = np.where((np.abs(x) > 36) & (y > -35) & (y < 28), sylvian_plane, np.inf)
    wall = np.minimum(fold, np.minimum(midline, sylvian)).astype(_F32)
    deep_fold = np.minimum(midline, sylvian) < sulcus / 2
    csf = ((depth < sulcal_depth) & (fold < sulcus / 2)) | deep_fold
    grey = (depth < cortex) | ((wall < sulcus / 2 + cortex) & (depth < sulcal_depth + cortex))
    grey |= np.minimum(midline, sylvian) < sulcus / 2 + cortex
    out[grey] = GM
    out[csf] = CSF
    # Deep grey matter and ventricles only where they can be (saves time on the other points).
    deep = (np.abs(x) < 40) & (np.abs(y + 10) < 55) & (z > -30) & (z < 34)
    q = p[deep]
    sub = out[deep]
    for side in (1, -1):
        for i, (tissue, centre, radii) in enumerate(_DEEP_ELLIPSOIDS):
            c = np.array(_mirror([centre], side)[0], _F32) + a.jitter[2 * i + (side > 0)]
            d = ellipsoid_sd(q, c, np.array(radii, _F32) * a.deep_scale, a.deep_bumps)
            if tissue == CAUDATE:
                body = tube_sd(q, _mirror(_CAUDATE_BODY[0], side), [r * a.deep_scale for r in _CAUDATE_BODY[1]])
                d = np.minimum(d, body)
            sub[d < 0] = tissue
        pal = ellipsoid_sd(q, _mirror([_PALLIDUM[0]], side)[0], np.array(_PALLIDUM[1]) * a.deep_scale)
        sub[(pal < 0) & (sub == WM)] = PALLIDUM
        v = a.ventricle_scale
        lateral = tube_sd(q, _mirror(_VENTRICLE_BODY[0], side), [r * v for r in _VENTRICLE_BODY[1]],
                          squash=(1.0, 1.0, 1.5))
        horn = tube_sd(q, _mirror(_TEMPORAL_HORN[0], side), [r * (0.5 + 0.5 * v) for r in _TEMPORAL_HORN[1]])
        sub[np.minimum(lateral, horn) < 0] = VENTRICLE
    third = (np.abs(q[:, 0]) < 0.8 + 0.9 * a.atrophy) & (q[:, 1] > -22) & (q[:, 1] < 8) & (q[:, 2] > -8)
    third &= q[:, 2] < 14
    sub[third] = VENTRICLE
    out[deep] = sub
    return out


def rasterise(world: np.ndarray, a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world (scanner RAS, mm) voxel centres -> (N,) uint8 tissue classes, (N,) bool brain mask.

    The brain mask is drawn as skull-stripping tools (ROBEX) draw it: the envelope of cerebrum,
    cerebellum and brainstem (above the foramen magnum) with the ventricles, deep grey matter and
    sulcal CSF inside it; no outer CSF, skull or scalp.
    """
    p = (world - a.translation) @ a.rotation  # world -> patient frame (rotation is orthonormal)
    # Points outside a generous ellipsoid around the cranium and above the face/neck are air.
    q = p / a.icv_scale
    head = ((q[:, 0] / 104) ** 2 + (q[:, 1] / 128) ** 2 + ((q[:, 2] - 10) / 100) ** 2 < 1) | (q[:, 2] < -25)
    keep = np.flatnonzero(head)
    tissue = np.full(len(p), AIR, np.uint8)
    brain = np.zeros(len(p), bool)
    tissue[keep], brain[keep] = _rasterise_head(p[keep], a)
    return tissue, brain


def _rasterise_head(p: np.ndarray, a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) patient-frame points that may lie in the head -> tissue classes, brain mask."""
    n = len(p)
    out = np.full(n, AIR, np.uint8)
    si = a.icv_scale
    # Head: skull and scalp are shells around the intracranial cavity; face and neck are soft tissue.
    icv = np.minimum.reduce(envelope_parts(p / si, a)) * si
    outer = icv - (a.skull_mm + a.scalp_mm)
    face = _boxed(lambda q: ellipsoid_sd(q, (0, 42, -52), (52, 48, 44)), p / si, (-60, -10, -110), (60, 100, 0)) * si
    neck = _boxed(lambda q: tube_sd(q, [(0, -18, -55), (0, -10, -220)], [50.0, 50.0], squash=(1.0, 1.15, 1.0)),
                  p / si, (-60, -70, -300), (60, 40, -20)) * si
    head = np.minimum(outer, np.minimum(face, neck))
    inside = head < 0
    out[inside] = SOFT
    out[inside & (head > -5.0)] = SCALP_FAT
    out[inside & (head > -1.5)] = SKIN
    scalp = (icv >= a.skull_mm) & (outer < 0)
    out[scalp & (outer < -1.5)] = SCALP_FAT
    skull = (icv >= 0) & (icv < a.skull_mm)
    out[skull] = BONE
    out[skull & (np.abs(icv - a.skull_mm / 2) < a.skull_mm * 0.22) & (p[:, 2] > -5 * si)] = MARROW
    face_box = np.flatnonzero(inside & ~skull & (p[:, 1] > 20 * si) & (p[:, 2] < -10 * si))
    f = p[face_box] / si
    sub = out[face_box]
    for side in (1, -1):
        sub[ellipsoid_sd(f, (side * 30, 48, -33), (16, 20, 15)) < 0] = ORBIT_FAT
        sub[ellipsoid_sd(f, (side * 32, 60, -33), (12, 12, 12)) < 0] = EYE
        sub[ellipsoid_sd(f, (side * 24, 45, -64), (12, 15, 16)) < 0] = AIR  # maxillary sinus
    sub[ellipsoid_sd(f, (0, 60, -50), (7, 20, 14)) < 0] = AIR  # nasal cavity
    out[face_box] = sub
    # Cervical spine below the skull: vertebral bodies (marrow, cortical rim), canal with CSF and cord.
    neck_box = np.flatnonzero(inside & (p[:, 2] < -55 * si) & (np.abs(p[:, 0]) < 20 * si))
    c = p[neck_box] / si
    sub = out[neck_box]
    vertebra = tube_sd(c, [(0, -12, -72), (0, -8, -220)], [10.0, 10.0]) * si
    canal = tube_sd(c, [(0, -32, -66), (0, -30, -220)], [7.0, 7.0]) * si
    sub[vertebra < 1.5] = BONE
    sub[vertebra < 0] = MARROW
    sub[canal < 2.0] = BONE
    sub[canal < 0] = CSF
    sub[canal < -2.5] = BRAINSTEM  # spinal cord (not part of the brain mask)
    out[neck_box] = sub
    cavity = np.flatnonzero(icv < 0)
    out[cavity] = CSF
    # Brain inside the cavity, at the (smaller) brain scale.
    sb = a.brain_scale
    q = p[cavity] / sb
    cerebrum, cerebellum, brainstem = envelope_parts(q, a)
    sub = out[cavity]
    in_cb = (cerebellum < 0) & (cerebrum >= 0)
    cb_depth = -cerebellum[in_cb] * sb
    folium = np.abs(a.folia(q[in_cb])) < 0.22 + 0.15 * a.atrophy
    sub[in_cb] = np.where(cb_depth > 9.0, CB_WM, np.where(folium & (cb_depth < 7.0), CSF, CB_GM))
    in_bs = (brainstem < 0) & (cerebrum >= 0)
    sub[in_bs] = BRAINSTEM
    fourth = ellipsoid_sd(q, (0, -37, -34), np.array([4.0, 3.5, 6.0]) * a.ventricle_scale) < 0
    sub[fourth & (in_bs | in_cb)] = VENTRICLE
    in_c = cerebrum < 0
    sub[in_c] = _cerebrum_interior(q[in_c], -cerebrum[in_c], a, sb)
    out[cavity] = sub
    brain = np.zeros(n, bool)
    brain[cavity] = (np.minimum(cerebrum, np.minimum(cerebellum, brainstem)) < 0) & (q[:, 2] > -60.0)
    return out, brain

