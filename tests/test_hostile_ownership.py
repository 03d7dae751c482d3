"""Ownership markers (RELIABILITY.md, "Ownership markers"): an output is replaced only if its marker proves this
stage's command made it.

User files shaped like an artifact (a directory holding just ``summary.json`` or ``trajectory.csv``, a JSON file
with a split's or a metrics file's keys, a folder with someone's ``config.json``, a ``<out>.partial`` holding a
Zarr store) and files ``gfm pipeline --write`` did not generate are refused with one line and left untouched. An
artifact written before markers existed is refused as an output (the message says what to do) and still read as
an input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr

from gfm import __version__
from gfm.artifacts.output_contents import MARKER_FILE, MARKER_KEY, marker_kind
from gfm.artifacts.outputs import (
    FORECASTS,
    METRICS,
    MODEL,
    MODELS,
    PLOTS,
    REPORT,
    SPLIT,
    TRAJECTORY_STORE,
    OutputError,
    claim_output,
)
from gfm.cli import main
from gfm.forecasters.model_files import save_model
from gfm.tools.check import check_path
from test_hostile_outputs import _assert_refused, _snapshot, _stage_argv, built  # noqa: F401 (module fixture)

SRC = Path(__file__).resolve().parents[1] / "src" / "gfm"


def _unmark(path: Path) -> Path:
    """``path`` as gfm wrote it before markers existed: the marker file, key or store attribute removed."""
    if (path / MARKER_FILE).is_file():
        (path / MARKER_FILE).unlink()
        for sub in path.iterdir():  # a models directory's seed directories carry their own
            if sub.is_dir():
                (sub / MARKER_FILE).unlink(missing_ok=True)
    elif path.is_dir():
        meta = json.loads((path / "zarr.json").read_text())
        del meta["attributes"][MARKER_KEY]
        (path / "zarr.json").write_text(json.dumps(meta, indent=2))
    else:
        data = json.loads(path.read_text())
        del data[MARKER_KEY]
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest) if src.is_dir() else shutil.copy2(src, dest)
    return dest


# --- every output carries the marker of its kind and of this gfm ---------------------------------------------
def test_every_stage_output_carries_its_marker(built):  # noqa: F811
    outputs = {built.store: TRAJECTORY_STORE, built.split: SPLIT, built.models / "linear": MODELS,
               built.models / "linear" / "1": MODEL, built.forecasts: FORECASTS, built.metrics: METRICS,
               built.plots: PLOTS, built.report: REPORT}
    for path, kind in outputs.items():
        assert marker_kind(path) == kind.name, path
    assert dict(zarr.open_group(built.store, mode="r").attrs)[MARKER_KEY] == {"kind": TRAJECTORY_STORE.name,
                                                                             "gfm": __version__}
    assert json.loads(built.split.read_text())[MARKER_KEY] == {"kind": SPLIT.name, "gfm": __version__}
    assert json.loads((built.plots / MARKER_FILE).read_text()) == {MARKER_KEY: {"kind": PLOTS.name,
                                                                               "gfm": __version__}}
    assert marker_kind(built.generalize) == "generalisation metrics JSON"


# --- look-alikes made by a user: refused, untouched -----------------------------------------------------------
def _lookalike(sandbox: Path, case: str) -> tuple[str, Path]:
    """(stage, output path) of a user's files that only look like that stage's artifact."""
    if case == "summary.json-only":
        (sandbox / "mine").mkdir()
        (sandbox / "mine" / "summary.json").write_text('{"accuracy": 0.93}\n')
        return "train", sandbox / "mine"
    if case == "trajectory.csv-only":
        (sandbox / "mine").mkdir()
        (sandbox / "mine" / "trajectory.csv").write_text("step,value\n0,1.5\n")
        return "evaluate-plots", sandbox / "mine"
    if case == "json-with-datasets":
        (sandbox / "catalogue.json").write_text('{"datasets": ["mnist", "cifar"], "owner": "me"}\n')
        return "split", sandbox / "catalogue.json"
    if case == "json-with-models-and-counts":
        (sandbox / "inventory.json").write_text('{"models": ["a"], "counts": {"a": 3}}\n')
        return "evaluate-metrics", sandbox / "inventory.json"
    if case == "json-with-pairs":
        (sandbox / "pairs.json").write_text('{"pairs": []}\n')
        return "generalize", sandbox / "pairs.json"
    if case == "json-with-plain-and-models":
        (sandbox / "plain.json").write_text('{"plain": 1, "models": {}}\n')
        return "accelerate", sandbox / "plain.json"
    if case == "zarr-group":
        zarr.open_group(sandbox / "mine.zarr", mode="w", zarr_format=3,
                        attributes={"schema_version": 1, "layout": [], "note": "my own Zarr data"})
        return "generate", sandbox / "mine.zarr"
    raise AssertionError(case)


LOOKALIKES = ["summary.json-only", "trajectory.csv-only", "json-with-datasets", "json-with-models-and-counts",
              "json-with-pairs", "json-with-plain-and-models", "zarr-group"]


@pytest.mark.parametrize("case", LOOKALIKES)
def test_user_files_shaped_like_an_artifact_are_refused_untouched(case, built, tmp_path, monkeypatch, capfd):  # noqa: F811
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    stage, out = _lookalike(sandbox, case)
    monkeypatch.chdir(sandbox)
    before = _snapshot(sandbox)
    capfd.readouterr()
    rc = main(_stage_argv(stage, str(out), built, tmp_path / "elsewhere"))
    line = _assert_refused(rc, capfd.readouterr().err, before, sandbox)
    assert out.name in line and "marker" in line, line


def test_a_folder_with_someones_config_json_is_not_a_model_to_overwrite(built, tmp_path):  # noqa: F811
    """Forecaster.save refuses a folder holding a config.json it did not write (no model marker)."""
    from gfm.forecasters import read_model

    fc = read_model(built.models / "linear" / "1")
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "config.json").write_text('{"lr": 0.1, "notes": "my experiment"}\n')
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match="experiment: output path .*marker"):
        save_model(fc, folder)
    assert _snapshot(tmp_path) == before
    assert save_model(fc, tmp_path / "fresh") == tmp_path / "fresh"  # its own: written, then replaced
    assert save_model(fc, tmp_path / "fresh") == tmp_path / "fresh" and marker_kind(tmp_path / "fresh") == MODEL.name


# --- <out>.partial / <out>.tmp: removed only if ours -------------------------------------------------------
def test_a_partial_store_path_holding_someone_elses_zarr_is_refused(built, tmp_path, monkeypatch, capfd):  # noqa: F811
    """generate's ``<store>.partial`` holding a Zarr group without the trajectory-store marker (nor the
    writer's lock) is not emptied: it is someone's data."""
    out = tmp_path / "new.zarr"
    theirs = zarr.open_group(tmp_path / "new.zarr.partial", mode="w", zarr_format=3, attributes={"owner": "me"})
    theirs.create_array("x", shape=(3,), dtype="float32")[:] = [1, 2, 3]
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    line = _assert_refused(main(_stage_argv("generate", str(out), built, tmp_path)), capfd.readouterr().err,
                           before, tmp_path)
    assert "new.zarr.partial" in line and "marker" in line


def test_a_forecast_partial_path_holding_zarr_stores_is_refused(built, tmp_path, monkeypatch, capfd):  # noqa: F811
    """forecast's ``<out>.partial`` holding finished-looking forecast stores but no marker is not removed."""
    partial = tmp_path / "fc.partial"
    for store in built.forecasts.glob("*.zarr"):
        _copy(store, partial / store.name)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    line = _assert_refused(main(_stage_argv("forecast", str(tmp_path / "fc"), built, tmp_path)),
                           capfd.readouterr().err, before, tmp_path)
    assert "fc.partial" in line


def test_a_leftover_marked_as_another_kind_is_refused(tmp_path):
    from gfm.artifacts.outputs import open_temp_dir

    tmp = open_temp_dir(tmp_path / "out", PLOTS)  # an interrupted evaluate --plots
    (tmp / "mse_vs_horizon.csv").write_text("model,horizon\n")
    with pytest.raises(OutputError, match="out.tmp: temporary path"):
        open_temp_dir(tmp_path / "out", REPORT)
    assert (tmp / "mse_vs_horizon.csv").is_file()
    assert open_temp_dir(tmp_path / "out", PLOTS) == tmp and sorted(p.name for p in tmp.iterdir()) == [MARKER_FILE]


def test_a_leftover_of_a_gfm_before_markers_is_cleared(tmp_path):
    """A ``<out>.tmp`` that a killed run of an older gfm marked with its temporary marker is still ours."""
    from gfm.artifacts.outputs import open_temp_dir

    old = tmp_path / "out.tmp"
    old.mkdir()
    (old / ".gfm-writing").touch()
    (old / "mse_vs_horizon.csv").write_text("model,hor")
    assert open_temp_dir(tmp_path / "out", PLOTS) == old and sorted(p.name for p in old.iterdir()) == [MARKER_FILE]


def test_a_partial_store_of_an_interrupted_recording_is_ours(tmp_path):
    """A one-run store of gfm.record is marked from its first write, so its leftover is replaced."""
    from gfm.store.one_run import create_run_group

    create_run_group(tmp_path / "r.zarr.partial", n_params=3, state_names=(), chunk_steps=4)
    assert marker_kind(tmp_path / "r.zarr.partial") == TRAJECTORY_STORE.name
    (tmp_path / "r.zarr.partial" / "weights" / "c").mkdir(parents=True)  # killed mid-write
    create_run_group(tmp_path / "r.zarr.partial", n_params=3, state_names=(), chunk_steps=4)
    assert not (tmp_path / "r.zarr.partial" / "weights" / "c").exists()


# --- a marker of another kind is named ---------------------------------------------------------------------
def test_an_artifact_marked_as_another_kind_is_named_in_the_refusal(built, tmp_path):  # noqa: F811
    plots = _copy(built.plots, tmp_path / "plots")
    with pytest.raises(OutputError, match="holds a plot-data directory .*not a report directory"):
        claim_output(plots, REPORT)
    split = _copy(built.split, tmp_path / "s.json")
    with pytest.raises(OutputError, match="is a split JSON .*not a metrics JSON"):
        claim_output(split, METRICS)


def test_a_marked_file_of_this_kind_that_lost_its_keys_is_still_refused(tmp_path):
    """A user file that carries a copied marker but not the kind's contents is not taken either."""
    path = tmp_path / "split.json"
    path.write_text(json.dumps({MARKER_KEY: {"kind": SPLIT.name, "gfm": __version__}, "mine": 1}))
    with pytest.raises(OutputError, match="not a split JSON"):
        claim_output(path, SPLIT)


# --- artifacts written before markers: refused as outputs (with what to do), read as inputs ------------------
OLD = {"generate": "store", "split": "split", "train": "models", "forecast": "forecasts",
       "evaluate-plots": "plots", "evaluate-metrics": "metrics", "report": "report", "generalize": "generalize"}


@pytest.mark.parametrize("stage", list(OLD))
def test_an_unmarked_old_output_is_refused_saying_what_to_do(stage, built, tmp_path, monkeypatch, capfd):  # noqa: F811
    src = {"store": built.store, "split": built.split, "models": built.models / "linear",
           "forecasts": built.forecasts, "plots": built.plots, "metrics": built.metrics, "report": built.report,
           "generalize": built.generalize}[OLD[stage]]
    old = _unmark(_copy(src, tmp_path / "sandbox" / src.name))
    monkeypatch.chdir(tmp_path / "sandbox")
    before = _snapshot(tmp_path / "sandbox")
    capfd.readouterr()
    rc = main(_stage_argv(stage, str(old), built, tmp_path / "elsewhere"))
    line = _assert_refused(rc, capfd.readouterr().err, before, tmp_path / "sandbox")
    assert "without a gfm ownership marker" in line and "delete it yourself" in line, line


def test_unmarked_old_artifacts_are_read_as_inputs_and_check_clean(built, tmp_path, capfd):  # noqa: F811
    """A store, split and models pushed by a colleague before markers: the stages downstream read them."""
    store = _unmark(_copy(built.store, tmp_path / "old" / "sgd.zarr"))
    split = _unmark(_copy(built.split, tmp_path / "old" / "sgd.json"))
    models = tmp_path / "old" / "models"
    _unmark(_copy(built.models / "linear", models / "linear"))
    _unmark(_copy(built.models / "last_value", models / "last_value"))
    for path in (store, split, models / "linear"):
        assert marker_kind(path) is None
        assert all(v.ok for v in check_path(path)), path
    p = str(built.params)
    assert main(["split", "--params", p, "--in", str(store), "--out", str(tmp_path / "new.json")]) == 0
    assert main(["forecast", "--params", p, "--store", "mlp_regression-sgd", "--in", str(store), "--split",
                 str(split), "--models", str(models), "--out", str(tmp_path / "fc")]) == 0
    assert marker_kind(tmp_path / "new.json") == SPLIT.name and marker_kind(tmp_path / "fc") == FORECASTS.name


# --- gfm pipeline --write: only a dvc.yaml it generated ----------------------------------------------------
@pytest.mark.parametrize("victim", ["params.yaml", "README.md", "dvc.yaml"])
def test_pipeline_write_refuses_a_file_it_did_not_generate(victim, tmp_path, monkeypatch, capfd):
    """``params.yaml``, a README and a hand-written dvc.yaml are left untouched."""
    content = {"params.yaml": "seed: 0\n", "README.md": "# my project\n",
               "dvc.yaml": "stages:\n  mine:\n    cmd: make\n"}[victim]
    (tmp_path / victim).write_text(content)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    rc = main(["pipeline", "--write", victim, "--src", str(SRC)])
    line = _assert_refused(rc, capfd.readouterr().err, before, tmp_path)
    assert f"{victim}: output path is a file that `gfm pipeline` did not write" in line


def test_pipeline_write_replaces_only_its_own_dvc_yaml(tmp_path, monkeypatch, capfd):
    from gfm.pipeline.dvc_yaml import render_dvc_yaml

    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--write", "new.yaml", "--src", str(SRC)]) == 0
    text = (tmp_path / "new.yaml").read_text()
    assert text == render_dvc_yaml(SRC)
    (tmp_path / "new.yaml").write_text(text.replace("stages:", "stages:  # stale", 1))  # an older generation
    assert main(["pipeline", "--write", "new.yaml", "--src", str(SRC)]) == 0
    assert (tmp_path / "new.yaml").read_text() == text
    (tmp_path / "dir").mkdir()
    capfd.readouterr()
    assert main(["pipeline", "--write", "dir"]) == 2
    assert (tmp_path / "dir").is_dir() and "is a directory" in capfd.readouterr().err
