"""GCN mesh refinement: image features sampled at the projected coarse vertices, graph convolutions
on a coarsened MANO mesh, per-vertex offsets in mm up-sampled to the 778 vertices.

The coarsening is computed once at build time from the template mesh and faces (deterministic):
farthest point sampling by geodesic (mesh-edge) distance picks K vertices; each vertex joins the
cluster of its geodesically nearest picked vertex; two picked vertices are adjacent when a mesh edge
joins their clusters; a fixed up-sampling matrix spreads each coarse offset to the full mesh by
inverse geodesic distance over the 3 nearest picked vertices (a picked vertex takes its own offset).
With K = 778 the graph is the mesh itself and the up-sampling is the identity.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from torch import nn

COORD_SCALE_MM = 100.0  # root-relative vertex coordinates enter the GCN divided by this (about unit range)
OFFSET_SCALE_MM = 10.0  # one unit of GCN output is this many mm of vertex offset
UPSAMPLE_NEIGHBOURS = 3


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges [E,2] (i < j) of a triangle mesh faces [F,3]."""
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def coarsen_mesh(verts: np.ndarray, faces: np.ndarray, num_coarse: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic coarsening of a mesh (see the module docstring).

    Args:
        verts: [V,3] template vertices (any unit), faces: [F,3] vertex ids, num_coarse: K <= V.
    Returns:
        coarse_ids [K] (picked vertex ids, in picking order), adjacency [K,K] (0/1, symmetric, no
        self-loops), upsample [V,K] (rows sum to 1; full offsets = upsample @ coarse offsets).
    """
    verts = np.asarray(verts, dtype=np.float64)
    V = len(verts)
    edges = mesh_edges(faces)
    lengths = np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1)
    graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(V, V)).tocsr()
    geodesic = shortest_path(graph, directed=False)  # [V,V], inf between disconnected parts
    # Start from the vertex farthest from the centroid; ties resolve to the lowest id.
    picked = [int(np.argmax(np.linalg.norm(verts - verts.mean(0), axis=1)))]
    nearest = geodesic[picked[0]].copy()
    for _ in range(num_coarse - 1):
        nxt = int(np.argmax(nearest))
        picked.append(nxt)
        nearest = np.minimum(nearest, geodesic[nxt])
    coarse_ids = np.array(picked, dtype=np.int64)

    to_coarse = geodesic[:, coarse_ids]  # [V,K]
    # A part of the mesh no picked vertex reaches falls back to Euclidean distance.
    euclid = np.linalg.norm(verts[:, None] - verts[coarse_ids][None], axis=-1)
    to_coarse = np.where(np.isfinite(to_coarse), to_coarse, euclid + np.nanmax(np.where(np.isfinite(to_coarse), to_coarse, 0)))
    cluster = np.argmin(to_coarse, axis=1)
    cluster[coarse_ids] = np.arange(len(coarse_ids))
    a, b = cluster[edges[:, 0]], cluster[edges[:, 1]]
    adjacency = np.zeros((num_coarse, num_coarse))
    cross = a != b
    adjacency[a[cross], b[cross]] = 1.0
    adjacency[b[cross], a[cross]] = 1.0

    k = min(UPSAMPLE_NEIGHBOURS, num_coarse)
    near = np.argsort(to_coarse, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(to_coarse, near, axis=1)
    weights = 1.0 / np.maximum(dist, 1e-12)
    weights[dist[:, 0] <= 1e-12] = np.eye(k)[0]  # a picked vertex keeps exactly its own offset
    weights /= weights.sum(1, keepdims=True)
    upsample = np.zeros((V, num_coarse))
    np.put_along_axis(upsample, near, weights, axis=1)
    return coarse_ids, adjacency, upsample


def normalized_adjacency(adjacency: np.ndarray) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 (Kipf and Welling's graph convolution operator) of a 0/1 adjacency [K,K]."""
    a = adjacency + np.eye(len(adjacency))
    d = 1.0 / np.sqrt(a.sum(1))
    return a * d[:, None] * d[None, :]


def sample_features(feature_map: torch.Tensor, points_crop: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample feature_map [B,C,h,w] at points [B,N,2] in crop units -> [B,N,C].

    Crop units put -0.5/+0.5 on the crop's outer edges, where grid_sample with align_corners=False
    puts -1/+1, so the grid is exactly points * 2 (WiLoR's released sampler omits the factor).
    Points outside the crop sample zeros.
    """
    grid = (points_crop * 2.0)[:, :, None, :]  # [B,N,1,2] (x, y)
    sampled = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled[..., 0].transpose(1, 2)


class GraphConv(nn.Module):
    """Residual graph convolution: h + GELU(LayerNorm(A_hat h W))."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """h [B,K,dim], adj [K,K] normalised adjacency -> [B,K,dim]."""
        return h + F.gelu(self.norm(adj @ self.linear(h)))


class MeshRefiner(nn.Module):
    """Coarse mesh + ViT feature map -> refined vertices (mm, same frame as the input).

    The GCN reads the coarse estimate (sampling positions and coordinates) detached: the refiner's
    losses train its own offsets and, through `refined = coarse + offsets`, the coarse mesh, but do
    not push the head through the bilinear sampling positions of a coarse patch grid.
    The last layer starts at zero, so the refiner starts as the identity.

    Args:
        feature_dim: channels of the feature map; template_verts [778,3], faces [F,3] (numpy);
        hidden: GCN width; layers: graph convolutions; coarse_vertices: K.
    """

    def __init__(self, feature_dim: int, template_verts: np.ndarray, faces: np.ndarray,
                 hidden: int = 64, layers: int = 3, coarse_vertices: int = 195):
        super().__init__()
        coarse_ids, adjacency, upsample = coarsen_mesh(template_verts, faces, coarse_vertices)
        self.register_buffer("coarse_ids", torch.as_tensor(coarse_ids), persistent=False)
        self.register_buffer("adjacency", torch.as_tensor(normalized_adjacency(adjacency), dtype=torch.float32),
                             persistent=False)
        self.register_buffer("upsample", torch.as_tensor(upsample, dtype=torch.float32), persistent=False)
        self.inp = nn.Linear(feature_dim + 3, hidden)
        self.convs = nn.ModuleList(GraphConv(hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feature_map: torch.Tensor, verts_cam_mm: torch.Tensor, root_cam_mm: torch.Tensor,
                verts_crop: torch.Tensor) -> torch.Tensor:
        """feature_map [B,C,h,w]; verts_cam_mm [B,778,3] coarse vertices (mm, camera frame);
        root_cam_mm [B,3] coarse root joint; verts_crop [B,778,2] their projections (crop units).
        Returns refined vertices [B,778,3] mm, camera frame."""
        ids = self.coarse_ids
        feats = sample_features(feature_map, verts_crop[:, ids].detach())
        coords = (verts_cam_mm[:, ids] - root_cam_mm[:, None]).detach() / COORD_SCALE_MM
        h = self.inp(torch.cat([feats, coords], dim=-1))
        for conv in self.convs:
            h = conv(h, self.adjacency)
        offsets_coarse_mm = self.out(h) * OFFSET_SCALE_MM
        return verts_cam_mm + self.upsample @ offsets_coarse_mm
