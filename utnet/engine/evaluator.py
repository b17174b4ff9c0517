"""`evaluate(...)`: score a model on a split, every sample exactly once whatever the number of processes.

The loader is prepared by accelerate; each batch's per-sample error tensors are gathered with
gather_for_metrics (which drops the samples that even_batches repeated at the end), so every rank
ends with the same metrics. Writes metrics.json, a PNG grid of predictions and a per-joint error
chart; on the evaluation split also the HO3D submission (pred.json, pred.zip).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from utnet.engine import metrics as M
from utnet.engine.targets import add_mano_targets


def _errors(pred: dict, batch: dict, verts_valid: torch.Tensor) -> dict:
    return M.per_sample_errors(pred["joints_3d"], batch["joints_3d"], pred["verts_3d"], batch["verts_3d"],
                               joints_valid=batch["joints_3d_valid"], verts_valid=verts_valid)


def _cat(chunks: list[dict]) -> dict:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def evaluate(accelerator, model, loader, split: str, expected_size: int, out_dir: str | Path | None = None,
             grid_samples: int = 16, write_submission: bool = False, log=print) -> dict:
    """Metrics of `model` (prepared) on `loader` (prepared), on every rank.

    Returns {"num_samples", "num_processes", "split", "refined": {...}, "coarse": {...}} with the
    metrics of utnet.engine.metrics.summarize (mm; NaN where the split has no ground truth).
    Raises RuntimeError if the number of scored samples differs from `expected_size`.
    """
    # Evaluation never moves the training RNG streams (a resumed run evaluates at other moments).
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _evaluate(accelerator, model, loader, split, expected_size, out_dir, grid_samples,
                         write_submission, log)


@torch.no_grad()
def _evaluate(accelerator, model, loader, split, expected_size, out_dir, grid_samples, write_submission, log):
    model.eval()
    net = accelerator.unwrap_model(model)
    mano = net.mano
    refined, coarse, submission = [], [], []
    shown = {"sample": [], "pred": []}
    for batch in loader:
        has_verts = "verts_3d" in batch
        verts_valid = torch.ones_like(batch["has_mano"], dtype=torch.bool) if has_verts else batch["has_mano"] > 0
        add_mano_targets(batch, mano)  # verts_3d from the MANO parameters when the split has no vertex file
        pred = model(batch)
        pred = {k: (v.float() if torch.is_tensor(v) else {kk: vv.float() for kk, vv in v.items()})
                for k, v in pred.items()}
        local = {"refined": _errors(pred, batch, verts_valid), "coarse": _errors(pred["coarse"], batch, verts_valid)}
        if write_submission:
            local["submission"] = {"sample_index": batch["sample_index"], "joints_cam_mm": pred["joints_3d"],
                                   "verts_cam_mm": pred["verts_3d"], "root_cam_mm": batch["joints_3d"][:, 0]}
        gathered = accelerator.gather_for_metrics(local)
        refined.append({k: v.cpu() for k, v in gathered["refined"].items()})
        coarse.append({k: v.cpu() for k, v in gathered["coarse"].items()})
        if write_submission:
            submission.append({k: v.cpu() for k, v in gathered["submission"].items()})
        if accelerator.is_main_process and len(shown["sample"]) < grid_samples:
            take = min(grid_samples - len(shown["sample"]), batch["rgb"].shape[0])
            for i in range(take):
                shown["sample"].append({k: v[i].float().cpu() for k, v in batch.items()
                                        if torch.is_tensor(v) and v.dim() > 0})
                shown["pred"].append({k: v[i].cpu() for k, v in pred.items() if torch.is_tensor(v)})

    refined, coarse = _cat(refined), _cat(coarse)
    num_samples = int(refined["joints_err_mm"].shape[0])
    log(f"Evaluated on {num_samples} samples from {accelerator.num_processes} processes ({split})")
    if num_samples != expected_size:
        raise RuntimeError(f"evaluation scored {num_samples} samples but the {split} split has {expected_size}: "
                           f"samples were lost or counted twice")
    result = {"num_samples": num_samples, "num_processes": accelerator.num_processes, "split": split,
              "refined": M.summarize(refined), "coarse": M.summarize(coarse)}

    if out_dir is not None and accelerator.is_main_process:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "metrics.json.part"
        tmp.write_text(json.dumps(M.metrics_for_json(result), indent=2))
        tmp.replace(out_dir / "metrics.json")
        _write_figures(out_dir, shown, M.per_joint_errors_mm(refined), mano,
                       net.intrinsics())
        if write_submission:
            _write_submission(out_dir, _cat(submission), log)
    accelerator.wait_for_everyone()
    return result


def _write_figures(out_dir: Path, shown: dict, per_joint_mm: torch.Tensor, mano, pred_intrinsics) -> None:
    """predictions.png (crops with mesh and skeletons; predictions drawn through the model's camera
    pred_intrinsics [3,3]) and per_joint_error.png (Procrustes-aligned, mm)."""
    import cv2

    from utnet.engine.visualize import per_joint_error_chart, prediction_grid, prediction_panel

    faces = mano.faces.cpu()
    if shown["sample"]:
        panels = [prediction_panel(s, p, faces, pred_intrinsics) for s, p in zip(shown["sample"], shown["pred"])]
        cv2.imwrite(str(out_dir / "predictions.png"), prediction_grid(panels))
    chart = per_joint_error_chart(per_joint_mm, title="per-joint error after Procrustes alignment (mm)")
    cv2.imwrite(str(out_dir / "per_joint_error.png"), chart)


def _write_submission(out_dir: Path, gathered: dict, log) -> None:
    """pred.json / pred.zip in dataset order (OpenGL metres, HO3D order: submission.py converts)."""
    from utnet.engine.submission import write_ho3d_submission

    order = torch.argsort(gathered["sample_index"])
    if not torch.equal(gathered["sample_index"][order], torch.arange(order.numel())):
        raise RuntimeError("evaluation split: gathered sample indices are not 0..N-1 exactly once")
    paths = write_ho3d_submission(out_dir, gathered["joints_cam_mm"][order], gathered["verts_cam_mm"][order],
                                  gathered["root_cam_mm"][order])
    log(f"HO3D submission written: {paths}")


def evaluate_checkpoint(cfg, checkpoint: str | Path, split: str, out_dir: str | Path, log=print) -> dict:
    """`utnet eval`: load a checkpoint's weights, score `split`, write the outputs to out_dir."""
    from torch.utils.data import DataLoader

    from utnet.data import build_dataset, ensure_dataset
    from utnet.engine.checkpoint import load_model_weights
    from utnet.engine.trainer import eval_subset, make_accelerator
    from utnet.model import build_model

    out_dir = Path(out_dir)
    accelerator = make_accelerator(cfg, out_dir)
    say = log if accelerator.is_main_process else (lambda *a, **k: None)
    with accelerator.main_process_first():
        ensure_dataset(cfg, say)
    dataset = eval_subset(build_dataset(cfg, split), cfg.eval.max_samples, say)
    model = build_model(cfg)
    load_model_weights(model, checkpoint)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    model, loader = accelerator.prepare(model, loader)
    result = evaluate(accelerator, model, loader, split, len(dataset), out_dir=out_dir,
                      grid_samples=cfg.eval.grid_samples, write_submission=(split == "evaluation"), log=say)
    if accelerator.is_main_process:  # what metrics.json scored: checkpoint, config, data (provenance.py)
        from utnet.engine.provenance import add_provenance, eval_provenance
        add_provenance(out_dir / "metrics.json", eval_provenance(cfg, checkpoint))
    r, c = result["refined"], result["coarse"]
    if split == "evaluation" and not np.isfinite(r["pa_mpjpe"]):
        say("no released evaluation ground truth (evaluation_xyz.json / evaluation_verts.json) in data.root: "
            "submit pred.zip to the HO3D challenge for scores")
    say("metric        refined     coarse   (mm; f and auc in [0,1])")
    for name in r:
        if name != "num_samples":
            say(f"{name:<12}{r[name]:>10.4f}{c[name]:>11.4f}")
    say(f"wrote {out_dir / 'metrics.json'}")
    accelerator.end_training()
    return result
