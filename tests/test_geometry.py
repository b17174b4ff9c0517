"""Rotations, frames, projection and Procrustes against independent computations."""
import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from utnet import geometry as g
from utnet import joints as J


def test_axis_angle_round_trip_and_scipy():
    aa = torch.randn(200, 3, dtype=torch.float64) * 1.2
    R = g.axis_angle_to_matrix(aa)
    np.testing.assert_allclose(R.numpy(), Rotation.from_rotvec(aa.numpy()).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(g.axis_angle_to_matrix(g.matrix_to_axis_angle(R)).numpy(), R.numpy(), atol=1e-10)
    assert torch.allclose(g.axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))


def test_axis_angle_gradient_finite_at_zero():
    aa = torch.zeros(4, 3, requires_grad=True)
    g.axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_numpy_rotation_twins_match_scipy_including_near_zero_and_pi():
    rng = np.random.default_rng(3)
    aa = np.concatenate([rng.normal(size=(500, 3)) * 1.5, rng.normal(size=(5, 3)) * 1e-10,
                         [[np.pi, 0, 0], [0, np.pi - 1e-9, 0], [0, 0, 0]]])
    R = g.axis_angle_to_matrix_np(aa)
    assert np.abs(R - Rotation.from_rotvec(aa).as_matrix()).max() < 1e-12
    back = g.matrix_to_axis_angle_np(R)
    assert np.abs(Rotation.from_rotvec(back).as_matrix() - R).max() < 1e-9
    wrapped = np.linalg.norm(Rotation.from_rotvec(aa).as_rotvec(), axis=-1)  # angle in [0, pi]
    assert np.abs(np.linalg.norm(back, axis=-1) - wrapped).max() < 1e-6
    assert np.abs(back - g.matrix_to_axis_angle(torch.from_numpy(R)).numpy()).max() < 1e-12
    assert g.axis_angle_to_matrix_np(aa[0]).shape == (3, 3) and g.matrix_to_axis_angle_np(R[0]).shape == (3,)
    assert isinstance(g.matrix_to_axis_angle_np(R), np.ndarray)


def test_rot6d_is_rotation_and_round_trips():
    R = g.rot6d_to_matrix(torch.randn(50, 6, dtype=torch.float64))
    np.testing.assert_allclose((R @ R.transpose(-1, -2)).numpy(), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(torch.det(R).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(g.rot6d_to_matrix(g.matrix_to_rot6d(R)).numpy(), R.numpy(), atol=1e-12)


def test_flip_is_its_own_inverse_and_matches_matrix():
    p = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(g.flip_opengl_opencv(g.flip_opengl_opencv(p)), p)
    np.testing.assert_allclose(g.flip_opengl_opencv(p), p @ g.OPENGL_TO_OPENCV.T)
    t = torch.tensor(p)
    np.testing.assert_allclose(g.flip_opengl_opencv(t).numpy(), g.flip_opengl_opencv(p))


def test_rotate_mano_root_matches_rotating_the_posed_points():
    """MANO: x = R (v - J0) + J0 + t. Rotating every posed point by A equals the new parameters."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 3))
    J0 = rng.normal(size=3)
    aa = rng.normal(size=3)
    t = rng.normal(size=3)
    A = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()

    def posed(aa_, t_):
        return (v - J0) @ Rotation.from_rotvec(aa_).as_matrix().T + J0 + t_

    aa2, t2 = g.rotate_mano_root(A, aa, t, J0)
    np.testing.assert_allclose(posed(aa2, t2), posed(aa, t) @ A.T, atol=1e-10)
    aa3, t3 = g.rotate_mano_root(g.OPENGL_TO_OPENCV, aa, t, J0)
    np.testing.assert_allclose(posed(aa3, t3), g.flip_opengl_opencv(posed(aa, t)), atol=1e-10)


def test_rotate_mano_root_near_zero_and_pi_matches_scipy():
    """The root orientation after the rotation, for results near angle 0 and pi (Rodrigues' hard cases)."""
    rng = np.random.default_rng(2)
    J0, t = rng.normal(size=3), rng.normal(size=3)
    for k in range(200):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        target = axis * (np.pi - 10.0 ** rng.uniform(-9, -2) if k % 2 else 10.0 ** rng.uniform(-9, -2))
        A = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
        aa = Rotation.from_matrix(A.T @ Rotation.from_rotvec(target).as_matrix()).as_rotvec()  # A R(aa) = R(target)
        aa2, _ = g.rotate_mano_root(A, aa, t, J0)
        assert np.linalg.norm(aa2) <= np.pi + 1e-12
        np.testing.assert_allclose(Rotation.from_rotvec(aa2).as_matrix(), Rotation.from_rotvec(target).as_matrix(),
                                   atol=1e-9)


def test_project_points_numpy_and_torch():
    K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])
    p = np.array([[[0.1, -0.05, 0.5], [0.0, 0.0, 1.0]]])
    uv = g.project_points(p, K)
    np.testing.assert_allclose(uv[0, 0], [600 * 0.2 + 320, 610 * -0.1 + 240])
    np.testing.assert_allclose(uv[0, 1], [320, 240])
    np.testing.assert_allclose(g.project_points(torch.tensor(p), torch.tensor(K)).numpy(), uv)


def _official_align(gt, pred):
    t1, t2 = gt.mean(0), pred.mean(0)
    g1, p1 = gt - t1, pred - t2
    s1 = np.linalg.norm(g1) + 1e-8
    s2 = np.linalg.norm(p1) + 1e-8
    R, s = orthogonal_procrustes(g1 / s1, p1 / s2)
    return (p1 / s2) @ R.T * s * s1 + t1


def test_procrustes_matches_official_formula():
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(6, 21, 3)) * 50
    pred = gt + rng.normal(size=gt.shape) * 10
    ref = np.stack([_official_align(gt[i], pred[i]) for i in range(6)])
    out = g.procrustes_align(torch.tensor(pred), torch.tensor(gt)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_procrustes_keeps_reflections_and_handles_degenerate_samples(monkeypatch):
    """As the official protocol: a mirror image keeps its reflection; all-equal, planar and collinear
    point sets (a singular cross-covariance, left to the SVD) align as scipy's SVD aligns them."""
    rng = np.random.default_rng(13)
    gt = rng.normal(scale=40.0, size=(6, 21, 3)) + [0.0, 0.0, 500.0]
    A = Rotation.from_rotvec(rng.normal(scale=0.2, size=(6, 3))).as_matrix()
    pred = np.einsum("nij,nkj->nki", A, gt - gt[:, :1]) * rng.uniform(0.9, 1.1, (6, 1, 1)) + gt[:, :1]
    pred += rng.normal(scale=4.0, size=gt.shape)
    pred[1] *= [-1.0, 1.0, 1.0]  # a mirror image
    pred[2] = pred[2, :1]  # all points equal
    pred[3, :, 2] = 7.0  # planar
    gt[4] = np.linspace(0, 1, 21)[:, None] * [1.0, 2.0, 3.0]  # collinear gt
    svd_batches = []
    svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda m, *a, **k: svd_batches.append(len(m)) or svd(m, *a, **k))
    out = g.procrustes_align(torch.tensor(pred), torch.tensor(gt)).numpy()
    assert sum(svd_batches) >= 3  # the degenerate samples took the SVD path
    ref = np.stack([_official_align(gt[i], pred[i]) for i in range(6)])
    unique = [0, 1, 2, 3, 5]  # a collinear gt (4) leaves the rotation about its line free: LAPACK drivers differ
    np.testing.assert_allclose(out[unique], ref[unique], atol=1e-9)
    # ... but not the per-point error, which is what the metrics use
    np.testing.assert_allclose(np.linalg.norm(out[4] - gt[4], axis=-1), np.linalg.norm(ref[4] - gt[4], axis=-1), atol=1e-9)


def test_procrustes_undoes_similarity_transform():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(2, 21, 3))
    A = Rotation.from_rotvec([0.3, -0.2, 0.9]).as_matrix()
    pred = 2.5 * gt @ A.T + np.array([1.0, 2.0, 3.0])
    out = g.procrustes_align(torch.tensor(pred), torch.tensor(gt)).numpy()
    np.testing.assert_allclose(out, gt, atol=1e-9)


def test_joint_maps_are_inverse_permutations():
    assert sorted(J.HO3D_TO_CANONICAL) == list(range(21))
    ho3d = np.arange(21)
    canonical = ho3d[J.HO3D_TO_CANONICAL]
    np.testing.assert_array_equal(canonical[J.CANONICAL_TO_HO3D], ho3d)
    assert [J.HO3D_NAMES[i] for i in J.HO3D_TO_CANONICAL] == J.CANONICAL_NAMES
    # every canonical parent comes before its child, the root has none
    assert J.CANONICAL_PARENTS[J.ROOT_INDEX] == -1
    assert all(p < c for c, p in enumerate(J.CANONICAL_PARENTS) if p >= 0)


# Each unit conversion happens once, with the one factor: losses.units.MM_PER_M (docs/units.md). A new 1000 / 1e3 / 0.001 /
# 1e-3 factor elsewhere in the framework is how "joints multiplied by 1000 twice" starts.
MM_FACTORS = (1000, 0.001)
MM_FACTOR_FILE = "losses/units.py"  # the only file that writes the factor out
MM_FACTOR_NAMES = {"MM_PER_M"}  # the factor's name: scaling by it is a conversion, allowed in MM_CONVERSION_FILES
SCALING_OPERATORS = {"*", "/", "*=", "/="}
MM_CONVERSION_FILES = {  # the one place of each conversion
    "utnet/mano/layer.py",         # MANO output metres -> mm (mesh_mm)
    "utnet/data/ho3d.py",          # HO3D annotations and depth -> mm (the reader)
    "utnet/engine/submission.py",  # back to metres for an HO3D submission
    "utnet/mano/standin/model.py", # the stand-in is laid out in mm and stored in metres like MANO
    "losses/units.py",             # a loss term's `unit: m` (from_mm)
}
MM_FACTOR_LINES = {  # (file, stripped line): a factor of 1000 that is no unit conversion, or not yet the constant
    ("utnet/mano/pose_prior.py", "if np.linalg.norm(shift) < 1e-3 * scale:"),  # tolerance relative to the finger length
}


def _says_mm(name: str) -> bool:
    """A name with a part `mm` (M_TO_MM, _MM, scale_mm): assigned 1000 or 0.001, it is a second factor."""
    return "mm" in name.lower().split("_")


def mm_factor_lines(source: str) -> dict[str, list[int]]:
    """Lines (1-based) of Python source with a metre/millimetre factor:
    "literal": a numeric literal worth 1000 or 0.001 (1000, 1e3, 1_000.0, 0x3E8, 0.001, 1e-3, ...) whose line
    or statement also holds a * / *= /= operator, or that is assigned to a name that says mm (`_says_mm`);
    "named": the factor's name (MM_PER_M) on a line or statement with such an operator."""
    import ast
    import io
    import tokenize

    numbers, names, operator_lines, operator_statements = [], [], set(), set()
    statement = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NEWLINE:
            statement += 1
        elif tok.type == tokenize.NUMBER and ast.literal_eval(tok.string) in MM_FACTORS:
            numbers.append((tok.start[0], statement))
        elif tok.type == tokenize.NAME and tok.string in MM_FACTOR_NAMES:
            names.append((tok.start[0], statement))
        elif tok.type == tokenize.OP and tok.string in SCALING_OPERATORS:
            operator_lines.add(tok.start[0])
            operator_statements.add(statement)

    def scaling(found):
        return {line for line, stmt in found if line in operator_lines or stmt in operator_statements}

    assigned = set()
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if (isinstance(value, ast.Constant) and type(value.value) in (int, float) and value.value in MM_FACTORS
                and any(isinstance(t, ast.Name) and _says_mm(t.id) for t in targets)):
            assigned.add(node.lineno)
    return {"literal": sorted(scaling(numbers) | assigned), "named": sorted(scaling(names))}


def mm_factor_offenders(root) -> list[str]:
    """"file:line" of every metre/millimetre factor in root/utnet and root/losses outside the allowed places."""
    from pathlib import Path

    root = Path(root)
    offenders = []
    for path in sorted(list((root / "utnet").rglob("*.py")) + list((root / "losses").rglob("*.py"))):
        rel = path.relative_to(root).as_posix()
        source = path.read_text()
        lines = source.splitlines()
        found = mm_factor_lines(source)
        flagged = ([] if rel == MM_FACTOR_FILE else found["literal"]) + \
                  ([] if rel in MM_CONVERSION_FILES else found["named"])
        offenders += [f"{rel}:{n}" for n in sorted(set(flagged)) if (rel, lines[n - 1].strip()) not in MM_FACTOR_LINES]
    return offenders


def test_metre_millimetre_factors_live_only_in_their_one_place():
    """This test names the file that adds a factor."""
    from pathlib import Path

    offenders = mm_factor_offenders(Path(__file__).resolve().parent.parent)
    assert not offenders, f"metre/millimetre factor outside losses/units.py or a conversion outside its place: {offenders}"


def test_the_one_factor_is_a_thousand():
    from losses.units import MM_PER_M

    assert MM_PER_M == 1000.0


def test_mm_factor_guard_catches_factors_beside_the_operator_or_not():
    caught = ["x = y * np.float32(1000.0)", "z = torch.tensor(1e3) * z", "m = mm * 0.001", "m = 1E-3 * mm",
              "x /= 1_000", "x = (y\n     * 1000)", "x = y * \\\n    1e3", "out = f(x * s, scale=1000.)", "x = y / 0x3E8",
              "M_TO_MM = 1000.0", "_MM = 1e-3", "scale_mm: float = 1e3", "MM_PER_M = 1000"]
    for code in caught:
        assert mm_factor_lines(code + "\n")["literal"], code
    assert mm_factor_lines("a = 1\nx = (y *\n     1000.0)\n")["literal"] == [3]
    for code in ["joints_mm = joints * MM_PER_M", "m = mm / units.MM_PER_M", "x = (y /\n     MM_PER_M)"]:
        assert mm_factor_lines(code + "\n") == {"literal": [], "named": [code.count("\n") + 1]}, code
    missed = ["n = 1000", "eps = 1e-3", "x = y * 2", "x = y  # * 1000", "s = 'x * 1000'", "x = y ** 1000",
              "x = y + 0.001", "a = b * c\nn = 1000", "from losses.units import MM_PER_M", "DEPTH_MIN_VALID = 1e-3",
              "mm = 1000 + x", "limit_mm = 1500.0"]
    for code in missed:
        assert mm_factor_lines(code + "\n") == {"literal": [], "named": []}, code


def test_mm_factor_guard_names_the_file_and_honours_the_allowed_places(tmp_path):
    for rel, text in [("utnet/data/new.py", "x = 2\njoints_mm = joints * np.float32(1000.0)\n"),
                      ("utnet/mano/layer.py", "verts_mm = verts * 1000.0\njoints_mm = joints * MM_PER_M\n"),
                      ("utnet/mano/pose_prior.py", "if True:\n    if np.linalg.norm(shift) < 1e-3 * scale:\n"
                                                   "        pass\nshift_mm = shift * 1e3\n"),
                      ("utnet/model/head.py", "from losses.units import MM_PER_M\nout_m = out / MM_PER_M\n"),
                      ("losses/term.py", "loss = loss / 1000\n"),
                      ("losses/units.py", "MM_PER_M = 1000.0\n"),
                      ("losses/other.py", "M_TO_MM = 1000.0\n")]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert mm_factor_offenders(tmp_path) == ["losses/other.py:1", "losses/term.py:1", "utnet/data/new.py:2",
                                             "utnet/mano/layer.py:1", "utnet/mano/pose_prior.py:4",
                                             "utnet/model/head.py:2"]


def test_procrustes_leading_dimensions_and_a_non_finite_sample():
    rng = np.random.default_rng(5)
    gt = torch.tensor(rng.normal(size=(2, 3, 21, 3)) * 50)
    pred = gt + torch.tensor(rng.normal(size=gt.shape) * 10)
    pred[1, 2, 4, 0] = float("nan")
    out = g.procrustes_align(pred, gt)
    flat = g.procrustes_align(pred.reshape(6, 21, 3), gt.reshape(6, 21, 3)).reshape(out.shape)
    torch.testing.assert_close(out, flat, equal_nan=True)
    assert torch.isnan(out[1, 2]).all() and torch.isfinite(out.reshape(6, 21, 3)[:5]).all()
    ref = np.stack([_official_align(gt.reshape(6, 21, 3)[i].numpy(), pred.reshape(6, 21, 3)[i].numpy()) for i in range(5)])
    np.testing.assert_allclose(out.reshape(6, 21, 3)[:5].numpy(), ref, atol=1e-9)


def test_crop_units_grid_conversion_both_ways_tensor_and_numpy():
    from losses.units import crop_units_to_grid, grid_to_crop_units

    H, W = 96, 128  # not square: a swapped width and height moves every point
    crop = [[-0.5, -0.5], [0.5, 0.5], [0.0, 0.0], [0.25, -0.125]]
    pixels = [[0.0, 0.0], [128.0, 96.0], [64.0, 48.0], [96.0, 36.0]]
    for make in (np.array, torch.tensor):
        grid = crop_units_to_grid(make(crop), H, W)
        assert type(grid) is type(make(crop))
        np.testing.assert_array_equal(np.asarray(grid), pixels)  # exact: dyadic values
        np.testing.assert_array_equal(np.asarray(grid_to_crop_units(make(pixels), H, W)), crop)
    cells = crop_units_to_grid(torch.tensor(crop, dtype=torch.float32), 24, 32)  # a 32 x 24 heatmap
    assert cells.dtype == torch.float32 and cells[1].tolist() == [32.0, 24.0]
    rng = np.random.default_rng(0)
    points = rng.uniform(-10, 140, size=(50, 2))
    np.testing.assert_allclose(crop_units_to_grid(grid_to_crop_units(points, H, W), H, W), points, rtol=0, atol=1e-12)
    assert crop_units_to_grid(np.zeros((2, 2), np.float32), H, W).dtype == np.float32
