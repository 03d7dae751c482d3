"""Jump-ahead training: rejected jumps change nothing, good forecasts cut optimizer steps, settings are checked."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY
from gfm.artifacts.outputs import ACCELERATE, marked
from gfm.base.errors import ParamsError
from gfm.cli import main
from gfm.config import parse_params
from gfm.forecasters import Forecaster
from gfm.report.accelerate_table import accelerate_section
from gfm.stages import accelerate, generate, split, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on a small shared CPU: one thread avoids OpenMP contention with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_doc(**acc) -> dict:
    doc = yaml.safe_load(TINY.read_text())
    doc["accelerate"] = {"stores": {"least_squares_1d_gd-sgd": {"task": "least_squares_1d_gd", "optimizer": "sgd"}},
                         "models": ["exp_fit", "linear"], "every": 8, "horizons": [16, 40], "holdout": 8, "runs": 3,
                         "timing": False, **acc}
    # the tiny study does not train exp_fit; these tests jump with it (exact on least squares)
    doc["train"]["models"] = [*doc["train"]["models"], "exp_fit"]
    return doc


class Wild(Forecaster):
    """Forecasts weights far from anything sensible: every jump must be rejected."""

    name = "wild_test_only"
    neural = False

    def _forecast(self, prefix, horizons):
        return prefix.weights[:, -1:].repeat(1, len(horizons), 1) + 1e3


def test_rejected_jumps_leave_training_exactly_as_plain():
    params = parse_params(tiny_doc())
    spec, task_cfg = params.lookup_store("mlp_regression-sgd")
    from gfm.stages.runs import run_ids

    runs = run_ids([1], 3)
    data = accelerate.setup_runs(task_cfg, spec.optimizer, 0, runs, holdout=8, budget=40, task_name=spec.task)
    task = data["task"]
    plain = accelerate.simulate_jumps(task, spec.optimizer, data, budget=40, forecaster=None, every=8, horizons=[16])
    wild = accelerate.simulate_jumps(task, spec.optimizer, data, budget=40, forecaster=Wild(prefix_end=8, horizons=[16]),
                                     every=8, horizons=[16])
    np.testing.assert_array_equal(wild["loss"], plain["loss"])
    assert wild["accepted"].sum() == 0 and wild["rejected"].sum() == 3 * 4  # attempts at steps 8, 16, 24, 32
    assert plain["loss"][:, -1].mean() < plain["loss"][:, 0].mean()
    # the held-out samples are not training samples
    assert data["xh"].shape[1] == 8 and not any(torch.equal(data["xh"][0, 0], r) for r in data["x"][0])


def test_good_forecasts_cut_steps_end_to_end(tmp_path):
    """Full-batch GD on least squares is geometric decay, which exp_fit forecasts almost exactly: the jumps are
    taken and the plain run's final loss is reached in far fewer optimizer steps. linear extrapolation overshoots
    less reliably; both go through generate -> split -> train -> accelerate like the pipeline."""
    doc = tiny_doc()
    params = parse_params(doc)
    store = tmp_path / "ls.zarr"
    generate.run(params, "least_squares_1d_gd-sgd", out=store, progress=False)
    split.run(params.split, store=store, out=tmp_path / "split.json")
    for name in ("exp_fit", "linear"):
        train.run(params, store_key="least_squares_1d_gd-sgd", model=name, split=tmp_path / "split.json", store=store,
                  out=tmp_path / "models" / name, progress=False)
    out = tmp_path / "acc.json"
    r = accelerate.run(params, store_key="least_squares_1d_gd-sgd", split=tmp_path / "split.json",
                       models=tmp_path / "models", out=out)
    assert json.loads(out.read_text()) == marked(ACCELERATE, r) and "seconds" not in r  # timing off: byte-reproducible
    m = r["models"]["exp_fit"]
    assert r["plain"]["runs"] == 6 and m["runs"] == 6
    assert m["accepted"] >= 6 and m["reached"] == 1.0
    assert m["speedup_steps"] >= accelerate.SPEEDUP_TARGET and m["meets_target"]
    assert m["final_loss_mean"] <= r["plain"]["final_loss_mean"] and m["no_worse_final"] == 1.0
    assert m["plain_steps_to_target_mean"] > m["steps_to_target_mean"]
    # the same settings on validation runs give a different, separate experiment
    r_val = accelerate.run(params, store_key="least_squares_1d_gd-sgd", split=tmp_path / "split.json",
                           models=tmp_path / "models", out=tmp_path / "val.json", part="val")
    assert r_val["part"] == "val" and r_val["plain"]["final_loss_mean"] != r["plain"]["final_loss_mean"]
    # the report section renders the measured numbers
    (tmp_path / "acc" / "least_squares_1d_gd").mkdir(parents=True)
    (tmp_path / "acc" / "least_squares_1d_gd" / "sgd.json").write_text(out.read_text())
    lines = accelerate_section(params, tmp_path / "acc")
    text = "\n".join(lines)
    paired = m["speedup_steps_paired"]
    assert paired["n_runs"] == 6 and 1 < paired["ci"][0] <= paired["ratio"] <= paired["ci"][1]
    assert "## Jump-ahead training" in text and f"{paired['ratio']:.2f}x [{paired['ci'][0]:.2f}," in text
    assert f"| exp_fit ✓ | {m['steps_to_target_mean']:.3g} |" in text
    # the loss is measured on held-out samples that never decide a jump, and the curves for the figure are kept
    assert r["loss"].startswith("held-out (") and m["worse_runs"] == 0
    assert r["curves"]["plain"]["step"][0] == 0 and r["curves"]["plain"]["step"][-1] == r["budget"]
    assert "seconds" not in r["curves"]["exp_fit"]  # timing off: no clock in the outputs
    assert r["best_by_validation"]["model"] in ("exp_fit", "linear")
    assert accelerate_section(params, tmp_path / "nothing") == []
    # a model that was not trained for the store is a one-line error
    bad = parse_params({**doc, "train": {**doc["train"], "models": [*doc["train"]["models"], "lfd2"]},
                        "accelerate": {**doc["accelerate"], "models": ["lfd2"]}})
    with pytest.raises(accelerate.AccelerateError, match="train model 'lfd2'"):
        accelerate.run(bad, store_key="least_squares_1d_gd-sgd", split=tmp_path / "split.json",
                       models=tmp_path / "models", out=tmp_path / "x.json")
    # a model that refused the store at train time is reported with its reason; the others still jump
    import shutil

    from gfm.artifacts.refusals import REFUSED_FILE, write_refusal

    shutil.rmtree(tmp_path / "models" / "linear")
    (tmp_path / "models" / "linear").mkdir()
    write_refusal(tmp_path / "models" / "linear" / REFUSED_FILE, model="linear", kind="linear",
                  reason="linear: cannot | forecast <this>", stage="train")
    r2 = accelerate.run(params, store_key="least_squares_1d_gd-sgd", split=tmp_path / "split.json",
                        models=tmp_path / "models", out=tmp_path / "refused.json")
    assert r2["models"]["linear"] == {"refused": "linear: cannot | forecast <this>"}
    assert r2["models"]["exp_fit"] == r["models"]["exp_fit"]
    (tmp_path / "acc" / "least_squares_1d_gd" / "sgd.json").write_text((tmp_path / "refused.json").read_text())
    assert "| linear | refused: linear: cannot \\| forecast &lt;this&gt; |" in "\n".join(
        accelerate_section(params, tmp_path / "acc"))


@pytest.mark.parametrize("edit, match", [
    ({"stores": {"nope-sgd": {"task": "nope", "optimizer": "sgd"}}}, "accelerate.stores.nope-sgd: expected a key"),
    ({"stores": {"mlp_regression-sgd": {"task": "mlp_regression", "optimizer": "adam"}}}, "the store is"),
    ({"models": ["nope"]}, r"accelerate.models\[0\]: got 'nope'"),
    ({"horizons": [17]}, r"accelerate.horizons: got \[17\]"),
    ({"state_after_jump": "drop"}, "accelerate.state_after_jump"),
])
def test_settings_are_checked(edit, match):
    doc = tiny_doc(**edit)
    with pytest.raises(ParamsError, match=match):
        parse_params(doc)


def test_jump_models_must_be_trained_on_the_store():
    doc = copy.deepcopy(tiny_doc(models=["wnn"]))
    doc["train"]["models"] = [m for m in doc["train"]["models"] if m != "wnn"]
    with pytest.raises(ParamsError, match="'wnn' is not trained on store"):
        parse_params(doc)


def test_every_must_be_a_multiple_of_record_every():
    doc = tiny_doc(every=3)
    doc = copy.deepcopy(doc)
    doc["tasks"]["least_squares_1d_gd"]["record_every"] = 2
    with pytest.raises(ParamsError, match="accelerate.every: got 3; expected a multiple"):
        parse_params(doc)


def test_cli_refuses_unknown_store(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(tiny_doc()))
    rc = main(["accelerate", "--params", str(p), "--store", "mlp_regression-adam", "--split", "s.json",
               "--models", "m", "--out", str(tmp_path / "o.json")])
    assert rc == 2 and "expected one of least_squares_1d_gd-sgd" in capsys.readouterr().err


def test_a_held_out_pool_larger_than_the_image_set_is_refused():
    """digits has 1,797 images: training, held-out and measured samples of one run must fit in them, or the held-out
    sets would silently come out short (and an empty measured set would grade the run on its training data)."""
    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    data["accelerate"]["measure"] = 1500
    with pytest.raises(ParamsError, match=r"accelerate.stores.digits-sgd: tasks.digits.n_samples \+ accelerate.holdout "
                                          r"\+ accelerate.measure = 256 \+ 64 \+ 1,500 samples, above the 1,797"):
        parse_params(data)
