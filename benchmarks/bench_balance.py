"""Cost of the `loss balance` measurement (utnet.engine.balance): a training step with and without it.

The experiment's model, loss set and optimizer (build_optimizer) on one train batch: R plain steps
(forward, loss, backward, AdamW step) and R measured steps (the same with `gradient_shares` before the
backward), alternated so that the shared machine's load hits both alike; medians of the wall times.
`measure_s` is the median time of the `gradient_shares` call itself (less noisy than the difference of
the step times); the run's overhead is that, spread over the steps between measurements
(train.loss_balance_every, or train.log_every when that is null).

    python benchmarks/bench_balance.py [--config PATH] [--set K=V ...] [--repeats 7]

Prints one JSON object as its last line: {"plain_step_s", "measured_step_s", "measure_s", "measure_over_plain", "every",
"run_overhead_fraction", ...}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch
    from torch.utils.data import default_collate

    from _experiment import build_experiment
    from utnet.engine import balance
    from utnet.engine.targets import add_mano_targets

    cfg, dataset, model, loss_set, optimizer, _ = build_experiment(args.config, args.overrides)
    batch = add_mano_targets(default_collate([dataset[i] for i in range(cfg.data.batch_size)]), model.mano)
    model.train()

    calls = []

    def step(measure: bool) -> float:
        start = time.perf_counter()
        pred = model(batch)
        total, _ = loss_set(pred, batch)
        if measure:
            call = time.perf_counter()
            balance.gradient_shares(loss_set, pred, batch, pred["tokens"])
            calls.append(time.perf_counter() - call)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(True)  # warm-up: allocator, autograd graph caches
    plain, measured = [], []
    for _ in range(args.repeats):
        plain.append(step(False))
        measured.append(step(True))
    plain_s, measured_s = statistics.median(plain), statistics.median(measured)
    every = balance.every(cfg.train)
    measure_s = statistics.median(calls[1:])  # the gradient_shares call itself (the warm-up call left out)
    print(json.dumps({
        "plain_step_s": round(plain_s, 4), "measured_step_s": round(measured_s, 4), "measure_s": round(measure_s, 4),
        "measured_over_plain": round(measured_s / plain_s, 3), "measure_over_plain": round(measure_s / plain_s, 4),
        "every": every,
        "run_overhead_fraction": round(measure_s / (every * plain_s), 4) if every else 0.0,
        "terms_measured": sum(t.config.weight > 0 for t in loss_set.terms.values()),
        "batch_size": cfg.data.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
