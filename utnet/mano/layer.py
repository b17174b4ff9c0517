"""ManoLayer: MANO (official, cleaned or the stand-in) as a torch module, output in metres.

The model is built by `smplx.MANO` (use_pca=False, flat_hand_mean=True), and its buffers drive a
lean linear-blend-skinning forward (the math of smplx.lbs.lbs, batched by tree depth instead of a
loop over joints) that matches smplx to float precision. `mesh_mm` is the one place in UTNet where
MANO metres become millimetres.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from losses.units import MM_PER_M
from utnet.errors import UserError
from utnet.geometry import axis_angle_to_matrix
from utnet.joints import MANO16_TO_CANONICAL, MANO_PARENTS, TIP_VERTEX_IDS
from utnet.mano.loading import MANOModel, load_mano_model
from utnet.mano.pose_prior import joint_frames, palm_axes
from utnet.mano.standin import standin_path

# Joints grouped by depth in MANO's tree; each level's parents are the previous level, in order.
_LEVELS = ((1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))


class ManoOutput(NamedTuple):
    vertices: torch.Tensor  # [B, 778, 3] metres, MANO's frame (+ transl)
    joints: torch.Tensor    # [B, 21, 3] metres, canonical order (16 skinned joints + 5 tip vertices)


def resolve_tip_vertex_ids(tip_vertex_ids) -> list[int]:
    """'ho3d' | 'smplx' | 5 ints (thumb, index, middle, ring, pinky) -> list of 5 vertex ids."""
    if isinstance(tip_vertex_ids, str):
        if tip_vertex_ids not in TIP_VERTEX_IDS:
            raise UserError(f"mano.tip_vertex_ids: unknown name {tip_vertex_ids!r} (known: {', '.join(TIP_VERTEX_IDS)})")
        return list(TIP_VERTEX_IDS[tip_vertex_ids])
    ids = [int(i) for i in tip_vertex_ids]
    if len(ids) != 5 or any(i < 0 or i >= 778 for i in ids):
        raise UserError(f"mano.tip_vertex_ids: expected 5 vertex ids in [0, 778), got {ids}")
    return ids


def _quiet_smplx_mano(model: MANOModel):
    """smplx.MANO built from the validated arrays, with smplx's construction chatter swallowed."""
    import smplx
    from smplx.utils import Struct

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            return smplx.MANO(str(model.path), data_struct=Struct(**model.data), is_rhand=True,
                              use_pca=False, flat_hand_mean=True, create_global_orient=False,
                              create_hand_pose=False, create_betas=False, create_transl=False)
        finally:
            logging.disable(previous)


def _pose_std(data: dict) -> np.ndarray:
    """Spread of each PCA coefficient: hands_std (stand-in), else std of hands_coeffs, else 1."""
    if "hands_std" in data:
        return np.asarray(data["hands_std"], dtype=np.float64).reshape(45)
    coeffs = data.get("hands_coeffs")
    if isinstance(coeffs, np.ndarray) and coeffs.ndim == 2 and coeffs.shape[1] == 45 and len(coeffs) > 1:
        return coeffs.astype(np.float64).std(axis=0)
    return np.ones(45)


class ManoLayer(nn.Module):
    """MANO right hand. Buffers move with .to(device); forward is differentiable.

    Args:
        model_path: MANO_RIGHT.pkl (official with chumpy, or cleaned), or None for the MANO stand-in.
        tip_vertex_ids: 'ho3d' (744, 333, 444, 555, 672), 'smplx', or 5 ids (thumb, index, middle,
            ring, pinky): the vertices appended as fingertip joints.
    Attributes:
        faces: LongTensor [1538, 3]; J_regressor: [16, 778]; tip_vertex_ids: list of 5 ints;
        source: "official" | "cleaned" | "stand-in"; model_path: the file read.
        hands_mean [45], hands_components [45, 45], hands_std [45], joint_frames [15, 3, 3]:
        numpy, the model's pose prior (see pose_prior.sample_natural_hand_pose).
    """

    def __init__(self, model_path=None, tip_vertex_ids="ho3d"):
        super().__init__()
        path = standin_path() if model_path is None else model_path
        model = load_mano_model(path)
        self.source = model.source
        self.model_path = str(model.path)
        self.tip_vertex_ids = resolve_tip_vertex_ids(tip_vertex_ids)
        smplx_mano = _quiet_smplx_mano(model)
        dtype = smplx_mano.v_template.dtype

        v_template = smplx_mano.v_template
        shapedirs = smplx_mano.shapedirs[:, :, :10]
        J_regressor = smplx_mano.J_regressor
        self._buffer("faces", smplx_mano.faces_tensor.clone())
        self._buffer("J_regressor", J_regressor.clone())
        self._buffer("v_template", v_template.clone())
        self._buffer("shapedirs_flat", shapedirs.reshape(-1, 10).t().contiguous())  # [10, 778*3]
        self._buffer("J_template", J_regressor @ v_template)  # [16, 3]
        self._buffer("J_shapedirs_flat", torch.einsum("jv,vcl->ljc", J_regressor, shapedirs)
                             .reshape(10, 48).contiguous())
        self._buffer("lbs_weights", smplx_mano.lbs_weights.clone())
        posedirs = smplx_mano.posedirs  # [135, 778*3]
        self._use_posedirs = bool(posedirs.abs().max() > 0)
        self._buffer("posedirs", posedirs.clone() if self._use_posedirs else torch.zeros(0, dtype=dtype))
        self._buffer("tips", torch.tensor(self.tip_vertex_ids, dtype=torch.long))
        self._buffer("canonical", torch.tensor(MANO16_TO_CANONICAL, dtype=torch.long))
        order = [0] + [j for level in _LEVELS for j in level]
        self._buffer("level_to_mano", torch.tensor(np.argsort(order), dtype=torch.long))

        data = model.data
        joints_rest = np.asarray(data["J_regressor"], dtype=np.float64) @ np.asarray(data["v_template"], dtype=np.float64)
        distal, radial, palm_normal, _ = palm_axes(joints_rest, data["hands_mean"])
        if palm_normal is None:
            palm_normal = -np.cross(distal, radial)
        self.hands_mean = np.asarray(data["hands_mean"], dtype=np.float64).reshape(45)
        self.hands_components = np.asarray(data["hands_components"], dtype=np.float64)
        self.hands_std = _pose_std(data)
        self.joint_frames = joint_frames(joints_rest, palm_normal)

    # ------------------------------------------------------------------ pose PCA
    # The one place for the map between MANO's pose-PCA coefficients and the axis-angle hand pose. A
    # coefficient's unit is one standard deviation of its component (hands_std), so z ~ N(0, 1) is the
    # pose prior; hands_mean is the origin. pose_from_pca scales z before the product (not z @ basis) so
    # that the synthetic sets written before these methods existed keep their exact bytes.
    def pose_pca_basis(self, k: int = 45) -> np.ndarray:
        """[k, 45] float64: the axis-angle hand-pose change per unit of each of the first k coefficients
        (pose = hands_mean + z @ basis; the same map as `pose_from_pca`)."""
        return self.hands_std[:k, None] * self.hands_components[:k]

    def pose_from_pca(self, z: np.ndarray) -> np.ndarray:
        """Coefficients [..., k] (k <= 45: the first k components) -> axis-angle hand pose [..., 45]."""
        k = np.shape(z)[-1]
        return self.hands_mean + (z * self.hands_std[:k]) @ self.hands_components[:k]

    def pose_to_pca(self, pose_aa: np.ndarray) -> np.ndarray:
        """Axis-angle hand pose [..., 45] -> its 45 coefficients (the inverse of `pose_from_pca`)."""
        return (pose_aa - self.hands_mean) @ np.linalg.pinv(self.hands_components) / self.hands_std

    def _buffer(self, name, tensor):
        # Not persistent: checkpoints of a model holding this layer never carry MANO's arrays (they are
        # licence-restricted, and a checkpoint must not swap the model file the config names).
        self.register_buffer(name, tensor, persistent=False)

    # ------------------------------------------------------------------ inputs
    def _rotations(self, global_orient: torch.Tensor, hand_pose: torch.Tensor) -> torch.Tensor:
        """Root [B,3] | [B,1,3,3] and hand [B,45] | [B,15,3] | [B,15,3,3] -> [B,16,3,3].

        Rotation matrices are recognised by their trailing (3, 3) on a tensor of 3 or more dims.
        """
        dtype = self.v_template.dtype
        B = global_orient.shape[0]
        if global_orient.dim() >= 3 and global_orient.shape[-2:] == (3, 3) and global_orient.numel() == 9 * B:
            root = global_orient.reshape(B, 1, 3, 3).to(dtype)
        elif global_orient.numel() == 3 * B:
            root = axis_angle_to_matrix(global_orient.reshape(B, 1, 3).to(dtype))
        else:
            raise ValueError(f"global_orient: expected [B,3] or [B,1,3,3], got {tuple(global_orient.shape)}")
        if hand_pose.shape[0] != B:
            raise ValueError(f"hand_pose: batch {hand_pose.shape[0]} != global_orient batch {B}")
        if hand_pose.dim() >= 3 and hand_pose.shape[-2:] == (3, 3) and hand_pose.numel() == 135 * B:
            hand = hand_pose.reshape(B, 15, 3, 3).to(dtype)
        elif hand_pose.numel() == 45 * B:
            hand = axis_angle_to_matrix(hand_pose.reshape(B, 15, 3).to(dtype))
        else:
            raise ValueError(f"hand_pose: expected [B,45] or [B,15,3,3], got {tuple(hand_pose.shape)}")
        return torch.cat([root, hand], dim=1)

    def _shape(self, betas, B, device):
        dtype = self.v_template.dtype
        if betas is None:
            return torch.zeros(B, 10, dtype=dtype, device=device)
        betas = betas.to(dtype)
        if betas.shape[-1] != 10:
            raise ValueError(f"betas: expected [B,10], got {tuple(betas.shape)}")
        return betas.reshape(-1, 10).expand(B, 10)

    # ------------------------------------------------------------------ forward
    def forward(self, global_orient, hand_pose, betas=None, transl=None) -> ManoOutput:
        """MANO mesh and joints.

        Args:
            global_orient: [B,3] axis-angle or [B,1,3,3] rotation matrices (root, MANO frame).
            hand_pose: [B,45] axis-angle (full pose, flat hand mean) or [B,15,3,3] rotation matrices.
            betas: [B,10] shape (None = zeros).
            transl: [B,3] metres, added to every vertex and joint (None = no translation).
        Returns:
            ManoOutput(vertices [B,778,3], joints [B,21,3] canonical order), METRES.
        """
        rot = self._rotations(global_orient, hand_pose)
        B = rot.shape[0]
        betas = self._shape(betas, B, rot.device)
        v_shaped = self.v_template + (betas @ self.shapedirs_flat).view(B, -1, 3)
        J = self.J_template + (betas @ self.J_shapedirs_flat).view(B, 16, 3)
        if self._use_posedirs:
            eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
            pose_feature = (rot[:, 1:] - eye).reshape(B, 135)
            v_shaped = v_shaped + (pose_feature @ self.posedirs).view(B, -1, 3)

        # Global transforms by tree depth: G_child = G_parent * [R_child | J_child - J_parent].
        G_R = [rot[:, :1]]
        G_t = [J[:, :1]]
        prev_R, prev_t = G_R[0].expand(B, 5, 3, 3), G_t[0].expand(B, 5, 3)
        for level in _LEVELS:
            idx = list(level)
            par = [MANO_PARENTS[j] for j in idx]
            rel = (J[:, idx] - J[:, par]).unsqueeze(-1)
            t = (prev_R @ rel).squeeze(-1) + prev_t
            R = prev_R @ rot[:, idx]
            G_R.append(R)
            G_t.append(t)
            prev_R, prev_t = R, t
        G_R = torch.cat(G_R, dim=1)[:, self.level_to_mano]  # [B,16,3,3] MANO order
        G_t = torch.cat(G_t, dim=1)[:, self.level_to_mano]  # [B,16,3] posed joints
        # Skinning transforms remove the rest joint: x -> G_R (x - J) + G_t.
        offset = G_t - (G_R @ J.unsqueeze(-1)).squeeze(-1)
        # blended per-vertex transforms stored column by column: [B,778,4,3] = (R e_x, R e_y, R e_z, t)
        A = torch.cat([G_R.transpose(-1, -2).reshape(B, 16, 9), offset], dim=-1)  # [B,16,12]
        T = torch.matmul(self.lbs_weights, A).view(B, -1, 4, 3)
        verts = (T[:, :, 0] * v_shaped[..., 0:1] + T[:, :, 1] * v_shaped[..., 1:2]
                 + T[:, :, 2] * v_shaped[..., 2:3] + T[:, :, 3])
        joints = torch.cat([G_t, verts[:, self.tips]], dim=1)[:, self.canonical]
        if transl is not None:
            transl = transl.to(verts.dtype).reshape(B, 1, 3)
            verts = verts + transl
            joints = joints + transl
        return ManoOutput(verts, joints)

    def mesh_mm(self, global_orient, hand_pose, betas=None, transl=None):
        """Same arguments as forward (transl in metres) -> (verts_mm [B,778,3], joints_mm [B,21,3]).

        The one place where MANO's metres become millimetres.
        """
        out = self(global_orient, hand_pose, betas, transl)
        return out.vertices * MM_PER_M, out.joints * MM_PER_M

    def joints_from_vertices(self, vertices: torch.Tensor) -> torch.Tensor:
        """Joints [B,21,3] canonical order from vertices [B,778,3] (J_regressor + tip vertices; the unit
        and frame of the input)."""
        J16 = torch.einsum("jv,bvc->bjc", self.J_regressor.to(vertices.dtype), vertices)
        return torch.cat([J16, vertices[:, self.tips]], dim=1)[:, self.canonical]

    def rest_root_joint(self, betas: torch.Tensor) -> torch.Tensor:
        """J0 (the wrist) at zero pose without translation: [B,3] metres, for rotate_mano_root."""
        betas = betas.to(self.v_template.dtype).reshape(-1, 10)
        return self.J_template[0] + betas @ self.J_shapedirs_flat[:, :3]

    def measurements_mm(self, betas: torch.Tensor | None = None) -> dict:
        """Zero-pose sizes in mm: hand length (wrist joint to middle fingertip) and palm width (breadth
        across the knuckles: extent, toward the thumb side, of the wrist-skinned vertices within 30 mm
        proximal of the knuckle line)."""
        device = self.v_template.device
        with torch.no_grad():
            betas = torch.zeros(1, 10, device=device) if betas is None else betas.reshape(1, 10).to(device)
            zero = torch.zeros(1, 3, device=device)
            verts, joints = self.mesh_mm(zero, torch.zeros(1, 45, device=device), betas)
            v, J = verts[0].double().cpu().numpy(), joints[0].double().cpu().numpy()
        wrist, middle_tip = J[0], J[12]
        index_mcp, middle_mcp, ring_mcp, pinky_mcp = J[5], J[9], J[13], J[17]
        distal = (middle_mcp - wrist) / np.linalg.norm(middle_mcp - wrist)
        radial = index_mcp - pinky_mcp
        radial = radial - np.dot(radial, distal) * distal
        radial /= np.linalg.norm(radial)
        knuckle = np.mean([np.dot(m - wrist, distal) for m in (index_mcp, middle_mcp, ring_mcp, pinky_mcp)])
        along = (v - wrist) @ distal
        palm = (self.lbs_weights.argmax(dim=1).cpu().numpy() == 0) & (along > knuckle - 30.0) & (along <= knuckle + 5.0)
        across = (v[palm] - wrist) @ radial
        return {
            "hand_length_mm": float(np.linalg.norm(middle_tip - wrist)),
            "palm_width_mm": float(across.max() - across.min()) if palm.any() else float("nan"),
        }

    def extra_repr(self) -> str:
        return f"source={self.source}, path={self.model_path}, tips={self.tip_vertex_ids}"
