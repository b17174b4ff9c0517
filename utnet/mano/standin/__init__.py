"""The MANO stand-in: a procedurally built right hand in MANO's exact file format.

The official MANO files cannot be shipped, so tests, CI and the default experiment run on this
model. It is NOT MANO and numbers measured on it are not MANO numbers. What it shares with MANO:
778 vertices, 1538 faces, the mesh open at the wrist, the 16 joints with MANO's kinematic tree and
order, the HO3D fingertip vertex ids (744, 333, 444, 555, 672 at the tips of thumb, index, middle,
ring, pinky), the pickle keys, shapes and dtypes that `smplx.MANO` reads.

Rest-pose layout (metres, like MANO's right hand): the hand lies flat, fingers point along -x,
the palm faces -y (the back of the hand is +y), the thumb is on the +z side. The origin is at the
middle finger's knuckle (MCP); the wrist joint sits about 97 mm along +x.

Construction: each finger is a tube of 10-vertex elliptic rings closed by one apex vertex (the tip
vertex); the four finger base rings form the distal rim of the palm, a tube of 40-vertex rows that
narrows to a 16-vertex open rim at the wrist; the thumb is a tube of 12-vertex rings leaving the
palm through a hole cut at its radial-palmar corner. A disk-like surface with 778 vertices and a
16-vertex boundary has exactly 2 * 778 - 16 - 2 = 1538 triangles. Every joint has a ring of
vertices that share one skinning-weight row and whose mean is the joint, so `J_regressor` (uniform
over that ring) reproduces the skinned joints from posed vertices at any pose.

Shape space: each of the 10 shapedirs is the central difference of the builder with respect to one
anatomical parameter (size, palm width, palm length, finger length, thickness, finger girth,
thumb length, index-versus-ring length, pinky length, knuckle arch), one standard deviation per unit
beta. Pose space: hands_components is the eigenbasis of a synergy-based covariance (curl of all
fingers first), hands_std its square-rooted eigenvalues, hands_mean a relaxed, slightly curled hand.

Determinism: no randomness, and no eigen-solver freedom (distinct eigenvalues, fixed signs). Every
stored float is rounded (positions to 1e-9 m, the rest to 1e-8), so last-bit differences of libm or
LAPACK between machines would have to straddle a rounding step to change the file's bytes.

Files: `mesh.py` (layout, shape parameters, vertex positions), `topology.py` (triangles and their
winding), `skinning.py` (skinning weights and joint regressor), `pose_space.py` (the pose prior),
`model.py` (the assembled MANO-format dict), `cache.py` (the cached pickle file).
"""
from utnet.mano.standin.cache import STANDIN_FILENAME, cache_dir, standin_bytes, standin_path
from utnet.mano.standin.model import STANDIN_MARKER_KEY, STANDIN_VERSION, build_standin

__all__ = ["STANDIN_FILENAME", "STANDIN_MARKER_KEY", "STANDIN_VERSION", "build_standin", "cache_dir", "standin_bytes",
           "standin_path"]
