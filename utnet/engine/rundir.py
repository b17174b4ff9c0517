"""The run directory's guards, applied by `utnet train` before anything is built or written.

- One run at a time: the main process (RANK 0) holds an exclusive flock on `<run>/.utnet-train.lock`
  for the run's lifetime; the file names the holder's pid. The OS drops the lock when the process
  ends, however it ends, so a crashed run never leaves the directory locked.
- No run is replaced silently: starting a new run (`--resume none`, `--resume auto` with no complete
  checkpoint, or a checkpoint from elsewhere) in a directory that holds a run (RUN_ENTRIES) is refused
  unless `--overwrite`, which renames the whole directory to `<run>.old-<UTC time>` (nothing deleted)
  and starts in a new, empty one.
- No resume the checkpoint cannot honour: the requested config is compared with the config.yaml of
  the run the checkpoint belongs to; keys outside RESUMABLE_KEYS that differ are an error listing them,
  the others are applied and logged. The trainer writes config.yaml only once the checkpoint is loaded.
- A run that ends with an error leaves run_state.json `failed` with the one-line reason.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from utnet.config import ExperimentConfig
from utnet.engine import checkpoint as ckpt
from utnet.errors import UserError

LOCK_NAME = ".utnet-train.lock"
# What a run leaves in its directory; any of them means "this directory holds a run".
RUN_ENTRIES = ("config.yaml", "checkpoints", "best", "metrics.json", "metrics_untrained.json", "run_state.json",
               "untrained", "tensorboard")

# THE rule for a changed config on resume: the keys listed here (a trailing ".*" takes a whole section)
# may differ from the run's config.yaml and are applied; any other difference is an error. What may
# change is what the checkpoint does not hold and what does not redefine the experiment: the run's
# length and cadences, evaluation settings, where the data lives and how it is loaded. Everything else
# is refused: model.* (the weights' shapes), optim.* (lr, betas, weight_decay and lr_mult live in the
# optimizer and scheduler state and would be silently ignored; the schedule would change mid-run), loss
# and loss_plugins (config.yaml would record a loss the checkpoint was not trained with), seed, the data
# geometry and augmentation (data.image_size, bbox_expand, depth_window_mm, augment.*, val_sequences: the
# best/ metric would compare other things), train.grad_accum / mixed_precision / best_metric, mano.*.
RESUMABLE_KEYS = (
    "output_dir",
    "train.max_steps", "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.image_every", "train.debug_batches", "train.max_nonfinite_steps",
    "eval.*",
    "data.root", "data.num_workers", "data.on_error", "data.synthetic.enabled",
    "data.batch_size",  # per process; load_checkpoint warns that the rest of the epoch's data order is not exact
)


def is_main_rank() -> bool:
    """True in a plain process and in RANK 0 of `accelerate launch` / torchrun: the owner of the run directory."""
    return os.environ.get("RANK", "0") == "0"


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in RESUMABLE_KEYS)


class RunLock:
    """Exclusive, non-blocking flock on <run_dir>/.utnet-train.lock; the file says who holds it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating run_dir); UserError (exit 2) naming the holder's pid if it is held."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # never truncate before holding the lock: the holder's pid is in it
        except OSError as err:
            raise UserError(f"--output-dir {self.run_dir}: cannot create the run directory's lock file "
                            f"{self.path} ({err.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                handle.close()
                raise UserError(f"--output-dir {self.run_dir}: cannot lock {self.path} ({err})") from None
            handle.seek(0)
            holder = handle.read().strip() or "pid unknown (it is starting)"
            handle.close()
            raise UserError(f"--output-dir {self.run_dir}: another `utnet train` is using this run directory "
                            f"({holder}; lock file {self.path}); wait for it to end or choose another --output-dir")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def run_entries(run_dir: str | Path) -> list[str]:
    """The RUN_ENTRIES present in run_dir, as `name` or `name/` (directories)."""
    run_dir = Path(run_dir)
    return [name + "/" if (run_dir / name).is_dir() else name for name in RUN_ENTRIES if (run_dir / name).exists()]


def move_aside(run_dir: str | Path) -> Path:
    """Rename run_dir to <run_dir>.old-<UTC yyyymmdd-HHMMSS>[-n] (one rename: nothing copied or deleted)."""
    run_dir = Path(run_dir).resolve()
    if Path.cwd().resolve().is_relative_to(run_dir):  # the new run would start inside the moved one
        raise UserError(f"--overwrite: {run_dir} is (or holds) the working directory; run from elsewhere")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    try:
        os.rename(run_dir, target)
    except OSError as err:
        raise UserError(f"--overwrite: cannot move {run_dir} aside to {target} ({err.strerror})") from None
    return target


def _leaves(tree, prefix: str = "") -> dict:
    """Nested dicts -> {dotted key: leaf value} (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _effective_tree(cfg: ExperimentConfig) -> dict:
    """The config as the trainer will record it in config.yaml (the launcher's mixed precision applied)."""
    from utnet.engine.setup import mixed_precision

    tree = cfg.model_dump(mode="json")
    tree["train"]["mixed_precision"] = mixed_precision(cfg)
    return tree


def config_changes(saved: dict, cfg: ExperimentConfig) -> dict[str, tuple]:
    """{dotted key: (saved value, requested value)} for every leaf that differs ("(absent)" if missing)."""
    old, new = _leaves(saved), _leaves(_effective_tree(cfg))
    return {key: (old.get(key, "(absent)"), new.get(key, "(absent)"))
            for key in list(old) + [k for k in new if k not in old] if old.get(key, ...) != new.get(key, ...)}


def checkpoint_run_config(checkpoint: Path) -> Path | None:
    """config.yaml of the run a checkpoint belongs to (<run>/best or <run>/checkpoints/step_N), if any."""
    for run_dir in (checkpoint.parent, checkpoint.parent.parent):
        if (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir():
            return run_dir / "config.yaml"
    return None


def check_resume_config(cfg: ExperimentConfig, saved_path: Path | None, checkpoint: Path, log=print) -> None:
    """Refuse (UserError) a resume whose config differs from the run's config.yaml outside RESUMABLE_KEYS;
    log the differences inside them, which the resumed run applies."""
    if saved_path is None:
        log(f"note: no config.yaml found for {checkpoint}; its settings cannot be compared with this config")
        return
    try:
        saved = yaml.safe_load(saved_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{saved_path}: cannot read the run's config ({type(err).__name__}: "
                        f"{str(err).splitlines()[0]})") from None
    changes = config_changes(saved if isinstance(saved, dict) else {}, cfg)
    shown = {key: f"{key} {_short(a)} -> {_short(b)}" for key, (a, b) in changes.items()}
    refused = [shown[key] for key in changes if not resumable(key)]
    if refused:
        raise UserError(
            f"resume from {checkpoint}: the config differs from the run's {saved_path} in settings a resumed run "
            f"cannot change: {', '.join(refused)}; start a new run (another --output-dir, or --overwrite to move "
            f"this one aside) or drop these changes (a resume may change only: {', '.join(RESUMABLE_KEYS)})")
    applied = [shown[key] for key in changes if key != "output_dir"]
    if applied:
        log(f"resuming with changed settings (vs {saved_path}), applied: {', '.join(applied)}")


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _inside(path: Path, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(directory).resolve())


@contextmanager
def guarded_run_dir(cfg: ExperimentConfig, resume: str, overwrite: bool, log=print):
    """`with guarded_run_dir(cfg, args.resume, args.overwrite) as resume_from:` train with resume_from.

    Every rank resolves the checkpoint (a Path, or None for a new run; --overwrite always starts a new
    run). Only the main rank checks and locks: a refusal there ends it with exit 2 before the Accelerator
    exists, so the other ranks, waiting for it in the process group's rendezvous, are stopped by the
    launcher and never write anything.
    """
    out = Path(cfg.output_dir)
    resume_from = ckpt.resolve_resume("none" if overwrite and resume == "auto" else resume, out)
    if overwrite and resume_from is not None and _inside(resume_from, out):
        raise UserError(f"--overwrite moves {out} aside, with the checkpoint --resume {resume} inside it; "
                        f"resume without --overwrite or copy the checkpoint out first")
    if not is_main_rank():
        yield resume_from
        return
    created = not out.exists()
    lock = RunLock(out).acquire()
    try:
        continuing = resume_from is not None and _inside(resume_from, out)
        if continuing:
            check_resume_config(cfg, out / "config.yaml" if (out / "config.yaml").is_file() else None,
                                resume_from, log)
        else:
            if resume_from is not None:
                check_resume_config(cfg, checkpoint_run_config(resume_from), resume_from, log)
            found = run_entries(out)
            if found and not overwrite:
                why = ("holds no complete checkpoint to resume" if resume == "auto" else f"--resume {resume} "
                       "would start a new run in it")
                raise UserError(f"--output-dir {out}: holds a run ({', '.join(found)}) and {why}; pass --overwrite "
                                f"to move it aside to {out.name}.old-<UTC time> beside it, or choose another "
                                f"--output-dir")
            if found:  # the old lock moves with the old run and is held until the new directory is locked
                moved = move_aside(out)
                old_lock, lock = lock, RunLock(out).acquire()
                old_lock.release()
                log(f"--overwrite: moved the previous run {out} to {moved} (nothing deleted)")
    except BaseException:
        lock.release()
        if created:  # a refused start leaves no empty directory behind
            _remove_if_only_lock(out)
        raise
    try:
        yield resume_from
    finally:
        lock.release()
        if created:  # a run that failed before writing anything (a bad checkpoint, say) leaves no directory
            _remove_if_only_lock(out)


def _remove_if_only_lock(run_dir: Path) -> None:
    if [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        try:
            run_dir.rmdir()
        except OSError:
            pass


def failure_reason(err: BaseException) -> str:
    """One line: a UserError's message, else `ExceptionType: first line of its message`."""
    if isinstance(err, UserError):
        return "; ".join(str(err).splitlines())
    text = str(err).splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def write_run_state(output_dir: Path, status: str, **fields) -> None:
    """<output_dir>/run_state.json: running | finished | stopped_on_signal | failed (read by train_detached.sh)."""
    tmp = output_dir / "run_state.json.part"
    tmp.write_text(json.dumps({"status": status, **fields}))
    tmp.replace(output_dir / "run_state.json")


def mark_failed(run_dir: str | Path, err: BaseException) -> None:
    """run_state.json `running` (this run, or one killed before) -> `failed` with the reason; a `failed`
    state without a reason gets it. Any other state (finished, stopped_on_signal) is left alone: the
    error came before this run started."""
    path = Path(run_dir) / "run_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if state.get("status") == "running" or (state.get("status") == "failed" and "reason" not in state):
        fields = {k: v for k, v in state.items() if k != "status"}
        write_run_state(Path(run_dir), "failed", **fields, reason=failure_reason(err))
