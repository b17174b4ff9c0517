"""The import structure of utnet/ and losses/: no import cycles (function-level imports included), and
losses/ never imports utnet/ (plugins are written and tested without the framework).

The graph, read from the source with ast (nothing is imported):
- A node is a module: utnet/engine/trainer.py is `utnet.engine.trainer`, a package's __init__.py is the
  package (`utnet.engine`).
- Every `import` statement counts, wherever it is: module level, inside a function, under `if`.
- `import a.b.c` is an edge to a.b.c. `from a.b import c` is an edge to a.b.c when that is a module, and
  to a.b (its __init__, which must provide the name) otherwise. Relative imports are resolved.
- Importing a submodule is NOT an edge to its parent package: Python always initialises the parent
  first, whatever the import says, so that edge would put every package whose __init__ re-exports its
  submodules (`losses`, `utnet.mano`) in a cycle that nothing can cut. A submodule that takes a name from
  its own package's __init__ (`from losses import LossTerm` inside losses/aux.py) is an edge to the
  __init__, and with a re-export that is a cycle: reported.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("utnet", "losses")


def module_sources(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py under root/utnet and root/losses."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_edges(name: str, source: str, modules: set[str], is_package: bool) -> set[str]:
    """The modules of `modules` that module `name` imports anywhere in `source` (see the module docstring)."""
    edges = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in (or is, for an __init__)
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import utnet.x.y` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return edges


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_sources(root)
    return {name: import_edges(name, path.read_text(), set(modules), path.name == "__init__.py")
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (depth-first search, sorted for a stable answer)."""
    done, path, on_path = set(), [], set()

    def visit(node):
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_among_utnet_and_losses_modules():
    cycle = find_cycle(import_graph(REPO))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_losses_never_imports_utnet():
    graph = import_graph(REPO)
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == "losses"
                 for t in targets if t.split(".")[0] == "utnet")
    assert not bad, bad


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_cycle_check_sees_function_level_relative_and_package_imports(tmp_path):
    base = {"losses/__init__.py": "from losses.base import Term\n", "losses/base.py": "class Term: ...\n",
            "utnet/__init__.py": "", "utnet/engine/__init__.py": "",
            "utnet/engine/trainer.py": "from utnet.engine import evaluator\n",
            "utnet/engine/evaluator.py": "import torch\nfrom utnet.engine.metrics import mean\n",
            "utnet/engine/metrics.py": "def mean(): ...\n"}
    _write(tmp_path, base)
    graph = import_graph(tmp_path)
    assert graph["utnet.engine.trainer"] == {"utnet.engine.evaluator"}
    assert graph["utnet.engine.evaluator"] == {"utnet.engine.metrics"}
    assert graph["losses"] == {"losses.base"} and graph["losses.base"] == set()
    assert find_cycle(graph) is None  # an __init__ re-exporting its submodules is no cycle

    cycles = {  # each makes one cycle
        "utnet/engine/metrics.py": "def mean():\n    from utnet.engine.trainer import train\n",  # function level
        "utnet/engine/evaluator.py": "from . import trainer\n",  # relative, from a module
        "utnet/engine/__init__.py": "from .evaluator import evaluate\n",  # ... and in an __init__:
        "losses/base.py": "from losses import Term\n",  # a name from its own package's __init__
    }
    for rel, text in cycles.items():
        _write(tmp_path, base)
        _write(tmp_path, {rel: text})
        if rel == "utnet/engine/__init__.py":  # __init__ -> evaluator is fine until evaluator needs the __init__
            assert find_cycle(import_graph(tmp_path)) is None
            _write(tmp_path, {"utnet/engine/metrics.py": "import utnet.engine\n"})
        cycle = find_cycle(import_graph(tmp_path))
        assert cycle is not None and cycle[0] == cycle[-1], rel
