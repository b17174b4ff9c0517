"""An installed (non-editable) utnet: the wheel carries the experiment configs and finds its default one.

Builds the sdist and, from it, the wheel (`python -m build`, as a release would; about 10-20 s), without
build isolation (no network), from a copy of the sources so the repository gets no build/ or egg-info.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

SOURCES = ("utnet", "losses", "configs", "setup.cfg", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in")


def test_the_wheel_ships_the_configs_and_an_installed_utnet_uses_them(tmp_path):
    pytest.importorskip("build")  # the dev extra
    src = tmp_path / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("utnet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("utnet/configs/")}
        assert shipped == {f"utnet/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
        assert archive.read("utnet/configs/synthetic.yaml") == (REPO / "configs" / "synthetic.yaml").read_bytes()
        archive.extractall(tmp_path / "site")

    # the unpacked wheel first on the path, run away from the repository: no configs/ beside it
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), PYTHONWARNINGS="ignore")
    code = "import utnet.config as c; print(c.DEFAULT_CONFIG_PATH); print(c.load_config().model_dump_json())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, config = proc.stdout.splitlines()[-2:]
    assert path == str(tmp_path / "site" / "utnet" / "configs" / "synthetic.yaml")
    from utnet.config import load_config

    assert config == load_config().model_dump_json()  # the repository's default experiment
