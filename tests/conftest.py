"""Shared fixtures: one tiny SynthIXI cohort (tiny grid) with its brain manifest, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_SUBJECTS = 8
# shared data that is not part of the repository: ../shared/data next to the repo (MRIVOL_SHARED_DATA to
# point elsewhere); tests that need it skip, saying where they looked
SHARED_DATA = Path(os.environ.get("MRIVOL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def shared_data_reason(name: str, what: str) -> str:
    """Skip reason for a missing shared-data file: what it is, where (relative to the repo) it was looked for."""
    return (f"{what} ({name}) not found in ../shared/data next to the repository ({SHARED_DATA / name}); "
            "it is shared data, not part of the repo: set MRIVOL_SHARED_DATA to the folder holding it")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> tuple[Path, Path]:
    """(cohort folder, brain datalist JSON) for 8 subjects on the generator's tiny grid."""
    from mrivol_monai.data import manifests, synthetic

    root = tmp_path_factory.mktemp("synthixi_tiny")
    synthetic.generate_cohort(root, n_subjects=TINY_SUBJECTS, seed=0, geometry="tiny", workers=1, progress=False)
    datalist = root / "datalist_brain.json"
    manifests.write_manifest(manifests.build_manifest(root, task="brain", seed=0), datalist)
    return root, datalist
