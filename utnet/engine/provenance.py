"""What a metrics file scored: the checkpoint, the config, the data, the prediction file.

`utnet eval` adds `eval_provenance` to its metrics.json and `utnet score` `score_provenance` to its
scores.json (key "provenance"), so a number in a table can be traced back to the weights and data.
Hashes are sha256 of the file bytes, hex.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Bytes read per step while hashing (model files can be gigabytes).
_HASH_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def config_sha256(cfg) -> str:
    """sha256 (hex) of the fully resolved config as `utnet config` prints it (config.yaml of a run)."""
    from utnet.config import config_to_yaml

    return hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()


def checkpoint_provenance(checkpoint: str | Path) -> dict:
    """{"path" (absolute), "step" (optimizer steps, from the checkpoint marker; None without one),
    "weights" (the model file's name), "weights_sha256"} of a checkpoint directory."""
    from utnet.engine.checkpoint import MARKER, model_weights_file

    checkpoint = Path(checkpoint)
    weights = model_weights_file(checkpoint)
    marker = checkpoint / MARKER
    step = json.loads(marker.read_text()).get("step") if marker.is_file() else None
    return {"path": str(checkpoint.resolve()), "step": step, "weights": weights.name,
            "weights_sha256": file_sha256(weights)}


def eval_provenance(cfg, checkpoint: str | Path | None) -> dict:
    """Provenance of `utnet eval`: the checkpoint (None: the untrained model of cfg.seed), the config hash
    and the data root (absolute)."""
    scored = {"checkpoint": checkpoint_provenance(checkpoint)} if checkpoint is not None else {
        "untrained_seed": cfg.seed}
    return scored | {"config_sha256": config_sha256(cfg), "data_root": str(Path(cfg.data.root).resolve())}


def score_provenance(prediction: str | Path, root: str | Path, ground_truth: list[Path]) -> dict:
    """Provenance of `utnet score`: the prediction file and the ground-truth files (path and sha256)
    and the data root (absolute)."""
    return {"prediction": {"path": str(Path(prediction).resolve()), "sha256": file_sha256(prediction)},
            "ground_truth": {Path(p).name: file_sha256(p) for p in ground_truth},
            "data_root": str(Path(root).resolve())}


def add_provenance(metrics_path: str | Path, provenance: dict, metrics: dict | None = None) -> None:
    """Write `metrics` (default: the JSON already at metrics_path) with {"provenance": provenance} added
    to metrics_path, under a temporary name renamed when complete."""
    metrics_path = Path(metrics_path)
    data = dict(metrics) if metrics is not None else json.loads(metrics_path.read_text())
    data["provenance"] = provenance
    tmp = metrics_path.with_name(metrics_path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, metrics_path)
