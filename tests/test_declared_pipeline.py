"""A user's own runs through the whole pipeline, as README "Forecast your own training runs" describes it.

Two stores recorded with gfm.record_runs from the loop of examples/forecast_my_runs.py, neither with ReLU: a Tanh
MLP (the activation read from its nn.Sequential, held-out data passed), and a network with its own forward, whose
activation the recorder cannot read. Both are declared in a preset, run by Snakemake in a workspace and
recorded in DVC (`make run PRESET=...`), then checked: every forecaster that can forecast a store is scored,
gfm_function refuses the network it cannot rebuild without blocking the others, downstream metrics are
computed on the runs' own held-out data or reported absent with the reason, and a re-recorded store is
refused until it is declared again, after which DVC sees exactly its stages as stale and `dvc repro` re-runs
them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("snakemake", path=str(BIN)) is None,
                                reason="needs the pipeline install (snakemake, dvc)")


def _example():
    spec = importlib.util.spec_from_file_location("forecast_my_runs", ROOT / "examples" / "forecast_my_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OwnForward(nn.Module):
    """A user's network with its own forward: the recorder cannot tell which activation it applies."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.b(torch.nn.functional.softplus(self.a(x)))


def _run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The two stores recorded and declared in a preset, run with Snakemake in a workspace, committed to DVC."""
    ex = _example()
    base = tmp_path_factory.mktemp("mine")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the example's setting, for this module's recording only
    seeds = [1, 2]
    try:
        tanh = ex.record_runs(base / "recorded" / "tanh_net.zarr", seeds=seeds, runs_per_seed=8, steps=40)
        own = ex.record_runs(base / "recorded" / "own_net.zarr", seeds=seeds, runs_per_seed=8, steps=40,
                             model_fn=OwnForward)
    finally:
        torch.set_num_threads(threads)
    params = base / "params.mine.yaml"
    ex.write_study(params, {"tanh_net": tanh, "own_net": own}, seeds, steps=40)
    data = yaml.safe_load(params.read_text())  # a smaller budget: the same pipeline, in minutes
    data["train"]["budget"] = {"steps": 40, "eval_every": 20, "patience": 2}
    data["train"]["tuning"]["trials"] = 1
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    ws = base / "ws"
    _run([str(BIN / "gfm"), "workspace", str(ws), "--params", str(params), "--repo", str(ROOT)], base)
    _run([str(BIN / "snakemake"), "--cores", "2", "-q"], ws)
    _run([str(BIN / "gfm"), "commit"], ws)
    return {"base": base, "ws": ws, "params": params, "stores": {"tanh_net": tanh, "own_net": own}}


def _metrics(ws: Path, task: str) -> dict:
    return json.loads((ws / "data" / "metrics" / task / "momentum.json").read_text())


def test_every_model_that_can_forecast_a_store_is_scored(study):
    tanh = _metrics(study["ws"], "tanh_net")
    assert set(tanh["models"]) == {"last_value", "linear", "exp_fit", "lstm", "gfm_state", "gfm_function"}
    assert all("refused" not in m and m["final_mse"]["n"] == 2 for m in tanh["models"].values())
    own = _metrics(study["ws"], "own_net")
    refused = own["models"]["gfm_function"]["refused"]
    assert "activation" in refused  # the store does not say what the network computes
    assert all("final_xlv" in m for n, m in own["models"].items() if n != "gfm_function")
    summary = (study["ws"] / "reports" / "summary.md").read_text()
    assert "own_net" in summary and "tanh_net" in summary and "refused: " in summary
    # the report says why a store's downstream columns are empty, in evaluate's words
    assert f"- own_net-momentum: {own['downstream_absent']}" in summary
    assert "Declared stores (own_net-momentum, tanh_net-momentum): the loss on each run's held-out" in summary


def test_downstream_metrics_are_the_runs_own_or_absent(study):
    tanh = _metrics(study["ws"], "tanh_net")
    # last_value forecasts the prefix-end weights: its downstream loss is the prefix loss, both computed with
    # the rebuilt Tanh network on each run's held-out data (a ReLU network, or another task's data, differs)
    assert tanh["models"]["last_value"]["downstream"]["loss"]["mean"] == pytest.approx(
        tanh["reference"]["prefix_loss"]["mean"], rel=1e-6)
    assert "downstream_absent" not in tanh
    own = _metrics(study["ws"], "own_net")
    assert "activation" in own["downstream_absent"] and own["reference"] == {}
    assert not any("downstream" in m for m in own["models"].values())


def test_the_run_is_recorded_in_dvc_and_a_rerecorded_store_is_refused_until_declared(study):
    ws, params, own = study["ws"], study["params"], study["stores"]["own_net"]
    assert _run([str(BIN / "dvc"), "status", "-q"], ws, ok=False).returncode == 0  # clean: everything committed
    loss = __import__("zarr").open_array(own / "loss", mode="r+")
    loss[0, 0] = loss[0, 0] + 1  # the store changes under its declaration
    bad = _run([str(BIN / "gfm"), "validate", str(params)], study["base"], ok=False)
    assert bad.returncode == 2 and "tasks.own_net.sha256: the store at" in bad.stderr
    _run([str(BIN / "gfm"), "declare", str(own), "--params", str(params), "--task", "own_net", "--write"],
         study["base"])
    _run([str(BIN / "gfm"), "workspace", str(ws), "--params", str(params), "--repo", str(ROOT)], study["base"])
    stale = _run([str(BIN / "dvc"), "status", "--json"], ws).stdout
    stages = set(json.loads(stale))
    assert "generate@own_net-momentum" in stages and not any("tanh_net" in s for s in stages)
    # DVC re-runs what the new store made stale, and only that (the other store's outputs stay as they were)
    before = (ws / "data" / "metrics" / "tanh_net" / "momentum.json").stat().st_mtime_ns
    _run([str(BIN / "dvc"), "repro", "-q"], ws)
    assert _run([str(BIN / "dvc"), "status", "-q"], ws, ok=False).returncode == 0
    assert (ws / "data" / "metrics" / "tanh_net" / "momentum.json").stat().st_mtime_ns == before
    assert "activation" in _metrics(ws, "own_net")["models"]["gfm_function"]["refused"]
    taken_in = __import__("zarr").open_group(ws / "data" / "trajectories" / "own_net" / "momentum.zarr", mode="r")
    assert taken_in.attrs["declared"]["sha256"] == yaml.safe_load(params.read_text())["tasks"]["own_net"]["sha256"]
