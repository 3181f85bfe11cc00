"""Shared fixtures: one tiny SynthIXI cohort (tiny grid) with its brain manifest, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SUBJECTS = 8


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> tuple[Path, Path]:
    """(cohort folder, brain datalist JSON) for 8 subjects on the generator's tiny grid."""
    from mrivol_monai.data import manifests, synthetic

    root = tmp_path_factory.mktemp("synthixi_tiny")
    synthetic.generate_cohort(root, n_subjects=TINY_SUBJECTS, seed=0, geometry="tiny", workers=1, progress=False)
    datalist = root / "datalist_brain.json"
    manifests.write_manifest(manifests.build_manifest(root, task="brain", seed=0), datalist)
    return root, datalist
