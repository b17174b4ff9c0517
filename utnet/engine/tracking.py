"""What a run reports: tensorboard through accelerate's trackers, progress on stdout, data statistics.

Tensorboard tags: loss/<term>, loss_raw/<term>, loss/total, grad_norm, lr/<group>, nonfinite_steps,
grad_share/<term> (utnet.engine.balance),
metrics/<split>/<refined|coarse>/<metric>, and images under images/<split>. Hyperparameters go in as
one flat dict of dotted keys (init_trackers rejects nested ones).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from utnet.config import ExperimentConfig, flatten_config
from utnet.joints import CANONICAL_NAMES, ROOT_INDEX

TRACKER_RUN_NAME = "tensorboard"  # events land in <output_dir>/tensorboard/


def start_tracking(accelerator, cfg: ExperimentConfig) -> None:
    accelerator.init_trackers(TRACKER_RUN_NAME, config=flatten_config(cfg))


def log_scalars(accelerator, values: dict, step: int) -> None:
    """Log scalars (tensors or numbers) on the main process; every rank may call it."""
    plain = {k: float(v.item() if torch.is_tensor(v) else v) for k, v in values.items()}
    accelerator.log(plain, step=step)


def metric_scalars(metrics: dict, split: str) -> dict[str, float]:
    """metrics.json content -> {metrics/<split>/<refined|coarse>/<name>: value}."""
    out = {}
    for output in ("refined", "coarse"):
        for name, value in metrics.get(output, {}).items():
            if isinstance(value, (int, float)):
                out[f"metrics/{split}/{output}/{name}"] = float(value)
    return out


def log_image(accelerator, tag: str, image_hwc_uint8: np.ndarray, step: int) -> None:
    """One RGB image [H,W,3] uint8 on the main process; a no-op on the other ranks (every rank may call it)."""
    if not accelerator.is_main_process:
        return
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    writer.add_image(tag, image_hwc_uint8, global_step=step, dataformats="HWC")
    writer.flush()


def summary_line(step: int, split: str, metrics: dict) -> str:
    """One line per evaluation: the refined and coarse headline errors."""
    r, c = metrics["refined"], metrics["coarse"]
    return (f"eval step {step} {split} ({metrics['num_samples']} samples): "
            f"refined mpjpe {r['mpjpe']:.2f} pa_mpjpe {r['pa_mpjpe']:.2f} mpvpe {r['mpvpe']:.2f} "
            f"pa_mpvpe {r['pa_mpvpe']:.2f} f_5mm {r['f_5mm']:.3f} f_15mm {r['f_15mm']:.3f} auc_j {r['auc_j']:.3f} | "
            f"coarse mpjpe {c['mpjpe']:.2f} pa_mpjpe {c['pa_mpjpe']:.2f} (mm)")


def comparison_table(baseline: dict, final: dict) -> str:
    """Final metrics beside the untrained model's, one metric per row."""
    lines = [f"{'metric':<22}{'untrained':>12}{'final':>12}"]
    for output in ("refined", "coarse"):
        for name, value in final[output].items():
            if name == "num_samples":
                continue
            lines.append(f"{output + '/' + name:<22}{baseline[output][name]:>12.4f}{value:>12.4f}")
    return "\n".join(lines)


class Progress:
    """A tqdm bar on the main process when stdout is a terminal; otherwise one plain line per update()
    that carries a loss (the caller passes it on train.log_every steps). Silent when not `enabled`."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.start_step, self.start_time = initial, time.perf_counter()
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float | None = None, lr: float | None = None) -> None:
        """Called once per optimizer step; `loss`/`lr` are given on logging steps only."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", refresh=False)
            return
        if loss is None:
            return
        elapsed = time.perf_counter() - self.start_time
        rate = (step - self.start_step) / max(elapsed, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        print(f"step {step}/{self.total} loss {loss:.4g} lr {lr:.2e} {rate:.2f} it/s "
              f"elapsed {_clock(elapsed)} eta {_clock(eta)}", flush=True)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _mean_std(x: torch.Tensor) -> str:
    x = x.detach().float().reshape(-1, x.shape[-1])
    mean = ", ".join(f"{v:.1f}" for v in x.mean(0).tolist())
    std = ", ".join(f"{v:.1f}" for v in x.std(0).tolist())
    return f"mean ({mean}) std ({std})"


SPAN_JOINT = CANONICAL_NAMES.index("middle4")  # hand span: wrist -> middle fingertip
SPAN_RATIO_RANGE = (0.5, 2.0)  # predicted / GT span outside it: a scale bug, not a pose error


def hand_span_mm(joints_mm: torch.Tensor) -> float:
    """Mean wrist -> middle fingertip distance of joints [B,21,3] mm (canonical order)."""
    return (joints_mm[:, SPAN_JOINT] - joints_mm[:, ROOT_INDEX]).float().norm(dim=-1).mean().item()


def data_statistics(index: int, batch: dict, pred: dict, focal_length: float | None = None) -> str:
    """The data-statistics block for one batch: input ranges, GT and predicted 3D joint statistics (mm).

    Catches the classic mistakes at once: un-normalised images, empty depth, joints in metres,
    root-centred or absolute joints mixed up, predictions on a different scale than the ground truth.
    Prediction and ground truth are compared root-centred (as the losses and metrics compare them):
    the predicted absolute depth comes from the weak-perspective camera and sits metres away, so it
    gets a line of its own. A predicted / GT hand span outside SPAN_RATIO_RANGE adds a WARN line.
    """
    rgb, depth = batch["rgb"].float(), batch["depth"].float()
    gt = batch["joints_3d"].float()
    pr = pred["joints_3d"].float()
    valid = depth > 0
    depth_valid = depth[valid]
    depth_text = (f"[{depth_valid.min().item():.3f}, {depth_valid.max().item():.3f}] "
                  f"({valid.float().mean().item() * 100:.1f}% measured)" if depth_valid.numel() else "no measurement")
    span_gt, span_pr = hand_span_mm(gt), hand_span_mm(pr)
    ratio = span_pr / span_gt if span_gt > 0 else float("inf")
    camera = f"f = {focal_length:g} px" if focal_length is not None else "the model's focal length"
    lines = [
        f"data statistics, batch {index} ({rgb.shape[0]} samples, {tuple(rgb.shape[-2:])} crops):",
        f"  RGB range [{rgb.min().item():.3f}, {rgb.max().item():.3f}] (ImageNet-normalised)",
        f"  depth range {depth_text}",
        f"  GT 3D joints mm (absolute, camera frame): {_mean_std(gt)}",
        f"  GT root mm: {_mean_std(gt[:, ROOT_INDEX])}",
        "  root-centred joints, per axis (x, y, z), as losses and metrics compare them:",
        f"    GT root-centred joints mm:        {_mean_std(gt - gt[:, ROOT_INDEX:ROOT_INDEX + 1])}",
        f"    predicted root-centred joints mm: {_mean_std(pr - pr[:, ROOT_INDEX:ROOT_INDEX + 1])}",
        f"  hand span wrist -> middle tip mm: GT {span_gt:.1f}, predicted {span_pr:.1f} (ratio {ratio:.2f})",
        f"  predicted camera depth (root z) mm: mean {pr[:, ROOT_INDEX, 2].mean().item():.1f}, from the "
        f"weak-perspective camera ({camera}: z = 2 f / (crop size x s)); not comparable with the GT root "
        f"depth, losses and metrics root-align",
    ]
    low, high = SPAN_RATIO_RANGE
    if not low <= ratio <= high:
        lines.append(f"  WARN predicted / GT hand span {ratio:.3g} is outside [{low:g}, {high:g}]: likely a unit "
                     f"mix-up (mm vs m: 1000x) or a double scaling (a factor applied twice), in the data reader, "
                     f"the MANO output or a loss plugin")
    return "\n".join(lines)
