"""`mano_prior`: squared error on the coarse MANO parameters (rotation matrices and betas)."""
from __future__ import annotations

import torch
from pydantic import Field

from losses.base import LossConfig, LossTerm
from losses.registry import register_loss


@register_loss("mano_prior")
class ManoPriorLoss(LossTerm):
    """Squared error between pred["coarse"] MANO parameters and the ground truth, per element.

    Prediction: global_orient [B,1,3,3], hand_pose [B,15,3,3] (rotation matrices), betas [B,10].
    Ground truth: batch["mano_rotmats"] [B,16,3,3] (root first; the engine converts the OpenCV-frame
    axis-angle to matrices), batch["mano_betas"] [B,10]. The 9 + 135 + 10 squared differences
    are weighted by has_mano times the sub-weight `global_orient`, `hand_pose` or `betas`; when
    `betas_regularizer` > 0, the 10 squared predicted betas of samples WITHOUT MANO ground truth
    are added with weight (1 - has_mano) * betas_regularizer. All parts are elements of one
    error, so with `sum` each sub-weight multiplies its part's sum (HaMeR), and with `mean` the
    sub-weights are the relative weights of one weighted mean over those elements.
    """

    supports_aux = False  # it reads pred["coarse"] itself

    class Config(LossConfig):
        global_orient: float = Field(1.0, ge=0, allow_inf_nan=False, description="sub-weight of the root rotation")
        hand_pose: float = Field(1.0, ge=0, allow_inf_nan=False, description="sub-weight of the 15 joint rotations")
        betas: float = Field(0.5, ge=0, allow_inf_nan=False, description="sub-weight of the shape coefficients")
        betas_regularizer: float = Field(0.0, ge=0, allow_inf_nan=False,
                                         description="weight of |betas|^2 for samples without MANO ground truth")

    def elementwise(self, pred, batch):
        orient, pose, betas = (self.from_pred(pred, "coarse", k) for k in ("global_orient", "hand_pose", "betas"))
        rotmats_gt = self.from_batch(batch, "mano_rotmats")
        betas_gt = self.from_batch(batch, "mano_betas")
        has_mano = self.from_batch(batch, "has_mano").float().unsqueeze(1)
        rotmats = torch.cat([orient, pose], dim=1)
        self.check_same_shape("rotation matrices", rotmats, rotmats_gt)
        self.check_same_shape("betas", betas, betas_gt)
        error = torch.cat([(rotmats - rotmats_gt).square().flatten(1), (betas - betas_gt).square(), betas.square()], 1)
        sizes = (orient[0].numel(), pose[0].numel(), betas.shape[1], betas.shape[1])
        cfg = self.config

        def per_element(values):
            return torch.cat([error.new_full((n,), v) for n, v in zip(sizes, values)])

        with_mano = per_element((cfg.global_orient, cfg.hand_pose, cfg.betas, 0.0))
        without_mano = per_element((0.0, 0.0, 0.0, cfg.betas_regularizer))
        return error, has_mano * with_mano + (1 - has_mano) * without_mano
