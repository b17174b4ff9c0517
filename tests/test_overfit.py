"""`utnet overfit` through the CLI: a configuration that learns PASSes (exit 0), lr 0 FAILs (exit 1).

Both runs use test_engine's tiny model and set; the calibration of the defaults on configs/synthetic.yaml
is measured outside the test suite (README "utnet overfit")."""
from __future__ import annotations

import re

from conftest import run_cli
from test_engine import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

SMALL = ("--samples", "4", "--steps", "45")


def table(stdout: str) -> dict[str, list[str]]:
    """The report's rows: first word -> the other words."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.split()}


def test_overfit_passes_on_a_configuration_that_learns(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("PASS: the total weighted loss"), verdict
    rows = table(proc.stdout)
    assert "the first 4 of 14 train samples" in proc.stdout
    assert "ramps" not in proc.stdout  # no term has one
    first, last = float(rows["total"][0]), float(rows["total"][1])
    assert last <= 0.3 * first, rows["total"]
    before, after = (float(x) for x in rows["refined/mpjpe"][:2])
    assert after <= 0.5 * before, rows["refined/mpjpe"]
    for key in ("keypoint_2d", "joint_3d", "vertex_3d", "mano_prior", "aux", "refined/pa_mpjpe", "coarse/mpjpe",
                "coarse/pa_mpjpe"):
        assert key in rows, key
    assert re.search(r"45 steps in [0-9.]+ s \([0-9.]+ steps/s\)", proc.stdout)


def test_overfit_fails_with_lr_0_and_says_why(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, "--samples", "4", "--steps", "3", "--set", "optim.lr=0")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: this configuration does not fit its training samples: the total weighted loss"), verdict
    assert "(1.00x, needs <= 0.3x)" in verdict and "MPJPE" in verdict


def test_overfit_trains_every_term_at_its_full_weight_past_its_ramp(tiny_data, tmp_path):  # noqa: F811
    """A ramp that starts after the run would leave joint_3d at weight 0 for every step; overfit skips ramps."""
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, "--samples", "4", "--steps", "2",
                   "--set", "loss.joint_3d.weight=0.1", "--set", "loss.joint_3d.ramp=[1000, 2000]")
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loss weights past their ramps" in proc.stdout
    weight, first = (float(x) for x in table(proc.stdout)["joint_3d"][:2])
    assert weight == 0.1 and first > 0


def test_overfit_help_states_the_pass_rule(cli):
    proc = cli("overfit", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "PASS rule: the total weighted loss ends at most 0.3x its first-step value AND the refined train-set MPJPE" in text
    assert "Why:" in text
    assert "overfit" in cli("--help").stdout


def test_overfit_rejects_more_samples_than_the_split_has(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    proc = run_cli("overfit", "--config", config, "--samples", "100", "--steps", "1")
    assert proc.returncode == 2 and "--samples: 100 is more than the train split has (14 samples)" in proc.stderr
    assert "Traceback" not in proc.stderr
