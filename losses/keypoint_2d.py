"""`keypoint_2d`: L1 between predicted and ground-truth 2D keypoints, in crop units."""
from __future__ import annotations

from losses import debug
from losses.base import LossTerm
from losses.registry import register_loss


@register_loss("keypoint_2d")
class Keypoint2DLoss(LossTerm):
    """|pred["keypoints_2d"] - batch["keypoints_2d"]| per coordinate, weighted by keypoints_2d_valid.

    Keypoints are [B,21,2] crop units in [-0.5, 0.5] (x right, y down); the validity [B,21]
    applies to both coordinates, so `mean` is the mean absolute coordinate error of the valid joints.
    """

    def elementwise(self, pred, batch):
        keypoints_pred = self.from_pred(pred, "keypoints_2d")
        keypoints_gt = self.from_batch(batch, "keypoints_2d")
        valid = self.from_batch(batch, "keypoints_2d_valid")
        self.check_same_shape("keypoints_2d", keypoints_pred, keypoints_gt)
        debug.note(f"{self.pred_label}['keypoints_2d'] (crop units)", keypoints_pred)
        debug.note("batch['keypoints_2d'] (crop units)", keypoints_gt)
        return (keypoints_pred - keypoints_gt).abs(), valid.unsqueeze(-1)
