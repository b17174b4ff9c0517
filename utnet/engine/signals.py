"""Stop requests by signal: the handler only sets a flag; the training loop acts at a step boundary.

SIGTERM (schedulers, `kill`), SIGHUP (a closed terminal), SIGINT (Ctrl-C) and SIGUSR1 (cluster
pre-emption warnings) all mean "save and stop". Ranks may receive the signal at different moments, so
they agree on it with `agree_max` at the next optimizer step: every rank then saves the same step and
exits 0. The handlers are installed once the data set exists (before the model is built and the
untrained model evaluated), so a signal during that evaluation stops the run after its first step; a
signal while `utnet train` is still synthesising the data set ends the process with no save.

Under accelerate launch / torchrun (torch elastic) each worker runs in a session of its own, so a
closed terminal, Ctrl-C or a `kill` of the launcher reaches it only through the launcher. The launcher
forwards the signals in PET_SIGNALS_TO_HANDLE (default SIGTERM,SIGINT,SIGHUP,SIGQUIT; SIGQUIT is not
handled here and kills a worker) and SIGKILLs any worker still running TORCH_ELASTIC_SHUTDOWN_TIMEOUT
seconds later (default 30), saved or not. A signal not in that list, SIGUSR1 by default, kills the
launcher and the workers train on as orphans. launch/train_detached.sh adds SIGUSR1 to the list,
forwards a SIGUSR1 sent to it as SIGTERM and sets the timeout to 600 s.
"""
from __future__ import annotations

import signal

import torch

HANDLED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1)


class StopOnSignal:
    """Context manager: while active, the signals above set `self.signum` instead of killing.

    A second SIGINT while a stop is pending raises KeyboardInterrupt (the user insists).
    """

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def agree_max(accelerator, values: list[float]) -> list[float]:
    """Elementwise max of `values` over all ranks (one small collective; every rank gets the result)."""
    local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes == 1:
        return local.tolist()
    gathered = accelerator.gather(local[None])  # [num_processes, len(values)]
    return gathered.max(dim=0).values.tolist()


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a Ctrl-C or a closed terminal signals the whole process group; the
    workers must keep serving batches until the main process has reached its step boundary and saved."""
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
