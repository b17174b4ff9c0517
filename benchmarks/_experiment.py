"""What the training benchmarks share: the experiment's data, model, loss set and optimizer, built as the
engine builds them (`python benchmarks/X.py` puts this folder on sys.path)."""
from __future__ import annotations


def build_experiment(config: str | None, overrides: list[str]):
    """(cfg, train set, model, LossSet, optimizer, scheduler) of an experiment config, seeded with its seed;
    the synthetic set is written first when the config asks for it and it is missing."""
    import torch

    import losses
    from utnet.config import load_config
    from utnet.data import build_dataset, ensure_dataset
    from utnet.engine.setup import build_optimizer
    from utnet.model import build_model

    cfg = load_config(config, overrides)
    ensure_dataset(cfg, log=lambda *a: None)
    torch.manual_seed(cfg.seed)
    dataset = build_dataset(cfg, "train")
    model = build_model(cfg)
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins)
    optimizer, scheduler = build_optimizer(cfg, model, num_processes=1)
    return cfg, dataset, model, loss_set, optimizer, scheduler
