"""The loss registry and the built-in terms, through the public API (`import losses`) and the CLI."""
import json
import subprocess
import sys

import pytest
import torch

import losses
from losses import registry

B = 3
REDUCTIONS = ["sum", "mean", "batch_mean"]
ALL_TERMS = ["keypoint_2d", "joint_3d", "vertex_3d", "mano_prior", "aux", "token_keypoint_2d", "refine_offset",
             "keypoint_heatmap"]


def random_rotations(*shape, generator):
    skew = torch.zeros(*shape, 3, 3)
    w = torch.randn(*shape, 3, generator=generator)
    skew[..., 0, 1], skew[..., 0, 2], skew[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    return torch.linalg.matrix_exp(skew - skew.transpose(-1, -2))


def make_inputs(seed=0, batch_size=B):
    """A prediction dict and a batch as the model and the engine produce them (mm, crop units)."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.tensor([0.0, 0.0, 500.0])  # absolute camera-frame positions, far from the origin

    def hand(scale=30.0):
        joints = torch.randn(batch_size, 21, 3, generator=g) * scale + offset
        verts = torch.randn(batch_size, 778, 3, generator=g) * scale + offset
        return joints, verts

    joints_gt, verts_gt = hand()
    batch = {
        "keypoints_2d": torch.rand(batch_size, 21, 2, generator=g) - 0.5,
        "keypoints_2d_valid": (torch.rand(batch_size, 21, generator=g) > 0.2).float(),
        "joints_3d": joints_gt,
        "joints_3d_valid": torch.cat([torch.ones(batch_size, 1),
                                      (torch.rand(batch_size, 20, generator=g) > 0.2).float()], 1),
        "verts_3d": verts_gt,
        "mano_rotmats": random_rotations(batch_size, 16, generator=g),
        "mano_betas": torch.randn(batch_size, 10, generator=g),
        "has_mano": torch.tensor([1.0, 0.0, 1.0][:batch_size] + [1.0] * max(0, batch_size - 3)),
    }

    def output():
        joints, verts = hand()
        return {"joints_3d": joints, "verts_3d": verts,
                "keypoints_2d": torch.rand(batch_size, 21, 2, generator=g) - 0.5}

    pred = output()
    pred["token_keypoints_2d"] = torch.rand(batch_size, 21, 2, generator=g) - 0.5  # wrist-relative
    pred["keypoint_heatmaps"] = torch.rand(batch_size, 21, 8, 6, generator=g)
    pred["coarse"] = output()
    rot = random_rotations(batch_size, 16, generator=g)
    pred["coarse"].update(global_orient=rot[:, :1], hand_pose=rot[:, 1:],
                          betas=torch.randn(batch_size, 10, generator=g), cam=torch.randn(batch_size, 3, generator=g))
    return pred, batch


def leaves(pred):
    """Every prediction tensor, made a leaf that records gradients."""
    out = {k: v.clone().requires_grad_(True) for k, v in pred.items() if torch.is_tensor(v)}
    out["coarse"] = {k: v.clone().requires_grad_(True) for k, v in pred["coarse"].items()}
    return out


def duplicate(tree):
    if isinstance(tree, dict):
        return {k: duplicate(v) for k, v in tree.items()}
    return torch.cat([tree, tree])


def term(name, **options):
    """One configured term, built the way the engine builds them."""
    return losses.LossSet.from_config({name: options}).terms[name]


# ------------------------------------------------------------------------------------ reductions
def test_reduce_error_by_hand():
    error = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    assert losses.reduce_error(error, weight, "sum").item() == pytest.approx(1 + 1.5 + 4)
    assert losses.reduce_error(error, weight, "batch_mean").item() == pytest.approx(6.5 / 2)
    assert losses.reduce_error(error, weight, "mean").item() == pytest.approx(6.5 / 2.5)
    # a per-sample weight [B] goes with an error [B, ...]: aligned on the batch dimension
    per_sample = torch.tensor([0.0, 2.0])
    assert losses.reduce_error(error, per_sample, "sum").item() == pytest.approx(2 * 7)
    assert losses.reduce_error(error, per_sample, "mean").item() == pytest.approx(14 / 4)


def test_keypoint_2d_each_reduction_by_hand():
    pred, batch = make_inputs()
    batch["keypoints_2d"] = torch.zeros(2, 21, 2)
    batch["keypoints_2d_valid"] = torch.ones(2, 21)
    batch["keypoints_2d_valid"][1, 2] = 0
    keypoints = torch.zeros(2, 21, 2)
    keypoints[0, 0, 0], keypoints[0, 1, 1], keypoints[1, 2, 0], keypoints[1, 3, 1] = 0.5, -0.25, 1.0, 0.1
    pred = {"keypoints_2d": keypoints}
    expected = {"sum": 0.85, "batch_mean": 0.85 / 2, "mean": 0.85 / (2 * 41)}  # [1,2] is not valid
    for reduction, raw_expected in expected.items():
        value, raw, stats = term("keypoint_2d", weight=10.0, reduction=reduction)(pred, batch)
        assert raw.item() == pytest.approx(raw_expected)
        assert value.item() == pytest.approx(10 * raw_expected)
        assert stats["weight_sum"].item() == 82
        assert stats["error_max"].item() == pytest.approx(0.5)  # the 1.0 error has no weight


def test_token_keypoint_2d_is_the_l1_to_the_wrist_relative_keypoints():
    """Elements: |token - (gt - gt wrist)| per coordinate; a joint counts when it and the wrist are
    valid. The refined keypoints_2d do not enter it."""
    pred, batch = make_inputs()
    batch["keypoints_2d_valid"][1, 0] = 0.0  # sample 1 has no wrist: none of its joints count
    relative = batch["keypoints_2d"] - batch["keypoints_2d"][:, :1]
    weight = (batch["keypoints_2d_valid"] * batch["keypoints_2d_valid"][:, :1])[..., None].expand(-1, -1, 2)
    error = (pred["token_keypoints_2d"] - relative).abs()
    for reduction, expected in (("sum", (error * weight).sum()), ("mean", (error * weight).sum() / weight.sum()),
                                ("batch_mean", (error * weight).sum() / B)):
        value = term("token_keypoint_2d", reduction=reduction, weight=2.0)(pred, batch)[0]
        assert value.item() == pytest.approx(2.0 * expected.item(), rel=1e-6), reduction
    changed = dict(pred, keypoints_2d=pred["keypoints_2d"] + 1.0)
    assert term("token_keypoint_2d")(changed, batch)[0].item() == term("token_keypoint_2d")(pred, batch)[0].item()
    with pytest.raises(ValueError, match=r"'token_keypoint_2d' cannot be applied to pred\['coarse'\] by aux"):
        term("aux", terms=["token_keypoint_2d"])


def test_mean_is_zero_not_nan_without_weight():
    pred, batch = make_inputs()
    batch["keypoints_2d_valid"] = torch.zeros(B, 21)
    pred = leaves(pred)
    value, raw, _ = term("keypoint_2d", reduction="mean")(pred, batch)
    value.backward()
    assert raw.item() == 0.0
    assert torch.isfinite(pred["keypoints_2d"].grad).all() and pred["keypoints_2d"].grad.abs().sum() == 0


def test_joint_3d_sum_is_hamers_formula_and_centres_each_side_on_its_own_root():
    pred, batch = make_inputs()
    p, g, conf = pred["joints_3d"], batch["joints_3d"], batch["joints_3d_valid"]
    hamer = (conf.unsqueeze(-1) * ((p - p[:, [0]]) - (g - g[:, [0]])).abs()).sum()
    value, raw, _ = term("joint_3d", weight=0.05, reduction="sum")(pred, batch)
    assert raw.item() == pytest.approx(hamer.item(), rel=1e-5)
    assert value.item() == pytest.approx(0.05 * hamer.item(), rel=1e-5)
    # nothing upstream centres: moving either side rigidly does not change the loss
    moved = dict(pred, joints_3d=p + torch.tensor([100.0, -50.0, 300.0]))
    assert term("joint_3d", reduction="sum")(moved, batch)[1].item() == pytest.approx(hamer.item(), rel=1e-5)
    mse = (conf.unsqueeze(-1) * ((p - p[:, [0]]) - (g - g[:, [0]])).square()).sum() / (3 * conf.sum())
    assert term("joint_3d", loss_type="mse")(pred, batch)[1].item() == pytest.approx(mse.item(), rel=1e-5)
    # another root joint, and a sample whose ground-truth root is missing does not count
    batch["joints_3d_valid"][1, 5] = 0
    conf5 = batch["joints_3d_valid"] * batch["joints_3d_valid"][:, [5]]
    root5 = (conf5.unsqueeze(-1) * ((p - p[:, [5]]) - (g - g[:, [5]])).abs()).sum()
    assert term("joint_3d", root_index=5, reduction="sum")(pred, batch)[1].item() == pytest.approx(root5.item(), rel=1e-5)
    assert conf5[1].sum() == 0


def test_vertex_3d_centres_on_root_joints_and_weights_by_has_mano():
    pred, batch = make_inputs()
    vp, vg = pred["verts_3d"], batch["verts_3d"]
    jp, jg = pred["joints_3d"], batch["joints_3d"]
    has = batch["has_mano"]
    expected = (has[:, None, None] * ((vp - jp[:, [0]]) - (vg - jg[:, [0]])).abs()).sum()
    assert term("vertex_3d", reduction="sum")(pred, batch)[1].item() == pytest.approx(expected.item(), rel=1e-5)
    assert term("vertex_3d", reduction="mean")(pred, batch)[1].item() == pytest.approx(
        expected.item() / (778 * 3 * has.sum().item()), rel=1e-5)
    shift = torch.tensor([10.0, 20.0, -400.0])
    moved = dict(pred, verts_3d=vp + shift, joints_3d=jp + shift)
    assert term("vertex_3d", reduction="sum")(moved, batch)[1].item() == pytest.approx(expected.item(), rel=1e-5)
    garbage = dict(pred, verts_3d=vp.clone())
    garbage["verts_3d"][1] += 1e4  # sample 1 has no MANO ground truth
    assert term("vertex_3d", reduction="sum")(garbage, batch)[1].item() == pytest.approx(expected.item(), rel=1e-5)


def test_mano_prior_by_hand():
    pred, batch = make_inputs()
    c = pred["coarse"]
    rot = torch.cat([c["global_orient"], c["hand_pose"]], 1)
    d2 = (rot - batch["mano_rotmats"]).square()
    has = batch["has_mano"]
    orient = (has * d2[:, 0].sum((-1, -2))).sum()
    pose = (has * d2[:, 1:].sum((-1, -2, -3))).sum()
    betas = (has * (c["betas"] - batch["mano_betas"]).square().sum(-1)).sum()
    reg = ((1 - has) * c["betas"].square().sum(-1)).sum()
    cfg = dict(global_orient=2.0, hand_pose=1.0, betas=0.5, betas_regularizer=0.1)
    expected_sum = 2 * orient + pose + 0.5 * betas + 0.1 * reg
    got = term("mano_prior", reduction="sum", **cfg)(pred, batch)[1]
    assert got.item() == pytest.approx(expected_sum.item(), rel=1e-5)
    n_mano, n_none = has.sum().item(), (1 - has).sum().item()
    total_weight = n_mano * (2 * 9 + 135 + 0.5 * 10) + n_none * 0.1 * 10
    got = term("mano_prior", reduction="mean", **cfg)(pred, batch)[1]
    assert got.item() == pytest.approx(expected_sum.item() / total_weight, rel=1e-5)
    # the regularizer is off by default: samples without MANO then count for nothing
    default = term("mano_prior", reduction="sum")(pred, batch)[1]
    assert default.item() == pytest.approx((orient + pose + 0.5 * betas).item(), rel=1e-5)


def test_aux_applies_the_terms_to_the_coarse_prediction():
    pred, batch = make_inputs()
    coarse_as_refined = {**pred["coarse"], "coarse": pred["coarse"]}
    for reduction in REDUCTIONS:
        aux = term("aux", weight=0.5, reduction=reduction)
        value, raw, stats = aux(pred, batch)
        separate = sum(term(name, reduction=reduction)(coarse_as_refined, batch)[1]
                       for name in ("joint_3d", "keypoint_2d"))
        assert raw.item() == pytest.approx(separate.item(), rel=1e-5)
        assert value.item() == pytest.approx(0.5 * separate.item(), rel=1e-5)
        assert set(stats) >= {"joint_3d/error_mean", "keypoint_2d/error_max"}
    # the refined output does not enter aux
    changed = dict(pred, joints_3d=pred["joints_3d"] + 1e3, keypoints_2d=pred["keypoints_2d"] * 0)
    assert term("aux")(changed, batch)[1].item() == pytest.approx(term("aux")(pred, batch)[1].item())
    only_verts = term("aux", terms=["vertex_3d"], reduction="sum")(pred, batch)[1]
    assert only_verts.item() == pytest.approx(term("vertex_3d", reduction="sum")(coarse_as_refined, batch)[1].item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mean_unchanged_and_sum_doubled_when_the_batch_is_duplicated(reduction):
    pred, batch = make_inputs()
    config = {name: {"reduction": reduction, "betas_regularizer": 0.3} if name == "mano_prior"
              else {"reduction": reduction} for name in ALL_TERMS}
    loss_set = losses.LossSet.from_config(config)
    _, logs = loss_set(pred, batch)
    _, logs2 = loss_set(duplicate(pred), duplicate(batch))
    factor = 2.0 if reduction == "sum" else 1.0
    for name in ALL_TERMS:
        single = logs[f"loss_raw/{name}"].item()
        assert single > 0
        assert logs2[f"loss_raw/{name}"].item() == pytest.approx(factor * single, rel=1e-5), name


def test_gradients_reach_the_prediction_from_every_term():
    pred, batch = make_inputs()
    needs = {"keypoint_2d": [("keypoints_2d",)], "joint_3d": [("joints_3d",)],
             "vertex_3d": [("verts_3d",), ("joints_3d",)],
             "mano_prior": [("coarse", "global_orient"), ("coarse", "hand_pose"), ("coarse", "betas")],
             "aux": [("coarse", "joints_3d"), ("coarse", "keypoints_2d")],
             "token_keypoint_2d": [("token_keypoints_2d",)], "keypoint_heatmap": [("keypoint_heatmaps",)]}
    for name, paths in needs.items():
        for reduction in REDUCTIONS:
            inputs = leaves(pred)
            value, _, _ = term(name, reduction=reduction, weight=0.5)(inputs, batch)
            value.backward()
            for path in paths:
                tensor = inputs[path[0]] if len(path) == 1 else inputs[path[0]][path[1]]
                assert tensor.grad is not None and tensor.grad.abs().sum() > 0, (name, reduction, path)
                assert torch.isfinite(tensor.grad).all()


# -------------------------------------------------------------------------------------- loss set
def test_loss_set_logs_every_term_in_config_order_and_type_reuses_a_plugin():
    pred, batch = make_inputs()
    config = {"joint_3d": {"weight": 0.05, "reduction": "sum"},
              "keypoint_2d": {"weight": 0.01},
              "joint_3d_mse": {"type": "joint_3d", "loss_type": "mse", "weight": 2.0}}
    total, logs = losses.LossSet.from_config(config)(pred, batch)
    assert list(logs) == ["loss/joint_3d", "loss_raw/joint_3d", "loss/keypoint_2d", "loss_raw/keypoint_2d",
                          "loss/joint_3d_mse", "loss_raw/joint_3d_mse"]
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
    assert total.item() == pytest.approx(sum(logs[f"loss/{n}"].item() for n in config), rel=1e-6)
    for name, options in config.items():
        assert logs[f"loss/{name}"].item() == pytest.approx(options["weight"] * logs[f"loss_raw/{name}"].item())
    mse = term("joint_3d", loss_type="mse")(pred, batch)[1]
    assert logs["loss_raw/joint_3d_mse"].item() == pytest.approx(mse.item())


def test_check_loss_config_reports_every_problem_with_its_dotted_path():
    problems = losses.check_loss_config(
        {"joint_3d": {"weight": -1, "bogus": 2}, "keypoint_2d": {"reduction": "avg"}, "foo": {},
         "bar": {"type": "nope"}, "aux": {"terms": ["mano_prior"]}, "vertex_3d": {"weight": float("nan")}},
        ["no_such_plugin_module_xyz"])
    by_path = {path: (message, value) for path, message, value in problems}
    assert set(by_path) == {"loss_plugins", "loss.joint_3d.weight", "loss.joint_3d.bogus",
                            "loss.keypoint_2d.reduction", "loss.foo", "loss.bar.type", "loss.aux.terms.0",
                            "loss.vertex_3d.weight"}
    assert by_path["loss.joint_3d.weight"][1] == -1
    assert "loss_type" in by_path["loss.joint_3d.bogus"][0] and "root_index" in by_path["loss.joint_3d.bogus"][0]
    for name in losses.registered_losses():
        assert name in by_path["loss.foo"][0]
    assert by_path["loss_plugins"][1] == "no_such_plugin_module_xyz"
    valid = {"joint_3d": {}, "j2": {"type": "joint_3d", "root_index": 9}}
    assert losses.check_loss_config(valid, []) == []
    assert losses.resolve_loss_config(valid) == {
        "joint_3d": {"weight": 1.0, "reduction": "mean", "ramp": None, "loss_type": "l1", "root_index": 0, "unit": "mm"},
        "j2": {"type": "joint_3d", "weight": 1.0, "reduction": "mean", "ramp": None, "loss_type": "l1", "root_index": 9,
               "unit": "mm"}}
    with pytest.raises(losses.LossConfigError, match=r"loss\.foo: unknown loss term 'foo'"):
        losses.LossSet.from_config({"foo": {}})


def test_missing_batch_key_names_the_term_and_the_key():
    pred, batch = make_inputs()
    del batch["keypoints_2d_valid"]
    with pytest.raises(KeyError, match=r"'keypoint_2d' needs batch\['keypoints_2d_valid'\]"):
        losses.LossSet.from_config({"keypoint_2d": {}})(pred, batch)
    del pred["coarse"]["joints_3d"]
    with pytest.raises(KeyError, match=r"'aux\[joint_3d\]' needs pred\['coarse'\]\['joints_3d'\]"):
        term("aux")(pred, batch)
    del batch["mano_rotmats"]
    with pytest.raises(KeyError, match=r"'mano_prior' needs batch\['mano_rotmats'\]"):
        term("mano_prior")(pred, batch)


# ------------------------------------------------------------------------------------ registry
class _Scaled(losses.LossTerm):
    """A user's term: |pred - gt| * scale on the 2D keypoints."""

    class Config(losses.LossConfig):
        scale: float = 1.0

    def elementwise(self, pred, batch):
        diff = self.from_pred(pred, "keypoints_2d") - self.from_batch(batch, "keypoints_2d")
        return diff.abs() * self.config.scale, self.from_batch(batch, "keypoints_2d_valid").unsqueeze(-1)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORIGINS", dict(registry._ORIGINS))


def test_duplicate_registration_names_both_modules(scratch_registry):
    with pytest.raises(losses.LossRegistrationError) as info:
        losses.register_loss("joint_3d")(type("Joint3DLoss", (_Scaled,), {}))
    assert "losses.joint_3d" in str(info.value) and __name__ in str(info.value)
    losses.register_loss("scaled_kp")(_Scaled)
    losses.register_loss("scaled_kp")(_Scaled)  # the same class again (a reload) is not a clash
    with pytest.raises(TypeError, match="LossTerm"):
        losses.register_loss("not_a_term")(dict)


def test_a_registered_plugin_works_from_config(scratch_registry):
    losses.register_loss("scaled_kp")(_Scaled)
    assert losses.registered_losses()["scaled_kp"] is _Scaled
    assert losses.plugin_origin("scaled_kp") == __name__
    pred, batch = make_inputs()
    _, logs = losses.LossSet.from_config({"keypoint_2d": {"reduction": "sum"},
                                          "x3": {"type": "scaled_kp", "scale": 3.0, "reduction": "sum"}})(pred, batch)
    assert logs["loss_raw/x3"].item() == pytest.approx(3 * logs["loss_raw/keypoint_2d"].item(), rel=1e-6)
    assert losses.check_loss_config({"scaled_kp": {"scale": "big"}}, [])[0][0] == "loss.scaled_kp.scale"


def test_debug_blocks_on_the_main_process_only(monkeypatch, capsys):
    pred, batch = make_inputs()
    monkeypatch.setenv("UTNET_DEBUG_LOSS", "1")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    loss_set = losses.LossSet.from_config({name: {} for name in ALL_TERMS})
    for _ in range(5):
        loss_set(pred, batch)
    err = capsys.readouterr().err
    for name in ALL_TERMS:
        assert err.count(f"[UTNET_DEBUG_LOSS] term '{name}'") == 3
    block = err.split("[UTNET_DEBUG_LOSS] term 'joint_3d'")[1].split("[UTNET_DEBUG_LOSS]")[0]
    for expected in ("pred['joints_3d'] before centring", "pred['joints_3d'] after centring",
                     "batch['joints_3d'] before centring", "batch['joints_3d'] after centring",
                     "std", "error mean", "max", "value"):
        assert expected in block
    aux_block = err.split("[UTNET_DEBUG_LOSS] term 'aux'")[1].split("[UTNET_DEBUG_LOSS]")[0]
    assert "pred['coarse']['joints_3d'] after centring" in aux_block and "keypoint_2d: weight sum" in aux_block
    monkeypatch.setenv("LOCAL_RANK", "1")
    losses.LossSet.from_config({"joint_3d": {}})(pred, batch)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("UTNET_DEBUG_LOSS", "0")
    losses.LossSet.from_config({"joint_3d": {}})(pred, batch)
    assert capsys.readouterr().err == ""


def test_losses_imports_without_utnet():
    code = ("import sys, losses; assert losses.registered_losses(); "
            "print(sorted(m for m in sys.modules if m == 'utnet' or m.startswith('utnet.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ CLI
def test_cli_rejects_bad_loss_config_with_dotted_paths(cli):
    result = cli("config", "--set", "loss.joint_3d.weight=-1", "--set", "loss.keypoint_2d.reduction=avg",
                 "--set", "loss.vertex_3d.bogus=1", "--set", "loss.no_such_term.weight=1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = {line.split(":")[0]: line for line in result.stderr.splitlines()}
    assert set(lines) == {"loss.joint_3d.weight", "loss.keypoint_2d.reduction", "loss.vertex_3d.bogus",
                          "loss.no_such_term"}
    assert "(got -1)" in lines["loss.joint_3d.weight"]
    assert "root_index" in lines["loss.vertex_3d.bogus"]
    assert all(name in lines["loss.no_such_term"] for name in ALL_TERMS)


USER_PLUGIN = '''
import losses

@losses.register_loss("double_kp")
class DoubleKeypoints(losses.LossTerm):
    """Twice the 2D keypoint error."""
    class Config(losses.LossConfig):
        factor: float = 2.0
    def elementwise(self, pred, batch):
        d = self.from_pred(pred, "keypoints_2d") - self.from_batch(batch, "keypoints_2d")
        return d.abs() * self.config.factor, batch["keypoints_2d_valid"].unsqueeze(-1)
'''

CLASHING_PLUGIN = '''
import losses

@losses.register_loss("joint_3d")
class Clash(losses.LossTerm):
    def elementwise(self, pred, batch):
        return pred["joints_3d"], batch["joints_3d_valid"]
'''


def test_cli_plugins_lists_builtins_and_loss_plugins_modules(cli, tmp_path):
    (tmp_path / "my_user_losses.py").write_text(USER_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    # listing the plugins validates the config, which uses the new term
    listed = cli("plugins", "--json", "--set", "loss_plugins=[my_user_losses]",
                 "--set", "loss.double_kp.factor=3", env=env)
    assert listed.returncode == 0, listed.stderr
    terms = {t["name"]: t for t in json.loads(listed.stdout)["terms"]}
    assert set(terms) == set(ALL_TERMS) | {"double_kp"}
    assert "my_user_losses" in terms["double_kp"]["origin"] and "loss_plugins" in terms["double_kp"]["origin"]
    assert {"name": "factor", "type": "float", "default": 2.0, "description": ""} in terms["double_kp"]["fields"]
    fields = {f["name"]: f for f in terms["joint_3d"]["fields"]}
    assert fields["weight"]["default"] == 1.0 and fields["weight"]["type"] == "float >= 0"
    assert fields["reduction"]["type"] == "'sum' | 'mean' | 'batch_mean'" and fields["reduction"]["default"] == "mean"
    assert fields["loss_type"]["default"] == "l1" and fields["root_index"]["default"] == 0
    assert {f["name"]: f for f in terms["aux"]["fields"]}["terms"]["default"] == ["joint_3d", "keypoint_2d"]
    assert {f["name"] for f in terms["mano_prior"]["fields"]} == {
        "weight", "reduction", "ramp", "global_orient", "hand_pose", "betas", "betas_regularizer"}
    assert fields["ramp"]["default"] is None
    text = cli("plugins")
    assert text.returncode == 0, text.stderr
    for name in ALL_TERMS:
        module = {"token_keypoint_2d": "keypoint_2d"}.get(name, name)  # a subclass beside its parent
        assert f"{name}  (losses.{module} (built-in)" in text.stdout
    assert "double_kp" not in text.stdout


def test_cli_reports_loss_plugins_that_fail_to_import(cli, tmp_path):
    (tmp_path / "clash_losses.py").write_text(CLASHING_PLUGIN)
    result = cli("config", "--set", "loss_plugins=[not_a_module_anywhere, clash_losses]",
                 env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("loss_plugins:")]
    assert len(problems) == 2
    assert "not_a_module_anywhere" in problems[0]
    assert "losses.joint_3d" in problems[1] and "clash_losses" in problems[1]


# ------------------------------------------------------------------------------------ units and recipes
def test_unit_m_divides_the_3d_errors_by_1000_and_aux_passes_it_on():
    pred, batch = make_inputs()
    for name in ("joint_3d", "vertex_3d"):
        mm = term(name, reduction="sum")(pred, batch)[1].item()
        assert term(name, reduction="sum", unit="m")(pred, batch)[1].item() == pytest.approx(mm / 1000, rel=1e-5)
    mse_mm = term("joint_3d", loss_type="mse", reduction="sum")(pred, batch)[1].item()
    mse_m = term("joint_3d", loss_type="mse", reduction="sum", unit="m")(pred, batch)[1].item()
    assert mse_m == pytest.approx(mse_mm / 1e6, rel=1e-5)
    aux = term("aux", reduction="sum", unit="m", terms=["joint_3d", "vertex_3d", "keypoint_2d"])
    coarse_mm = {t: term(t, reduction="sum")(pred["coarse"], batch)[1].item() for t in aux.config.terms}
    expected = coarse_mm["joint_3d"] / 1000 + coarse_mm["vertex_3d"] / 1000 + coarse_mm["keypoint_2d"]
    assert aux(pred, batch)[1].item() == pytest.approx(expected, rel=1e-5)
    problems = losses.check_loss_config({"joint_3d": {"unit": "cm"}, "aux": {"unit": "metres"}}, [])
    assert [p[0] for p in problems] == ["loss.joint_3d.unit", "loss.aux.unit"]


def known_error_batch(batch_size=4):
    """Ground truth and a prediction with known errors: 10 mm on every coordinate of the 20 non-root
    joints (and of every vertex), 0.02 crop units on every 2D coordinate, 0.1 on every rotation-matrix
    entry and 0.3 on every beta."""
    pred, batch = make_inputs(seed=1, batch_size=batch_size)
    batch["joints_3d_valid"] = torch.ones(batch_size, 21)
    batch["keypoints_2d_valid"] = torch.ones(batch_size, 21)
    batch["has_mano"] = torch.ones(batch_size)
    error_mm = torch.full((batch_size, 21, 3), 10.0)
    error_mm[:, 0] = 0.0  # the root: centring leaves a 10 mm error on every other joint
    rotmats = batch["mano_rotmats"] + 0.1
    for out in (pred, pred["coarse"]):
        out["joints_3d"] = batch["joints_3d"] + error_mm
        out["verts_3d"] = batch["verts_3d"] + 10.0
        out["keypoints_2d"] = batch["keypoints_2d"] + 0.02
    pred["coarse"].update(global_orient=rotmats[:, :1], hand_pose=rotmats[:, 1:], betas=batch["mano_betas"] + 0.3)
    return pred, batch


def hamer_terms_in_metres(pred, batch) -> dict[str, float]:
    """HaMeR's weighted training terms, written from its loss definitions: plain sums over the batch of
    L1 on root-centred 3D keypoints in METRES (0.05), L1 on 2D keypoints in [-0.5, 0.5] crop units
    (0.01), and squared errors on the rotation matrices (global_orient, hand_pose 0.001) and betas (0.0005)."""
    p, g = pred["joints_3d"] / 1000.0, batch["joints_3d"] / 1000.0
    keypoints_3d = ((p - p[:, :1]) - (g - g[:, :1])).abs().sum()
    keypoints_2d = (pred["keypoints_2d"] - batch["keypoints_2d"]).abs().sum()
    c, rotmats = pred["coarse"], batch["mano_rotmats"]
    return {"joint_3d": 0.05 * keypoints_3d.item(), "keypoint_2d": 0.01 * keypoints_2d.item(),
            "mano_prior": 0.001 * (c["global_orient"] - rotmats[:, :1]).square().sum().item()
                          + 0.001 * (c["hand_pose"] - rotmats[:, 1:]).square().sum().item()
                          + 0.0005 * (c["betas"] - batch["mano_betas"]).square().sum().item()}


@pytest.mark.parametrize("config", ["ho3d_v2.yaml", "ho3d_v3.yaml"])
def test_ho3d_configs_keep_hamers_balance_in_metres(config):
    """The HO3D recipes carry HaMeR's weights, which assume metres: each term's weighted value relative
    to keypoint_2d matches HaMeR's within 10% (with millimetres joint_3d was 1000x too strong)."""
    from utnet.config import REPO_ROOT, load_config

    cfg = load_config(REPO_ROOT / "configs" / config)
    loss_set = losses.LossSet.from_config(cfg.loss)
    pred, batch = known_error_batch()
    _, logs = loss_set(pred, batch)
    ours = {name: logs[f"loss/{name}"].item() for name in loss_set.terms}
    hamer = hamer_terms_in_metres(pred, batch)
    for name in ("joint_3d", "mano_prior"):
        ratio, hamer_ratio = ours[name] / ours["keypoint_2d"], hamer[name] / hamer["keypoint_2d"]
        assert ratio == pytest.approx(hamer_ratio, rel=0.1), (name, ratio, hamer_ratio)
    assert hamer["joint_3d"] / hamer["keypoint_2d"] == pytest.approx(3.57, rel=0.01)  # the figure
    # the terms HaMeR does not have stay within an order of magnitude of its 3D keypoint term
    for name in ("vertex_3d", "aux"):
        assert 0.1 < ours[name] / ours["joint_3d"] < 10, (name, ours)
