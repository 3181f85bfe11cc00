"""Checkpoints that survive a crash, and resuming a killed training run where it stopped.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver(atomic=False)``, and ignite's ``Checkpoint``
deletes the file it replaces *before* writing the new one: a kill during a save leaves a 0-byte ``model.pt``
or no loadable latest checkpoint at all. :class:`AtomicCheckpointSaver` is MONAI's saver (same files, names
and schedule) with that disk writer swapped for :class:`AtomicDiskSaver`: temp file in the same folder,
flush + fsync, rename, and only then delete what it replaces.

Resume (``--resume true`` in ``train.json``) reloads the latest checkpoint with MONAI's ``CheckpointLoader``
at the trainer's ``STARTED``: network, optimiser, scheduler, trainer (epoch, iteration) and
:class:`TrainingRunState` (best metric, the saver's record of ``model.pt``'s score, the early-stopping
counter, and the python / numpy / torch / per-transform random states), so a run killed after epoch k ends
exactly as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler, Checkpoint
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable, Transform

from mrivol_monai.atomic_io import atomic_path, make_writable_dir
from mrivol_monai.errors import InputError

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BEST_FILE",
    "ResumeLoader",
    "TrainingRunState",
    "check_epochs",
    "check_model_checkpoint",
    "check_training_run",
    "as_flag",
    "ensure_writable_dir",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)

BEST_FILE = "model.pt"
LATEST_PATTERN = re.compile(r"^latest_.*epoch=(\d+)\.pt$")


def ensure_writable_dir(folder: str | os.PathLike, setting: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; :class:`InputError` naming the
    config ``setting`` (e.g. ``ckpt_dir``) otherwise."""
    folder = Path(folder)
    try:
        make_writable_dir(folder)
    except OSError as err:
        raise InputError(folder, f"{setting} is not writable ({err.strerror or err}); choose another with "
                                 f"--{setting} DIR") from err
    return folder


def as_flag(value: Any, setting: str) -> bool:
    """A config flag: ``true``/``false`` as JSON booleans or as the strings a command-line override passes
    (``--resume true`` arrives as ``'true'``); :class:`InputError` naming ``setting`` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(None, f"{setting} must be true or false, got {value!r}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler: ``torch.save`` to a temp file beside the target, fsync, rename over it. Files that
    ignite asks to remove are removed only after the next save succeeded (ignite asks *before* saving).
    ``filename`` fixes the file name (MONAI's ``key_metric_filename``, e.g. ``model.pt``)."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = ensure_writable_dir(dirname, "ckpt_dir")
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        with atomic_path(self.dirname / name) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.dirname)
        pending, self._pending = self._pending, []
        for old in pending:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, files and schedule) writing through :class:`AtomicDiskSaver`."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        ensure_writable_dir(save_dir, "ckpt_dir")
        super().__init__(save_dir, save_dict, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = AtomicDiskSaver(save_dir, getattr(ckpt.save_handler, "filename", None))


# ---- random states ------------------------------------------------------------------------------------------


def _randomizables(root: Any) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` reachable from ``root`` (a transform, or a dataset's ``transform``) through
    transforms' attributes, lists and dicts, in a fixed order (the order the config builds them), each once.
    Only transforms are walked, not data."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)
        elif isinstance(obj, (Transform, Randomizable)):
            if isinstance(obj, Randomizable) and isinstance(getattr(obj, "R", None), np.random.RandomState):
                found.append(obj)
            for value in vars(obj).values():
                walk(value)

    walk(getattr(root, "transform", root))  # a dataset: its transform chain, not its cached data
    return found


def _pack_numpy(state: tuple) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _unpack_numpy(state: Mapping[str, Any]) -> tuple:
    keys = torch.as_tensor(state["keys"]).numpy().astype(np.uint32)
    return (state["kind"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["gauss"]))


def _random_states(transforms: Any) -> dict[str, Any]:
    """Global python, numpy and torch generators plus each random transform's own ``R`` (plain types and tensors:
    loadable with ``torch.load(weights_only=True)``)."""
    return {
        "python": random.getstate(),
        "numpy": _pack_numpy(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "transforms": [_pack_numpy(t.R.get_state()) for t in _randomizables(transforms)],
    }


def _set_random_states(state: Mapping[str, Any], transforms: Any) -> None:
    parts = _randomizables(transforms)
    if len(parts) != len(state["transforms"]):
        raise InputError(None, f"the checkpoint holds the random states of {len(state['transforms'])} random "
                               f"transforms, this config has {len(parts)}: it was saved with another augmentation "
                               "setting; resume with the same config, or start over in another --ckpt_dir")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_unpack_numpy(state["numpy"]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in state["torch_cuda"]])
    for part, packed in zip(parts, state["transforms"]):
        part.R.set_state(_unpack_numpy(packed))


class TrainingRunState:
    """What a resumed run needs besides network, optimiser, scheduler and trainer: an object with
    ``state_dict``/``load_state_dict`` that goes into the latest checkpoint next to them.

    Holds the evaluator's best metric and its epoch, the best-model saver's record of saved scores (so a
    resumed run replaces ``model.pt`` only with a better one), the early-stopping counter and best score,
    whether the run had finished (early stop), and the random states (:func:`_random_states`) of
    ``transforms`` (the training dataset or its transform chain).
    """

    def __init__(self, evaluator: Engine, best_saver: CheckpointSaver | None, early_stop: Any = None,
                 transforms: Any = None, trainer: Engine | None = None) -> None:
        self.evaluator, self.best_saver, self.early_stop = evaluator, best_saver, early_stop
        self.transforms, self.trainer = transforms, trainer

    def _stopper(self) -> Any:
        return getattr(self.early_stop, "_handler", None)  # MONAI's EarlyStopHandler wraps ignite's EarlyStopping

    def state_dict(self) -> dict[str, Any]:
        stopper = self._stopper()
        best = getattr(self.best_saver, "_key_metric_checkpoint", None)  # None: no saver on this rank
        return {
            "train_best_metric": float(getattr(self.trainer.state, "best_metric", -1)) if self.trainer else -1.0,
            "train_best_metric_epoch": int(getattr(self.trainer.state, "best_metric_epoch", -1)) if self.trainer else -1,
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            "best_saved": [(float(p), str(f)) for p, f in best._saved] if best is not None else [],
            "early_stop": ({"counter": int(stopper.counter),
                            "best_score": None if stopper.best_score is None else float(stopper.best_score)}
                           if stopper is not None else None),
            "finished": bool(self.trainer is not None and self.trainer.should_terminate),
            "random": _random_states(self.transforms),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self.trainer is not None:
            self.trainer.state.best_metric = state["train_best_metric"]
            self.trainer.state.best_metric_epoch = state["train_best_metric_epoch"]
        best = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if best is not None:
            best.load_state_dict({"_saved": [(p, f) for p, f in state["best_saved"]]})
        stopper = self._stopper()
        if stopper is not None and state["early_stop"] is not None:
            stopper.counter = state["early_stop"]["counter"]
            stopper.best_score = state["early_stop"]["best_score"]
        _set_random_states(state["random"], self.transforms)
        if state["finished"] and self.trainer is not None:
            logger.info("the run had already finished (early stop at epoch %d): nothing to resume",
                        self.trainer.state.epoch)
            self.trainer.terminate()


def check_model_checkpoint(path: str | os.PathLike, network: torch.nn.Module, setting: str = "ckpt_dir") -> Path:
    """Before evaluation or inference loads ``path`` (MONAI's ``CheckpointLoader`` would give a traceback): it
    exists, is not empty, loads with ``weights_only=True`` and fits ``network`` (same task and classes).
    :class:`InputError` naming the file and the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no trained model here: train first (python -m monai.bundle run training ...) or "
                               f"point --{setting} at the folder that holds {path.name}")
    if path.stat().st_size == 0:
        raise InputError(path, "is empty (0 bytes: its save was interrupted); retrain, or use another --" + setting)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a checkpoint we can read safely"
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        raise InputError(path, f"not a loadable torch checkpoint ({type(err).__name__}{': ' + first[:120] if first else ''})"
                               "; retrain, or use another --" + setting) from err
    state = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "holds no network weights (expected a state dict or {'model': state dict})")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        heads = [v for v in state.values() if v.ndim >= 4]
        classes = f"{int(heads[-1].shape[0])} output classes" if heads else "other layers"
        raise InputError(path, f"does not fit this config's network ({classes} in the file): trained for another "
                               "task or network? evaluate with the configs it was trained with (e.g. add "
                               "bundle/configs/subcortical.json), or use another --" + setting) from err
    return path


# ---- resume ----------------------------------------------------------------------------------------------------


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The ``latest_*epoch=N.pt`` with the highest N in ``ckpt_dir`` (None if there is none)."""
    folder = Path(ckpt_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("latest_*.pt") if (m := LATEST_PATTERN.match(p.name))]
    return max(found)[1] if found else None


def _epoch(trainer_state: Mapping[str, Any]) -> int | None:
    """Epoch of an ignite ``Engine.state_dict()`` (it stores the iteration and the epoch length)."""
    if "epoch" in trainer_state:
        return int(trainer_state["epoch"])
    if trainer_state.get("iteration") is not None and trainer_state.get("epoch_length"):
        return int(trainer_state["iteration"]) // int(trainer_state["epoch_length"])
    return None


def _describe(ckpt_dir: Path) -> str:
    """What an earlier run left in ``ckpt_dir``, for one line."""
    latest = latest_checkpoint(ckpt_dir)
    parts = [BEST_FILE] if (ckpt_dir / BEST_FILE).exists() else []
    if latest is not None:
        try:
            saved = torch.load(latest, map_location="cpu", weights_only=True)
            trainer, run = saved.get("trainer", {}), saved.get("run_state", {})
            what = f"{latest.name}: epoch {_epoch(trainer)} of {trainer.get('max_epochs')}"
            if run:
                what += f", best val_mean_dice {run['best_metric']:.4f} at epoch {run['best_metric_epoch']}"
                what += ", stopped early" if run.get("finished") else ""
        except Exception:  # a damaged file is still worth naming; the line below says what to do
            what = f"{latest.name} (unreadable)"
        parts.append(what)
    return "; ".join(parts)


def check_epochs(epochs: Any) -> int:
    """``epochs`` if it is a whole number >= 1, else :class:`InputError` (train.json's ``initialize``)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InputError(None, f"epochs must be a whole number >= 1, got {epochs!r}; e.g. --epochs 30")
    return epochs


def check_training_run(ckpt_dir: str | os.PathLike, output_dir: str | os.PathLike, resume: Any) -> None:
    """Checks before any data is cached: ``ckpt_dir`` and ``output_dir`` writable, and a ``ckpt_dir`` that
    already holds a model is only used with ``resume`` (never silently replaced)."""
    resume = as_flag(resume, "resume")
    ckpt_dir = ensure_writable_dir(ckpt_dir, "ckpt_dir")
    ensure_writable_dir(output_dir, "output_dir")
    for stale in ckpt_dir.glob(".*.tmp.pt"):  # temp files of a save that was killed
        stale.unlink(missing_ok=True)
    found = _describe(ckpt_dir)
    if resume:
        if latest_checkpoint(ckpt_dir) is None:
            raise InputError(ckpt_dir, "--resume true, but there is no latest_*.pt checkpoint to resume from"
                                       + (f" (found {found})" if found else "") + "; run without --resume to start")
        return
    if found:
        raise InputError(ckpt_dir, f"holds a model from an earlier run ({found}); continue it with --resume true, "
                                   "or start over with another --ckpt_dir (or move these files away)")


class ResumeLoader:
    """Attach MONAI's ``CheckpointLoader`` for the latest checkpoint in ``ckpt_dir`` to the trainer when
    ``enabled`` (``--resume true``); does nothing otherwise. ``saver`` is the trainer's latest-checkpoint saver:
    its ``save_dict`` is what is loaded, and it takes over the resumed file (replaced by the next save)."""

    def __init__(self, ckpt_dir: str | os.PathLike, saver: CheckpointSaver, enabled: Any = False,
                 map_location: Any = None) -> None:
        self.ckpt_dir, self.saver = Path(ckpt_dir), saver
        self.enabled, self.map_location = as_flag(enabled, "resume"), map_location

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            raise InputError(self.ckpt_dir, "--resume true, but there is no latest_*.pt checkpoint to resume from")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and torch errors all mean "cannot resume from this file"
            raise InputError(path, f"cannot resume: not a loadable checkpoint ({type(err).__name__}); start over "
                                   "in another --ckpt_dir") from err
        load_dict = dict(self.saver.save_dict)
        missing = sorted(set(load_dict) - set(saved) if isinstance(saved, dict) else load_dict)
        if missing:
            raise InputError(path, f"cannot resume: the checkpoint lacks {', '.join(missing)} (saved by an older "
                                   "version?); start over in another --ckpt_dir")
        epoch = _epoch(saved["trainer"])
        logger.info("resuming from %s (after epoch %s)", path, epoch)
        interval = self.saver._interval_checkpoint
        if interval is not None:  # so that the next save replaces the file we resume from (n_saved)
            interval._saved = [Checkpoint.Item(epoch or 0, path.name)]
        CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=self.map_location).attach(engine)
