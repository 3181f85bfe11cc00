"""One preprocessing definition: ``train.json``'s ``depth_axis``, ``crop_margin``, ``head_threshold_fraction``,
``spatial_size`` and ``image_resize_mode``. Changing one there changes serving (``inference.json``, the spec a
checkpoint carries, the native-grid fast path given that spec), or turns a test here red (``mrivol predict``'s
own chain and defaults, which must equal what training does)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImaged

from mrivol_monai.errors import InputError
from mrivol_monai.native_grid import CROP_MARGIN, IMAGE_RESIZE_MODE, model_input
from mrivol_monai.predict import preprocessing as predict_preprocessing
from mrivol_monai.transforms.intensity import HEAD_THRESHOLD_FRACTION
from mrivol_monai.weights import PREPROCESSING_DEFAULTS, ModelSpec, spec_from_bundle_config, task_spec
from test_native_grid import head_scan, save

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
SMALL = [10, 16, 16]  # the tests' grid; the parameter changes below are against this baseline
CHANGES = {  # a value other than train.json's for every parameter of the one definition
    "crop_margin": 6,
    "head_threshold_fraction": 0.35,
    "spatial_size": [8, 12, 20],
    "depth_axis": "coronal",
    "image_resize_mode": "trilinear",
}
FAST_PATH = ("crop_margin", "head_threshold_fraction", "spatial_size", "depth_axis")  # what model_input takes


def bundle_with(tmp_path: Path, **changes) -> Path:
    """A copy of the bundle's configs whose train.json sets ``changes`` (on top of the small test grid)."""
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", root / "configs", ignore=shutil.ignore_patterns("experiments"))
    train = json.loads((root / "configs" / "train.json").read_text())
    train.update({"spatial_size": SMALL, **changes})
    (root / "configs" / "train.json").write_text(json.dumps(train, indent=4) + "\n")
    return root


def chains(root: Path) -> tuple[list, list]:
    """(train.json's validation preprocessing, inference.json's preprocessing) of the bundle at ``root``,
    each from after its loader on (both are fed the same loaded data)."""
    parsers = []
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / name))
        parser["bundle_root"] = str(root)
        parser.get_parsed_content("imports")
        parsers.append(parser)
    composed = [parsers[0].get_parsed_content("validate#preprocessing"), parsers[1].get_parsed_content("preprocessing")]
    loaders = [[isinstance(t, LoadImaged) for t in c.transforms].index(True) for c in composed]
    return tuple(list(c.transforms[i + 1:]) for c, i in zip(composed, loaders))


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """(loaded {"image", "label"} data, stored array, affine, path) of a head stored PIR with 1.2/0.9/2 mm voxels;
    its intensities fall off smoothly at the scalp, so the head threshold moves the head mask and box."""
    image, affine = head_scan((31, 36, 27), "PIR", "zero")
    folder = tmp_path_factory.mktemp("scan")
    path = save(folder / "scan.nii.gz", image.astype(np.float32), affine)
    label = save(folder / "label.nii.gz", (image > 250).astype(np.uint8), affine)
    data = LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True)(
        {"image": str(path), "label": str(label)})
    return data, image.astype(np.float32), affine, path


def run(chain: list, data: dict) -> torch.Tensor:
    d = copy.deepcopy(data)
    for transform in chain:
        d = transform(d)
    return torch.as_tensor(d["image"])


def served_and_trained(tmp_path: Path, data: dict, **changes) -> tuple[torch.Tensor, torch.Tensor]:
    train, serve = chains(bundle_with(tmp_path, **changes))
    return run(train, data), run(serve, {"image": data["image"]})


def test_committed_values_are_the_defaults_every_server_uses():
    """train.json's values = the spec defaults = native_grid's and mrivol predict's: change one in train.json
    alone and this fails until the fast path and ``mrivol predict`` follow."""
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    committed = {key: train[key] for key in PREPROCESSING_DEFAULTS}
    assert committed == PREPROCESSING_DEFAULTS == {
        "crop_margin": CROP_MARGIN, "head_threshold_fraction": HEAD_THRESHOLD_FRACTION,
        "image_resize_mode": IMAGE_RESIZE_MODE}
    shipped = task_spec("brain")  # what a bare checkpoint without any description is taken to be
    assert (shipped.spatial_size, shipped.depth_axis) == (train["spatial_size"], train["depth_axis"])
    assert {k: v for k, v in shipped.network_def.items() if k != "out_channels"} == \
        {k: v for k, v in train["network_def"].items() if k != "out_channels"}


def test_mrivol_predicts_chain_is_the_training_chain(tmp_path, scan):
    data = scan[0]
    train, _ = chains(bundle_with(tmp_path))
    trained = run(train, data)
    served = predict_preprocessing(SMALL)(copy.deepcopy({"image": data["image"]}))["image"]
    assert trained.shape == (1, *SMALL)
    assert torch.allclose(torch.as_tensor(served), trained, atol=1e-5)


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_changing_a_parameter_in_train_json_changes_serving(tmp_path, scan, key):
    data, stored, affine, _ = scan
    before_train, before_serve = served_and_trained(tmp_path / "before", data)
    after_train, after_serve = served_and_trained(tmp_path / "after", data, **{key: CHANGES[key]})
    assert torch.allclose(before_serve, before_train, atol=1e-5)
    # the change matters (else this test could not see serving ignore it), and serving makes what training makes
    assert after_train.shape != before_train.shape or not torch.allclose(after_train, before_train, atol=1e-3)
    assert after_serve.shape == after_train.shape
    assert torch.allclose(after_serve, after_train, atol=1e-5)

    spec = spec_from_bundle_config(bundle_with(tmp_path / "spec", **{key: CHANGES[key]}) / "configs" / "train.json",
                                   trust_bundle=False)
    assert getattr(spec, key) == CHANGES[key]  # every checkpoint trained from it carries the new value
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())), "meta") == spec  # and reads it back
    if key in FAST_PATH:  # the fast native-grid path, given the spec's values, prepares the scan alike
        x, _ = model_input(stored, affine, spec.spatial_size, spec.depth_axis, margin=spec.crop_margin,
                           fraction=spec.head_threshold_fraction)
        assert torch.allclose(x, after_train, atol=1e-4)


def test_a_spec_with_impossible_preprocessing_is_one_line():
    raw = task_spec("brain").to_dict()
    for bad in ({"crop_margin": -1}, {"head_threshold_fraction": 0.0}, {"crop_margin": "two"}):
        with pytest.raises(InputError, match=r"^meta: crop_margin") as err:
            ModelSpec.from_dict({**raw, **bad}, "meta")
        assert "\n" not in str(err.value)
    old = {k: v for k, v in raw.items() if k not in PREPROCESSING_DEFAULTS}  # a checkpoint from before
    assert ModelSpec.from_dict(old, "meta") == task_spec("brain")


def test_mrivol_predict_serves_the_crop_margin_and_head_fraction_its_checkpoint_was_trained_with(tmp_path):
    import dataclasses

    import nibabel as nib
    import numpy as np

    from mrivol_monai.errors import InputError
    from mrivol_monai.native_grid import model_input
    from mrivol_monai.networks import UNet2d
    from mrivol_monai.predict import Predictor
    from mrivol_monai.weights import task_spec

    rng = np.random.default_rng(0)
    image = np.zeros((40, 44, 36), np.float32)
    image[8:32, 10:34, 6:30] = 100.0 + rng.normal(0, 5, (24, 24, 24))
    affine = np.diag([1.0, 1.0, 1.2, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "scan.nii.gz"))
    spec = dataclasses.replace(task_spec("brain", spatial_size=[8, 16, 16]), crop_margin=6,
                               head_threshold_fraction=0.3)
    predictor = Predictor(UNet2d(1, 2, ed_blocks=2, width=4).eval(), spec)
    x, grid, _, _ = predictor.model_input(tmp_path / "scan.nii.gz")
    expected, _ = model_input(image, affine, [8, 16, 16], margin=6, fraction=0.3)
    default, _ = model_input(image, affine, [8, 16, 16])
    assert torch.allclose(x, expected) and not torch.allclose(x, default)
    with pytest.raises(InputError, match="image_resize_mode 'trilinear'"):
        Predictor(UNet2d(1, 2, ed_blocks=2, width=4), dataclasses.replace(spec, image_resize_mode="trilinear"))
