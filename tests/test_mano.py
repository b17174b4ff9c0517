"""utnet.mano: the layer against smplx, the MANO stand-in, chumpy-free loading, the `utnet mano` CLI."""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import smplx
import torch

from losses.units import MM_PER_M
from utnet.errors import UserError
from utnet.geometry import axis_angle_to_matrix
from utnet.joints import CANONICAL_NAMES, MANO16_TO_CANONICAL, TIP_VERTEX_IDS
from utnet.mano import ManoLayer, load_mano_model, named_hand_pose, sample_natural_hand_pose
from utnet.mano.pose_prior import JOINT_LIMITS, axis_angle_to_local, clip_to_joint_limits
from utnet.mano.standin import standin_bytes, standin_path

TIP_NAMES = ("thumb", "index", "middle", "ring", "pinky")


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Build the stand-in into a fresh cache, so the test also covers building it."""
    path = tmp_path_factory.mktemp("utnet_cache")
    old = os.environ.get("UTNET_CACHE")
    os.environ["UTNET_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["UTNET_CACHE"]
    else:
        os.environ["UTNET_CACHE"] = old


@pytest.fixture(scope="module")
def layer(cache_dir):
    return ManoLayer()


@pytest.fixture(scope="module")
def standin(layer):
    with open(layer.model_path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _random_batch(layer, n, seed):
    rng = np.random.default_rng(seed)
    hand = torch.tensor(sample_natural_hand_pose(layer, rng, n), dtype=torch.float32)
    root = torch.tensor(rng.normal(0, 1.0, (n, 3)), dtype=torch.float32)
    betas = torch.tensor(rng.normal(0, 1.0, (n, 10)), dtype=torch.float32)
    transl = torch.tensor(rng.normal(0, 0.2, (n, 3)), dtype=torch.float32)
    return root, hand, betas, transl


def _quiet_smplx(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return smplx.MANO(model_path=str(path), is_rhand=True, use_pca=False, flat_hand_mean=True)


def _run_cli_concurrently(commands: dict, cache) -> dict:
    """Run several `python -m utnet mano ...` at once (each pays the torch import): name -> result."""
    env = dict(os.environ, UTNET_CACHE=str(cache))
    procs = {name: subprocess.Popen([sys.executable, "-m", "utnet", "mano", *map(str, args)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


# ------------------------------------------------------------------------------- the layer
def test_plain_smplx_loads_the_cached_standin_and_matches_the_layer(layer):
    mano = _quiet_smplx(standin_path())
    root, hand, betas, transl = _random_batch(layer, 8, seed=0)
    ref = mano(betas=betas, global_orient=root, hand_pose=hand, transl=transl)
    out = layer(root, hand, betas, transl)
    assert layer.source == "stand-in"
    assert out.vertices.shape == (8, 778, 3) and out.joints.shape == (8, 21, 3)
    assert torch.allclose(out.vertices, ref.vertices, atol=1e-6, rtol=0)
    ref_joints = torch.cat([ref.joints, ref.vertices[:, TIP_VERTEX_IDS["ho3d"]]], dim=1)[:, MANO16_TO_CANONICAL]
    assert torch.allclose(out.joints, ref_joints, atol=1e-6, rtol=0)


def test_rotation_matrices_and_axis_angle_agree(layer):
    root, hand, betas, transl = _random_batch(layer, 6, seed=1)
    R = axis_angle_to_matrix(torch.cat([root, hand], dim=1).view(6, 16, 3))
    a = layer(root, hand, betas, transl)
    b = layer(R[:, :1], R[:, 1:], betas, transl)
    assert torch.allclose(a.vertices, b.vertices, atol=1e-6, rtol=0)
    assert torch.allclose(a.joints, b.joints, atol=1e-6, rtol=0)


def test_mm_conversion_root_joint_and_regressed_joints(layer):
    root, hand, betas, transl = _random_batch(layer, 4, seed=2)
    out = layer(root, hand, betas, transl)
    verts_mm, joints_mm = layer.mesh_mm(root, hand, betas, transl)
    assert torch.allclose(verts_mm, out.vertices * MM_PER_M) and torch.allclose(joints_mm, out.joints * MM_PER_M)
    # J_regressor + tips on posed vertices give the skinned joints back (stand-in: exactly)
    assert torch.allclose(layer.joints_from_vertices(out.vertices), out.joints, atol=1e-6, rtol=0)
    rest = layer(torch.zeros(4, 3), torch.zeros(4, 45), betas)
    assert torch.allclose(layer.rest_root_joint(betas), rest.joints[:, 0], atol=1e-7, rtol=0)
    # the root rotates about J0: the wrist stays at J0 + transl whatever the orientation
    assert torch.allclose(out.joints[:, 0], layer.rest_root_joint(betas) + transl, atol=1e-6, rtol=0)


def test_tips_are_the_listed_vertices(layer):
    v = layer(torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10)).vertices[0]
    out = layer(torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10))
    tip_rows = [CANONICAL_NAMES.index(f"{n}4") for n in TIP_NAMES]
    assert torch.equal(out.joints[0, tip_rows], v[TIP_VERTEX_IDS["ho3d"]])
    # each tip vertex is the apex of its finger: the vertex farthest from the last joint, and the
    # vertices of the last segment are the ones skinned to that joint
    joints = out.joints[0]
    weights = layer.lbs_weights
    for name, vid in zip(TIP_NAMES, TIP_VERTEX_IDS["ho3d"]):
        last = joints[CANONICAL_NAMES.index(f"{name}3")]
        mano_joint = MANO16_TO_CANONICAL[CANONICAL_NAMES.index(f"{name}3")]
        assert int(weights[vid].argmax()) == mano_joint, name
        finger = torch.nonzero(weights[:, mano_joint] > 0.5).squeeze(1)
        assert int(finger[(v[finger] - last).norm(dim=1).argmax()]) == vid, name
    other = ManoLayer(tip_vertex_ids="smplx")
    assert other.tip_vertex_ids == TIP_VERTEX_IDS["smplx"]
    explicit = ManoLayer(tip_vertex_ids=[0, 1, 2, 3, 4]).joints_from_vertices(v[None])[0]
    assert torch.equal(explicit[tip_rows], v[:5])
    with pytest.raises(UserError, match="mano.tip_vertex_ids"):
        ManoLayer(tip_vertex_ids=[1, 2, 3])


def test_checkpoints_do_not_carry_the_model(layer):
    assert layer.state_dict() == {}
    moved = ManoLayer().double()
    assert moved.v_template.dtype == torch.float64 and moved.faces.dtype == torch.long
    out = moved(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 45, dtype=torch.float64))
    assert out.vertices.dtype == torch.float64 and out.joints.shape == (2, 21, 3)


def test_construction_is_quiet(cache_dir, capfd):
    ManoLayer()
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


# ------------------------------------------------------------------------------- the stand-in
def test_standin_file_format(standin):
    shapes = {"v_template": (778, 3), "f": (1538, 3), "weights": (778, 16), "J_regressor": (16, 778),
              "shapedirs": (778, 3, 10), "posedirs": (778, 3, 135), "kintree_table": (2, 16),
              "hands_components": (45, 45), "hands_mean": (45,)}
    for key, shape in shapes.items():
        assert standin[key].shape == shape, key
    assert standin["f"].dtype == np.uint32 and standin["v_template"].dtype == np.float64
    assert list(standin["kintree_table"][0, 1:]) == [0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    assert np.allclose(standin["weights"].sum(1), 1.0) and standin["weights"].min() >= 0
    assert np.allclose(standin["J_regressor"].sum(1), 1.0)
    assert np.allclose(standin["J_regressor"] @ standin["v_template"], standin["J"], atol=1e-8)
    assert np.abs(standin["posedirs"]).max() < 1e-3


def test_standin_mesh_is_a_closed_surface_open_at_the_wrist(standin):
    faces, verts = standin["f"].astype(np.int64), standin["v_template"]
    directed = [(a, b) for tri in faces for a, b in zip(tri, np.roll(tri, -1))]
    assert len(set(directed)) == len(directed)  # consistent winding: no directed edge twice
    undirected = {}
    for a, b in directed:
        undirected[frozenset((a, b))] = undirected.get(frozenset((a, b)), 0) + 1
    boundary = [tuple(e) for e, n in undirected.items() if n == 1]
    assert len(boundary) == 16 and all(n in (1, 2) for n in undirected.values())
    rim = {v for e in boundary for v in e}
    assert len(rim) == 16 and len(np.unique(faces)) == 778
    # the rim is at the wrist: the vertices farthest from the fingers
    wrist = standin["J"][0]
    assert np.linalg.norm(verts[list(rim)] - wrist, axis=1).max() < 0.035
    # outward normals: closing the rim with a fan, the signed volume is positive (a hand's volume)
    centre = verts[list(rim)].mean(0)
    tri = verts[faces]
    volume = np.einsum("ij,ij->i", tri[:, 0] - centre, np.cross(tri[:, 1] - centre, tri[:, 2] - centre)).sum() / 6
    assert 2e-4 < volume < 6e-4  # m^3: an adult hand is about 0.4 litres
    # and at each fingertip the normal points along the finger
    normals = np.zeros_like(verts)
    n_face = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for k in range(3):
        np.add.at(normals, faces[:, k], n_face)
    for vid, dip in zip(TIP_VERTEX_IDS["ho3d"], (15, 3, 6, 12, 9)):
        assert np.dot(normals[vid], verts[vid] - standin["J"][dip]) > 0


def test_zero_pose_proportions_and_opposable_thumb(layer):
    sizes = layer.measurements_mm()
    assert 170 <= sizes["hand_length_mm"] <= 200
    assert 75 <= sizes["palm_width_mm"] <= 95
    J = layer(torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10)).joints[0].double().numpy()
    wrist, index_mcp, pinky_mcp = J[0], J[5], J[17]
    distal = J[9] - wrist
    distal /= np.linalg.norm(distal)
    radial = index_mcp - pinky_mcp
    radial -= radial.dot(distal) * distal
    # the thumb leaves the side of the palm, beyond the index knuckle, and nearer the wrist
    assert (J[2] - index_mcp) @ radial > 0 and (J[1] - wrist) @ distal < (index_mcp - wrist) @ distal
    # opposable: within the joint limits the thumb tip meets the index tip
    pinch = named_hand_pose(layer, "pinch")
    assert np.allclose(clip_to_joint_limits(layer.joint_frames, pinch), pinch)
    out = layer(torch.zeros(1, 3), torch.tensor(pinch, dtype=torch.float32)[None], torch.zeros(1, 10))
    assert (out.joints[0, 4] - out.joints[0, 8]).norm() < 0.010
    assert (J[4] - J[8]) @ (J[4] - J[8]) > 0.05 ** 2  # and they are apart when the hand is open


def test_bending_the_index_middle_joint_moves_only_the_index_beyond_it(layer):
    pose = torch.zeros(1, 45)
    pose[0, 3:6] = torch.tensor(layer.joint_frames[1][:, 0] * 1.2)  # index PIP (MANO joint 2), flexion
    rest = layer(torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10)).vertices[0]
    bent = layer(torch.zeros(1, 3), pose, torch.zeros(1, 10)).vertices[0]
    moved = (bent - rest).norm(dim=1) > 1e-7
    index_beyond = (layer.lbs_weights[:, 2] + layer.lbs_weights[:, 3]) > 0
    assert moved.any() and torch.equal(moved, index_beyond & moved)
    assert not moved[TIP_VERTEX_IDS["ho3d"][0]] and moved[TIP_VERTEX_IDS["ho3d"][1]]
    assert (bent[TIP_VERTEX_IDS["ho3d"][1]] - rest[TIP_VERTEX_IDS["ho3d"][1]]).norm() > 0.02


def test_standin_is_deterministic(layer):
    first = standin_bytes()
    assert first == standin_bytes()
    with open(layer.model_path, "rb") as fh:
        assert fh.read() == first


def test_shape_modes_are_meaningful_and_stay_plausible(layer):
    base = layer.measurements_mm()
    for mode in range(10):
        for sign in (-3.0, 3.0):
            betas = torch.zeros(1, 10)
            betas[0, mode] = sign
            sizes = layer.measurements_mm(betas)
            assert 140 < sizes["hand_length_mm"] < 240 and 60 < sizes["palm_width_mm"] < 115, (mode, sign)
    grow = torch.eye(10)
    size, palm, finger = (layer.measurements_mm(grow[i][None]) for i in (0, 1, 3))
    assert size["hand_length_mm"] > base["hand_length_mm"] + 5 and size["palm_width_mm"] > base["palm_width_mm"] + 2
    assert palm["palm_width_mm"] > base["palm_width_mm"] + 2
    assert abs(palm["hand_length_mm"] - base["hand_length_mm"]) < 1
    assert finger["hand_length_mm"] > base["hand_length_mm"] + 2
    assert abs(finger["palm_width_mm"] - base["palm_width_mm"]) < 1


def test_pose_prior_basis_and_samples(layer):
    comps = layer.hands_components
    assert np.allclose(comps @ comps.T, np.eye(45), atol=1e-6)
    assert np.all(np.diff(layer.hands_std) <= 1e-12) and layer.hands_std[0] > 5 * layer.hands_std[-1]
    mean_local = axis_angle_to_local(layer.joint_frames, layer.hands_mean)
    assert np.all(mean_local[:12, 0] > 0.1) and np.all(mean_local[:12, 0] < 0.6)  # relaxed, slightly curled
    poses = sample_natural_hand_pose(layer, np.random.default_rng(0), 256)
    again = sample_natural_hand_pose(layer, np.random.default_rng(0), 256)
    assert poses.shape == (256, 45) and np.array_equal(poses, again)
    local = axis_angle_to_local(layer.joint_frames, poses)
    assert np.all(local >= JOINT_LIMITS[..., 0] - 1e-9) and np.all(local <= JOINT_LIMITS[..., 1] + 1e-9)
    flex = local[:, :12, 0]
    assert flex.std(axis=0).min() > 0.2  # varied: open hands and fists
    curl = flex.mean(axis=1)
    assert (curl < 0.2).mean() > 0.1 and (curl > 0.9).mean() > 0.1


def test_pose_pca_map_round_trips_and_matches_its_basis(layer):
    """The layer's pose-PCA map (used by the synthetic sampler, the PCA head and docs/pose_components.py):
    written out here from the file's arrays, inverted exactly, and its basis gives the same poses."""
    z = np.random.default_rng(1).standard_normal((32, 45))
    by_hand = layer.hands_mean + np.einsum("nk,k,kd->nd", z, layer.hands_std, layer.hands_components)
    assert np.allclose(layer.pose_from_pca(z), by_hand, rtol=0, atol=1e-12)
    assert np.allclose(layer.pose_to_pca(layer.pose_from_pca(z)), z, rtol=0, atol=1e-9)
    for k in (1, 3, 45):  # the first k components; the rest at 0 (the prior's mean)
        truncated = np.concatenate([z[:, :k], np.zeros((32, 45 - k))], axis=1)
        assert np.allclose(layer.pose_from_pca(z[:, :k]), layer.pose_from_pca(truncated), rtol=0, atol=1e-12)
        assert np.allclose(layer.hands_mean + z[:, :k] @ layer.pose_pca_basis(k), layer.pose_from_pca(z[:, :k]),
                           rtol=0, atol=1e-12)
    assert np.array_equal(layer.pose_from_pca(np.zeros(45)), layer.hands_mean)


# ------------------------------------------------------------------------------- official files
class _FakeCh:
    """Pickles like chumpy.ch.Ch: the class is looked up by name, the value lives in the state's 'x'."""

    def __init__(self, x):
        self.x = np.asarray(x)
        self._dirty_vars = set()
        self._itr = None
        self._depends_on_deps = {}


def _official_like_pickle(standin, path):
    """Write the stand-in as the official files are: chumpy arrays, a sparse J_regressor, protocol 2."""
    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")
    ch_class = type("Ch", (_FakeCh,), {"__module__": "chumpy.ch"})
    chumpy_ch.Ch = ch_class
    chumpy.ch = chumpy_ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, chumpy_ch
    try:
        data = {key: value for key, value in standin.items() if key not in ("utnet_standin", "hands_std")}
        for key in ("v_template", "shapedirs", "posedirs", "weights", "J", "hands_components", "hands_mean"):
            data[key] = ch_class(data[key])
        data["J_regressor"] = scipy.sparse.csc_matrix(data["J_regressor"])
        data["hands_coeffs"] = np.random.default_rng(0).normal(size=(50, 45))
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    assert b"chumpy.ch" in path.read_bytes()


def _mirrored(standin):
    """The stand-in reflected through z = 0: a left hand that does not say so in its name."""
    data = dict(standin)
    flip = np.array([1.0, 1.0, -1.0])
    data["v_template"] = standin["v_template"] * flip
    data["J"] = standin["J"] * flip
    data["shapedirs"] = standin["shapedirs"] * flip[None, :, None]
    data["f"] = standin["f"][:, ::-1].copy()
    aa_flip = np.tile([-1.0, -1.0, 1.0], 15)  # a reflection turns axis-angle (x, y, z) into (-x, -y, z)
    data["hands_mean"] = standin["hands_mean"] * aa_flip
    data["hands_components"] = standin["hands_components"] * aa_flip
    del data["utnet_standin"]
    return data


@pytest.fixture(scope="module")
def cli(standin, cache_dir, tmp_path_factory):
    """Input files for the CLI tests, and the results of every `utnet mano` call on them."""
    d = tmp_path_factory.mktemp("mano_cli")
    official = d / "MANO_RIGHT.pkl"
    _official_like_pickle(standin, official)
    (d / "clean").mkdir()
    not_mano = d / "something.pkl"
    not_mano.write_bytes(pickle.dumps({"v_template": np.zeros((778, 3)), "f": np.zeros((1538, 3))}))
    left_by_name = d / "MANO_LEFT.pkl"
    left_by_name.write_bytes(pickle.dumps(dict(standin)))
    left_by_shape = d / "hand.pkl"
    left_by_shape.write_bytes(pickle.dumps(_mirrored(standin)))
    results = _run_cli_concurrently({
        "convert": ["convert", official, d / "clean"],
        "info_official": ["info", official],
        "info_standin": ["info"],
        "missing": ["info", d / "nowhere" / "MANO_RIGHT.pkl"],
        "not_mano": ["convert", not_mano, d / "out.pkl"],
        "left_by_name": ["info", left_by_name],
        "left_by_shape": ["convert", left_by_shape, d / "out.pkl"],
    }, cache_dir)
    return d, results


def test_fake_official_pickle_is_read_without_chumpy_and_converted(standin, layer, cli):
    d, results = cli
    official = d / "MANO_RIGHT.pkl"
    with pytest.raises(Exception):  # chumpy is really gone: a plain load fails
        with open(official, "rb") as fh:
            pickle.load(fh, encoding="latin1")
    model = load_mano_model(official)
    assert model.source == "official"
    assert np.array_equal(model.data["v_template"], standin["v_template"])
    assert np.array_equal(model.data["J_regressor"], standin["J_regressor"])

    assert results["convert"].returncode == 0, results["convert"].stderr
    clean = d / "clean" / "MANO_RIGHT.pkl"
    assert clean.is_file() and b"chumpy" not in clean.read_bytes()
    mano = _quiet_smplx(clean)
    root, hand, betas, transl = _random_batch(layer, 3, seed=3)
    ref = mano(betas=betas, global_orient=root, hand_pose=hand, transl=transl)
    assert torch.allclose(ref.vertices, layer(root, hand, betas, transl).vertices, atol=1e-6, rtol=0)
    cleaned = ManoLayer(clean)
    assert cleaned.source == "cleaned" and ManoLayer(official).source == "official"
    # the official convention: no hands_std, the spread comes from hands_coeffs
    assert np.allclose(cleaned.hands_std, model.data["hands_coeffs"].std(axis=0))

    info = results["info_official"]
    assert info.returncode == 0, info.stderr
    assert "official" in info.stdout and "778" in info.stdout and "1538" in info.stdout
    assert "hand length:" in info.stdout and "palm width:" in info.stdout


def test_cli_errors_are_one_line_with_exit_2(cli):
    d, results = cli
    for name in ("missing", "not_mano", "left_by_name", "left_by_shape"):
        result = results[name]
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", name
    assert "mano.is.tue.mpg.de" in results["missing"].stderr and "mano.model_path" in results["missing"].stderr
    not_mano = results["not_mano"].stderr
    assert "not a MANO model file" in not_mano and "missing keys: weights, J_regressor" in not_mano
    assert not (d / "out.pkl").exists()
    assert "right hands only" in results["left_by_name"].stderr
    assert "left-hand" in results["left_by_shape"].stderr


def test_info_on_the_standin_names_it(cli):
    result = cli[1]["info_standin"]
    assert result.returncode == 0, result.stderr
    assert "stand-in" in result.stdout and "NOT MANO" in result.stdout
    length = float(result.stdout.split("hand length:")[1].split("mm")[0])
    assert 170 <= length <= 200
