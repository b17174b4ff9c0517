"""The stand-in's pose prior: hands_mean, hands_components and hands_std from hand synergies."""
from __future__ import annotations

import numpy as np

from utnet.mano.pose_prior import FINGER_CHAINS, local_to_axis_angle
from utnet.mano.standin.mesh import FINGERS

# Synergies: (flexion, abduction, twist) loadings per finger joint, radians per unit latent.
_SYNERGIES = (
    # all fingers curl together (open hand <-> fist)
    {"index": [(0.55, 0, 0), (0.65, 0, 0), (0.4, 0, 0)], "middle": [(0.6, 0, 0), (0.7, 0, 0), (0.45, 0, 0)],
     "ring": [(0.65, 0, 0), (0.72, 0, 0), (0.45, 0, 0)], "pinky": [(0.7, 0, 0), (0.72, 0, 0), (0.45, 0, 0)],
     "thumb": [(0.15, 0.1, 0.1), (0.25, 0, 0), (0.3, 0, 0)]},
    # knuckles versus the finger joints (flat bend <-> hook)
    {f: [(0.4, 0, 0), (-0.35, 0, 0), (-0.25, 0, 0)] for f in FINGERS},
    # thumb opposition
    {"thumb": [(0.3, 0.35, 0.3), (0.2, 0, 0), (0.15, 0, 0)]},
    # the index on its own (pointing, pinching)
    {"index": [(0.45, 0, 0), (0.5, 0, 0), (0.3, 0, 0)]},
    # ring and little finger together
    {"ring": [(0.35, 0, 0), (0.4, 0, 0), (0.25, 0, 0)], "pinky": [(0.4, 0, 0), (0.45, 0, 0), (0.3, 0, 0)]},
    # thumb flexion
    {"thumb": [(0.1, 0, 0), (0.3, 0, 0), (0.4, 0, 0)]},
    # the middle finger, dragging the ring finger
    {"middle": [(0.35, 0, 0), (0.4, 0, 0), (0.25, 0, 0)], "ring": [(0.12, 0, 0), (0.12, 0, 0), (0.08, 0, 0)]},
    # spread
    {"index": [(0, 0.15, 0)] + [(0, 0, 0)] * 2, "middle": [(0, 0.03, 0)] + [(0, 0, 0)] * 2,
     "ring": [(0, -0.1, 0)] + [(0, 0, 0)] * 2, "pinky": [(0, -0.2, 0)] + [(0, 0, 0)] * 2,
     "thumb": [(0, 0.2, 0)] + [(0, 0, 0)] * 2},
    # the little finger alone
    {"pinky": [(0.3, 0, 0), (0.3, 0, 0), (0.2, 0, 0)]},
)
_LOCAL_NOISE = (0.06, 0.04, 0.025)  # independent (flexion, abduction, twist) noise, radians
_THUMB_NOISE = (0.08, 0.07, 0.06)
# A relaxed hand: knuckles and finger joints slightly bent, more toward the little finger.
_RELAXED = {
    "index": [(0.2, 0.04, 0), (0.3, 0, 0), (0.15, 0, 0)],
    "middle": [(0.25, 0.0, 0), (0.35, 0, 0), (0.18, 0, 0)],
    "ring": [(0.3, -0.04, 0), (0.4, 0, 0), (0.2, 0, 0)],
    "pinky": [(0.35, -0.1, 0), (0.4, 0, 0), (0.2, 0, 0)],
    "thumb": [(0.1, 0.15, 0.05), (0.1, 0, 0), (0.15, 0, 0)],
}


def _local_array(spec):
    out = np.zeros((15, 3))
    for finger, rows in spec.items():
        for j, row in zip(FINGER_CHAINS[finger], rows):
            out[j - 1] = row
    return out


def pose_space(frames: np.ndarray):
    """(hands_mean [45], hands_components [45, 45] orthonormal rows by decreasing variance, std [45])."""
    M = np.zeros((45, 45))
    for j in range(15):
        M[3 * j:3 * j + 3, 3 * j:3 * j + 3] = frames[j]
    cov_local = np.zeros((45, 45))
    for syn in _SYNERGIES:
        g = _local_array(syn).reshape(45)
        cov_local += np.outer(g, g)
    noise = np.tile(_LOCAL_NOISE, 15).reshape(15, 3)
    noise[12:] = _THUMB_NOISE
    # a small per-joint ramp keeps every eigenvalue distinct, so the basis is unique (up to the sign
    # fixed below) and does not depend on how an eigen-solver splits a repeated eigenvalue
    noise *= (1.0 + 0.02 * np.arange(15))[:, None]
    cov_local += np.diag(noise.reshape(45) ** 2)
    cov = M @ cov_local @ M.T
    evals, evecs = np.linalg.eigh(0.5 * (cov + cov.T))
    order = np.argsort(-evals, kind="stable")
    evals, evecs = evals[order], evecs[:, order]
    if np.min(-np.diff(evals)) < 1e-7 * evals[0]:
        raise AssertionError("pose prior eigenvalues too close: the basis would not be unique")
    # a sign convention makes the basis independent of the eigen-solver's choice
    lead = np.argmax(np.abs(evecs), axis=0)
    evecs = evecs * np.sign(evecs[lead, np.arange(45)])
    mean = local_to_axis_angle(frames, _local_array(_RELAXED))
    return mean, evecs.T.copy(), np.sqrt(np.maximum(evals, 0.0))
