"""The committed SynthIXI manifests describe exactly the default cohort that the bundle generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrivol_monai.data import manifests, synthetic

MANIFESTS = Path(__file__).resolve().parents[1] / "bundle" / "datalists"


def _default_subjects() -> tuple[list[str], list[str]]:
    names, sites, seen = [], [], {s: 0 for s in synthetic.SITES}
    for number, site in enumerate(synthetic.site_sequence(synthetic.DEFAULT_N_SUBJECTS, synthetic.DEFAULT_SEED), 1):
        seen[site] += 1
        names.append(synthetic.subject_name(number, site, seen[site]))
        sites.append(site)
    return names, sites


@pytest.mark.parametrize("task", ["brain", "subcortical"])
def test_committed_manifest_matches_default_cohort_and_split(task):
    content = json.loads((MANIFESTS / f"synthixi_{task}.json").read_text())
    names, sites = _default_subjects()
    expected = manifests.split_subjects(names, sites, seed=content["seed"], test_site="IOP", val_fraction=0.15)
    for split in ("training", "validation", "test"):
        entries = content[split]
        assert [e["subject"] for e in entries] == expected[split]
        for e in entries:
            assert e["image"] == f"{e['subject']}-T1.nii.gz"
            assert e["label"] == f"{e['subject']}-{task}.nii.gz"
            assert e["site"] == e["subject"].split("-")[1]
    assert content["task"] == task
    assert content["data_root"] == "../data/synthixi"  # relative to bundle/datalists: the bundle's data folder
    assert {e["site"] for e in content["test"]} == {"IOP"}
    assert len(content["training"]) + len(content["validation"]) + len(content["test"]) == synthetic.DEFAULT_N_SUBJECTS


def test_committed_deep_grey_box_manifest_keeps_the_cohort_split():
    fine = json.loads((MANIFESTS / "synthixi_subcortical_fine.json").read_text())
    grid = json.loads((MANIFESTS / "synthixi_subcortical.json").read_text())
    for split in ("training", "validation", "test"):
        assert sorted(e["subject"] for e in fine[split]) == sorted(e["subject"] for e in grid[split])
        assert all(e["image"] == f"{e['subject']}-T1box.nii.gz" for e in fine[split])
    assert fine["task"] == "subcortical_fine" and len(fine["labels"]) == 11
