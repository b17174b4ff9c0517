"""A 2D keypoint heatmap decoder on the backbone's token grid (ViTPose's classic decoder, small).

Two stride-2 transposed convolutions (4x4 kernels, ReLU) turn the token feature map [B,D,Hp,Wp] into
[B,C,4Hp,4Wp], and a 1x1 convolution gives one heatmap per joint: [B,21,4Hp,4Wp]. Heatmap cell (i, j)
covers crop pixels [i H/Hh, (i+1) H/Hh) x [j W/Wh, (j+1) W/Wh), the same tiling as the token grid's
cells, four times finer. Trained by the `keypoint_heatmap` loss term (Gaussian targets at the
ground-truth 2D keypoints), it supervises every token with where the joints are, the signal
ViTPose pretraining gives HaMeR's backbone; the model's outputs do not use the heatmaps.
"""
from __future__ import annotations

import torch
from torch import nn

from utnet.joints import NUM_JOINTS

UPSAMPLING = 4  # heatmap cells per token-grid cell, along each axis


class KeypointHeatmapHead(nn.Module):
    """`head(fmap [B,D,Hp,Wp]) -> heatmaps [B,21,4Hp,4Wp]` (unnormalised, float32; 4 = UPSAMPLING)."""

    def __init__(self, embed_dim: int, channels: int = 64):
        super().__init__()
        layers, width = [], embed_dim
        for _ in range(UPSAMPLING.bit_length() - 1):  # one stride-2 transposed convolution per doubling
            layers += [nn.ConvTranspose2d(width, channels, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True)]
            width = channels
        self.decoder = nn.Sequential(*layers, nn.Conv2d(channels, NUM_JOINTS, kernel_size=1))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.decoder(fmap).float()
