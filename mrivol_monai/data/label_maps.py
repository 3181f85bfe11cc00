"""The 20 real whole-head label maps that SynthIXI subjects are rendered from, shipped with the package.

Source: the SynthSeg project's training label maps (BBillot/SynthSeg, ``data/training_label_maps/``,
Apache-2.0; ``label_maps/NOTICE.md`` says what was changed). Each map is 1 mm isotropic, LIA, with
FreeSurfer labels: brain structures 2-60 (left/right pairs), 24 = extra-cerebral CSF, >= 500 =
unnamed extra-cerebral classes (skin, soft tissue, skull, marrow, eyes, ...). The shipped copies are
cropped to the head (box of non-zero labels plus a margin) and stored as uint16 NIfTI with the affine
moved to the crop, so every voxel keeps its world position and label.

Which maps may be seen by whom is fixed here, once: test subjects are rendered only from
:data:`TEST_MAPS`, validation subjects only from :data:`VALIDATION_MAPS`, training subjects only from
:data:`TRAINING_MAPS` (held-out anatomy, not only a held-out site).

Developers re-import the originals with ``python -m mrivol_monai.data.label_maps SRC_DIR``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.errors import InputError

MAPS_DIR = Path(__file__).resolve().parent / "label_maps"
N_MAPS = 20
CROP_MARGIN = 2  # voxels kept around the non-zero box of each original map

# Held-out anatomy. The four test maps span the smallest brain to a large head (brain 872-1244 mL, ICV
# 1401-1681 mL) and both fields of view of the source (neck cut short or not); validation: three others.
TEST_MAPS: tuple[int, ...] = (5, 10, 16, 20)
VALIDATION_MAPS: tuple[int, ...] = (8, 13, 17)
TRAINING_MAPS: tuple[int, ...] = tuple(i for i in range(1, N_MAPS + 1) if i not in TEST_MAPS + VALIDATION_MAPS)
MAPS_OF_SPLIT: dict[str, tuple[int, ...]] = {"training": TRAINING_MAPS, "validation": VALIDATION_MAPS, "test": TEST_MAPS}

# FreeSurfer label groups. Brain = every label 1-499 except extra-cerebral CSF (24): cerebral and cerebellar
# grey and white matter, ventricles, deep grey matter, brainstem, ventral DC and the small vessel/choroid
# labels. Intracranial volume (ICV) = brain + extra-cerebral CSF = every label 1-499.
CSF = 24
EXTRACEREBRAL_MIN = 500
# structure -> (left label, right label)
SUBCORTICAL_LR: dict[str, tuple[int, int]] = {
    "thalamus": (10, 49), "caudate": (11, 50), "putamen": (12, 51), "amygdala": (18, 54),
}
HIPPOCAMPUS_LR = (17, 53)


def map_name(index: int) -> str:
    """1 -> ``training_seg_01`` (the source's file stem)."""
    return f"training_seg_{index:02d}"


def map_path(index: int) -> Path:
    """Path of shipped map ``index`` (1..20)."""
    if not 1 <= int(index) <= N_MAPS:
        raise InputError(None, f"label map index must be 1..{N_MAPS}, got {index}")
    return MAPS_DIR / f"{map_name(index)}.nii.gz"


@lru_cache(maxsize=N_MAPS)
def load_map(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Shipped map ``index`` -> ((X, Y, Z) uint16 read-only FreeSurfer labels, (4, 4) voxel -> RAS affine)."""
    path = map_path(index)
    try:
        image = nib.load(path)
        labels = np.asarray(image.dataobj, dtype=np.uint16)
    except (OSError, EOFError, ValueError) as err:
        raise InputError(path, f"cannot read the shipped label map ({err}); reinstall the package") from None
    labels.setflags(write=False)
    return labels, image.affine.copy()


def brain_mask(labels: np.ndarray) -> np.ndarray:
    """FreeSurfer labels -> bool brain mask (labels 1-499 except 24)."""
    return (labels > 0) & (labels < EXTRACEREBRAL_MIN) & (labels != CSF)


def icv_mask(labels: np.ndarray) -> np.ndarray:
    """FreeSurfer labels -> bool intracranial mask (labels 1-499: brain + extra-cerebral CSF)."""
    return (labels > 0) & (labels < EXTRACEREBRAL_MIN)


def crop_box(labels: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, slice, slice]:
    """Box (one slice per axis) around the non-zero labels, ``margin`` voxels wider, clipped to the array."""
    nonzero = np.nonzero(labels)
    if not nonzero[0].size:
        raise ValueError("label map is empty")
    return tuple(slice(max(int(ix.min()) - margin, 0), min(int(ix.max()) + 1 + margin, n))
                 for ix, n in zip(nonzero, labels.shape))


def import_map(source: str | Path, out: str | Path) -> tuple[slice, slice, slice]:
    """Crop one original map to its head box, store it as uint16 NIfTI with the affine of the crop."""
    source = Path(source)
    try:
        image = nib.load(source)
        data = np.asarray(image.dataobj)
    except (OSError, EOFError, ValueError) as err:
        raise InputError(source, f"cannot read label map ({err})") from None
    if data.ndim != 3:
        raise InputError(source, f"expected a 3D label map, got shape {data.shape}")
    labels = np.rint(data).astype(np.int64)
    if not np.array_equal(labels, data) or labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
        raise InputError(source, "labels must be non-negative integers below 65536")
    box = crop_box(labels)
    corner = np.array([s.start for s in box] + [1.0])
    affine = image.affine.copy()
    affine[:, 3] = image.affine @ corner
    cropped = nib.Nifti1Image(labels[box].astype(np.uint16), affine)
    cropped.header.set_xyzt_units("mm", "sec")
    cropped.set_qform(affine, code=1)
    cropped.set_sform(affine, code=1)
    cropped.header["descrip"] = f"{source.name} cropped to the head, uint16".encode()[:79]
    # nibabel gzips at level 1 (20 MB for the 20 maps); level 9 with a fixed mtime: 10.6 MB, same bytes each run
    write_atomic(out, gzip.compress(cropped.to_bytes(), compresslevel=9, mtime=0))
    return box


def main(argv: list[str] | None = None) -> int:
    """``python -m mrivol_monai.data.label_maps SRC_DIR``: re-import the 20 originals into the package."""
    parser = argparse.ArgumentParser(prog="python -m mrivol_monai.data.label_maps", description=main.__doc__)
    parser.add_argument("source", help="folder with training_seg_01.nii.gz ... training_seg_20.nii.gz")
    parser.add_argument("--out", default=str(MAPS_DIR), help="destination (default: the package's label_maps/)")
    args = parser.parse_args(argv)
    try:
        for index in range(1, N_MAPS + 1):
            name = f"{map_name(index)}.nii.gz"
            box = import_map(Path(args.source) / name, Path(args.out) / name)
            print(f"{name}: crop {' x '.join(f'{s.start}:{s.stop}' for s in box)}")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
