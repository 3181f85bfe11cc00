"""The shipped label maps equal the SynthSeg originals inside their crop, stay small, and carry licence and notice."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrivol_monai.data import label_maps

from conftest import SHARED_DATA, shared_data_reason

ORIGINALS = SHARED_DATA / "synthseg_label_maps"


def test_twenty_maps_ship_with_licence_notice_and_fit_the_size_budget() -> None:
    files = sorted(label_maps.MAPS_DIR.glob("training_seg_*.nii.gz"))
    assert [f.name for f in files] == [f"training_seg_{i:02d}.nii.gz" for i in range(1, 21)]
    assert sum(f.stat().st_size for f in files) < 15e6
    assert "Apache License" in (label_maps.MAPS_DIR / "LICENSE.txt").read_text()
    notice = (label_maps.MAPS_DIR / "NOTICE.md").read_text()
    assert "BBillot/SynthSeg" in notice and "Cropped" in notice
    labels, affine = label_maps.load_map(1)
    assert labels.dtype == np.uint16 and not labels.flags.writeable
    assert "".join(nib.aff2axcodes(affine)) == "LIA" and np.allclose(nib.affines.voxel_sizes(affine), 1.0)
    # the crop keeps a zero margin (2 voxels) on every side the original had room for
    assert not labels[:2].any() and not labels[-2:].any()


@pytest.mark.skipif(not ORIGINALS.is_dir(), reason=shared_data_reason(ORIGINALS.name, "the original SynthSeg label maps"))
@pytest.mark.parametrize("index", range(1, 21))
def test_shipped_map_equals_the_original_inside_the_crop(index: int) -> None:
    original = nib.load(ORIGINALS / f"{label_maps.map_name(index)}.nii.gz")
    data = np.asarray(original.dataobj)
    shipped, affine = label_maps.load_map(index)
    corner = np.linalg.solve(original.affine, affine[:, 3])[:3]
    assert np.allclose(corner, np.rint(corner)) and np.allclose(affine[:3, :3], original.affine[:3, :3])
    start = np.rint(corner).astype(int)
    box = tuple(slice(s, s + n) for s, n in zip(start, shipped.shape))
    assert np.array_equal(shipped.astype(np.float64), data[box].astype(np.float64))
    outside = np.ones(data.shape, bool)
    outside[box] = False
    assert not data[outside].any()


def test_masks_follow_the_freesurfer_definitions() -> None:
    labels = np.array([0, 2, 3, 4, 10, 17, 24, 41, 507, 515], np.uint16)
    assert label_maps.brain_mask(labels).tolist() == [False, True, True, True, True, True, False, True, False, False]
    assert label_maps.icv_mask(labels).tolist() == [False, True, True, True, True, True, True, True, False, False]
