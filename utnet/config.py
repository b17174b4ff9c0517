"""The experiment schema: pydantic models for every section, YAML loading, `--set` overrides.

`load_config(path, overrides)` is the only way the code base reads an experiment. Invalid input
raises `ConfigError` with one `<dotted.path>: <message> (got <value>)` line per problem.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from utnet.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "synthetic.yaml"
if not DEFAULT_CONFIG_PATH.is_file():  # an installed (non-editable) utnet: the copy setup.py ships in the package
    DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "synthetic.yaml"


class _Section(BaseModel):
    # allow_inf_nan=False: every float of the schema must be finite (an lr of .inf ran to the end with NaN metrics).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------- data
class AugmentConfig(_Section):
    enabled: bool = Field(True, description="Augment the train split (never val/evaluation).")
    scale: float = Field(0.3, ge=0, lt=1, description="Box scale factor 1 + scale * clip(N(0,1), -1, 1).")
    rotation_deg: float = Field(30.0, ge=0, le=180, description="In-plane rotation deg * clip(N(0,1), -2, 2).")
    rotation_prob: float = Field(0.6, ge=0, le=1, description="Probability of applying the rotation.")
    translation: float = Field(0.02, ge=0, le=1, description="Box centre shift, as a fraction of the box size.")
    color: float = Field(0.2, ge=0, le=1, description="Per-channel colour scale in [1 - color, 1 + color].")


class SyntheticConfig(_Section):
    enabled: bool = Field(False, description="Write the synthetic HO3D-format set at data.root if it is missing (configs/synthetic.yaml turns it on; off by default so that a mistyped data.root is an error, not a new 1 GB data set).")
    sequences: int = Field(8, ge=2, description="Number of train sequences to render.")
    frames: int = Field(60, ge=1, description="Frames per sequence.")
    seed: int = Field(0, description="Seed of the synthetic set (the same seed writes the same files).")


class DataConfig(_Section):
    root: str = Field("data/synthetic_ho3d", description="HO3D root folder (train.txt, evaluation.txt, train/, evaluation/); relative to the working directory.")
    version: Literal["v2", "v3"] = Field("v2", description="HO3D release the folder follows.")
    val_sequences: list[str] = Field(default_factory=list, description="Train sequences held out as the `val` split.")
    image_size: tuple[int, int] = Field((256, 192), description="Crop height, width in pixels.")
    bbox_expand: float = Field(1.5, ge=1, le=10, description="Crop side = bbox_expand * the larger side of the tight box.")
    depth_window_mm: float = Field(300.0, gt=0, le=10000, description="Depth window mapped to [0,1], centred on the median valid depth near the crop centre.")
    on_error: Literal["raise", "skip"] = Field("raise", description="A listed frame whose file is missing or unreadable: stop (raise) or skip and count it.")
    batch_size: int = Field(16, ge=1, description="Samples per batch per process.")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per training process.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @field_validator("image_size")
    @classmethod
    def _image_size_positive(cls, v):
        if v[0] <= 0 or v[1] <= 0 or v[0] % 16 or v[1] % 16:
            raise ValueError("height and width must be positive multiples of 16 (the ViT patch size)")
        return v


# ----------------------------------------------------------------------------------------- mano
class ManoConfig(_Section):
    model_path: Optional[str] = Field(None, description="MANO_RIGHT.pkl (official or cleaned); null = the procedurally built MANO stand-in.")
    tip_vertex_ids: Union[Literal["ho3d", "smplx"], list[int]] = Field("ho3d", description="Fingertip vertices: 'ho3d', 'smplx', or 5 ids (thumb, index, middle, ring, pinky).")

    @field_validator("tip_vertex_ids")
    @classmethod
    def _five_tips(cls, v):
        if isinstance(v, list) and (len(v) != 5 or any(i < 0 or i >= 778 for i in v)):
            raise ValueError("must be 'ho3d', 'smplx' or a list of 5 vertex ids in [0, 778)")
        return v


# ---------------------------------------------------------------------------------------- model
class BackboneConfig(_Section):
    name: str = Field("vit_tiny_patch16_224", description="Any timm ViT name; built at data.image_size.")
    fusion: Literal["early", "late"] = Field("early", description="RGB-D fusion: 4-channel patch embedding (early) or a separate depth embedding added to the RGB tokens (late).")
    pretrained: bool = Field(False, description="Load timm's pretrained RGB weights (downloads; needs network).")
    checkpoint: Optional[str] = Field(None, description="Local .safetensors/.pth backbone weights: a timm ViT state dict, or a ViTPose (mmpose) / HaMeR checkpoint (its backbone.* part).")
    checkpoint_format: Literal["auto", "timm", "vitpose", "hamer"] = Field("auto", description="Layout of model.backbone.checkpoint: auto (from its keys), timm, or vitpose/hamer (the original ViTPose ViT: the backbone is built without class token and with the patch projection padded by 2, as the original; set it without a checkpoint to rebuild such a model).")
    allow_partial: bool = Field(False, description="Load a checkpoint that leaves more than 10% of the backbone's tensors unloaded (a warning instead of an error).")
    drop_path: float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate.")
    stem: Literal["patch", "conv"] = Field("patch", description="Patch embedding: the ViT's own strided patch projection, or a convolutional stem (3x3 stride-2 convolutions with BatchNorm, then a 1x1 projection; Xiao et al. 2021) with the same token grid, which trains much faster from scratch.")
    stem_depth: int = Field(1, ge=1, le=4, description="3x3 convolutions per stride-2 stage of the conv stem (the first strided, the others stride 1). Only with stem: conv.")


class HeadConfig(_Section):
    depth: int = Field(2, ge=1, description="Transformer decoder layers.")
    dim: int = Field(256, ge=8, description="Decoder width.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    mlp_ratio: float = Field(4.0, gt=0, le=64, description="Decoder MLP width / dim.")
    query: Literal["learned", "zero"] = Field("zero", description="The single query token: learned, or zero (HaMeR).")
    ief_iters: int = Field(1, ge=1, description="Iterative error feedback steps of the parameter regressor.")
    init_pose: Literal["identity", "mean"] = Field("mean", description="Initial hand pose: identity rotations or the MANO file's hands_mean.")
    hand_pose: Literal["rot6d", "pca"] = Field("rot6d", description="How the head outputs the 15 hand-joint rotations: each in 6D (HaMeR), or as coefficients of the MANO file's pose PCA around hands_mean (needs init_pose: mean).")
    pca_components: int = Field(45, ge=1, le=45, description="With hand_pose: pca, the leading PCA components the head regresses (45 = every pose MANO can take).")


class RefinerConfig(_Section):
    enabled: bool = Field(True, description="GCN mesh refinement; false makes refined equal coarse.")
    hidden: int = Field(64, ge=4, description="GCN feature width.")
    layers: int = Field(3, ge=1, description="Graph convolution layers.")
    coarse_vertices: int = Field(195, ge=16, le=778, description="Vertices of the coarsened mesh the GCN runs on (778 = full mesh).")


class ModelConfig(_Section):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    refiner: RefinerConfig = Field(default_factory=RefinerConfig)
    focal_length: float = Field(5000.0, gt=0, le=1e6, description="HaMeR camera focal length in pixels for a crop of the larger image side; principal point at the crop centre.")
    token_keypoints: bool = Field(False, description="A linear 2D keypoint regressor on the mean-pooled backbone tokens (pred['token_keypoints_2d'], crop units relative to the wrist), for the `token_keypoint_2d` loss term: a direct 2D signal for a backbone trained from scratch, the part ViTPose pretraining plays for HaMeR's.")
    keypoint_heatmaps: bool = Field(False, description="A heatmap decoder on the backbone's token grid (two stride-2 transposed convolutions and a 1x1 convolution: pred['keypoint_heatmaps'] [B,21,4Hp,4Wp]), for the `keypoint_heatmap` loss term: every token learns where the joints are, ViTPose's training signal.")
    heatmap_channels: int = Field(64, ge=1, le=1024, description="Width of the heatmap decoder (with keypoint_heatmaps).")


# ---------------------------------------------------------------------------------------- optim
_Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class LrMultConfig(_Section):
    backbone: float = Field(1.0, ge=0, le=1000)
    head: float = Field(1.0, ge=0, le=1000)
    refiner: float = Field(1.0, ge=0, le=1000)


class OptimConfig(_Section):
    lr: float = Field(3e-4, ge=0, le=1, description="AdamW base learning rate (0 freezes the weights: `utnet overfit` must then FAIL).")
    weight_decay: float = Field(1e-4, ge=0, le=1)
    betas: tuple[_Beta, _Beta] = Field((0.9, 0.999), description="AdamW's moment decay rates, each in [0, 1).")
    lr_mult: LrMultConfig = Field(default_factory=LrMultConfig, description="Per parameter group multipliers of lr.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="After warmup: cosine decay to 0 at train.max_steps, or constant.")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup, in optimizer steps.")
    clip_grad_norm: float = Field(1.0, ge=0, description="Max gradient norm; 0 disables clipping (the norm is still logged).")


# ---------------------------------------------------------------------------------------- train
# The metrics train.best_metric may name: the lower-is-better errors (mm) of
# utnet.engine.metrics.summarize, per model output. best/ keeps the checkpoint with the lowest value,
# so F-scores, AUCs and num_samples (higher is better, or no quality at all) are not allowed.
LOWER_IS_BETTER_METRICS = ("mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe")
BEST_METRICS = tuple(f"{output}/{name}" for output in ("refined", "coarse") for name in LOWER_IS_BETTER_METRICS)


class TrainConfig(_Section):
    max_steps: int = Field(1500, ge=1, description="Optimizer steps.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps per optimizer step.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no")
    log_every: int = Field(20, ge=1, description="Optimizer steps between log lines and scalar logs.")
    eval_every: int = Field(500, ge=0, description="Optimizer steps between evaluations on val (0: only at the end).")
    checkpoint_every: int = Field(500, ge=0, description="Optimizer steps between checkpoints (0: only at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept.")
    image_every: int = Field(500, ge=0, description="Optimizer steps between tensorboard images (0: never).")
    debug_batches: int = Field(3, ge=0, description="First batches for which the data-statistics block is printed.")
    max_nonfinite_steps: int = Field(20, ge=1, description="Consecutive skipped non-finite steps before the run stops.")
    best_metric: str = Field("refined/pa_mpjpe", description="Validation metric whose lowest value selects best/: <refined|coarse>/<mpjpe|pa_mpjpe|mpvpe|pa_mpvpe>.")
    loss_balance_every: Optional[int] = Field(100, ge=0, description="Optimizer steps between measurements of each weighted loss term's share of the gradient on the backbone's output tokens (tensorboard grad_share/<term>; a `loss balance` table at the first step; warnings under 1% or over 95%). Each measurement costs one partial backward per term (benchmarks/bench_balance.py, default config: ~0.3 of a training step); null: train.log_every; 0: never.")
    find_unused_parameters: bool = Field(False, description="Passed to DDP (accelerate's DistributedDataParallelKwargs): needed when some trainable parameters get no gradient, which the first step reports.")

    @field_validator("best_metric")
    @classmethod
    def _lower_is_better(cls, v):
        if v not in BEST_METRICS:
            raise ValueError(f"must be a lower-is-better metric, one of {', '.join(BEST_METRICS)}")
        return v


class EvalConfig(_Section):
    batch_size: int = Field(32, ge=1, description="Samples per batch per process.")
    split: Literal["val", "evaluation"] = Field("val", description="Split `utnet eval` scores.")
    grid_samples: int = Field(16, ge=0, description="Predictions drawn in the PNG grid.")
    max_samples: Optional[int] = Field(None, ge=1, description="Score only the first N samples of the split (null: all of it).")


class ExperimentConfig(_Section):
    seed: int = Field(0, description="Seed of model init, data order and augmentation.")
    output_dir: str = Field("runs/synthetic", description="Run directory (config.yaml, checkpoints/, logs, metrics.json).")
    loss_plugins: list[str] = Field(default_factory=list, description="Modules imported before the loss section is validated (they register loss terms).")
    data: DataConfig = Field(default_factory=DataConfig)
    mano: ManoConfig = Field(default_factory=ManoConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Loss terms: registered name (or any name with `type:`) -> that plugin's config.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


# -------------------------------------------------------------------------------------- loading
def _fmt_value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    text = text.replace("\n...", "").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError([f"{'.'.join(keys[: i + 1])}: is not a section, cannot set {dotted} (got {_fmt_value(child)})"])
        node = child
    node[keys[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader that also finds every mapping key given twice (plain YAML keeps the last one silently)."""

    def load_checked(self, where: str) -> tuple[Any, list[str]]:
        """(the document, one problem line per repeated key: its dotted path, line and first line, `where`)."""
        node = self.get_single_node()
        problems: list[str] = []
        self._find_repeats(node, "", where, problems)
        return (self.construct_document(node) if node is not None else None), problems

    def _find_repeats(self, node, prefix: str, where: str, problems: list[str]) -> None:
        if isinstance(node, yaml.MappingNode):
            first_line = {}
            for key_node, value_node in node.value:
                key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                dotted = f"{prefix}.{key_node.value}" if prefix else str(getattr(key_node, "value", "?"))
                if key is not None and key_node.value != "<<":  # "<<" is YAML's merge key, not a repeat
                    mark = key_node.start_mark
                    if key in first_line:
                        first = first_line[key]
                        at = (f"line {mark.line + 1}, columns {first.column + 1} and {mark.column + 1}" if first.line == mark.line
                              else f"lines {first.line + 1} and {mark.line + 1}")
                        problems.append(f"{dotted}: key given twice in {where} ({at}); remove one (got {key_node.value!r})")
                    else:
                        first_line[key] = mark
                self._find_repeats(value_node, dotted, where, problems)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._find_repeats(item, f"{prefix}.{i}" if prefix else str(i), where, problems)


def _load_yaml(text: str, where: str) -> tuple[Any, list[str]]:
    """Parse YAML safely: (data, repeated-key problems). Raises yaml.YAMLError on a syntax error."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.load_checked(where)
    finally:
        loader.dispose()


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError([f"--set {item}: expected KEY=VALUE (got {item!r})"])
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {item}: empty key (got {item!r})"])
    try:
        value, repeats = _load_yaml(raw, f"--set {key}") if raw.strip() else (None, [])
    except yaml.YAMLError as err:
        raise ConfigError([f"{key}: --set value is not valid YAML: {str(err).splitlines()[0]} (got {raw!r})"])
    if repeats:
        raise ConfigError([f"{key}.{line}" for line in repeats])
    return key, value


def _read_yaml(path: Path) -> tuple[dict, list[str]]:
    """(the file's mapping, one problem line per key given twice). Raises ConfigError when it cannot be parsed."""
    if not path.is_file():
        raise ConfigError([f"config: file not found: {path} (got {str(path)!r})"])
    try:
        data, repeats = _load_yaml(path.read_text(), str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"config: YAML syntax error in {path} at {where}: {problem} (got {str(path)!r})"])
    if data is None:
        return {}, repeats
    if not isinstance(data, dict):
        raise ConfigError([f"config: {path} must hold a mapping of sections (got {_fmt_value(data)})"])
    return data, repeats


def _lookup(tree: Any, loc: tuple) -> Any:
    node = tree
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, (list, tuple)) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def _user_loc(loc) -> tuple:
    """A pydantic error location without the union member / literal tags pydantic appends: the user's keys."""
    return tuple(k for k in loc if isinstance(k, int) or not (isinstance(k, str) and ("[" in k or k in {"literal['ho3d','smplx']", "list[int]"})))


def _validation_lines(err: ValidationError, tree: dict) -> list[str]:
    lines = []
    for e in err.errors():
        user_loc = _user_loc(e["loc"])
        dotted = ".".join(str(k) for k in user_loc)
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = e["msg"]
            if e["type"] != "missing":
                value = _lookup(tree, user_loc) if _lookup(tree, user_loc) is not None else value
        lines.append(f"{dotted}: {message} (got {_fmt_value(value)})")
    return list(dict.fromkeys(lines))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML (default configs/synthetic.yaml), apply `KEY=VALUE` overrides, validate.

    Override values are parsed as YAML (`optim.lr=3e-4`, `data.val_sequences=[A,B]`). Raises
    ConfigError listing every problem with its dotted path.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    tree, problems = _read_yaml(path)
    for item in overrides:  # a bad --set is reported with the rest; the others still apply
        try:
            key, value = _parse_override(item)
            _set_dotted(tree, key, value)
        except ConfigError as err:
            problems += err.lines

    # Every stage runs even when an earlier one found problems, so one run lists them all: the later
    # stages see the schema's defaults in place of the invalid values (and say nothing about those keys).
    cfg, schema_problems, invalid = _validate_leniently(tree)
    problems += schema_problems
    if cfg is not None:
        import losses  # the loss section is validated by the plugin registry (plugins may add terms)

        loss_problems = losses.check_loss_config(cfg.loss, list(cfg.loss_plugins))
        problems += [f"{p}: {msg} (got {_fmt_value(v)})" for p, msg, v in loss_problems]
        invalid += [p for p, _, _ in loss_problems]
        if not loss_problems:
            # Store every term with its plugin's defaults filled in, so config.yaml says what ran.
            cfg.loss = losses.resolve_loss_config(cfg.loss, list(cfg.loss_plugins))
        try:
            _check_combinations(cfg)
        except ConfigError as err:
            problems += [line for line in err.lines if not any(key in line for key in invalid)]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return cfg


def _validate_leniently(tree: dict) -> tuple[Optional[ExperimentConfig], list[str], list[str]]:
    """(the config with schema defaults in place of every invalid value, one line per problem, the dotted
    keys of the invalid values). The config is None only if even the repaired tree does not validate."""
    try:
        return ExperimentConfig.model_validate(tree), [], []
    except ValidationError as err:
        lines, locs = _validation_lines(err, tree), [_user_loc(e["loc"]) for e in err.errors()]
    repaired = copy.deepcopy(tree)
    for loc in locs:  # drop the innermost mapping key on the error's path: the default takes its place
        node, parent, key = repaired, None, None
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                break
            parent, key, node = node, part, node[part]
        if parent is not None:
            parent.pop(key, None)
    try:
        cfg = ExperimentConfig.model_validate(repaired)
    except ValidationError:
        cfg = None
    return cfg, lines, [".".join(str(k) for k in loc) for loc in locs]


def _check_combinations(cfg: ExperimentConfig) -> None:
    """Settings that are valid alone but not together: one line each, raised as one ConfigError."""
    problems = []
    backbone = cfg.model.backbone
    if backbone.stem != "conv" and backbone.stem_depth != 1:
        problems.append(f"model.backbone.stem_depth: only applies to model.backbone.stem: conv "
                        f"(stem is {backbone.stem!r}; got {backbone.stem_depth})")
    # loss terms that read an auxiliary output only its model flag builds (computed and logged even at weight 0)
    for term_type, flag, output in (("token_keypoint_2d", "token_keypoints", "token_keypoints_2d"),
                                    ("keypoint_heatmap", "keypoint_heatmaps", "keypoint_heatmaps")):
        if getattr(cfg.model, flag):
            continue
        for name, term in cfg.loss.items():
            if term.get("type", name) == term_type:
                problems.append(f"loss.{name}: supervises pred['{output}'], which only a model with "
                                f"model.{flag}: true has (got model.{flag}: false)")
    if problems:
        raise ConfigError(problems)


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The fully resolved config (defaults filled in) as YAML, in schema order."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def flatten_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Dotted keys -> scalar values (lists become strings): the form tensorboard's hparams accept."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    walk("", cfg.model_dump(mode="json"))
    return flat
