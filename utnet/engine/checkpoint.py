"""Checkpoints: accelerate's save_state plus a registered train state, written atomically.

Layout under `<output_dir>/checkpoints/`:

    step_00000500/          complete checkpoint (model, optimizer, scheduler, RNG states of every rank,
                            custom_checkpoint_0.pkl = TrainState, utnet_checkpoint.json written last:
                            step, epoch, batch_in_epoch, num_processes, batch_size per process)
    .tmp-step_00000500/     a save in progress; renamed to step_00000500 only once every rank is done

A checkpoint directory counts as complete only when it carries `utnet_checkpoint.json` and its name has
no temporary prefix, so a save interrupted at any point never replaces or hides a good checkpoint.
Automatic checkpoint naming of accelerate is not used (the directory name carries the step), so
`accelerator.project_configuration.iteration` plays no part in where a save goes.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from utnet.errors import UserError

MARKER = "utnet_checkpoint.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TrainState:
    """Counters registered with `accelerator.register_for_checkpointing`.

    step: optimizer steps done (skipped non-finite steps included); epoch: current epoch;
    batch_in_epoch: batches of that epoch already consumed (what skip_first_batches skips on resume);
    best_metric: best value of train.best_metric so far (lower is better);
    nonfinite_in_row / nonfinite_total: skipped non-finite steps.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = math.inf
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def is_complete(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and not path.name.startswith(TMP_PREFIX) and (path / MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under <output_dir>/checkpoints, oldest first (partial ones are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = STEP_DIR.match(child.name)
        if m and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """`auto` -> newest complete checkpoint or None; `none` -> None; else the given complete checkpoint."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"--resume {resume}: no such checkpoint directory")
    if not is_complete(path):
        raise UserError(f"--resume {resume}: not a complete checkpoint (no {MARKER}; the save was interrupted?)")
    return path


def model_weights_file(checkpoint: str | Path) -> Path:
    """The model weights inside a checkpoint directory (accelerate's file names); UserError if absent."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UserError(f"--checkpoint {checkpoint}: no such checkpoint directory")
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            return checkpoint / name
    raise UserError(f"--checkpoint {checkpoint}: holds no model weights ({' or '.join(MODEL_FILES)})")


def load_model_weights(model, checkpoint: str | Path) -> None:
    """Load a checkpoint's model weights into an unwrapped model (strict); UserError on an unreadable file."""
    from utnet.model.weights import read_state_dict

    state = read_state_dict(model_weights_file(checkpoint), f"--checkpoint {checkpoint}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"--checkpoint {checkpoint}: weights do not match the configured model "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing final is moved aside first and deleted only afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(accelerator, directory: str | Path, state: TrainState, batch_size: int,
                    extra: dict | None = None) -> Path:
    """Save the whole training state to `directory` atomically. Call on EVERY rank.

    batch_size: samples per batch per process (data.batch_size), recorded with num_processes in the
    marker: the two decide which samples `batch_in_epoch` batches cover (checked on resume).

    The state goes to `.tmp-<name>` first (save_state on all ranks: each writes its own RNG file),
    then the main process writes the marker and renames the directory once every rank has finished.
    """
    final = Path(directory)
    tmp = final.with_name(TMP_PREFIX + final.name)
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                "num_processes": accelerator.num_processes, "batch_size": batch_size, **(extra or {})}
        marker_tmp = tmp / (MARKER + ".part")
        marker_tmp.write_text(json.dumps(info, indent=2))
        os.replace(marker_tmp, tmp / MARKER)
        _swap_into_place(tmp, final)
    accelerator.wait_for_everyone()
    return final


def save_step_checkpoint(accelerator, output_dir: str | Path, state: TrainState, batch_size: int, keep: int) -> Path:
    """Save `checkpoints/step_<step>` and keep only the newest `keep` complete checkpoints."""
    path = save_checkpoint(accelerator, checkpoint_root(output_dir) / f"step_{state.step:08d}", state, batch_size)
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator, path: str | Path, batch_size: int, log=print) -> None:
    """Restore model, optimizer, scheduler, RNG states and the registered TrainState (every rank).

    When it was saved with another process count or per-process
    batch size than `accelerator.num_processes` / `batch_size`, the run goes on (changing the GPU count
    on resume is legitimate) but `log` gets a warning: the batches skipped to reach `batch_in_epoch`
    cover other samples than the ones the saved run consumed, so the data order is not exact.
    """
    accelerator.load_state(str(path))
    info = json.loads((Path(path) / MARKER).read_text())
    changed = [f"{key} {info[key]} -> {now}" for key, now in (("num_processes", accelerator.num_processes),
                                                              ("batch_size", batch_size))
               if key in info and info[key] != now]
    if changed:
        log(f"WARNING: resuming {path} with {', '.join(changed)} (saved -> now): the rest of epoch "
            f"{info.get('epoch')} skips {info.get('batch_in_epoch')} batches of the new size, so some samples "
            f"are seen twice or not at all this epoch; the data order is not exact")
