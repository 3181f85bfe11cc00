"""mrivol_monai.handlers: ignite handlers for the bundle's workflows (volume estimation, extra TensorBoard logs)."""

from mrivol_monai.handlers.volume_estimation import (
    VolumeEstimationHandler,
    error_stats,
    read_volumes_csv,
    subject_rows,
    summarise,
    summary_markdown,
)

__all__ = [
    "VolumeEstimationHandler",
    "error_stats",
    "read_volumes_csv",
    "subject_rows",
    "summarise",
    "summary_markdown",
]
