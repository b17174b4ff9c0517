"""HO3D data: reader (ho3d.py), crop/augment pipeline (pipeline.py), synthetic HO3D-format set
(render.py, synth.py) and its checks (doctor.py).

Public API: `build_dataset(cfg, split)`, `ensure_dataset(cfg, log)`, `write_synthetic(...)`.
"""
from __future__ import annotations

import time
from pathlib import Path

from utnet.errors import UserError


def build_dataset(cfg, split: str):
    """The `split` (train | val | evaluation) of cfg.data.root as a torch Dataset of batch-contract dicts.

    Augmentation only on train and only when cfg.data.augment.enabled.
    """
    from utnet.data.pipeline import HO3DDataset

    return HO3DDataset(cfg, split)


def write_synthetic(out_dir, version="v2", sequences=8, frames=60, seed=0, mano_model_path=None,
                    val_like_eval_frames=None):
    """Render the synthetic HO3D-format set into out_dir; returns a summary dict (see synth.py)."""
    from utnet.data.synth import write_synthetic as _write

    return _write(out_dir, version=version, sequences=sequences, frames=frames, seed=seed,
                  mano_model_path=mano_model_path, val_like_eval_frames=val_like_eval_frames)


def _check_synthetic_matches(root: Path, syn, version: str) -> None:
    """A synthetic set already at data.root must be the one data.synthetic describes: otherwise a run
    with `--set data.synthetic.sequences=40` would train on the 8 sequences written earlier, silently."""
    import json

    from utnet.data.synth import INFO_FILE

    info_path = root / INFO_FILE
    if not info_path.is_file():
        return  # not written by utnet synth (a real HO3D copy): nothing to compare
    try:
        info = json.loads(info_path.read_text())
        sequences = len(info["train_sequences"])
        written = [("data.synthetic.sequences", syn.sequences, sequences),
                   ("data.synthetic.frames", syn.frames, info["train_frames"] // max(1, sequences)),
                   ("data.synthetic.seed", syn.seed, info["seed"]), ("data.version", version, info["version"])]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{info_path}: unreadable synthetic-set summary ({err}); remove data.root {root} "
                        f"to have it written again") from None
    for key, configured, value in written:
        if configured != value:
            raise UserError(f"{key}: {configured}, but data.root {root} holds a synthetic set written with "
                            f"{key.rsplit('.', 1)[1]} {value} ({INFO_FILE}); point data.root at a new folder "
                            f"(it is written there) or remove the old set")


def ensure_dataset(cfg, log=print) -> Path:
    """Return cfg.data.root; write the synthetic set there first if it has no train.txt and
    data.synthetic.enabled, else raise UserError naming data.root and the expected layout. With
    data.synthetic.enabled, a synthetic set already there must match data.synthetic (sequences, frames,
    seed) and data.version, else UserError: the run would train on other data than configured."""
    from utnet.data.ho3d import LAYOUT_HINT

    root = Path(cfg.data.root)
    syn = cfg.data.synthetic
    if (root / "train.txt").is_file():
        if syn.enabled:
            _check_synthetic_matches(root, syn, cfg.data.version)
        return root
    if not syn.enabled:
        raise UserError(f"data.root: {root} has no train.txt (and data.synthetic.enabled is false); {LAYOUT_HINT}")
    log(f"data.root {root} has no train.txt: writing the synthetic HO3D-format stand-in set there "
        f"({syn.sequences} sequences x {syn.frames} frames, seed {syn.seed}, {cfg.data.version})")
    start = time.perf_counter()
    summary = write_synthetic(root, version=cfg.data.version, sequences=syn.sequences, frames=syn.frames,
                              seed=syn.seed, mano_model_path=cfg.mano.model_path)
    log(f"wrote {summary['train_frames']} train + {summary['evaluation_frames']} evaluation synthetic frames "
        f"to {root} in {time.perf_counter() - start:.1f} s")
    return root
