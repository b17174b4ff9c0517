"""A small z-buffered rasteriser with Lambert shading (numpy, vectorised over triangles and rows).

Each visible triangle is cut into its pixel rows; each row's span of covered pixels comes from the
triangle's three edge functions (screen-space barycentrics, affine in the pixel position), so only
covered pixels are enumerated. A per-pixel z-buffer (`np.maximum.at` on 1/z) keeps the nearest
fragment. Depth is the exact depth of the planar triangle at the pixel centre (1/z is affine in
screen space); shading interpolates vertex normals and colours with perspective-correct
barycentrics. Pixel centres are integer coordinates (OpenCV), the convention camMat projects to.
All geometry is in the OpenCV camera frame, metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_M = 0.05
# Barycentric slack of the inside test: a pixel centre on an edge shared by two triangles is covered
# by both (the z-buffer keeps one), so meshes show no cracks.
EDGE_TOL = 1e-5


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
    corner_n = np.repeat(face_n, 3, axis=0)  # row 3f+k: face f's normal, for its vertex faces[f, k]
    normals = np.stack([np.bincount(faces.reshape(-1), weights=corner_n[:, c], minlength=len(verts)) for c in range(3)], 1)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated integer ranges [starts[i], starts[i] + counts[i]) (counts >= 0): (owner i [N], value [N])."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return owner, starts[owner] + (np.arange(owner.size) - first[owner])


def rasterize_pixels(verts_m: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int],
                     cull_back: bool = False):
    """Z-buffer a triangle mesh (OpenCV camera frame, metres) seen through intrinsics K [3,3].

    size is the image (H, W). cull_back drops faces turned away from the camera; only for meshes
    wound counter-clockwise seen from outside (MANO's and `box_mesh`'s winding), where it halves the work.

    Returns, for every covered pixel in increasing order: (pixel [P] int64 flat index y * W + x,
    face [P] int64 the nearest face there, depth_m [P] float64 its exact depth at the pixel centre,
    bary [P,3] float64 perspective-correct barycentrics of that point in the face). P = 0 when
    nothing is visible.
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
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3))
    x0, y0, x1, y1, x2, y2, denom, xmin, xmax, ymin, ymax = (
        v[kept] for v in (x0, y0, x1, y1, x2, y2, denom, xmin, xmax, ymin, ymax))
    # Screen-space barycentrics and 1/z are affine in the pixel position: l = a x + b y + c per face.
    a0, b0 = (y1 - y2) / denom, (x2 - x1) / denom
    a1, b1 = (y2 - y0) / denom, (x0 - x2) / denom
    c0, c1 = -(a0 * x2 + b0 * y2), -(a1 * x2 + b1 * y2)
    iz = 1.0 / tri_z[kept]
    az = a0 * (iz[:, 0] - iz[:, 2]) + a1 * (iz[:, 1] - iz[:, 2])
    bz = b0 * (iz[:, 0] - iz[:, 2]) + b1 * (iz[:, 1] - iz[:, 2])
    cz = c0 * (iz[:, 0] - iz[:, 2]) + c1 * (iz[:, 1] - iz[:, 2]) + iz[:, 2]
    # Rows of each face's box, then each row's span [lower, upper] from the three barycentrics
    # l0, l1, l2 = 1 - l0 - l1: a x >= -EDGE_TOL - (b y + c) bounds x below when a > 0, above when a < 0.
    row_face, row_y = _ragged_arange(ymin.astype(np.int64), (ymax - ymin + 1).astype(np.int64))
    lower, upper = xmin[row_face], xmax[row_face]
    for a, b, c in ((a0, b0, c0), (a1, b1, c1), (-a0 - a1, -b0 - b1, 1.0 - c0 - c1)):
        a_row = a[row_face]
        rhs = -EDGE_TOL - (b[row_face] * row_y + c[row_face])
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = rhs / a_row
        lower = np.where(a_row > 0, np.maximum(lower, bound), lower)
        upper = np.where(a_row < 0, np.minimum(upper, bound), upper)
        upper = np.where((a_row == 0) & (rhs > 0), -1.0, upper)  # a row outside an edge parallel to it
    x_first = np.ceil(lower)
    count = np.maximum(np.floor(upper) - x_first + 1, 0).astype(np.int64)
    frag_row, frag_x = _ragged_arange(x_first.astype(np.int64), count)
    f = row_face[frag_row]
    frag_y = row_y[frag_row]
    # z-buffer over the window holding every kept face: the largest 1/z is the nearest surface;
    # equal 1/z (a shared edge) goes to the larger face index, whatever the fragment order
    wx0, wy0 = int(xmin.min()), int(ymin.min())
    Ww, Hw = int(xmax.max()) - wx0 + 1, int(ymax.max()) - wy0 + 1
    local = (frag_y - wy0) * Ww + (frag_x - wx0)
    izf = az[f] * frag_x + bz[f] * frag_y + cz[f]
    nearest = np.zeros(Hw * Ww)
    np.maximum.at(nearest, local, izf)
    win = izf == nearest[local]
    face_at = np.full(Hw * Ww, -1, dtype=np.int64)
    np.maximum.at(face_at, local[win], f[win])
    local = np.flatnonzero(face_at >= 0)
    f = face_at[local]
    py, px = local // Ww + wy0, local % Ww + wx0
    pix = py * W + px
    px, py = px.astype(np.float64), py.astype(np.float64)
    zf = 1.0 / (az[f] * px + bz[f] * py + cz[f])     # exact depth of the plane at the pixel centre
    bary = np.empty((len(pix), 3))
    bary[:, 0] = zf * (a0[f] * px + b0[f] * py + c0[f]) * iz[f, 0]   # perspective-correct: b_i = z * l_i / z_i
    bary[:, 1] = zf * (a1[f] * px + b1[f] * py + c1[f]) * iz[f, 1]
    bary[:, 2] = 1.0 - bary[:, 0] - bary[:, 1]
    return pix, kept[f], zf, bary


def shade_meshes(meshes: list[Mesh], K: np.ndarray, size: tuple[int, int], light_dir=(0.3, -0.5, -1.0),
                 ambient: float = 0.35, diffuse: float = 0.75, cull_back: bool = False):
    """Render meshes together (one z-buffer) with two-sided Lambert shading; only the covered pixels.

    size is the image (H, W); light_dir: direction TOWARDS the light in the OpenCV camera frame
    (default: above and behind the camera); cull_back: see `rasterize_pixels`. Returns (pixel [P]
    int64 flat index y * W + x, color [P,3] float32 in [0,1] in the channel order of the mesh colours,
    depth_m [P] float64, mesh_id [P] int64 index into meshes).
    """
    verts = np.concatenate([m.verts_m for m in meshes]).astype(np.float64)
    colors = np.concatenate([m.colors for m in meshes]).astype(np.float64)
    offsets = np.cumsum([0] + [len(m.verts_m) for m in meshes])
    faces = np.concatenate([np.asarray(m.faces) + o for m, o in zip(meshes, offsets[:-1])])
    face_mesh = np.concatenate([np.full(len(m.faces), i) for i, m in enumerate(meshes)])
    pix, f, depth_m, bary = rasterize_pixels(verts, faces, K, size, cull_back)
    normals = np.concatenate([vertex_normals(np.asarray(m.verts_m, dtype=np.float64), np.asarray(m.faces)) for m in meshes])
    attr = np.concatenate([normals, colors], axis=1).astype(np.float32)  # [V,6] interpolated together
    a = np.einsum("pk,pkc->pc", bary.astype(np.float32), np.take(attr, faces[f], axis=0))
    n, albedo = a[:, :3], a[:, 3:]
    # two-sided: turn the normal towards the camera, i.e. against the pixel's viewing ray
    Kinv = np.linalg.inv(np.asarray(K, dtype=np.float64)).astype(np.float32)
    px = (pix % size[1]).astype(np.float32)
    py = (pix // size[1]).astype(np.float32)
    ray = np.stack([Kinv[0, 0] * px + Kinv[0, 1] * py + Kinv[0, 2], Kinv[1, 1] * py + Kinv[1, 2], np.ones_like(px)], axis=1)
    light = np.asarray(light_dir, dtype=np.float64)
    light = (light / np.linalg.norm(light)).astype(np.float32)
    cos_light = n @ light
    cos_light = np.where(np.einsum("pc,pc->p", n, ray) > 0, -cos_light, cos_light)
    lambert = np.clip(cos_light / np.maximum(np.sqrt(np.einsum("pc,pc->p", n, n)), 1e-12), 0.0, 1.0)
    color = np.clip(albedo * (ambient + diffuse * lambert)[:, None], 0.0, 1.0)
    return pix, color, depth_m, face_mesh[f]


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
