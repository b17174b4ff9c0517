"""A killed `utnet synth` leaves no process behind, and the next run removes the partial folder it left."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                                reason="needs Linux (/proc, prctl) and two cores (a worker process)")


def _descendants(pid: int) -> set[int]:
    """Pids of the processes below pid (children, grandchildren, ...), from /proc."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _gone(pid: int) -> bool:
    """True once pid has exited (a zombie waiting for its reaper has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _bytes_written(pid: int) -> int:
    try:
        return int(next(line for line in Path(f"/proc/{pid}/io").read_text().splitlines() if line.startswith("wchar:")).split()[1])
    except (OSError, StopIteration):
        return 0


def test_killed_synth_leaves_no_worker_and_the_next_run_removes_its_partial_folder(tmp_path, cli):
    out = tmp_path / "set"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # 2 x 200 train + 200 evaluation frames: rendered by this process and one worker, ~7 s per sequence and core
    proc = subprocess.Popen([sys.executable, "-m", "utnet", "synth", "--out", str(out), "--sequences", "2", "--frames", "200"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / f".set.partial-{proc.pid}"
    try:
        deadline = time.monotonic() + 240
        workers = set()
        while not any(_bytes_written(p) > 2_000_000 for p in workers):  # a worker is writing frames (~0.55 MB each)
            assert proc.poll() is None, "synth ended before a worker wrote frames"
            assert time.monotonic() < deadline, "no worker started writing within 240 s"
            time.sleep(0.2)
            workers = _descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # without its parent, a worker would render its sequence and the next one (>= 10 s) before a broken pipe
    deadline = time.monotonic() + 8
    while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in workers if not _gone(p)] == []
    assert partial.is_dir() and not out.exists()

    live = tmp_path / f".set.partial-{os.getpid()}"  # a run still going (this process): kept
    live.mkdir()
    finished = subprocess.Popen(["true"])
    finished.wait()
    foreign = tmp_path / f".set.partial-{finished.pid}"  # a dead pid of another host, on a shared disk: kept
    foreign.mkdir()
    (foreign / ".owner_host").write_text("another-host\n")
    r = cli("synth", "--out", out, "--sequences", "1", "--frames", "1")
    assert r.returncode == 0, r.stderr
    assert f"removed {partial}: left by a killed run" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["removed_partials"] == [str(partial)]
    assert not partial.exists() and live.is_dir() and foreign.is_dir()
    assert (out / "train.txt").is_file() and not (out / ".owner_host").exists()
