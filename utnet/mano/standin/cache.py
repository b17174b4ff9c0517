"""The stand-in's cached pickle file: built once per machine, written atomically, rebuilt when stale."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

from utnet import safe_pickle
from utnet.mano.standin.model import STANDIN_MARKER_KEY, STANDIN_VERSION, build_standin

STANDIN_FILENAME = f"mano_standin_v{STANDIN_VERSION}.pkl"


def standin_bytes() -> bytes:
    """The stand-in pickle exactly as it is cached (protocol 2, like the official files)."""
    return pickle.dumps(build_standin(), protocol=2)


def cache_dir() -> Path:
    """`$UTNET_CACHE`, else `$XDG_CACHE_HOME/utnet`, else `~/.cache/utnet`."""
    if os.environ.get("UTNET_CACHE"):
        return Path(os.environ["UTNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "utnet"


def standin_path(build: bool = True) -> Path:
    """Path of the cached stand-in pickle; builds and writes it atomically when missing or unreadable."""
    path = cache_dir() / STANDIN_FILENAME
    if build and not _cached_file_ok(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".standin-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(standin_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def _cached_file_ok(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            data, _ = safe_pickle.loads(fh.read(), path)  # the cache is a pickle too: read it like any foreign one
        return data[STANDIN_MARKER_KEY]["version"] == STANDIN_VERSION
    except Exception:  # missing, truncated or foreign: rebuild
        return False
