"""Sample N 2D training slices per 3D volume, among the slices that show the target structure (paper E3).

MONAI's label-driven samplers (``RandCropByLabelClassesd``, ``RandCropByPosNegLabeld``) draw centre voxels
with replacement, so a slice with a large structure is picked many times and N distinct slices are not
guaranteed; the paper samples distinct slices that contain the structures. This sampler picks slice indices
uniformly *without* replacement among slices with any foreground label; only when a volume has fewer such
slices than N does it repeat some (all candidates once, then random repeats).

``any_slice_fraction`` (not in the paper) draws that share of the N slices from the whole volume instead,
so the network also sees slices without the structure (the neck, the skull vertex, slices below the
amygdala) and learns to leave them empty: trained on structure slices only, a brain model "finds" brain
in the neck of a real head scan.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable


def structure_slices(label: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, D, H, W) label -> indices along D of slices that contain any foreground.

    ``C == 1``: index label, foreground is ``> 0``. ``C > 1``: one-hot with channel 0 = background,
    foreground is any of channels ``1:``.
    """
    lab = torch.as_tensor(label)
    fg = lab[1:] > 0 if lab.shape[0] > 1 else lab > 0
    return torch.nonzero(fg.flatten(2).any(dim=2).any(dim=0)).flatten().cpu().numpy()


class RandStructureSlicesd(Randomizable, MapTransform):
    """(C, D, H, W) volumes -> list of ``num_slices`` dicts with (C, H, W) slices along D.

    Every key in ``keys`` is sliced at the same indices; other entries are copied. Each output dict gets
    ``slice_index`` (int). Returning a list makes MONAI's ``Compose`` apply the following transforms to
    each slice and ``list_data_collate`` flatten them into the batch, as with ``RandCropByPosNegLabeld``.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", num_slices: int = 1,
                 any_slice_fraction: float = 0.0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if int(num_slices) < 1:
            raise ValueError(f"num_slices (slices_per_volume) must be >= 1, got {num_slices}")
        if not 0.0 <= float(any_slice_fraction) <= 1.0:
            raise ValueError(f"any_slice_fraction must be in [0, 1], got {any_slice_fraction}")
        self.label_key = label_key
        self.num_slices = int(num_slices)
        self.n_any = int(round(self.num_slices * float(any_slice_fraction)))
        self._indices: np.ndarray = np.zeros(0, dtype=int)

    def randomize(self, candidates: np.ndarray, depth: int) -> None:  # type: ignore[override]
        if candidates.size == 0:  # no structure at all: fall back to any slice rather than fail
            candidates = np.arange(depth)
        n_structure = self.num_slices - self.n_any
        if candidates.size >= n_structure:
            chosen = self.R.choice(candidates, size=n_structure, replace=False)
        else:
            extra = self.R.choice(candidates, size=n_structure - candidates.size, replace=True)
            chosen = np.concatenate([candidates, extra])
        if self.n_any:
            rest = np.setdiff1d(np.arange(depth), chosen)
            rest = rest if rest.size >= self.n_any else np.arange(depth)
            chosen = np.concatenate([chosen, self.R.choice(rest, size=self.n_any, replace=False)])
        self._indices = chosen.astype(int)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        d = dict(data)
        label = d[self.label_key]
        self.randomize(structure_slices(label), int(label.shape[1]))
        out: list[dict[Hashable, torch.Tensor]] = []
        for index in self._indices:
            item = dict(d)
            for key in self.key_iterator(d):
                # a plain 2D MetaTensor: the 3D affine does not describe a 2D slice, so it is not carried over
                item[key] = MetaTensor(torch.as_tensor(d[key])[:, int(index)].clone())
            item["slice_index"] = int(index)
            out.append(item)
        return out

