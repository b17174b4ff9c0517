"""Who drives the gradient: each loss term's share of it, and the parameters no term reaches.

`gradient_shares`: for every term with weight > 0, the norm of the gradient of its weighted value
with respect to the backbone's output tokens (pred["tokens"], on which every output depends), divided
by the sum of those norms. A term whose share is ~0 does not train the model, whatever its loss
curve says: the classic symptom of weights copied from a recipe in other units.

`LossBalance` runs it in the training loop: at the first optimizer step (a printed table whose lines
start with `loss balance`) and every `train.loss_balance_every` steps (tensorboard `grad_share/<term>`),
on the main process only, on the micro-batch that completes the optimizer step. It costs one partial
backward per term (down to the tokens, not through the backbone) on those steps and nothing otherwise.
On those steps every weighted term is evaluated once more (a plugin that counts its calls sees it).

`converted_weights`: the weights that keep every term's weighted value (so its share) under another
reduction; `utnet reweigh` prints and writes them.

`parameters_without_gradient`: trainable parameters whose .grad is still None after a backward (not in
the loss's graph; a zero gradient is in it). Under DDP on several processes such a model stops with
"Expected to have finished reduction in the prior iteration" unless train.find_unused_parameters is set.
"""
from __future__ import annotations

import torch

from utnet.engine.tracking import log_scalars

TOKENS_KEY = "tokens"  # pred[TOKENS_KEY]: the backbone's output tokens [B,N,D]
LOW_SHARE = 0.01   # a weighted term under 1% of the gradient barely trains the model
HIGH_SHARE = 0.95  # a term over 95% leaves the others without a say
PREFIX = "loss balance"
# weights written for another reduction are the other classic cause; `utnet reweigh` converts them
REDUCTION_HINT = "; weights from a recipe under another reduction: convert them with `utnet reweigh`"


def every(train_config) -> int:
    """Optimizer steps between measurements: train.loss_balance_every, or train.log_every when it is null."""
    every = train_config.loss_balance_every
    return train_config.log_every if every is None else every


def gradient_shares(loss_set, pred: dict, batch: dict, tokens: torch.Tensor) -> dict[str, dict]:
    """{term: {"weight", "reduction", "value" (weighted), "grad_norm", "share"}} for every term with
    weight > 0, in the loss set's order. Shares are grad_norm / sum of grad_norms (they sum to 1; all 0
    when no term reaches the tokens). The graph of `pred` is kept (retain_graph) for the real backward.
    """
    rows = {}
    for name, term in loss_set.terms.items():
        if term.weight <= 0:
            continue
        value = term(pred, batch)[0]
        grad = None
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value, tokens, retain_graph=True, allow_unused=True)
        rows[name] = {"weight": term.weight, "reduction": term.config.reduction, "value": value.item(),
                      "grad_norm": 0.0 if grad is None else grad.detach().float().norm().item()}
    total = sum(row["grad_norm"] for row in rows.values())
    for row in rows.values():
        row["share"] = row["grad_norm"] / total if total > 0 else 0.0
    return rows


def balance_table(step: int, rows: dict[str, dict]) -> list[str]:
    """The printed table: one `loss balance` line per weighted term."""
    lines = [f"{PREFIX} at step {step}: each weighted term's share of the gradient on the backbone's output tokens",
             f"{PREFIX}   {'term':<20} {'weight':>10} {'reduction':<10} {'weighted value':>15} {'share':>7}"]
    lines += [f"{PREFIX}   {name:<20} {row['weight']:>10.4g} {row['reduction']:<10} {row['value']:>15.6g} "
              f"{row['share'] * 100:>6.1f}%" for name, row in rows.items()]
    return lines


def balance_warnings(rows: dict[str, dict]) -> dict[str, str]:
    """{term: warning line} for the terms under LOW_SHARE or over HIGH_SHARE of the gradient."""
    out = {}
    for name, row in rows.items():
        share = row["share"] * 100
        if row["share"] < LOW_SHARE:
            out[name] = (f"{PREFIX} WARNING: {name} gets {share:.1f}% of the gradient (weight {row['weight']:g}, "
                         f"under {LOW_SHARE:.0%}): it barely trains the model; check its weight and unit against "
                         f"the other terms (e.g. mm vs m){REDUCTION_HINT}")
        elif row["share"] > HIGH_SHARE:
            out[name] = (f"{PREFIX} WARNING: {name} gets {share:.1f}% of the gradient (weight {row['weight']:g}, "
                         f"over {HIGH_SHARE:.0%}): the other terms have almost no say{REDUCTION_HINT}")
    return out


class LossBalance:
    """The measurement inside the training loop (see the module docstring).

    every: optimizer steps between measurements, besides the first step (0: never). say: where lines
    go; None on the processes other than the main one, which then do nothing.
    """

    def __init__(self, loss_set, every: int, say=None):
        self.loss_set, self.every, self.say = loss_set, every, say
        self.measured = False
        self.flagged: set[str] = set()
        self.pending: dict[str, float] = {}

    def due(self, next_step: int, syncing: bool) -> bool:
        """Whether the micro-batch that is about to be backpropagated should be measured."""
        return (self.say is not None and self.every > 0 and syncing
                and (not self.measured or next_step % self.every == 0))

    def measure(self, pred: dict, batch: dict, next_step: int, syncing: bool) -> None:
        """Call before the backward of each micro-batch; `next_step` is the optimizer step it completes."""
        if not self.due(next_step, syncing):
            return
        tokens = pred.get(TOKENS_KEY)
        if not torch.is_tensor(tokens) or not tokens.requires_grad:
            self.say(f"{PREFIX}: not measured: the model returns no pred['{TOKENS_KEY}'] with a gradient")
            self.every = 0
            return
        rows = gradient_shares(self.loss_set, pred, batch, tokens)
        if not self.measured:
            self.say("\n".join(balance_table(next_step, rows)))
        warnings = balance_warnings(rows)
        for name in warnings.keys() - self.flagged:  # each new imbalance once, not at every log step
            self.say(warnings[name] + ("" if not self.measured else f" (step {next_step})"))
        self.flagged = set(warnings)
        self.measured = True
        self.pending = {f"grad_share/{name}": row["share"] for name, row in rows.items()}

    def log(self, accelerator, step: int) -> None:
        """Log the last measurement's shares as grad_share/<term> at `step` (once; every rank may call it)."""
        if self.pending:
            log_scalars(accelerator, self.pending, step=step)
            self.pending = {}


def converted_weights(loss_set, samples, reduction: str) -> dict[str, dict]:
    """The weights that keep every term's weighted value, and so its share of the gradient, when its
    reduction becomes `reduction`: the conversion a recipe needs when it moves between sum and mean.

    samples: (pred, batch) pairs. Returns {term: {"reduction" (current), "weight" (current config
    weight), "factor", "new_weight"}} in the loss set's order; new_weight = weight * factor.
    A term with one part: factor = the ratio of the reductions' denominators (1 for sum, the batch
    size for batch_mean, the total weight of the elements for mean), averaged over the samples as
    reducing an error of ones both ways; it holds for any prediction, a zero one included. A term with
    several parts reduced apart (aux) has one weight for all of them, so its factor matches their
    reduced total (the prediction's real error) on these samples only. factor and new_weight are None
    when there is nothing to match (no element has weight, or a composite term is 0 on every sample).
    """
    from losses import reduce_error

    rows = {}
    for name, term in loss_set.terms.items():
        target = None  # the term under `reduction`, built only for a term with several parts
        current = new = 0.0
        for pred, batch in samples:
            parts = term.parts(pred, batch)
            if len(parts) == 1:
                (_, error, weight), = parts
                ones = torch.ones_like(error, dtype=torch.float32)
                current += reduce_error(ones, weight, term.config.reduction).item()
                new += reduce_error(ones, weight, reduction).item()
            else:
                target = target or type(term)(term.config.model_copy(update={"reduction": reduction}), name=name)
                current += term(pred, batch)[1].item()
                new += target(pred, batch)[1].item()
        factor = current / new if new > 0 and current > 0 else None
        rows[name] = {"reduction": term.config.reduction, "weight": term.config.weight, "factor": factor,
                      "new_weight": None if factor is None else term.config.weight * factor}
    return rows


def parameters_without_gradient(model: torch.nn.Module) -> list[str]:
    """Names of the parameters with requires_grad whose .grad is None (call after a backward)."""
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def unused_parameters_warning(names: list[str], find_unused_parameters: bool) -> str | None:
    """The one warning line for `parameters_without_gradient`, or None when there are none."""
    if not names:
        return None
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    advice = ("train.find_unused_parameters is on" if find_unused_parameters else
              "under DDP on several processes the run would stop with 'Expected to have finished reduction in the "
              "prior iteration': remove or freeze them, or set train.find_unused_parameters: true")
    return f"WARNING: {len(names)} trainable parameter(s) got no gradient from the first backward: {shown} ({advice})"


class UnusedParameters:
    """Reports `parameters_without_gradient` once, after the first backward (say None: never)."""

    def __init__(self, find_unused_parameters: bool, say=None):
        self.find_unused, self.say, self.done = find_unused_parameters, say, say is None

    def check(self, model: torch.nn.Module) -> None:
        if self.done:
            return
        self.done = True
        line = unused_parameters_warning(parameters_without_gradient(model), self.find_unused)
        if line:
            self.say(line)
