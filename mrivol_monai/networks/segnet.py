"""SegNet2d: the paper's SegNet (section 3, "Model specifications"; table 5).

Encoder: ``ed_blocks`` 3x3 convs (Conv -> BatchNorm -> ReLU), 2x2 max-pooling with indices between
them (``ed_blocks - 1`` poolings, so H, W must be divisible by ``2 ** (ed_blocks - 1)`` as for the
other families). Channels double per conv from ``width`` and stop at ``8 * width``: with the paper's
``width=64`` and the default ``ed_blocks=5`` that is 64, 128, 256, 512, 512.
Decoder: mirror image, each conv followed by ``MaxUnpool2d`` with the stored indices, channels going
back to ``width``: 512, 256, 128, 64, 64. With ``ed_blocks=5`` that is the paper's 10 convolutional
layers; a 1x1 conv head gives the logits.

``ed_blocks`` is used the same way as for UNet2d/FCN2d (levels including the deepest one); the paper
only reports SegNet at 5 (table 5).

Parameters with ``width=64``, ``in_channels=1``, ``out_channels=2``, ``ed_blocks=5``:
**7,857,730** (the paper does not report SegNet's count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrivol_monai.networks.blocks import SliceSegmenter, conv_bn_relu, head

__all__ = ["SegNet2d"]

MAX_WIDTH_FACTOR = 8  # paper: 64 -> 512


class SegNet2d(SliceSegmenter):
    """SegNet with pooling indices: (N, in_channels, H, W) -> (N, out_channels, H, W) logits.

    Args:
        in_channels: image channels.
        out_channels: classes (one-hot channels).
        width: channels of the first conv (64 in the paper); the widest conv has ``8 * width``.
        ed_blocks: encoder convs = decoder convs (>= 2); 5 gives the paper's 10-conv SegNet.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, width: int = 64, ed_blocks: int = 5) -> None:
        super().__init__(in_channels, out_channels, ed_blocks, width)
        chans = [min(width * 2**k, MAX_WIDTH_FACTOR * width) for k in range(ed_blocks)]
        self.encoder = nn.ModuleList(conv_bn_relu(c_in, c_out) for c_in, c_out in zip([in_channels] + chans[:-1], chans))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        # decoder conv k maps level k's channels to level k-1's (to width at the top), then unpools
        self.decoder = nn.ModuleList(
            conv_bn_relu(chans[k], chans[k - 1] if k > 0 else chans[0]) for k in reversed(range(ed_blocks))
        )
        self.head = head(chans[0], out_channels)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        indices: list[torch.Tensor] = []
        for k, conv in enumerate(self.encoder):
            x = conv(x)
            if k < len(self.encoder) - 1:
                x, idx = self.pool(x)
                indices.append(idx)
        for conv in self.decoder:
            x = conv(x)
            if indices:
                # the functional form: torch.jit.script fails on the nn.MaxUnpool2d module (IntList assert)
                x = F.max_unpool2d(x, indices.pop(), kernel_size=2, stride=2)
        return self.head(x)
