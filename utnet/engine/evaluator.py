"""`evaluate(...)`: score a model on a split, every sample exactly once whatever the number of processes.

The loader is prepared by accelerate; each batch's per-sample error tensors are gathered with
gather_for_metrics (which drops the samples that even_batches repeated at the end), so every rank
ends with the same metrics. Writes metrics.json, a PNG grid of predictions and a per-joint error
chart; on the evaluation split also the HO3D submission (pred.json, pred.zip).

Under data.on_error: skip a frame that cannot be read is run as its readable neighbour (the loader keeps
its length and every rank its batches), gathered like any sample, then dropped from the metrics and
reported: "Evaluated on N of M samples ... (K unreadable ...)", with N, M, K and the frames in
metrics.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Subset

from utnet.engine import metrics as M
from utnet.engine.targets import add_mano_targets


def _errors(pred: dict, batch: dict, verts_valid: torch.Tensor) -> dict:
    return M.per_sample_errors(pred["joints_3d"], batch["joints_3d"], pred["verts_3d"], batch["verts_3d"],
                               joints_valid=batch["joints_3d_valid"], verts_valid=verts_valid)


def _cat(chunks: list[dict]) -> dict:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _sample_ids(batch: dict) -> torch.Tensor:
    """[B, 3] int64: sample_index, the index whose data the sample carries, readable (1) or dropped (0).

    A scored split in data.on_error: skip mode fills an unreadable frame with a readable neighbour's data
    (sample_readable False); without those keys every sample is its own and readable.
    """
    index = batch["sample_index"].long()
    source = batch.get("sample_source_index", index).long()
    readable = batch.get("sample_readable", torch.ones_like(index, dtype=torch.bool)).long()
    return torch.stack([index, source, readable], dim=1)


def _frame_name(dataset, index: int) -> str:
    """`SEQ/NNNN` of sample `index` of the dataset under any Subset wrappers (its index otherwise)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    name = getattr(dataset, "frame_name", None)
    return name(index) if name is not None else str(index)


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def evaluate(accelerator, model, loader, split: str, expected_size: int, out_dir: str | Path | None = None,
             grid_samples: int = 16, write_submission: bool = False, log=print) -> dict:
    """Metrics of `model` (prepared) on `loader` (prepared), on every rank.

    Returns {"num_samples", "num_listed", "num_unreadable", "unreadable", "num_processes", "split",
    "refined": {...}, "coarse": {...}} with the metrics of utnet.engine.metrics.summarize (mm; NaN where
    the split has no ground truth). num_listed (M) samples are run and gathered, each exactly once; the
    num_unreadable (K) that data.on_error: skip could not read are dropped (their ids, `SEQ/NNNN`, in
    `unreadable`), so the metrics are over num_samples = M - K. With write_submission, the submission
    keeps all M entries: a dropped entry holds the prediction for the readable frame that filled it,
    listed in "submission_filled".
    Raises RuntimeError unless the gathered sample indices are exactly 0..expected_size-1.
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
    refined, coarse, ids, submission = [], [], [], []
    shown = {"sample": [], "pred": []}
    for batch in loader:
        has_verts = "verts_3d" in batch
        verts_valid = torch.ones_like(batch["has_mano"], dtype=torch.bool) if has_verts else batch["has_mano"] > 0
        add_mano_targets(batch, mano)  # verts_3d from the MANO parameters when the split has no vertex file
        pred = model(batch)
        pred = {k: (v.float() if torch.is_tensor(v) else {kk: vv.float() for kk, vv in v.items()})
                for k, v in pred.items()}
        local = {"refined": _errors(pred, batch, verts_valid), "coarse": _errors(pred["coarse"], batch, verts_valid),
                 "ids": _sample_ids(batch)}
        if write_submission:
            local["submission"] = {"joints_cam_mm": pred["joints_3d"], "verts_cam_mm": pred["verts_3d"],
                                   "root_cam_mm": batch["joints_3d"][:, 0]}
        gathered = accelerator.gather_for_metrics(local)
        refined.append({k: v.cpu() for k, v in gathered["refined"].items()})
        coarse.append({k: v.cpu() for k, v in gathered["coarse"].items()})
        ids.append({"ids": gathered["ids"].cpu()})
        if write_submission:
            submission.append({k: v.cpu() for k, v in gathered["submission"].items()})
        if accelerator.is_main_process and len(shown["sample"]) < grid_samples:
            readable = local["ids"][:, 2].bool().tolist()
            for i in [i for i in range(batch["rgb"].shape[0]) if readable[i]][:grid_samples - len(shown["sample"])]:
                shown["sample"].append({k: v[i].float().cpu() for k, v in batch.items()
                                        if torch.is_tensor(v) and v.dim() > 0})
                shown["pred"].append({k: v[i].cpu() for k, v in pred.items() if torch.is_tensor(v)})

    ids = _cat(ids)["ids"]
    order = torch.argsort(ids[:, 0])
    ids = ids[order]
    if not torch.equal(ids[:, 0], torch.arange(expected_size)):
        raise RuntimeError(f"evaluation gathered {ids.shape[0]} samples of the {split} split's {expected_size}, "
                           f"not each index 0..{expected_size - 1} exactly once: samples were lost or counted twice")
    readable = ids[:, 2].bool()
    refined = {k: v[order][readable] for k, v in _cat(refined).items()}
    coarse = {k: v[order][readable] for k, v in _cat(coarse).items()}
    num_samples = int(readable.sum())
    unreadable = [_frame_name(loader.dataset, i) for i in ids[~readable, 0].tolist()]
    if unreadable:
        first = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        log(f"Evaluated on {num_samples} of {expected_size} samples from {_processes(accelerator.num_processes)} "
            f"({split}; {len(unreadable)} unreadable, dropped: first {first})")
    else:
        log(f"Evaluated on {num_samples} samples from {_processes(accelerator.num_processes)} ({split})")
    result = {"num_samples": num_samples, "num_listed": expected_size, "num_unreadable": len(unreadable),
              "unreadable": unreadable, "num_processes": accelerator.num_processes, "split": split,
              "refined": M.summarize(refined), "coarse": M.summarize(coarse)}
    if write_submission:
        result["submission_filled"] = [
            {"entry": index, "frame": _frame_name(loader.dataset, index),
             "filled_from": _frame_name(loader.dataset, source)}
            for index, source, ok in ids.tolist() if not ok]

    if out_dir is not None and accelerator.is_main_process:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "metrics.json.part"
        tmp.write_text(json.dumps(M.metrics_for_json(result), indent=2))
        tmp.replace(out_dir / "metrics.json")
        _write_figures(out_dir, shown, M.per_joint_errors_mm(refined), mano,
                       net.intrinsics())
        if write_submission:
            _write_submission(out_dir, {k: v[order] for k, v in _cat(submission).items()},
                              result["submission_filled"], log)
    accelerator.wait_for_everyone()
    return result


def report_skipped(accelerator, datasets: dict, log=print) -> dict[str, int]:
    """{split: frames found unreadable in this run} under data.on_error: skip, logged as one line.

    Call on EVERY rank (the flags of every rank are summed). datasets: {split: dataset}, each an
    HO3DDataset or a Subset of one; a split in raise mode (no unreadable_flags) is left out. train counts
    the frames left out when listing plus those replaced by a neighbour; val / evaluation count the frames
    dropped from the metrics.
    """
    counts = {}
    for split, dataset in datasets.items():
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        flags = getattr(dataset, "unreadable_flags", None)
        if flags is None:
            continue
        seen = accelerator.reduce(flags.to(accelerator.device, torch.int64), reduction="sum")
        counts[split] = int((seen > 0).sum()) + dataset.left_out
    if counts:
        log("data.on_error=skip: unreadable frames in this run: " + ", ".join(
            f"{split} {n} ({'left out or replaced by the next readable frame' if split == 'train' else 'dropped'})"
            for split, n in counts.items()))
    return counts


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


def _write_submission(out_dir: Path, ordered: dict, filled: list[dict], log) -> None:
    """pred.json / pred.zip, one entry per sample in dataset order (OpenGL metres, HO3D order: submission.py
    converts). `filled`: the entries of unreadable frames, which hold the prediction for the frame named in
    their filled_from (the next readable one) placed at that frame's root."""
    from utnet.engine.submission import write_ho3d_submission

    paths = write_ho3d_submission(out_dir, ordered["joints_cam_mm"], ordered["verts_cam_mm"], ordered["root_cam_mm"])
    log(f"HO3D submission written: {paths}")
    if filled:
        log(f"HO3D submission: {len(filled)} of {ordered['joints_cam_mm'].shape[0]} entries are unreadable frames "
            f"filled with the prediction for the next readable frame (listed in metrics.json submission_filled)")

