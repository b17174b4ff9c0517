"""The MANO head: a transformer decoder whose single query token cross-attends to the ViT tokens.

It regresses 16 rotations (6D, Gram-Schmidt), 10 betas and HaMeR's weak-perspective camera
(s, tx, ty), each as an offset added to an initial value (docs/hamer_recipe.md), optionally over
several iterative-error-feedback steps (`ief_iters`).
"""
from __future__ import annotations

import torch
from torch import nn

from utnet.errors import UserError
from utnet.geometry import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from utnet.model.camera import TYPICAL_HAND_MM

NUM_ROTATIONS = 16  # global orientation + 15 hand joints
NUM_BETAS = 10
STATE_DIM = NUM_ROTATIONS * 6 + NUM_BETAS + 3


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
    result to the estimate. The estimate is kept as: 16 x 6D rotations; betas; a normalised camera
    c = (c_s, c_x, c_y) decoded as s = init_scale * exp(c_s) (1/mm, always positive),
    tx = c_x * TYPICAL_HAND_MM, ty = c_y * TYPICAL_HAND_MM (mm), so that every output is O(1).

    Args:
        init_scale: initial camera s (1/mm; camera.initial_scale(data.bbox_expand)).
        init_hand_pose_aa: [45] axis-angle initial hand pose (tensor or array; MANO's hands_mean),
            or None for identity.
    """

    def __init__(self, token_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, *, init_scale: float,
                 query: str = "zero", ief_iters: int = 1, init_hand_pose_aa=None):
        super().__init__()
        if dim % heads:
            raise UserError(f"model.head.heads: {heads} heads do not divide model.head.dim {dim}")
        self.context = nn.Sequential(nn.Linear(token_dim, dim), nn.LayerNorm(dim))
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if query == "learned" else None
        self.state_embed = nn.Linear(STATE_DIM, dim)
        self.out = nn.Linear(dim, STATE_DIM)
        # HaMeR's small output init: the first prediction is the initial value, gradients still flow.
        nn.init.xavier_uniform_(self.out.weight, gain=0.01)
        nn.init.zeros_(self.out.bias)
        self.ief_iters = ief_iters
        self.init_scale = float(init_scale)

        eye = torch.eye(3).expand(NUM_ROTATIONS, 3, 3).clone()
        if init_hand_pose_aa is not None:
            eye[1:] = axis_angle_to_matrix(torch.as_tensor(init_hand_pose_aa, dtype=torch.float32).reshape(15, 3))
        init_state = torch.cat([matrix_to_rot6d(eye).reshape(-1), torch.zeros(NUM_BETAS + 3)])
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
        rotmats = rot6d_to_matrix(state[:, :NUM_ROTATIONS * 6].reshape(B, NUM_ROTATIONS, 6))
        betas = state[:, NUM_ROTATIONS * 6:NUM_ROTATIONS * 6 + NUM_BETAS]
        c_s, c_x, c_y = state[:, -3:].unbind(-1)
        cam = torch.stack([self.init_scale * torch.exp(c_s), c_x * TYPICAL_HAND_MM, c_y * TYPICAL_HAND_MM], dim=-1)
        return {"global_orient": rotmats[:, :1], "hand_pose": rotmats[:, 1:], "betas": betas, "cam": cam}
