"""The one metres <-> millimetres factor of the code base (mm = m * MM_PER_M, m = mm / MM_PER_M), the
length units of the 3D loss terms, and the one crop-units -> grid conversion (`crop_units_to_grid`).

It lives in `losses` because `losses` never imports `utnet` while `utnet` imports `losses`: here both
can import it. Every conversion imports it from here; no other module writes the factor out
(tests/test_geometry.py checks that). The framework's 3D quantities are millimetres; a recipe written
for metres (HaMeR's 3D keypoint loss compares smplx's metre outputs) keeps its weights when a term
converts its error to metres with `from_mm`.
"""
from __future__ import annotations

from typing import Literal

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


def crop_units_to_grid(keypoints_crop: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Keypoints [...,2] in crop units (x right, y down; -0.5 and 0.5 are the crop's edges) -> coordinates
    [...,2] on a width x height grid tiling the crop, in cells from its top-left corner: crop pixels for the
    crop's own size, heatmap cells for a heatmap's. (The data pipeline writes crop units from pixels.)"""
    return (keypoints_crop + 0.5) * keypoints_crop.new_tensor([width, height])
