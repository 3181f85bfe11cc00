"""FCN2d: the paper's fully convolutional network (section 3, "Model specifications"; table 3).

Encoder: ``ed_blocks - 1`` stages of [3x3 conv -> ReLU -> 2x2 max-pool], ``width`` channels doubling
per stage. Bottleneck (counted as one of the ``ed_blocks``): 3x3 conv c -> 2c, ReLU, Dropout, 1x1 conv
2c -> c. Decoder: one [ConvTranspose2d(kernel 2, stride 2) -> ReLU -> Dropout] per encoder stage,
the first keeping the bottleneck's c channels and each further one halving, back to ``width``;
then a 1x1 conv head. No skip connections, no normalisation.

Parameters with ``width=64``, ``in_channels=1``, ``out_channels=2`` (``count_parameters``), against
paper table 3:

=========  ============  ===========
ed_blocks  ours          paper
=========  ============  ===========
2          99,330        99.3k
3          501,186       501.2k
4          2,107,714     2.1M
5          8,532,034     8.5M
6          34,225,730    34.2M
7          136,993,346   137M
=========  ============  ===========
"""

from __future__ import annotations

import torch
from torch import nn

from mrivol_monai.networks.blocks import SliceSegmenter, conv_relu, head

__all__ = ["FCN2d"]


class FCN2d(SliceSegmenter):
    """Encoder-decoder FCN: (N, in_channels, H, W) -> (N, out_channels, H, W) logits.

    Args:
        in_channels: image channels.
        out_channels: classes (one-hot channels).
        ed_blocks: encoder stages + bottleneck (>= 2; paper table 3 uses 2..7, table 5 uses 5).
        width: channels of the first encoder stage (64 in the paper).
        dropout: dropout probability in the bottleneck and after every transposed conv (0.5 in the paper).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        ed_blocks: int = 5,
        width: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(in_channels, out_channels, ed_blocks, width)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FCN2d: dropout must be in [0, 1), got {dropout!r}")
        chans = [width * 2**k for k in range(ed_blocks - 1)]
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(conv_relu(c_in, c_out), nn.MaxPool2d(2))
                for c_in, c_out in zip([in_channels] + chans[:-1], chans)
            )
        )
        deepest = chans[-1]
        self.bottleneck = nn.Sequential(
            conv_relu(deepest, 2 * deepest, dropout=dropout),
            nn.Conv2d(2 * deepest, deepest, kernel_size=1),
        )
        decoder_out = chans[::-1]
        decoder_in = [deepest] + decoder_out[:-1]
        self.decoder = nn.Sequential(
            *(conv_relu(c_in, c_out, dropout=dropout, transposed=True) for c_in, c_out in zip(decoder_in, decoder_out))
        )
        self.head = head(width, out_channels)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.bottleneck(self.encoder(x))))
