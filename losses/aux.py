"""`aux`: other terms' elementwise errors applied to the coarse (pre-refinement) prediction."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field, field_validator

from losses.base import LossConfig, LossTerm
from losses.registry import register_loss, registered_losses
from losses.units import LengthUnit


def _applicable_to_coarse(name: str) -> str:
    known = registered_losses()
    if name not in known:
        raise ValueError(f"unknown loss term '{name}'; known: {', '.join(known)}")
    if not known[name].supports_aux:
        raise ValueError(f"'{name}' cannot be applied to pred['coarse'] by aux")
    try:
        known[name].Config()
    except ValueError as err:  # pydantic's ValidationError is one
        raise ValueError(f"'{name}' has options without defaults, and aux uses default configs: {err}") from None
    return name


@register_loss("aux")
class AuxLoss(LossTerm):
    """Supervises pred["coarse"] with the `elementwise` of each term in `terms`, each with that
    term's DEFAULT config (e.g. joint_3d: l1, root 0), and with aux's own weight and reduction.
    aux's `unit` is passed on to every sub-term with a `unit` option (joint_3d, vertex_3d), so one
    recipe in metres holds for the refined and the coarse output alike.

    Each sub-term is reduced on its own with aux's reduction and the results are summed:
    value = weight * sum_t reduce(error_t, weight_t). For `sum` and `batch_mean` that equals
    reducing all sub-terms' elements together; for `mean` it is the sum of the sub-terms'
    own means, so a term in mm and one in crop units never share one denominator.
    """

    supports_aux = False

    class Config(LossConfig):
        terms: list[Annotated[str, AfterValidator(_applicable_to_coarse)]] = Field(
            ["joint_3d", "keypoint_2d"], min_length=1,
            description="registered terms applied to pred['coarse'] with their default configs")
        unit: LengthUnit = Field("mm", description="length unit given to the sub-terms that have a `unit` option")

        @field_validator("terms")
        @classmethod
        def _distinct(cls, terms: list[str]) -> list[str]:
            if len(set(terms)) != len(terms):
                raise ValueError(f"a term is listed twice: {terms}")
            return terms

    def __init__(self, config=None, name=None):
        super().__init__(config, name)
        known = registered_losses()
        self.subterms = torch.nn.ModuleDict(
            {term: known[term](self._sub_config(known[term]), name=f"{self.name}[{term}]") for term in self.config.terms})
        for sub in self.subterms.values():
            sub.pred_label = "pred['coarse']"

    def _sub_config(self, plugin) -> dict:
        """A sub-term's options: its defaults, with aux's unit where the term has one."""
        return {"unit": self.config.unit} if "unit" in plugin.Config.model_fields else {}

    def parts(self, pred, batch):
        coarse = self.from_pred(pred, "coarse")
        return [(term, *sub.elementwise(coarse, batch)) for term, sub in self.subterms.items()]
