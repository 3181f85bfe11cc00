"""Run experiment variants x seeds through the real bundle workflows, one subprocess per run, resumably.

Each run lives in ``<out>/<E>/<variant>/seed<k>/``:

- ``profile.json``, ``run.json``: the overlays the runner adds (profile settings under the variant's overlays;
  run dirs and seed last), ``spec.json`` (what the child runs) and ``command.txt`` (the equivalent
  ``python -m monai.bundle run`` commands, to rerun one by hand);
- ``logs/`` (TensorBoard), ``models/`` (``model.pt`` = best validation Dice, ``latest_*.pt``), ``eval/``
  (``volumes.csv``, ``summary.json``, ``summary.md`` from the volume handler on the test split), ``run.log``;
- ``result.json``, written atomically once everything above finished. A run with a ``result.json`` is never
  rerun. A run without one (crashed, killed) that left a latest checkpoint resumes from it (the bundle's
  ``--resume true``: same epochs and best model as an uninterrupted run); its ``result.json`` then says
  ``resumed_from`` and leaves its time columns out (null), since the killed attempt's time is unknown. A run
  that left no checkpoint is cleared and rerun.

The child (``python -m mrivol_monai.experiments.runner RUN_DIR``) builds the training and then the evaluation
workflow with ``monai.bundle.create_workflow``, exactly what ``python -m monai.bundle run`` does, in one
process so the interpreter starts once per run; the parent measures the child's peak RSS with ``os.wait4``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mrivol_monai.errors import InputError
from mrivol_monai.experiments.variants import Profile, get_experiment, select_variants
from mrivol_monai.atomic_io import json_safe, write_atomic

__all__ = ["RunFailed", "RunSpec", "BUNDLE", "CONFIGS", "RESULT_FILE", "cache_overlay", "warm_cache", "plan", "run_all", "run_one",
           "collect", "execute_run", "read_scalar_steps", "read_scalars", "resampling_floor", "subject_scores"]

logger = logging.getLogger(__name__)

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"
RESULT_FILE = "result.json"
_STALE = ("logs", "models", "eval", "timing.json", "run.log")
_STALE_ON_RESUME = ("eval", "timing.json")  # a resumed run keeps its checkpoints, TensorBoard events and log
_UNMEASURED_ON_RESUME = ("train_seconds", "wall_seconds", "cpu_seconds")  # the killed attempt's share is unknown


class RunFailed(RuntimeError):
    """A run's child process exited non-zero; the message names the run dir and ends with its log tail."""


@dataclass
class RunSpec:
    """One training (+ test evaluation) run: the variant's overlays, shared settings, seed and folder."""

    experiment: str
    variant: str
    seed: int
    run_dir: Path
    overlays: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True
    label: str = ""
    cache_root: Path | None = None

    def _files(self, *middle: str) -> list[str]:
        return ([str(CONFIGS / "train.json"), str(self.run_dir / "profile.json")]
                + [str(CONFIGS / o) for o in self.overlays] + list(middle) + [str(self.run_dir / "run.json")])

    def train_files(self) -> list[str]:
        """Config files of the training workflow, in overlay order (plus the disk-cache overlay, if any)."""
        return self._files() + ([str(self.run_dir / "cache.json")] if self.cache_root else [])

    def eval_files(self) -> list[str]:
        """Config files of the evaluation workflow (``evaluate.json`` after the variant's overlays)."""
        return self._files(str(CONFIGS / "evaluate.json"))

    def run_settings(self, resume: bool = False) -> dict[str, Any]:
        """The run's own overlay: its folders and seed, and ``resume`` when it continues a killed attempt."""
        return {"bundle_root": str(BUNDLE), "seed": int(self.seed), "ckpt_dir": str(self.run_dir / "models"),
                "output_dir": str(self.run_dir / "logs"), "eval_dir": str(self.run_dir / "eval"),
                **({"resume": True} if resume else {})}

    def interrupted_checkpoint(self) -> Path | None:
        """The latest checkpoint a killed attempt left in ``models/`` (None: nothing to resume from)."""
        from mrivol_monai.handlers.checkpoints import latest_checkpoint

        return latest_checkpoint(self.run_dir / "models")


def plan(experiment: str, profile: Profile, out: str | os.PathLike, repeats: int | None = None,
         variants: Sequence[str] | None = None, settings: Mapping[str, Any] | None = None,
         first_seed: int = 0, cache: bool = True) -> list[RunSpec]:
    """Runs of ``experiment`` under ``profile``: every selected variant x seeds ``first_seed ..`` (``repeats``
    of them, default the profile's). ``settings`` (config id -> value) go over the profile's. ``cache`` keeps
    preprocessed volumes on disk under ``<out>/.cache`` across runs (see :func:`cache_overlay`)."""
    exp = get_experiment(experiment)
    n = profile.repeats if repeats is None else int(repeats)
    if n < 1:
        raise InputError(None, f"repeats must be >= 1, got {repeats}")
    shared = {**profile.settings, **dict(settings or {})}
    specs = []
    for v in select_variants(exp, profile, list(variants) if variants else None):
        for seed in range(first_seed, first_seed + n):
            specs.append(RunSpec(exp.key, v.name, seed, Path(out) / exp.key / v.name / f"seed{seed}", v.overlays,
                                 shared, label=v.label, cache_root=Path(out) / ".cache" if cache else None))
    return specs


# config ids whose (raw) content decides what the deterministic part of a dataset's transforms produces
_CACHE_KEY_IDS = ("preprocessing", "train#slice_sampling", "spatial_size", "num_classes", "depth_axis", "task",
                  "crop_margin", "head_threshold_fraction", "image_resize_mode", "label_resize_mode",
                  "slab_neighbours", "bundle_root", "dataset_dir", "datalist", "limit_subjects")


def cache_overlay(files: Sequence[str], cache_root: str | os.PathLike) -> dict[str, Any]:
    """Overlay swapping the training and validation ``CacheDataset`` for MONAI's ``PersistentDataset`` in
    ``<cache_root>/<key>/{train,val}``: loading and resampling the cohort costs about a second per volume on
    2 cores, paid once per study instead of once per run. ``key`` hashes the raw config of everything that
    shapes the cached (deterministic) transforms, so variants with other preprocessing get their own cache."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    raw = {k: parser.get(k) for k in _CACHE_KEY_IDS}
    key = hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(cache_root).resolve() / key
    out = {}
    for split, data_id in (("train", "train#dataset"), ("val", "validate#dataset")):
        out[data_id] = {"_target_": "PersistentDataset", "data": parser.get(f"{data_id}#data"),
                        "transform": parser.get(f"{data_id}#transform"), "cache_dir": str(root / split)}
    return out


_WARM_LOCK = threading.Lock()
_WARMED: set[str] = set()


def warm_cache(spec: RunSpec) -> None:
    """Fill ``spec``'s disk cache (every training and validation volume) before any run reads it, once per
    cache folder and process. A run that read a partly filled cache would batch cached items (tensors) with
    fresh ones (``CropForegroundd``'s numpy crop coordinates), which do not collate."""
    from monai.bundle import ConfigParser

    cache = json.loads((spec.run_dir / "cache.json").read_text())
    key = cache["train#dataset"]["cache_dir"]
    with _WARM_LOCK:
        if key in _WARMED:
            return
        parser = ConfigParser()
        parser.read_config(spec.train_files())
        parser.get_parsed_content("imports")
        parser.get_parsed_content("initialize")  # makes the cohort and datalist if they are missing
        for data_id in ("train#dataset", "validate#dataset"):
            dataset = parser.get_parsed_content(data_id)
            for i in range(len(dataset)):
                dataset[i]
        _WARMED.add(key)


def _bundle_command(run_id: str, files: Sequence[str]) -> str:
    listed = ",".join(f"'{f}'" for f in files)
    logging_conf = CONFIGS / "logging.conf"
    return f"python -m monai.bundle run {run_id} --config_file \"[{listed}]\" --logging_file {logging_conf}"


def _prepare(spec: RunSpec, resume: bool = False) -> None:
    """Clear what a crashed attempt left (all of it, or with ``resume`` only its evaluation) and write the
    overlays, spec and commands of ``spec``."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    for name in _STALE_ON_RESUME if resume else _STALE:
        path = spec.run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    write_atomic(spec.run_dir / "profile.json", json.dumps(spec.settings, indent=2) + "\n")
    write_atomic(spec.run_dir / "run.json", json.dumps(spec.run_settings(resume), indent=2) + "\n")
    if spec.cache_root:
        overlay = cache_overlay(spec.train_files()[:-1], spec.cache_root)
        write_atomic(spec.run_dir / "cache.json", json.dumps(overlay, indent=2) + "\n")
    record = {**asdict(spec), "run_dir": str(spec.run_dir), "train_files": spec.train_files(),
              "eval_files": spec.eval_files()}
    write_atomic(spec.run_dir / "spec.json", json.dumps(record, indent=2, default=str) + "\n")
    commands = [_bundle_command("training", spec.train_files())]
    if spec.evaluate:
        commands.append(_bundle_command("evaluating", spec.eval_files()))
    write_atomic(spec.run_dir / "command.txt", "\n".join(commands) + "\n")


def _wait_with_rusage(proc: subprocess.Popen) -> tuple[int, float, float]:
    """Wait for ``proc``; (exit code, its peak RSS in MB, its CPU seconds user + system). ``os.wait4`` gives
    that child's own rusage, which ``resource.getrusage(RUSAGE_CHILDREN)`` cannot (it is cumulative)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime  # Linux: maxrss in kB


def run_one(spec: RunSpec, threads: int | None = None) -> tuple[dict[str, Any], bool]:
    """Run ``spec`` unless its ``result.json`` exists, resuming a killed attempt from its latest checkpoint.
    Returns (result, ran). Raises :class:`RunFailed`."""
    result_path = spec.run_dir / RESULT_FILE
    if result_path.is_file():
        return json.loads(result_path.read_text()), False
    resumed_from = spec.interrupted_checkpoint()
    _prepare(spec, resume=resumed_from is not None)
    if spec.cache_root:
        warm_cache(spec)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with open(spec.run_dir / "run.log", "a" if resumed_from else "w") as log:
        if resumed_from:
            log.write(f"--- mrivol runner: resuming from {resumed_from.name}\n")
            log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "mrivol_monai.experiments.runner", str(spec.run_dir)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=BUNDLE.parent)
        code, rss_mb, cpu_s = _wait_with_rusage(proc)
    wall = time.perf_counter() - started
    if code != 0:
        lines = (spec.run_dir / "run.log").read_text(errors="replace").strip().splitlines()
        causes = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
        raise RunFailed(f"{spec.run_dir}: run failed (exit {code})" + (f": {causes[0]}" if causes else "")
                        + f"; see {spec.run_dir / 'run.log'}; last lines:\n" + "\n".join(lines[-6:]))
    result = collect(spec, peak_rss_mb=rss_mb, wall_seconds=wall, cpu_seconds=cpu_s)
    if resumed_from is not None:
        result.update({key: None for key in _UNMEASURED_ON_RESUME}, resumed_from=resumed_from.name)
    write_atomic(result_path, json.dumps(result, indent=2) + "\n")
    return result, True


def run_all(specs: Sequence[RunSpec], jobs: int = 1, threads: int | None = None,
            on_done: Callable[[RunSpec, dict | None, bool, str], None] | None = None) -> tuple[list[dict], list[str]]:
    """Run every spec (``jobs`` at a time); failures don't stop the others. Returns (results, error messages)."""
    results: list[dict] = []
    errors: list[str] = []

    def one(spec: RunSpec) -> None:
        try:
            result, ran = run_one(spec, threads)
        except RunFailed as err:
            errors.append(str(err))
            if on_done:
                on_done(spec, None, True, str(err))
            return
        results.append(result)
        if on_done:
            on_done(spec, result, ran, "")

    if jobs <= 1:
        for spec in specs:
            one(spec)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, specs))
    order = {(s.experiment, s.variant, s.seed): i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order.get((r["experiment"], r["variant"], r["seed"]), len(order)))
    return results, errors


def read_scalar_steps(log_dir: str | os.PathLike, tags: Iterable[str]) -> dict[str, dict[int, float]]:
    """TensorBoard scalars ``tags`` in ``log_dir`` -> {step: value} per tag (all event files; a step logged twice
    keeps its last value: train.json's two epoch-level trainer handlers both log the metrics). The trainer logs
    per epoch (steps 1, 2, ...); the validator logs at the trainer's epoch (``Evaluator.run(global_epoch)``), so
    with ``val_interval`` k its steps are k, 2k, ..."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {t: {} for t in tags}
    for event_file in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in found:
            if tag in acc.Tags()["scalars"]:
                for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
                    found[tag][int(e.step)] = float(e.value)
    return {t: dict(sorted(by_step.items())) for t, by_step in found.items()}


def read_scalars(log_dir: str | os.PathLike, tags: Iterable[str]) -> dict[str, list[float]]:
    """TensorBoard scalars ``tags`` in ``log_dir`` -> one value per step, in step order (the steps themselves are
    dropped: use :func:`read_scalar_steps` to know which epoch a value belongs to)."""
    return {t: list(by_step.values()) for t, by_step in read_scalar_steps(log_dir, tags).items()}


def _structure_stats(summary: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {}
    for s in summary.get("structures", []):
        v = s.get("voxels", {})
        out[s["structure"]] = {"dice": s.get("dice_mean"), **{k: v.get(k) for k in (
            "signed_pct_mean", "signed_pct_std", "abs_pct_mean", "abs_pct_std", "share_over", "share_under")}}
    return out


def subject_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``volumes.csv`` rows (``read_volumes_csv``) -> {subject: {"dice": mean foreground Dice, "vol_abs_pct":
    mean foreground |grid-voxel % error|}}: the per-subject numbers paired comparisons are made on."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if int(r["class_index"]) == 0:
            continue
        mine = out.setdefault(str(r["subject"]), {"dice": [], "vol_abs_pct": []})
        mine["dice"].append(float(r["dice"]))
        mine["vol_abs_pct"].append(abs(float(r["pct_error_voxels"])))
    return {s: {k: _mean(v) for k, v in d.items()} for s, d in out.items()}


def resampling_floor(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``volumes.csv`` rows -> {structure: mean signed % error of the true grid mask vs the native label}: the
    resampling floor a perfect grid segmentation still carries; its sign comes from the grid's phase."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(str(r["structure"]), []).append(float(r["resampling_pct_error"]))
    return {name: _mean(v) for name, v in by.items()}


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def collect(spec: RunSpec, peak_rss_mb: float = math.nan, wall_seconds: float = math.nan,
            cpu_seconds: float = math.nan) -> dict[str, Any]:
    """A finished run's folder -> its result record (Dice, volume errors, cost). Best epoch = highest
    validation Dice (the checkpoint ``model.pt`` holds); train Dice is taken at that epoch (validation runs every
    ``val_interval`` epochs: its TensorBoard steps are epochs, not indices). ``val_curve`` keeps [epoch, val Dice]
    for the convergence rule, ``per_subject`` the test Dice and volume error per subject for paired tests,
    ``vol_floor_signed_pct`` the resampling floor (mean over foreground structures). ``wall_seconds``,
    ``cpu_seconds``, ``peak_rss_mb`` describe the whole child process (training + evaluation)."""
    timing = json.loads((spec.run_dir / "timing.json").read_text())
    scalars = read_scalar_steps(spec.run_dir / "logs", ("val_mean_dice", "train_mean_dice"))
    val, train = scalars["val_mean_dice"], scalars["train_mean_dice"]  # {epoch: Dice}; val only every val_interval
    if not val:
        raise RunFailed(f"{spec.run_dir / 'logs'}: no val_mean_dice in the TensorBoard logs")
    best = max(val, key=lambda epoch: (val[epoch], -epoch))  # first epoch with the best value, as the saver keeps
    result: dict[str, Any] = {
        "experiment": spec.experiment, "variant": spec.variant, "label": spec.label, "seed": spec.seed,
        "overlays": list(spec.overlays), "settings": spec.settings,
        "val_dice": val[best], "best_epoch": best, "epochs": max(train) if train else max(val),
        "train_dice": train.get(best, math.nan),
        "val_curve": [[epoch, dice] for epoch, dice in val.items()],  # [epoch, val Dice] per validation
        "max_epochs": timing.get("max_epochs"), "params": timing["params"],
        "n_train_subjects": timing["n_train_subjects"], "slices_per_volume": timing["slices_per_volume"],
        "n_data_points": timing["n_train_subjects"] * timing["slices_per_volume"],
        "train_seconds": timing["train_seconds"], "eval_seconds": timing.get("eval_seconds"),
        "wall_seconds": wall_seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak_rss_mb,
        "task": timing.get("task"), "spatial_size": timing.get("spatial_size"),
    }
    result["early_stopped"] = bool(result["max_epochs"] and result["epochs"] < result["max_epochs"])
    if spec.evaluate:
        summary = json.loads((spec.run_dir / "eval" / "summary.json").read_text())
        structures = _structure_stats(summary)
        from mrivol_monai.handlers.volume_estimation import read_volumes_csv  # lazy: pulls in torch and MONAI

        volumes = read_volumes_csv(spec.run_dir / "eval" / "volumes.csv")
        for name, floor in resampling_floor(volumes).items():
            structures.setdefault(name, {})["floor_signed_pct"] = floor
        foreground = [s for name, s in structures.items() if name != "background"]
        result.update({
            "test_dice": _nan(summary.get("mean_dice_foreground")), "n_test_subjects": summary.get("n_subjects"),
            "structures": structures,
            # brain task: the one foreground structure; multi-class: mean over foreground structures
            "vol_signed_pct_mean": _mean(_nan(s["signed_pct_mean"]) for s in foreground),
            "vol_abs_pct_mean": _mean(_nan(s["abs_pct_mean"]) for s in foreground),
            "vol_abs_pct_std": _mean(_nan(s["abs_pct_std"]) for s in foreground),
            "vol_floor_signed_pct": _mean(_nan(s.get("floor_signed_pct")) for s in foreground),
            "per_subject": subject_scores(volumes),
        })
    return json_safe(result)


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def execute_run(run_dir: str | os.PathLike) -> None:
    """Child side: the training workflow, then (if asked) the evaluation workflow; writes ``timing.json``."""
    import gc

    from monai.bundle import create_workflow

    from mrivol_monai.networks import count_parameters

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    logging_conf = str(CONFIGS / "logging.conf")
    started = time.perf_counter()
    # in-process, sys.argv is not the bundle command: tell the checkpoints' provenance record its config files
    wf = create_workflow(config_file=spec["train_files"], run_id="training", logging_file=logging_conf,
                         **{"training_record#config_files": spec["train_files"]})
    wf.run()
    parser = wf.parser
    timing: dict[str, Any] = {
        "train_seconds": time.perf_counter() - started,
        "params": count_parameters(parser.get_parsed_content("network")),
        "n_train_subjects": len(parser.get_parsed_content("train#dataset").data),
        "slices_per_volume": int(parser.get_parsed_content("slices_per_volume")),
        "max_epochs": int(parser.get_parsed_content("epochs")),
        "task": parser.get_parsed_content("task"),
        "spatial_size": list(parser.get_parsed_content("spatial_size")),
    }
    wf.finalize()
    del wf, parser
    gc.collect()
    if spec["evaluate"]:
        started = time.perf_counter()
        wf = create_workflow(config_file=spec["eval_files"], run_id="evaluating", logging_file=logging_conf)
        wf.run()
        wf.finalize()
        timing["eval_seconds"] = time.perf_counter() - started
    write_atomic(run_dir / "timing.json", json.dumps(timing, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mrivol_monai.experiments.runner RUN_DIR")
    execute_run(sys.argv[1])
