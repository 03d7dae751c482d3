"""Forecast, evaluate and report on a tiny store, with oracle forecasts whose scores are known exactly."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import zarr

from gfm.base.errors import GFMError
from gfm.config import ForecastConfig, TrainConfig
from gfm.report import summary as report
from gfm.stages import evaluate, forecast
from gfm.store.reader import open_trajectories
from stage_helpers import train_and_forecast


@pytest.fixture(scope="module")
def pipeline(tiny_params, tiny_store, tmp_path_factory):
    """split -> train (last_value, linear) -> forecast for the tiny mlp_regression-adam store."""
    root = tmp_path_factory.mktemp("eval")
    params, split_path = train_and_forecast(tiny_params, tiny_store, root, ["last_value", "linear"])
    return params, root, split_path


def test_forecast_stores_cover_every_test_run(pipeline, tiny_store):
    params, root, split_path = pipeline
    datasets = json.loads(split_path.read_text())["datasets"]
    expected = sorted(r for e in datasets.values() for r in e["test"] if r not in e["diverged"])
    for name in params.train.models:
        fs = forecast.open_forecasts(root / "forecasts" / f"{name}.zarr")
        assert sorted(fs.store_index.tolist()) == expected
        assert fs.weights.shape == (len(expected), len(params.forecast.horizons), open_trajectories(tiny_store).n_params)
    lv = forecast.open_forecasts(root / "forecasts" / "last_value.zarr")
    ts = open_trajectories(tiny_store)
    k = params.forecast.prefix_end
    for i, r in enumerate(lv.store_index):
        np.testing.assert_array_equal(lv.weights[i, 0], ts.weights[int(r), k])


def _with_oracle(root, tiny_store, params, name="oracle"):
    """Add a forecast store holding the true weights (MSE 0, recovers the whole loss drop)."""
    ts = open_trajectories(tiny_store)
    lv = zarr.open_group(str(root / "forecasts" / "last_value.zarr"), mode="r")
    idx = lv["runs/store_index"][:]
    truth = np.stack([ts.weights[int(r)][list(params.forecast.horizons)] for r in idx])
    attrs = {k: v for k, v in dict(lv.attrs).items() if k not in ("chunks", "complete")}
    forecast.write_forecast_store(root / "forecasts" / f"{name}.zarr", weights=truth, store_index=idx,
                                  dataset_seed=lv["runs/dataset_seed"][:], samples=None,
                                  attrs={**attrs, "model": name})


def test_evaluate_scores_known_forecasts_exactly(pipeline, tiny_store):
    params, root, split_path = pipeline
    _with_oracle(root, tiny_store, params)
    p2 = dataclasses.replace(params, train=TrainConfig(seed=0, models=["last_value", "linear", "oracle"]))
    m = evaluate.run(p2, store_key="mlp_regression-adam", store=tiny_store, split=split_path,
                     forecasts=root / "forecasts", metrics=root / "metrics.json", plots=root / "plots")
    oracle, lv = m["models"]["oracle"], m["models"]["last_value"]
    assert oracle["final_mse"]["mean"] == 0.0
    assert oracle["downstream"]["recovered"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert oracle["downstream"]["loss"]["mean"] == pytest.approx(m["reference"]["true_final_loss"]["mean"], rel=1e-4)
    assert lv["downstream"]["recovered"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert lv["final_xlv"]["mean"] == pytest.approx(1.0)
    assert lv["final_mse"]["mean"] > 0 and math.isfinite(m["models"]["linear"]["final_mse"]["mean"])
    assert set(lv["mse_by_horizon"]) == {str(h) for h in params.forecast.horizons}
    assert m["counts"]["test_runs"] == 6
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["models"]["oracle"]["final_mse"]["mean"] == 0.0
    assert (root / "plots" / "mse_vs_horizon.csv").read_text().startswith("model,horizon,step,mse,mse_std")


def test_report_writes_markdown_html_and_figures(pipeline, tiny_store, tmp_path):
    params, root, split_path = pipeline
    task, opt = "mlp_regression", "adam"
    metrics_dir, plots_dir = tmp_path / "metrics", tmp_path / "plots"
    p1 = dataclasses.replace(params, stores={"mlp_regression-adam": params.stores["mlp_regression-adam"]})
    evaluate.run(p1, store_key="mlp_regression-adam", store=tiny_store, split=split_path, forecasts=root / "forecasts",
                 metrics=metrics_dir / task / f"{opt}.json", plots=plots_dir / task / opt)
    out = report.run(p1, metrics_dir=metrics_dir, plots_dir=plots_dir, out=tmp_path / "reports")
    md = (out / "summary.md").read_text()
    assert "| last_value |" in md and "## Downstream" in md and "gfm final MSE ≥ 30% below lstm" in md
    assert "](figures/mlp_regression-adam-mse.png)" in md  # relative links beside the figures (GitHub view)
    html = (out / "summary.html").read_text()
    png = (out / "figures" / "mlp_regression-adam-mse.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    assert "<table>" in html and "figures/" not in html  # one self-contained page (tests/test_report.py)
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nstale block\n{report.README_END}\nrest\n")
    report.update_readme(p1, metrics_dir, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "stale block" not in text and "| last_value |" in text
    assert "t interval on the log ratios" in text and "ratio [interval]" in text  # claims carry their interval
    (tmp_path / "summary.md.txt").write_text(md)


def test_forecast_refuses_models_fitted_for_other_horizons(pipeline, tiny_store, tmp_path):
    params, root, split_path = pipeline
    other = dataclasses.replace(params, forecast=ForecastConfig(prefix_end=8, horizons=[16, 40]))
    with pytest.raises(GFMError, match="re-run the train stage"):
        forecast.run(dataclasses.replace(other, forecast=ForecastConfig(prefix_end=6, horizons=[16, 40])),
                     store_key="mlp_regression-adam", store=tiny_store, split=split_path, models=root / "models",
                     out=tmp_path / "f")
    assert not (tmp_path / "f").exists()
    with pytest.raises(GFMError, match="beyond the last recorded step"):
        forecast.run(dataclasses.replace(params, forecast=ForecastConfig(prefix_end=8, horizons=[16, 99])),
                     store_key="mlp_regression-adam", store=tiny_store, split=split_path, models=root / "models",
                     out=tmp_path / "f")


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium to run this)")
def test_html_report_renders_in_headless_chromium(pipeline, tiny_store, tmp_path):
    """The HTML report opens in a real browser on its own (copied without its figures/ directory): the screenshot
    has the tables and the figures drawn (the headline grid and the plots are in colour; a page whose images did
    not load has only black text and grey rules)."""
    import matplotlib.image

    params, root, split_path = pipeline
    p1 = dataclasses.replace(params, stores={"mlp_regression-adam": params.stores["mlp_regression-adam"]})
    evaluate.run(p1, store_key="mlp_regression-adam", store=tiny_store, split=split_path, forecasts=root / "forecasts",
                 metrics=tmp_path / "m" / "mlp_regression" / "adam.json", plots=tmp_path / "p" / "mlp_regression" / "adam")
    out = report.run(p1, metrics_dir=tmp_path / "m", plots_dir=tmp_path / "p", out=tmp_path / "reports")
    alone = tmp_path / "alone" / "summary.html"
    alone.parent.mkdir()
    shutil.copy(out / "summary.html", alone)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", alone.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    ink = (img[..., :3].mean(axis=2) < 0.5).mean()  # share of dark pixels: text, table rules, plot lines
    assert 0.005 < ink < 0.5, ink
    # tinted pixels come only from the figures (text, rules and table shading are grey): about 1e-4 of the page
    # when the images do not load, 1e-2 when they do
    colour = img[..., :3].max(axis=2) - img[..., :3].min(axis=2) > 0.05
    assert colour[:1200].mean() > 0.002, colour[:1200].mean()  # the headline grid, above the first table
    assert colour.mean() > 0.002, colour.mean()
