"""Which anatomical axis the 2D slices are cut along.

The preprocessed volume is (C, D, H, W) with D the slicing ("depth") axis, so that MONAI's
``SliceInferer(spatial_dim=0)`` and the slice sampler both slice along dim 1 of the tensor. Rather than
transposing arrays (which would lose track of the affine), we reorient with ``Orientationd`` to axis codes
whose first letter is the depth axis; MONAI then keeps the affine exact.
"""

from __future__ import annotations

# First letter: depth axis. In-plane axes are chosen so slices display in the usual radiological way
# (axial: anterior at the top, patient right on the image left).
DEPTH_AXCODES: dict[str, str] = {
    "axial": "SPL",
    "coronal": "PIL",
    "sagittal": "LIP",
}


def depth_axcodes(depth_axis: str = "axial") -> str:
    """Axis codes for ``Orientationd`` that put ``depth_axis`` (axial, coronal, sagittal) first."""
    try:
        return DEPTH_AXCODES[depth_axis]
    except KeyError:
        raise ValueError(f"depth_axis must be one of {sorted(DEPTH_AXCODES)}, got {depth_axis!r}") from None
