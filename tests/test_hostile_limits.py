"""Sizes checked before memory is spent (RELIABILITY.md, "Sizes checked before memory is spent"): a few edited
bytes must not make a command allocate gigabytes, run for minutes or crash.

* a saved model whose config.json declares sizes its tensors do not have is refused from the safetensors header,
  before the module is built (peak memory measured in a subprocess);
* `gfm validate` estimates every model's parameters and training memory and refuses models past ``limits``;
* a store whose metadata declares more runs than its chunk files hold is refused before any chunk is read;
* an allocation that fails is reported as out of memory, naming what was being done;
* a split with no test runs is refused by `gfm validate`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY
from gfm.config import load_params
from gfm.forecasters import FORECASTERS, make_forecaster, read_model, save_model
from gfm.stages.tuning import learned_options
from stage_helpers import first_seed_runs
from test_hostile_inputs import _assert_named, _assert_refused, _cli

pytestmark = pytest.mark.usefixtures("one_thread")

# --- saved models whose config.json declares sizes the tensors do not have --------------------------------
SHORT = {"steps": 2, "eval_every": 1, "patience": 1}
# kind -> (extra options of the fit, the edit of config.json: {section: {key: value}}, what the refusal names)
EDITS = {
    "lstm": ({}, {"config": {"hidden": 12000}}, ["config.hidden is 12000", "hidden 8"]),
    "lstm_z": ({"hidden": 4, "probes": 4}, {"config": {"probes": 10**8}}, ["config.probes is 100000000", "probes 4"]),
    "transformer": ({}, {"config": {"layers": 10**5}}, ["config.layers is 100000", "layers 1"]),
    "wnn": ({}, {"config": {"width": 10**8}}, ["config.width is 100000000", "width 8"]),
    "introspection": ({}, {"config": {"hidden": 10**9}}, ["config.hidden is 1000000000", "hidden 8"]),
    "gfm": ({}, {"config": {"width": 10**6}}, ["config.width is 1000000", "width 16"]),
    "gfm_plain": ({}, {"config": {"depth": 10**5}}, ["config.depth is 100000", "depth 2"]),
    "gfm_function": ({}, {"config": {"probes": 10**9}}, ["config.probes is 1000000000", "probes 8"]),
    # no size option: the horizons size its output layer (2 x 10^9 floats); the shape-only dry run refuses it
    # (the fitted values, one per horizon, no longer fit the edited horizons: refused before any tensor is read)
    "lfd2": ({}, {"horizons": [16, 10**9]}, ["fitted values do not fit a lfd2 model"]),
}
# a joint field sized by a fitted value (extra.n_params): 10^6 parameters would be a 10^12-float skip map
JOINT = ("gfm_plain", {"field": "joint"}, {"extra": {"n_params": 10**6}}, ["tensors do not fit a 'gfm_plain' model"])
PEAK_MB = 150  # what a refusal may add to the process's peak memory (before the checks: 2.4 GB for the LSTM)


def _fit_and_save(kind: str, options: dict, runs: dict, tiny_params, out: Path) -> Path:
    spec = next((dict(v) for v in tiny_params.models.values() if v["kind"] == kind), {"kind": kind})
    spec.pop("kind")
    fc = make_forecaster(kind, learned_options({**spec, **options}, tiny_params.train.budget) | SHORT,
                         prefix_end=tiny_params.forecast.prefix_end, horizons=tiny_params.forecast.horizons)
    fc.fit(runs["train"], runs["val"], rng=torch.Generator().manual_seed(0))
    return save_model(fc, out)


@pytest.fixture(scope="module")
def saved(tiny_params, tiny_store, tiny_split, tmp_path_factory) -> dict[str, Path]:
    """One genuine saved model per kind with tensors (two updates of training), and a joint-field gfm_plain."""
    runs = first_seed_runs(tiny_store, tiny_split)
    root = tmp_path_factory.mktemp("saved")
    out = {kind: _fit_and_save(kind, EDITS[kind][0], runs, tiny_params, root / kind) for kind in EDITS}
    out["joint"] = _fit_and_save(JOINT[0], JOINT[1], runs, tiny_params, root / "joint")
    return out


def _edited(src: Path, dst: Path, edit: dict) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    for section, value in edit.items():
        if isinstance(value, dict):
            meta[section].update(value)
        else:
            meta[section] = value
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


def test_every_kind_with_tensors_is_covered():
    """A new forecaster kind with tensors must get a case here (and a sizes_from_tensors of its own)."""
    with_tensors = {k for k, cls in FORECASTERS.items() if not cls.closed_form}
    assert with_tensors <= set(EDITS), sorted(with_tensors - set(EDITS))


def test_genuine_models_load_and_their_sizes_match_their_config(saved):
    """The header-read sizes agree with every genuine model's config (else every load would be refused)."""
    from gfm.forecasters.model_files import _check_safetensors_header

    for kind, d in saved.items():
        fc = read_model(d)
        found = fc.sizes_from_tensors(_check_safetensors_header(d / "weights.safetensors"))
        assert all(getattr(fc.config, k) == v for k, v in found.items()), (kind, found)
        if kind not in ("lfd2", "gfm_function", "lstm_z"):  # (lstm_z: its encoder's sizes; lfd2 has none)
            assert found, kind


def test_edited_sizes_are_refused_before_the_module_is_built(saved, tmp_path):
    """One subprocess loads every edited model and reports each refusal and the peak memory it added."""
    cases = {kind: (_edited(saved[kind], tmp_path / kind, edit), names) for kind, (_, edit, names) in EDITS.items()}
    cases["joint"] = (_edited(saved["joint"], tmp_path / "joint", JOINT[2]), JOINT[3])
    script = textwrap.dedent("""
        import json, resource, sys, time
        from gfm.forecasters import read_model
        from gfm.base.errors import GFMError
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
            try:
                read_model(path)
                message = None
            except GFMError as exc:
                message = str(exc)
            grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            out[name] = {"message": message, "grew_mb": grew / 1024, "seconds": time.perf_counter() - t0}
        print(json.dumps(out))
    """)
    # warm up torch's lazily imported modules (nn.LSTM, MultiheadAttention) on a genuine model first, so the
    # peak measured per case is the load's own
    paths = {"warm": str(saved["transformer"]), **{k: str(p) for k, (p, _) in cases.items()}}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(paths)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got.pop("warm")["message"] is None
    for kind, (_, names) in cases.items():
        r = got[kind]
        assert r["message"] is not None, f"{kind}: the edited model loaded"
        assert "\n" not in r["message"] and len(r["message"]) < 600, r["message"]
        assert all(n in r["message"] for n in names), (kind, names, r["message"])
        assert r["grew_mb"] < PEAK_MB, f"{kind}: the refusal added {r['grew_mb']:.0f} MB to the peak"
        assert r["seconds"] < 5, f"{kind}: {r['seconds']:.1f} s"


def test_gfm_check_names_the_edited_size(saved, tmp_path, capfd):
    d = _edited(saved["lstm"], tmp_path / "lstm", {"config": {"hidden": 12000}})
    code, out, _ = _cli(["check", str(d)], capfd)
    _assert_named(code, out, "config.hidden is 12000 but the tensors of weights.safetensors were built with hidden 8")


# --- gfm validate: models that cannot be built -------------------------------------------------------------
def _params_with(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(TINY.read_text())
    change(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _model(name: str, **options):
    return lambda d: d["models"][name].update(options)


UNBUILDABLE = {
    "lstm of 160 GB": (_model("lstm", hidden=100_000), "models.lstm: about 40,003,200,004 parameters",
                       "limits.max_model_params"),
    "gfm width 10^6": (_model("gfm", width=10**6), "models.gfm: about",
                       "limits.max_model_params"),
    "transformer of 10^5 layers": (_model("transformer", layers=10**5), "models.transformer: about 60,000,172 parameters",
                                   "limits.max_model_bytes = 8.0 GiB"),
    "wnn width 10^8": (_model("wnn", width=10**8), "models.wnn: about 6,500,000,092 parameters",
                       "limits.max_model_params"),
    "joint gfm on a wide network": (
        lambda d: (d["models"]["gfm"].update(field="joint"), d["tasks"]["mlp_regression"].update(hidden=[2000])),
        "models.gfm: about", "limits.max_model_"),
    "a huge option in the tuning space": (
        lambda d: d["train"]["tuning"]["space"]["lstm"].update(hidden=[8, 100_000]),
        "train.tuning.space.lstm.hidden: about 40,003,200,004 parameters", "limits.max_model_params"),
    "a lowered limit": (lambda d: d["limits"].update(max_model_bytes=2**20), "models.gfm_plain: about 1,185 parameters",
                        "limits.max_model_bytes = 1.0 MiB"),
}


@pytest.mark.parametrize("case", UNBUILDABLE)
def test_validate_refuses_models_that_cannot_be_built(case, tmp_path, capfd):
    change, message, limit = UNBUILDABLE[case]
    path = _params_with(tmp_path, change)
    t0 = time.perf_counter()
    code, out, err = _cli(["validate", str(path)], capfd)
    assert time.perf_counter() - t0 < 10
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    hit = [line for line in lines if message in line]
    assert hit and limit in hit[0] and "to train on store" in hit[0], (message, lines)
    assert all(line.startswith("error: ") and len(line) < 600 for line in lines), lines


def test_the_estimate_is_the_built_models_parameter_count(saved, tiny_params):
    """The parameter count is exact for every kind whose module is built from options alone (the activation
    part is the order-of-magnitude one); GFM's follows the feature counts its fit computed."""
    for kind, d in saved.items():
        fc = read_model(d)
        built = sum(t.numel() for t in fc.state_tensors().values())
        store = "mlp_regression-adam"
        est = fc.size_estimate(tiny_params.tasks["mlp_regression"].n_params(), store.split("-")[1])
        if kind in ("gfm_function", "lstm_z"):  # the probes' shapes follow the network's inputs / outputs
            assert built / 4 <= est.params <= built * 4, (kind, built, est.params)
        else:
            assert est.params == built, (kind, built, est.params)
        assert est.train_bytes >= 16 * est.params


def test_every_shipped_params_file_validates(capfd):
    root = TINY.parents[1]
    for path in (root / "params.yaml", root / "params.quick.yaml", root / "params.jump.yaml", TINY):
        code, out, err = _cli(["validate", str(path)], capfd)
        assert code == 0 and ": ok (" in out, (path, err)


def test_validate_refuses_a_split_without_test_runs(tmp_path, capfd):
    path = _params_with(tmp_path, lambda d: d["split"].update(train=0.75, val=0.25, test=0))
    code, _, err = _cli(["validate", str(path)], capfd)
    _assert_refused(code, err, "split.test: got 0: no test runs")


# --- a store whose metadata declares more runs than its files hold ----------------------------------------
def _inflate(store: Path, n_runs: int) -> None:
    """Declare ``n_runs`` runs in the group's attributes and every array's shape: a few bytes of metadata."""
    for meta_path in store.rglob("zarr.json"):
        meta = json.loads(meta_path.read_text())
        if meta.get("node_type") == "group" and "n_runs" in meta.get("attributes", {}):
            real = meta["attributes"]["n_runs"]
            meta["attributes"]["n_runs"] = n_runs
        elif meta.get("node_type") == "array":
            meta["shape"][0] = n_runs
        meta_path.write_text(json.dumps(meta))
    assert real < n_runs


@pytest.fixture
def inflated(tiny_store, tmp_path) -> Path:
    store = tmp_path / "adam.zarr"
    shutil.copytree(tiny_store, store)
    _inflate(store, 2**24)
    return store


def test_check_refuses_a_store_declaring_runs_it_does_not_hold(inflated, capfd):
    t0 = time.perf_counter()
    code, out, _ = _cli(["check", str(inflated)], capfd)
    assert time.perf_counter() - t0 < 10  # minutes of decoding fill values before
    _assert_named(code, out, "n_runs 16,777,216 needs 2,097,152 blocks of 8 runs, but chunk files hold 3")


def test_stages_refuse_it_too(inflated, tmp_path, capfd):
    code, _, err = _cli(["split", "--params", str(TINY), "--in", str(inflated), "--out", str(tmp_path / "s.json")],
                        capfd)
    _assert_refused(code, err, "chunk files hold 3")
    assert not (tmp_path / "s.json").exists()


def test_a_genuine_store_keeps_passing(tiny_store, capfd):
    code, out, _ = _cli(["check", str(tiny_store)], capfd)
    assert code == 0, out


# --- out of memory -------------------------------------------------------------------------------------------
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
           "allocate 2400000000 bytes.")


def _raise_oom(*args, **kwargs):
    raise RuntimeError(CPU_OOM)


def test_out_of_memory_while_training_is_named(tiny_store, tiny_split, tmp_path, monkeypatch, capfd):
    import gfm.stages.train

    monkeypatch.setattr(gfm.stages.train, "fit_seed", _raise_oom)
    out = tmp_path / "lstm"
    code, _, err = _cli(["train", "--params", str(TINY), "--store", "mlp_regression-adam", "--model", "lstm",
                         "--split", str(tiny_split), "--in", str(tiny_store), "--out", str(out), "--quiet"], capfd)
    _assert_refused(code, err, "out of memory while fitting lstm (lstm) on dataset seed 1 of store "
                               "mlp_regression-adam (an allocation of 2.2 GiB failed); lower the sizes or "
                               "batch_size of models.lstm")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "lstm"]


def test_out_of_memory_while_loading_is_not_a_misfit(saved, monkeypatch, capfd):
    import gfm.forecasters.model_files as model_files

    monkeypatch.setattr(model_files, "load_file", _raise_oom)
    code, out, _ = _cli(["check", str(saved["lstm"])], capfd)
    _assert_named(code, out, "out of memory while loading the 'lstm' model of")
    assert "do not fit" not in out and "2.2 GiB" in out


def test_out_of_memory_anywhere_else_is_one_line(monkeypatch, capfd):
    import gfm.cli_stages

    monkeypatch.setattr(gfm.cli_stages, "load_validated_params", lambda path: (_ for _ in ()).throw(MemoryError()))
    code, _, err = _cli(["validate", str(TINY)], capfd)
    _assert_refused(code, err, "gfm validate: out of memory while running gfm validate; lower the sizes")


def test_tiny_params_estimates_are_far_below_the_defaults():
    """The default limits leave the shipped studies orders of magnitude of room (what the defaults were chosen
    by): every model of tests/params.tiny.yaml needs under 1/100 of limits.max_model_bytes."""
    p = load_params(TINY)
    for name, spec in p.models.items():
        options = {k: v for k, v in spec.items() if k != "kind"}
        if not FORECASTERS[spec["kind"]].closed_form:
            options = learned_options(options, p.train.budget)
        fc = make_forecaster(spec["kind"], options, prefix_end=p.forecast.prefix_end, horizons=p.forecast.horizons)
        for st in p.stores.values():
            est = fc.size_estimate(p.tasks[st.task].n_params(), st.optimizer.name)
            assert est.train_bytes < p.limits.max_model_bytes / 100, (name, est)
            assert math.isfinite(est.train_bytes)
