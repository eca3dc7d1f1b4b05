"""Early-fusion 3D U-Net: baseline and follow-up as two input channels, one new-lesion output.

The baseline of most MSSEG-2 teams (paper 001, e.g. Masson et al.'s nnU-Net and
Basaran's early fusion): nnU-Net's plain U-Net blocks (two 3^3 convolutions with
instance normalisation and leaky ReLU, slope 0.01; stride-2 convolutions down,
transposed convolutions up, concatenated skips), widths doubling from
``base_filters`` and capped at 320 as in nnU-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from mstools.detect.deep.coactseg import _norm
from mstools.detect.deep.config import ModelConfig

OUTPUTS = ("new",)


class DoubleConv(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, norm: str, stride: int = 1, dims: int = 3):
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        super().__init__(conv(channels_in, channels_out, 3, stride=stride, padding=1),
                         _norm(norm, channels_out, dims), nn.LeakyReLU(0.01, inplace=True),
                         conv(channels_out, channels_out, 3, padding=1),
                         _norm(norm, channels_out, dims), nn.LeakyReLU(0.01, inplace=True))


class Encoder(nn.Module):
    def __init__(self, channels_in: int, widths: list[int], norm: str, dims: int = 3):
        super().__init__()
        self.stages = nn.ModuleList(
            DoubleConv(channels_in if n == 0 else widths[n - 1], widths[n], norm, 1 if n == 0 else 2, dims)
            for n in range(len(widths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    def __init__(self, widths: list[int], channels_out: int, norm: str, dims: int = 3):
        super().__init__()
        up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.up = nn.ModuleList(up(widths[n + 1], widths[n], 2, stride=2) for n in reversed(range(len(widths) - 1)))
        self.blocks = nn.ModuleList(DoubleConv(2 * widths[n], widths[n], norm, 1, dims)
                                    for n in reversed(range(len(widths) - 1)))
        self.out = conv(widths[0], channels_out, 1)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for n, (up, block) in enumerate(zip(self.up, self.blocks)):
            x = block(torch.cat([up(x), skips[-2 - n]], dim=1))
        return self.out(x)


def widths(config: ModelConfig) -> list[int]:
    return [min(config.base_filters * 2 ** n, 320) for n in range(config.levels + 1)]


class UNet3D(nn.Module):
    """Two channels in (baseline, follow-up), new-lesion logits out."""

    channels_in = 2

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w = widths(config)
        self.encoder = Encoder(self.channels_in, w, config.norm)
        self.decoder = Decoder(w, 1, config.norm)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"new": self.decoder(self.encoder(x))}
