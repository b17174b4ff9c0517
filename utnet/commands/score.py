"""`utnet score PRED --root HO3D_ROOT`: the HO3D protocol on any submission file, locally.

PRED is a pred.json or pred.zip in the HO3D submission format ([xyz_list, verts_list]; OpenGL frame,
metres, HO3D joint order; one entry per line of evaluation.txt), from UTNet or any other system.
The ground truth is the released evaluation_xyz.json / evaluation_verts.json in HO3D_ROOT. Both go
through the data reader's conversion to the OpenCV frame in millimetres and canonical order, and
`utnet.engine.metrics` scores them as `utnet eval` does; scores.json adds the official unaligned
errors (`unaligned_mpjpe`, `unaligned_mpvpe`: no alignment at all) and records its provenance.
"""
from __future__ import annotations

import math
from pathlib import Path

HELP = "score an HO3D submission (pred.json / pred.zip) against the released evaluation ground truth"
# Samples per call of the batched metrics (bounds the memory of the vertex arrays).
_CHUNK = 512
GT_FILES = ("evaluation_xyz.json", "evaluation_verts.json")


def add_arguments(parser):
    parser.add_argument("prediction", metavar="PRED", help="pred.json, or pred.zip holding pred.json")
    parser.add_argument("--root", required=True, metavar="HO3D_ROOT",
                        help="HO3D root with evaluation.txt, evaluation_xyz.json and evaluation_verts.json")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="where scores.json goes (default: beside PRED)")


def read_ground_truth(root: Path):
    """(xyz [N,21,3], verts [N,778,3]) OpenGL metres, HO3D order, of the evaluation split; UserError
    naming the file when the split file or a ground-truth file is missing or has another shape."""
    from utnet.data.ho3d import load_evaluation_json, read_split_file
    from utnet.errors import UserError
    from utnet.joints import NUM_JOINTS, NUM_VERTS

    if not root.is_dir():
        raise UserError(f"--root {root}: no such directory")
    if not (root / "evaluation.txt").is_file():
        raise UserError(f"{root / 'evaluation.txt'}: not found (--root must be an HO3D root folder)")
    count = len(read_split_file(root, "evaluation"))
    arrays = []
    for name, points in zip(GT_FILES, (NUM_JOINTS, NUM_VERTS)):
        array = load_evaluation_json(root, name, count)
        if array is None:
            raise UserError(f"{root / name}: not found (the released HO3D evaluation ground truth)")
        if array.shape[1] != points:
            raise UserError(f"{root / name}: {array.shape[1]} points per entry, expected {points}")
        arrays.append(array)
    return arrays[0], arrays[1]


def unaligned_errors(pred_mm, gt_mm) -> float:
    """The official unaligned error: mean over keypoints of each keypoint's mean distance over the
    samples (all valid), with no alignment; pred_mm, gt_mm [N,K,3] tensors, mm."""
    return float((pred_mm - gt_mm).norm(dim=-1).mean(dim=0).mean())


def score(prediction: Path, root: Path) -> dict:
    """Scores (mm; F and AUC in [0,1]) of a submission file against the ground truth in `root`:
    utnet.engine.metrics.summarize's metrics plus unaligned_mpjpe and unaligned_mpvpe."""
    import torch

    from utnet.engine import metrics as M
    from utnet.engine.submission import from_ho3d_frame, load_ho3d_prediction
    from utnet.errors import UserError

    xyz_gt, verts_gt = read_ground_truth(root)
    xyz, verts = load_ho3d_prediction(prediction)
    if len(xyz) != len(xyz_gt):
        raise UserError(f"{prediction}: {len(xyz)} entries, but {root / 'evaluation.txt'} lists {len(xyz_gt)} frames")
    pred_j, pred_v = (torch.from_numpy(a) for a in from_ho3d_frame(xyz, verts))
    gt_j, gt_v = (torch.from_numpy(a) for a in from_ho3d_frame(xyz_gt, verts_gt))
    chunks = [M.per_sample_errors(pred_j[i:i + _CHUNK], gt_j[i:i + _CHUNK], pred_v[i:i + _CHUNK], gt_v[i:i + _CHUNK])
              for i in range(0, len(pred_j), _CHUNK)]
    errors = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    return {**M.summarize(errors), "unaligned_mpjpe": unaligned_errors(pred_j, gt_j),
            "unaligned_mpvpe": unaligned_errors(pred_v, gt_v)}


def run(args) -> int:
    from utnet.engine.metrics import metrics_for_json
    from utnet.engine.provenance import add_provenance, score_provenance

    prediction, root = Path(args.prediction), Path(args.root)
    scores = score(prediction, root)
    out_dir = Path(args.output_dir) if args.output_dir else prediction.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "scores.json"
    add_provenance(path, score_provenance(prediction, root, [root / name for name in GT_FILES]),
                   metrics_for_json(scores))
    print(f"scored {scores['num_samples']} samples of {prediction} against {root}")
    print("metric          value   (mm; f and auc in [0,1])")
    for name, value in scores.items():
        if name != "num_samples":
            print(f"{name:<16}{value:>10.4f}" if math.isfinite(value) else f"{name:<16}{'nan':>10}")
    print(f"wrote {path}")
    return 0
