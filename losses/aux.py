"""`aux`: other terms' elementwise errors applied to the coarse (pre-refinement) prediction."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field, field_validator

from losses.base import LossConfig, LossTerm
from losses.registry import register_loss, registered_losses


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
            {term: known[term](None, name=f"{self.name}[{term}]") for term in self.config.terms})
        for sub in self.subterms.values():
            sub.pred_label = "pred['coarse']"

    def parts(self, pred, batch):
        coarse = self.from_pred(pred, "coarse")
        return [(term, *sub.elementwise(coarse, batch)) for term, sub in self.subterms.items()]
