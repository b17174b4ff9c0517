"""A small z-buffered rasteriser with Lambert shading (numpy + cv2, vectorised over triangles).

Triangles are grouped by the size of their pixel bounding box; each group enumerates its
candidate pixels as one array, keeps those inside the triangle (screen-space barycentrics), and a
per-pixel z-buffer (`np.minimum.at`) keeps the nearest fragment. Depth is the exact depth of the
planar triangle at the pixel centre (1/z is linear in screen space); shading interpolates vertex
normals and colours with perspective-correct barycentrics. Pixel centres are integer coordinates
(OpenCV), the convention camMat projects to. All geometry is in the OpenCV camera frame, metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_M = 0.05
_BUCKETS = np.array([2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048])


@dataclass
class Mesh:
    """verts_m [V,3] OpenCV camera frame metres; faces [F,3] int; colors [V,3] albedo in [0,1] (any channel order)."""

    verts_m: np.ndarray
    faces: np.ndarray
    colors: np.ndarray


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V,3] of a triangle mesh (winding sets the sign)."""
    tri = verts[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def rasterize_window(verts_m: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int],
                     cull_back: bool = False):
    """Z-buffer a triangle mesh (OpenCV camera frame, metres) seen through intrinsics K.

    cull_back drops faces turned away from the camera; only for meshes wound counter-clockwise
    seen from outside (MANO's and `box_mesh`'s winding), where it halves the work.

    Works inside the smallest pixel window holding every visible triangle. Returns None when nothing
    is visible, else (x0, y0, depth_m [h,w] float64 (0 = empty), face_id [h,w] int64 (-1 = empty),
    bary [h,w,3] float64 perspective-correct barycentrics) with (x0, y0) the window's top-left pixel.
    """
    H, W = size
    verts_m = np.asarray(verts_m, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    uv = verts_m @ np.asarray(K, dtype=np.float64).T
    uv = uv[:, :2] / np.where(np.abs(uv[:, 2:3]) < 1e-12, 1e-12, uv[:, 2:3])
    tri_uv = uv[faces]                        # [F,3,2]
    tri_z = verts_m[:, 2][faces]              # [F,3]
    x0, y0 = tri_uv[:, 0, 0], tri_uv[:, 0, 1]
    x1, y1 = tri_uv[:, 1, 0], tri_uv[:, 1, 1]
    x2, y2 = tri_uv[:, 2, 0], tri_uv[:, 2, 1]
    denom = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    xmin = np.maximum(np.ceil(tri_uv[..., 0].min(1)), 0)
    xmax = np.minimum(np.floor(tri_uv[..., 0].max(1)), W - 1)
    ymin = np.maximum(np.ceil(tri_uv[..., 1].min(1)), 0)
    ymax = np.minimum(np.floor(tri_uv[..., 1].max(1)), H - 1)
    keep = (tri_z.min(1) > NEAR_M) & (np.abs(denom) > 1e-12) & (xmax >= xmin) & (ymax >= ymin)
    if cull_back:
        tri = verts_m[faces]
        keep &= (np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * tri[:, 0]).sum(1) < 0
    if not keep.any():
        return None
    # Screen-space barycentrics and 1/z are affine in the pixel position: l = a x + b y + c per face.
    safe = np.where(keep, denom, 1.0)
    a0, b0 = (y1 - y2) / safe, (x2 - x1) / safe
    a1, b1 = (y2 - y0) / safe, (x0 - x2) / safe
    c0, c1 = -(a0 * x2 + b0 * y2), -(a1 * x2 + b1 * y2)
    iz = 1.0 / np.where(keep[:, None], tri_z, 1.0)
    az = a0 * (iz[:, 0] - iz[:, 2]) + a1 * (iz[:, 1] - iz[:, 2])
    bz = b0 * (iz[:, 0] - iz[:, 2]) + b1 * (iz[:, 1] - iz[:, 2])
    cz = c0 * (iz[:, 0] - iz[:, 2]) + c1 * (iz[:, 1] - iz[:, 2]) + iz[:, 2]
    wx0, wy0 = int(xmin[keep].min()), int(ymin[keep].min())
    Ww, Hw = int(xmax[keep].max()) - wx0 + 1, int(ymax[keep].max()) - wy0 + 1
    xmin, xmax, ymin, ymax = (a.astype(np.int64) for a in (xmin, xmax, ymin, ymax))
    nb = len(_BUCKETS)
    group = np.where(keep, np.searchsorted(_BUCKETS, xmax - xmin + 1) * nb
                     + np.searchsorted(_BUCKETS, ymax - ymin + 1), -1)
    # The inside test runs in float32 on a dense grid per bucket; the tolerance only lets shared
    # edges be covered twice (the z-buffer resolves that). Depth is recomputed in float64 below.
    coef32 = np.stack([a0, b0, c0 + a0 * xmin + b0 * ymin, a1, b1, c1 + a1 * xmin + b1 * ymin,
                       az, bz, cz + az * xmin + bz * ymin], axis=1).astype(np.float32)
    pix_all, iz_all, face_all = [], [], []
    for g in np.unique(group[keep]):
        sel = np.nonzero(group == g)[0]
        nx, ny = int(_BUCKETS[g // nb]), int(_BUCKETS[g % nb])
        c = coef32[sel][:, :, None, None]                          # [n,9,1,1]
        gx = np.arange(nx, dtype=np.float32)[None, None, :]         # offsets from the box corner
        gy = np.arange(ny, dtype=np.float32)[None, :, None]
        l0 = c[:, 0] * gx + c[:, 1] * gy + c[:, 2]
        l1 = c[:, 3] * gx + c[:, 4] * gy + c[:, 5]
        inside = (l0 >= -1e-5) & (l1 >= -1e-5) & (l0 + l1 <= 1.0 + 1e-5)
        inside &= (gx <= (xmax[sel] - xmin[sel])[:, None, None]) & (gy <= (ymax[sel] - ymin[sel])[:, None, None])
        n_idx, y_idx, x_idx = np.nonzero(inside)
        izg = (c[:, 6] * gx + c[:, 7] * gy + c[:, 8])[n_idx, y_idx, x_idx]
        f = sel[n_idx]
        pix_all.append((ymin[f] + y_idx - wy0) * Ww + (xmin[f] + x_idx - wx0))
        iz_all.append(izg)
        face_all.append(f)

    pix = np.concatenate(pix_all)
    izf = np.concatenate(iz_all)
    f = np.concatenate(face_all)
    nearest = np.zeros(Hw * Ww, dtype=np.float32)    # largest 1/z = nearest surface
    np.maximum.at(nearest, pix, izf)
    win = izf == nearest[pix]
    face_id = np.full(Hw * Ww, -1, dtype=np.int64)
    face_id[pix[win]] = f[win]
    pix = np.flatnonzero(face_id >= 0)
    f = face_id[pix]
    px = (pix % Ww + wx0).astype(np.float64)
    py = (pix // Ww + wy0).astype(np.float64)
    zf = 1.0 / (az[f] * px + bz[f] * py + cz[f])     # exact depth of the plane at the pixel centre
    l0 = a0[f] * px + b0[f] * py + c0[f]
    l1 = a1[f] * px + b1[f] * py + c1[f]
    bary = np.zeros((Hw * Ww, 3))
    bary[pix, 0] = zf * l0 * iz[f, 0]                 # perspective-correct: b_i = z * l_i / z_i
    bary[pix, 1] = zf * l1 * iz[f, 1]
    bary[pix, 2] = 1.0 - bary[pix, 0] - bary[pix, 1]
    depth = np.zeros(Hw * Ww)
    depth[pix] = zf
    return wx0, wy0, depth.reshape(Hw, Ww), face_id.reshape(Hw, Ww), bary.reshape(Hw, Ww, 3)


def rasterize(verts_m: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int], cull_back: bool = False):
    """Full-image form of `rasterize_window`: (depth_m [H,W] (0 = empty), face_id [H,W] (-1 = empty), bary [H,W,3])."""
    H, W = size
    depth, face_id, bary = np.zeros((H, W)), np.full((H, W), -1, dtype=np.int64), np.zeros((H, W, 3))
    out = rasterize_window(verts_m, faces, K, size, cull_back)
    if out is not None:
        x0, y0, d, fid, b = out
        h, w = d.shape
        depth[y0:y0 + h, x0:x0 + w], face_id[y0:y0 + h, x0:x0 + w], bary[y0:y0 + h, x0:x0 + w] = d, fid, b
    return depth, face_id, bary


def render_meshes(meshes: list[Mesh], K: np.ndarray, background: np.ndarray, background_depth_m: np.ndarray,
                  light_dir=(0.3, -0.5, -1.0), ambient: float = 0.35, diffuse: float = 0.75, cull_back: bool = False):
    """Render meshes together (one z-buffer) with two-sided Lambert shading over a background.

    background [H,W,3] float32 in [0,1] (in the channel order of the mesh colours: RGB or BGR) and
    background_depth_m [H,W] float32 (0 = none) are not modified. light_dir: direction TOWARDS the light in the OpenCV camera frame (default: above
    and behind the camera). cull_back: see `rasterize_window`. Returns (image [H,W,3] float32 in the colours' order, depth_m [H,W] float32, mesh_id [H,W] int64
    with -1 on the background).
    """
    H, W = background_depth_m.shape
    verts = np.concatenate([m.verts_m for m in meshes]).astype(np.float64)
    colors = np.concatenate([m.colors for m in meshes]).astype(np.float64)
    offsets = np.cumsum([0] + [len(m.verts_m) for m in meshes])
    faces = np.concatenate([np.asarray(m.faces) + o for m, o in zip(meshes, offsets[:-1])])
    face_mesh = np.concatenate([np.full(len(m.faces), i) for i, m in enumerate(meshes)])
    rgb = background.astype(np.float32, copy=True)
    depth = background_depth_m.astype(np.float32, copy=True)
    mesh_id = np.full((H, W), -1, dtype=np.int64)
    out = rasterize_window(verts, faces, K, (H, W), cull_back)
    if out is None:
        return rgb, depth, mesh_id
    x0, y0, depth_w, face_w, bary_w = out
    h, w = depth_w.shape
    hit = np.flatnonzero(face_w >= 0)
    f = face_w.reshape(-1)[hit]
    b = bary_w.reshape(-1, 3)[hit].astype(np.float32)                    # [P,3]
    vid = faces[f]                                                       # [P,3]
    normals = np.concatenate([vertex_normals(np.asarray(m.verts_m, dtype=np.float64), np.asarray(m.faces)) for m in meshes])
    attr = np.concatenate([normals, colors], axis=1).astype(np.float32)  # [V,6] interpolated together
    a = b[:, :1] * attr[vid[:, 0]] + b[:, 1:2] * attr[vid[:, 1]] + b[:, 2:] * attr[vid[:, 2]]
    n, albedo = a[:, :3], a[:, 3:]
    # two-sided: turn the normal towards the camera, i.e. against the pixel's viewing ray
    Kinv = np.linalg.inv(np.asarray(K, dtype=np.float64)).astype(np.float32)
    px = (hit % w + x0).astype(np.float32)
    py = (hit // w + y0).astype(np.float32)
    ray = np.stack([Kinv[0, 0] * px + Kinv[0, 1] * py + Kinv[0, 2], Kinv[1, 1] * py + Kinv[1, 2], np.ones_like(px)], axis=1)
    light = np.asarray(light_dir, dtype=np.float64)
    light = (light / np.linalg.norm(light)).astype(np.float32)
    cos_light = n @ light
    towards = (n * ray).sum(1) > 0
    cos_light[towards] = -cos_light[towards]
    lambert = np.clip(cos_light / np.maximum(np.sqrt((n * n).sum(1)), 1e-12), 0.0, 1.0)
    win_rgb = rgb[y0:y0 + h, x0:x0 + w].reshape(-1, 3)   # views into the outputs
    win_depth = depth[y0:y0 + h, x0:x0 + w]
    win_mesh = mesh_id[y0:y0 + h, x0:x0 + w]
    win_rgb_c = win_rgb.copy()
    win_rgb_c[hit] = np.clip(albedo * (ambient + diffuse * lambert)[:, None], 0.0, 1.0)
    rgb[y0:y0 + h, x0:x0 + w] = win_rgb_c.reshape(h, w, 3)
    dflat = win_depth.copy().reshape(-1)
    dflat[hit] = depth_w.reshape(-1)[hit]
    depth[y0:y0 + h, x0:x0 + w] = dflat.reshape(h, w)
    mflat = win_mesh.copy().reshape(-1)
    mflat[hit] = face_mesh[f]
    mesh_id[y0:y0 + h, x0:x0 + w] = mflat.reshape(h, w)
    return rgb, depth, mesh_id


def cap_hole(faces: np.ndarray, n_verts: int) -> tuple[np.ndarray, np.ndarray]:
    """Close the one open boundary of a consistently wound mesh (MANO's wrist) with a fan.

    Returns (faces [F+B,3] with the fan added around a new vertex index n_verts, boundary vertex
    ids [B]); place the new vertex at the mean of the boundary vertices. Needed with cull_back so
    that the inside of the wrist opening does not show the background.
    """
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    code = edges[:, 0] * (n_verts + 1) + edges[:, 1]
    reverse = edges[:, 1] * (n_verts + 1) + edges[:, 0]
    boundary = edges[~np.isin(code, reverse)]
    fan = np.stack([boundary[:, 1], boundary[:, 0], np.full(len(boundary), n_verts)], axis=1)
    return np.concatenate([faces, fan]), np.unique(boundary)


def box_mesh(half_extents_m, rotation: np.ndarray, center_m, color) -> Mesh:
    """A cuboid (24 vertices so every face shades flat, 12 triangles): half extents [3] metres,
    rotation [3,3] and centre [3] in the camera frame, RGB colour in [0,1]."""
    corners = box_corners(half_extents_m)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    verts, faces = [], []
    for q in quads:
        base = len(verts)
        verts.extend(corners[list(q)])
        faces.extend([(base, base + 1, base + 2), (base, base + 2, base + 3)])
    verts = np.asarray(verts) @ np.asarray(rotation).T + np.asarray(center_m)
    colors = np.tile(np.asarray(color, dtype=np.float64), (len(verts), 1))
    return Mesh(verts, np.asarray(faces, dtype=np.int64), colors)


def box_corners(half_extents_m) -> np.ndarray:
    """The 8 corners [8,3] of a cuboid centred at the origin (object rest frame)."""
    hx, hy, hz = half_extents_m
    return np.array([[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
