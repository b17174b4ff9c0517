"""`keypoint_heatmap`: squared error between predicted 2D keypoint heatmaps and Gaussians at the
ground-truth 2D keypoints (ViTPose's heatmap loss)."""
from __future__ import annotations

import torch
from pydantic import Field

from losses import debug
from losses.base import LossConfig, LossTerm
from losses.registry import register_loss
from losses.units import crop_units_to_grid


def gaussian_heatmaps(keypoints_crop: torch.Tensor, height: int, width: int, sigma_cells: float) -> torch.Tensor:
    """Keypoints [B,K,2] in crop units ([-0.5, 0.5], x right, y down; -0.5 is the crop's edge) ->
    targets [B,K,height,width]: exp(-d^2 / (2 sigma^2)), d the distance in heatmap cells from the
    keypoint to each cell's centre. Cell (i, j) has its centre at crop units ((j + 0.5) / width - 0.5,
    (i + 0.5) / height - 0.5). A keypoint outside the crop gives the tail of its Gaussian (or ~0)."""
    keypoints_cells = crop_units_to_grid(keypoints_crop.float(), height, width)
    xs = torch.arange(width, device=keypoints_crop.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=keypoints_crop.device, dtype=torch.float32) + 0.5
    dx2 = (xs - keypoints_cells[..., 0:1]).square()  # [B,K,W]
    dy2 = (ys - keypoints_cells[..., 1:2]).square()  # [B,K,H]
    return torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2.0 * sigma_cells ** 2))


@register_loss("keypoint_heatmap")
class KeypointHeatmapLoss(LossTerm):
    """sum over a joint's heatmap cells of (pred["keypoint_heatmaps"] - G)^2, one element per joint,
    G the Gaussian of `sigma` cells at the ground-truth keypoint (batch["keypoints_2d"], crop units),
    weighted by keypoints_2d_valid: `mean` is the mean over the valid joints. The heatmaps [B,21,Hh,Wh]
    tile the crop (model.keypoint_heatmaps); the peak of G is 1, so the error has no unit.

    One element per joint (not per cell) keeps the term's element count that of the keypoint terms
    (21 per sample against keypoint_2d's 42), so its balance changes little between `sum` and `mean`,
    and with sigma in cells a joint's error does not grow with the heatmap's size.
    """

    supports_aux = False  # pred["coarse"] has no heatmaps

    class Config(LossConfig):
        sigma: float = Field(1.5, gt=0, le=100, allow_inf_nan=False,
                             description="Standard deviation of the target Gaussians, in heatmap cells")

    def elementwise(self, pred, batch):
        heatmaps = self.from_pred(pred, "keypoint_heatmaps")
        keypoints_gt = self.from_batch(batch, "keypoints_2d")
        if heatmaps.dim() != 4 or heatmaps.shape[:2] != keypoints_gt.shape[:2]:
            raise ValueError(f"loss term '{self.name}': pred['keypoint_heatmaps'] {tuple(heatmaps.shape)} is not "
                             f"[B,K,H,W] for batch['keypoints_2d'] {tuple(keypoints_gt.shape)}")
        target = gaussian_heatmaps(keypoints_gt, heatmaps.shape[2], heatmaps.shape[3], self.config.sigma)
        debug.note("batch['keypoints_2d'] (crop units)", keypoints_gt)
        debug.note(f"{self.pred_label}['keypoint_heatmaps'], all cells (target peak 1)", heatmaps.reshape(-1, 1))
        valid = self.from_batch(batch, "keypoints_2d_valid")
        return (heatmaps.float() - target).square().sum(dim=(2, 3)), valid
