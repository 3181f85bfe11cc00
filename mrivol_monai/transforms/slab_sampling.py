"""2.5D input: every depth slice carries its neighbours as extra channels (the E4 "2.5D UNet" row).

Applied to the whole (C, D, H, W) volume before slice sampling, so the same preprocessing serves training
(``RandStructureSlicesd`` then cuts (C * (2n + 1), H, W) slabs) and validation/test (``SliceInferer`` feeds
the same slabs slice by slice). MONAI has no transform that stacks neighbouring slices as channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


def stack_neighbours(img: torch.Tensor, neighbours: int) -> torch.Tensor:
    """(C, D, H, W) volume -> (C * (2n + 1), D, H, W): channel block ``k`` of input channel ``c`` holds the
    slice at depth ``d + k - n`` (indices clamped at the ends, i.e. edge slices repeat). ``n == 0`` is identity."""
    if img.ndim != 4:
        raise ValueError(f"stack_neighbours: expected a (C, D, H, W) volume, got shape {tuple(img.shape)}")
    n = int(neighbours)
    if n < 0:
        raise ValueError(f"stack_neighbours: neighbours must be >= 0, got {neighbours}")
    depth = img.shape[1]
    offsets = torch.arange(-n, n + 1, device=img.device)
    index = (torch.arange(depth, device=img.device)[None] + offsets[:, None]).clamp(0, depth - 1)  # (2n+1, D)
    slabs = torch.as_tensor(img)[:, index]  # (C, 2n+1, D, H, W)
    out = slabs.reshape(img.shape[0] * (2 * n + 1), *img.shape[1:]).contiguous()
    if isinstance(img, MetaTensor):
        return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
    return out


class NeighbourSlicesd(MapTransform):
    """Dictionary version of :func:`stack_neighbours` for image keys (never the label: it stays per slice)."""

    def __init__(self, keys: KeysCollection, neighbours: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(neighbours) < 0:
            raise ValueError(f"NeighbourSlicesd: neighbours must be >= 0, got {neighbours}")
        self.neighbours = int(neighbours)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = stack_neighbours(d[key], self.neighbours)
        return d
