"""The one reader of state-dict files (.safetensors, or a torch pickle read with weights_only=True).

Used for backbone checkpoints (model.backbone.checkpoint) and the model weights of training
checkpoints; any unreadable file is a UserError naming what the file is for and its path.
Also the backbone checkpoint layouts: detection (timm, or the original ViTPose/HaMeR ViT) and the
mapping of the original ViT's keys onto timm's (docs/backbone_checkpoints.md).
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from utnet.errors import UserError


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict {name: tensor} (on the CPU) from `path`.

    .safetensors files are read with safetensors, anything else with torch.load(weights_only=True).
    The common wrappers {"state_dict": {...}} and {"model": {...}} are unwrapped and a leading
    "module." (DataParallel/DDP) is stripped from every key.

    Args:
        path: the file. what: the config key or option the file came from (e.g.
            "model.backbone.checkpoint"), the first word of every error message.
    Raises:
        UserError("<what>: ...") naming the path when the file is missing, cannot be read (truncated,
        not a weights file) or does not hold tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise UserError(f"{what}: cannot read {path}: not a weights file (the unpickler failed)") from None
        # e.g. a Lightning checkpoint whose hyper_parameters pickle a config class (HaMeR's)
        raise UserError(f"{what}: {path} holds pickled objects other than tensors, which are not loaded "
                        f"(that could run code); if you trust the file, save its state dict alone: "
                        f"torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'weights.pth')") from None
    except Exception as err:  # any reader failure is a bad file for the user
        raise UserError(f"{what}: cannot read {path}: {_first_line(err)}") from None
    for wrapper in ("state_dict", "model"):  # common .pth layouts: {"state_dict": {...}} / {"model": {...}}
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: {path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


# ------------------------------------------------------------------ backbone checkpoint layouts
# `model.backbone.checkpoint_format`: auto detects the layout from the keys.
CHECKPOINT_FORMATS = ("auto", "timm", "vitpose", "hamer")
# Layouts of the original ViTPose ViT (HaMeR's is the same module): mapped onto timm's names.
ORIGINAL_VIT_FORMATS = ("vitpose", "hamer")
_BACKBONE_PREFIX = "backbone."
# Top-level modules of a full HaMeR (Lightning) checkpoint besides the backbone.
_HAMER_MODULES = {"mano_head", "discriminator", "mano", "keypoint_3d_loss", "keypoint_2d_loss",
                  "mano_parameter_loss"}


def detect_checkpoint_format(state: dict[str, torch.Tensor]) -> str:
    """'vitpose' or 'hamer' for the original ViTPose ViT's keys (`backbone.*` or a bare `last_norm.*`),
    else 'timm'. ViTPose and HaMeR map identically; the name only says which file it looks like
    (HaMeR: a full checkpoint with its MANO head; ViTPose: mmpose's keypoint_head or the backbone alone)."""
    if not any(k.startswith(_BACKBONE_PREFIX) or k.startswith("last_norm.") for k in state):
        return "timm"
    modules = {k.split(".", 1)[0] for k in state if not k.startswith(_BACKBONE_PREFIX)}
    return "hamer" if modules & _HAMER_MODULES else "vitpose"


def split_original_vit(state: dict[str, torch.Tensor], fmt: str, path, what: str
                       ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The backbone part of a ViTPose/HaMeR state dict, in the original ViT's names without `backbone.`,
    and the number of tensors of every other top-level module ({"keypoint_head": 6, ...}, ignored).

    A file without `backbone.*` keys is taken as a bare backbone. Raises UserError("<what>_format: ...")
    when the file does not hold the original ViT (a class token, or no blocks/patch embedding).
    """
    if any(k.startswith(_BACKBONE_PREFIX) for k in state):
        vit = {k[len(_BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(_BACKBONE_PREFIX)}
        others = [k.split(".", 1)[0] for k in state if not k.startswith(_BACKBONE_PREFIX)]
    else:
        vit, others = dict(state), []
    if "cls_token" in vit:  # the original ViT has none: this is a timm layout, whose pos_embed means another thing
        raise UserError(f"{what}_format: '{fmt}' but {path} holds a class token (cls_token), which the "
                        f"ViTPose/HaMeR ViT does not have; use 'timm' or 'auto'")
    if "patch_embed.proj.weight" not in vit or not any(k.startswith("blocks.") for k in vit):
        raise UserError(f"{what}_format: '{fmt}' but {path} holds no ViTPose/HaMeR ViT keys "
                        f"(backbone.patch_embed.proj.weight, backbone.blocks.*)")
    ignored: dict[str, int] = {}
    for module in others:
        ignored[module] = ignored.get(module, 0) + 1
    return vit, ignored


def original_vit_to_timm(vit: dict[str, torch.Tensor], grid_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The original ViTPose ViT's backbone state (see `split_original_vit`) in timm's names for a timm
    ViT without class token on the token grid `grid_size` (rows, columns).

    - `last_norm.*` is timm's `norm.*`; blocks and the patch projection keep their names.
    - pos_embed [1, 1 + h*w, C]: the original adds slot 0 to every patch token (there is no class
      token in the sequence), so timm's class-token-free pos_embed [1, N, C] is the grid part,
      bicubically resampled to `grid_size` when the checkpoint's grid (h, w) differs, plus slot 0.
    """
    from timm.layers import resample_abs_pos_embed

    out = {("norm." + k[len("last_norm."):] if k.startswith("last_norm.") else k): v for k, v in vit.items()}
    if "pos_embed" in out and out["pos_embed"].dim() == 3 and out["pos_embed"].shape[1] > 1:
        pos = out["pos_embed"]
        grid = pos[:, 1:]
        old = checkpoint_grid(grid.shape[1], grid_size)
        if old != tuple(grid_size):
            grid = resample_abs_pos_embed(grid, list(grid_size), old_size=list(old), num_prefix_tokens=0)
        out["pos_embed"] = grid + pos[:, :1]
    return out


def checkpoint_grid(num_patches: int, grid_size: tuple[int, int]) -> tuple[int, int]:
    """The (rows, columns) token grid a checkpoint's position embedding of `num_patches` cells was
    trained on: the model's own grid when the count fits, else the factorisation h*w closest in
    aspect ratio to the model's (ViTPose and HaMeR train at 256x192: 16x12)."""
    if num_patches == grid_size[0] * grid_size[1]:
        return tuple(grid_size)
    aspect = grid_size[0] / grid_size[1]
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / aspect)))
