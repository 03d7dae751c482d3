"""The report on a small finished pipeline (two stores, a transfer pair, a jump-ahead run): the HTML stands alone
with every figure embedded, the headline, generalisation and jump-ahead figures are drawn from the stages'
numbers, and bad image links are refused."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser

import pytest
import torch
import yaml

from conftest import TINY
from gfm.base.errors import GFMError
from gfm.config import parse_params
from gfm.report import figures
from gfm.report import summary as report
from gfm.report.html import embed_image, render_html
from gfm.stages import accelerate, evaluate, forecast, generalize, generate, split, train

SOURCE, TARGET = "mlp_regression-adam", "mlp_regression_w10-adam"
MODELS = ["last_value", "linear"]  # closed-form fits: the fixture stays well under a few seconds


@pytest.fixture(scope="module")
def finished(tiny_store, tmp_path_factory):
    """data/ of a finished study: two stores (the second a wider MLP), last_value and linear on both, evaluate,
    one generalisation pair and jump-ahead training on the first store; returns (params, data dir)."""
    doc = yaml.safe_load(TINY.read_text())
    doc["tasks"]["mlp_regression_w10"] = dict(doc["tasks"]["mlp_regression"], hidden=[10])
    opt = doc["stores"][SOURCE]["optimizer"]
    doc["stores"] = {SOURCE: {"task": "mlp_regression", "optimizer": opt},
                     TARGET: {"task": "mlp_regression_w10", "optimizer": opt}}
    doc["train"]["models"] = MODELS
    doc["report"]["claims"] = []  # the claims compare models this study does not train
    doc["generalize"] = {"models": ["linear"], "pairs": [{"source": SOURCE, "target": TARGET}]}
    doc["accelerate"] = {**doc["accelerate"], "stores": {SOURCE: {"task": "mlp_regression", "optimizer": "adam"}},
                         "models": ["linear"]}
    params = parse_params(doc)
    root = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, spec in params.stores.items():
            t, o = spec.task, spec.optimizer.name
            store = tiny_store if key == SOURCE else root / "trajectories" / t / f"{o}.zarr"
            if key != SOURCE:
                generate.run(params, key, out=store, progress=False)
            sp = root / "splits" / t / f"{o}.json"
            split.run(params.split, store=store, out=sp)
            (root / "trajectories" / t).mkdir(parents=True, exist_ok=True)
            if key == SOURCE:  # generalize reads the stores from data/trajectories
                (root / "trajectories" / t / f"{o}.zarr").symlink_to(store)
            for name in MODELS:
                train.run(params, store_key=key, model=name, split=sp, store=store,
                          out=root / "models" / t / o / name, progress=False)
            forecast.run(params, store_key=key, store=store, split=sp, models=root / "models" / t / o,
                         out=root / "forecasts" / t / o)
            evaluate.run(params, store_key=key, store=store, split=sp, forecasts=root / "forecasts" / t / o,
                         metrics=root / "metrics" / t / f"{o}.json", plots=root / "plots" / t / o)
        generalize.run(params, data=root, out=root / "metrics" / "generalize.json")
        accelerate.run(params, store_key=SOURCE, split=root / "splits" / "mlp_regression" / "adam.json",
                       models=root / "models" / "mlp_regression" / "adam",
                       out=root / "metrics" / "accelerate" / "mlp_regression" / "adam.json")
    finally:
        torch.set_num_threads(threads)
    return params, root


@pytest.fixture(scope="module")
def written(finished, tmp_path_factory):
    params, root = finished
    out = tmp_path_factory.mktemp("report") / "reports"
    report.run(params, metrics_dir=root / "metrics", plots_dir=root / "plots",
               accelerate_dir=root / "metrics" / "accelerate", models_dir=root / "models", out=out)
    return out


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.refs: list[str] = []  # every href/src: what a browser would fetch or follow

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]


def test_html_stands_alone_with_every_figure_embedded(written):
    html = (written / "summary.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert not [r for r in parser.refs if not r.startswith("data:")]  # nothing to fetch: no file, no URL
    assert 'src="figures/' not in html and "<link" not in html and "<script" not in html
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in parser.srcs]
    on_disk = {p.name: p.read_bytes() for p in (written / "figures").iterdir()}
    assert sorted(embedded) == sorted(on_disk.values())  # each figure once, byte for byte
    for name in (report.HEADLINE_FIGURE, report.GENERALIZE_FIGURE, report.ACCELERATE_FIGURE,
                 f"{SOURCE}-mse.png", f"{TARGET}-trajectory.png"):
        assert on_disk[name][:4] == b"\x89PNG", name
    # tables are HTML tables, one per Markdown table, with the <br> of the headline header kept
    md = (written / "summary.md").read_text()
    assert html.count("<table>") == len(re.findall(r"^\|---", md, flags=re.M)) > 5
    assert "<th>mlp_regression<br>adam</th>" in html and "<td>last_value</td>" in html


def test_markdown_links_figures_relatively_headline_first(written):
    md = (written / "summary.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links[0] == f"figures/{report.HEADLINE_FIGURE}"
    assert all(link.startswith("figures/") and (written / link).is_file() for link in links)
    assert md.index("## Headline") < md.index(report.HEADLINE_FIGURE) < md.index("| model |")
    assert md.index("## Generalisation") < md.index(report.GENERALIZE_FIGURE) < md.index("## Jump-ahead")
    assert md.index("## Jump-ahead") < md.index(report.ACCELERATE_FIGURE) < md.index("## Runs")


def test_headline_grid_is_the_results_table(finished):
    params, root = finished
    metrics = report.load_metrics(params, root / "metrics")
    models, stores, xlv = report._xlv_grid(params, metrics)
    assert models == MODELS and stores == ["mlp_regression / adam", "mlp_regression_w10 / adam"]
    for i, name in enumerate(models):
        for j, m in enumerate(metrics.values()):
            assert xlv[i][j] == m["models"][name]["final_xlv"]["mean"]
            assert f"{xlv[i][j]:.2g}" in "\n".join(report.results_block(params, metrics))
    assert xlv[0] == [1.0, 1.0]


def test_heatmap_draws_missing_zero_and_infinite_cells(tmp_path):
    path = tmp_path / "h.png"
    figures.xlv_heatmap(["a", "b"], ["s1", "s2", "s3"], [[1.0, None, 1e-9], [0.0, math.inf, 250.0]], path, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_generalisation_points_are_paired_ratios_to_last_value(finished):
    params, root = finished
    data = json.loads((root / "metrics" / "generalize.json").read_text())
    rows = figures.generalize_points(data, 0.95)
    assert [(r["model"], r["fitted_on"]) for r in rows] == [("linear", "transfer"), ("linear", "in_distribution")]
    pair = data["pairs"][0]
    for r in rows:
        ratios = [a / b for a, b in zip(pair["models"]["linear"][r["fitted_on"]]["per_seed"],
                                        pair["last_value"]["per_seed"])]
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        assert r["xlv"] == pytest.approx(geo) and r["per_seed"] == pytest.approx(ratios)
        assert r["ci"][0] < r["xlv"] < r["ci"][1] and r["note"] is None  # two seeds: an interval
    # without per-seed values (older output): the stored mean xLV, no interval
    for what in ("transfer", "in_distribution"):
        del pair["models"]["linear"][what]["per_seed"]
    old = figures.generalize_points(data, 0.95)
    assert old[0]["xlv"] == pair["models"]["linear"]["transfer_xlv"]["mean"] and math.isnan(old[0]["ci"][0])
    # a model that cannot transfer: no point, the reason kept
    pair["models"]["linear"].update(error="transfer: RuntimeError: size mismatch",
                                    transfer={"mean": math.nan, "per_seed": [math.nan, math.nan]})
    bad = figures.generalize_points(data, 0.95)[0]
    assert math.isnan(bad["xlv"]) and bad["note"].startswith("transfer: RuntimeError")
    figures.generalize_figure(data, 0.95, root / "g.png")  # still draws (the point is labelled, not plotted)
    assert (root / "g.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("src, match", [
    ("../secret.png", "relative path below"), ("/etc/x.png", "relative path below"),
    ("https://example.org/x.png", "relative path below"), ("figures/x.gif", "expected one of"),
    ("figures/missing.png", "not found"),
])
def test_image_links_that_cannot_be_embedded_are_refused(tmp_path, src, match):
    with pytest.raises(GFMError, match=match):
        embed_image(src, tmp_path)
    with pytest.raises(GFMError, match=re.escape(repr(src))):
        render_html("t", f"# t\n\n![x]({src})\n", tmp_path)
