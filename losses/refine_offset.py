"""`refine_offset`: the size of the refiner's vertex offsets (refined minus coarse mesh), in millimetres."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from losses.base import LossConfig, LossTerm
from losses.registry import register_loss


@register_loss("refine_offset")
class RefineOffsetLoss(LossTerm):
    """|d| (l1) or d^2 (mse) per coordinate of d = pred["verts_3d"] - pred["coarse"]["verts_3d"]
    ([B,778,3] mm, the same camera frame), every element weighted 1. It needs no ground truth.

    It keeps the refiner a local correction of the coarse MANO mesh: the root-relative 3D and 2D
    terms on the refined output otherwise ask the refiner to undo the coarse mesh's rotation error
    with large offsets, which deform the hand (PA-MPJPE worse than the coarse mesh). With `mse`, small
    offsets cost little and large ones much. Both sides have 778 x 3 elements per sample, so its
    balance against vertex_3d is the same under every reduction.
    """

    supports_aux = False  # it reads pred["coarse"] itself

    class Config(LossConfig):
        loss_type: Literal["l1", "mse"] = Field("mse", description="l1: |d| per coordinate; mse: d^2 (mm^2)")

    def elementwise(self, pred, batch):
        refined = self.from_pred(pred, "verts_3d")
        coarse = self.from_pred(pred, "coarse", "verts_3d")
        self.check_same_shape("verts_3d (refined vs coarse)", refined, coarse)
        offsets_mm = refined - coarse
        error = offsets_mm.abs() if self.config.loss_type == "l1" else offsets_mm.square()
        return error, error.new_ones(error.shape[0])
