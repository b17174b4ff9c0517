"""Prediction panels draw the predicted mesh through the model's camera, where its keypoints_2d are."""
from __future__ import annotations

import numpy as np
import torch

from utnet.engine.visualize import crop_units_to_pixels, prediction_panel
from utnet.model.camera import crop_intrinsics, project_to_crop


def _square_mesh(side_mm: float, n: int = 11):
    """A flat n x n grid of vertices, side_mm wide, in the z = 0 plane, and its triangles."""
    ticks = np.linspace(-side_mm / 2, side_mm / 2, n)
    xx, yy = np.meshgrid(ticks, ticks)
    verts = np.stack([xx.ravel(), yy.ravel(), np.zeros(n * n)], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            a = r * n + c
            faces += [[a, a + 1, a + n], [a + 1, a + n + 1, a + n]]
    return verts, np.array(faces)


def test_predicted_mesh_is_drawn_through_the_model_camera_where_its_keypoints_are():
    """A prediction of the model's kind: a 120 mm hand-sized square 21 m away in the model's
    camera (focal 5000 on the crop), off the crop centre; its 21 joints are mesh vertices spanning
    the square and its keypoints_2d their projection through the model's camera. The mesh
    must cover the box of those keypoints. Through the sample's camera (focal 250) it would be a
    2-pixel speck near the centre."""
    H, W, focal = 64, 48, 5000.0
    verts, faces = _square_mesh(120.0)
    verts_cam_mm = torch.from_numpy(verts + [-35.0, -50.0, 21000.0])
    # a fan of five straight fingers: wrist at the bottom middle, the tips on the left, top and right
    # edges (vertex id = 11 row + column), so the keypoints span the square and the skeleton hides little
    joint_ids = [115] * 21
    joint_ids[4::4] = [55, 2, 5, 8, 54]
    keypoints = project_to_crop(verts_cam_mm[None, joint_ids], focal, (H, W))[0]
    sample = {"rgb": torch.zeros(3, H, W), "depth": torch.rand(1, H, W, generator=torch.Generator().manual_seed(0)),
              "keypoints_2d": torch.zeros(21, 2), "keypoints_2d_valid": torch.zeros(21),
              "cam_intrinsics": torch.tensor([[250.0, 0, W / 2], [0, 250.0, H / 2], [0, 0, 1]])}
    K_model = crop_intrinsics(focal, (H, W))
    with_mesh = prediction_panel(sample, {"keypoints_2d": keypoints, "verts_3d": verts_cam_mm}, faces, K_model)
    without = prediction_panel(sample, {"keypoints_2d": keypoints}, faces, K_model)
    covered = (with_mesh[:, :W] != without[:, :W]).any(-1)
    assert (with_mesh[:, W:] == without[:, W:]).all()  # the depth half has skeletons only

    px = crop_units_to_pixels(keypoints, H, W)
    x0, y0 = px.min(0)
    x1, y1 = px.max(0)
    assert x1 - x0 > 15 and y1 - y0 > 15 and x0 > 1 and y0 > 1  # inside the crop, off its centre
    rows, cols = np.nonzero(covered)
    assert abs(cols.min() - x0) <= 1.5 and abs(cols.max() - x1) <= 1.5
    assert abs(rows.min() - y0) <= 1.5 and abs(rows.max() - y1) <= 1.5
    # the keypoint box is filled (the 2-pixel skeleton drawn over the mesh hides some 40% of it)
    inner = covered[int(np.ceil(y0)) + 1:int(y1), int(np.ceil(x0)) + 1:int(x1)]
    assert inner.mean() > 0.4, inner.mean()
