"""Glue the bundle's ``initialize`` step calls: make sure a cohort and its manifest exist, then load a split.

On a fresh clone ``dataset_dir`` is empty, so the default SynthIXI cohort is generated there (deterministic:
the committed ``bundle/datalists/synthixi_*.json`` describe exactly this cohort). A user with real data points
``dataset_dir`` and ``datalist`` at it and nothing is generated.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrivol_monai.data.nifti_files import NIFTI_SUFFIXES
from mrivol_monai.errors import InputError

logger = logging.getLogger(__name__)


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.endswith(NIFTI_SUFFIXES) for p in folder.iterdir())


def ensure_dataset(dataset_dir: str | Path, datalist: str | Path, task: str = "brain",
                   synthixi_subjects: int | None = None, synthixi_seed: int = 0,
                   synthixi_geometry: str = "ixi", split_seed: int = 0) -> Path:
    """Generate the SynthIXI cohort in ``dataset_dir`` if it holds no NIfTI files, and build ``datalist``
    (a MONAI datalist JSON) from ``dataset_dir`` if it does not exist. Returns the datalist path.

    ``synthixi_subjects`` None means the generator's default cohort size; ``synthixi_geometry`` is one of
    the generator's grids ("ixi", "half", "tiny").

    Under torchrun (a process group exists) rank 0 does this while the other ranks wait, so they never
    generate into the same folder at once; if rank 0 fails, every rank raises.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return _ensure_dataset(dataset_dir, datalist, task, synthixi_subjects, synthixi_seed, synthixi_geometry,
                               split_seed)
    outcome: list = [None]
    if dist.get_rank() == 0:
        try:
            _ensure_dataset(dataset_dir, datalist, task, synthixi_subjects, synthixi_seed, synthixi_geometry,
                            split_seed)
        except BaseException as err:
            outcome[0] = f"rank 0 could not prepare the dataset: {err}"
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise InputError(dataset_dir, outcome[0])
    return Path(datalist)


def _ensure_dataset(dataset_dir: str | Path, datalist: str | Path, task: str, synthixi_subjects: int | None,
                    synthixi_seed: int, synthixi_geometry: str, split_seed: int) -> Path:
    from mrivol_monai.data import manifests, synthetic

    dataset_dir, datalist = Path(dataset_dir), Path(datalist)
    if not _has_images(dataset_dir):
        if dataset_dir.exists() and not dataset_dir.is_dir():
            raise InputError(dataset_dir, "dataset_dir is not a directory")
        n = synthetic.DEFAULT_N_SUBJECTS if synthixi_subjects is None else int(synthixi_subjects)
        logger.info("no images in %s: generating the SynthIXI cohort (%d subjects, seed %d)", dataset_dir, n,
                    synthixi_seed)
        synthetic.generate_cohort(dataset_dir, n_subjects=n, seed=synthixi_seed, geometry=synthixi_geometry)
    if not datalist.exists():
        logger.info("building manifest %s from %s (task %s)", datalist, dataset_dir, task)
        manifest = manifests.build_manifest(dataset_dir, task=task, seed=split_seed)
        manifests.write_manifest(manifest, datalist)
    return datalist


def load_split(datalist: str | Path, split: str, dataset_dir: str | Path | None = None,
               limit: int | None = None, check: bool = True) -> list[dict]:
    """Entries of one split (``training``, ``validation``, ``test``) with absolute paths under ``dataset_dir``.

    ``limit`` keeps the first N entries (quick runs and tests). ``check`` opens every image/label pair with
    nibabel and reads it in full before training starts, so a truncated, non-3D or mismatched file fails
    here with one line naming it (ITK silently returns zeros for some truncated .nii.gz files).
    """
    import json

    from mrivol_monai.data import manifests

    items = manifests.load_manifest(datalist, split, data_root=dataset_dir)
    items = items[: int(limit)] if limit else items
    if check:
        task = json.loads(Path(datalist).read_text()).get("task", "brain")
        for item in items:
            manifests.check_pair(item, task, read_data=True)
    return items
