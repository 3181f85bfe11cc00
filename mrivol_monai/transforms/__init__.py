"""Dictionary transforms MONAI lacks: head z-scoring, volume checks, structure-aware slice sampling,
switchable E1 augmentations, largest-component clean-up, and the depth-axis orientation codes."""

from mrivol_monai.transforms.augmentation import AUGMENTATIONS
from mrivol_monai.transforms.augmentation import build as build_augmentation
from mrivol_monai.transforms.checks import CheckVolumed
from mrivol_monai.transforms.components import KeepLargestComponentd, keep_largest_components, largest_component_labels
from mrivol_monai.transforms.intensity import (
    HeadForeground,
    HeadZScored,
    head_foreground,
    head_sample_index,
    head_threshold,
)
from mrivol_monai.transforms.orientation import DEPTH_AXCODES, depth_axcodes
from mrivol_monai.transforms.slice_sampling import RandStructureSlicesd, structure_slices

__all__ = [
    "AUGMENTATIONS", "build_augmentation", "CheckVolumed", "KeepLargestComponentd", "keep_largest_components",
    "largest_component_labels", "HeadForeground", "HeadZScored", "head_foreground", "head_sample_index", "head_threshold",
    "DEPTH_AXCODES", "depth_axcodes", "RandStructureSlicesd", "structure_slices",
]
