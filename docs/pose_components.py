"""How much of the finger articulation a PA-MPJPE level needs (docs/experiments.md, "The goal in
principal components").

Draws poses from the MANO model's pose prior (the synthetic set's), keeps each pose's own PCA
coefficients for the first k components only, and scores the truncated pose against the full one with
the official Procrustes alignment (true root and shape: only the articulation differs).
Run: python docs/pose_components.py [--poses 400] [--mano PATH]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from utnet.geometry import axis_angle_to_matrix, procrustes_align
from utnet.mano import ManoLayer
from utnet.mano.pose_prior import sample_natural_hand_pose


def joints_mm(layer: ManoLayer, hand_pose_aa: np.ndarray) -> torch.Tensor:
    """[n, 45] axis-angle finger poses, identity root, mean shape -> [n, 21, 3] joints in mm."""
    hand = axis_angle_to_matrix(torch.as_tensor(hand_pose_aa, dtype=torch.float32).reshape(-1, 15, 3))
    n = hand.shape[0]
    _, joints = layer.mesh_mm(torch.eye(3).expand(n, 1, 3, 3), hand, torch.zeros(n, 10))
    return joints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=400)
    parser.add_argument("--mano", default=None, help="MANO_RIGHT.pkl (default: the stand-in)")
    args = parser.parse_args()
    layer = ManoLayer(model_path=args.mano)
    variance = layer.hands_std ** 2
    print("variance carried by the first 1 / 3 / 6 components:",
          " / ".join(f"{variance[:k].sum() / variance.sum():.0%}" for k in (1, 3, 6)))
    poses = sample_natural_hand_pose(layer, np.random.default_rng(0), args.poses)
    coefficients = layer.pose_to_pca(poses)
    truth = joints_mm(layer, poses)
    for k in (0, 1, 2, 3, 6, 10, 45):
        pred = joints_mm(layer, layer.pose_from_pca(coefficients[:, :k]))
        pa_mm = (procrustes_align(pred, truth) - truth).norm(dim=-1).mean().item()
        print(f"first {k:2d} components: PA-MPJPE {pa_mm:5.2f} mm")


if __name__ == "__main__":
    main()
