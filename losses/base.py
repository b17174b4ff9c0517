"""The base config and base class of every loss term: the one place where reductions and weights apply.

A plugin subclasses `LossTerm`, gives it a nested `Config(LossConfig)` with its own options and
implements `elementwise(pred, batch) -> (error, weight)`. Everything else (reduction, weight,
statistics, UTNET_DEBUG_LOSS output) happens here, identically for every term, so `sum`, `mean`
and `batch_mean` mean the same thing everywhere (see `reduce_error`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import ClassVar, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from losses import debug

Reduction = Literal["sum", "mean", "batch_mean"]


class LossConfig(BaseModel):
    """Options every term has. Plugins subclass this as their nested `Config`; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="multiplies the reduced error")
    reduction: Reduction = Field(
        "mean",
        description="sum: over every element; batch_mean: sum / batch size; "
                    "mean: sum / total weight of the elements (0 when nothing has weight)",
    )
    ramp: Optional[tuple[int, int]] = Field(
        None,
        description="[start, end] optimizer steps: the weight is 0 before `start` and grows linearly to "
                    "`weight` at `end` (null: the full weight from the first step)",
    )

    @field_validator("ramp")
    @classmethod
    def _ramp_in_order(cls, ramp):
        if ramp is not None and not 0 <= ramp[0] <= ramp[1]:
            raise ValueError(f"needs 0 <= start <= end (got {list(ramp)})")
        return ramp


def ramp_factor(ramp: tuple[int, int] | None, step: int) -> float:
    """The share of a term's weight in force after `step` optimizer steps: 0 before ramp[0], 1 from
    ramp[1] on, linear in between; 1 without a ramp."""
    if ramp is None:
        return 1.0
    start, end = ramp
    if step >= end:
        return 1.0
    return 0.0 if step < start else (step - start) / (end - start)


class LossInputError(KeyError):
    """A term needs a key that the prediction or the batch does not have."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0])


def align(error: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast error and weight to one shape, aligning them on the leading (batch) dimension.

    The one with fewer dimensions gets trailing singleton dimensions first, so a per-sample
    weight [B] goes with an error [B,21,3]. Raises ValueError when they do not broadcast.
    """
    if error.dim() == 0 or weight.dim() == 0:
        raise ValueError(f"error {tuple(error.shape)} and weight {tuple(weight.shape)} need a batch dimension")
    ndim = max(error.dim(), weight.dim())
    error = error.reshape(error.shape + (1,) * (ndim - error.dim()))
    weight = weight.reshape(weight.shape + (1,) * (ndim - weight.dim()))
    try:
        error, weight = torch.broadcast_tensors(error, weight)
    except RuntimeError:
        raise ValueError(f"error {tuple(error.shape)} and weight {tuple(weight.shape)} do not broadcast") from None
    return error, weight


def reduce_error(error: torch.Tensor, weight: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce an elementwise error with its weights to a 0-d float32 tensor.

    With w the weight broadcast to the error's shape (see `align`) and B the first dimension:
    sum = sum(w * e); batch_mean = sum(w * e) / B; mean = sum(w * e) / sum(w), and 0 (not NaN,
    with a finite zero gradient) when sum(w) == 0.
    """
    error, weight = align(error.float(), weight.float())
    total = (weight * error).sum()
    if reduction == "sum":
        return total
    if reduction == "batch_mean":
        return total / error.shape[0]
    if reduction == "mean":
        weight_sum = weight.sum()
        # Dividing by 1 where nothing has weight keeps the value 0 and its gradient finite.
        return total / torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum))
    raise ValueError(f"unknown reduction {reduction!r} (sum, mean or batch_mean)")


def centre_on_root(points, joints, root_index: int, label: str, unit: str = "mm"):
    """points [B,N,D] minus joints[:, root_index] [B,D] (same unit and frame; 3D in mm, or 2D keypoints
    in crop units); notes both for UTNET_DEBUG_LOSS."""
    centred = points - joints[:, root_index : root_index + 1]
    debug.note(f"{label} before centring ({unit})", points)
    debug.note(f"{label} after centring ({unit})", centred)
    return centred


class LossTerm(torch.nn.Module):
    """One loss term. Subclasses set `Config` and implement `elementwise`; `forward` does the rest.

    `LossTerm(config, name)`: `config` is a `Config` instance, a mapping of its options or None
    (defaults); `name` is the term's name in the loss config (default: the registered name).
    """

    Config: ClassVar[type[LossConfig]] = LossConfig
    plugin_name: ClassVar[str | None] = None  # set by register_loss
    supports_aux: ClassVar[bool] = True  # whether `aux` may apply this term to pred["coarse"]

    def __init__(self, config: LossConfig | Mapping | None = None, name: str | None = None):
        super().__init__()
        if not isinstance(config, self.Config):
            config = self.Config.model_validate(dict(config or {}))
        self.config = config
        self.name = name or self.plugin_name or type(self).__name__
        self.pred_label = "pred"  # how messages name the prediction dict (aux: pred['coarse'])
        self.step = 0  # optimizer steps taken so far, for the `ramp` (LossSet.set_step keeps it current)
        self._debug_calls = 0

    def elementwise(self, pred: Mapping, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """(error, weight): tensors broadcastable to one shape whose first dimension is the batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement elementwise(pred, batch)")

    @property
    def weight(self) -> float:
        """The weight in force at `self.step`: config.weight times the ramp's factor."""
        return self.config.weight * ramp_factor(self.config.ramp, self.step)

    def parts(self, pred: Mapping, batch: Mapping) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(label, error, weight) triples, each reduced on its own and then summed.

        A plain term has one part, its `elementwise`. Only composite terms (`aux`) override this.
        """
        return [(self.name, *self.elementwise(pred, batch))]

    def forward(self, pred: Mapping, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Returns (self.weight * reduced error, reduced error, stats); stats are detached 0-d tensors:
        `weight_sum`, `error_mean` (weighted), `error_max` (over elements with weight > 0), prefixed
        with `<part>/` when the term has several parts."""
        debugging = self._debug_calls < debug.DEBUG_CALLS and debug.enabled()
        with debug.recording() if debugging else contextlib.nullcontext() as notes:
            parts = self.parts(pred, batch)
        raws, stats = [], {}
        for label, error, weight in parts:
            try:
                error, weight = align(error.float(), weight.float())
            except ValueError as err:
                raise ValueError(f"loss term '{self.name}' ({label}): {err}") from None
            raws.append(reduce_error(error, weight, self.config.reduction))
            prefix = f"{label}/" if len(parts) > 1 else ""
            stats.update({prefix + k: v for k, v in _part_stats(error, weight).items()})
        raw = raws[0] if len(raws) == 1 else torch.stack(raws).sum()
        value = self.weight * raw
        if debugging:
            self._debug_calls += 1
            self._print_debug(notes, parts, raws, raw, value, stats)
        return value, raw, stats

    def from_pred(self, pred: Mapping, *keys: str) -> torch.Tensor:
        """pred[k1][k2]..., or a LossInputError naming this term and the missing key."""
        return self._lookup(pred, keys, self.pred_label)

    def from_batch(self, batch: Mapping, *keys: str) -> torch.Tensor:
        """batch[k1][k2]..., or a LossInputError naming this term and the missing key."""
        return self._lookup(batch, keys, "batch")

    def check_same_shape(self, what: str, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Subtracting tensors of different shapes would broadcast silently: refuse it."""
        if predicted.shape != target.shape:
            raise ValueError(f"loss term '{self.name}': {what}: prediction {tuple(predicted.shape)} "
                             f"and ground truth {tuple(target.shape)} differ in shape")

    def _lookup(self, source: Mapping, keys: tuple[str, ...], label: str):
        for key in keys:
            if not isinstance(source, Mapping) or key not in source:
                present = ", ".join(sorted(map(str, source))) if isinstance(source, Mapping) else "not a dict"
                raise LossInputError(f"loss term '{self.name}' needs {label}['{key}'], which is missing "
                                     f"({label} has: {present or 'nothing'})")
            source, label = source[key], f"{label}['{key}']"
        return source

    def _print_debug(self, notes, parts, raws, raw, value, stats) -> None:
        lines = [f"[UTNET_DEBUG_LOSS] term '{self.name}' ({self.plugin_name}) call {self._debug_calls}/"
                 f"{debug.DEBUG_CALLS}, reduction {self.config.reduction}, weight {self.weight:g}"]
        lines += notes
        for (label, _, _), part_raw in zip(parts, raws):
            prefix = f"{label}/" if len(parts) > 1 else ""
            lines.append(f"  {label}: weight sum {stats[prefix + 'weight_sum'].item():.6g}, "
                         f"error mean {stats[prefix + 'error_mean'].item():.6g} "
                         f"max {stats[prefix + 'error_max'].item():.6g}, reduced {part_raw.item():.6g}")
        lines.append(f"  value: reduced {raw.item():.6g} x weight {self.weight:g} = {value.item():.6g}")
        debug.emit(lines)


def _part_stats(error: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    error, weight = error.detach(), weight.detach()
    counted = weight > 0
    top = torch.where(counted, error, torch.full_like(error, -torch.inf)).amax() if error.numel() else error.sum()
    return {
        "weight_sum": weight.sum(),
        "error_mean": reduce_error(error, weight, "mean"),
        "error_max": torch.where(counted.any(), top, torch.zeros_like(top)),
    }
