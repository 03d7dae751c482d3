"""What DVC shows of a run: the headline stage's metrics.json and plots/, on a tiny pipeline output.

A tiny store is evaluated in-process into a gfm workspace (data/metrics, data/plots as the evaluate stage
writes them), `gfm headline` condenses it, then the real `dvc plots show` / `dvc metrics show` read it:
every plot must carry data (parsed from DVC's JSON and from the HTML page it writes) and, where Chromium is
installed, the page must draw a line per model in a real browser.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_tool
from gfm import evaluate, forecast, headline, split, train
from gfm.errors import GFMError
from gfm.outputs import OutputError
from gfm.workspace import sync_workspace

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


def _vega_assets() -> Path | None:
    """Vega, Vega-Lite and vega-embed as Snakemake ships them for its reports (DVC's page loads them from a
    CDN, which a test machine may not reach)."""
    import snakemake

    assets = Path(snakemake.__file__).parent / "assets" / "data"
    libs = [assets / lib / f"{lib}.js" for lib in ("vega", "vega-lite", "vega-embed")]
    return assets if all(p.is_file() for p in libs) else None


# Draw as SVG (so the dumped DOM holds the marks) and record on each plot's <div> whether embedding worked.
_HOOK = """<script>
const gfmEmbed = window.vegaEmbed;
window.vegaEmbed = (el, spec) => gfmEmbed(el, spec, {renderer: "svg", actions: false})
  .then(() => { document.querySelector(el).dataset.rendered = "ok"; })
  .catch(e => { document.querySelector(el).dataset.rendered = "error: " + e; });
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium to run this)")
def test_html_page_draws_every_plot_in_headless_chromium(page, tmp_path):
    assets = _vega_assets()
    if assets is None:
        pytest.skip("this Snakemake ships no vega/vega-lite/vega-embed assets to load the page offline")
    html = page.read_text()
    for lib in ("vega", "vega-lite", "vega-embed"):
        html, n = re.subn(rf'<script src="https://cdn\.jsdelivr\.net/npm/{lib}@[^"]*"></script>',
                          f'<script src="{(assets / lib / f"{lib}.js").as_uri()}"></script>', html)
        assert n == 1, f"DVC's page no longer loads {lib} the way this test expects"
    local = tmp_path / "index.html"
    local.write_text(html.replace("</head>", _HOOK + "\n</head>", 1))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                          local.as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    divs = re.split(r'(?=<div id="plots_)', dom)[1:]
    assert len(divs) == len(PLOT_IDS), dom[:2000]
    for div in divs:
        name = re.match(r'<div id="([^"]+)"', div).group(1)
        assert 'data-rendered="ok"' in div, f"{name}: not rendered"
        lines = re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', div, flags=re.S)
        drawn = [d for g in lines for d in re.findall(r' d="(M[^"]+)"', g)]
        if "error_vs_horizon" in name:
            assert len(drawn) == len(MODELS), f"{name}: {len(drawn)} lines drawn, expected one per model"
        else:   # one line per series (models + the true run) in each parameter's panel
            assert len(drawn) >= len(MODELS) + 1, f"{name}: {len(drawn)} lines drawn"


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
