"""The README's promises: its quickstart commands and its loss-plugin example work as written."""
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_quickstart_has_exactly_the_two_commands():
    commands = re.findall(r"^    (pip install .*)$", README, flags=re.M)
    assert commands[:2] == ['pip install -e ".[dev]" && utnet train', 'pip install -e ".[dev]" && pytest -q']


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and "pytest -q" in ci


def test_readme_loss_plugin_example_runs_from_yaml(tmp_path, cli):
    block = README[README.index("    # mypkg/terms.py"):README.index("Register it with")]
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "terms.py").write_text("\n".join(line[4:] for line in block.splitlines()))
    config = tmp_path / "exp.yaml"
    tree = yaml.safe_load((REPO / "configs" / "synthetic.yaml").read_text())
    tree["loss_plugins"] = ["mypkg.terms"]
    tree["loss"]["bone_length"] = {"weight": 1.0, "reduction": "sum"}
    config.write_text(yaml.safe_dump(tree))
    result = cli("config", "--config", config, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["loss"]["bone_length"]["parents"][1] == 0
    listing = cli("plugins", "--config", config, env={"PYTHONPATH": str(tmp_path)})
    assert listing.returncode == 0, listing.stderr
    assert "bone_length" in listing.stdout and "mypkg.terms" in listing.stdout

    code = (
        "import importlib, torch, losses\n"
        "importlib.import_module('mypkg.terms')\n"
        "term_set = losses.LossSet.from_config({'bone_length': {'reduction': 'sum'}})\n"
        "gt = torch.randn(2, 21, 3)\n"
        "pred = {'joints_3d': (gt * 2).requires_grad_()}\n"
        "batch = {'joints_3d': gt, 'joints_3d_valid': torch.ones(2, 21)}\n"
        "total, logs = term_set(pred, batch)\n"
        "total.backward()\n"
        "child = [c for c in range(1, 21)]\n"
        "parent = [-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19]\n"
        "expected = (gt[:, child] - gt[:, [parent[c] for c in child]]).norm(dim=-1).sum()\n"
        "assert torch.allclose(total, expected, rtol=1e-5), (total, expected)\n"
        "assert pred['joints_3d'].grad.abs().sum() > 0\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
