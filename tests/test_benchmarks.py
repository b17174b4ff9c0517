"""Every benchmark runs as the README runs it (tiny sizes here) and prints ONE JSON object as its last
line, with the fields issue 8 names. Speed is not asserted (the machines are shared); the metrics and MANO agreements are."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO
from test_engine import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)
from utnet.config import load_config


def run_bench(name, *args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    for line in lines[:-1]:  # one JSON object: nothing else on stdout parses as one
        with pytest.raises(ValueError):
            json.loads(line)
    return result


def positive(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_bench_data(version):
    r = run_bench("bench_data.py", "--frames", 3, "--rounds", 1, "--image-size", 64, 48, "--version", version)
    assert r["version"] == version and r["samples"] == 6
    assert positive(r["loader_samples_per_s"], r["raw_decode_samples_per_s"])
    assert r["ratio"] == pytest.approx(r["loader_samples_per_s"] / r["raw_decode_samples_per_s"], abs=2e-3)


def test_bench_metrics_is_exact():
    r = run_bench("bench_metrics.py", "--samples", 16, "--repeats", 1, "--threads", 1)
    assert positive(r["batched_samples_per_s"], r["reference_samples_per_s"], r["speedup"])
    assert r["max_abs_diff_mm"] <= 1e-9 and r["max_abs_diff_f_auc"] <= 1e-12  # issue 8 allows 1e-3 mm; it is exact
    assert r["batched_profile"]["per_sample_errors"] > 0


def test_bench_mano():
    r = run_bench("bench_mano.py", "--batch", 4, "--rounds", 1, "--repeats", 1, "--threads", 1)
    assert positive(r["ratio"])
    assert r["max_vertex_diff_m"] <= 1e-6  # the two forwards agree (README: 6e-8 m)


def test_bench_step_and_converge(tmp_path, tiny_data):  # noqa: F811
    config = write_config(tmp_path, tiny_data, train={"max_steps": 2, "log_every": 1, "eval_every": 0,
                                                      "checkpoint_every": 0, "image_every": 0})
    r = run_bench("bench_step.py", "--config", config, "--steps", 3)
    assert positive(r["engine_steps_per_s"], r["plain_steps_per_s"], r["ratio"])
    r = run_bench("bench_converge.py", "--config", config, "--steps", 2)
    assert r["steps"] == 2
    for reduction in ("sum", "mean"):
        part = r[reduction]
        assert isinstance(part["goal_met"], bool)
        for stage in ("baseline", "final"):
            assert positive(part[stage]["mpjpe"], part[stage]["pa_mpjpe"])
        assert part["mpjpe_ratio"] == pytest.approx(part["final"]["mpjpe"] / part["baseline"]["mpjpe"], abs=1e-3)
        final = part["final"]
        assert part["refined_vs_coarse_pa"] == pytest.approx(final["pa_mpjpe"] / final["coarse_pa_mpjpe"], abs=1e-3)
        assert part["coarse_pa_mpjpe_ratio"] == pytest.approx(
            final["coarse_pa_mpjpe"] / part["baseline"]["coarse_pa_mpjpe"], abs=1e-3)
    # without --reweigh both runs use the config's weights; with it the sum run's are converted
    assert r["sum"]["loss_weights"] == r["mean"]["loss_weights"] == {
        name: term["weight"] for name, term in load_config(config).loss.items()}
    assert "heldout" not in r["sum"]
    # --reweigh, and scoring on a larger held-out set: a 5-sequence set of the same seed minus the run's
    # training sequences (SYN10, SYN11) = its val sequence SYN12 and the new SYN13, SYN14
    heldout_root = tmp_path / "heldout"
    r2 = run_bench("bench_converge.py", "--config", config, "--steps", 1, "--reweigh", "--heldout-sequences", 5,
                   "--heldout-root", heldout_root, "--keep", tmp_path / "keep")
    assert r2["mean"]["loss_weights"] == r["mean"]["loss_weights"]  # mean -> mean: factor 1
    assert r2["sum"]["loss_weights"]["vertex_3d"] < r["sum"]["loss_weights"]["vertex_3d"] / 100
    assert r2["sum"]["final"]["mpjpe"] > 0 and isinstance(r2["sum"]["goal_met"], bool)
    assert (heldout_root / "train.txt").read_text().split()[-1] == "SYN14/0006"  # written: 5 sequences x 7 frames
    for reduction in ("sum", "mean"):
        held = r2[reduction]["heldout"]
        assert held["sequences"] == ["SYN12", "SYN13", "SYN14"] and held["num_samples"] == 21
        assert held["pa_mpjpe_ratio"] == pytest.approx(held["final"]["pa_mpjpe"] / held["baseline"]["pa_mpjpe"], abs=1e-3)
        assert isinstance(held["goal_met"], bool) and positive(held["wall_s"])
        final = json.loads((tmp_path / "keep" / f"{reduction}.heldout_final" / "metrics.json").read_text())
        assert final["provenance"]["checkpoint"]["path"].endswith("step_00000001")  # the run's final checkpoint
    # both runs start from the same untrained model (seed 0): the same held-out baseline
    for name, value in r2["mean"]["heldout"]["baseline"].items():
        assert r2["sum"]["heldout"]["baseline"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_bench_converge_refuses_a_heldout_set_of_another_seed(tmp_path, tiny_data):  # noqa: F811
    """The held-out set must hold the run's val sequences as the run saw them; a set written with another
    synthetic seed (same names, other frames) is refused, naming it."""
    import importlib.util

    from utnet.data import write_synthetic

    spec = importlib.util.spec_from_file_location("bench_converge", REPO / "benchmarks" / "bench_converge.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(write_config(tmp_path, tiny_data).read_text())
    other = tmp_path / "seed1"
    write_synthetic(other, sequences=4, frames=7, seed=1)
    with pytest.raises(SystemExit, match="val sequence SYN12 differs from the one in"):
        bench.score_heldout(run, 4, other)
    with pytest.raises(SystemExit, match="holds no sequence SYN12 .*--heldout-sequences 2 is too few"):
        write_synthetic(tmp_path / "two", sequences=2, frames=7, seed=0)
        bench.score_heldout(run, 2, tmp_path / "two")
