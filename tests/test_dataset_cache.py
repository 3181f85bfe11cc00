"""The ``dataset_cache`` switch: disk cache gives the in-memory items, is reused, and is invalidated by a changed
preprocessing step or a changed scan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from mrivol_monai.data.dataset_cache import cached_dataset, preprocessing_fingerprint
from mrivol_monai.errors import InputError

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundle" / "configs" / "train.json")


def _validation(tiny_cohort, spatial_size=(8, 32, 32)):
    data_dir, datalist = tiny_cohort
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"dataset_dir": str(data_dir), "datalist": str(datalist), "spatial_size": list(spatial_size)})
    parser.get_parsed_content("imports")
    from mrivol_monai.data.prepare import load_split

    data = load_split(datalist, "training", data_dir)[:3]
    return data, parser.get_parsed_content("validate#dataset#transform")


def _fingerprints_in_a_new_process(*spatial_sizes) -> list[str]:
    code = ("from monai.bundle import ConfigParser; from mrivol_monai.data.dataset_cache import preprocessing_fingerprint\n"
            f"for size in {[list(s) for s in spatial_sizes]!r}:\n"
            f"    p = ConfigParser(); p.read_config({TRAIN!r}); p['spatial_size'] = size\n"
            "    p.get_parsed_content('imports'); print(preprocessing_fingerprint(p.get_parsed_content('preprocessing')).decode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True)
    return out.stdout.strip().splitlines()[-len(spatial_sizes):]


def test_preprocessing_fingerprint_is_stable_across_processes_and_follows_the_settings():
    a, small = _fingerprints_in_a_new_process([8, 32, 32], [8, 16, 16])
    assert _fingerprints_in_a_new_process([8, 32, 32]) == [a]  # no memory addresses hashed: later runs hit the cache
    assert len(a) == 16 and small != a
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser["spatial_size"] = [8, 32, 32]
    parser.get_parsed_content("imports")
    assert preprocessing_fingerprint(parser.get_parsed_content("preprocessing")).decode() == a
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"spatial_size": [8, 32, 32], "crop_margin": 5})
    parser.get_parsed_content("imports")
    assert preprocessing_fingerprint(parser.get_parsed_content("preprocessing")).decode() != a


def test_disk_cache_gives_the_memory_items_is_reused_and_follows_changed_scans(tiny_cohort, tmp_path):
    data, transform = _validation(tiny_cohort)
    cache = tmp_path / "cache"
    memory = cached_dataset("memory", data, transform, num_workers=1)
    disk = cached_dataset("disk", data, transform, cache_dir=cache, num_workers=1)
    files = sorted(cache.glob("*.pt"))
    assert len(files) == len(data)  # filled up front, one file per volume
    for i in range(len(data)):
        assert torch.equal(disk[i]["image"], memory[i]["image"])
        assert torch.equal(disk[i]["label"], memory[i]["label"])
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    cached_dataset("disk", data, transform, cache_dir=cache, num_workers=1)
    assert {f.name: f.stat().st_mtime_ns for f in cache.glob("*.pt")} == stamps  # reused, nothing rewritten
    image = Path(data[0]["image"])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # "regenerated" scan
    cached_dataset("disk", data, transform, cache_dir=cache, num_workers=1)
    assert len(list(cache.glob("*.pt"))) == len(data) + 1
    _, other = _validation(tiny_cohort, spatial_size=(8, 16, 16))
    small = cached_dataset("disk", data, other, cache_dir=cache, num_workers=1)
    assert len(list(cache.glob("*.pt"))) == 2 * len(data) + 1
    assert tuple(small[1]["image"].shape) == (1, 8, 16, 16)


def test_unknown_cache_kind_is_one_clear_error(tiny_cohort):
    data, transform = _validation(tiny_cohort)
    with pytest.raises(InputError, match="dataset_cache must be one of memory, disk, none"):
        cached_dataset("ssd", data, transform)
    with pytest.raises(InputError, match="needs a cache_dir"):
        cached_dataset("disk", data, transform)
    assert type(cached_dataset("none", data, transform)).__name__ == "Dataset"


def test_the_disk_cache_asks_glibc_to_return_freed_big_blocks():
    import platform

    from mrivol_monai.data.dataset_cache import return_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert return_freed_memory() is True
