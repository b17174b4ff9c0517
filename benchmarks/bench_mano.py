"""ManoLayer forward (B=64, rotation matrices) against smplx.MANO's own forward, in one run.

Both run on the same poses and shapes, interleaved round by round so machine noise hits both
alike; the figure is the ratio of medians. smplx.MANO's forward takes axis-angle (it always calls
lbs with pose2rot=True); the rotation-matrix path of smplx (`smplx.lbs.lbs(..., pose2rot=False)`,
what a network predicting rotations would call) is timed too.
Prints ONE JSON object: {"batch", "rounds", "ratio", "ratio_vs_smplx_lbs_rotmat", ... ms ...}.
Goal: ratio >= 1.0 (ManoLayer at least as fast as smplx.MANO).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time

import torch


def _time(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import numpy as np
    import smplx
    from smplx.lbs import lbs

    from utnet.geometry import axis_angle_to_matrix
    from utnet.mano import ManoLayer, sample_natural_hand_pose

    layer = ManoLayer()  # the MANO stand-in (same file format as MANO)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ref = smplx.MANO(layer.model_path,
                         is_rhand=True, use_pca=False, flat_hand_mean=True)
    B = args.batch
    rng = np.random.default_rng(0)
    hand_pose_aa = torch.tensor(sample_natural_hand_pose(layer, rng, B), dtype=torch.float32)
    global_aa = torch.tensor(rng.normal(scale=0.8, size=(B, 3)), dtype=torch.float32)
    betas = torch.tensor(rng.normal(size=(B, 10)), dtype=torch.float32)
    go_R = axis_angle_to_matrix(global_aa)[:, None]
    hp_R = axis_angle_to_matrix(hand_pose_aa.reshape(B, 15, 3))
    full_R = torch.cat([go_R, hp_R], dim=1)

    with torch.no_grad():
        ours = layer(go_R, hp_R, betas)
        theirs = ref(betas=betas, global_orient=global_aa, hand_pose=hand_pose_aa)
        max_diff_m = (ours.vertices - theirs.vertices).abs().max().item()

        def run_ours():
            layer(go_R, hp_R, betas)

        def run_smplx():
            ref(betas=betas, global_orient=global_aa, hand_pose=hand_pose_aa)

        def run_smplx_lbs_rotmat():
            lbs(betas, full_R, ref.v_template, ref.shapedirs, ref.posedirs, ref.J_regressor,
                ref.parents, ref.lbs_weights, pose2rot=False)

        for fn in (run_ours, run_smplx, run_smplx_lbs_rotmat):  # warm-up
            _time(fn, 3)
        t_ours, t_smplx, t_lbs = [], [], []
        for _ in range(args.rounds):
            t_ours.append(_time(run_ours, args.repeats))
            t_smplx.append(_time(run_smplx, args.repeats))
            t_lbs.append(_time(run_smplx_lbs_rotmat, args.repeats))

    m_ours, m_smplx, m_lbs = (statistics.median(t) for t in (t_ours, t_smplx, t_lbs))
    print(json.dumps({
        "batch": B,
        "rounds": args.rounds,
        "threads": args.threads,
        "manolayer_rotmat_ms": round(m_ours * 1e3, 3),
        "smplx_mano_forward_ms": round(m_smplx * 1e3, 3),
        "smplx_lbs_rotmat_ms": round(m_lbs * 1e3, 3),
        "ratio": round(m_smplx / m_ours, 3),
        "ratio_vs_smplx_lbs_rotmat": round(m_lbs / m_ours, 3),
        "max_vertex_diff_m": max_diff_m,
    }))


if __name__ == "__main__":
    main()
