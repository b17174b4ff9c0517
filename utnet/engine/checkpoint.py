"""Checkpoints: accelerate's save_state plus the train state as JSON, written atomically.

Layout under `<output_dir>/checkpoints/`:

    step_00000500/          complete checkpoint: model.safetensors (weights), optimizer.bin, scheduler.bin,
                            random_states_<rank>.pkl (one per process), scaler.pt (fp16 only),
                            train_state.json (TrainState), utnet_checkpoint.json written last
                            (step, epoch, batch_in_epoch, num_processes, batch size per process)
    .tmp-step_00000500/     a save in progress; renamed to step_00000500 only once every rank is done

A checkpoint directory counts as complete only when it carries `utnet_checkpoint.json` and its name has
no temporary prefix, so a save interrupted at any point never replaces or hides a good checkpoint.
Automatic checkpoint naming of accelerate is not used (the directory name carries the step), so
`accelerator.project_configuration.iteration` plays no part in where a save goes.

No file of a checkpoint is read in a way that can run code: the train state is JSON (it is not
registered with accelerate, whose custom states are pickles loaded with torch.load(weights_only=False)),
and the .bin/.pkl/.pt files are torch pickles that `load_checkpoint` first opens with torch's
weights-only unpickler (accelerate's allowlist: tensors, numpy arrays, builtins) and that accelerate then
reads the same way; a file naming any other class is refused with its path.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from utnet.errors import UserError

MARKER = "utnet_checkpoint.json"
TRAIN_STATE_FILE = "train_state.json"
LEGACY_STATE_FILE = "custom_checkpoint_0.pkl"  # the train state of checkpoints written before train_state.json
STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TrainState:
    """The loop's counters, saved as train_state.json in every checkpoint.

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

    def to_json(self) -> str:
        """Strict JSON: an infinite best_metric (nothing evaluated yet) is written as null."""
        state = asdict(self)
        state["best_metric"] = None if math.isinf(self.best_metric) else self.best_metric
        return json.dumps(state, indent=2)

    def load_dict(self, state, path: Path) -> None:
        """Set every field from `state` (a train_state.json); UserError naming `path` when one is missing or bad."""
        for name, default in asdict(TrainState()).items():
            value = state.get(name) if isinstance(state, dict) else None
            if name == "best_metric" and value is None:
                value = math.inf
            kind = float if isinstance(default, float) else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
                raise UserError(f"{path}: {name} is missing or not a number (got {value!r})")
            setattr(self, name, kind(value))


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
    then the main process writes train_state.json and the marker and renames the directory once every
    rank has finished.
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
        (tmp / TRAIN_STATE_FILE).write_text(state.to_json())
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


_TORCH_PICKLES = ("optimizer*.bin", "scheduler*.bin", "pytorch_model*.bin", "scaler.pt", "random_states_{rank}.pkl")
_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def _read_torch_pickle(path: Path):
    """A checkpoint's torch pickle through accelerate's own loader (torch.load(weights_only=True), accelerate's
    allowlisted numpy globals), tensors memory-mapped rather than read. UserError naming the file when it names
    any other class (nothing of it is run) or cannot be read."""
    from accelerate.utils import load

    try:
        return load(str(path), map_location="cpu", mmap=True)
    except Exception as err:  # any reader failure is a bad checkpoint file for the user
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused:
            raise UserError(f"{path}: refused to unpickle {refused.group(1)} (checkpoint pickles may hold only "
                            "tensors, numpy arrays and builtins; the file may try to run code)") from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read ({reason})") from None


def check_checkpoint_pickles(path: str | Path, rank: int) -> None:
    """Open every torch pickle that accelerate's load_state reads on this rank the way it reads them, so that a
    bad one is a one-line UserError naming the file instead of a traceback, or, for the RNG states (whose load
    errors accelerate swallows), a silently inexact resume."""
    for pattern in _TORCH_PICKLES:
        for file in sorted(Path(path).glob(pattern.format(rank=rank))):
            value = _read_torch_pickle(file)
            if file.name.startswith("random_states_") and not (isinstance(value, dict) and all(k in value for k in _RNG_KEYS)):
                raise UserError(f"{file}: not accelerate's random states (expected keys {', '.join(_RNG_KEYS)})")


def read_train_state(path: str | Path, state: TrainState) -> None:
    """Fill `state` from the checkpoint's train_state.json; a checkpoint written before that file keeps the state in
    custom_checkpoint_0.pkl, read with the weights-only unpickler (never torch.load(weights_only=False))."""
    path = Path(path)
    file = path / TRAIN_STATE_FILE
    if file.is_file():
        try:
            values = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{file}: cannot read ({type(err).__name__}: {err})") from None
    elif (path / LEGACY_STATE_FILE).is_file():
        file = path / LEGACY_STATE_FILE
        values = _read_torch_pickle(file)
    else:
        raise UserError(f"--resume {path}: no {TRAIN_STATE_FILE} (not a UTNet checkpoint?)")
    state.load_dict(values, file)


@contextlib.contextmanager
def _without_custom_states(path: Path):
    """`path`, or, when it holds custom_checkpoint_*.pkl files (a checkpoint of an older UTNet, or planted), a
    temporary directory of links to its other files: accelerate's load_state unpickles every such file with
    torch.load(weights_only=False), and refuses a directory whose count differs from the registered objects."""
    if not any(path.glob("custom_checkpoint_*.pkl")):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="utnet-resume-") as view:
        for child in path.iterdir():
            if not child.name.startswith("custom_checkpoint_"):
                os.symlink(child.resolve(), Path(view) / child.name)
        yield Path(view)


def load_checkpoint(accelerator, path: str | Path, state: TrainState, batch_size: int, log=print) -> None:
    """Restore model, optimizer, scheduler, RNG states (every rank) and `state` from train_state.json.

    Every pickle is checked first (check_checkpoint_pickles): a file that would need any class beyond
    tensors, numpy arrays and builtins is a UserError naming it, and nothing is restored.
    When it was saved with another process count or per-process
    batch size than `accelerator.num_processes` / `batch_size`, the run goes on (changing the GPU count
    on resume is legitimate) but `log` gets a warning: the batches skipped to reach `batch_in_epoch`
    cover other samples than the ones the saved run consumed, so the data order is not exact.
    """
    check_checkpoint_pickles(path, accelerator.process_index)
    read_train_state(path, state)
    with _without_custom_states(Path(path)) as view:
        accelerator.load_state(str(view))
    info = json.loads((Path(path) / MARKER).read_text())
    changed = [f"{key} {info[key]} -> {now}" for key, now in (("num_processes", accelerator.num_processes),
                                                              ("batch_size", batch_size))
               if key in info and info[key] != now]
    if changed:
        log(f"WARNING: resuming {path} with {', '.join(changed)} (saved -> now): the rest of epoch "
            f"{info.get('epoch')} skips {info.get('batch_in_epoch')} batches of the new size, so some samples "
            f"are seen twice or not at all this epoch; the data order is not exact")
