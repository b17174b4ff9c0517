"""Packaging is declared in setup.cfg; this file only adds the experiment configs to the wheel.

configs/*.yaml sit at the repository root (where README and launch/ name them) and not inside a package,
so package_data cannot list them. build_py copies them into the built package as utnet/configs/, where
an installed (non-editable) utnet finds its default config (utnet.config.DEFAULT_CONFIG_PATH).
MANIFEST.in puts them in the sdist, from which `python -m build` makes the wheel.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "utnet" / "configs"
        target.mkdir(parents=True, exist_ok=True)
        for config in sorted(CONFIGS.glob("*.yaml")):
            shutil.copyfile(config, target / config.name)


setup(cmdclass={"build_py": BuildPyWithConfigs})
