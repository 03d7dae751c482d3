"""What DVC shows of a run: the headline stage's metrics.json and plots/, on a tiny pipeline output.

A tiny store is evaluated in-process into a gfm workspace (data/metrics, data/plots as the evaluate stage
writes them), `gfm headline` condenses it, then the real `dvc plots show` / `dvc metrics show` read it:
every plot must carry data (parsed from DVC's JSON and from the HTML page it writes) and, where Chromium is
installed, the page must draw a line per model in a real browser with no network (tests/test_plots_offline.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_tool
from gfm.artifacts.outputs import OutputError
from gfm.base.errors import GFMError
from gfm.report import headline
from gfm.stages import evaluate, forecast, split, train
from gfm.tools.workspace import sync_workspace

pytestmark = pytest.mark.usefixtures("one_thread")

STORE, TASK, OPT = "mlp_regression-adam", "mlp_regression", "adam"
MODELS = ["last_value", "linear", "exp_fit"]
PLOT_IDS = {f"plots/error_vs_horizon/{STORE}.csv", f"plots/trajectory/{STORE}.csv"}
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def workspace(tiny_params, tiny_store, tmp_path_factory) -> Path:
    """A tiny-study workspace holding one evaluated store and the headline stage's outputs."""
    root = tmp_path_factory.mktemp("plots")
    ws = sync_workspace(root / "ws", TINY, repo=ROOT)
    params = dataclasses.replace(tiny_params, train=dataclasses.replace(tiny_params.train, models=MODELS))
    split_path = ws / "data" / "splits" / TASK / f"{OPT}.json"
    split.run(params.split, store=tiny_store, out=split_path)
    for name in MODELS:
        train.run(params, store_key=STORE, model=name, split=split_path, store=tiny_store,
                  out=root / "models" / name, progress=False)
    forecast.run(params, store_key=STORE, store=tiny_store, split=split_path, models=root / "models",
                 out=root / "forecasts")
    evaluate.run(params, store_key=STORE, store=tiny_store, split=split_path, forecasts=root / "forecasts",
                 metrics=ws / "data" / "metrics" / TASK / f"{OPT}.json", plots=ws / "data" / "plots" / TASK / OPT)
    run_tool(["gfm", "headline", "--metrics", f"data/metrics/{TASK}/{OPT}.json"], ws)
    return ws


def _plots_json(ws: Path) -> dict:
    out = run_tool(["dvc", "plots", "show", "--json"], ws).stdout
    return json.loads(out[out.index("{"):])


def test_every_dvc_plot_has_data(workspace):
    shown = _plots_json(workspace)
    assert "errors" not in shown, shown.get("errors")
    assert set(shown["data"]) == PLOT_IDS
    for plot_id, renders in shown["data"].items():
        assert len(renders) == 1 and renders[0]["type"] == "vega", plot_id
        values = renders[0]["content"]["data"]["values"]
        assert values, f"{plot_id}: no data"
    err = shown["data"][f"plots/error_vs_horizon/{STORE}.csv"][0]["content"]
    assert err["encoding"]["y"]["scale"] == {"type": "log"}        # our template, not DVC's linear one
    assert err["encoding"]["color"]["field"] == "model"
    rows = err["data"]["values"]
    assert [r["model"] for r in rows[::4]] == MODELS               # 4 horizons per model, params order
    assert all(float(r["mse"]) > 0 and math.isfinite(float(r["mse"])) for r in rows)
    traj = shown["data"][f"plots/trajectory/{STORE}.csv"][0]["content"]
    assert {r["series"] for r in traj["data"]["values"]} == {*MODELS, "true"}
    assert traj["facet"]["column"]["field"] == "param"


def _specs(html: str) -> dict[str, dict]:
    """Each plot <div id> of DVC's page -> the Vega-Lite spec embedded in it."""
    found = re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*'
                       r"vegaEmbed\(", html, flags=re.S)
    return {div: json.loads(spec) for div, spec in found}


@pytest.fixture(scope="module")
def page(workspace) -> Path:
    out = workspace / "dvc_plots"
    run_tool(["dvc", "plots", "show", "-o", str(out)], workspace)
    return out / "index.html"


def test_html_page_embeds_data_for_every_plot(page):
    specs = _specs(page.read_text())
    assert len(specs) == len(PLOT_IDS)
    for div, spec in specs.items():
        assert spec["data"]["values"], f"{div}: plot without data"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium to run this)")
def test_html_page_draws_every_plot_in_headless_chromium(page, tmp_path):
    """The page as DVC wrote it (the project's template, libraries inline), opened with no network."""
    from test_plots_offline import drawn_lines, render_dom

    drawn = drawn_lines(render_dom(page, tmp_path / "profile"))
    assert len(drawn) == len(PLOT_IDS)
    for name, (rendered, lines) in drawn.items():
        assert rendered == "ok", f"{name}: {rendered or 'not rendered'}"
        if "error_vs_horizon" in name:
            assert lines == len(MODELS), f"{name}: {lines} lines drawn, expected one per model"
        else:   # one line per series (models + the true run) in each parameter's panel
            assert lines >= len(MODELS) + 1, f"{name}: {lines} lines drawn"


def test_dvc_metrics_show_lists_the_headline_only(workspace):
    out = run_tool(["dvc", "metrics", "show", "--json"], workspace).stdout
    shown = json.loads(out[out.index("{"):])
    (rev,) = shown.values()          # one revision: the workspace ("" without git)
    files = rev["data"]
    assert set(files) == {"metrics.json"}, "the full per-store metrics must not be DVC metrics (thousands of columns)"
    xlv = files["metrics.json"]["data"]["final_xlv"]
    full = json.loads((workspace / "data" / "metrics" / TASK / f"{OPT}.json").read_text())["models"]
    assert set(xlv) == {STORE} and set(xlv[STORE]) == {"linear", "exp_fit"}     # last_value is the reference
    for name, value in xlv[STORE].items():
        assert value == pytest.approx(full[name]["final_xlv"]["mean"], rel=1e-3)


# ------------------------------------------------------------------------------------------ the pure core

def _metrics(store: str, **xlv: float | None) -> dict:
    models = {name: ({} if v is None else {"final_xlv": {"mean": v, "std": 0.0, "n": 2}}) for name, v in xlv.items()}
    return {"store": store, "task": "t", "optimizer": "sgd", "models": models}


def test_headline_rounds_and_leaves_out_the_reference():
    got = headline.headline_metrics([_metrics("a-sgd", last_value=1.0, lstm=0.123456789, wnn=float("inf")),
                                     _metrics("b-sgd", lstm=None)])       # b trains no last_value: no xLV
    assert got == {"final_xlv": {"a-sgd": {"lstm": 0.1235, "wnn": None}}}
    json.dumps(got, allow_nan=False)                                     # strict JSON: git diffs, any reader


def test_headline_refuses_what_evaluate_did_not_write():
    with pytest.raises(GFMError, match="given twice"):
        headline.headline_metrics([_metrics("a-sgd", lstm=1.0), _metrics("a-sgd", lstm=2.0)])
    with pytest.raises(GFMError, match="no 'store'/'models'"):
        headline.headline_metrics([{"pairs": []}])
    with pytest.raises(GFMError, match=r"x\.csv: no column\(s\) mse"):
        headline.plot_rows("step,model\n1,a\n", ["step", "model", "mse"], source="x.csv")
    with pytest.raises(GFMError, match="no data rows"):
        headline.plot_rows("step,model,mse\n", ["step", "model", "mse"], source="x.csv")


def test_headline_run_names_a_missing_plot_file_and_keeps_a_foreign_output(workspace, tmp_path):
    metrics = workspace / "data" / "metrics" / TASK / f"{OPT}.json"
    with pytest.raises(GFMError, match=rf"{TASK}/{OPT}/trajectory\.csv: plot data not found .*{STORE}"):
        empty = tmp_path / "plots-in"
        shutil.copytree(workspace / "data" / "plots", empty)
        (empty / TASK / OPT / "trajectory.csv").unlink()
        headline.run([metrics], plots=empty, out=tmp_path / "m.json", plot_data=tmp_path / "p")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "p").exists()
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": 1}\n')
    with pytest.raises(OutputError, match="notes.json"):
        headline.run([metrics], plots=workspace / "data" / "plots", out=mine, plot_data=tmp_path / "p")
    assert mine.read_text() == '{"mine": 1}\n' and not (tmp_path / "p").exists()


def test_headline_run_refuses_a_store_key_that_is_not_task_optimizer(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({**_metrics("../x-sgd", lstm=1.0), "task": "..", "counts": {}}))
    with pytest.raises(GFMError, match=r"m\.json: store '\.\./x-sgd' is not <task>-<optimizer>"):
        headline.run([bad], plots=tmp_path, out=tmp_path / "out.json", plot_data=tmp_path / "p")
    assert not (tmp_path / "p").exists()
