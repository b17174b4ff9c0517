"""HaMeR's weak-perspective camera turned into a translation, and projection to crop units.

The one camera of the model (coarse and refined outputs both use it):

- The crop is H x W pixels; S = max(H, W) (the long side plays the part of HaMeR's square 256 crop).
- The camera is a pinhole in CROP PIXELS with square pixels, focal f = `model.focal_length` (pixels)
  and principal point at the crop centre: K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]].
- Crop units (batch contract): x = u/W - 0.5, y = v/H - 0.5 for crop pixel (u, v). With K above,
  x = (f/W) X/Z and y = (f/H) Y/Z: HaMeR's "focal over the image size, principal point 0", with
  the width for x and the height for y, so a projected point lands directly in crop units.
- The head predicts (s, tx, ty). The translation added to the MANO output is
  t = (tx, ty, 2 f / (S s + 1e-9)) in mm, so a hand extent of L mm along the long side spans
  L * s / 2 crop units (HaMeR's weak-perspective meaning of s). s is in 1/mm, tx, ty in mm.

Everything here is in millimetres and the OpenCV camera frame (x right, y down, z forward).
"""
from __future__ import annotations

import torch

TYPICAL_HAND_MM = 180.0  # wrist to middle fingertip of an adult hand


def initial_scale(bbox_expand: float) -> float:
    """s (1/mm) at which a typical hand spans its tight box inside the crop.

    The data pipeline makes the crop's side `bbox_expand` times the tight joint box, so a hand
    of TYPICAL_HAND_MM should span 1 / bbox_expand crop units: L * s / 2 = 1 / bbox_expand.
    """
    return 2.0 / (bbox_expand * TYPICAL_HAND_MM)


def crop_intrinsics(focal_length: float, image_size: tuple[int, int]) -> torch.Tensor:
    """The pinhole K [3,3] in crop pixels that this camera is (see the module docstring)."""
    H, W = image_size
    return torch.tensor([[focal_length, 0.0, W / 2.0], [0.0, focal_length, H / 2.0], [0.0, 0.0, 1.0]])


def cam_translation_mm(cam: torch.Tensor, focal_length: float, image_size: tuple[int, int]) -> torch.Tensor:
    """Weak-perspective camera cam [B,3] (s in 1/mm, tx, ty in mm) -> translation [B,3] mm, OpenCV frame."""
    S = float(max(image_size))
    s, tx, ty = cam.unbind(-1)
    tz = 2.0 * focal_length / (S * s + 1e-9)
    return torch.stack([tx, ty, tz], dim=-1)


def project_to_crop(points_cam_mm: torch.Tensor, focal_length: float, image_size: tuple[int, int]) -> torch.Tensor:
    """Project points [B,N,3] (mm, OpenCV camera frame) -> [B,N,2] crop units (x right, y down).

    Equal to `geometry.project_points(points, crop_intrinsics(...))` followed by (u/W - 0.5, v/H - 0.5).
    Depth is clamped at 1 mm so a point behind the camera cannot produce inf/NaN.
    """
    H, W = image_size
    z = points_cam_mm[..., 2:3].clamp(min=1.0)
    scale = points_cam_mm.new_tensor([focal_length / W, focal_length / H])
    return points_cam_mm[..., :2] / z * scale
