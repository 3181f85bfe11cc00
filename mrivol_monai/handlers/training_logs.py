"""Logs of the training workflow: the learning rate in TensorBoard, the full log in a file, a short console.

MONAI's ``TensorBoardStatsHandler`` logs engine metrics and the loss but not the optimiser's learning rate;
``epoch_event_writer`` lets us add it without a handler class of our own. The console keeps one line per
epoch and a closing summary (:class:`TrainingConsole`); MONAI's and ignite's own lines (per iteration, per
metric) go to the log file of :func:`log_to_file` (``bundle/configs/logging.conf`` keeps them off the console).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events


def learning_rate_writer(optimizer: torch.optim.Optimizer, tag: str = "learning_rate") -> Callable:
    """``(engine, writer) -> None`` writing the first param group's lr once per epoch (the engine's metrics are
    already written by the trainer's other ``TensorBoardStatsHandler``)."""

    def write(engine: Engine, writer) -> None:
        epoch = engine.state.epoch
        writer.add_scalar(tag, float(optimizer.param_groups[0]["lr"]), epoch)
        writer.flush()

    return write


LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
_FILE_HANDLER_ATTR = "_mrivol_log_file"


def log_to_file(path: str | os.PathLike, level: int = logging.INFO) -> Path:
    """Send every log record (MONAI's and ignite's per-iteration and per-epoch lines included) to ``path``,
    replacing a file set up by an earlier call in this process. The console keeps what ``logging.conf`` gives
    it. ``logging.conf`` cannot do this itself: the file lives in the run's output folder, known only to the
    config. Returns ``path``."""
    from mrivol_monai.handlers.checkpoints import ensure_writable_dir

    path = Path(path)
    ensure_writable_dir(path.parent, "output_dir")  # one line naming the setting, not an OSError from logging
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    setattr(handler, _FILE_HANDLER_ATTR, True)
    # loggers that do not reach the root: ours (logging.conf gives it its own console handler) and MONAI's
    # get_logger() ones (monai.bundle's input summary), which print to stdout themselves
    loggers = [logging.getLogger()] + [
        logger for name, logger in sorted(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and not logger.propagate and name.split(".")[0] in ("mrivol_monai", "monai")]
    for target in loggers:
        for old in [h for h in target.handlers if getattr(h, _FILE_HANDLER_ATTR, False)]:
            target.removeHandler(old)
            old.close()
        target.addHandler(handler)
    root = logging.getLogger()
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return path


class TrainingConsole:
    """Trainer handler: one console line per epoch (mean loss, train and validation Dice, learning rate, time)
    and a closing summary (best validation Dice and epoch, where the model, checkpoint, log file and TensorBoard
    events are, and the commands that evaluate and predict with the model).

    MONAI's ``StatsHandler`` logs one line per metric per engine (13 lines an epoch here) and cannot put the
    validator's Dice and the optimiser's lr on the trainer's line; this handler only reads state, it draws no
    random numbers. Attach it after ``ValidationHandler`` and ``ProgressBar`` so that validation has run and the
    epoch's progress bar is cleared when the line is written. Lines go to the ``mrivol_monai`` console logger.
    """

    def __init__(self, validator: Engine | None = None, optimizer: torch.optim.Optimizer | None = None,
                 ckpt_dir: str | os.PathLike = "", output_dir: str | os.PathLike = "",
                 log_file: str | os.PathLike | None = None, record: Any = None,
                 loss_transform: Callable[[Any], Any] | None = None, train_metric: str = "train_mean_dice",
                 val_metric: str = "val_mean_dice", evaluate_config: str | None = None) -> None:
        from monai.handlers import from_engine

        self.validator, self.optimizer = validator, optimizer
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        self.log_file = None if log_file is None else Path(log_file)
        self.record = record
        self.loss_transform = loss_transform or from_engine(["loss"], first=True)
        self.train_metric, self.val_metric = train_metric, val_metric
        self.evaluate_config = evaluate_config
        self.logger = logging.getLogger(__name__)
        self._losses: list[float] = []
        self._epoch_start = self._run_start = 0.0
        self._lr = math.nan

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer)."""
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _lr_now(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else math.nan

    def started(self, engine: Engine) -> None:
        self._run_start = time.perf_counter()
        n_train = _dataset_size(engine)
        n_val = _dataset_size(self.validator) if self.validator is not None else None
        line = f"training: {n_train} volumes"
        if n_val is not None:
            line += f", validating on {n_val}"
        line += f", up to {engine.state.max_epochs} epochs"
        if self.log_file is not None:
            line += f"; full log: {self.log_file}"
        self.logger.info(line)
        if self.record is not None and hasattr(self.record, "describe"):
            self.logger.info("provenance (in every checkpoint): %s", self.record.describe(overrides=False))

    def epoch_started(self, engine: Engine) -> None:
        self._losses = []
        self._epoch_start = time.perf_counter()
        self._lr = self._lr_now()

    def iteration_completed(self, engine: Engine) -> None:
        loss = self.loss_transform(engine.state.output)
        self._losses.append(float(loss.item() if isinstance(loss, torch.Tensor) else loss))

    def _val(self) -> tuple[float, float, int]:
        """(this epoch's validation Dice, best so far, its epoch); NaN/-1 when validation did not run."""
        if self.validator is None:
            return math.nan, math.nan, -1
        state = self.validator.state
        return (float(state.metrics.get(self.val_metric, math.nan)), float(getattr(state, "best_metric", math.nan)),
                int(getattr(state, "best_metric_epoch", -1)))

    def epoch_completed(self, engine: Engine) -> None:
        epoch, width = engine.state.epoch, len(str(engine.state.max_epochs))
        loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
        train = float(engine.state.metrics.get(self.train_metric, math.nan))
        val, _, best_epoch = self._val()
        mark = "  (best)" if best_epoch == epoch else ""
        self.logger.info(f"epoch {epoch:>{width}}/{engine.state.max_epochs}  loss {loss:.4f}  train Dice {train:.4f}  "
                         f"val Dice {val:.4f}  lr {self._lr:.1e}  {time.perf_counter() - self._epoch_start:.1f} s{mark}")

    def completed(self, engine: Engine) -> None:
        from mrivol_monai.provenance import format_override

        epochs, minutes = engine.state.epoch, (time.perf_counter() - self._run_start) / 60
        _, best, best_epoch = self._val()
        stop = ("stopped early (validation Dice did not gain early_stop_min_delta within early_stop_patience validations;"
                " smaller gains still replace the best model)") if epochs < engine.state.max_epochs else "all epochs run"
        model = self.ckpt_dir / "model.pt"
        latest = sorted(self.ckpt_dir.glob("latest_*.pt"), key=lambda p: p.stat().st_mtime)
        provenance = getattr(self.record, "provenance", None) or {}
        configs = [f["path"] for f in provenance.get("config_files", [])]
        overrides = " ".join(format_override(k, v) for k, v in (provenance.get("overrides") or {}).items())
        evaluate = None
        if configs:
            overlay = self.evaluate_config or (Path(configs[0]).parent / "evaluate.json").as_posix()
            listed = ",".join(f"'{c}'" for c in [*configs, overlay])
            evaluate = f"python -m monai.bundle run evaluating --config_file \"[{listed}]\"" + (
                f" {overrides}" if overrides else "")
        lines = [f"done: {epochs} epochs in {minutes:.1f} min, {stop}; best validation Dice {best:.4f} at epoch "
                 f"{best_epoch}",
                 f"  model        {model}" + ("" if model.is_file() else " (not written: no validation ran)")]
        if latest:
            lines.append(f"  checkpoint   {latest[-1]} (model, optimiser, scheduler, trainer: to resume)")
        if self.log_file is not None:
            lines.append(f"  full log     {self.log_file}")
        lines.append(f"  TensorBoard  tensorboard --logdir {self.output_dir}")
        if evaluate:
            lines.append(f"  evaluate     {evaluate}")
        lines.append(f"  predict      mrivol predict SCAN.nii.gz --model {model} --out results/")
        self.logger.info("\n".join(lines))


def _dataset_size(engine: Engine | None) -> int | None:
    loader = getattr(engine, "data_loader", None)
    try:
        return len(loader.dataset)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        return None
