"""The one reader of state-dict files (.safetensors, or a torch pickle read with weights_only=True).

Used for backbone checkpoints (model.backbone.checkpoint) and the model weights of training
checkpoints; any unreadable file is a UserError naming what the file is for and its path.
"""
from __future__ import annotations

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
    except Exception as err:  # any reader failure is a bad file for the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{what}: cannot read {path}: {reason}") from None
    for wrapper in ("state_dict", "model"):  # common .pth layouts: {"state_dict": {...}} / {"model": {...}}
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: {path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
