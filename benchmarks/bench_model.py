"""Parameters and CPU forward+backward time per training step of UTNet (the model table of docs/performance.md).

    python benchmarks/bench_model.py [--steps 5] [--threads 2]

Two configurations: the tiny default (configs/synthetic.yaml: vit_tiny at 128x96, batch 16) and a
large one (vit_large_patch16_224 at 256x192, HaMeR-sized head, batch 1 and 2). Each step is the
loss set of the config on a batch of random images whose targets come from random MANO parameters,
backward, and an AdamW step. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import losses
from utnet.config import load_config
from utnet.engine.targets import add_mano_targets
from utnet.model import build_model

LARGE_OVERRIDES = [
    "model.backbone.stem=patch",  # a pretrained large ViT keeps its own patch projection
    "model.backbone.stem_depth=1",
    "data.image_size=[256, 192]",
    "model.backbone.name=vit_large_patch16_224",
    "model.head.depth=6",
    "model.head.dim=1024",
    "model.head.heads=8",
    "model.refiner.hidden=128",
]


def random_batch(model, batch_size: int, image_size, generator: torch.Generator) -> dict:
    """Random RGB-D crops with targets of random MANO hands placed in front of the model's camera."""
    H, W = image_size
    orient = torch.randn(batch_size, 3, generator=generator) * 0.5
    hand_pose = torch.randn(batch_size, 45, generator=generator) * 0.2
    betas = torch.randn(batch_size, 10, generator=generator) * 0.5
    transl_m = torch.tensor([0.0, 0.0, 0.6]).expand(batch_size, 3).clone()
    with torch.no_grad():
        _, joints_mm = model.mano.mesh_mm(orient, hand_pose, betas, transl_m)
    batch = {
        "rgb": torch.randn(batch_size, 3, H, W, generator=generator),
        "depth": torch.rand(batch_size, 1, H, W, generator=generator),
        "joints_3d": joints_mm, "joints_3d_valid": torch.ones(batch_size, 21),
        "keypoints_2d": (torch.rand(batch_size, 21, 2, generator=generator) - 0.5) * 0.6,
        "keypoints_2d_valid": torch.ones(batch_size, 21),
        "mano_global_orient": orient, "mano_hand_pose": hand_pose, "mano_betas": betas,
        "mano_transl": transl_m, "has_mano": torch.ones(batch_size),
    }
    return add_mano_targets(batch, model.mano)


def measure(overrides: list[str], batch_size: int, steps: int) -> dict:
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins)
    groups = model.param_groups()
    optimizer = torch.optim.AdamW([p for g in groups.values() for p in g], lr=1e-5)
    batch = random_batch(model, batch_size, cfg.data.image_size, torch.Generator().manual_seed(0))
    forward_s, step_s = [], []
    for i in range(steps + 1):  # the first step warms up (allocations, AdamW state) and is not timed
        start = time.perf_counter()
        pred = model(batch)
        total, _ = loss_set(pred, batch)
        mid = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        end = time.perf_counter()
        if i:
            forward_s.append(mid - start)
            step_s.append(end - start)
    return {
        "backbone": cfg.model.backbone.name,
        "image_size": list(cfg.data.image_size),
        "batch_size": batch_size,
        "head": {"depth": cfg.model.head.depth, "dim": cfg.model.head.dim},
        "refiner": {"hidden": cfg.model.refiner.hidden, "coarse_vertices": cfg.model.refiner.coarse_vertices},
        "params_million": {name: round(sum(p.numel() for p in g) / 1e6, 3) for name, g in groups.items()},
        "params_total_million": round(sum(p.numel() for g in groups.values() for p in g) / 1e6, 3),
        "forward_s_median": round(statistics.median(forward_s), 4),
        "step_s_median": round(statistics.median(step_s), 4),
        "step_s_min": round(min(step_s), 4),
        "steps_timed": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "step": "forward + loss set + backward + AdamW step, seconds",
        "tiny_default": measure([], 16, args.steps),
        "large_batch1": measure(LARGE_OVERRIDES, 1, args.steps),
        "large_batch2": measure(LARGE_OVERRIDES, 2, args.steps),
        "large_overrides": LARGE_OVERRIDES,
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
