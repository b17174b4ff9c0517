"""The MANO head: a transformer decoder whose single query token cross-attends to the ViT tokens.

It regresses 16 rotations (6D, Gram-Schmidt), 10 betas and HaMeR's weak-perspective camera
(s, tx, ty), each as an offset added to an initial value (docs/hamer_recipe.md), optionally over
several iterative-error-feedback steps (`ief_iters`). With `model.head.hand_pose: pca` the 15 hand
joints are instead K coefficients of the MANO file's pose PCA (root still 6D).
"""
from __future__ import annotations

import torch
from torch import nn

from utnet.errors import UserError
from utnet.geometry import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from utnet.model.camera import TYPICAL_HAND_MM

NUM_HAND_JOINTS = 15  # the hand pose's rotations; the root (global orientation) comes first
NUM_BETAS = 10


class CrossAttentionLayer(nn.Module):
    """Pre-norm decoder layer for one query token: cross-attention to the context, then an MLP.

    A decoder's self-attention over a single token is only a linear map of that token, so it is left out.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """query [B,1,dim], context [B,N,dim] (already normalised) -> [B,1,dim]."""
        q = self.norm_q(query)
        query = query + self.attn(q, context, context, need_weights=False)[0]
        return query + self.mlp(self.norm_mlp(query))


class ManoHead(nn.Module):
    """tokens [B,N,token_dim] -> MANO rotations, betas and camera.

    The query token is zero (HaMeR) or a learned vector, plus an embedding of the current
    estimate (that is what makes the `ief_iters` steps differ). Each step adds the output layer's
    result to the estimate. The estimate is kept as: the root rotation in 6D; the hand pose as 15 x 6D
    rotations, or as K pose-PCA coefficients when `pose_basis` is given; betas; a normalised camera
    c = (c_s, c_x, c_y) decoded as s = init_scale * exp(c_s) (1/mm, always positive),
    tx = c_x * TYPICAL_HAND_MM, ty = c_y * TYPICAL_HAND_MM (mm), so that every output is O(1).

    Args:
        init_scale: initial camera s (1/mm; camera.initial_scale(data.bbox_expand)).
        init_hand_pose_aa: [45] axis-angle initial hand pose (tensor or array; MANO's hands_mean),
            or None for identity. With `pose_basis` it is the origin of the coefficients (required).
        pose_basis: None, or [K, 45]: the axis-angle change per unit coefficient (the file's PCA
            components scaled by their spread, so that coefficients are O(1)); hand pose (axis-angle)
            = init_hand_pose_aa + coefficients @ pose_basis.
    """

    def __init__(self, token_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, *, init_scale: float,
                 query: str = "zero", ief_iters: int = 1, init_hand_pose_aa=None, pose_basis=None):
        super().__init__()
        if dim % heads:
            raise UserError(f"model.head.heads: {heads} heads do not divide model.head.dim {dim}")
        if pose_basis is not None and init_hand_pose_aa is None:
            raise UserError("model.head.hand_pose: pca needs model.head.init_pose: mean (the PCA's origin)")
        self.pca = pose_basis is not None
        self.pose_dim = int(pose_basis.shape[0]) if self.pca else NUM_HAND_JOINTS * 6
        state_dim = 6 + self.pose_dim + NUM_BETAS + 3
        self.context = nn.Sequential(nn.Linear(token_dim, dim), nn.LayerNorm(dim))
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if query == "learned" else None
        self.state_embed = nn.Linear(state_dim, dim)
        self.out = nn.Linear(dim, state_dim)
        # HaMeR's small output init: the first prediction is the initial value, gradients still flow.
        nn.init.xavier_uniform_(self.out.weight, gain=0.01)
        nn.init.zeros_(self.out.bias)
        self.ief_iters = ief_iters
        self.init_scale = float(init_scale)

        root = matrix_to_rot6d(torch.eye(3)).reshape(6)
        if not self.pca:
            hand = torch.eye(3).expand(NUM_HAND_JOINTS, 3, 3).clone()
            if init_hand_pose_aa is not None:
                hand = axis_angle_to_matrix(torch.as_tensor(init_hand_pose_aa, dtype=torch.float32).reshape(15, 3))
            hand = matrix_to_rot6d(hand).reshape(-1)
        else:
            hand = torch.zeros(self.pose_dim)  # coefficient 0 = the origin (hands_mean)
            # Not persistent, like the MANO layer's buffers: a checkpoint carries no MANO arrays.
            self.register_buffer("pose_origin_aa", torch.as_tensor(init_hand_pose_aa, dtype=torch.float32).reshape(45),
                                 persistent=False)
            self.register_buffer("pose_basis", torch.as_tensor(pose_basis, dtype=torch.float32), persistent=False)
        init_state = torch.cat([root, hand, torch.zeros(NUM_BETAS + 3)])
        self.register_buffer("init_state", init_state, persistent=False)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens [B,N,token_dim] -> dict with global_orient [B,1,3,3], hand_pose [B,15,3,3]
        (rotation matrices, OpenCV camera frame), betas [B,10], cam [B,3] (s 1/mm, tx mm, ty mm)."""
        B = tokens.shape[0]
        context = self.context(tokens)
        state = self.init_state.expand(B, -1)
        for _ in range(self.ief_iters):
            query = self.state_embed(state)[:, None]
            if self.query is not None:
                query = query + self.query
            for layer in self.layers:
                query = layer(query, context)
            state = state + self.out(self.norm(query[:, 0]))
        root, hand, betas, c_cam = state.split([6, self.pose_dim, NUM_BETAS, 3], dim=1)
        global_orient = rot6d_to_matrix(root.reshape(B, 1, 6))
        if self.pca:
            hand_aa = self.pose_origin_aa + hand @ self.pose_basis
            hand_pose = axis_angle_to_matrix(hand_aa.reshape(B, NUM_HAND_JOINTS, 3))
        else:
            hand_pose = rot6d_to_matrix(hand.reshape(B, NUM_HAND_JOINTS, 6))
        c_s, c_x, c_y = c_cam.unbind(-1)
        cam = torch.stack([self.init_scale * torch.exp(c_s), c_x * TYPICAL_HAND_MM, c_y * TYPICAL_HAND_MM], dim=-1)
        return {"global_orient": global_orient, "hand_pose": hand_pose, "betas": betas, "cam": cam}
