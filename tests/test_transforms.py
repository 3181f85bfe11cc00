"""Slice sampling, augmentation switches, volume checks, head z-scoring and depth-axis orientation."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientationd, RandFlipd, RandGaussianNoised, RandLambdad, RandRotated

from mrivol_monai.errors import InputError
from mrivol_monai.transforms import (
    AUGMENTATIONS,
    CheckVolumed,
    HeadZScored,
    RandStructureSlicesd,
    build_augmentation,
    depth_axcodes,
    head_foreground,
    structure_slices,
)
from mrivol_monai.transforms.augmentation import resolve


def _volume(depth: int = 8, fg_slices: tuple[int, ...] = (2, 3, 5), classes: int = 2) -> dict:
    image = torch.randn(1, depth, 32, 32)
    label = torch.zeros(classes, depth, 32, 32)
    label[0] = 1
    for k in fg_slices:
        label[0, k, 10:20, 10:20] = 0
        label[1 + k % (classes - 1), k, 10:20, 10:20] = 1
    return {"image": image, "label": label}


def test_structure_slices_onehot_and_index_labels():
    vol = _volume()
    assert structure_slices(vol["label"]).tolist() == [2, 3, 5]
    index_label = vol["label"].argmax(0, keepdim=True)
    assert structure_slices(index_label).tolist() == [2, 3, 5]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_slice_sampler_draws_n_distinct_slices_with_structure(n):
    sampler = RandStructureSlicesd(["image", "label"], num_slices=n)
    sampler.set_random_state(0)
    vol = _volume()
    for _ in range(20):
        items = sampler(vol)
        idx = [it["slice_index"] for it in items]
        assert len(items) == n
        assert len(set(idx)) == n
        assert set(idx) <= {2, 3, 5}
        for it in items:
            assert tuple(it["image"].shape) == (1, 32, 32)
            assert tuple(it["label"].shape) == (2, 32, 32)
            assert torch.equal(it["image"], vol["image"][:, it["slice_index"]])
            assert float(it["label"][1:].sum()) > 0


def test_slice_sampler_more_slices_than_candidates_uses_every_candidate():
    sampler = RandStructureSlicesd(["image", "label"], num_slices=5)
    sampler.set_random_state(1)
    idx = [it["slice_index"] for it in sampler(_volume(fg_slices=(1, 6)))]
    assert len(idx) == 5 and set(idx) == {1, 6}


def test_slice_sampler_is_seeded():
    a = RandStructureSlicesd(["image", "label"], num_slices=2).set_random_state(7)
    b = RandStructureSlicesd(["image", "label"], num_slices=2).set_random_state(7)
    vol = _volume(depth=16, fg_slices=tuple(range(2, 14)))
    seq_a = [[it["slice_index"] for it in a(vol)] for _ in range(5)]
    seq_b = [[it["slice_index"] for it in b(vol)] for _ in range(5)]
    assert seq_a == seq_b
    assert len({tuple(s) for s in seq_a}) > 1  # it does vary between epochs


def test_slice_sampler_rejects_zero():
    with pytest.raises(ValueError, match="slices_per_volume"):
        RandStructureSlicesd(["image", "label"], num_slices=0)


def test_any_slice_fraction_adds_slices_without_the_structure():
    sampler = RandStructureSlicesd(["image", "label"], num_slices=4, any_slice_fraction=0.5).set_random_state(0)
    vol = _volume(depth=20, fg_slices=(2, 3, 5, 9))
    outside = 0
    for _ in range(30):
        idx = [it["slice_index"] for it in sampler(vol)]
        assert len(idx) == 4 and len(set(idx)) == 4  # still distinct slices
        assert len(set(idx[:2]) & {2, 3, 5, 9}) == 2  # the first half from structure slices
        outside += len(set(idx[2:]) - {2, 3, 5, 9})
    assert outside > 30  # the other half comes from the whole volume: mostly slices without structure
    plain = RandStructureSlicesd(["image", "label"], num_slices=4).set_random_state(0)
    assert all(set(it["slice_index"] for it in plain(vol)) == {2, 3, 5, 9} for _ in range(5))
    with pytest.raises(ValueError, match="any_slice_fraction"):
        RandStructureSlicesd(["image", "label"], num_slices=4, any_slice_fraction=1.5)


def test_augmentation_names_resolve():
    assert resolve("mix") == list(AUGMENTATIONS[:5]) and "domain" not in resolve("mix")
    assert resolve(["flip", "domain"]) == ["domain", "flip"]
    assert resolve("none") == [] and resolve([]) == [] and resolve(None) == []
    assert resolve(["flip", "noise"]) == ["flip", "noise"]
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        resolve(["blur"])


@pytest.mark.parametrize(
    "name, kinds, probs",
    [
        ("flip", [RandFlipd, RandFlipd], [0.5, 0.5]),
        ("rotation", [RandRotated], [0.3]),
        ("noise", [RandGaussianNoised], [0.4]),
        ("equalize", [RandLambdad], [0.4]),
    ],
)
def test_each_switch_builds_its_transform_with_paper_probability(name, kinds, probs):
    parts = build_augmentation(name).transforms
    assert [type(p) for p in parts] == kinds
    assert [p.prob for p in parts] == pytest.approx(probs)


def test_contrast_switch_and_mix():
    parts = build_augmentation("contrast").transforms
    assert len(parts) == 2 and all(p.prob == pytest.approx(0.4) for p in parts)
    assert len(build_augmentation("mix").transforms) == 7
    assert len(build_augmentation("none").transforms) == 0


def test_geometric_augmentations_move_image_and_label_together():
    torch.manual_seed(0)
    item = {"image": MetaTensor(torch.rand(1, 32, 32)), "label": MetaTensor(torch.zeros(2, 32, 32))}
    item["label"][1, 2:10, 3:12] = 1
    item["label"][0] = 1 - item["label"][1]
    item["image"][0][item["label"][1] > 0] += 5.0
    aug = build_augmentation(["flip", "rotation"])
    for t in aug.transforms:
        t.prob = 1.0
    aug.set_random_state(3)
    out = aug(item)
    bright = out["image"][0] > 3.0
    fg = out["label"][1] > 0.5
    assert not torch.equal(out["label"], item["label"])
    overlap = (bright & fg).sum() / fg.sum()
    assert overlap > 0.85


def test_domain_randomisation_changes_contrast_not_labels():
    item = {"image": MetaTensor(torch.linspace(-2, 2, 32 * 32).reshape(1, 32, 32)),
            "label": MetaTensor(torch.ones(2, 32, 32))}
    aug = build_augmentation("domain")
    assert len(aug.transforms) == 5
    for t in aug.transforms:
        t.prob = 1.0
    aug.set_random_state(5)
    outs = [aug(dict(item)) for _ in range(4)]
    for out in outs:
        assert torch.equal(out["label"], item["label"])
        assert out["image"].shape == item["image"].shape and torch.isfinite(out["image"]).all()
    # each draw remaps intensities differently (a new contrast), not just by one global factor
    ratios = [float((o["image"][0, 16] / item["image"][0, 16].clamp(min=1e-3)).std()) for o in outs]
    assert len({round(r, 3) for r in ratios}) == 4


def test_intensity_augmentations_change_image_only():
    item = {"image": MetaTensor(torch.randn(1, 32, 32)), "label": MetaTensor(torch.ones(2, 32, 32))}
    for name in ("noise", "contrast", "equalize"):
        aug = build_augmentation(name)
        for t in aug.transforms:
            t.prob = 1.0
        aug.set_random_state(0)
        out = aug(dict(item))
        assert not torch.allclose(out["image"], item["image"]), name
        assert torch.equal(out["label"], item["label"]), name


def test_check_volume_errors_name_the_file():
    img = MetaTensor(torch.rand(1, 8, 8, 8), meta={"filename_or_obj": "/data/a-T1.nii.gz"})
    lab = MetaTensor(torch.zeros(1, 8, 8, 8), meta={"filename_or_obj": "/data/a-brain.nii.gz"})
    check = CheckVolumed(num_classes=2)
    check({"image": img, "label": lab})  # valid pair passes
    nan = img.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"/data/a-T1.nii.gz: image contains NaN"):
        check({"image": nan, "label": lab})
    with pytest.raises(InputError, match=r"a-brain.nii.gz: label shape \(8, 8, 4\) differs"):
        check({"image": img, "label": lab[..., :4]})
    bad = lab.clone()
    bad[0, 1, 1, 1] = 3
    with pytest.raises(InputError, match=r"label values \[3.0\] out of range 0..1"):
        check({"image": img, "label": bad})
    with pytest.raises(InputError, match="expected a single 3D image"):
        check({"image": img[0], "label": lab[0]})
    with pytest.raises(InputError, match="constant"):
        check({"image": torch.zeros(1, 8, 8, 8)})


def test_head_zscore_statistics_inside_head():
    img = torch.zeros(1, 16, 16, 16) + 0.01
    img[0, 4:12, 4:12, 4:12] = torch.linspace(50, 150, 8 * 8 * 8).reshape(8, 8, 8)
    out = HeadZScored("image")({"image": img})["image"]
    head = out[0, 4:12, 4:12, 4:12]
    assert float(head.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(head.std()) == pytest.approx(1.0, abs=1e-4)
    assert float(out[0, 0, 0, 0]) < -2.0  # background well below the head


@pytest.mark.parametrize("axis, first", [("axial", "S"), ("coronal", "P"), ("sagittal", "L")])
def test_depth_axis_comes_first_after_orientation(axis, first):
    codes = depth_axcodes(axis)
    assert codes[0] == first
    arr = torch.zeros(1, 4, 5, 6)  # RAS array, shape X=4, Y=5, Z=6
    out = Orientationd("image", axcodes=codes)({"image": MetaTensor(arr, affine=torch.eye(4))})["image"]
    expected_depth = {"S": 6, "P": 5, "L": 4}[first]
    assert out.shape[1] == expected_depth
    with pytest.raises(ValueError, match="depth_axis"):
        depth_axcodes("oblique")


def test_head_foreground_samples_every_kth_flat_voxel_of_a_permuted_view():
    """The threshold comes from every k-th voxel in C order of the (possibly re-oriented) view, as a plain
    ``reshape(-1)[::k]`` would pick them, so training and inference crops do not depend on memory layout."""
    gen = torch.Generator().manual_seed(0)
    view = torch.rand(1, 75, 128, 128, generator=gen).permute(0, 3, 1, 2)  # non-contiguous, like Orientationd
    sample = view.reshape(-1)[:: view.numel() // 250_000]
    high = sample.kthvalue(int(round(0.99 * sample.numel()))).values
    mask = head_foreground(view)
    assert torch.equal(mask, view > 0.1 * high)
    assert torch.equal(mask, head_foreground(view.contiguous()))
    assert 0.05 < mask.float().mean() < 1.0  # a threshold inside the intensity range, so equality can fail


def test_keep_largest_component_drops_islands_of_the_brain_class_only():
    from mrivol_monai.transforms import KeepLargestComponentd, keep_largest_components

    probs = torch.zeros(3, 6, 10, 10)
    probs[0] = 0.9
    probs[1, 1:5, 1:6, 1:6], probs[0, 1:5, 1:6, 1:6] = 0.8, 0.1   # big class-1 object (100 voxels)
    probs[1, 2:4, 8:10, 8:10], probs[0, 2:4, 8:10, 8:10] = 0.7, 0.2   # class-1 island (8 voxels)
    probs[2, 5, 0:2, 8:10], probs[0, 5, 0:2, 8:10] = 0.9, 0.05       # class-2 island, not a kept class
    out = keep_largest_components(MetaTensor(probs), [1])
    winner = out.argmax(0)
    assert int((winner == 1).sum()) == 100
    assert bool((winner[2:4, 8:10, 8:10] == 0).all()) and bool((out[:, 2:4, 8:10, 8:10].sum(0) == 1).all())
    assert int((winner == 2).sum()) == 4 and isinstance(out, MetaTensor)
    assert float(probs[1, 2, 8, 8]) == pytest.approx(0.7)  # the input is not modified
    assert keep_largest_components(probs, []) is probs
    onehot = torch.nn.functional.one_hot(probs.argmax(0), 3).permute(3, 0, 1, 2).float()
    cleaned = KeepLargestComponentd("pred", labels=[1])({"pred": onehot})["pred"]
    assert torch.equal(cleaned.argmax(0), winner)


def test_largest_component_labels_per_task():
    from mrivol_monai.transforms import largest_component_labels

    assert largest_component_labels("brain") == [1]
    assert largest_component_labels("subcortical") == []  # left and right share a class: two components
