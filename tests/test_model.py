"""The UTNet model: camera, backbone weights, grid_sample mapping, mesh coarsening, outputs, gradients, overfitting."""
from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.sparse.csgraph import connected_components

from utnet.config import load_config
from utnet.engine.targets import add_mano_targets
from utnet.errors import UserError
from utnet.geometry import project_points
from utnet.model import build_model
from utnet.model.backbone import Backbone, build_backbone
from utnet.model.camera import (TYPICAL_HAND_MM, cam_translation_mm, crop_intrinsics, initial_scale,
                                project_to_crop)
from utnet.model.refiner import coarsen_mesh, mesh_edges, sample_features
from utnet.model.weights import read_state_dict

IMAGE_SIZE = (64, 48)  # the smallest crop the tests need: a 4 x 3 patch grid


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two threads per process oversubscribe the cores
    and a step gets several times slower; one thread keeps these tests' time predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ camera
@pytest.mark.parametrize("image_size", [(256, 192), (128, 96), (64, 64)])
def test_projection_equals_the_pinhole_in_crop_pixels(image_size):
    H, W = image_size
    g = torch.Generator().manual_seed(0)
    points = torch.randn(2, 50, 3, generator=g, dtype=torch.float64) * 80.0
    points[..., 2] += 3000.0
    K = crop_intrinsics(5000.0, image_size).double()
    uv = project_points(points, K)
    expected = torch.stack([uv[..., 0] / W - 0.5, uv[..., 1] / H - 0.5], dim=-1)
    torch.testing.assert_close(project_to_crop(points, 5000.0, image_size), expected)
    # The principal point is the crop centre, (0, 0) in crop units.
    assert torch.allclose(project_to_crop(points.new_tensor([[[0.0, 0.0, 900.0]]]), 5000.0, image_size),
                          points.new_zeros(1, 1, 2))


def test_weak_perspective_scale_meaning():
    """A hand of L mm along the long side spans L * s / 2 crop units; the initial s fits the crop box."""
    image_size = (256, 192)
    s = initial_scale(1.5)
    cam = torch.tensor([[s, 0.0, 0.0]], dtype=torch.float64)
    t = cam_translation_mm(cam, 5000.0, image_size)
    assert t[0, 2] == pytest.approx(2 * 5000.0 / (256 * s), rel=1e-6)
    ends = torch.tensor([[[0.0, -TYPICAL_HAND_MM / 2, 0.0], [0.0, TYPICAL_HAND_MM / 2, 0.0]]], dtype=torch.float64)
    crop = project_to_crop(ends + t[:, None], 5000.0, image_size)
    assert (crop[0, 1, 1] - crop[0, 0, 1]).item() == pytest.approx(1 / 1.5, rel=1e-6)


# ---------------------------------------------------------------------------------- grid_sample map
def test_grid_sample_maps_crop_units_onto_feature_cells():
    """Crop units [-0.5, 0.5] span the feature map edge to edge: cell (i, j) has its centre at
    ((j + 0.5) / w - 0.5, (i + 0.5) / h - 0.5), and sampling between centres interpolates linearly."""
    h, w = 4, 3
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    fmap = torch.stack([jj, ii, 10 * ii + jj])[None]  # channel 0 = column, 1 = row, 2 = cell id
    centres = torch.stack([(jj + 0.5) / w - 0.5, (ii + 0.5) / h - 0.5], dim=-1).reshape(1, -1, 2)
    sampled = sample_features(fmap, centres)
    torch.testing.assert_close(sampled[0, :, 2], (10 * ii + jj).reshape(-1))
    # Halfway between the centres of columns 0 and 1 and a quarter of a cell below row 1's centre.
    point = torch.tensor([[[1.0 / w - 0.5, (1.75) / h - 0.5]]])
    torch.testing.assert_close(sample_features(fmap, point)[0, 0, :2], torch.tensor([0.5, 1.25]))
    # Half a cell beyond the crop edge there is nothing left to sample.
    assert sample_features(fmap, torch.tensor([[[0.5 + 0.5 / w, 0.0]]])).abs().sum() == 0


# ---------------------------------------------------------------------------------------- backbone
def test_fusion_initialisation_keeps_rgb_features():
    torch.manual_seed(0)
    rgb, depth = torch.randn(2, 3, *IMAGE_SIZE), torch.rand(2, 1, *IMAGE_SIZE)
    early = Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "early")
    w = early.vit.patch_embed.proj.weight
    assert w.shape[1] == 4
    torch.testing.assert_close(w[:, 3], w[:, :3].mean(1))
    late = Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "late").eval()
    tokens, fmap = late(rgb, depth)
    assert tokens.shape == (2, 12, 192) and fmap.shape == (2, 192, 4, 3)
    # Zero-initialised depth embedding: the late-fusion ViT starts as the RGB ViT.
    torch.testing.assert_close(tokens, late.vit.forward_features(rgb)[:, 1:])
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 1 * 3 + 2])


def test_hybrid_vit_takes_depth_in_its_stem_and_loads_an_rgb_checkpoint(tmp_path):
    """timm's hybrid ViT (ResNet stem + patch projection): early fusion widens the stem's first conv,
    late fusion's depth embedding matches the 32-pixel token cells, an RGB checkpoint loads."""
    torch.manual_seed(0)
    size = (128, 96)
    rgb, depth = torch.randn(2, 3, *size), torch.rand(2, 1, *size)
    early = Backbone("vit_tiny_r_s16_p8_224", size, "early")
    assert early.input_conv_name == "backbone.conv" and early.cell_size == (32, 32)
    tokens, fmap = early(rgb, depth)
    assert tokens.shape == (2, 12, 192) and fmap.shape == (2, 192, 4, 3)
    depth_grad = torch.autograd.grad(tokens.square().sum(), early.vit.patch_embed.backbone.conv.weight)[0][:, 3]
    assert depth_grad.abs().sum() > 0  # depth reaches the tokens through the stem
    late = Backbone("vit_tiny_r_s16_p8_224", size, "late").eval()
    torch.testing.assert_close(late(rgb, depth)[0], late.vit.forward_features(rgb)[:, 1:])
    rgb_vit = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=size, num_classes=0)
    state = {k: v.contiguous() for k, v in rgb_vit.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        early.load_checkpoint(_save(state, tmp_path / "hybrid.safetensors"))
    w = early.vit.patch_embed.backbone.conv.weight
    torch.testing.assert_close(w[:, :3], state["patch_embed.backbone.conv.weight"])
    torch.testing.assert_close(w[:, 3], state["patch_embed.backbone.conv.weight"].mean(1))


def test_conv_stem_keeps_the_token_grid_and_loads_the_transformer_of_an_rgb_checkpoint(tmp_path):
    torch.manual_seed(0)
    rgb, depth = torch.randn(2, 3, *IMAGE_SIZE), torch.rand(2, 1, *IMAGE_SIZE)
    backbone = Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "early", stem="conv")
    convs = [m for m in backbone.vit.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 4 + [(1, 1)] and convs[0].in_channels == 4
    assert [c.out_channels for c in convs] == [24, 48, 96, 192, 192]
    tokens, fmap = backbone(rgb, depth)
    assert tokens.shape == (2, 12, 192) and fmap.shape == (2, 192, 4, 3)
    # the stem is local: a change in the bottom-right 16x16 cell leaves the top-left token unchanged
    backbone.eval()
    changed = rgb.clone()
    changed[..., -16:, -16:] += 1.0
    a = backbone.vit.patch_embed(torch.cat([rgb, depth], 1))
    b = backbone.vit.patch_embed(torch.cat([changed, depth], 1))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, -1], b[:, -1])
    state = _timm_rgb_state()
    with pytest.warns(UserWarning, match=r"model.backbone.checkpoint: .*patch_embed.proj.0.weight.*patch_embed.proj.weight"):
        backbone.load_checkpoint(_save(state, tmp_path / "vit.pth"))
    torch.testing.assert_close(backbone.vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    with pytest.raises(UserError, match="model.backbone.stem"):
        Backbone("vit_tiny_patch16_224", IMAGE_SIZE, stem="pyramid")


def test_conv_stem_depth_adds_stride_one_convolutions_per_stage():
    """stem_depth 2: each of the 4 stages is a stride-2 then a stride-1 3x3 convolution at the same
    width; the token grid does not change."""
    torch.manual_seed(0)
    rgb, depth = torch.randn(2, 3, *IMAGE_SIZE), torch.rand(2, 1, *IMAGE_SIZE)
    backbone = Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "early", stem="conv", stem_depth=2)
    convs = [m for m in backbone.vit.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1)] * 4 + [(1, 1)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 8 + [(1, 1)]
    assert [c.out_channels for c in convs] == [24, 24, 48, 48, 96, 96, 192, 192, 192] and convs[0].in_channels == 4
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.vit.patch_embed.proj) == 8
    tokens, fmap = backbone(rgb, depth)
    assert tokens.shape == (2, 12, 192) and fmap.shape == (2, 192, 4, 3)
    cfg = _config("data.image_size=[64, 48]", "model.backbone.stem=conv", "model.backbone.stem_depth=3")
    proj = build_model(cfg).backbone.vit.patch_embed.proj
    assert sum(isinstance(m, torch.nn.Conv2d) for m in proj) == 13


def test_token_keypoints_regress_from_the_mean_pooled_tokens_and_train_the_backbone():
    """model.token_keypoints: pred['token_keypoints_2d'] [B,21,2] is a linear map of the mean of the
    backbone tokens; `token_keypoint_2d` compares it with the wrist-relative ground truth, gives every
    backbone parameter a gradient and none to the MANO head; the regressor is in the head's
    parameter group (optim.lr_mult.head)."""
    import losses

    cfg = _config("data.image_size=[64, 48]", "model.backbone.stem=conv", "model.token_keypoints=true")
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = mano_batch(model, 2)
    pred = model(batch)
    tokens, _ = model.backbone(batch["rgb"], batch["depth"])
    assert pred["token_keypoints_2d"].shape == (2, 21, 2)
    expected = (tokens.mean(1) @ model.token_keypoints.weight.T + model.token_keypoints.bias).reshape(2, 21, 2)
    torch.testing.assert_close(pred["token_keypoints_2d"], expected)
    head_group = {id(p) for p in model.param_groups()["head"]}
    assert {id(p) for p in model.token_keypoints.parameters()} <= head_group
    loss_set = losses.LossSet.from_config({"token_keypoint_2d": {"weight": 1.0, "reduction": "mean"}})
    total, logs = loss_set(pred, batch)
    relative = batch["keypoints_2d"] - batch["keypoints_2d"][:, :1]
    torch.testing.assert_close(total, (pred["token_keypoints_2d"] - relative).abs().mean())
    batch["keypoints_2d_valid"][0, 0] = 0  # without its wrist, sample 0 does not count
    torch.testing.assert_close(loss_set(pred, batch)[0], (pred["token_keypoints_2d"][1] - relative[1]).abs().mean())
    batch["keypoints_2d_valid"][0, 0] = 1
    total.backward()
    assert all(p.grad is not None and (p.grad != 0).any() for p in model.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.head.parameters())
    cfg.model.token_keypoints = False  # (load_config would refuse the default loss set without the head)
    plain = build_model(cfg)
    assert plain.token_keypoints is None and "token_keypoints_2d" not in plain(batch)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_tiny_r_s16_p8_224"])
def test_image_size_that_the_token_grid_cannot_tile_is_a_user_error(name):
    with pytest.raises(UserError, match=r"^data.image_size: \[120, 96\]"):
        Backbone(name, (120, 96))


def test_unknown_backbone_name_is_a_user_error():
    with pytest.raises(UserError, match="model.backbone.name"):
        Backbone("vit_does_not_exist", IMAGE_SIZE)


def _timm_rgb_state():
    """A real state dict of a freshly built RGB timm ViT, as a user's checkpoint would hold."""
    rgb_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE_SIZE, num_classes=0)
    return {k: v.contiguous() for k, v in rgb_vit.state_dict().items()}


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_loads_rgb_weights_into_early_fusion(tmp_path, suffix):
    state = _timm_rgb_state()
    path = _save(state, tmp_path / f"vit{suffix}")
    backbone = Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "early")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint loads without any warning
        backbone.load_checkpoint(path)
    w = backbone.vit.patch_embed.proj.weight
    torch.testing.assert_close(w[:, :3], state["patch_embed.proj.weight"])
    torch.testing.assert_close(w[:, 3], state["patch_embed.proj.weight"].mean(1))
    torch.testing.assert_close(backbone.vit.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_checkpoint_missing_key_warns_once_and_wrong_shape_names_the_key(tmp_path):
    state = _timm_rgb_state()
    del state["blocks.1.mlp.fc2.bias"]
    state["not_a_vit_key"] = torch.zeros(3)
    path = _save(state, tmp_path / "missing.safetensors")
    cfg = _config(f"model.backbone.checkpoint={path}")
    with pytest.warns(UserWarning) as record:
        backbone = build_backbone(cfg.model.backbone, IMAGE_SIZE)
    assert len(record) == 1
    message = str(record[0].message)
    assert "blocks.1.mlp.fc2.bias" in message and "not_a_vit_key" in message and "model.backbone.checkpoint" in message
    torch.testing.assert_close(backbone.vit.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])

    bad = _timm_rgb_state()
    bad["blocks.0.attn.proj.weight"] = torch.zeros(192, 100)
    with pytest.raises(UserError, match=r"blocks\.0\.attn\.proj\.weight.*\(192, 100\)"):
        Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "late").load_checkpoint(_save(bad, tmp_path / "bad.pth"))
    with pytest.raises(UserError, match="model.backbone.checkpoint: file not found"):
        backbone.load_checkpoint(tmp_path / "nope.safetensors")


def test_checkpoint_of_another_grid_resamples_the_position_embedding(tmp_path):
    vit224 = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = _save({k: v.contiguous() for k, v in vit224.state_dict().items()}, tmp_path / "vit224.safetensors")
    backbone = Backbone("vit_tiny_patch16_224", IMAGE_SIZE, "late")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.load_checkpoint(path)
    assert backbone.vit.pos_embed.shape == (1, 1 + 12, 192)
    torch.testing.assert_close(backbone.vit.pos_embed[0, 0], vit224.pos_embed[0, 0])  # the class token's
    # The 14 x 14 grid resampled to the 4 x 3 token grid (rows = height) as timm does it: bicubic
    # with antialiasing. A transposed 3 x 4 grid has as many tokens but other values.
    grid = vit224.pos_embed[0, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 3), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(backbone.vit.pos_embed[0, 1:], expected[0].permute(1, 2, 0).reshape(12, 192))


# ------------------------------------------------------------------------------------ coarsening
def _tube_mesh(rings=20, per_ring=12):
    """A closed-ish tube (a mesh with known structure) for the coarsening tests."""
    angles = np.arange(per_ring) * 2 * np.pi / per_ring
    verts = np.array([[np.cos(a), np.sin(a), 0.3 * r] for r in range(rings) for a in angles])
    faces = []
    for r in range(rings - 1):
        for k in range(per_ring):
            a, b = r * per_ring + k, r * per_ring + (k + 1) % per_ring
            faces += [[a, b, a + per_ring], [b, b + per_ring, a + per_ring]]
    return verts, np.array(faces)


def test_coarsening_is_deterministic_connected_and_identity_at_full_size():
    verts, faces = _tube_mesh()
    ids, adjacency, upsample = coarsen_mesh(verts, faces, 40)
    ids2, adjacency2, upsample2 = coarsen_mesh(verts, faces, 40)
    assert np.array_equal(ids, ids2) and np.array_equal(adjacency, adjacency2) and np.array_equal(upsample, upsample2)
    assert len(set(ids.tolist())) == 40
    assert np.array_equal(adjacency, adjacency.T) and adjacency.diagonal().sum() == 0
    assert adjacency.sum(1).min() >= 1  # every coarse vertex has a neighbour
    np.testing.assert_allclose(upsample.sum(1), 1.0)
    np.testing.assert_allclose(upsample[ids], np.eye(40), atol=1e-12)  # a picked vertex keeps its offset
    assert connected_components(adjacency, directed=False)[0] == 1  # connected, as the tube is
    # No coarsening: the mesh's own graph, and the up-sampling only renames vertices.
    V = len(verts)
    ids, adjacency, upsample = coarsen_mesh(verts, faces, V)
    np.testing.assert_allclose(upsample[:, np.argsort(ids)], np.eye(V))
    edges = mesh_edges(faces)
    full = np.zeros((V, V))
    full[edges[:, 0], edges[:, 1]] = full[edges[:, 1], edges[:, 0]] = 1
    np.testing.assert_array_equal(adjacency[np.ix_(np.argsort(ids), np.argsort(ids))], full)


# ------------------------------------------------------------------------------------ the model
def _config(*overrides):
    return load_config(overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(_config())


def mano_batch(model, n: int, seed: int = 0) -> dict:
    """A batch-contract batch of n MANO hands (stand-in) in front of a crop camera, with the
    engine's additions (verts_3d, mano_rotmats); images are noise: these tests need shapes and targets."""
    from utnet.mano import sample_natural_hand_pose

    H, W = model.image_size
    rng = np.random.default_rng(seed)
    hand_pose = torch.as_tensor(sample_natural_hand_pose(model.mano, rng, n), dtype=torch.float32)
    orient = torch.as_tensor(rng.normal(0, 0.4, (n, 3)) + [np.pi, 0, 0], dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(0, 0.5, (n, 10)), dtype=torch.float32)
    with torch.no_grad():  # centre the joints 0.6 m in front of the camera (metres: MANO's own unit)
        joints_m = model.mano(orient, hand_pose, betas).joints
        transl_m = joints_m.new_tensor([0.0, 0.0, 0.6]) - joints_m.mean(1)
        _, joints_mm = model.mano.mesh_mm(orient, hand_pose, betas, transl_m)
    K = torch.tensor([[250.0, 0, W / 2], [0, 250.0, H / 2], [0, 0, 1]])
    uv = project_points(joints_mm, K)
    g = torch.Generator().manual_seed(seed)
    batch = {
        "rgb": torch.randn(n, 3, H, W, generator=g), "depth": torch.rand(n, 1, H, W, generator=g),
        "keypoints_2d": uv / uv.new_tensor([W, H]) - 0.5, "keypoints_2d_valid": torch.ones(n, 21),
        "joints_3d": joints_mm, "joints_3d_valid": torch.ones(n, 21),
        "mano_global_orient": orient, "mano_hand_pose": hand_pose, "mano_betas": betas, "mano_transl": transl_m,
        "has_mano": torch.ones(n), "cam_intrinsics": K.expand(n, 3, 3), "bbox": torch.zeros(n, 4),
        "sample_index": torch.arange(n),
    }
    return add_mano_targets(batch, model.mano)


def test_prediction_keys_shapes_and_initial_camera(tiny_model):
    batch = mano_batch(tiny_model, 3)
    pred = tiny_model(batch)
    shapes = {"joints_3d": (3, 21, 3), "verts_3d": (3, 778, 3), "keypoints_2d": (3, 21, 2)}
    coarse_shapes = {**shapes, "global_orient": (3, 1, 3, 3), "hand_pose": (3, 15, 3, 3), "betas": (3, 10), "cam": (3, 3)}
    assert set(pred) == {*shapes, "coarse", "token_keypoints_2d", "keypoint_heatmaps", "tokens"}
    assert set(pred["coarse"]) == set(coarse_shapes)
    grid = tiny_model.backbone.grid_size
    assert pred["tokens"].shape == (3, grid[0] * grid[1], tiny_model.backbone.embed_dim)  # the backbone's output
    assert pred["token_keypoints_2d"].shape == (3, 21, 2)  # configs/synthetic.yaml: model.token_keypoints
    assert pred["keypoint_heatmaps"].shape == (3, 21, 4 * grid[0], 4 * grid[1])  # model.keypoint_heatmaps
    for key, shape in shapes.items():
        assert pred[key].shape == shape and pred[key].dtype == torch.float32 and torch.isfinite(pred[key]).all()
    for key, shape in coarse_shapes.items():
        assert pred["coarse"][key].shape == shape and torch.isfinite(pred["coarse"][key]).all()
    # The initial camera puts the hand in front of the camera, inside the crop, filling a good part of it.
    kp = pred["coarse"]["keypoints_2d"]
    assert (pred["verts_3d"][..., 2] > 0).all() and kp.abs().max() < 0.5
    extent = (kp.amax(1) - kp.amin(1)).amax(-1)
    assert ((extent > 0.25) & (extent < 1.0)).all(), extent
    # The refiner starts as the identity: refined vertices are the coarse ones.
    torch.testing.assert_close(pred["verts_3d"], pred["coarse"]["verts_3d"])
    torch.testing.assert_close(pred["joints_3d"], tiny_model.mano.joints_from_vertices(pred["coarse"]["verts_3d"]))


def test_keypoints_2d_are_the_projection_of_joints_3d_through_the_model_camera(tiny_model):
    """Refined and coarse keypoints_2d = project_points(joints_3d, crop_intrinsics) in crop units,
    with a refiner that moves the mesh (its output bias shifts every vertex by the same offset)."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.refiner.out.bias.copy_(torch.tensor([1.5, -2.0, 3.0]))
        pred = model(mano_batch(model, 2))
    H, W = model.image_size
    K = model.intrinsics()  # the model camera, as the panels and the evaluator get it
    shift = pred["verts_3d"] - pred["coarse"]["verts_3d"]
    assert shift.abs().min() > 1.0  # the refined mesh is not the coarse one
    for out in (pred, pred["coarse"]):
        uv = project_points(out["joints_3d"].double(), K.double())
        expected = torch.stack([uv[..., 0] / W - 0.5, uv[..., 1] / H - 0.5], dim=-1)
        torch.testing.assert_close(out["keypoints_2d"].double(), expected, rtol=0, atol=1e-6)
    assert (pred["keypoints_2d"] - pred["coarse"]["keypoints_2d"]).abs().max() > 1e-4


def test_read_state_dict_unwraps_and_names_the_file_on_failure(tmp_path):
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    good = _save(state, tmp_path / "w.safetensors")
    assert read_state_dict(good, "--checkpoint x").keys() == state.keys()
    wrapped = _save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    torch.testing.assert_close(read_state_dict(wrapped, "w"), state)
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    (tmp_path / "cut.pth").write_bytes(wrapped.read_bytes()[:100])
    for name in ("cut.safetensors", "cut.pth"):
        path = tmp_path / name
        with pytest.raises(UserError, match=rf"^--checkpoint run/ckpt: cannot read {re.escape(str(path))}: "):
            read_state_dict(path, "--checkpoint run/ckpt")
    torch.save({"step": 3}, tmp_path / "not_weights.pth")
    with pytest.raises(UserError, match=r"^model.backbone.checkpoint: .*not_weights.pth does not hold a state dict"):
        read_state_dict(tmp_path / "not_weights.pth", "model.backbone.checkpoint")
    with pytest.raises(UserError, match=r"^what: file not found: "):
        read_state_dict(tmp_path / "nope.safetensors", "what")


def test_mesh_mm_is_the_only_metres_to_mm_conversion(monkeypatch):
    """The coarse mesh is exactly mesh_mm's output plus the camera translation: no second scaling."""
    model = build_model(_config("model.refiner.enabled=false"))
    batch = mano_batch(model, 2)
    calls = []
    original = model.mano.mesh_mm

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(model.mano, "mesh_mm", spy)
    pred = model(batch)
    assert len(calls) == 1
    verts_mm, joints_mm = calls[0]
    transl = cam_translation_mm(pred["coarse"]["cam"], model.focal_length, model.image_size)[:, None]
    torch.testing.assert_close(pred["coarse"]["verts_3d"], verts_mm + transl)
    torch.testing.assert_close(pred["coarse"]["joints_3d"], joints_mm + transl)
    hand_extent_mm = (verts_mm.amax(1) - verts_mm.amin(1)).amax(-1)
    assert ((hand_extent_mm > 80) & (hand_extent_mm < 400)).all(), hand_extent_mm  # a hand, in mm
    # Disabled refiner: refined equals coarse, and it has no parameters.
    for key in ("joints_3d", "verts_3d", "keypoints_2d"):
        assert torch.equal(pred[key], pred["coarse"][key])
    assert model.param_groups()["refiner"] == [] and model.refiner is None


@pytest.mark.parametrize("overrides", [(), ("model.backbone.fusion=late", "model.head.query=learned",
                                            "model.head.ief_iters=2", "model.head.init_pose=identity",
                                            "model.refiner.coarse_vertices=778"),
                                       ("model.backbone.stem=conv", "model.backbone.stem_depth=2", "model.token_keypoints=true",
                                        "loss.token_keypoint_2d={weight: 1.0}"),
                                       ("model.head.hand_pose=pca", "model.head.pca_components=6")])
def test_every_parameter_gets_a_gradient_from_the_loss_set(overrides):
    """Through the configured loss set every parameter (backbone, head, refiner) is trained.

    The refiner's last layer starts at zero (identity refiner), which blocks the gradient to the
    layers before it on the very first step; after one optimizer step every parameter must get one."""
    import losses

    cfg = _config("data.image_size=[64, 48]", *overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins)
    groups = model.param_groups()
    grouped = [p for g in groups.values() for p in g]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable) and groups["refiner"]
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    batch = mano_batch(model, 2)
    optimizer = torch.optim.AdamW(grouped, lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        total, _ = loss_set(model(batch), batch)
        total.backward()
        optimizer.step()
    names = {id(p): n for n, p in model.named_parameters()}
    without = [names[id(p)] for p in grouped if p.grad is None or not (p.grad != 0).any()]
    assert not without, without


def test_tiny_model_overfits_one_batch_of_four_synthetic_samples(tmp_path):
    """configs/synthetic.yaml's model and loss on 4 real synthetic samples (the data pipeline's
    crops): the total loss falls by at least 90% within 150 AdamW steps on CPU."""
    import losses
    from torch.utils.data import default_collate

    from utnet.data import build_dataset, write_synthetic
    from utnet.engine.setup import build_optimizer

    write_synthetic(tmp_path / "syn", sequences=2, frames=2, seed=0)
    cfg = _config(f"data.root={tmp_path / 'syn'}", "data.val_sequences=[]", "data.augment.enabled=false",
                  "optim.warmup_steps=0", "optim.schedule=constant")  # the optimizer's lr from step 1
    torch.manual_seed(0)
    model = build_model(cfg)
    dataset = build_dataset(cfg, "train")
    batch = add_mano_targets(default_collate([dataset[i] for i in range(4)]), model.mano)
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins)
    optimizer, _ = build_optimizer(cfg, model, num_processes=1)
    history = []
    for _ in range(150):
        total, _ = loss_set(model(batch), batch)
        history.append(total.item())
        if history[-1] <= 0.1 * history[0]:  # reached (after ~30 steps): more steps would only cost time
            break
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
        optimizer.step()
    assert history[-1] <= 0.1 * history[0], (history[0], history[::15], len(history))


def test_pca_hand_pose_is_the_mano_files_pose_space():
    """`model.head.hand_pose: pca`: the head regresses K coefficients c; the hand pose is MANO's
    hands_mean + (c * hands_std[:K]) @ hands_components[:K] (axis-angle per joint), the same space the
    synthetic poses are drawn from. Checked against an independent numpy Rodrigues."""
    from utnet.geometry import axis_angle_to_matrix_np

    k = 6
    cfg = _config("data.image_size=[64, 48]", "model.head.hand_pose=pca", f"model.head.pca_components={k}")
    torch.manual_seed(0)
    model = build_model(cfg)
    head = model.head
    assert head.out.out_features == 6 + k + 10 + 3  # root 6D, k coefficients, betas, camera
    assert not any("pose_basis" in name or "pose_origin" in name for name in model.state_dict())  # no MANO arrays
    coefficients = np.array([1.5, -0.7, 0.3, 0.0, 2.0, -1.0])
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.zero_()
        head.out.bias[6:6 + k] = torch.as_tensor(coefficients, dtype=torch.float32)
    images = {"rgb": torch.zeros(2, 3, 64, 48), "depth": torch.zeros(2, 1, 64, 48)}
    with torch.no_grad():
        pose = model(images)["coarse"]["hand_pose"]
    mano = model.mano
    expected_aa = mano.hands_mean + (coefficients * mano.hands_std[:k]) @ mano.hands_components[:k]
    expected = axis_angle_to_matrix_np(expected_aa.reshape(15, 3))
    assert pose.shape == (2, 15, 3, 3)
    np.testing.assert_allclose(pose[0].numpy(), expected, atol=1e-5)  # float32 rotations
    np.testing.assert_allclose(pose[1].numpy(), expected, atol=1e-5)

    with pytest.raises(UserError, match="model.head.hand_pose: pca needs model.head.init_pose: mean"):
        build_model(_config("data.image_size=[64, 48]", "model.head.hand_pose=pca", "model.head.init_pose=identity"))


def test_mesh_stays_float32_under_bf16_autocast(tiny_model):
    """4-GPU runs use bf16: absolute millimetres must not be rounded to bf16's 8-bit mantissa.

    Under bf16 autocast the head may run in bf16, but the mesh is built from its parameters in
    float32: the coarse mesh equals a float32 recomputation from the coarse output's own parameters
    (mesh_mm + cam_translation_mm) and the refined joints a float32 regression from the refined
    vertices. In bf16, MANO's products lose tenths of a millimetre and the regression on vertices
    ~20 m away whole centimetres.
    """
    model = tiny_model
    batch = mano_batch(model, 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(batch)
    coarse = pred["coarse"]
    for out in (pred, coarse):
        assert all(out[k].dtype == torch.float32 for k in ("joints_3d", "verts_3d", "keypoints_2d"))
    with torch.no_grad():
        verts_mm, joints_mm = model.mano.mesh_mm(coarse["global_orient"].float(), coarse["hand_pose"].float(),
                                                 coarse["betas"].float())
        transl_mm = cam_translation_mm(coarse["cam"].float(), model.focal_length, model.image_size)[:, None]
        refined_joints = model.mano.joints_from_vertices(pred["verts_3d"])
    torch.testing.assert_close(coarse["verts_3d"], verts_mm + transl_mm, rtol=0, atol=1e-2)
    torch.testing.assert_close(coarse["joints_3d"], joints_mm + transl_mm, rtol=0, atol=1e-2)
    torch.testing.assert_close(pred["joints_3d"], refined_joints, rtol=0, atol=1e-2)
