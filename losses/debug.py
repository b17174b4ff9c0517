"""UTNET_DEBUG_LOSS: a one-off look inside each loss term.

With `UTNET_DEBUG_LOSS=1` (any value but "", "0", "false", "no", "off") every term prints one
block to stderr for its first `DEBUG_CALLS` calls, on the main process only (environment
variables RANK and LOCAL_RANK unset or 0). A block holds what the term noted while computing
(`note(label, tensor)`: mean and std per coordinate, e.g. joints before and after root-centring),
then per part the error's weighted mean and its max over the elements that count, and the value.
Nothing is recorded, and nothing synchronises with the device, when debugging is off.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys

import torch

DEBUG_CALLS = 3
_OFF = {"", "0", "false", "no", "off"}
_recorder: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("utnet_loss_debug", default=None)


def enabled() -> bool:
    """True when UTNET_DEBUG_LOSS asks for blocks and this is the main process."""
    if os.environ.get("UTNET_DEBUG_LOSS", "").strip().lower() in _OFF:
        return False
    return all(os.environ.get(var, "0") in ("", "0") for var in ("RANK", "LOCAL_RANK"))


@contextlib.contextmanager
def recording():
    """Collect the `note` lines of the code run inside; yields the list they go to."""
    lines: list[str] = []
    token = _recorder.set(lines)
    try:
        yield lines
    finally:
        _recorder.reset(token)


def note(label: str, tensor: torch.Tensor) -> None:
    """Record mean and std of `tensor` per last-dimension coordinate, over all its elements."""
    lines = _recorder.get()
    if lines is None:
        return
    x = tensor.detach().float().reshape(-1, tensor.shape[-1])
    lines.append(f"  {label} {tuple(tensor.shape)}: mean {_fmt(x.mean(0))} std {_fmt(x.std(0, unbiased=False))}")


def emit(lines: list[str]) -> None:
    print("\n".join(lines), file=sys.stderr, flush=True)


def _fmt(v: torch.Tensor) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v.tolist()) + "]"
