"""UTNet: backbone -> MANO head -> coarse mesh -> GCN refiner, returning the prediction dict."""
from __future__ import annotations

import torch
from torch import nn

from utnet.joints import NUM_JOINTS
from utnet.mano import ManoLayer
from utnet.model.backbone import build_backbone
from utnet.model.camera import cam_translation_mm, crop_intrinsics, initial_scale, project_to_crop
from utnet.model.heatmaps import KeypointHeatmapHead
from utnet.model.mano_head import ManoHead
from utnet.model.refiner import MeshRefiner


class UTNet(nn.Module):
    """`model(batch) -> pred` for batch["rgb"] [B,3,H,W] and batch["depth"] [B,1,H,W].

    pred (mm, absolute = MANO output + predicted camera translation):
      joints_3d [B,21,3], verts_3d [B,778,3], keypoints_2d [B,21,2] (crop units) -- refined;
      coarse: joints_3d, verts_3d, keypoints_2d, global_orient [B,1,3,3], hand_pose [B,15,3,3],
      betas [B,10], cam [B,3] (s 1/mm, tx mm, ty mm; camera.py);
      token_keypoints_2d [B,21,2] (crop units, relative to the wrist), only with `token_keypoints`: a linear regressor on the
      mean-pooled backbone tokens, an auxiliary output for the `token_keypoint_2d` loss term;
      keypoint_heatmaps [B,21,4Hp,4Wp], only with `keypoint_heatmaps`: a heatmap decoder on the token
      grid (heatmaps.py), an auxiliary output for the `keypoint_heatmap` loss term;
      tokens [B,N,D]: the backbone's output tokens, which every output depends on (the loss-balance
      report measures each term's gradient on them).
    The absolute joints_3d/verts_3d are in the MODEL's crop camera (OpenCV axes; K =
    camera.crop_intrinsics(focal_length, image_size), not the sample's cam_intrinsics), and
    keypoints_2d is their projection through it. Only keypoints_2d and root-relative 3D are
    comparable with the ground truth; the absolute depth is not (at initialisation the root sits
    ~2 f / (S s) mm away, metres beyond a real hand).
    Refined joints are MANO's joint regressor plus fingertip vertices on the refined vertices.
    """

    def __init__(self, backbone: nn.Module, head: ManoHead, mano: ManoLayer, refiner: MeshRefiner | None,
                 focal_length: float, image_size: tuple[int, int], token_keypoints: bool = False,
                 keypoint_heatmaps: bool = False, heatmap_channels: int = 64):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.mano = mano
        self.refiner = refiner
        self.focal_length = float(focal_length)
        self.image_size = tuple(image_size)
        self.token_keypoints = nn.Linear(backbone.embed_dim, NUM_JOINTS * 2) if token_keypoints else None
        self.keypoint_heatmaps = KeypointHeatmapHead(backbone.embed_dim, heatmap_channels) if keypoint_heatmaps else None

    def forward(self, batch: dict) -> dict:
        tokens, fmap = self.backbone(batch["rgb"], batch["depth"])
        params = self.head(tokens)
        # Mesh, camera and refinement work in absolute millimetres: under bf16/fp16 autocast they
        # would lose whole millimetres, so they always run in float32.
        with torch.autocast(device_type=fmap.device.type, enabled=False):
            pred = self._mesh(params, fmap.float())
        if self.token_keypoints is not None:
            pred["token_keypoints_2d"] = self.token_keypoints(tokens.mean(dim=1)).float().unflatten(-1, (-1, 2))
        if self.keypoint_heatmaps is not None:
            pred["keypoint_heatmaps"] = self.keypoint_heatmaps(fmap)
        pred["tokens"] = tokens
        return pred

    def _mesh(self, params: dict, fmap: torch.Tensor) -> dict:
        params = {k: v.float() for k, v in params.items()}
        verts_mm, joints_mm = self.mano.mesh_mm(params["global_orient"], params["hand_pose"], params["betas"])
        transl_mm = cam_translation_mm(params["cam"], self.focal_length, self.image_size)[:, None]
        verts_cam_mm = verts_mm + transl_mm
        joints_cam_mm = joints_mm + transl_mm
        coarse = {"joints_3d": joints_cam_mm, "verts_3d": verts_cam_mm,
                  "keypoints_2d": self.project(joints_cam_mm), **params}
        if self.refiner is None:
            return {"joints_3d": joints_cam_mm, "verts_3d": verts_cam_mm,
                    "keypoints_2d": coarse["keypoints_2d"], "coarse": coarse}
        refined_verts = self.refiner(fmap, verts_cam_mm, joints_cam_mm[:, 0], self.project(verts_cam_mm))
        refined_joints = self.mano.joints_from_vertices(refined_verts)
        return {"joints_3d": refined_joints, "verts_3d": refined_verts,
                "keypoints_2d": self.project(refined_joints), "coarse": coarse}

    def intrinsics(self) -> torch.Tensor:
        """K [3,3] in crop pixels of the model's camera (the one `project` uses)."""
        return crop_intrinsics(self.focal_length, self.image_size)

    def project(self, points_cam_mm: torch.Tensor) -> torch.Tensor:
        """[B,N,3] mm camera frame -> [B,N,2] crop units through the model's camera."""
        return project_to_crop(points_cam_mm, self.focal_length, self.image_size)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part (for lr_mult): backbone, head, refiner (empty when disabled)."""
        def trainable(module):
            return [p for p in module.parameters() if p.requires_grad] if module is not None else []
        return {"backbone": trainable(self.backbone),
                "head": trainable(self.head) + trainable(self.token_keypoints) + trainable(self.keypoint_heatmaps),
                "refiner": trainable(self.refiner)}


def build_model(cfg) -> UTNet:
    """Build UTNet from an ExperimentConfig (model.*, mano.*, data.image_size, data.bbox_expand)."""
    image_size = tuple(cfg.data.image_size)
    mano = ManoLayer(model_path=cfg.mano.model_path, tip_vertex_ids=cfg.mano.tip_vertex_ids)
    for p in mano.parameters():
        p.requires_grad_(False)
    backbone = build_backbone(cfg.model.backbone, image_size)
    h = cfg.model.head
    pose_basis = None
    if h.hand_pose == "pca":  # unit coefficient = one standard deviation of that component
        pose_basis = mano.pose_pca_basis(h.pca_components)
    head = ManoHead(backbone.embed_dim, h.dim, h.depth, h.heads, h.mlp_ratio,
                    init_scale=initial_scale(cfg.data.bbox_expand), query=h.query, ief_iters=h.ief_iters,
                    init_hand_pose_aa=mano.hands_mean if h.init_pose == "mean" else None, pose_basis=pose_basis)
    refiner = None
    if cfg.model.refiner.enabled:
        r = cfg.model.refiner
        refiner = MeshRefiner(backbone.embed_dim, mano.v_template.cpu().numpy(), mano.faces.cpu().numpy(),
                              hidden=r.hidden, layers=r.layers, coarse_vertices=r.coarse_vertices)
    return UTNet(backbone, head, mano, refiner, cfg.model.focal_length, image_size,
                 token_keypoints=cfg.model.token_keypoints, keypoint_heatmaps=cfg.model.keypoint_heatmaps,
                 heatmap_channels=cfg.model.heatmap_channels)


def initial_model(cfg) -> UTNet:
    """The model `utnet train` starts from: the global seeds set to `cfg.seed`, then `build_model(cfg)`.
    Every command that needs the untrained model (train, eval --untrained, overfit, reweigh) builds it here,
    so they all see the same initial weights for a config."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    return build_model(cfg)
