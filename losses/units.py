"""Length units of the 3D loss terms: the losses package's one millimetres -> metres factor.

The framework's 3D quantities are millimetres. A recipe written for metres (HaMeR's 3D keypoint loss
compares smplx's metre outputs) keeps its weights when a term converts its error to metres here.
"""
from __future__ import annotations

from typing import Literal

import torch

LengthUnit = Literal["mm", "m"]
MM_PER_M = 1000.0  # the only metres/millimetres factor of the losses package


def from_mm(length_mm: torch.Tensor, unit: str) -> torch.Tensor:
    """A length (or difference of lengths) in mm, expressed in `unit` ("mm" returns it unchanged)."""
    if unit == "mm":
        return length_mm
    if unit == "m":
        return length_mm / MM_PER_M
    raise ValueError(f"unknown length unit {unit!r} (mm or m)")
