"""Metrics with a refused model, a model without downstream metrics and sampled forecasts with non-finite draws
(hand-built, in the shapes evaluate and generalize write): the report, the claims, the headline, the
generalisation tables and `gfm check` show the refusal's reason, `-` for what was not computed, and no number
for a refused model."""

from __future__ import annotations

import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from gfm.base.errors import GFMError, one_line
from gfm.config import parse_params
from gfm.metrics.model_entries import DOWNSTREAM_NOTE, cell_text, refusal_of
from gfm.report import figures, headline
from gfm.report import summary as report
from gfm.report.comparisons import generalize_paired, paired_section
from gfm.report.protocol import protocol_section
from gfm.tools.check import check_path

SGD, ADAM = "mlp_regression-sgd", "mlp_regression-adam"
MODELS = ["last_value", "linear", "lstm", "gfm", "gfm_function"]
# user text from a forecaster: a table separator, HTML and a newline must all stay one literal cell
REASON = "activation 'gelu|x' <b>not</b> [rebuildable](http://x) & *so*\nrefused"
NAN = float("nan")


def _ms(values: list[float]) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    if not values or len(finite) < len(values):
        return {"mean": NAN, "std": NAN, "n": len(finite)}
    m = sum(values) / len(values)
    return {"mean": m, "std": math.sqrt(sum((v - m) ** 2 for v in values) / len(values)), "n": len(values)}


def _scored(per_seed: list[float], base: list[float], *, downstream: bool = True, **extra) -> dict:
    entry = {"final_mse": {**_ms(per_seed), "per_seed": per_seed}, "final_mse_median_run": per_seed[0],
             "mse_by_horizon": {"40": _ms(per_seed)}, "nonfinite_runs": 0,
             "final_xlv": _ms([a / b for a, b in zip(per_seed, base)])}
    if downstream:
        entry["downstream"] = {"loss": _ms([0.5, 0.7]), "recovered": _ms([0.4, 0.6])}
    return {**entry, **extra}


def _uncertainty(nonfinite: int, *, none_finite: bool) -> dict:
    score = (lambda v: {"mean": NAN, "std": NAN, "n": 0}) if none_finite else _ms
    return {"samples": 16, "nonfinite_draw_runs": nonfinite, "coverage_50": score([0.5, 0.52]),
            "coverage_90": score([0.88, 0.9]), "crps": score([0.01, 0.02]),
            "loss": {"coverage_50": score([0.5, 0.5]), "coverage_90": score([0.9, 0.9]), "crps": score([0.1, 0.1])}}


def _metrics(store: str, models: dict, reference: dict) -> dict:
    task, opt = store.split("-")
    return {"store": store, "task": task, "optimizer": opt, "kind": "mlp_regression", "prefix_end": 8,
            "horizons": [16, 24, 32, 40], "record_every": 1, "dataset_seeds": [1, 2],
            "counts": {"test_runs": 6, "skipped_diverged_test_runs": 0, "diverged_runs_in_store": 0,
                       "runs_in_store": 24},
            "reference": reference, "models": models}


BASE = [1.0, 2.0]
FULL_REFERENCE = {"true_final_loss": _ms([0.2, 0.3]), "prefix_loss": _ms([0.9, 1.1]),
                  "true_final_accuracy": _ms([0.9, 0.95]), "prefix_accuracy": _ms([0.5, 0.6])}
METRICS = {
    # a recorded store without evaluation data: no downstream anywhere; lstm refused it; gfm_function's draws
    # were non-finite on every run (scores over no run)
    SGD: _metrics(SGD, {"last_value": _scored(BASE, BASE, downstream=False),
                        "linear": _scored([0.8, 1.7], BASE, downstream=False),
                        "lstm": {"refused": REASON},
                        "gfm": _scored([0.4, 0.9], BASE, downstream=False),
                        "gfm_function": _scored([0.5, 1.0], BASE, downstream=False,
                                                uncertainty=_uncertainty(6, none_finite=True))}, {}),
    # a generated store: downstream computed except for linear; gfm refused it; 2 runs with non-finite draws
    ADAM: _metrics(ADAM, {"last_value": _scored(BASE, BASE), "linear": _scored([0.9, 1.9], BASE, downstream=False),
                          "lstm": _scored([0.6, 1.1], BASE), "gfm": {"refused": "needs the tanh network"},
                          "gfm_function": _scored([0.5, 1.2], BASE,
                                                  uncertainty=_uncertainty(2, none_finite=False))}, FULL_REFERENCE),
}


def _params():
    doc = yaml.safe_load(TINY.read_text())
    doc["stores"] = {SGD: doc["stores"][SGD], ADAM: doc["stores"][ADAM]}
    doc["train"]["models"] = MODELS
    doc["report"]["claims"] = [{"model": "gfm", "baseline": "lstm", "threshold": 0.7},
                               {"model": "gfm", "baseline": "linear", "threshold": 1.0}]
    doc["accelerate"]["stores"] = {}
    return parse_params(doc)


def _write_study(root: Path) -> Path:
    """data/metrics and data/plots of the two stores; the plot CSVs hold rows of the refused models too."""
    for store, m in METRICS.items():
        task, opt = store.split("-")
        path = root / "metrics" / task / f"{opt}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m))
        plots = root / "plots" / task / opt
        plots.mkdir(parents=True)
        with (plots / "mse_vs_horizon.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["model", "horizon", "step", "mse", "mse_std"])
            w.writerows([n, h, h, 0.1 * h, 0.01] for n in MODELS for h in (16, 40))
        with (plots / "trajectory.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["param", "step", "series", "value"])
            w.writerows([p, s, n, 0.5] for p in (0, 1) for n in ["true", *MODELS] for s in (0, 40))
    return root


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = _write_study(tmp_path_factory.mktemp("data"))
    out = root.parent / "reports"
    report.run(_params(), metrics_dir=root / "metrics", plots_dir=root / "plots", out=out)
    return root, out


class _Cells(HTMLParser):
    """Every table of an HTML page as rows of cell texts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _table(tables: list[list[list[str]]], first_header: str, column: str) -> list[list[str]]:
    """The first table whose header starts with ``first_header`` and has the column ``column``."""
    found = [t for t in tables if t[0][0] == first_header and column in t[0]]
    assert found, [t[0] for t in tables]
    return found[0]


def _row(table: list[list[str]], first: str) -> dict[str, str]:
    rows = [r for r in table[1:] if r[0] == first]
    assert len(rows) == 1, table
    assert len(rows[0]) == len(table[0]), rows[0]  # the reason's | did not split the cell
    return dict(zip(table[0], rows[0]))


def test_refused_model_rows_show_the_reason_as_text(written):
    _, out = written
    page = (out / "summary.html").read_text()
    cells = _Cells()
    cells.feed(page)
    assert "b" not in cells.tags and "a" not in [t for t in cells.tags]  # the reason made no element
    refused = "refused: " + one_line(REASON)
    headline_table = _table(cells.tables, "model", "mlp_regressionsgd")
    assert _row(headline_table, "lstm")["mlp_regressionsgd"] == refused  # <br> in the header: no text
    assert _row(headline_table, "gfm")["mlp_regressionadam"] == "refused: needs the tanh network"
    assert _row(headline_table, "gfm")["mlp_regressionsgd"].startswith("0.4")  # the other store is scored
    mse = _table(cells.tables, "model", "sgd")
    assert mse[0] == ["model", "sgd", "adam"]
    assert _row(mse, "lstm")["sgd"] == refused and _row(mse, "lstm")["adam"].startswith("0.85 ± ")
    md = (out / "summary.md").read_text()
    assert "refused: activation 'gelu\\|x' &lt;b&gt;not&lt;/b&gt; \\[rebuildable\\](http://x) &amp; \\*so\\*\\\\nrefused" in md
    assert "\nrefused" not in md and "<b>" not in md


def test_paired_comparisons_and_claims_skip_a_refused_model(written):
    _, out = written
    rows = json.loads((out / "claims.json").read_text())
    by = {(r["store"], r["baseline"]): r for r in rows}
    lstm = by[(SGD, "lstm")]
    assert lstm["verdict"] == "skipped" and lstm["ratio"] is None and lstm["baseline_mean"] is None
    assert lstm["note"] == f"lstm refused {SGD}: {REASON}"  # the reason as written, in the JSON
    assert by[(ADAM, "linear")]["verdict"] == "skipped" and "gfm refused" in by[(ADAM, "linear")]["note"]
    assert by[(SGD, "linear")]["ratio"] == pytest.approx(math.sqrt(0.4 / 0.8 * 0.9 / 1.7))  # still compared
    assert by[(SGD, "linear")]["verdict"] in ("met", "not met", "not resolved", "unstable")
    cells = _Cells()
    cells.feed((out / "summary.html").read_text())
    claims = _table(cells.tables, "optimizer", "verdict")
    assert any(r[-1] == f"skipped (lstm refused {SGD}: {one_line(REASON)})" for r in claims[1:])
    # per-store paired table: the refused model is no column, its row says why
    section = paired_section(_params(), METRICS)
    sgd = section[section.index(f"### {SGD}") + 2]
    assert "lstm" not in sgd and "gfm" in sgd
    assert any(line.startswith("| lstm | refused: activation") for line in section)


def test_downstream_not_computed_is_a_dash_with_one_note(written):
    _, out = written
    md = (out / "summary.md").read_text()
    assert md.count(DOWNSTREAM_NOTE) == 1
    assert not re.search(r"\bnan\b", md, flags=re.I)
    cells = _Cells()
    cells.feed((out / "summary.html").read_text())
    down = _table(cells.tables, "store", "prefix loss")
    sgd, adam = _row(down, SGD), _row(down, ADAM)
    assert sgd["prefix loss"] == sgd["true final loss"] == sgd["gfm loss / recovered"] == "-"
    assert sgd["lstm loss / recovered"].startswith("refused: ")
    assert adam["linear loss / recovered"] == "-" and adam["lstm loss / recovered"] == "0.6 ± 0.1 / 0.5 ± 0.1"
    assert adam["gfm loss / recovered"] == "refused: needs the tanh network"
    acc = _table(cells.tables, "store", "true final")
    assert [r[0] for r in acc[1:]] == [ADAM]  # the store without accuracy has no row
    assert _row(acc, ADAM)["true final"] == "0.925 ± 0.025" and _row(acc, ADAM)["lstm"] == "-"


def test_uncertainty_table_counts_nonfinite_draws(written):
    _, out = written
    cells = _Cells()
    cells.feed((out / "summary.html").read_text())
    unc = _table(cells.tables, "store", "non-finite draws")
    none_finite, some = _row(unc, SGD), _row(unc, ADAM)
    assert none_finite["non-finite draws"] == "6" and some["non-finite draws"] == "2"
    for col in ("coverage 50%", "coverage 90%", "90% within 0.85-0.95", "CRPS", "loss coverage 90%", "loss CRPS"):
        assert none_finite[col] == "-", col
    assert some["coverage 90%"] == "0.89 ± 0.01" and some["90% within 0.85-0.95"] == "yes"


def test_figures_leave_out_refused_models(written):
    root, _ = written
    models, stores, xlv = report._xlv_grid(_params(), METRICS)
    grid = dict(zip(models, xlv))
    assert grid["lstm"][0] is None and grid["gfm"][1] is None and grid["gfm"][0] == pytest.approx(0.425)


def test_headline_has_no_number_for_a_refused_model(written, tmp_path):
    root, _ = written
    files = [root / "metrics" / "mlp_regression" / f"{o}.json" for o in ("sgd", "adam")]
    out, plot_data = tmp_path / "metrics.json", tmp_path / "plots"
    headline.run(files, plots=root / "plots", out=out, plot_data=plot_data)
    saved = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert saved["final_xlv"] == {SGD: {"linear": 0.825, "gfm": 0.425, "gfm_function": 0.5},
                                  ADAM: {"linear": 0.925, "lstm": 0.575, "gfm_function": 0.55}}
    assert headline._own_headline(out) is None  # still what `dvc metrics show` reads (one key)
    for kind, column in (("error_vs_horizon", "model"), ("trajectory", "series")):
        sgd = list(csv.DictReader((plot_data / kind / f"{SGD}.csv").open()))
        assert "lstm" not in {r[column] for r in sgd} and "gfm" in {r[column] for r in sgd}
        adam = list(csv.DictReader((plot_data / kind / f"{ADAM}.csv").open()))
        assert "gfm" not in {r[column] for r in adam} and "lstm" in {r[column] for r in adam}


def test_headline_of_a_store_every_model_refused(tmp_path):
    m = _metrics(SGD, {n: {"refused": "no"} for n in MODELS}, {})
    assert headline.headline_metrics([m]) == {"final_xlv": {}}
    root = _write_study(tmp_path / "data")
    path = root / "metrics" / "mlp_regression" / "sgd.json"
    path.write_text(json.dumps(m))
    headline.run([path], plots=root / "plots", out=tmp_path / "m.json", plot_data=tmp_path / "p")
    assert not (tmp_path / "p" / "error_vs_horizon" / f"{SGD}.csv").exists()  # nothing to draw
    rows = list(csv.DictReader((tmp_path / "p" / "trajectory" / f"{SGD}.csv").open()))
    assert {r["series"] for r in rows} == {"true"}


def test_generalisation_tables_and_points_skip_a_refused_model(tmp_path):
    params = _params()
    lin = {"transfer": {**_ms([0.5, 1.0]), "per_seed": [0.5, 1.0]},
           "in_distribution": {**_ms([0.4, 0.9]), "per_seed": [0.4, 0.9]},
           "transfer_xlv": _ms([0.5, 0.5]), "in_distribution_xlv": _ms([0.4, 0.45]), "error": None}
    data = {"models": ["linear", "lstm"], "pairs": [{
        "source": SGD, "target": ADAM, "label": "same task", "dataset_seeds": [1, 2],
        "models": {"linear": lin, "lstm": {"refused": f"target {ADAM}: {REASON}"}},
        "last_value": {**_ms(BASE), "per_seed": BASE}}]}
    points = figures.generalize_points(data, 0.95)
    assert [p["model"] for p in points] == ["linear", "linear"]
    rows = generalize_paired(params, data)
    text = "\n".join(rows)
    assert "lstm ÷" not in text and "÷ lstm" not in text
    assert f"| {SGD} → {ADAM} | lstm | n/a | skipped (refused: {cell_text(f'target {ADAM}: {REASON}')}) |" in text
    assert "linear transfer ÷ linear in-dist." in text
    (tmp_path / "generalize.json").write_text(json.dumps(data))
    section = report.generalize_section(params, tmp_path)
    row = next(line for line in section if line.startswith(f"| {SGD} → {ADAM} | same task |"))
    assert row.endswith(f"| 0.5 ± 0 / 0.43 ± 0.025 | refused: {cell_text(f'target {ADAM}: {REASON}')} |")


def test_generalize_reads_a_refusal_from_the_model_directory(tmp_path):
    assert refusal_of(tmp_path) is None
    (tmp_path / "refused.json").write_text(json.dumps({"model": "lstm", "kind": "lstm", "refused": REASON}))
    assert refusal_of(tmp_path) == REASON
    (tmp_path / "refused.json").write_text(json.dumps({"model": "lstm"}))
    with pytest.raises(GFMError, match=r"refused\.json: expected a JSON object whose 'refused' is the reason"):
        refusal_of(tmp_path)


def test_protocol_lists_a_model_refused_at_train_time(tmp_path):
    params = _params()
    d = tmp_path / "mlp_regression" / "sgd" / "lstm"
    d.mkdir(parents=True)
    (d / "refused.json").write_text(json.dumps({"model": "lstm", "kind": "lstm", "refused": REASON}))
    lines = protocol_section(params, tmp_path)
    i = lines.index(f"### {SGD}")
    assert lines[i + 4] == f"| lstm | refused: {cell_text(REASON)} | - | - | - |"


def test_check_accepts_a_refusal_and_names_a_malformed_one(tmp_path):
    path = tmp_path / "sgd.json"
    path.write_text(json.dumps(METRICS[SGD]))
    assert [v.problems for v in check_path(path)] == [[]]
    path.write_text(json.dumps({**METRICS[SGD], "models": {**METRICS[SGD]["models"],
                                                           "lstm": {"refused": "", "final_mse": 1}}}))
    assert check_path(path)[0].problems == ["models.lstm: a refusal holds only 'refused', a non-empty reason"]


@pytest.mark.parametrize("text, cell", [
    ("a|b", "a\\|b"), ("<script>x</script>", "&lt;script&gt;x&lt;/script&gt;"), ("line\nbreak", "line\\\\nbreak"),
    ("back\\slash `code`", "back\\\\slash \\`code\\`"), ("x" * 400, "x" * 299 + "…"),
])
def test_cell_text_is_one_literal_line(text, cell):
    assert cell_text(text) == cell
