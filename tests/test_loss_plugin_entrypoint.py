"""A third-party loss plugin, discovered through the `utnet.losses` entry point of a real installed package.

The test writes a tiny package, pip-installs it into this interpreter (no network, no build
isolation), uses its term from a YAML experiment in fresh processes, and uninstalls it.
"""
import json
import re
import subprocess
import sys
import textwrap
import uuid

import yaml

PACKAGE_MODULE = '''
"""An example third-party loss: squared 2D keypoint error, scaled."""
import losses


@losses.register_loss("{term}")
class SquaredKeypoints(losses.LossTerm):
    """scale * (pred - gt)^2 on the 2D keypoints, weighted by their validity."""

    class Config(losses.LossConfig):
        scale: float = 1.0

    def elementwise(self, pred, batch):
        diff = self.from_pred(pred, "keypoints_2d") - self.from_batch(batch, "keypoints_2d")
        return self.config.scale * diff.square(), self.from_batch(batch, "keypoints_2d_valid").unsqueeze(-1)
'''

USE_FROM_YAML = '''
import json, sys, torch
import losses
from utnet.config import load_config

cfg = load_config(sys.argv[1])
loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins)
pred = {{"keypoints_2d": torch.full((2, 21, 2), 0.25, requires_grad=True)}}
batch = {{"keypoints_2d": torch.zeros(2, 21, 2), "keypoints_2d_valid": torch.ones(2, 21)}}
total, logs = loss_set(pred, batch)
total.backward()
print(json.dumps({{"registered": sorted(losses.registered_losses()), "origin": losses.plugin_origin("{term}"),
                  "logs": {{k: float(v) for k, v in logs.items()}}, "grad": float(pred["keypoints_2d"].grad.abs().sum())}}))
'''


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, timeout=300)


def test_entry_point_plugin_from_an_installed_package(tmp_path, cli):
    tag = uuid.uuid4().hex[:8]
    term, module, dist = f"mine_{tag}", f"utnet_loss_example_{tag}", f"utnet-loss-example-{tag}"
    package = tmp_path / "package"
    (package / module).mkdir(parents=True)
    (package / module / "__init__.py").write_text("")
    (package / module / "terms.py").write_text(PACKAGE_MODULE.format(term=term))
    (package / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1.0"
        dependencies = []

        [project.entry-points."utnet.losses"]
        {term} = "{module}.terms"

        [tool.setuptools]
        packages = ["{module}"]
    '''))
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(textwrap.dedent(f'''
        loss:
          keypoint_2d: {{weight: 1.0, reduction: sum}}
          {term}: {{weight: 0.5, scale: 4.0, reduction: sum}}
    '''))
    script = tmp_path / "use_from_yaml.py"
    script.write_text(USE_FROM_YAML.format(term=term))

    installed = pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
                    "--root-user-action=ignore", "-q", str(package))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
        # the term exists for a fresh process, used from a YAML experiment (out of the repository)
        used = subprocess.run([sys.executable, str(script), str(experiment)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert used.returncode == 0, used.stderr
        result = json.loads(used.stdout)
        assert term in result["registered"]
        assert f"entry point '{term} = {module}.terms'" in result["origin"] and dist in result["origin"]
        # 42 valid keypoints x 2 coordinates, each 4 * 0.25^2, summed; weight 0.5
        assert result["logs"][f"loss_raw/{term}"] == 84 * 4 * 0.0625
        assert result["logs"][f"loss/{term}"] == 0.5 * 84 * 4 * 0.0625
        assert result["grad"] > 0

        configured = cli("config", "--config", experiment, "--set", f"loss.{term}.weight=2", cwd=tmp_path)
        assert configured.returncode == 0, configured.stderr
        printed = yaml.safe_load(configured.stdout)["loss"][term]
        assert printed["weight"] == 2 and printed["scale"] == 4

        bad = cli("config", "--config", experiment, "--set", f"loss.{term}.scale=big", cwd=tmp_path)
        assert bad.returncode == 2 and f"loss.{term}.scale:" in bad.stderr and "Traceback" not in bad.stderr

        listed = cli("plugins", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert f"{term}  ({module}.terms (entry point '{term} = {module}.terms' of {dist} 0.1.0)" in listed.stdout
        assert re.search(r"\n    scale +float, default 1\.0\n", listed.stdout)
    finally:
        removed = pip("uninstall", "-y", "-q", "--root-user-action=ignore", dist)
        assert removed.returncode == 0, removed.stdout + removed.stderr
