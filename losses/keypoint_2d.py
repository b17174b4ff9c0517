"""`keypoint_2d` and `token_keypoint_2d`: L1 between predicted and ground-truth 2D keypoints, in crop units."""
from __future__ import annotations

from losses import debug
from losses.base import LossTerm, centre_on_root
from losses.registry import register_loss


@register_loss("keypoint_2d")
class Keypoint2DLoss(LossTerm):
    """|pred["keypoints_2d"] - batch["keypoints_2d"]| per coordinate, weighted by keypoints_2d_valid.

    Keypoints are [B,21,2] crop units in [-0.5, 0.5] (x right, y down); the validity [B,21]
    applies to both coordinates, so `mean` is the mean absolute coordinate error of the valid joints.
    """

    pred_key = "keypoints_2d"

    def targets(self, keypoints_gt, valid):
        """The ground truth [B,21,2] and validity [B,21] this term compares with."""
        debug.note("batch['keypoints_2d'] (crop units)", keypoints_gt)
        return keypoints_gt, valid

    def elementwise(self, pred, batch):
        keypoints_pred = self.from_pred(pred, self.pred_key)
        keypoints_gt = self.from_batch(batch, "keypoints_2d")
        self.check_same_shape(self.pred_key, keypoints_pred, keypoints_gt)
        debug.note(f"{self.pred_label}['{self.pred_key}'] (crop units)", keypoints_pred)
        target, valid = self.targets(keypoints_gt, self.from_batch(batch, "keypoints_2d_valid"))
        return (keypoints_pred - target).abs(), valid.unsqueeze(-1)


@register_loss("token_keypoint_2d")
class TokenKeypoint2DLoss(Keypoint2DLoss):
    """L1 between pred["token_keypoints_2d"] and the ground-truth 2D keypoints minus the ground-truth
    wrist (joint 0), in crop units: the wrist-relative keypoints that `model.token_keypoints` regresses
    linearly from the mean-pooled backbone tokens. It trains the backbone directly, beside the MANO
    head; the model's outputs do not use these keypoints. A joint counts when it and the wrist are valid.
    """

    supports_aux = False  # pred["coarse"] has no token keypoints
    pred_key = "token_keypoints_2d"
    root_index = 0  # the wrist

    def targets(self, keypoints_gt, valid):
        r = self.root_index
        return (centre_on_root(keypoints_gt, keypoints_gt, r, "batch['keypoints_2d']", unit="crop units"),
                valid * valid[:, r:r + 1])
