"""The fair-comparison protocol of the train stage (gfm.stages.tuning): one budget for every learned model, the same
validation-only search, test runs never read."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from gfm import cli
from gfm.artifacts.output_contents import MARKER_FILE
from gfm.forecasters import FORECASTERS, read_model
from gfm.stages import train, tuning

STORE = "mlp_regression-adam"
LEARNED = ["lstm", "wnn", "gfm"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split_file(tiny_split) -> Path:
    return tiny_split


@pytest.fixture(scope="module")
def trained(tiny_params, tiny_store, split_file, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    for model in [*LEARNED, "last_value"]:
        train.run(tiny_params, store_key=STORE, model=model, split=split_file, store=tiny_store, out=root / model,
                  progress=False)
    return {m: root / m for m in [*LEARNED, "last_value"]}


# ------------------------------------------------------------------------------------------- pure core

def test_trials_are_distinct_deterministic_and_per_model():
    space = {"lr": [0.001, 0.003, 0.01], "hidden": [16, 32], "layers": [1, 2]}
    a = tuning.draw_trials(space, 5, seed=0, model="lstm")
    assert a == tuning.draw_trials(space, 5, seed=0, model="lstm")  # every store of a model tries the same sets
    assert len({json.dumps(t, sort_keys=True) for t in a}) == 5
    assert all(set(t) == set(space) and all(t[k] in space[k] for k in t) for t in a)
    assert a != tuning.draw_trials(space, 5, seed=1, model="lstm")
    assert tuning.grid_size(space) == 12
    with pytest.raises(ValueError, match="12 option sets; 13 trials"):
        tuning.draw_trials(space, 13, seed=0, model="lstm")


def test_the_lowest_finite_score_wins_and_all_nan_is_refused():
    assert tuning.choose([0.3, float("nan"), 0.1, 0.1, float("inf")]) == 2
    with pytest.raises(ValueError, match="NaN or infinite"):
        tuning.choose([float("nan"), float("inf")])


def test_budget_keys_are_written_into_learned_options(tiny_params):
    opts = tuning.learned_options({"hidden": 8}, tiny_params.train.budget)
    assert opts == {"hidden": 8, "steps": 40, "eval_every": 20, "patience": 2}


# ---------------------------------------------------------------------------------------------- params

@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["models"]["lstm"].update(steps=5000), "models.lstm.steps: set for every learned model at once by train.budget.steps"),
    (lambda d: d["models"]["gfm"].update(patience=50), "models.gfm.patience: set for every learned model"),
    (lambda d: d["train"]["tuning"]["space"]["lstm"].update(steps=[10, 20]), "train.tuning.space.lstm.steps: the budget is not tuned"),
    (lambda d: d["train"]["tuning"]["space"].pop("wnn"), "train.tuning.space.wnn: missing"),
    (lambda d: d["train"]["tuning"].update(trials=3), "train.tuning.space.lstm: 2 option sets; train.tuning.trials = 3"),
    (lambda d: d["train"]["tuning"]["space"]["lstm"].update(hidden=[0, 8]), "train.tuning.space.lstm.hidden"),
    (lambda d: d["train"]["tuning"]["space"].update(last_value={"lr": [1, 2]}), "last_value is fitted in closed form"),
    (lambda d: d["train"]["tuning"]["space"].update(nope={"lr": [1, 2]}), "train.tuning.space.nope: expected a name from models"),
    (lambda d: d["train"]["tuning"].update(dataset_seed=99), "train.tuning.dataset_seed: got 99"),
])
def test_validate_refuses_an_unfair_or_broken_protocol(tmp_path, capsys, edit, needle):
    import yaml

    from conftest import TINY

    data = yaml.safe_load(Path(TINY).read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------- train stage

def test_every_learned_model_trains_under_the_same_budget(trained, tiny_params):
    budgets = set()
    for model in LEARNED:
        meta = json.loads((trained[model] / "summary.json").read_text())
        budgets.add(meta["budget_steps"])
        assert meta["budget"] == dataclasses.asdict(tiny_params.train.budget)
        for seed, entry in meta["seeds"].items():
            assert 0 < entry["steps_used"] <= meta["budget_steps"], (model, seed)
            assert read_model(trained[model] / seed).config.steps == meta["budget_steps"]
    assert budgets == {tiny_params.train.budget.steps}
    meta = json.loads((trained["last_value"] / "summary.json").read_text())
    assert meta["budget_steps"] is None and meta["tuning"] is None  # closed form: nothing to budget or tune


def test_tuning_records_every_trial_and_uses_the_choice_for_every_seed(trained, tiny_params):
    for model in LEARNED:
        meta = json.loads((trained[model] / "summary.json").read_text())
        t = meta["tuning"]
        assert t["dataset_seed"] == 1 and len(t["trials"]) == tiny_params.train.tuning.trials
        scores = [tr["val_final_mse"] for tr in t["trials"]]
        assert t["chosen"] == int(np.nanargmin(scores))
        assert t["chosen_options"] == t["trials"][t["chosen"]]["options"]
        # the choice is used for every dataset seed, and the tuning seed's fit is the chosen trial's fit
        for seed in meta["seeds"]:
            cfg = read_model(trained[model] / seed).config
            assert all(getattr(cfg, k) == v for k, v in t["chosen_options"].items()), (model, seed)
        final = str(tiny_params.forecast.horizons[-1])
        assert meta["seeds"]["1"]["val_weight_mse"][final] == pytest.approx(scores[t["chosen"]])
        assert sorted(p.name for p in trained[model].iterdir()) == [MARKER_FILE, "1", "2", "summary.json"]


def test_training_and_tuning_never_read_test_runs(tiny_params, tiny_store, split_file, trained, tmp_path):
    """Overwrite every test run's trajectory with garbage: the fitted models and their summaries are unchanged."""
    store = tmp_path / "adam.zarr"
    shutil.copytree(tiny_store, store)
    test = sorted(r for e in json.loads(split_file.read_text())["datasets"].values() for r in e["test"])
    root = zarr.open_group(str(store), mode="r+")
    w = root["weights"]
    junk = np.full((1, *w.shape[1:]), 1e3, dtype=np.float32)
    for r in test:
        w[r : r + 1] = junk
    for model in ["lstm", "gfm"]:
        out = tmp_path / model
        train.run(tiny_params, store_key=STORE, model=model, split=split_file, store=store, out=out, progress=False)
        assert (out / "summary.json").read_bytes() == (trained[model] / "summary.json").read_bytes()
        for seed in ("1", "2"):
            assert (out / seed / "weights.safetensors").read_bytes() == \
                (trained[model] / seed / "weights.safetensors").read_bytes()


def test_protocol_section_and_val_curves_read_the_summaries(trained, tiny_params, tmp_path):
    from gfm.report import protocol

    models_dir = tmp_path / "models"
    dest = models_dir / "mlp_regression" / "adam"
    dest.mkdir(parents=True)
    for model, path in trained.items():
        shutil.copytree(path, dest / model)
    lines = protocol.protocol_section(tiny_params, models_dir)
    text = "\n".join(lines)
    assert f"Budget: {tiny_params.train.budget.steps} optimizer updates" in text
    for model in LEARNED:
        assert any(line.startswith(f"| {model} | {tiny_params.train.budget.steps} |") for line in lines), model
    assert "| last_value |" not in text  # closed-form models have no budget row
    figs = protocol.val_curve_figures(tiny_params, models_dir, tmp_path)
    assert figs == {STORE: f"{STORE}-val-curves.png"} and (tmp_path / figs[STORE]).stat().st_size > 1000


def test_flattened_reads_patience_stops_and_late_improvement():
    log = [{"step": s, "val_loss": v} for s, v in ((100, 1.0), (200, 0.5), (300, 0.4), (400, 0.398))]
    assert protocol_flat(log, 400)  # the last quarter brought 2 / 602 of the gain
    log[-1]["val_loss"] = 0.3
    assert not protocol_flat(log, 400)  # 0.1 of 0.7: still improving when the budget ran out
    assert protocol_flat(log[:2], 400)  # stopped on patience at 200 of 400
    geometric = [{"step": s, "val_loss": 10.0 ** -(s / 25)} for s in range(25, 401, 25)]
    assert protocol_flat(geometric, 400)  # converging to 0: relative gains never stop, the share does


def protocol_flat(log, budget):
    from gfm.report.protocol import flattened

    return flattened(log, budget)


def test_every_registered_learned_kind_takes_the_budget_keys():
    for kind, cls in FORECASTERS.items():
        fields = {f.name for f in dataclasses.fields(cls.Config)} if dataclasses.is_dataclass(cls.Config) else set()
        if cls.closed_form:
            continue
        assert {"steps", "eval_every", "patience"} <= fields, kind


def test_adamw_matches_torch_adamw_with_cosine_annealing():
    from gfm.forecasters.fitting import AdamW

    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = AdamW(a.parameters(), lr=0.01, weight_decay=0.1, steps=50)
    ref = torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, 50, eta_min=0.01 * 0.05)
    x, y = torch.randn(64, 5), torch.randn(64, 3)
    for _ in range(50):
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
        sched.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()


def test_a_learned_fit_does_not_import_torch_dynamo(tmp_path):
    """Constructing a torch.optim optimizer imports torch._dynamo (seconds per train job: BENCHMARKS.md, "End to
    end"); our fits must not."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom gfm.forecasters import make_forecaster\nfrom test_classical import traj, geometric\n"
            "fc = make_forecaster('lstm', {'hidden': 4, 'steps': 5, 'eval_every': 5}, prefix_end=8, horizons=[16, 24])\n"
            "d = traj(geometric(6, 2, seed=0))\nfc.fit(d, d, rng=torch.Generator().manual_seed(0))\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
