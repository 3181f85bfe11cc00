"""Grid search over config ids (the paper's "systematic grid search"), selected by validation Dice only.

A space file (YAML or JSON) names the overlays every point starts from, fixed settings, seeds, and the grid::

    name: unet_small
    overlays: []                       # relative to bundle/configs, as in the experiment variants
    settings: {epochs: 10, "network_def#width": 8}
    seeds: [0]
    grid:
      learning_rate: [0.001, 0.0003]
      loss_name: [bce_dice, dice]

Every combination of the grid values is one point, trained (never tested) once per seed through the same
runner as the experiments, in ``<out>/<name>/<point id>/seed<k>``. The point id is a hash of its values, so
a reordered or extended grid reuses finished points. ``leaderboard.csv`` ranks points by mean validation
Dice; ``best.json`` is the winning point's values, usable as an overlay.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrivol_monai.errors import InputError
from mrivol_monai.experiments.aggregate import describe
from mrivol_monai.experiments.runner import RunSpec, run_all
from mrivol_monai.atomic_io import write_atomic

__all__ = ["load_space", "points", "point_id", "grid_specs", "leaderboard", "run_grid"]

_SPACE_KEYS = {"name", "overlays", "settings", "seeds", "grid"}


def load_space(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a space file; InputError naming the file and the problem."""
    import yaml

    path = Path(path)
    try:
        space = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as err:
        raise InputError(path, f"cannot read space file: {err}".splitlines()[0]) from err
    if not isinstance(space, dict):
        raise InputError(path, "space file must be a mapping with a 'grid'")
    unknown = set(space) - _SPACE_KEYS
    if unknown:
        raise InputError(path, f"unknown keys {sorted(unknown)}; expected some of {sorted(_SPACE_KEYS)}")
    grid = space.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise InputError(path, "'grid' must map config ids to non-empty lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InputError(path, f"grid {key!r}: expected a non-empty list of values, got {values!r}")
    seeds = space.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise InputError(path, f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    return {"name": str(space.get("name") or path.stem), "overlays": list(space.get("overlays") or []),
            "settings": dict(space.get("settings") or {}), "seeds": seeds, "grid": grid}


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid: one {config id: value} per point, in file order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_id(values: Mapping[str, Any]) -> str:
    """Stable short id of a point (hash of its sorted values)."""
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def grid_specs(space: Mapping[str, Any], out: str | os.PathLike,
               settings: Mapping[str, Any] | None = None) -> list[tuple[dict[str, Any], RunSpec]]:
    """(point values, run spec) for every point x seed; training only (``evaluate=False``)."""
    root = Path(out) / space["name"]
    specs = []
    for values in points(space["grid"]):
        pid = point_id(values)
        shared = {**space["settings"], **dict(settings or {}), **values}
        for seed in space["seeds"]:
            specs.append((values, RunSpec("grid", pid, seed, root / pid / f"seed{seed}", tuple(space["overlays"]),
                                          shared, evaluate=False, label=json.dumps(values, sort_keys=True))))
    return specs


def leaderboard(space: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Points ranked by mean validation Dice over seeds (best first); test Dice is never looked at."""
    rows = []
    for values in points(space["grid"]):
        pid = point_id(values)
        mine = [r for r in results if r["variant"] == pid]
        if not mine:
            continue
        val = describe(r["val_dice"] for r in mine)
        rows.append({"point": pid, **values, "n_runs": len(mine), "val_dice_mean": val["mean"],
                     "val_dice_std": val["std"], "train_dice_mean": describe(r["train_dice"] for r in mine)["mean"],
                     "epochs_mean": describe(r["epochs"] for r in mine)["mean"], "params": mine[0]["params"],
                     "train_seconds_mean": describe(r["train_seconds"] for r in mine)["mean"]})
    rows.sort(key=lambda r: -r["val_dice_mean"] if r["val_dice_mean"] == r["val_dice_mean"] else float("inf"))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        fields = ["rank"] + [k for k in rows[0] if k != "rank"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return buf.getvalue()


def run_grid(space_file: str | os.PathLike, out: str | os.PathLike, settings: Mapping[str, Any] | None = None,
             jobs: int = 1, threads: int | None = None, progress: Any = None) -> tuple[list[dict], list[str]]:
    """Run (or resume) the grid of ``space_file``; writes ``leaderboard.csv`` and ``best.json`` next to the
    runs. Returns (leaderboard rows, error messages of failed runs)."""
    space = load_space(space_file)
    pairs = grid_specs(space, out, settings)
    results, errors = run_all([s for _, s in pairs], jobs=jobs, threads=threads, on_done=progress)
    board = leaderboard(space, results)
    root = Path(out) / space["name"]
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "leaderboard.csv", _csv(board))
    if board:
        best = {k: board[0][k] for k in space["grid"]}
        write_atomic(root / "best.json", json.dumps(best, indent=2) + "\n")
    return board, errors
