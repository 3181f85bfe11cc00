"""2D slice segmenters from the paper (UNet, SegNet, FCN) with configurable depth and width.

All map (N, C_in, H, W) images to (N, C_out, H, W) logits (no activation inside) and need H, W
divisible by ``2 ** (ed_blocks - 1)``.
"""

from mrivol_monai.networks.blocks import SliceSegmenter, count_parameters, fold_batch_norm
from mrivol_monai.networks.fcn import FCN2d
from mrivol_monai.networks.registry import NETWORKS, PAPER_DEFAULTS, build, check_target, unet3d
from mrivol_monai.networks.segnet import SegNet2d
from mrivol_monai.networks.unet import UNet2d

__all__ = [
    "FCN2d",
    "NETWORKS",
    "PAPER_DEFAULTS",
    "SegNet2d",
    "SliceSegmenter",
    "UNet2d",
    "build",
    "check_target",
    "count_parameters",
    "fold_batch_norm",
    "unet3d",
]
