"""Write a synthetic data set in HO3D's exact on-disk format (a STAND-IN for HO3D, named as such).

Each frame renders the MANO model (the stand-in unless a MANO file is given) with `render.py`:
an independent natural pose from the model's pose prior, the palm or the back facing the camera,
0.35-0.8 m away, HO3D-like intrinsics, a textured background on a depth plane, a box-shaped
object (in front of part of the hand in some frames), skin tone and light variation, sensor noise
and depth holes. A sequence shares its hand shape, skin tone, background and camera.
Annotations are written as HO3D writes them: OpenGL camera frame, metres, HO3D joint order.
Depth is HO3D's lossless two-channel PNG; RGB is JPEG in both layouts, as HO3D v3 stores it (HO3D v2
ships PNG; the reader looks up .png then .jpg in either layout), which keeps a frame near 0.55 MB.
The same seed writes the same files.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from utnet.data.ho3d import encode_depth_m
from utnet.data.render import Mesh, box_corners, box_mesh, cap_hole, shade_meshes
from utnet.errors import UserError
from utnet.geometry import (OPENGL_TO_OPENCV, axis_angle_to_matrix, axis_angle_to_matrix_np, flip_opengl_opencv,
                            matrix_to_axis_angle_np, project_points, rotate_mano_root)
from utnet.joints import CANONICAL_TO_HO3D, NUM_VERTS

IMAGE_H, IMAGE_W = 480, 640
TRAIN_PREFIX, EVAL_PREFIX = "SYN", "SYE"
INFO_FILE = "synthetic_info.json"
# Skin albedos (linear-ish RGB in [0,1]) from light to dark; a sequence jitters one of them.
SKIN_TONES = np.array([[0.95, 0.78, 0.67], [0.89, 0.68, 0.55], [0.80, 0.58, 0.44], [0.66, 0.45, 0.32],
                       [0.52, 0.35, 0.24], [0.38, 0.25, 0.17]])
DEPTH_RANGE_M = (0.35, 0.8)
OCCLUDER_PROB = 0.35
PARALLEL_MIN_FRAMES = 200  # below this, starting worker processes costs more than it saves
PARTIAL_OWNER_FILE = ".owner_host"  # in a partial folder: the host of the run; its pid is in the folder's name
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# RGB is JPEG in both layouts (HO3D v3's own format; the reader looks up .png then .jpg for v2 too): 92 KB on
# average (64-146) in ~1.5 ms per 640x480 frame, against 0.92 MB as an uncompressed PNG. The depth PNG stays
# lossless: zlib level 1, Huffman coding only, Sub filter: 0.44 MB in ~12 ms. Its low byte is sensor noise
# (~7-8 bits per pixel) over the whole frame (the background is a depth plane), so matching (LZ77 at level 1,
# 0.48 MB in ~15 ms) and the RLE strategy buy nothing, and the Up, Paeth and adaptive filters are slower for the
# same size; a numpy Huffman writer of our own was twice as slow (measured on the default set's frames).
DEPTH_PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                     cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
JPEG_OPTIONS = [cv2.IMWRITE_JPEG_QUALITY, 92]


def _sequence_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{10 + i}" for i in range(n)]


def _hand_axes(layer) -> tuple[np.ndarray, np.ndarray]:
    """Finger direction and palm normal [3] of the model at rest (MANO frame, unit vectors)."""
    with torch.no_grad():
        out = layer(torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10))
    j = out.joints[0].double().numpy()  # canonical: 0 wrist, 5 index1, 9 middle1, 17 pinky1
    finger = j[9] - j[0]
    finger /= np.linalg.norm(finger)
    across = j[5] - j[17]
    normal = np.cross(across, finger)
    return finger, normal / np.linalg.norm(normal)


def _facing_rotation(rng: np.random.Generator, finger: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """A root rotation [3,3] (MANO frame -> OpenCV camera) that shows the palm or the back to the
    camera, fingers pointing up-ish in the image (in-plane +-100 deg), tilted by up to ~35 deg."""
    side = rng.choice([-1.0, 1.0])
    phi = rng.uniform(-np.deg2rad(100), np.deg2rad(100))
    f_c = np.array([np.sin(phi), -np.cos(phi), 0.0])
    n_c = np.array([0.0, 0.0, -side])
    src = np.stack([finger, np.cross(normal, finger), normal], axis=1)
    dst = np.stack([f_c, np.cross(n_c, f_c), n_c], axis=1)
    tilt_axis = np.array([*rng.normal(size=2), 0.0])
    tilt = tilt_axis / max(np.linalg.norm(tilt_axis), 1e-9) * rng.uniform(0, np.deg2rad(35))
    return axis_angle_to_matrix_np(tilt) @ dst @ src.T


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], channels: int) -> np.ndarray:
    """Random field [480, 640, channels] float32 in about [0,1], upsampled from a coarse grid."""
    coarse = rng.random((cells[0], cells[1], channels)).astype(np.float32)
    out = cv2.resize(coarse, (IMAGE_W, IMAGE_H), interpolation=cv2.INTER_CUBIC)
    return out.reshape(IMAGE_H, IMAGE_W, channels)


def _background(rng: np.random.Generator, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A textured background (RGB float32 [480,640,3]) and the depth (metres) of its tilted plane."""
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    other = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
    blend = _smooth_noise(rng, (3, 4), 1)
    rgb = base * (1 - blend) + other * blend
    rgb = rgb + 0.18 * (_smooth_noise(rng, (24, 32), 3) - 0.5) + 0.08 * (_smooth_noise(rng, (120, 160), 3) - 0.5)
    yy, xx = np.mgrid[0:IMAGE_H, 0:IMAGE_W].astype(np.float32)
    if rng.random() < 0.6:  # stripes or a checkerboard, as on tables, walls and cloth
        period = rng.uniform(12, 60)
        angle = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
        if rng.random() < 0.5:
            wave = wave * np.sin((-xx * np.sin(angle) + yy * np.cos(angle)) * (2 * np.pi / period))
        rgb = rgb + (rng.uniform(0.05, 0.2) * np.sign(wave))[..., None] * rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    rgb = np.clip(rgb, 0, 1).astype(np.float32)
    # plane n . X = d through (0, 0, d0); depth along each pixel ray: z = d / (n . K^-1 [u, v, 1])
    d0 = rng.uniform(0.95, 1.5)
    tilt = rng.normal(size=2) * np.deg2rad(12)
    n = np.array([np.sin(tilt[0]), np.sin(tilt[1]), 1.0])
    n /= np.linalg.norm(n)
    rays_x = (xx - K[0, 2]) / K[0, 0]
    rays_y = (yy - K[1, 2]) / K[1, 1]
    depth = (n[2] * d0) / (n[0] * rays_x + n[1] * rays_y + n[2])
    return rgb, depth.astype(np.float32)


def _place_hand(rng, joints_m: np.ndarray, verts_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """A translation [3] (metres, OpenCV) putting the posed hand 0.35-0.8 m away, fully in the image."""
    centre = 0.5 * (verts_m.min(0) + verts_m.max(0))
    z = rng.uniform(*DEPTH_RANGE_M)
    for shrink in (1.0, 0.6, 0.3, 0.0):
        u = K[0, 2] + shrink * rng.uniform(-0.3, 0.3) * IMAGE_W
        v = K[1, 2] + shrink * rng.uniform(-0.25, 0.25) * IMAGE_H
        target = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
        t = target - centre
        uv = project_points(verts_m + t, K)
        if uv.min() >= 4 and uv[:, 0].max() <= IMAGE_W - 5 and uv[:, 1].max() <= IMAGE_H - 5 and (verts_m[:, 2] + t[2]).min() > 0.1:
            return t
    return t


def _object_pose(rng, joints_m: np.ndarray, plane_depth: np.ndarray, K: np.ndarray, occlude: bool):
    """Half extents [3], rotation [3,3] and centre [3] (OpenCV, metres) of the box object."""
    half = rng.uniform([0.02, 0.03, 0.015], [0.05, 0.07, 0.035])
    R = axis_angle_to_matrix_np(rng.normal(size=3) * 0.8)
    joint = joints_m[rng.integers(1, len(joints_m))]
    if occlude:
        # smaller, between the camera and a joint, shifted sideways so that it covers part of the hand
        half = half * 0.6
        depth = joint[2] - rng.uniform(0.05, 0.12)
        side = rng.normal(size=2)
        side = side / max(np.linalg.norm(side), 1e-9) * rng.uniform(0.02, 0.05)
        centre = joint * (depth / joint[2]) + np.array([*side, 0.0])
    else:
        depth = joint[2] + rng.uniform(0.04, 0.25)
        centre = joint * (depth / joint[2]) + np.array([*rng.choice([-1, 1], size=2) * rng.uniform(0.06, 0.14, size=2), 0.0])
    uv = project_points(centre[None], K)[0]
    x, y = int(np.clip(uv[0], 0, IMAGE_W - 1)), int(np.clip(uv[1], 0, IMAGE_H - 1))
    centre[2] = min(centre[2], plane_depth[y, x] - 0.1)
    return half, R, centre


def _sensor_depth(rng, depth_m: np.ndarray, noise: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Depth [480,640] float32 metres as a sensor sees it (0 = no measurement): noise growing with
    distance, holes at depth edges, dropouts and blobs. depth_m is not modified."""
    out = depth_m * np.float32(0.0025)  # sigma = 0.001 + 0.0025 z^2, in place: a frame is 1.2 MB per pass
    out *= depth_m
    out += np.float32(0.001)
    out *= noise
    out += depth_m
    grad = cv2.morphologyEx(depth_m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    dropped = ((grad > 0.03) & (uniform < 0.6)) | (uniform > 0.99)
    holes = np.zeros(depth_m.shape, np.uint8)
    for _ in range(rng.integers(0, 4)):
        centre = (int(rng.integers(0, IMAGE_W)), int(rng.integers(0, IMAGE_H)))
        axes = (int(rng.integers(3, 25)), int(rng.integers(3, 15)))
        cv2.ellipse(holes, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    dropped |= holes.view(bool)
    np.copyto(out, 0.0, where=dropped)
    return out


def write_frame_images(seq_dir: Path, frame: str, bgr8: np.ndarray, depth_m: np.ndarray) -> None:
    """Write one frame's images: seq_dir/rgb/<frame>.jpg from bgr8 [480,640,3] uint8 (cv2's BGR order;
    lossy, as HO3D v3 stores RGB, in both layouts) and seq_dir/depth/<frame>.png from depth_m [480,640]
    metres (0 = no measurement) in HO3D's two-channel 8-bit encoding (`encode_depth_m`), lossless."""
    cv2.imwrite(str(seq_dir / "rgb" / f"{frame}.jpg"), bgr8, JPEG_OPTIONS)
    cv2.imwrite(str(seq_dir / "depth" / f"{frame}.png"), encode_depth_m(depth_m), DEPTH_PNG_OPTIONS)


def _box_to_opengl(R_cv: np.ndarray, t_cv: np.ndarray):
    """A rigid pose in the OpenCV frame -> (axis-angle [3,1], translation [3]) in the OpenGL frame."""
    C = OPENGL_TO_OPENCV
    return matrix_to_axis_angle_np(C @ R_cv @ C).reshape(3, 1), C @ t_cv


def _contact_fields(verts_m: np.ndarray, half: np.ndarray, R: np.ndarray, centre: np.ndarray) -> dict:
    """v3 contact fields of the hand vertices against the box (OpenGL metres for the projections)."""
    local = (verts_m - centre) @ R
    outside = np.maximum(np.abs(local) - half, 0.0)
    dist = np.linalg.norm(outside, axis=1)
    inside = dist == 0
    proj_local = np.clip(local, -half, half)
    proj = flip_opengl_opencv(proj_local @ R.T + centre)
    return {"handVertContact": (dist < 0.004), "handVertDist": dist.astype(np.float32),
            "handVertIntersec": inside, "handVertObjSurfProj": proj.astype(np.float32)}


def _write_sequence(root: Path, folder: str, seq: str, seq_seed, n_frames: int, layer, sample_pose, version: str,
                    hand_axes, faces: np.ndarray) -> tuple[list[dict], float]:
    """Render and write one sequence; returns (per-frame ground truth (OpenGL metres, HO3D order),
    CPU seconds this process spent on it)."""
    start_cpu = time.process_time()
    rng = np.random.default_rng(seq_seed)
    K = np.array([[rng.uniform(605, 630), 0.0, 312.42 + rng.uniform(-6, 6)],
                  [0.0, 0.0, 241.42 + rng.uniform(-6, 6)], [0.0, 0.0, 1.0]])
    K[1, 1] = K[0, 0]
    betas = np.clip(rng.normal(size=10) * 0.8, -2.0, 2.0)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08, size=3)
    # one extra vertex closes the wrist opening (the rasteriser culls back faces)
    vert_colors = np.clip(skin[None] * (1.0 + 0.05 * rng.normal(size=(NUM_VERTS + 1, 1))), 0, 1)[:, ::-1]
    capped_faces, wrist_ring = cap_hole(faces, NUM_VERTS)
    bg_rgb, bg_depth = _background(rng, K)
    # render in cv2's BGR order throughout: colours and background are flipped once here
    bg_bgr = np.ascontiguousarray(bg_rgb[..., ::-1])
    # per-sequence sensor noise banks; each frame reads them at a random offset
    rgb_noise = rng.normal(0, 3.0, size=(IMAGE_H * 2, IMAGE_W * 2, 3)).astype(np.float32)
    depth_noise = rng.standard_normal(size=(IMAGE_H * 2, IMAGE_W * 2), dtype=np.float32)
    uniform_bank = rng.random(size=(IMAGE_H * 2, IMAGE_W * 2), dtype=np.float32)
    hand_pose = np.asarray(sample_pose(layer, rng, n_frames), dtype=np.float64).reshape(n_frames, 45)
    finger, normal = hand_axes
    global_orient = np.stack([matrix_to_axis_angle_np(_facing_rotation(rng, finger, normal)) for _ in range(n_frames)])
    with torch.no_grad():
        # rotation matrices [n,1,3,3]: an axis-angle [n,3] batch is ambiguous for the layer when n == 3
        root_rot = axis_angle_to_matrix(torch.as_tensor(global_orient))[:, None].float()
        out = layer(root_rot, torch.as_tensor(hand_pose, dtype=torch.float32),
                    torch.as_tensor(np.tile(betas, (n_frames, 1)), dtype=torch.float32))
        J0 = layer.rest_root_joint(torch.as_tensor(betas[None], dtype=torch.float32))[0].double().numpy()
    verts_all = out.vertices.double().numpy()
    joints_all = out.joints.double().numpy()

    seq_dir = root / folder / seq
    for d in ("rgb", "depth", "meta"):
        (seq_dir / d).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_frames):
        frame = f"{i:04d}"
        transl = _place_hand(rng, joints_all[i], verts_all[i], K)
        verts_cv = verts_all[i] + transl
        hand_verts = np.concatenate([verts_cv, verts_cv[wrist_ring].mean(0, keepdims=True)])
        joints_cv = joints_all[i] + transl
        occlude = rng.random() < OCCLUDER_PROB
        half, R_obj, c_obj = _object_pose(rng, joints_cv, bg_depth, K, occlude)
        obj_color_bgr = rng.uniform(0.05, 0.95, size=3)
        light = np.array([rng.normal(0, 0.4), rng.normal(-0.4, 0.3), -1.0])
        pix, color_bgr, depth_px, _ = shade_meshes(
            [Mesh(hand_verts, capped_faces, vert_colors), box_mesh(half, R_obj, c_obj, obj_color_bgr)], K, (IMAGE_H, IMAGE_W),
            light_dir=light, ambient=rng.uniform(0.25, 0.4), diffuse=rng.uniform(0.55, 0.75), cull_back=True)
        oy, ox = int(rng.integers(0, IMAGE_H)), int(rng.integers(0, IMAGE_W))
        gain = rng.uniform(0.85, 1.15)
        # sensor gain and noise (saturating cast to uint8) over the background, then over the meshes' pixels
        bgr8 = cv2.addWeighted(bg_bgr, 255.0 * gain, rgb_noise[oy:oy + IMAGE_H, ox:ox + IMAGE_W], 1.0, 0.0, dtype=cv2.CV_8U)
        at_bank = (pix // IMAGE_W + oy) * (2 * IMAGE_W) + pix % IMAGE_W + ox  # the same noise pixels, in the bank
        mesh_bgr = color_bgr * np.float32(255.0 * gain) + np.take(rgb_noise.reshape(-1, 3), at_bank, axis=0)
        bgr8.reshape(-1, 3)[pix] = np.clip(np.rint(mesh_bgr), 0, 255)
        depth = bg_depth.copy()
        depth.reshape(-1)[pix] = depth_px
        depth = _sensor_depth(rng, depth, depth_noise[oy:oy + IMAGE_H, ox:ox + IMAGE_W],
                              uniform_bank[oy:oy + IMAGE_H, ox:ox + IMAGE_W])
        write_frame_images(seq_dir, frame, bgr8, depth)

        go_gl, transl_gl = rotate_mano_root(OPENGL_TO_OPENCV, global_orient[i], transl, J0)
        joints_gl_ho3d = flip_opengl_opencv(joints_cv[CANONICAL_TO_HO3D])
        verts_gl = flip_opengl_opencv(verts_cv)
        obj_rot_gl, obj_trans_gl = _box_to_opengl(R_obj, c_obj)
        corners_rest = box_corners(half)
        meta = {
            "camMat": K.copy(),
            "objRot": obj_rot_gl, "objTrans": obj_trans_gl,
            "objCorners3DRest": corners_rest,
            "objCorners3D": flip_opengl_opencv(corners_rest @ R_obj.T + c_obj),
            "objName": "synthetic_box", "objLabel": 0, "camIDList": ["0"],
        }
        if folder == "train":
            meta.update({
                "handPose": np.concatenate([go_gl, hand_pose[i]]).astype(np.float32),
                "handBeta": betas.astype(np.float32),
                "handTrans": transl_gl.astype(np.float32),
                "handJoints3D": joints_gl_ho3d.astype(np.float32),
            })
        else:
            # the tight box of the projected joints, so that evaluation crops match the train crops
            uv = project_points(joints_cv, K)
            meta.update({"handJoints3D": joints_gl_ho3d[0].astype(np.float32),
                         "handBoundingBox": [float(uv[:, 0].min()), float(uv[:, 1].min()),
                                             float(uv[:, 0].max()), float(uv[:, 1].max())]})
        if version == "v3":
            meta.update(_contact_fields(verts_cv, half, R_obj, c_obj))
        with open(seq_dir / "meta" / f"{frame}.pkl", "wb") as f:
            pickle.dump(meta, f, protocol=2)
        records.append({"name": f"{seq}/{frame}", "joints_gl": joints_gl_ho3d, "verts_gl": verts_gl})
    return records, time.process_time() - start_cpu


_WORKER_STATE: dict = {}


def _die_with_parent(parent_pid: int) -> None:
    """Have Linux SIGKILL this worker when its parent exits (prctl PR_SET_PDEATHSIG): a killed `utnet synth`
    must not leave workers writing into its folder. Exits now if the parent is gone already."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(mano_model_path, next_job=None, jobs=(), parent_pid=None) -> None:
    """Set up a rendering process (the caller or a spawned worker): one thread, the MANO layer, and
    the job list with its shared counter of the next job to take. A worker gets its parent's pid
    (parent_pid) and dies with it; the caller passes None."""
    from utnet.mano import ManoLayer, sample_natural_hand_pose

    if parent_pid is not None:
        _die_with_parent(parent_pid)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if "layer" not in _WORKER_STATE or _WORKER_STATE["path"] != mano_model_path:
        layer = ManoLayer(model_path=mano_model_path, tip_vertex_ids="ho3d")
        _WORKER_STATE.update(layer=layer, path=mano_model_path, sample_pose=sample_natural_hand_pose,
                             hand_axes=_hand_axes(layer), faces=layer.faces.cpu().numpy().astype(np.int64))
    _WORKER_STATE.update(next_job=next_job, jobs=jobs, parent_pid=parent_pid)


def _run_job(job):
    root, folder, seq, seq_seed, n_frames, version = job
    st = _WORKER_STATE
    return _write_sequence(Path(root), folder, seq, seq_seed, n_frames, st["layer"], st["sample_pose"], version,
                           st["hand_axes"], st["faces"])


def _run_jobs() -> list[tuple[int, int, tuple]]:
    """Render jobs until none is left, each time taking the next index from the shared counter (a worker
    that starts late takes fewer); returns [(job index, id of this process, result of `_write_sequence`)].
    A worker whose parent is gone stops (where prctl could not tie its life to the parent's)."""
    next_job, jobs, parent_pid = _WORKER_STATE["next_job"], _WORKER_STATE["jobs"], _WORKER_STATE.get("parent_pid")
    done = []
    while True:
        if parent_pid is not None and os.getppid() != parent_pid:
            os._exit(1)
        with next_job.get_lock():
            k = next_job.value
            next_job.value += 1
        if k >= len(jobs):
            return done
        done.append((k, os.getpid(), _run_job(jobs[k])))


def _render_jobs(jobs: list, processes: int, mano_model_path) -> tuple[list, int]:
    """Render the jobs in this process and processes - 1 spawned workers (the caller has torch loaded
    already; a worker imports it first). Returns (results of `_write_sequence` for every job, in job
    order; how many processes rendered at least one job: a worker that starts late may get none)."""
    ctx = multiprocessing.get_context("spawn")  # torch's thread pools do not survive fork
    next_job = ctx.Value("i", 0)
    threads = (torch.get_num_threads(), cv2.getNumThreads())  # the caller's settings come back after
    try:
        with contextlib.ExitStack() as stack:
            pending = []
            if processes > 1:
                pool = stack.enter_context(ctx.Pool(processes - 1, initializer=_init_worker,
                                                    initargs=(mano_model_path, next_job, jobs, os.getpid())))
                pending = [pool.apply_async(_run_jobs) for _ in range(processes - 1)]
            _init_worker(mano_model_path, next_job, jobs)
            done = _run_jobs()
            for p in pending:
                done += p.get()
    finally:
        _WORKER_STATE.update(next_job=None, jobs=(), parent_pid=None)
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    done.sort(key=lambda d: d[0])
    return [result for _, _, result in done], len({pid for _, pid, _ in done})


def _mano_source(mano_model_path) -> str:
    layer = _WORKER_STATE.get("layer")
    if layer is None or _WORKER_STATE.get("path") != mano_model_path:
        from utnet.mano import ManoLayer

        layer = ManoLayer(model_path=mano_model_path)
    return getattr(layer, "source", "unknown")


def _pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (a zombie counts; unknown counts as alive)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_partials(out_dir: Path) -> list[str]:
    """Remove the partial folders `.NAME.partial-PID` beside out_dir that runs on this host left when they were
    killed (their process PID is gone); returns their paths. A folder without an owner file (written by an
    older version, or killed right after its creation) counts as this host's."""
    prefix = f".{out_dir.name}.partial-"
    removed = []
    for path in sorted(out_dir.parent.glob(glob.escape(prefix) + "*")):
        pid = path.name[len(prefix):]
        if not pid.isdigit() or not path.is_dir() or _pid_alive(int(pid)):
            continue
        try:
            host = (path / PARTIAL_OWNER_FILE).read_text().strip()
        except OSError:
            host = socket.gethostname()
        if host == socket.gethostname():  # on a shared disk, another host's pid means nothing here
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def write_synthetic(out_dir, version: str = "v2", sequences: int = 8, frames: int = 60, seed: int = 0,
                    mano_model_path=None, val_like_eval_frames=None) -> dict:
    """Write the synthetic HO3D-format set to out_dir (a folder without train.txt).

    Train sequences SYN10, SYN11, ... (`sequences` of them, `frames` each); evaluation sequences
    SYE10, ... (max(1, sequences // 4) of them, `val_like_eval_frames` frames each, default `frames`)
    with root + box pickles and evaluation_xyz.json / evaluation_verts.json in evaluation.txt order.
    Written to a temporary sibling folder `.NAME.partial-PID` first, so an interrupted run leaves no half
    data set; the next run removes those of killed runs. Returns a summary dict (counts, seconds, frames
    per second of wall time and per CPU-second of rendering and writing, i.e. per core; `processes`: how
    many processes rendered sequences; `removed_partials`: the partial folders of killed runs removed).
    """
    if version not in ("v2", "v3"):
        raise UserError(f"--version: must be v2 or v3 (got {version!r})")
    if sequences < 1 or frames < 1:
        raise UserError(f"--sequences/--frames: must be >= 1 (got {sequences}, {frames})")
    out_dir = Path(out_dir)
    if (out_dir / "train.txt").exists():
        raise UserError(f"{out_dir}: already holds a data set (train.txt); remove it or choose another folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: exists and is not empty; choose an empty or new folder")
    eval_frames = frames if val_like_eval_frames is None else int(val_like_eval_frames)
    start_wall = time.perf_counter()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    removed_partials = _remove_stale_partials(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / PARTIAL_OWNER_FILE).write_text(socket.gethostname() + "\n")
    try:
        train_seqs = _sequence_names(TRAIN_PREFIX, sequences)
        eval_seqs = _sequence_names(EVAL_PREFIX, max(1, sequences // 4))
        jobs = [(str(tmp), "train", seq, (seed, 0, k), frames, version) for k, seq in enumerate(train_seqs)]
        jobs += [(str(tmp), "evaluation", seq, (seed, 1, k), eval_frames, version) for k, seq in enumerate(eval_seqs)]
        # Sequences are independent (own seed): big sets render on every core (this process and spawned
        # workers), small ones in this process only.
        workers = min(os.cpu_count() or 1, len(jobs)) if len(jobs) * max(frames, eval_frames) >= PARALLEL_MIN_FRAMES else 1
        results, rendered_by = _render_jobs(jobs, workers, mano_model_path)
        train_lines = [r["name"] for (recs, _), job in zip(results, jobs) if job[1] == "train" for r in recs]
        eval_records = [r for (recs, _), job in zip(results, jobs) if job[1] == "evaluation" for r in recs]
        cpu = sum(c for _, c in results)
        (tmp / "train.txt").write_text("\n".join(train_lines) + "\n")
        (tmp / "evaluation.txt").write_text("\n".join(r["name"] for r in eval_records) + "\n")
        # json.dumps, not json.dump: dump runs the pure-Python encoder, ten times slower on 778 x 3 vertices a frame
        (tmp / "evaluation_xyz.json").write_text(json.dumps(np.round([r["joints_gl"] for r in eval_records], 7).tolist()))
        (tmp / "evaluation_verts.json").write_text(json.dumps(np.round([r["verts_gl"] for r in eval_records], 7).tolist()))
        seconds = time.perf_counter() - start_wall
        n_total = len(train_lines) + len(eval_records)
        summary = {
            "root": str(out_dir), "version": version, "seed": seed,
            "train_sequences": train_seqs, "evaluation_sequences": eval_seqs,
            "train_frames": len(train_lines), "evaluation_frames": len(eval_records),
            "mano_source": _mano_source(mano_model_path), "mano_model_path": mano_model_path, "processes": rendered_by,
            "seconds": round(seconds, 2), "frames_per_s": round(n_total / seconds, 1),
            "frames_per_cpu_s": round(n_total / max(cpu, 1e-9), 1),
            "note": "SYNTHETIC stand-in for HO3D, rendered by utnet synth; numbers on it are not HO3D numbers",
        }
        (tmp / INFO_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / PARTIAL_OWNER_FILE).unlink()
        summary["removed_partials"] = removed_partials
        if (out_dir / "train.txt").exists():
            return summary  # another process wrote the same set meanwhile (same arguments, same files)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
