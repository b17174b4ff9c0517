"""Evaluation and training pictures drawn with cv2 and numpy: skeletons, meshes, grids, error charts.

Images are uint8 BGR [H,W,3]. Keypoints in crop units (x right, y down, [-0.5, 0.5]) map to crop
pixels as u = (x + 0.5) * W, v = (y + 0.5) * H.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from losses.units import crop_units_to_grid
from utnet.geometry import project_points
from utnet.joints import CANONICAL_BONES, CANONICAL_NAMES

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406])
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225])
GT_COLOR = (0, 200, 0)
PRED_COLOR = (0, 0, 230)
MESH_COLOR = (230, 160, 90)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def crop_units_to_pixels(keypoints_crop, height: int, width: int) -> np.ndarray:
    """Keypoints [...,2] in crop units -> crop pixels [...,2]."""
    return crop_units_to_grid(_numpy(keypoints_crop).astype(np.float64), height, width)


def denormalize_rgb(rgb) -> np.ndarray:
    """ImageNet-normalised RGB [3,H,W] (tensor or array) -> uint8 BGR [H,W,3]."""
    rgb = _numpy(rgb).astype(np.float64).transpose(1, 2, 0)
    rgb = rgb * IMAGENET_STD_RGB + IMAGENET_MEAN_RGB
    return np.ascontiguousarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., ::-1])


def depth_to_bgr(depth) -> np.ndarray:
    """Depth [1,H,W] in [0,1] (0 = no measurement) -> uint8 BGR [H,W,3]; missing depth is black."""
    depth = _numpy(depth).astype(np.float64).reshape(depth.shape[-2:])
    gray = (np.clip(depth, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    image = cv2.applyColorMap(gray, cv2.COLORMAP_TURBO)
    image[depth <= 0] = 0
    return image


def draw_skeleton(img_bgr: np.ndarray, keypoints_px, color, valid=None, thickness: int = 2) -> np.ndarray:
    """Draw the 21-joint canonical skeleton in place and return the image.

    Args:
        keypoints_px: [21,2] pixels. valid: [21] optional; bones and joints touching an invalid
        joint are skipped (so are non-finite points).
    """
    points = _numpy(keypoints_px).astype(np.float64)
    ok = np.isfinite(points).all(axis=1)
    if valid is not None:
        ok &= _numpy(valid).reshape(-1) > 0.5
    pixels = np.round(np.nan_to_num(points)).astype(np.int32)
    for parent, child in CANONICAL_BONES:
        if ok[parent] and ok[child]:
            cv2.line(img_bgr, tuple(map(int, pixels[parent])), tuple(map(int, pixels[child])), color,
                     thickness, cv2.LINE_AA)
    for index in np.flatnonzero(ok):
        cv2.circle(img_bgr, tuple(map(int, pixels[index])), thickness + 1, color, -1, cv2.LINE_AA)
    return img_bgr


def draw_mesh(img_bgr: np.ndarray, verts_px, faces, alpha: float = 0.5, verts_depth=None,
              color=MESH_COLOR) -> np.ndarray:
    """Blend filled mesh triangles over the image in place and return it.

    Args:
        verts_px: [V,2] pixels. faces: [F,3] vertex indices. alpha: opacity of the mesh.
        verts_depth: [V] optional depth (larger = farther); faces are then drawn far to near
        (painter's order) and shaded darker with distance, so the near surface stays on top.
    """
    points = _numpy(verts_px).astype(np.float64)
    faces = _numpy(faces).astype(np.int64).reshape(-1, 3)
    triangles = points[faces]  # [F,3,2]
    keep = np.isfinite(triangles).all(axis=(1, 2))
    shade = np.ones(len(faces))
    if verts_depth is not None:
        face_depth = _numpy(verts_depth).astype(np.float64).reshape(-1)[faces].mean(axis=1)
        keep &= np.isfinite(face_depth)
        order = np.argsort(-face_depth, kind="stable")
        near, far = np.nanmin(face_depth[keep], initial=0.0), np.nanmax(face_depth[keep], initial=1.0)
        shade = 1.0 - 0.5 * (face_depth - near) / max(far - near, 1e-9)
    else:
        order = np.arange(len(faces))
    overlay = img_bgr.copy()
    covered = np.zeros(img_bgr.shape[:2], dtype=np.uint8)
    base = np.array(color, dtype=np.float64)
    for index in order:
        if not keep[index]:
            continue
        polygon = np.round(triangles[index]).astype(np.int32)
        face_color = tuple(int(c) for c in np.clip(base * shade[index], 0, 255))
        cv2.fillConvexPoly(overlay, polygon, face_color, cv2.LINE_AA)
        cv2.fillConvexPoly(covered, polygon, 255)
    blended = cv2.addWeighted(overlay, alpha, img_bgr, 1.0 - alpha, 0.0)
    mask = covered > 0
    img_bgr[mask] = blended[mask]
    return img_bgr


def prediction_panel(sample: dict, pred_sample: dict, faces, pred_intrinsics) -> np.ndarray:
    """One sample's picture: the RGB crop with the projected predicted mesh, the GT skeleton (green)
    and the predicted skeleton (red), beside the depth crop with both skeletons.

    Args:
        sample: one sample of the batch contract (rgb [3,H,W], depth [1,H,W], keypoints_2d [21,2],
            optional keypoints_2d_valid [21]).
        pred_sample: one sample of the prediction dict (keypoints_2d [21,2] crop units,
            verts_3d [V,3] mm in the model's camera frame; the mesh is skipped without verts_3d).
        faces: [F,3] mesh faces.
        pred_intrinsics: [3,3] crop pixels, the camera the prediction lives in: the MODEL's
            (camera.crop_intrinsics(model.focal_length, data.image_size)), not the sample's
            cam_intrinsics: the model's absolute depth is its own, and only its projection
            (keypoints_2d) matches the image.
    Returns:
        uint8 BGR [H, 2W, 3].
    """
    rgb = denormalize_rgb(sample["rgb"])
    height, width = rgb.shape[:2]
    depth = depth_to_bgr(sample["depth"])
    if pred_sample.get("verts_3d") is not None:
        verts_cam_mm = _numpy(pred_sample["verts_3d"]).astype(np.float64)
        in_front = verts_cam_mm[:, 2] > 1e-6
        verts_px = project_points(verts_cam_mm, _numpy(pred_intrinsics).astype(np.float64))
        verts_px[~in_front] = np.nan
        draw_mesh(rgb, verts_px, faces, alpha=0.45, verts_depth=verts_cam_mm[:, 2])
    gt_px = crop_units_to_pixels(sample["keypoints_2d"], height, width)
    pred_px = crop_units_to_pixels(pred_sample["keypoints_2d"], height, width)
    gt_valid = sample.get("keypoints_2d_valid")
    for image in (rgb, depth):
        draw_skeleton(image, gt_px, GT_COLOR, valid=gt_valid)
        draw_skeleton(image, pred_px, PRED_COLOR)
    return np.concatenate([rgb, depth], axis=1)


def training_panel(batch: dict, pred: dict, net) -> np.ndarray:
    """The tensorboard image (uint8 RGB [H,2W,3]) of a batch's first training sample: `prediction_panel`
    (crop with GT and predicted skeletons, the predicted mesh projected through the model's camera, beside
    the depth crop). net: the unwrapped model (mano, intrinsics())."""
    sample = {k: v[0].detach().float().cpu() for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 0}
    prediction = {k: v[0].detach().float().cpu() for k, v in pred.items() if torch.is_tensor(v)}
    return prediction_panel(sample, prediction, net.mano.faces.cpu(),
                            net.intrinsics())[..., ::-1].copy()  # BGR -> RGB


def prediction_grid(panels: list[np.ndarray], cols: int = 4, pad: int = 4) -> np.ndarray:
    """Tile panels (uint8 BGR, any sizes) into a grid with `cols` columns on a white background."""
    if not panels:
        raise ValueError("prediction_grid: no panels")
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    cell_h = max(p.shape[0] for p in panels)
    cell_w = max(p.shape[1] for p in panels)
    grid = np.full((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), 255, dtype=np.uint8)
    for index, panel in enumerate(panels):
        row, col = divmod(index, cols)
        y, x = pad + row * (cell_h + pad), pad + col * (cell_w + pad)
        grid[y:y + panel.shape[0], x:x + panel.shape[1]] = panel
    return grid


def _vertical_text(text: str, scale: float, color, thickness: int = 1) -> np.ndarray:
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    canvas = np.full((text_h + baseline + 2, text_w + 2, 3), 255, dtype=np.uint8)
    cv2.putText(canvas, text, (1, text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return cv2.rotate(canvas, cv2.ROTATE_90_COUNTERCLOCKWISE)


def per_joint_error_chart(per_joint_error_mm, names=CANONICAL_NAMES, title: str = "per-joint error",
                          bar_width: int = 34) -> np.ndarray:
    """Bar chart of one error per joint (mm) drawn with cv2: y axis in mm with ticks, one labelled
    bar per joint with its value, the mean as a dashed line. NaN values are drawn as 'n/a'.

    Returns:
        uint8 BGR image, bar_width * joints + 90 wide and 430 high.
    """
    values = _numpy(per_joint_error_mm).astype(np.float64).reshape(-1)
    names = list(names)
    if len(names) != len(values):
        raise ValueError(f"per_joint_error_chart: {len(values)} values but {len(names)} names")
    left, right, top, bottom, plot_h = 70, 20, 40, 80, 310
    width = left + right + bar_width * len(values)
    height = top + plot_h + bottom
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    finite = values[np.isfinite(values)]
    peak = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    step = 10 ** math.floor(math.log10(peak / 4)) if peak > 0 else 1.0
    step *= 1 if peak / step <= 6 else 2 if peak / step <= 12 else 5
    y_max = step * math.ceil(peak * 1.1 / step)

    def y_of(value: float) -> int:
        return int(round(top + plot_h - value / y_max * plot_h))

    tick = 0.0
    while tick <= y_max + 1e-9:
        y = y_of(tick)
        cv2.line(image, (left - 4, y), (width - right, y), (225, 225, 225), 1)
        label = f"{tick:g}"
        (tw, th), _ = cv2.getTextSize(label, font, 0.4, 1)
        cv2.putText(image, label, (left - 8 - tw, y + th // 2), font, 0.4, black, 1, cv2.LINE_AA)
        tick += step
    cv2.line(image, (left, top), (left, top + plot_h), black, 1)
    cv2.line(image, (left, top + plot_h), (width - right, top + plot_h), black, 1)
    axis_label = _vertical_text("error (mm)", 0.45, black)
    y0 = top + (plot_h - axis_label.shape[0]) // 2
    image[y0:y0 + axis_label.shape[0], 4:4 + axis_label.shape[1]] = axis_label
    cv2.putText(image, title, (left, 24), font, 0.55, black, 1, cv2.LINE_AA)
    if finite.size:
        mean = float(finite.mean())
        y = y_of(mean)
        for x in range(left, width - right, 12):
            cv2.line(image, (x, y), (min(x + 6, width - right), y), (0, 0, 200), 1)
        label = f"- - mean {mean:.2f} mm"
        (tw, _), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.putText(image, label, (width - right - tw, 24), font, 0.45, (0, 0, 200), 1, cv2.LINE_AA)
    for index, (value, name) in enumerate(zip(values, names)):
        x0 = left + index * bar_width + 4
        x1 = x0 + bar_width - 8
        if np.isfinite(value):
            cv2.rectangle(image, (x0, y_of(value)), (x1, top + plot_h), (200, 130, 60), -1)
            text = f"{value:.1f}"
        else:
            text = "n/a"
        (tw, _), _ = cv2.getTextSize(text, font, 0.33, 1)
        y_text = y_of(value) - 4 if np.isfinite(value) else top + plot_h - 4
        cv2.putText(image, text, ((x0 + x1 - tw) // 2, y_text), font, 0.33, black, 1, cv2.LINE_AA)
        label = _vertical_text(name, 0.4, black)
        lh, lw = min(label.shape[0], bottom - 8), min(label.shape[1], bar_width)
        xl = (x0 + x1 - lw) // 2
        image[top + plot_h + 6:top + plot_h + 6 + lh, xl:xl + lw] = label[-lh:, :lw]
    return image
