"""HO3D reader and pipeline on fixtures this test writes from the documented format (docs/ho3d_format.md).

The fixture hand is posed by the real MANO layer with parameters in the OpenGL frame, written as
HO3D writes it (metres, OpenGL, HO3D joint order, protocol-2 pickles, two-byte depth PNG), and the
expected sample is computed here by hand from those numbers.
"""
from __future__ import annotations

import json
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch

from utnet.config import ExperimentConfig
from utnet.errors import UserError

DEPTH_UNIT_M = 0.00012498664727900177
K_FULL = np.array([[617.343, 0.0, 312.42], [0.0, 617.343, 241.42], [0.0, 0.0, 1.0]])
# docs/joints.md: canonical (wrist, thumb1-4, index1-4, middle1-4, ring1-4, pinky1-4) = ho3d[this]
HO3D_INDEX_OF_CANONICAL = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
IMAGE_SIZE = (128, 96)
HAND_DEPTH_MM = 480.0
BACKGROUND_DEPTH_MM = 900.0


@pytest.fixture(scope="module")
def mano():
    from utnet.mano import ManoLayer

    return ManoLayer()


def depth_png(raw: np.ndarray) -> np.ndarray:
    """HO3D depth encoding as cv2 writes it (BGR): red = low byte, green = high byte."""
    raw = raw.astype(np.int64)
    out = np.zeros(raw.shape + (3,), np.uint8)
    out[..., 2] = raw % 256
    out[..., 1] = raw // 256
    return out


def gradient_rgb_bgr() -> np.ndarray:
    """RGB image whose red channel is floor(0.4 x) and green channel floor(y / 2) (BGR order for cv2)."""
    yy, xx = np.mgrid[0:480, 0:640]
    bgr = np.zeros((480, 640, 3), np.uint8)
    bgr[..., 2] = xx * 2 // 5
    bgr[..., 1] = np.minimum(yy // 2, 255)
    bgr[..., 0] = 77
    return bgr


def hand_params(mano, rng):
    """MANO parameters in the OpenGL frame for a hand about 0.5 m in front of the camera, and its
    joints (OpenGL metres, canonical order) as the layer computes them."""
    go = rng.normal(size=3) * 0.4 + np.array([np.pi, 0.0, 0.0])
    pose = rng.normal(size=45) * 0.2
    betas = rng.normal(size=10) * 0.5
    with torch.no_grad():
        j = mano(torch.tensor(go[None], dtype=torch.float32), torch.tensor(pose[None], dtype=torch.float32),
                 torch.tensor(betas[None], dtype=torch.float32)).joints[0].double().numpy()
    target = np.array([0.02, -0.01, -HAND_DEPTH_MM / 1000.0])
    transl = target - j.mean(0)
    with torch.no_grad():
        j = mano(torch.tensor(go[None], dtype=torch.float32), torch.tensor(pose[None], dtype=torch.float32),
                 torch.tensor(betas[None], dtype=torch.float32),
                 torch.tensor(transl[None], dtype=torch.float32)).joints[0].double().numpy()
    return go, pose, betas, transl, j


def to_ho3d_order(canonical: np.ndarray) -> np.ndarray:
    ho3d = np.empty_like(canonical)
    ho3d[HO3D_INDEX_OF_CANONICAL] = canonical
    return ho3d


def project_gl(joints_gl):
    uv = (joints_gl * [1, -1, -1]) @ K_FULL.T
    return uv[:, :2] / uv[:, 2:]


def write_frame(root, folder, seq, frame, meta, rgb_ext="png", hand_box=(220, 140, 420, 340)):
    """One frame: gradient RGB; depth = the hand's depth inside hand_box (x0, y0, x1, y1), the
    background's elsewhere, and a small hole at the box centre."""
    base = root / folder / seq
    for d in ("rgb", "depth", "meta"):
        (base / d).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(base / "rgb" / f"{frame}.{rgb_ext}"), gradient_rgb_bgr())
    x0, y0, x1, y1 = (int(round(v)) for v in hand_box)
    depth_raw = np.full((480, 640), round(BACKGROUND_DEPTH_MM / 1000 / DEPTH_UNIT_M))
    depth_raw[y0:y1, x0:x1] = round(HAND_DEPTH_MM / 1000 / DEPTH_UNIT_M)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    depth_raw[cy - 3:cy + 3, cx - 3:cx + 3] = 0
    cv2.imwrite(str(base / "depth" / f"{frame}.png"), depth_png(depth_raw))
    with open(base / "meta" / f"{frame}.pkl", "wb") as f:
        pickle.dump(meta, f, protocol=2)


def object_fields():
    return {"objRot": np.zeros((3, 1)), "objTrans": np.array([0.0, 0.0, -0.6]), "objCorners3D": np.zeros((8, 3)),
            "objCorners3DRest": np.zeros((8, 3)), "objName": "box", "objLabel": 1, "camIDList": ["0"]}


@pytest.fixture(scope="module")
def ho3d_root(tmp_path_factory, mano):
    """train: AB10 (2 frames) + VAL1 (1 frame); evaluation: EV1 (2 frames). Returns (root, truth)."""
    root = tmp_path_factory.mktemp("ho3d")
    rng = np.random.default_rng(3)
    truth = {}
    train_lines = ["AB10/0000", "AB10/0001", "VAL1/0000"]
    for name in train_lines:
        seq, frame = name.split("/")
        go, pose, betas, transl, joints_gl = hand_params(mano, rng)
        meta = {"handPose": np.concatenate([go, pose]).astype(np.float32), "handBeta": betas.astype(np.float32),
                "handTrans": transl.astype(np.float32),
                "handJoints3D": to_ho3d_order(joints_gl).astype(np.float32), "camMat": K_FULL, **object_fields()}
        uv = project_gl(joints_gl)
        write_frame(root, "train", seq, frame, meta, hand_box=(*uv.min(0), *uv.max(0)))
        truth[name] = dict(go=go, pose=pose, betas=betas, transl=transl, joints_gl=joints_gl)
    # an unannotated frame in the folder but not listed: must be ignored
    write_frame(root, "train", "AB10", "0002", {k: None for k in ("handPose", "handBeta", "handTrans", "handJoints3D", "camMat")})
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    eval_lines = ["EV1/0000", "EV1/0001"]
    eval_xyz, eval_verts = [], []
    for name in eval_lines:
        seq, frame = name.split("/")
        go, pose, betas, transl, joints_gl = hand_params(mano, rng)
        with torch.no_grad():
            verts = mano(torch.tensor(go[None], dtype=torch.float32), torch.tensor(pose[None], dtype=torch.float32),
                         torch.tensor(betas[None], dtype=torch.float32),
                         torch.tensor(transl[None], dtype=torch.float32)).vertices[0].double().numpy()
        uv = project_gl(joints_gl)
        box = [uv[:, 0].min() - 5, uv[:, 1].min() - 5, uv[:, 0].max() + 5, uv[:, 1].max() + 5]
        meta = {"handJoints3D": joints_gl[0].astype(np.float32), "handBoundingBox": box, "camMat": K_FULL,
                **object_fields()}
        write_frame(root, "evaluation", seq, frame, meta)
        truth[name] = dict(joints_gl=joints_gl, verts_gl=verts, box=np.array(box))
        eval_xyz.append(to_ho3d_order(joints_gl).tolist())
        eval_verts.append(verts.tolist())
    (root / "evaluation.txt").write_text("\n".join(eval_lines) + "\n")
    return root, truth, eval_xyz, eval_verts


def make_cfg(root, **data):
    tree = {"data": {"root": str(root), "val_sequences": ["VAL1"], "image_size": list(IMAGE_SIZE), **data}}
    return ExperimentConfig.model_validate(tree)


def expected_keypoints(joints_cam_mm, box_xyxy=None, expand=1.5):
    """Hand computation of the un-augmented crop keypoints: tight box (or the given one), expanded,
    widened to the crop aspect; keypoint = (u - box centre) / box size."""
    uv = joints_cam_mm @ K_FULL.T
    uv = uv[:, :2] / uv[:, 2:]
    box = box_xyxy if box_xyxy is not None else np.array([*uv.min(0), *uv.max(0)])
    centre = (box[:2] + box[2:]) / 2
    side = expand * max(box[2] - box[0], box[3] - box[1])
    H, W = IMAGE_SIZE
    box_wh = np.array([side, side * H / W])
    return (uv - centre) / box_wh, centre, box_wh


def test_depth_png_decoding(tmp_path):
    from utnet.data.ho3d import FrameRecord, decode_depth_mm, read_images

    raw = np.zeros((480, 640), np.int64)
    values = [0, 1, 255, 256, 4000, 0x1234, 65535]
    raw[0, : len(values)] = values
    cv2.imwrite(str(tmp_path / "d.png"), depth_png(raw))
    cv2.imwrite(str(tmp_path / "c.png"), gradient_rgb_bgr())
    rec = FrameRecord("train", "S", "0000", 0, tmp_path / "c.png", tmp_path / "d.png", tmp_path / "m.pkl")
    bgr, depth_encoded = read_images(rec)
    depth_mm = decode_depth_mm(depth_encoded)
    assert depth_mm.dtype == np.float32 and depth_mm.shape == (480, 640)
    np.testing.assert_allclose(depth_mm[0, : len(values)], np.array(values) * DEPTH_UNIT_M * 1000, rtol=1e-6)
    assert depth_mm[0, 6] == pytest.approx(8191.0, abs=0.01)  # the largest encodable depth, ~8.19 m


def test_normalise_rgb_is_the_per_channel_formula():
    """BGR in, RGB out: (clip(v / 255 * colour_c, 0, 1) - mean_c) / std_c for every channel."""
    from utnet.data.pipeline import normalise_rgb

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    color = (0.7, 1.0, 1.3)  # R, G, B
    rgb = bgr[..., ::-1].transpose(2, 0, 1).astype(np.float64) / 255.0
    expected = (np.clip(rgb * np.array(color)[:, None, None], 0, 1) - np.array([0.485, 0.456, 0.406])[:, None, None]) \
        / np.array([0.229, 0.224, 0.225])[:, None, None]
    out = normalise_rgb(bgr, color)
    assert out.shape == (3, 12, 9) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_val_sample_equals_hand_conversion(ho3d_root, mano):
    from utnet.data import build_dataset

    root, truth, _, _ = ho3d_root
    ds = build_dataset(make_cfg(root), "val")
    assert len(ds) == 1
    s = ds[0]
    t = truth["VAL1/0000"]
    joints_cv_mm = t["joints_gl"] * np.array([1.0, -1.0, -1.0]) * 1000.0  # OpenGL m -> OpenCV mm, canonical
    H, W = IMAGE_SIZE
    assert s["rgb"].shape == (3, H, W) and s["depth"].shape == (1, H, W)
    for key, value in s.items():
        assert value.dtype == (torch.int64 if key == "sample_index" else torch.float32), key
    np.testing.assert_allclose(s["joints_3d"].numpy(), joints_cv_mm, atol=1e-3)
    assert s["joints_3d"][0, 2] > 300  # absolute, millimetres, in front of the camera
    kp, centre, box_wh = expected_keypoints(joints_cv_mm)
    np.testing.assert_allclose(s["keypoints_2d"].numpy(), kp, atol=1e-5)
    np.testing.assert_allclose(s["bbox"].numpy(), np.concatenate([centre - box_wh / 2, centre + box_wh / 2]), atol=1e-3)
    assert s["keypoints_2d_valid"].sum() == 21 and s["joints_3d_valid"].sum() == 21 and s["has_mano"] == 1
    # crop intrinsics: focal scaled by W / box width, principal point moved with the box
    Kc = s["cam_intrinsics"].numpy()
    scale = W / box_wh[0]
    np.testing.assert_allclose(Kc[0, 0], K_FULL[0, 0] * scale, rtol=1e-5)
    np.testing.assert_allclose(Kc[:2, 2], (K_FULL[:2, 2] - centre) * scale + [W / 2, H / 2], atol=1e-3)
    # MANO parameters (OpenCV frame, transl in metres) reproduce the joints through the real layer
    assert np.abs(s["mano_transl"].numpy()).max() < 2.0
    np.testing.assert_allclose(s["mano_hand_pose"].numpy(), t["pose"], atol=1e-6)
    _, joints_mm = mano.mesh_mm(s["mano_global_orient"][None], s["mano_hand_pose"][None], s["mano_betas"][None], s["mano_transl"][None])
    np.testing.assert_allclose(joints_mm[0].numpy(), joints_cv_mm, atol=0.05)
    # RGB crop: crop pixel (i, j) centre sits at full-image x = cx + (j + 0.5 - W/2) / scale; red ~ 0.4 x
    rgb = s["rgb"].numpy() * np.array([0.229, 0.224, 0.225])[:, None, None] + np.array([0.485, 0.456, 0.406])[:, None, None]
    j = np.arange(W)
    x_full = centre[0] + (j + 0.5 - W / 2) / scale
    inside = (x_full > 1) & (x_full < 638)
    assert inside.sum() > W // 2
    np.testing.assert_allclose(rgb[0, H // 2, inside] * 255, 0.4 * x_full[inside], atol=1.0)
    # depth: window of 300 mm centred on the hand (median near the crop centre), hole stays 0
    # (the hand's 480 mm fills the tight joint box, the 900 mm background lies beyond the window)
    d = s["depth"][0].numpy()
    ys, xs = np.mgrid[0:H, 0:W]
    fx = centre[0] + (xs + 0.5 - W / 2) / scale
    fy = centre[1] + (ys + 0.5 - H / 2) / scale
    uv = (joints_cv_mm @ K_FULL.T)[:, :2] / joints_cv_mm[:, 2:]
    (x0, y0), (x1, y1) = uv.min(0), uv.max(0)
    hand = (fx > x0 + 1) & (fx < x1 - 2) & (fy > y0 + 1) & (fy < y1 - 2) & (d > 0)
    far = (fx < x0 - 2) | (fx > x1 + 2) | (fy < y0 - 2) | (fy > y1 + 2)
    assert hand.sum() > 100 and (d == 0).sum() >= 4
    np.testing.assert_allclose(d[hand], 0.5, atol=1e-3)
    np.testing.assert_allclose(d[far & (d > 0)], 1.0)


def test_augmentation_is_consistent(ho3d_root, mano):
    from utnet.data import build_dataset

    root, truth, _, _ = ho3d_root
    cfg = make_cfg(root, augment={"enabled": True, "rotation_prob": 1.0, "rotation_deg": 30.0, "scale": 0.3,
                                  "translation": 0.05, "color": 0.2})
    ds = build_dataset(cfg, "train")
    assert len(ds) == 2  # VAL1 held out, the unlisted frame ignored
    torch.manual_seed(0)
    H, W = IMAGE_SIZE
    angles = []
    for k in range(12):
        s = ds[k % 2]
        t = truth[["AB10/0000", "AB10/0001"][k % 2]]
        joints = s["joints_3d"].numpy().astype(np.float64)
        uvw = joints @ s["cam_intrinsics"].numpy().astype(np.float64).T
        proj = uvw[:, :2] / uvw[:, 2:] / [W, H] - 0.5
        err_px = np.abs((proj - s["keypoints_2d"].numpy()) * [W, H]).max()
        assert err_px < 0.5, err_px
        # the same rotation turned the 3D joints about the optical axis: depth and norms unchanged
        ref = t["joints_gl"] * np.array([1.0, -1.0, -1.0]) * 1000.0
        np.testing.assert_allclose(joints[:, 2], ref[:, 2], atol=1e-3)
        np.testing.assert_allclose(np.linalg.norm(joints, axis=1), np.linalg.norm(ref, axis=1), atol=1e-3)
        angles.append(np.arctan2(joints[0, 1], joints[0, 0]) - np.arctan2(ref[0, 1], ref[0, 0]))
        # and the MANO root: the augmented parameters reproduce the augmented joints
        _, joints_mm = mano.mesh_mm(s["mano_global_orient"][None], s["mano_hand_pose"][None], s["mano_betas"][None], s["mano_transl"][None])
        np.testing.assert_allclose(joints_mm[0].numpy(), joints, atol=0.05)
    assert np.ptp(np.unwrap(angles)) > 0.1  # rotations really happened


def test_no_augmentation_on_val_and_when_disabled(ho3d_root):
    from utnet.data import build_dataset

    root, _, _, _ = ho3d_root
    val = build_dataset(make_cfg(root), "val")
    a, b = val[0], val[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    train = build_dataset(make_cfg(root, augment={"enabled": False}), "train")
    a, b = train[1], train[1]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_split_root_only_then_full(ho3d_root, tmp_path):
    from utnet.data import build_dataset

    root, truth, xyz, verts = ho3d_root
    ds = build_dataset(make_cfg(root), "evaluation")
    s = ds[1]
    t = truth["EV1/0001"]
    root_cv_mm = t["joints_gl"][0] * np.array([1.0, -1.0, -1.0]) * 1000.0
    np.testing.assert_allclose(s["joints_3d"][0].numpy(), root_cv_mm, atol=1e-3)
    assert s["joints_3d_valid"].tolist() == [1.0] + [0.0] * 20 and s["has_mano"] == 0
    assert torch.isfinite(s["keypoints_2d"]).all() and "verts_3d" not in s
    _, centre, box_wh = expected_keypoints(np.zeros((21, 3)) + [0, 0, 1], box_xyxy=t["box"])
    np.testing.assert_allclose(s["bbox"].numpy(), np.concatenate([centre - box_wh / 2, centre + box_wh / 2]), atol=1e-3)

    full = tmp_path / "full"
    shutil.copytree(root, full)
    (full / "evaluation_xyz.json").write_text(json.dumps(xyz))
    (full / "evaluation_verts.json").write_text(json.dumps(verts))
    s = build_dataset(make_cfg(full), "evaluation")[1]
    np.testing.assert_allclose(s["joints_3d"].numpy(), t["joints_gl"] * np.array([1.0, -1.0, -1.0]) * 1000.0, atol=1e-3)
    assert s["joints_3d_valid"].sum() == 21
    np.testing.assert_allclose(s["verts_3d"].numpy(), t["verts_gl"] * np.array([1.0, -1.0, -1.0]) * 1000.0, atol=1e-3)
    (full / "evaluation_xyz.json").write_text(json.dumps(xyz[:1]))
    with pytest.raises(UserError, match="evaluation_xyz.json"):
        build_dataset(make_cfg(full), "evaluation")


def test_v3_jpg_rgb_is_found(ho3d_root, tmp_path):
    from utnet.data import build_dataset

    root, _, _, _ = ho3d_root
    v3 = tmp_path / "v3"
    shutil.copytree(root, v3)
    png = v3 / "train" / "VAL1" / "rgb" / "0000.png"
    cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)))
    png.unlink()
    s = build_dataset(make_cfg(v3, version="v3"), "val")[0]
    assert s["rgb"].shape == (3, *IMAGE_SIZE)


def test_missing_and_corrupt_files(ho3d_root, tmp_path, caplog):
    from utnet.data import build_dataset, ensure_dataset

    root, _, _, _ = ho3d_root
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    missing = bad / "train" / "AB10" / "depth" / "0001.png"
    missing.unlink()
    with pytest.raises(UserError, match="0001.png: file missing"):
        build_dataset(make_cfg(bad), "train")
    ds = build_dataset(make_cfg(bad, on_error="skip"), "train")
    assert len(ds) == 1 and ds.skipped == 1
    assert "1 listed train frame(s) skipped" in caplog.text

    shutil.copy(root / "train" / "AB10" / "depth" / "0001.png", missing)
    corrupt = bad / "train" / "AB10" / "meta" / "0000.pkl"
    corrupt.write_bytes(b"not a pickle")
    ds = build_dataset(make_cfg(bad), "train")
    with pytest.raises(UserError, match=r"0000.pkl: cannot read meta pickle"):
        ds[0]
    ds = build_dataset(make_cfg(bad, on_error="skip"), "train")
    s = ds[0]
    assert int(s["sample_index"]) == 1 and ds.skipped == 1
    (bad / "train" / "AB10" / "rgb" / "0001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match=r"0001.png: cannot decode image"):
        build_dataset(make_cfg(bad), "train")[1]

    with pytest.raises(UserError, match=r"data.val_sequences: \['NOPE'\]"):
        build_dataset(make_cfg(root, val_sequences=["NOPE"]), "train")
    with pytest.raises(UserError, match="split"):
        build_dataset(make_cfg(root), "test")
    empty = tmp_path / "empty"
    with pytest.raises(UserError, match=r"data.root: .*train.txt"):
        build_dataset(make_cfg(empty), "train")
    with pytest.raises(UserError, match=r"data.root: .*train.txt.*expected HO3D layout"):
        ensure_dataset(make_cfg(empty, synthetic={"enabled": False}), log=lambda m: None)
    assert ensure_dataset(make_cfg(root), log=lambda m: None) == root
