"""Render the MANO stand-in in a few poses to docs/standin_poses.png.

A painter's-algorithm renderer (triangles sorted far to near, filled with cv2, Lambert shading):
enough to see that the stand-in looks and moves like a hand. Run: python docs/make_standin_picture.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from utnet.geometry import axis_angle_to_matrix
from utnet.mano import ManoLayer
from utnet.mano.pose_prior import named_hand_pose

SKIN_BGR = np.array([150.0, 175.0, 225.0])
TIP_BGR = (40, 40, 220)


def look_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """World -> camera rotation for a camera orbiting the hand (x right, y down, z into the image)."""
    aa = torch.tensor([[0.0, np.deg2rad(yaw_deg), 0.0], [np.deg2rad(pitch_deg), 0.0, 0.0],
                       [0.0, 0.0, np.deg2rad(roll_deg)]], dtype=torch.float64)
    Ry, Rx, Rz = axis_angle_to_matrix(aa).numpy()
    return Rz @ Rx @ Ry


def render(verts_m: np.ndarray, faces: np.ndarray, R_cam: np.ndarray, size: int = 320,
           tips: list[int] | None = None) -> np.ndarray:
    """Orthographic render of one mesh [V,3] (metres) seen through rotation R_cam; BGR uint8 image."""
    v = (verts_m - verts_m.mean(axis=0)) @ R_cam.T
    extent = np.abs(v[:, :2]).max() * 2.2
    px = (v[:, :2] / extent + 0.5) * size
    tri = v[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    facing = normals[:, 2] < 0  # toward the camera (camera looks along +z)
    light = np.array([0.3, -0.5, -0.8])
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(normals @ light, 0.0, 1.0)
    order = np.argsort(-tri[:, :, 2].mean(axis=1), kind="stable")
    img = np.full((size, size, 3), 255, np.uint8)
    for f in order:
        if not facing[f]:
            continue
        pts = np.round(px[faces[f]] * 16).astype(np.int32)
        color = tuple(int(c) for c in np.clip(SKIN_BGR * shade[f], 0, 255))
        cv2.fillConvexPoly(img, pts, color, lineType=cv2.LINE_AA, shift=4)
    for t in tips or []:
        cv2.circle(img, tuple(int(c) for c in px[t]), 3, TIP_BGR, -1, cv2.LINE_AA)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).with_name("standin_poses.png")))
    parser.add_argument("--poses", default="open,fist,pinch,point")
    args = parser.parse_args()

    layer = ManoLayer()
    faces = layer.faces.numpy()
    views = [look_rotation(25, 35, 90), look_rotation(-30, 150, 90)]  # palm side, back of the hand
    rows = []
    for R_cam in views:
        tiles = []
        for name in args.poses.split(","):
            pose = torch.tensor(named_hand_pose(layer, name), dtype=torch.float32)[None]
            out = layer(torch.zeros(1, 3), pose, torch.zeros(1, 10))
            tips = layer.tip_vertex_ids if name == "open" else None  # dots are drawn over, not depth-tested
            tile = render(out.vertices[0].numpy(), faces, R_cam, tips=tips)
            cv2.putText(tile, name, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (60, 60, 60), 2, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    img = np.concatenate(rows, axis=0)
    cv2.putText(img, "MANO stand-in (procedural, not MANO)", (10, img.shape[0] - 10),
                cv2.FONT_HERSHEY_SIMPLEX, 0.55, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.imwrite(args.out, img)
    print(args.out)


if __name__ == "__main__":
    main()
