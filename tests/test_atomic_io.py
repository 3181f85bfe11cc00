"""The one temp-file-then-rename writer every results, mask and plot file goes through."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest

from mrivol_monai.atomic_io import atomic_path, write_atomic


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "volumes.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volumes.csv"]


def test_temp_name_keeps_suffixes_so_nibabel_writes_gzip_and_mode_follows_umask(tmp_path):
    target = tmp_path / "new" / "scan_seg.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz") and tmp != target
        nib.save(nib.Nifti1Image(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.diag([2.0, 1, 1, 1])), tmp)
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic: the format came from the temp name
    assert np.array_equal(np.asarray(nib.load(target).dataobj), np.arange(24).reshape(2, 3, 4))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert write_atomic(tmp_path / "a.json", '{"x": 1}\n').read_text() == '{"x": 1}\n'
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "new"]


def test_make_writable_dir_creates_the_folder_leaves_no_probe_and_refuses_a_file(tmp_path):
    from mrivol_monai.atomic_io import make_writable_dir

    folder = make_writable_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        make_writable_dir(tmp_path / "file")
