"""mrivol_monai.handlers: ignite handlers for the bundle's workflows (volume estimation, crash-safe checkpoints and
resume, extra TensorBoard logs)."""

from mrivol_monai.handlers.checkpoints import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    ResumeLoader,
    TrainingRunState,
    check_epochs,
    check_model_checkpoint,
    check_training_run,
    latest_checkpoint,
)
from mrivol_monai.handlers.volume_estimation import (
    VolumeEstimationHandler,
    error_stats,
    read_volumes_csv,
    subject_rows,
    summarise,
    summary_markdown,
)

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ResumeLoader",
    "TrainingRunState",
    "check_epochs",
    "check_model_checkpoint",
    "check_training_run",
    "latest_checkpoint",
    "VolumeEstimationHandler",
    "error_stats",
    "read_volumes_csv",
    "subject_rows",
    "summarise",
    "summary_markdown",
]
