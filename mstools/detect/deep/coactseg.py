"""CoactSeg (paper 002, Wu et al., MICCAI 2023): one 3D VNet, three inputs, three heads.

Inputs (channels): baseline, follow-up, and their difference x_d = x_fu - x_b
(paper 002, sec. 3.1); for a single-time-point sample baseline = follow-up = the one
scan and x_d = 0 (eq. 1). Outputs (logits): all lesions at time 1, all lesions at
time 2, new lesions. "Three prediction heads are designed as individual
convolutional blocks ... the last prediction head also receives the features from
the first two" (sec. 3.2): the new-lesion head reads the decoder features
concatenated with the features of the two all-lesion heads.

The backbone is the VNet of paper 002's code (from UA-MT): convolution stages of
1, 2, 3, 3, 3 convolutions (3^3, norm, ReLU), stride-2 2^3 convolutions down,
2^3 transposed convolutions up, additive skip connections; 16 base filters.
"""

from __future__ import annotations

import torch
from torch import nn

from mstools.detect.deep.config import ModelConfig

OUTPUTS = ("all_t1", "all_t2", "new")


def _norm(kind: str, channels: int, dims: int = 3) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)


class ConvBlock(nn.Sequential):
    """``stages`` x (3^3 convolution, normalisation, ReLU)."""

    def __init__(self, stages: int, channels_in: int, channels_out: int, norm: str):
        layers: list[nn.Module] = []
        for n in range(stages):
            layers += [nn.Conv3d(channels_in if n == 0 else channels_out, channels_out, 3, padding=1),
                       _norm(norm, channels_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Down(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, norm: str):
        super().__init__(nn.Conv3d(channels_in, channels_out, 2, stride=2), _norm(norm, channels_out),
                         nn.ReLU(inplace=True))


class Up(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, norm: str):
        super().__init__(nn.ConvTranspose3d(channels_in, channels_out, 2, stride=2), _norm(norm, channels_out),
                         nn.ReLU(inplace=True))


def _stages(level: int) -> int:
    """Convolutions per VNet stage: 1, 2, 3, 3, ... (paper 002's VNet)."""
    return min(level + 1, 3)


class VNetBackbone(nn.Module):
    """VNet encoder-decoder returning full-resolution features (``base_filters`` channels)."""

    def __init__(self, channels_in: int, base_filters: int, levels: int, norm: str):
        super().__init__()
        widths = [base_filters * 2 ** n for n in range(levels + 1)]
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for n in range(levels + 1):
            self.encoder.append(ConvBlock(_stages(n), channels_in if n == 0 else widths[n], widths[n], norm))
            if n < levels:
                self.down.append(Down(widths[n], widths[n + 1], norm))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for n in reversed(range(levels)):
            self.up.append(Up(widths[n + 1], widths[n], norm))
            self.decoder.append(ConvBlock(_stages(n) if n > 0 else 1, widths[n], widths[n], norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for n, block in enumerate(self.encoder):
            x = block(x)
            if n < len(self.down):
                skips.append(x)
                x = self.down[n](x)
        for up, block in zip(self.up, self.decoder):
            x = block(up(x) + skips.pop())
        return x


class CoactSeg(nn.Module):
    """VNet with an all-lesion head per time point and a new-lesion head fed by both."""

    channels_in = 3

    def __init__(self, config: ModelConfig):
        super().__init__()
        n = config.base_filters
        self.config = config
        self.backbone = VNetBackbone(self.channels_in, n, config.levels, config.norm)
        self.head_t1 = ConvBlock(1, n, n, config.norm)
        self.head_t2 = ConvBlock(1, n, n, config.norm)
        self.head_new = ConvBlock(1, 3 * n, n, config.norm)
        self.out_t1 = nn.Conv3d(n, 1, 1)
        self.out_t2 = nn.Conv3d(n, 1, 1)
        self.out_new = nn.Conv3d(n, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (B, 3, I, J, K) = baseline, follow-up, difference; returns logits (B, 1, I, J, K) per head."""
        features = self.backbone(x)
        f1 = self.head_t1(features)
        f2 = self.head_t2(features)
        fn = self.head_new(torch.cat([features, f1, f2], dim=1))
        return {"all_t1": self.out_t1(f1), "all_t2": self.out_t2(f2), "new": self.out_new(fn)}
