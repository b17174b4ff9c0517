"""Engine-side ground truth, computed on the device from the batch's MANO parameters (batched).

The loss package never imports MANO, so what a term needs from it is added here, before the loss.
"""
from __future__ import annotations

import torch

from utnet.geometry import axis_angle_to_matrix


@torch.no_grad()
def add_mano_targets(batch: dict, mano) -> dict:
    """Add `mano_rotmats` and, when the batch has none, `verts_3d` to `batch` (in place; returned).

    batch: mano_global_orient [B,3], mano_hand_pose [B,45] (axis-angle, OpenCV camera frame),
    mano_betas [B,10], mano_transl [B,3] metres. mano: a ManoLayer.
    Adds mano_rotmats [B,16,3,3] (global orient first, then the 15 finger joints) and
    verts_3d [B,778,3] mm, OpenCV camera frame, absolute (MANO's metres become mm in mesh_mm only).
    Samples with has_mano = 0 get vertices of their (zero) parameters: terms and metrics mask them.
    """
    orient = batch["mano_global_orient"].float()
    hand_pose = batch["mano_hand_pose"].float()
    batch_size = orient.shape[0]
    pose_aa = torch.cat([orient[:, None, :], hand_pose.reshape(batch_size, 15, 3)], dim=1)
    rotmats = axis_angle_to_matrix(pose_aa)
    batch["mano_rotmats"] = rotmats
    if "verts_3d" not in batch:
        # the matrices of mano_rotmats: MANO does not convert the axis-angle a second time, and the
        # vertices come from exactly the rotations the loss compares against
        verts_mm, _ = mano.mesh_mm(rotmats[:, :1], rotmats[:, 1:], batch["mano_betas"].float(),
                                   batch["mano_transl"].float())
        batch["verts_3d"] = verts_mm.float()
    return batch
