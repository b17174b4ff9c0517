"""`vertex_3d`: L1 between 3D mesh vertices, each side centred on its own root joint, in millimetres (or metres: `unit`)."""
from __future__ import annotations

from pydantic import Field

from losses.base import LossConfig, LossTerm, centre_on_root
from losses.joint_3d import NUM_JOINTS
from losses.registry import register_loss
from losses.units import LengthUnit, from_mm


@register_loss("vertex_3d")
class Vertex3DLoss(LossTerm):
    """|centred pred["verts_3d"] - centred batch["verts_3d"]| per coordinate ([B,778,3] mm, OpenCV
    camera frame). The prediction is centred on pred["joints_3d"][:, root_index], the ground truth
    on batch["joints_3d"][:, root_index]. Weight per sample: has_mano times joints_3d_valid of
    the root. The difference is taken in `unit` (mm, or m for recipes whose weights assume metres).
    """

    class Config(LossConfig):
        root_index: int = Field(0, ge=0, lt=NUM_JOINTS, description="joint both meshes are centred on (0 = wrist)")
        unit: LengthUnit = Field("mm", description="length unit of the error: mm, or m for recipes written in metres")

    def elementwise(self, pred, batch):
        root = self.config.root_index
        verts_pred = self.from_pred(pred, "verts_3d")
        verts_gt = self.from_batch(batch, "verts_3d")
        joints_pred = self.from_pred(pred, "joints_3d")
        joints_gt = self.from_batch(batch, "joints_3d")
        root_valid = self.from_batch(batch, "joints_3d_valid")[:, root]
        has_mano = self.from_batch(batch, "has_mano")
        self.check_same_shape("verts_3d", verts_pred, verts_gt)
        diff = from_mm(centre_on_root(verts_pred, joints_pred, root, f"{self.pred_label}['verts_3d']")
                       - centre_on_root(verts_gt, joints_gt, root, "batch['verts_3d']"), self.config.unit)
        return diff.abs(), has_mano * root_valid
