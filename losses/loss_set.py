"""`LossSet`: the configured loss terms as one module; calling it gives the total loss and its logs."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from losses.base import LossTerm
from losses.registry import validated_terms


class LossSet(torch.nn.Module):
    """The configured terms, in the config's order. Calling it returns (total, logs).

    `total`: 0-d tensor, the sum of every term's weighted value. `logs`: flat dict of detached
    0-d tensors, `loss/<name>` (weighted) and `loss_raw/<name>` (reduced, unweighted) per term.
    """

    def __init__(self, terms: Mapping[str, LossTerm]):
        super().__init__()
        if not terms:
            raise ValueError("a LossSet needs at least one term")
        self.terms = torch.nn.ModuleDict(terms)

    @classmethod
    def from_config(cls, mapping: Mapping, plugin_modules: Iterable[str] = ()) -> "LossSet":
        """Build from a `loss:` section (see check_loss_config); raises LossConfigError listing every problem."""
        return cls({name: plugin(config, name=name)
                    for name, (plugin, config) in validated_terms(mapping, plugin_modules).items()})

    def set_step(self, step: int) -> None:
        """Tell every term how many optimizer steps have been taken (the weight `ramp` reads it)."""
        for term in self.terms.values():
            term.step = int(step)

    def forward(self, pred: Mapping, batch: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, logs = None, {}
        for name, term in self.terms.items():
            value, raw, _ = term(pred, batch)
            logs[f"loss/{name}"] = value.detach()
            logs[f"loss_raw/{name}"] = raw.detach()
            total = value if total is None else total + value
        return total, logs
