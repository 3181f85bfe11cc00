"""MONAI's ``NibabelReader`` with a faster gunzip for ``.nii.gz`` files.

nibabel decompresses through Python's zlib; ISA-L's ``igzip`` (the ``isal`` package) does the same bytes
about 3x faster (an IXI-size 256x256x150 int16 scan: ~0.13 s -> ~0.05 s on this CPU), which is a fifth of
the fixed per-scan cost of ``mrivol predict``. Everything after the gunzip (header fixes, affine, dtype,
metadata) is MONAI's own ``NibabelReader``. Without ``isal``, or for anything but one ``.nii.gz`` file,
it is exactly ``NibabelReader``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

from mrivol_monai.data.nifti_files import voxel_mm3
from mrivol_monai.errors import InputError

try:
    from isal import igzip
except ImportError:  # optional speed-up only
    igzip = None

__all__ = ["IgzipNibabelReader", "checked_affine", "read_nifti"]

logger = logging.getLogger(__name__)

NIFTI1_HEADER_SIZE = 348  # sizeof_hdr of a NIfTI-1 header; NIfTI-2 headers say 540


MIN_VOXEL_MM3 = 1e-6  # |det| below this is a singular (zero-scaled, zero or duplicated row) affine


def _usable(affine: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(affine)) and voxel_mm3(affine) > MIN_VOXEL_MM3)


def _raw_header(img: nib.Nifti1Image | nib.Nifti2Image, path: PathLike, raw: bytes | None) -> nib.Nifti1Header:
    """The header as the file holds it: nibabel's loading 'fixes' some fields (pixdim 0 becomes 1)."""
    kind = type(img.header)
    try:
        if raw is not None:
            return kind.from_fileobj(io.BytesIO(raw), check=False)
        with nib.openers.ImageOpener(str(path)) as handle:
            return kind.from_fileobj(handle, check=False)
    except Exception:  # a header nibabel could load once reads again; if not, judge the loaded one
        return img.header


def checked_affine(img: nib.Nifti1Image | nib.Nifti2Image, path: PathLike,
                   raw: bytes | None = None) -> nib.Nifti1Image | nib.Nifti2Image:
    """``img`` if the voxel -> world affine nibabel will use is finite and non-singular; if only its sform is
    broken but its qform is valid, ``img`` with the sform dropped (so the qform is used; logged as a warning).
    Otherwise :class:`InputError`: voxel sizes, and so every volume in mL, would be wrong (nibabel and MONAI
    quietly replace such affines, e.g. pixdim 0 by 1 mm). ``raw``: the file's uncompressed bytes, if at hand."""
    if not isinstance(img.header, nib.Nifti1Header):  # Nifti2Header subclasses it; other formats have no sform/qform
        return img
    hdr = _raw_header(img, path, raw)
    pixdim = np.asarray(hdr["pixdim"][1:4], dtype=np.float64)
    pixdim_ok = bool(np.all(np.isfinite(pixdim)) and np.all(pixdim > 0))
    scode, qcode = int(hdr["sform_code"]), int(hdr["qform_code"])
    sform = np.vstack([hdr["srow_x"], hdr["srow_y"], hdr["srow_z"], [0.0, 0.0, 0.0, 1.0]]).astype(np.float64)
    try:
        qform = np.asarray(hdr.get_qform(), dtype=np.float64) if pixdim_ok else None
    except Exception:  # a quaternion nibabel cannot decompose is as unusable as a singular one
        qform = None
    qform_ok = qcode > 0 and qform is not None and _usable(qform)
    if scode > 0 and _usable(sform):
        return img
    if qform_ok:
        if scode > 0:
            logger.warning("%s: its sform is unusable (not finite or singular); using its qform instead", path)
            img.set_sform(None, code=0)
        return img
    if scode == 0 and qcode == 0 and pixdim_ok:
        return img  # no orientation, but voxel sizes from pixdim: volumes are right
    what = []
    if scode > 0:
        what.append("sform " + ("has NaN/inf" if not np.all(np.isfinite(sform)) else "is singular (a zero or repeated row)"))
    if qcode > 0 or scode == 0:
        what.append(f"pixdim {pixdim.tolist()}" if not pixdim_ok else "qform is singular")
    raise InputError(path, f"no usable voxel-to-world affine ({'; '.join(what)}): voxel sizes and volumes would be "
                           "wrong; fix the header's sform/qform and pixdim")


def _from_gzip(path: PathLike) -> tuple[nib.Nifti1Image | nib.Nifti2Image, bytes]:
    """gunzip a ``.nii.gz`` with ISA-L and parse it from memory -> (image, its uncompressed bytes)."""
    raw = igzip.decompress(Path(path).read_bytes())
    kind = nib.Nifti1Image if int.from_bytes(raw[:4], "little") in (NIFTI1_HEADER_SIZE, 0x5C010000) else nib.Nifti2Image
    return correct_nifti_header_if_necessary(checked_affine(kind.from_bytes(raw), path, raw)), raw


def read_nifti(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One NIfTI file -> (voxels as stored, (4, 4) voxel -> RAS affine), the values and affine MONAI's
    ``NibabelReader`` gives (before its float32 cast and C-order copy); a file without a usable affine raises
    :class:`InputError` (:func:`checked_affine`).

    For an unscaled, native-endian ``.nii.gz`` the array is a read-only Fortran-ordered view over the
    gunzipped bytes (no copy: 7 ms less for an IXI-size scan); otherwise nibabel's scaled array.
    """
    if igzip is None or not str(path).lower().endswith(".nii.gz"):
        img = correct_nifti_header_if_necessary(checked_affine(nib.load(str(path)), path))
        return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    img, raw = _from_gzip(path)
    # the proxy holds the scaling and the data offset (nibabel resets them in the loaded header)
    proxy, dtype = img.dataobj, img.header.get_data_dtype()
    if proxy.slope != 1.0 or proxy.inter != 0.0 or not dtype.isnative or dtype.hasobject:
        array = np.asanyarray(img.dataobj)
        if not array.dtype.isnative:  # big-endian files: torch only takes native byte order
            array = array.astype(array.dtype.newbyteorder("="))
        return array, np.asarray(img.affine, dtype=np.float64)
    array = np.ndarray(img.shape, dtype, buffer=raw, offset=int(proxy.offset), order="F")
    return array, np.asarray(img.affine, dtype=np.float64)


class IgzipNibabelReader(NibabelReader):
    """``NibabelReader`` whose ``read`` gunzips a single ``.nii.gz`` with ISA-L and parses it from memory."""

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        names = ensure_tuple(data)
        if igzip is None or len(names) != 1 or not str(names[0]).lower().endswith(".nii.gz") or kwargs or self.kwargs:
            return super().read(data, **kwargs)
        self.filenames = names
        return _from_gzip(names[0])[0]
