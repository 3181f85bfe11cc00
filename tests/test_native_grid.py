"""native_grid: the model input equals MONAI's preprocessing, the native mask equals Invertd + argmax."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, LoadImaged, Orientationd

from mrivol_monai.errors import InputError
from mrivol_monai.native_grid import TIE_BREAK, GridMap, area_resize, model_input
from mrivol_monai.predict import channel_argmax, preprocessing
from mrivol_monai.transforms import depth_axcodes, head_sample_index, head_threshold

SPATIAL = (10, 16, 16)


def head_scan(shape, axcodes: str, background: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, affine): an off-centre ellipsoidal head (``shape`` in RAS order) stored under ``axcodes`` with
    anisotropic voxels;
    ``background`` "noise" (the head box reaches the border, so the crop pads) or "zero" (it crops)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    centre = np.array([0.1, -0.05, 0.08])[:, None, None, None]
    r = np.sqrt((((grid - centre) / np.array([0.7, 0.75, 0.65])[:, None, None, None]) ** 2).sum(0))
    image = 300.0 * np.clip((1.0 - r) / 0.5, 0.0, 1.0) + 200.0 * (r < 0.5)  # a soft scalp edge
    image += np.abs(rng.normal(0, 25 if background == "noise" else 0, shape)) + rng.normal(0, 5, shape) * (r < 1)
    ras = np.diag([1.2, 0.9, 2.0, 1.0])
    ras[:3, 3] = (-10.0, 20.0, 5.0)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes))
    affine = ras @ nib.orientations.inv_ornt_aff(ornt, shape)  # same anatomy, axes stored as axcodes says
    assert nib.aff2axcodes(affine) == tuple(axcodes)
    return np.ascontiguousarray(nib.orientations.apply_orientation(image, ornt)), affine


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)  # sform = affine, which both readers use
    return path


def monai_reference(path: Path):
    """MONAI's loader + the train.json preprocessing chain on one file -> (data, the chain, for Invertd)."""
    loaded = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)})
    chain = preprocessing(SPATIAL)
    return chain(loaded), chain


CASES = [  # stored axes, memory order of the array given to model_input, dtype, background, RAS shape
    ("RAS", "F", np.int16, "noise", (21, 26, 23)),
    ("LPS", "C", np.float32, "zero", (21, 26, 23)),
    ("PIR", "F", np.float32, "noise", (21, 26, 23)),
    ("AIL", "C", np.int16, "zero", (21, 26, 23)),
    # > 500k voxels: the head threshold samples every 2nd voxel of the re-oriented image, which must be
    # the same voxels whatever the stored order (a zero background makes the box depend on the threshold)
    ("ILP", "F", np.float32, "zero", (81, 90, 77)),
]


@pytest.mark.parametrize("axcodes,order,dtype,background,shape", CASES)
def test_model_input_equals_monai_preprocessing(tmp_path, axcodes, order, dtype, background, shape):
    image, affine = head_scan(shape, axcodes, background)
    stored = np.asarray(image.astype(dtype), order=order)
    path = save(tmp_path / "scan.nii.gz", stored, affine)
    reference = monai_reference(path)[0]["image"].as_tensor()

    x, grid = model_input(stored, affine, SPATIAL)
    oriented = Orientationd("image", axcodes=depth_axcodes("axial"), labels=None)(
        LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)}))["image"]

    assert x.shape == reference.shape == (1, *SPATIAL) and x.dtype == torch.float32
    assert torch.allclose(x, reference, atol=1e-5)
    # the same voxels set the head threshold as head_foreground samples on MONAI's re-oriented image
    assert grid.threshold == float(head_threshold(oriented.as_tensor()[head_sample_index(tuple(oriented.shape))]))
    pads = any(s < 0 for s in grid.box_start)
    assert pads == (background == "noise")  # both crop paths (with and without padding) are exercised


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("axcodes", ["PIR", "LAS"])
def test_to_native_equals_invertd_then_argmax_except_at_near_ties(tmp_path, classes, axcodes):
    image, affine = head_scan((23, 37, 30), axcodes, "noise", seed=3)
    path = save(tmp_path / "scan.nii.gz", image.astype(np.float32), affine)
    data, chain = monai_reference(path)
    _, grid = model_input(np.asanyarray(nib.load(path).dataobj), affine, SPATIAL)
    gen = torch.Generator().manual_seed(classes)
    smooth = torch.nn.functional.avg_pool3d(torch.randn(1, classes, *SPATIAL, generator=gen), 3, 1, 1)[0]
    probs = torch.softmax(4 * smooth, dim=0)

    mask = grid.to_native(probs)
    data["pred"] = MetaTensor(probs, meta=dict(data["image"].meta))
    inverted = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)(data)
    soft = torch.as_tensor(inverted["pred"])
    reference = channel_argmax(soft)[0].numpy()

    assert mask.shape == image.shape and mask.dtype == np.uint8
    assert mask.flags.f_contiguous  # same memory order as nibabel's array: written without a copy
    assert set(np.unique(mask).tolist()) == set(range(classes))
    differ = mask != reference
    top2 = torch.topk(soft, 2, dim=0).values
    gap = (top2[0] - top2[1]).numpy()
    # only the tie-break weight (2**-16) may flip a label, and only where the two best classes nearly tie
    assert differ.mean() < 1e-3
    assert np.all(gap[differ] < 4 * TIE_BREAK)


def test_area_resize_equals_torch_area_interpolation_up_and_down():
    x = torch.rand(2, 5, 13, 6, generator=torch.Generator().manual_seed(0))
    for size in [(9, 4, 13), (3, 13, 5), (5, 13, 6)]:
        expected = torch.nn.functional.interpolate(x[None], size=size, mode="area")[0]
        assert torch.allclose(area_resize(x, size), expected, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_exact_ties_go_to_the_model_voxel_nearest_the_native_voxel_centre(axis):
    """Saturated two-class probabilities tie exactly where a native voxel straddles a class edge. 3 model
    voxels -> 8 native (no voxel centre on a midpoint): the tie must go to the nearer model voxel, as
    nearest-neighbour resampling would, not always to background (which erodes every structure)."""
    n, b = 3, 8
    model_labels = torch.tensor([1, 0, 0])
    shape = [3, 3, 3]
    shape[axis] = b
    grid = GridMap(tuple(shape), (0, 1, 2), (0, 1, 2), (False, False, False), (0, 0, 0), tuple(shape), (3, 3, 3))
    view = [1, 1, 1]
    view[axis] = n
    one = model_labels.reshape(view).expand(3, 3, 3).float()
    probs = torch.stack([1 - one, one]) * (1 - 2e-5) + 1e-5  # symmetric: p1 - p0 = +-(1 - 2e-5)

    mask = grid.to_native(probs)

    nearest = model_labels[((torch.arange(b) + 0.5) * n / b).long()].numpy()
    profile = np.moveaxis(mask, axis, 0)[:, 1, 1]
    assert profile.tolist() == nearest.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_bad_images_give_one_line_problems():
    image, affine = head_scan((12, 14, 13), "RAS", "zero")
    with pytest.raises(InputError, match="expected a single 3D image"):
        model_input(image[:, :, 0], affine, SPATIAL)
    nan = image.copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        model_input(nan, affine, SPATIAL)
    with pytest.raises(InputError, match="constant"):
        model_input(np.full_like(image, 7.0), affine, SPATIAL)
    with pytest.raises(InputError, match="no voxel above the head threshold"):
        model_input(-100.0 - image, affine, SPATIAL)  # all negative: 10 % of the 99th percentile is above all
