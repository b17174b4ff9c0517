"""Read a MANO model file without chumpy, check it, and write a clean copy.

The official MANO pickles (Python 2, protocol 2) hold chumpy arrays, and chumpy does not import on
Python 3.11 / numpy >= 1.24. `read_mano_pickle` unpickles with utnet.safe_pickle, which refuses any
class outside the format (a pickle can run code when opened) and turns chumpy objects and scipy
sparse matrices into numpy arrays, so the result is plain numpy that unmodified `smplx.MANO` accepts.

Which file is which (`MANOModel.source`):
- "stand-in": it carries the stand-in's marker key (utnet.mano.standin);
- "official": chumpy objects were found while reading it;
- "cleaned": any other MANO-format pickle of plain arrays (e.g. written by `utnet mano convert`).

Right hands only. A file is refused as a left hand when its name contains "LEFT", or when its
geometry is left-handed: the side the fingers curl toward in hands_mean (the palm) must be opposite
to distal x radial (wrist->middle knuckle crossed with pinky->index knuckle), see pose_prior.palm_axes.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utnet import safe_pickle
from utnet.errors import UserError
from utnet.joints import MANO_PARENTS
from utnet.mano.pose_prior import palm_axes
from utnet.mano.standin import STANDIN_MARKER_KEY

MANO_URL = "https://mano.is.tue.mpg.de"
# The keys smplx.MANO reads, with MANO's shapes (None = any size).
REQUIRED_SHAPES = {
    "v_template": (778, 3),
    "f": (1538, 3),
    "weights": (778, 16),
    "J_regressor": (16, 778),
    "shapedirs": (778, 3, None),
    "posedirs": (778, 3, 135),
    "kintree_table": (2, 16),
    "hands_components": (45, 45),
    "hands_mean": (45,),
}


@dataclass
class MANOModel:
    """A validated right-hand MANO model: plain numpy arrays (metres), where it came from."""

    data: dict
    source: str  # "official" | "cleaned" | "stand-in"
    path: Path


def read_mano_pickle(path) -> tuple[dict, int]:
    """Unpickle a MANO file without chumpy: (dict of plain values, number of chumpy objects seen)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data, chumpy_objects = safe_pickle.loads(raw, path)
    except UserError:  # a refused class: named in the message, nothing of the file was run
        raise
    except Exception as err:  # any other unpickling failure means "not a model file"
        raise UserError(f"{path}: not a MANO model file (cannot unpickle it: {type(err).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a MANO model file (holds a {type(data).__name__}, expected a dict)")
    try:
        plain = {key: safe_pickle.to_plain(value) for key, value in data.items()}
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    return plain, chumpy_objects


def load_mano_model(path) -> MANOModel:
    """Read and validate a right-hand MANO file (official, cleaned or the stand-in).

    Raises UserError (one line) when the file is missing, is not a MANO model, or is a left hand.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise UserError(
            f"{path}: MANO model file not found. MANO is obtained (free, with a licence) from {MANO_URL}; "
            "set mano.model_path to its MANO_RIGHT.pkl, or to null for the MANO stand-in"
        )
    if "LEFT" in path.name.upper():
        raise UserError(f"{path}: a left-hand MANO file; UTNet uses right hands only (MANO_RIGHT.pkl)")
    data, chumpy_objects = read_mano_pickle(path)
    missing = [key for key in REQUIRED_SHAPES if key not in data]
    if missing:
        raise UserError(f"{path}: not a MANO model file (missing keys: {', '.join(missing)})")
    for key, shape in REQUIRED_SHAPES.items():
        try:
            data[key] = np.asarray(data[key])
        except Exception:
            raise UserError(f"{path}: {key} is not an array") from None
        got = data[key].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            want = "x".join("N" if s is None else str(s) for s in shape)
            raise UserError(f"{path}: not a MANO model file ({key} has shape {'x'.join(map(str, got))}, expected {want})")
    parents = [int(p) for p in data["kintree_table"][0, 1:]]
    if parents != MANO_PARENTS[1:]:
        raise UserError(f"{path}: not a MANO model file (kintree_table parents {parents}, MANO's are {MANO_PARENTS[1:]})")
    if data["shapedirs"].shape[2] < 10:
        raise UserError(f"{path}: shapedirs has {data['shapedirs'].shape[2]} shape components, MANO has 10")
    if STANDIN_MARKER_KEY in data:
        source = "stand-in"
    elif chumpy_objects:
        source = "official"
    else:
        source = "cleaned"
    joints_rest = data["J_regressor"].astype(np.float64) @ data["v_template"].astype(np.float64)
    _, _, _, is_right = palm_axes(joints_rest, data["hands_mean"])
    if is_right is False:
        raise UserError(f"{path}: a left-hand MANO model (its fingers curl the left-hand way); UTNet uses right hands only")
    return MANOModel(data=data, source=source, path=path)


def convert_mano_file(src, dst) -> Path:
    """Write `src` (official or cleaned MANO file) as a clean numpy pickle that plain smplx.MANO loads.

    `dst` may be a directory (the input's file name is kept). Written atomically. Returns the path.
    """
    model = load_mano_model(src)
    dst = Path(os.path.expanduser(str(dst)))
    if dst.is_dir():
        dst = dst / model.path.name
    if dst.resolve() == model.path.resolve():
        raise UserError(f"{dst}: the output would overwrite the input; choose another path")
    if not dst.parent.is_dir():
        raise UserError(f"{dst.parent}: output directory does not exist")
    clean = {}
    for key, value in model.data.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            value = value.astype(np.float64)
        clean[key] = value
    clean["f"] = np.asarray(clean["f"]).astype(np.uint32)
    fd, tmp = tempfile.mkstemp(prefix=".mano-", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(clean, fh, protocol=2)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst
