"""Draw a few synthetic frames with their annotated keypoints: docs/synthetic_frames.png.

Writes a tiny synthetic set to a temporary folder, reads it back with the HO3D reader (so the
drawn skeleton is what training sees: OpenCV frame, canonical order), and puts RGB with the
skeleton over the decoded depth. Run: python docs/make_synthetic_picture.py [--out PATH]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from utnet.config import ExperimentConfig
from utnet.data import build_dataset, write_synthetic
from utnet.data import ho3d
from utnet.geometry import project_points
from utnet.joints import CANONICAL_BONES

# BGR colour per finger (thumb, index, middle, ring, pinky)
FINGER_COLOURS = [(60, 60, 255), (60, 200, 60), (255, 140, 40), (40, 220, 240), (230, 80, 230)]


def draw_skeleton(image_bgr: np.ndarray, keypoints_px: np.ndarray, scale: float) -> None:
    pts = np.round(keypoints_px * scale).astype(int)
    for parent, child in CANONICAL_BONES:
        colour = FINGER_COLOURS[(child - 1) // 4]
        cv2.line(image_bgr, tuple(pts[parent]), tuple(pts[child]), colour, 2, cv2.LINE_AA)
    for j, p in enumerate(pts):
        colour = (255, 255, 255) if j == 0 else FINGER_COLOURS[(j - 1) // 4]
        cv2.circle(image_bgr, tuple(p), 3, colour, -1, cv2.LINE_AA)
        cv2.circle(image_bgr, tuple(p), 3, (0, 0, 0), 1, cv2.LINE_AA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "synthetic_frames.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scale = 0.5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        write_synthetic(root, sequences=4, frames=2, seed=args.seed)
        cfg = ExperimentConfig.model_validate({"data": {"root": str(root)}})
        dataset = build_dataset(cfg, "train")
        tops, bottoms = [], []
        for index in (0, 3, 4, 7):
            rec = dataset.records[index]
            bgr, depth_encoded = ho3d.read_images(rec)
            ann = dataset.annotation(index)
            depth_mm = ho3d.decode_depth_mm(depth_encoded)
            small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            draw_skeleton(small, project_points(ann.joints_cam_mm, ann.cam_K), scale)
            cv2.putText(small, f"{rec.sequence}/{rec.frame_id}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            shown = np.clip((depth_mm - 300.0) / 1300.0 * 255.0, 0, 255).astype(np.uint8)
            depth_bgr = cv2.applyColorMap(255 - shown, cv2.COLORMAP_TURBO)
            depth_bgr[depth_mm <= 0] = 0  # holes: no measurement
            tops.append(small)
            bottoms.append(cv2.resize(depth_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
        picture = np.vstack([np.hstack(tops), np.hstack(bottoms)])
    cv2.imwrite(args.out, picture)
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")


if __name__ == "__main__":
    main()
