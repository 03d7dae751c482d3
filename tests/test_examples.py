"""The examples under examples/ run as a user runs them and print an honest comparison.

(forecast_my_run.py with a pipeline model: tests/test_api.py::test_the_readme_example_end_to_end_matches_the_forecast_stage.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_my_loop_compares_gfm_with_both_references(tmp_path, capsys):
    mse = _load("record_my_loop").main(str(tmp_path / "my_net.zarr"), n_runs=12, steps=30, fit_steps=40)
    assert set(mse) == {"gfm", "linear", "last_value"} and all(v > 0 for v in mse.values())
    out = capsys.readouterr().out
    best = min(mse, key=mse.get)
    assert f"best here: {best}." in out
    # the GFM row says plainly when it loses to a reference, instead of printing two numbers without comment
    assert ("does not beat it" in out) == (best != "gfm")
    assert "x staying at step 10" in out


def test_forecast_my_run_without_a_trained_model_says_what_to_run(tmp_path):
    """No --model and none of the default locations trained: one line naming them and the command to run."""
    code = ("import sys, runpy; sys.argv = ['forecast_my_run.py'];"
            f"m = runpy.run_path({str(ROOT / 'examples' / 'forecast_my_run.py')!r}, run_name='not_main');"
            f"m['DEFAULT_MODELS'][:] = [__import__('pathlib').Path({str(tmp_path / 'nowhere')!r})];"
            "m['main']([])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no trained model found" in lines[0] and "make run PRESET=quick" in lines[0]
    assert "Traceback" not in proc.stderr


def test_forecast_my_run_defaults_are_what_make_run_and_the_quick_preset_leave():
    m = _load("forecast_my_run")
    rel = [p.relative_to(ROOT).as_posix() for p in m.DEFAULT_MODELS]
    assert rel == ["data/models/mlp_regression/sgd/gfm_function/1",
                   "build/quick/data/models/mlp_regression/sgd/gfm_function/1"]
    # both studies train gfm_function on mlp_regression-sgd
    import yaml

    for params in ("params.yaml", "params.quick.yaml"):
        p = yaml.safe_load((ROOT / params).read_text())
        assert "mlp_regression-sgd" in p["stores"], params
        models = p["stores"]["mlp_regression-sgd"].get("models", p["train"]["models"])
        assert "gfm_function" in models, params


def test_jump_my_loop_compares_both_forecasters_with_plain_training_and_names_the_winner(tmp_path, capsys):
    results = _load("jump_my_loop").main(str(tmp_path / "runs.zarr"), n_runs=6, record_steps=40, steps=80,
                                         prefix_end=5, horizons=(10, 20), every=10, fit_steps=20)
    assert set(results) == {"plain", "gfm_function", "linear"}
    plain = results["plain"]
    assert plain["seconds_to_target"] <= plain["loop_seconds"]  # the plain run reaches its own final loss
    for name in ("gfm_function", "linear"):
        r = results[name]
        assert r["attempts"] == 8 and 0 <= r["accepted"] <= r["attempts"], name  # every 10 of 80 steps
        assert r["jumped_steps"] >= 5 * r["accepted"] and r["jump_seconds"] > 0, name  # >= horizon 10 - prefix 5
        if r["accepted"] == 0:  # every attempt rolled back: the same run as plain training, bit for bit
            assert r["final_test_loss"] == plain["final_test_loss"], name
    out = capsys.readouterr().out
    best = min(results, key=lambda n: (results[n]["seconds_to_target"], results[n]["final_test_loss"]))
    assert f"wins here: {best}" in out
    # a jump-ahead loop that is not faster than plain says so, with what its jumps cost and saved
    for name in ("gfm_function", "linear"):
        slower = results[name]["seconds_to_target"] >= plain["seconds_to_target"]
        assert (f"{name} is not faster than plain here" in out) == slower, name
