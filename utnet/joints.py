"""Joint orders, index maps and fingertip vertex ids (facts: docs/joints.md, docs/mano.md).

Canonical order (docs/joints.md), 21 joints: wrist; thumb 1-4; index 1-4; middle 1-4; ring 1-4; pinky 1-4.
HO3D order: the 16 skinned MANO joints (wrist, index1-3, middle1-3, pinky1-3, ring1-3, thumb1-3)
followed by the tips of thumb, index, middle, ring, pinky.
"""
from __future__ import annotations

NUM_JOINTS = 21
NUM_VERTS = 778
ROOT_INDEX = 0  # the wrist, in every order used here

CANONICAL_NAMES = [
    "wrist",
    "thumb1", "thumb2", "thumb3", "thumb4",
    "index1", "index2", "index3", "index4",
    "middle1", "middle2", "middle3", "middle4",
    "ring1", "ring2", "ring3", "ring4",
    "pinky1", "pinky2", "pinky3", "pinky4",
]
CANONICAL_PARENTS = [-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19]

MANO_NAMES = [
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
]
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]

HO3D_NAMES = MANO_NAMES + ["thumb4", "index4", "middle4", "ring4", "pinky4"]

# canonical[i] = ho3d[HO3D_TO_CANONICAL[i]]
HO3D_TO_CANONICAL = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
# ho3d[j] = canonical[CANONICAL_TO_HO3D[j]]
CANONICAL_TO_HO3D = [HO3D_TO_CANONICAL.index(j) for j in range(NUM_JOINTS)]
# The 16 MANO joints with the 5 tips appended (thumb, index, middle, ring, pinky) are in HO3D order.
MANO16_TO_CANONICAL = HO3D_TO_CANONICAL

# Fingertip vertex ids, order thumb, index, middle, ring, pinky (docs/joints.md).
TIP_VERTEX_IDS = {
    "ho3d": [744, 333, 444, 555, 672],
    "smplx": [744, 320, 443, 554, 671],
}

# Bones as (parent, child) pairs in canonical order, for drawing skeletons and checking lengths.
CANONICAL_BONES = [(p, c) for c, p in enumerate(CANONICAL_PARENTS) if p >= 0]

assert [HO3D_NAMES[j] for j in HO3D_TO_CANONICAL] == CANONICAL_NAMES
