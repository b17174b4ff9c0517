"""The one reader of third-party pickles (HO3D meta files, MANO model files, the MANO stand-in cache).

Unpickling may call any importable function the file names, so a pickle from the internet can run
code when it is merely opened. `loads` rebuilds only what these formats hold and refuses every
other class or function before it is looked up:

- numpy arrays, scalars and dtypes: the reconstruct functions numpy's pickles name (numpy 1.x
  `numpy.core.*` and numpy 2.x `numpy._core.*` paths), `numpy.ndarray`, `numpy.dtype`;
- builtins values and containers (dict, list, tuple, set, ...) and `_codecs.encode` (how Python 3
  pickles bytes at protocol 2);
- the scipy sparse matrices of the official MANO files (csc/csr): rebuilt by `SparseStandIn` from
  their stored arrays, without scipy's constructors, and turned into dense arrays by `to_plain`;
- chumpy objects (chumpy does not import on Python 3.11 / numpy >= 1.24): every class of a module
  named chumpy* becomes a `ChumpyStandIn` that keeps its arguments and state, and `to_plain` turns
  it into the numpy array of its value.

Python 2 module names (`__builtin__`, `copy_reg`) are mapped to their Python 3 names first.
"""
from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from utnet.errors import UserError

# Allowed (module, name) pairs; numpy's are given once and looked up under both of its module paths.
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float",
             "complex", "bool", "object"}
_NUMPY = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}
_SPARSE_NAMES = {"csc_matrix": "csc", "csr_matrix": "csr", "csc_array": "csc", "csr_array": "csr"}


class RefusedPickle(UserError):
    """A pickle names a class or function outside the allowlist: nothing of it was run."""


class ChumpyStandIn:
    """What a chumpy object becomes while unpickling: it only remembers its arguments and state."""

    chumpy_name = "chumpy"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {"x": state}

    def to_numpy(self) -> np.ndarray:
        """The array value: the state's 'x' (chumpy.Ch keeps its value there), else its only array."""
        for key in ("x", "_x", "r"):
            if key in self.state:
                return to_plain(self.state[key])
        arrays = [v for v in self.state.values() if isinstance(v, (np.ndarray, ChumpyStandIn))]
        if len(arrays) == 1:
            return to_plain(arrays[0])
        if len(self.args) == 1:
            return to_plain(self.args[0])
        raise ValueError(f"cannot turn a {self.chumpy_name} object into an array (state keys {sorted(self.state)})")


class SparseStandIn:
    """What a scipy csc/csr matrix becomes while unpickling: its stored arrays, densified by `to_numpy`."""

    layout = "csc"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}

    def to_numpy(self) -> np.ndarray:
        """The dense matrix [rows, cols]; duplicate entries add up (as scipy's toarray does)."""
        shape = self.state.get("_shape", self.state.get("shape"))
        try:
            rows, cols = (int(n) for n in shape)
            data = np.asarray(self.state["data"])
            indices = np.asarray(self.state["indices"], dtype=np.int64)
            indptr = np.asarray(self.state["indptr"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a {self.layout} sparse matrix without data/indices/indptr/shape") from None
        outer, inner = (cols, rows) if self.layout == "csc" else (rows, cols)
        if (indptr.shape != (outer + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices)
                or len(data) != len(indices) or (len(indices) and (indices.min() < 0 or indices.max() >= inner))):
            raise ValueError(f"an inconsistent {self.layout} sparse matrix of shape {rows}x{cols}")
        dense = np.zeros((rows, cols), dtype=data.dtype)
        major = np.repeat(np.arange(outer), np.diff(indptr))
        at = (indices, major) if self.layout == "csc" else (major, indices)
        np.add.at(dense, at, data)
        return dense


def _numpy_attr(submodule: str, name: str):
    """numpy's pickle helper `name` from numpy._core.<submodule> (numpy 2) or numpy.core.<submodule> (1.x)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler whose find_class hands out only the allowlisted classes and the stand-ins."""

    def __init__(self, fh, path):
        super().__init__(fh, encoding="latin1")
        self.path = path
        self.chumpy_objects = 0

    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "builtins" and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if module == "_codecs" and name == "encode":
            return __import__("_codecs").encode
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType") and isinstance(getattr(np.dtypes, name, None), type):
            return getattr(np.dtypes, name)
        for package in ("numpy.core.", "numpy._core."):
            if module.startswith(package) and (module[len(package):], name) in _NUMPY:
                return _numpy_attr(module[len(package):], name)
        if module.startswith("scipy.sparse") and name in _SPARSE_NAMES:
            return type(name, (SparseStandIn,), {"layout": _SPARSE_NAMES[name]})
        if module == "chumpy" or module.startswith("chumpy."):
            self.chumpy_objects += 1
            return type(name, (ChumpyStandIn,), {"chumpy_name": f"{module}.{name}"})
        raise RefusedPickle(f"{self.path}: refused to unpickle {module}.{name} (only numpy arrays, builtin containers, "
                            "scipy sparse matrices and chumpy arrays are read; the file may try to run code)")


def loads(raw: bytes, path: str | Path) -> tuple[Any, int]:
    """Unpickle `raw` (read from `path`, named in errors) allowing only the classes above.

    Returns (the object, number of chumpy objects seen); stand-ins are left in place (see `to_plain`).
    Raises RefusedPickle (a one-line UserError naming the file and the refused module.name) before
    anything the file names is called; other unpickling failures propagate as they are.
    """
    unpickler = _SafeUnpickler(io.BytesIO(raw), path)
    return unpickler.load(), unpickler.chumpy_objects


def to_plain(value):
    """chumpy and sparse stand-ins -> numpy arrays, also inside lists, tuples and object arrays; others unchanged."""
    if isinstance(value, (ChumpyStandIn, SparseStandIn)):
        return np.asarray(value.to_numpy())
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.asarray([to_plain(v) for v in value.reshape(-1)]).reshape(value.shape)
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value
