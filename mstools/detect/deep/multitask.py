"""Denner et al.'s multitask longitudinal network (paper 000), 2.5D.

"The two tasks share the same encoder, but two separate decoders are assigned for each
task" (paper 000, sec. 2.3): a segmentation decoder and a deformable-registration
decoder, the latter trained without labels (warped-image MSE + diffusion smoothness,
eq. 2, VoxelMorph-like). Inputs are the baseline and follow-up slices stacked as
channels (early fusion, paper 000 fig. 1). 2.5D as the paper (sec. 2.1): one model
with shared weights for the three orientations; at inference every voxel gets the
mean of the probabilities of its axial, coronal and sagittal slices.

Paper 000 uses FC-DenseNet57 (Tiramisu, ~2 M parameters) blocks; here both decoders
and the encoder are plain 2D U-Net blocks (as :mod:`mstools.detect.deep.unet`), which keep
the shared-encoder / two-decoder structure at a fraction of the CPU cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mstools.detect.deep.config import ModelConfig
from mstools.detect.deep.unet import Decoder, Encoder, widths

OUTPUTS = ("new",)


class MultitaskNet2D(nn.Module):
    """2D slices (B, 2, H, W) in; new-lesion logits (B, 1, H, W) and a displacement (B, 2, H, W) out.

    The displacement is in voxels along the slice's two array axes; it maps the
    baseline slice onto the follow-up slice (:func:`warp`).
    """

    channels_in = 2

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w = widths(config)
        self.encoder = Encoder(self.channels_in, w, config.norm, dims=2)
        self.segmentation = Decoder(w, 1, config.norm, dims=2)
        self.registration = Decoder(w, 2, config.norm, dims=2)
        nn.init.normal_(self.registration.out.weight, std=1e-5)  # start near the identity (VoxelMorph)
        nn.init.zeros_(self.registration.out.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = self.encoder(x)
        return {"new": self.segmentation(skips), "flow": self.registration(skips)}


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (B, C, H, W) at p + flow(p) (bilinear, border values), flow in voxels."""
    b, _, h, w = image.shape
    grid_i, grid_j = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                                    torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    i = grid_i + flow[:, 0]
    j = grid_j + flow[:, 1]
    # grid_sample wants (x, y) = (column, row) normalised to [-1, 1] (align_corners=True)
    grid = torch.stack([2 * j / max(w - 1, 1) - 1, 2 * i / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
