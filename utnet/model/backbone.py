"""A timm Vision Transformer on RGB-D crops: early (4-channel input layer) or late depth fusion.

Plain ViTs (a strided patch projection) and timm's hybrid ViTs (a ResNet stem before the patch
projection, e.g. vit_tiny_r_s16_p8_224) both work: the input layer is the first 3-channel
convolution of the patch embedding, and the token grid is whatever the patch embedding reports.

Weights come from timm (`pretrained: true`, timm's own download) and/or a local checkpoint
(`checkpoint: PATH`, .safetensors or .pth): a timm ViT state dict, or the ViT of ViTPose (mmpose) or
HaMeR (`checkpoint_format`, detected from the keys by default). The ViTPose/HaMeR ViT has no class
token, adds its position embedding's first slot to every patch token and pads its patch projection
by 2 pixels; a backbone built for such a checkpoint (`layout="vitpose"`) is a timm ViT without class
token whose patch projection pads by 2, so the mapped weights give the original's features.
A checkpoint that leaves more than PARTIAL_LOAD_LIMIT of the backbone's tensors unloaded is an
error unless `allow_partial`.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from utnet.errors import UserError
from utnet.model.weights import (ORIGINAL_VIT_FORMATS, detect_checkpoint_format, original_vit_to_timm,
                                 read_state_dict, split_original_vit)

CHECKPOINT_KEY = "model.backbone.checkpoint"
# More than this share of the backbone's tensors left at their initialisation is an error (training a
# large ViT from random init by accident is the costliest silent failure); allow_partial makes it a warning.
PARTIAL_LOAD_LIMIT = 0.10
# The original ViTPose ViT's patch projection padding, 4 + 2 * (ratio // 2 - 1) at its ratio 1.
VITPOSE_PATCH_PADDING = 2
# Keys printed per side in a load report.
_SHOWN_KEYS = 5


class Backbone(nn.Module):
    """timm ViT built at the crop size; `forward(rgb, depth) -> (tokens, feature_map)`.

    Fusion `early`: the input layer (patch projection, or a hybrid's first stem convolution) takes
    4 channels (RGB + depth); its depth filters start as the mean of the RGB filters (pretrained or
    random), so pretrained RGB features carry over.
    Fusion `late`: a separate depth patch embedding (`depth_embed`, one convolution whose kernel and
    stride are the token grid's cell size), zero-initialised, is added to the RGB patch tokens
    before the position embedding, so a pretrained ViT starts unchanged.
    Layout `timm`: timm's ViT as named. Layout `vitpose`: the same ViT without class token and with
    a patch projection padded by VITPOSE_PATCH_PADDING (the ViTPose/HaMeR ViT; plain ViTs only).
    """

    def __init__(self, name: str, image_size: tuple[int, int], fusion: str = "early",
                 pretrained: bool = False, drop_path: float = 0.0, stem: str = "patch",
                 stem_depth: int = 1, layout: str = "timm"):
        super().__init__()
        if layout not in ("timm", "vitpose"):
            raise ValueError(f"layout must be 'timm' or 'vitpose' (got {layout!r})")
        # the original ViTPose ViT has no class token: its sequence is the patch tokens alone
        no_class = {"class_token": False, "global_pool": ""} if layout == "vitpose" else {}
        try:
            vit = timm.create_model(name, pretrained=pretrained, img_size=tuple(image_size), num_classes=0,
                                    drop_path_rate=drop_path, **no_class)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise UserError(f"model.backbone.name: {err}") from None
        except AssertionError as err:  # timm asserts on an input size its stem cannot tile
            raise UserError(f"data.image_size: {list(image_size)} does not fit {name}"
                            f"{': ' + str(err) if str(err) else ''}") from None
        if not isinstance(vit, VisionTransformer):
            raise UserError(f"model.backbone.name: '{name}' is a {type(vit).__name__}, not a timm VisionTransformer")
        # Pooling/classifier parts that forward_features never uses would hold gradient-less parameters.
        vit.fc_norm, vit.head_drop, vit.head = nn.Identity(), nn.Identity(), nn.Identity()
        vit.attn_pool = None
        self.vit = vit
        self.fusion = fusion
        self.name = name
        self.layout = layout
        self.stem = stem
        self.image_size = tuple(image_size)
        self.embed_dim = vit.embed_dim
        self.grid_size = tuple(vit.patch_embed.grid_size)
        if stem == "conv":
            vit.patch_embed.proj = conv_stem(vit.patch_embed.proj, name, stem_depth)
        elif stem != "patch":
            raise UserError(f"model.backbone.stem: must be 'patch' or 'conv' (got {stem!r})")
        if any(size % cells for size, cells in zip(self.image_size, self.grid_size)):
            raise UserError(f"data.image_size: {list(image_size)} is not a multiple of {name}'s patch size "
                            f"(its {self.grid_size[0]}x{self.grid_size[1]} token grid would leave pixels uncovered)")
        self.cell_size = tuple(size // cells for size, cells in zip(self.image_size, self.grid_size))
        self.input_conv_name = _input_conv_name(vit.patch_embed, name)
        if layout == "vitpose" and stem == "patch":
            _pad_patch_projection(vit.patch_embed, name, self.grid_size)
        if fusion == "early":
            _set_submodule(vit.patch_embed, self.input_conv_name,
                           _add_depth_channel(vit.patch_embed.get_submodule(self.input_conv_name)))
            self.depth_embed = None
        elif fusion == "late":
            self.depth_embed = nn.Conv2d(1, vit.embed_dim, self.cell_size, self.cell_size)
            nn.init.zeros_(self.depth_embed.weight)
            nn.init.zeros_(self.depth_embed.bias)
        else:
            raise UserError(f"model.backbone.fusion: must be 'early' or 'late' (got {fusion!r})")

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb [B,3,H,W] ImageNet-normalised, depth [B,1,H,W] in [0,1] (0 = no measurement).

        Returns tokens [B,N,D] (patch tokens only, row-major over the patch grid, after the final
        norm) and the same tokens as a feature map [B,D,Hp,Wp] whose cell (i, j) covers crop pixels
        [p i, p (i+1)) x [q j, q (j+1)) for the grid's cell size (p, q) = `cell_size` (the patch
        size of a plain ViT, the stem's stride times the patch size of a hybrid one).
        """
        vit = self.vit
        if self.fusion == "early":
            x = vit.patch_embed(torch.cat([rgb, depth], dim=1))
        else:
            x = vit.patch_embed(rgb)
            depth_tokens = self.depth_embed(depth)  # [B,D,Hp,Wp]
            # a ViT with dynamic_img_size (e.g. timm's test_vit) embeds patches as NHWC, others as [B,N,D]
            x = x + (depth_tokens.permute(0, 2, 3, 1) if x.dim() == 4 else depth_tokens.flatten(2).transpose(1, 2))
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        x = vit.norm(x)
        tokens = x[:, vit.num_prefix_tokens:]
        Hp, Wp = self.grid_size
        fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, Hp, Wp)
        return tokens, fmap

    def load_checkpoint(self, path: str | Path, checkpoint_format: str = "auto",
                        allow_partial: bool = False) -> dict:
        """Load a backbone checkpoint (.safetensors or .pth) in `checkpoint_format` (see `load_state`)."""
        state = read_state_dict(path, CHECKPOINT_KEY)
        return self.load_state(state, path, resolve_format(state, checkpoint_format), allow_partial)

    def load_state(self, state: dict[str, torch.Tensor], path: str | Path, checkpoint_format: str,
                   allow_partial: bool = False) -> dict:
        """Load a state dict read from `path` in a resolved `checkpoint_format` (timm, vitpose, hamer).

        timm: keys as timm names them. vitpose/hamer: the original ViTPose ViT, mapped by
        `utnet.model.weights.original_vit_to_timm` (needs layout `vitpose`); the file's other modules
        (heads, MANO, discriminator) are ignored and counted. An RGB input layer [D,3,p,p] is adapted to
        early fusion (depth filters = mean of RGB filters); a position embedding of another grid is
        resampled. Keys `depth_embed.*` (late fusion) are optional, and so is a conv stem (`stem: conv`)
        that replaces the patch projection: both are new by configuration.
        A shape that does not fit raises UserError naming the key. More than PARTIAL_LOAD_LIMIT of the
        other tensors missing raises UserError with the counts and the first keys on both sides, unless
        `allow_partial`; any missing or unexpected key is otherwise reported in one warning.
        Returns {"format", "loaded", "expected", "missing", "unexpected", "ignored": {module: tensors}}.
        """
        ignored: dict[str, int] = {}
        if checkpoint_format in ORIGINAL_VIT_FORMATS:
            if self.layout != "vitpose":
                raise UserError(f"{CHECKPOINT_KEY}: {path} is a {checkpoint_format} checkpoint (the original ViTPose ViT) "
                                f"but the backbone was built in the timm layout")
            vit_state, ignored = split_original_vit(state, checkpoint_format, path, CHECKPOINT_KEY)
            state = original_vit_to_timm(vit_state, self.grid_size)
        depth_state = {k[len("depth_embed."):]: v for k, v in state.items() if k.startswith("depth_embed.")}
        state = {k: v for k, v in state.items() if not k.startswith("depth_embed.")}
        own = self.vit.state_dict()
        proj_key = f"patch_embed.{self.input_conv_name}.weight"
        if self.fusion == "early" and proj_key in state and state[proj_key].dim() == 4 \
                and state[proj_key].shape[1] == 3 and own[proj_key].shape[1] == 4:
            state[proj_key] = torch.cat([state[proj_key], state[proj_key].mean(1, keepdim=True)], dim=1)
        if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape \
                and state["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]:
            prefix = 0 if self.vit.no_embed_class else self.vit.num_prefix_tokens
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(self.grid_size),
                                                        num_prefix_tokens=prefix)
        targets = {**own, **({f"depth_embed.{k}": v for k, v in self.depth_embed.state_dict().items()}
                             if self.depth_embed is not None else {})}
        loaded = {**state, **{f"depth_embed.{k}": v for k, v in depth_state.items()}}
        for key, value in loaded.items():
            if key in targets and tuple(value.shape) != tuple(targets[key].shape):
                raise UserError(f"{CHECKPOINT_KEY}: {path}: key '{key}' has shape {tuple(value.shape)}, "
                                f"the model needs {tuple(targets[key].shape)}")
        result = self.vit.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if depth_state and self.depth_embed is None:
            unexpected += [f"depth_embed.{k}" for k in depth_state]
        elif depth_state:
            res = self.depth_embed.load_state_dict(depth_state, strict=False)
            missing += [f"depth_embed.{k}" for k in res.missing_keys]
            unexpected += [f"depth_embed.{k}" for k in res.unexpected_keys]
        # a conv stem replaces the patch projection: no checkpoint of a patch-projection ViT has it
        new = ("patch_embed.proj.",) if self.stem == "conv" else ()
        expected = [k for k in own if not k.startswith(new)]
        expected_set = set(expected)
        missing_expected = [k for k in missing if k in expected_set]
        share = len(missing_expected) / max(len(expected), 1)
        counts = (f"{len(missing_expected)} of the backbone's {len(expected)} tensors missing "
                  f"(first: {_first(missing_expected)}), {len(unexpected)} unexpected (first: {_first(unexpected)})")
        if share > PARTIAL_LOAD_LIMIT and not allow_partial:
            raise UserError(f"{CHECKPOINT_KEY}: {path} ({checkpoint_format} layout) does not fit model.backbone.name "
                            f"'{self.name}': {counts}; more than "
                            f"{PARTIAL_LOAD_LIMIT:.0%} left unloaded (set model.backbone.allow_partial: true to load "
                            f"it anyway, or model.backbone.checkpoint_format)")
        if missing or unexpected:
            warnings.warn(f"{CHECKPOINT_KEY}: {path}: {len(missing)} missing key(s) {missing}, "
                          f"{len(unexpected)} unexpected key(s) {unexpected}"
                          + (f" (partial load allowed: {counts})" if share > PARTIAL_LOAD_LIMIT else ""), stacklevel=2)
        return {"format": checkpoint_format, "loaded": len(expected) - len(missing_expected), "expected": len(expected),
                "missing": missing, "unexpected": unexpected, "ignored": ignored}


def resolve_format(state: dict[str, torch.Tensor], checkpoint_format: str) -> str:
    """`model.backbone.checkpoint_format` for a read state dict: 'auto' becomes the detected layout."""
    return detect_checkpoint_format(state) if checkpoint_format == "auto" else checkpoint_format


def load_report(path: str | Path, report: dict) -> str:
    """One line saying what a backbone checkpoint load did (layout, tensors loaded, other modules ignored)."""
    ignored = report["ignored"]
    other = (f"; ignored {sum(ignored.values())} tensors of other modules "
             f"({', '.join(f'{m}: {n}' for m, n in sorted(ignored.items()))})" if ignored else "")
    return (f"{CHECKPOINT_KEY}: {path} ({report['format']} layout): loaded {report['loaded']} of the backbone's "
            f"{report['expected']} tensors{other}")


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "") if keys else "none"


def conv_stem(patch_proj: nn.Module, model_name: str, depth: int = 1) -> nn.Sequential:
    """A convolutional stem with the patch projection's token grid: log2(p) stages of `depth` 3x3
    convolutions each (the first of a stage stride 2, the others stride 1; BatchNorm, ReLU; widths
    doubling up to the embedding width) and a 1x1 projection.

    A ViT learns from scratch far faster on such a stem than on one p x p strided projection (Xiao et
    al., "Early convolutions help transformers see better", 2021). It replaces the patch projection
    (of a hybrid ViT too, on its stem's features); the projection's stride must be a square power of two.
    """
    stride = patch_proj.stride if isinstance(patch_proj, nn.Conv2d) else None
    if stride is None or stride[0] != stride[1] or stride[0] < 2 or stride[0] & (stride[0] - 1):
        raise UserError(f"model.backbone.stem: 'conv' needs a patch projection with a square power-of-two stride; "
                        f"'{model_name}' has patch stride {stride}")
    levels = stride[0].bit_length() - 1
    embed_dim = patch_proj.out_channels
    widths = [max(embed_dim >> (levels - 1 - i), 8) for i in range(levels)]
    layers, channels = [], patch_proj.in_channels
    for width in widths:
        for i in range(depth):
            layers += [nn.Conv2d(channels, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
    layers.append(nn.Conv2d(channels, embed_dim, 1))
    return nn.Sequential(*layers)


def _input_conv_name(patch_embed: nn.Module, model_name: str) -> str:
    """Dotted name (inside the patch embedding) of the first convolution that reads the 3 RGB channels."""
    for module_name, module in patch_embed.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module_name
    raise UserError(f"model.backbone.name: '{model_name}' has no 3-channel input convolution in its patch embedding")


def _pad_patch_projection(patch_embed: nn.Module, model_name: str, grid_size: tuple[int, int]) -> None:
    """Pad the patch projection by VITPOSE_PATCH_PADDING (the original ViTPose ViT's); the token grid
    must stay the same, which holds for a stride-16 kernel-16 projection on multiples of 16."""
    proj = getattr(patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or getattr(patch_embed, "backbone", None) is not None:
        raise UserError(f"model.backbone.checkpoint_format: a ViTPose/HaMeR checkpoint needs a plain ViT "
                        f"(one patch projection); '{model_name}' is not one")
    size = [(s + 2 * VITPOSE_PATCH_PADDING - k) // st + 1 for s, k, st in
            zip(patch_embed.img_size, proj.kernel_size, proj.stride)]
    if tuple(size) != tuple(grid_size):
        raise UserError(f"data.image_size: {list(patch_embed.img_size)} with the ViTPose patch padding "
                        f"{VITPOSE_PATCH_PADDING} gives a {size[0]}x{size[1]} grid, not {grid_size[0]}x{grid_size[1]}")
    proj.padding = (VITPOSE_PATCH_PADDING, VITPOSE_PATCH_PADDING)


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _add_depth_channel(rgb_conv: nn.Conv2d) -> nn.Conv2d:
    """A 4-channel copy of the RGB input convolution (same class, so timm's same-padding convs keep
    their padding) whose depth filters are the mean of the RGB ones."""
    conv = copy.deepcopy(rgb_conv)
    with torch.no_grad():
        conv.weight = nn.Parameter(torch.cat([rgb_conv.weight, rgb_conv.weight.mean(1, keepdim=True)], dim=1))
    conv.in_channels = 4
    return conv


def build_backbone(backbone_cfg, image_size: tuple[int, int], log=print) -> Backbone:
    """Build from `model.backbone` (name, fusion, pretrained, checkpoint, checkpoint_format, allow_partial,
    drop_path, stem, stem_depth) at `data.image_size`.

    The layout follows the checkpoint format: a ViTPose/HaMeR checkpoint (named, or detected from the
    checkpoint's keys under 'auto') builds the `vitpose` layout; `checkpoint_format: vitpose` without a
    checkpoint does too (to rebuild a model trained from one without the file). `log` gets the load report.
    """
    fmt, state = backbone_cfg.checkpoint_format, None
    if backbone_cfg.checkpoint:
        state = read_state_dict(backbone_cfg.checkpoint, CHECKPOINT_KEY)
        fmt = resolve_format(state, fmt)
    backbone = Backbone(backbone_cfg.name, image_size, fusion=backbone_cfg.fusion,
                        pretrained=backbone_cfg.pretrained, drop_path=backbone_cfg.drop_path, stem=backbone_cfg.stem,
                        stem_depth=backbone_cfg.stem_depth, layout="vitpose" if fmt in ORIGINAL_VIT_FORMATS else "timm")
    if state is not None:
        report = backbone.load_state(state, backbone_cfg.checkpoint, fmt, backbone_cfg.allow_partial)
        log(load_report(backbone_cfg.checkpoint, report))
    return backbone
