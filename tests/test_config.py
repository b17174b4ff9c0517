"""Experiment config: defaults, overrides, and the one-line errors a user can act on."""
import yaml
import pytest

from utnet.config import DEFAULT_CONFIG_PATH, ExperimentConfig, load_config, flatten_config
from utnet.errors import ConfigError


def test_default_config_loads_with_defaults_filled():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.data.root == "data/synthetic_ho3d"
    # a key the YAML does not give comes from the schema
    assert cfg.data.augment.rotation_deg == 30.0
    assert cfg.eval.split == "val"
    assert set(cfg.loss) >= {"keypoint_2d", "joint_3d"}


def test_overrides_nested_list_and_loss_mapping():
    cfg = load_config(None, [
        "optim.lr=3e-4",
        "data.val_sequences=[A1, B2]",
        "loss.joint_3d.reduction=sum",
        "data.image_size=[256, 192]",
        "optim.lr=1e-3",  # --set may repeat: the last one wins
        "train.max_steps=7",
    ])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.val_sequences == ["A1", "B2"]
    assert cfg.loss["joint_3d"]["reduction"] == "sum"
    assert cfg.data.image_size == (256, 192)
    assert cfg.train.max_steps == 7


def test_override_creates_new_loss_term_with_type(tmp_path):
    cfg = load_config(None, ["loss.joint_3d_coarse={type: joint_3d, weight: 0.02}"])
    assert cfg.loss["joint_3d_coarse"]["type"] == "joint_3d"


def test_errors_collect_every_problem():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.lr=-1", "data.bogus=1", "train.max_steps=abc"])
    lines = info.value.lines
    assert any(line.startswith("optim.lr: ") and "(got -1)" in line for line in lines)
    assert any(line.startswith("data.bogus: unknown key") for line in lines)
    assert any(line.startswith("train.max_steps: ") and "abc" in line for line in lines)


def test_flatten_config_is_flat_scalars():
    flat = flatten_config(load_config())
    assert flat["optim.lr"] == load_config().optim.lr
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


def test_every_schema_key_is_read_somewhere():
    """A key that nothing reads is a bug: each leaf's attribute name appears in the code base."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    code = "\n".join(p.read_text() for d in ("utnet", "losses") for p in (root / d).rglob("*.py")
                     if p.name != "config.py")
    unread = []

    def walk(model_cls, prefix):
        for name, field in model_cls.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, ExperimentConfig.__mro__[1]):
                walk(ann, f"{prefix}{name}.")
                continue
            dotted = f"{prefix}{name}"
            # read either as an attribute (cfg.x.name) or, for dict-like sections, by key
            if f".{name}" not in code and f"'{name}'" not in code and f'"{name}"' not in code:
                unread.append(dotted)

    walk(ExperimentConfig, "")
    assert not unread, f"config keys no code reads: {unread}"


# --------------------------------------------------------------------- through the real CLI

def _assert_config_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_cli_config_prints_resolved_yaml(cli):
    result = cli("config")
    assert result.returncode == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    assert tree["data"]["augment"]["scale"] == 0.3
    assert ExperimentConfig.model_validate(tree) == load_config()


def test_cli_config_set_override(cli):
    result = cli("config", "--set", "optim.lr=3e-4", "--set", "loss.joint_3d.reduction=sum")
    assert result.returncode == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    assert tree["optim"]["lr"] == 3e-4
    assert tree["loss"]["joint_3d"]["reduction"] == "sum"


def test_cli_unknown_key(cli):
    _assert_config_error(cli("config", "--set", "optim.lrr=1"), "optim.lrr: unknown key (got 1)")


def test_cli_wrong_type(cli):
    _assert_config_error(cli("config", "--set", "data.batch_size=many"), "data.batch_size:", "(got 'many')")


def test_cli_negative_weight(cli):
    _assert_config_error(
        cli("config", "--set", "loss.joint_3d.weight=-1"),
        "loss.joint_3d.weight: Input should be greater than or equal to 0 (got -1)",
    )


def test_cli_unknown_loss_name(cli):
    result = cli("config", "--set", "loss.jointz_3d={weight: 1}")
    _assert_config_error(result, "loss.jointz_3d:", "joint_3d")


def test_cli_best_metric_must_be_lower_is_better(cli):
    """best/ keeps the lowest value: a higher-is-better metric would keep the worst checkpoint."""
    result = cli("config", "--set", "train.best_metric=refined/f_15mm")
    _assert_config_error(result, "train.best_metric:", "lower-is-better", "refined/pa_mpjpe, refined/mpvpe",
                         "coarse/pa_mpvpe", "(got 'refined/f_15mm')")
    assert result.stderr.strip().count("\n") == 0, result.stderr
    for bad in ("coarse/auc_j", "refined/auc_v", "refined/f_5mm", "num_samples", "pa_mpjpe"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"train.best_metric={bad}"])
        assert info.value.lines[0].startswith("train.best_metric: ") and f"(got {bad!r})" in info.value.lines[0]
    assert load_config(None, ["train.best_metric=coarse/mpvpe"]).train.best_metric == "coarse/mpvpe"


def test_cli_settings_that_only_work_together(cli):
    """stem_depth without the conv stem, and a token_keypoint_2d term without the model's token
    keypoint head, are each one line and exit 2 (the second would otherwise fail at the first step)."""
    result = cli("config", "--set", "model.backbone.stem=patch", "--set", "model.backbone.stem_depth=2")
    _assert_config_error(result, "model.backbone.stem_depth:", "stem: conv", "got 2")
    assert result.stderr.strip().count("\n") == 0, result.stderr
    result = cli("config", "--set", "model.token_keypoints=false", "--set", "loss.kp_tokens={type: token_keypoint_2d}")
    # the default config's own token_keypoint_2d term is the second problem: one line each
    _assert_config_error(result, "loss.kp_tokens:", "loss.token_keypoint_2d:", "model.token_keypoints: true")
    assert result.stderr.strip().count("\n") == 1, result.stderr
    # a term at weight 0 is still computed (and logged), so it needs the head too
    with pytest.raises(ConfigError, match=r"^loss.token_keypoint_2d: supervises"):
        load_config(None, ["model.token_keypoints=false", "loss.token_keypoint_2d={weight: 0}"])


def test_cli_missing_file(cli, tmp_path):
    missing = tmp_path / "nope.yaml"
    _assert_config_error(cli("config", "--config", missing), "config: file not found", str(missing))


def test_cli_yaml_syntax_error_names_line(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndata:\n  root: [unclosed\n  batch_size: 2\n")
    result = cli("config", "--config", bad)
    _assert_config_error(result, "YAML syntax error", str(bad), "line ")


def test_cli_bad_override_syntax(cli):
    _assert_config_error(cli("config", "--set", "optim.lr"), "expected KEY=VALUE")


def test_help_lists_only_existing_subcommands(cli):
    import pkgutil
    import utnet.commands

    result = cli("--help")
    assert result.returncode == 0
    modules = {m.name for m in pkgutil.iter_modules(utnet.commands.__path__)} - {"common"}
    for name in modules:
        assert name in result.stdout
        sub = cli(name, "--help")
        assert sub.returncode == 0, sub.stderr
    for never in ("benchmark", "export"):
        assert never not in result.stdout
