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


# --------------------------------------------------------------------- every key is read
# A schema key nothing reads is a bug. "Read" means an attribute access on the config object's path, found
# with ast in utnet/ (config.py, which only validates, excluded): `cfg.model.head.dim`, or `.dim` on a
# variable that holds model.head. A variable holds a section when it is
# - `cfg` (the code base's name for the experiment), `self.cfg`, or annotated ExperimentConfig / <Section>Config;
# - assigned from such a path (`t = cfg.train`, `aug = cfg.data.augment`);
# - a parameter of a function of the code base that some call passes such a path (`build_backbone(
#   cfg.model.backbone, ...)` makes build_backbone's first parameter model.backbone; a class call binds
#   its __init__, `obj.method(...)` a method, both after `self`).
# `getattr(section, name)` with a computed name reads every key of the section (optim.lr_mult by group).
# The word `dim` elsewhere (`self.dim`, a comment) is no read.
import ast as _ast


def _schema_paths(model_cls, prefix="", sections=None, leaves=None):
    """(section class name -> dotted path, [leaf dotted paths]) of the experiment schema."""
    sections = {} if sections is None else sections
    leaves = [] if leaves is None else leaves
    sections[model_cls.__name__] = prefix.rstrip(".")
    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, ExperimentConfig.__mro__[1]):
            _schema_paths(ann, f"{prefix}{name}.", sections, leaves)
        else:
            leaves.append(f"{prefix}{name}")
    return sections, leaves


class _Scope:
    def __init__(self, node, parent):
        self.node, self.parent, self.names = node, parent, {}

    def lookup(self, name):
        scope = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return set()


def config_reads(sources: dict[str, str], sections: dict[str, str]) -> set[str]:
    """Dotted schema paths read as attributes in `sources` (file name -> Python source); see above."""
    trees = {name: _ast.parse(text) for name, text in sources.items()}
    scopes, defs, scope_of = [], {}, {}  # defs: function name -> [(scope, params, is_method, class name)]

    def collect(node, scope, cls=None):
        for child in _ast.iter_child_nodes(node):
            if isinstance(child, _ast.ClassDef):
                scope_of[id(child)] = scope
                collect(child, scope, child.name)
            elif isinstance(child, (_ast.FunctionDef, _ast.AsyncFunctionDef)):
                inner = _Scope(child, scope)
                scopes.append(inner)
                params = [a.arg for a in child.args.posonlyargs + child.args.args + child.args.kwonlyargs]
                method = bool(params) and params[0] in ("self", "cls")
                defs.setdefault(child.name, []).append((inner, params, method, cls))
                for a in child.args.posonlyargs + child.args.args + child.args.kwonlyargs:
                    ann = a.annotation
                    ann = ann.value if isinstance(ann, _ast.Constant) else getattr(ann, "id", None)
                    if a.arg == "cfg" or ann == "ExperimentConfig":
                        inner.names.setdefault(a.arg, set()).add("")
                    elif ann in sections:
                        inner.names.setdefault(a.arg, set()).add(sections[ann])
                collect(child, inner)
            else:
                scope_of[id(child)] = scope
                collect(child, scope, cls)

    module_scopes = []
    for tree in trees.values():
        top = _Scope(tree, None)
        scopes.append(top)
        module_scopes.append(top)
        collect(tree, top)

    def resolve(node, scope):
        """The section paths an expression may hold (a set, empty when it holds none)."""
        if isinstance(node, _ast.Name):
            return scope.lookup(node.id) | ({""} if node.id == "cfg" else set())
        if isinstance(node, _ast.Attribute):
            if node.attr == "cfg" and isinstance(node.value, _ast.Name) and node.value.id == "self":
                return {""}
            return {f"{p}.{node.attr}".lstrip(".") for p in resolve(node.value, scope)
                    if f"{p}.{node.attr}".lstrip(".") in sections.values()}
        return set()

    def bind(scope, name, paths):
        new = paths - scope.names.get(name, set())
        if new:
            scope.names.setdefault(name, set()).update(new)
        return bool(new)

    changed = True
    while changed:  # to a fixed point: a binding may resolve more arguments
        changed = False
        for tree in trees.values():
            for node in _ast.walk(tree):
                scope = scope_of.get(id(node))
                if scope is None:
                    continue
                if isinstance(node, _ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], _ast.Name):
                    changed |= bind(scope, node.targets[0].id, resolve(node.value, scope))
                elif isinstance(node, _ast.Call):
                    callee = node.func.id if isinstance(node.func, _ast.Name) else getattr(node.func, "attr", None)
                    targets = defs.get(callee, []) + [d for d in defs.get("__init__", []) if d[3] == callee]
                    for inner, params, method, _ in targets:
                        free = params[1:] if method else params
                        for param, arg in zip(free, node.args):
                            changed |= bind(inner, param, resolve(arg, scope))
                        for kw in node.keywords:
                            if kw.arg in params:
                                changed |= bind(inner, kw.arg, resolve(kw.value, scope))

    reads = set()
    for tree in trees.values():
        for node in _ast.walk(tree):
            scope = scope_of.get(id(node))
            if scope is None:
                continue
            if isinstance(node, _ast.Attribute) and isinstance(node.ctx, _ast.Load):
                reads |= {f"{p}.{node.attr}".lstrip(".") for p in resolve(node.value, scope)}
            elif isinstance(node, _ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2:
                for p in resolve(node.args[0], scope):
                    name = node.args[1]
                    reads.add(f"{p}.{name.value}" if isinstance(name, _ast.Constant) else f"{p}.*")
    return reads


def unread_schema_keys(sources: dict[str, str]) -> list[str]:
    sections, leaves = _schema_paths(ExperimentConfig)
    reads = config_reads(sources, sections)
    return [leaf for leaf in leaves if leaf not in reads and f"{leaf.rpartition('.')[0]}.*" not in reads]


def test_every_schema_key_is_read_somewhere():
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    sources = {str(p): p.read_text() for p in sorted((root / "utnet").rglob("*.py")) if p.name != "config.py"}
    unread = unread_schema_keys(sources)
    assert not unread, f"config keys no code reads (as cfg.<section>.<key> or <section variable>.<key>): {unread}"


def test_the_read_check_follows_variables_and_calls_and_ignores_words():
    sections, leaves = _schema_paths(ExperimentConfig)
    code = '''
def build(cfg):
    t = cfg.train
    head = make_head(cfg.model.head, size=cfg.data.image_size)
    return t.max_steps, Refiner(cfg.model.refiner)

def make_head(head_cfg, size):
    return head_cfg.dim  # depth

class Refiner:
    def __init__(self, refiner_cfg):
        self.dim = 3
        self.on = refiner_cfg.enabled

def other(x):
    return x.heads, "depth", split
'''
    reads = config_reads({"code.py": code}, sections)
    assert {"train.max_steps", "model.head.dim", "data.image_size", "model.refiner.enabled"} <= reads
    assert not reads & {"model.head.depth", "model.head.heads", "eval.split", "model.refiner.hidden"}


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


def test_help_lists_only_existing_subcommands(cli, capsys):
    import pkgutil
    import utnet.commands
    from utnet.cli import main

    result = cli("--help")  # the installed entry point, once
    assert result.returncode == 0
    modules = {m.name for m in pkgutil.iter_modules(utnet.commands.__path__)} - {"common"}
    for name in modules:
        assert name in result.stdout
        with pytest.raises(SystemExit) as done:  # argparse exits after printing a subcommand's help
            main([name, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: utnet {name} ")
    for never in ("benchmark", "export"):
        assert never not in result.stdout


# ------------------------------------------------------------------- values that used to get through
def _float_keys(model_cls=ExperimentConfig, prefix=""):
    """Dotted keys of every float field of the schema (tuples of floats included)."""
    import typing

    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, ExperimentConfig.__mro__[1]):
            yield from _float_keys(ann, f"{prefix}{name}.")
        elif ann is float or (typing.get_origin(ann) is tuple and float in [typing.get_origin(a) or a for a in
                                                                            _unwrap(typing.get_args(ann))]):
            yield f"{prefix}{name}"


def _unwrap(args):
    import typing

    return [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args]


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
def test_every_float_of_the_schema_must_be_finite(bad):
    keys = list(_float_keys())
    assert {"optim.lr", "optim.betas", "optim.lr_mult.head", "data.bbox_expand", "model.focal_length",
            "data.depth_window_mm", "optim.clip_grad_norm"} <= set(keys)
    for key in keys:
        value = f"[{bad}, {bad}]" if key == "optim.betas" else bad
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"{key}={value}"])
        assert any(line.split(":")[0] in (key, f"{key}.0") for line in info.value.lines), (key, info.value.lines)


def test_cli_floats_out_of_range_are_all_reported(cli):
    """The issue's cases, in one call: each is its own line (every problem is reported, not the first)."""
    bad = {"optim.betas": "[1.5, 0.9]", "optim.lr": ".inf", "optim.lr_mult.backbone": ".inf",
           "optim.lr_mult.refiner": "1.0e+9", "data.bbox_expand": ".inf", "model.focal_length": ".inf",
           "data.depth_window_mm": ".inf", "data.augment.scale": "1.5", "optim.weight_decay": "-0.1"}
    args = ["config"]
    for key, value in bad.items():
        args += ["--set", f"{key}={value}"]
    result = cli(*args)
    _assert_config_error(result, "optim.betas.0: Input should be less than 1 (got 1.5)",
                         "optim.lr: Input should be a finite number (got .inf)")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(bad), result.stderr
    for key in bad:
        assert sum(line.split(":")[0] in (key, f"{key}.0") for line in lines) == 1, (key, result.stderr)
    assert load_config(None, ["optim.betas=[0.0, 0.999]"]).optim.betas == (0.0, 0.999)
    with pytest.raises(ConfigError, match=r"^optim.betas.1: Input should be less than 1 \(got 1\)"):
        load_config(None, ["optim.betas=[0.9, 1]"])


def test_cli_key_given_twice_names_the_key_and_lines(cli, tmp_path):
    """YAML keeps the last of two equal keys without a word: the first `data:` section was dropped."""
    path = tmp_path / "twice.yaml"
    path.write_text(DEFAULT_CONFIG_PATH.read_text() + "data:\n  batch_size: 2\noptim:\n  lr_mult: {head: 2, head: 3}\n")
    text = path.read_text().splitlines()
    first_data = text.index("data:") + 1
    last = len(text)
    result = cli("config", "--config", path)
    _assert_config_error(result, f"data: key given twice in {path} (lines {first_data} and {last - 3})",
                         f"optim: key given twice in {path}", f"optim.lr_mult.head: key given twice in {path} "
                         f"(line {last}, columns 13 and 22)")
    assert len(result.stderr.strip().splitlines()) == 3, result.stderr
    _assert_config_error(cli("config", "--set", "loss.joint_3d={weight: 1, weight: 2}"),
                         "loss.joint_3d.weight: key given twice in --set loss.joint_3d")


def test_cli_problems_of_every_stage_are_reported_together(cli):
    """A bad --set item, a schema error, a loss-term error and a combination error: four lines, one run."""
    result = cli("config", "--set", "nonsense", "--set", "optim.lr=-1", "--set", "loss.joint_3d.weight=-1",
                 "--set", "model.backbone.stem=patch", "--set", "model.backbone.stem_depth=2")
    _assert_config_error(result, "--set nonsense: expected KEY=VALUE", "optim.lr: ", "loss.joint_3d.weight: ",
                         "model.backbone.stem_depth: only applies to model.backbone.stem: conv")
    assert len(result.stderr.strip().splitlines()) == 4, result.stderr
    # a combination check says nothing about a key whose own value was refused
    result = cli("config", "--set", "model.backbone.stem=cnv", "--set", "model.backbone.stem_depth=2")
    _assert_config_error(result, "model.backbone.stem: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_synthetic_data_is_written_only_when_asked(cli, tmp_path):
    """A mistyped data.root must not render a new data set there: the schema's default is off, and the
    default experiment (configs/synthetic.yaml) turns it on explicitly."""
    assert ExperimentConfig().data.synthetic.enabled is False
    assert load_config().data.synthetic.enabled is True
    tree = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    del tree["data"]["synthetic"]
    tree["data"]["root"] = str(tmp_path / "typo_root")
    tree["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "no_synthetic.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = cli("train", "--config", path)
    _assert_config_error(result, f"data.root: {tmp_path / 'typo_root'} has no train.txt (and data.synthetic.enabled is false)")
    assert not (tmp_path / "typo_root").exists()
