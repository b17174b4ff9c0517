"""The one metres <-> millimetres factor of the code base (mm = m * MM_PER_M, m = mm / MM_PER_M), the
length units of the 3D loss terms, and the one conversion between crop units and a grid tiling the crop
(`crop_units_to_grid`, `grid_to_crop_units`: crop pixels or heatmap cells).

It lives in `losses` because `losses` never imports `utnet` while `utnet` imports `losses`: here both
can import it. Every conversion imports it from here; no other module writes the factor out
(tests/test_geometry.py checks that). The framework's 3D quantities are millimetres; a recipe written
for metres (HaMeR's 3D keypoint loss compares smplx's metre outputs) keeps its weights when a term
converts its error to metres with `from_mm`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

LengthUnit = Literal["mm", "m"]
MM_PER_M = 1000.0


def from_mm(length_mm: torch.Tensor, unit: str) -> torch.Tensor:
    """A length (or difference of lengths) in mm, expressed in `unit` ("mm" returns it unchanged)."""
    if unit == "mm":
        return length_mm
    if unit == "m":
        return length_mm / MM_PER_M
    raise ValueError(f"unknown length unit {unit!r} (mm or m)")


def _grid_size(points, height: int, width: int):
    """[width, height] in the type, dtype and device of `points` (a tensor or a numpy array)."""
    if isinstance(points, torch.Tensor):
        return points.new_tensor([width, height])
    return np.array([width, height], dtype=np.result_type(points, np.float32))


def crop_units_to_grid(keypoints_crop, height: int, width: int):
    """Keypoints [...,2] in crop units (x right, y down; -0.5 and 0.5 are the crop's edges) -> coordinates
    [...,2] on a width x height grid tiling the crop, in cells from its top-left corner: crop pixels for the
    crop's own size, heatmap cells for a heatmap's. Takes and returns a tensor or a numpy array."""
    return (keypoints_crop + 0.5) * _grid_size(keypoints_crop, height, width)


def grid_to_crop_units(points_grid, height: int, width: int):
    """The inverse of `crop_units_to_grid`: coordinates [...,2] on a width x height grid tiling the crop
    (crop pixels, u right, v down, from the top-left corner) -> crop units. Tensor or numpy array."""
    return points_grid / _grid_size(points_grid, height, width) - 0.5
