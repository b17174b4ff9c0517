"""`joint_3d`: L1 or squared error between root-centred 3D joints, in millimetres (or metres: `unit`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from losses.base import LossConfig, LossTerm, centre_on_root
from losses.registry import register_loss
from losses.units import LengthUnit, from_mm

NUM_JOINTS = 21  # canonical hand joints; losses/ does not import utnet.joints


@register_loss("joint_3d")
class Joint3DLoss(LossTerm):
    """Error between pred["joints_3d"] and batch["joints_3d"] ([B,21,3] mm, OpenCV camera frame,
    absolute), each centred on its OWN joint `root_index` here, the one place root-centring
    happens. Per coordinate: |d| (l1) or d^2 (mse). Weight: joints_3d_valid of the joint times
    that of the root (a missing ground-truth root makes every centred joint meaningless).
    The difference is taken in `unit` (mm, or m: 1000x smaller for l1, 10^6x for mse). With
    reduction `sum` and unit `m` this is HaMeR's 3D keypoint loss, whose weights assume metres.
    """

    class Config(LossConfig):
        loss_type: Literal["l1", "mse"] = Field("l1", description="l1: |d| per coordinate; mse: d^2")
        root_index: int = Field(0, ge=0, lt=NUM_JOINTS, description="joint both sides are centred on (0 = wrist)")
        unit: LengthUnit = Field("mm", description="length unit of the error: mm, or m for recipes written in metres")

    def elementwise(self, pred, batch):
        root = self.config.root_index
        joints_pred = self.from_pred(pred, "joints_3d")
        joints_gt = self.from_batch(batch, "joints_3d")
        valid = self.from_batch(batch, "joints_3d_valid")
        self.check_same_shape("joints_3d", joints_pred, joints_gt)
        diff = from_mm(centre_on_root(joints_pred, joints_pred, root, f"{self.pred_label}['joints_3d']")
                       - centre_on_root(joints_gt, joints_gt, root, "batch['joints_3d']"), self.config.unit)
        error = diff.abs() if self.config.loss_type == "l1" else diff.square()
        return error, (valid * valid[:, root : root + 1]).unsqueeze(-1)
