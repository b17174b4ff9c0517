"""`utnet overfit` through the CLI: a configuration that learns PASSes (exit 0), lr 0 FAILs (exit 1).

Both runs use test_engine's tiny model and set; the calibration of the defaults on configs/synthetic.yaml
is measured outside the test suite (README "utnet overfit")."""
from __future__ import annotations

import re

from conftest import run_cli
from test_engine import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

SMALL = ("--samples", "4", "--steps", "60")


def table(stdout: str) -> dict[str, list[str]]:
    """The report's rows: first word -> the other words."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.split()}


def test_overfit_passes_on_a_configuration_that_learns(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("PASS: every weighted term fell"), verdict
    rows = table(proc.stdout)
    assert "the first 4 of 14 train samples" in proc.stdout
    for term in ("keypoint_2d", "joint_3d", "vertex_3d", "mano_prior", "aux"):
        first, last = float(rows[term][1]), float(rows[term][2])
        assert last <= 0.2 * first, (term, rows[term])
    before, after = (float(x) for x in rows["refined/pa_mpjpe"][:2])
    assert after <= 0.5 * before
    for key in ("refined/mpjpe", "coarse/mpjpe", "coarse/pa_mpjpe"):
        assert key in rows
    assert re.search(r"60 steps in [0-9.]+ s \([0-9.]+ steps/s\)", proc.stdout)


def test_overfit_fails_with_lr_0_and_says_why(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, "--samples", "4", "--steps", "3", "--set", "optim.lr=0")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: this configuration does not fit its training samples: loss terms not below 0.2x"), verdict
    assert "keypoint_2d 1.00x" in verdict and "PA-MPJPE" in verdict


def test_overfit_help_states_the_pass_rule(cli):
    proc = cli("overfit", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "PASS rule: every loss term with weight > 0 ends at most 0.2x its first-step value" in text
    assert "Why:" in text
    assert "overfit" in cli("--help").stdout


def test_overfit_rejects_more_samples_than_the_split_has(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, "--samples", "100", "--steps", "1")
    assert proc.returncode == 2 and "--samples: 100 is more than the train split has (14 samples)" in proc.stderr
    assert "Traceback" not in proc.stderr
