"""Bad params, fuzzed (RELIABILITY.md): mutate the tiny params file (drop keys, wrong types, negative and huge
numbers, unknown names, empty lists, unknown keys, files that are not YAML) and run `gfm validate` and every
stage CLI on it. Each either accepts the file or exits 2 with one ``error: <file>: <key path>: ...`` line per
problem, identically, without a traceback and without starting the stage."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY
from gfm.cli import main

BASE: dict = yaml.safe_load(TINY.read_text())
# stage -> the module whose run() its command calls
STAGES = {"generate": "gfm.stages.generate", "split": "gfm.stages.split", "train": "gfm.stages.train", "forecast": "gfm.stages.forecast",
          "evaluate": "gfm.stages.evaluate", "report": "gfm.report.summary"}


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the params tree (dict keys and list indices)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


PATHS = _paths(BASE)
WRONG_TYPES = st.one_of(
    st.text(max_size=6), st.none(), st.booleans(), st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.floats(allow_nan=True, allow_infinity=True),
)
NEGATIVE = st.one_of(st.integers(-10**20, -1), st.floats(-1e300, -1e-12))
HUGE = st.sampled_from([10**30, 2**63, 2**64 + 1, 1e308, float("inf"), 10**400])
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=12)
OPS = st.sampled_from(["drop", "wrong_type", "negative", "huge", "unknown_name", "empty", "unknown_key"])


def _parent(data: dict, path: tuple) -> tuple[Any, Any]:
    node = data
    for k in path[:-1]:
        node = node[k]
    return node, path[-1]


@st.composite
def mutated(draw) -> dict:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        live = [p for p in _paths(data)]
        if not live:
            break
        path = draw(st.sampled_from(live))
        parent, key = _parent(data, path)
        op = draw(OPS)
        if op == "drop":
            parent.pop(key) if isinstance(parent, dict) else parent.pop(key)
        elif op == "wrong_type":
            parent[key] = draw(WRONG_TYPES)
        elif op == "negative":
            parent[key] = draw(NEGATIVE)
        elif op == "huge":
            parent[key] = draw(HUGE)
        elif op == "unknown_name":
            parent[key] = draw(NAMES)
        elif op == "empty":
            parent[key] = draw(st.sampled_from([[], {}, ""]))
        elif isinstance(parent, dict):  # unknown_key: a sibling no schema knows
            parent[draw(st.one_of(NAMES, st.integers()))] = draw(st.integers())
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


class _Recorder:
    """Stands in for a stage's ``run``: records that the stage would have started (nothing is computed)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise SystemExit(0)  # the CLI got past validation; stop before any real work


@pytest.fixture
def stages(monkeypatch) -> dict[str, _Recorder]:
    recs = {}
    for name, module in STAGES.items():
        recs[name] = _Recorder()
        monkeypatch.setattr(f"{module}.run", recs[name])
    return recs


def _stage_args(stage: str, params: Path, out: Path, data: Any) -> list[str]:
    stores = data.get("stores") if isinstance(data, dict) else None
    key = next(iter(stores), "none-sgd") if isinstance(stores, dict) and stores else "none-sgd"
    models = data.get("models") if isinstance(data, dict) else None
    model = next(iter(models), "none") if isinstance(models, dict) and models else "none"
    p = ["--params", str(params)]
    return {
        "generate": ["generate", *p, "--store", str(key), "--out", str(out), "--quiet"],
        "split": ["split", *p, "--in", str(out.parent / "s.zarr"), "--out", str(out)],
        "train": ["train", *p, "--store", str(key), "--model", str(model), "--split", "s.json", "--in", "s.zarr",
                  "--out", str(out), "--quiet"],
        "forecast": ["forecast", *p, "--store", str(key), "--in", "s.zarr", "--split", "s.json", "--models", "m",
                     "--out", str(out)],
        "evaluate": ["evaluate", *p, "--store", str(key), "--in", "s.zarr", "--split", "s.json", "--forecasts", "f",
                     "--metrics", str(out), "--plots", str(out.parent / "plots")],
        "report": ["report", *p, "--metrics", "m", "--plots", "p", "--out", str(out)],
    }[stage]


def _invoke(args: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(args)
    except SystemExit as exc:  # the recorder: validation passed
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def _assert_verdicts(path: Path, data: Any, stages: dict, tmp: Path, capsys) -> None:
    code, lines = _invoke(["validate", str(path)], capsys)
    assert code in (0, 2)
    if code == 2:
        assert lines and all(line.startswith(f"error: {path}: ") and len(line) > len(f"error: {path}: ")
                             for line in lines), lines
    for stage in STAGES:
        out = tmp / f"{stage}.out"
        before = stages[stage].calls
        s_code, s_lines = _invoke(_stage_args(stage, path, out, data), capsys)
        if code == 2:  # the same refusal, before the stage starts and before anything is written
            assert (s_code, s_lines) == (2, lines), (stage, s_lines, lines)
            assert stages[stage].calls == before and not out.exists()
        else:
            assert stages[stage].calls == before + 1, (stage, s_code, s_lines)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=mutated())
def test_mutated_params_are_accepted_or_refused_with_key_paths(data, stages, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "params.yaml"
    path.write_text(_dump(data))
    _assert_verdicts(path, yaml.safe_load(path.read_text()), stages, tmp, capsys)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64)))
def test_files_that_are_not_params_are_refused(raw, stages, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("raw")
    path = tmp / "params.yaml"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        data = yaml.safe_load(path.read_bytes())
    except Exception:  # noqa: BLE001 - not YAML at all
        data = None
    _assert_verdicts(path, data, stages, tmp, capsys)
    code, _ = _invoke(["validate", str(path)], capsys)
    assert code == 2  # no random file is a complete study


@pytest.mark.parametrize("content", [
    "seed: [unclosed\n", "\tseed: 0\n", "- a list\n- not a mapping\n", "", "just a string", "\x00\x01\x02",
    "a: &x [*x]\n", "seed: !!python/object/apply:os.system ['touch PWNED']\n",
])
def test_hand_picked_non_params_files(content, stages, tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(content)
    _assert_verdicts(path, None, stages, tmp_path, capsys)
    assert _invoke(["validate", str(path)], capsys)[0] == 2
    assert not Path("PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_a_missing_params_file(stages, tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    code, lines = _invoke(["validate", str(path)], capsys)
    assert code == 2 and lines == [f"error: {path}: file not found: {path}"]
    _assert_verdicts(path, None, stages, tmp_path, capsys)


@pytest.mark.parametrize("mutation, key_path", [
    (lambda d: d["tasks"]["mlp_regression"].update(steps=-5), "tasks.mlp_regression.steps"),
    (lambda d: d["tasks"]["mlp_regression"].pop("kind"), "tasks.mlp_regression.kind"),
    (lambda d: d["generate"].update(dataset_seeds=[]), "generate.dataset_seeds"),
    (lambda d: d["stores"]["mlp_regression-sgd"]["optimizer"].update(name="lbfgs"), "stores.mlp_regression-sgd.optimizer"),
    (lambda d: d["models"]["lstm"].update(hidden="big"), "models.lstm.hidden"),
    (lambda d: d["models"]["gfm"].update(no_such_option=1), "models.gfm.no_such_option"),
    (lambda d: d["train"].update(models=["nonexistent"]), "train.models[0]"),
    (lambda d: d["store"].update(clevel=10**30), "store.clevel"),
    (lambda d: d["split"].update(train=math.inf), "split.train"),
])
def test_known_mutations_name_their_key_path(mutation, key_path, stages, tmp_path, capsys):
    data = copy.deepcopy(BASE)
    mutation(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    code, lines = _invoke(["validate", str(path)], capsys)
    assert code == 2 and any(line.startswith(f"error: {path}: {key_path}") for line in lines), lines
    _assert_verdicts(path, data, stages, tmp_path, capsys)


def test_user_text_with_line_breaks_stays_one_line_per_problem(stages, tmp_path, capsys):
    data = copy.deepcopy(BASE)
    data["split"]["a\nb\u2028c"] = 1  # an unknown key whose name holds line breaks
    data["tasks"]["mlp_regression"]["kind"] = "x\ny"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    code, lines = _invoke(["validate", str(path)], capsys)
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].startswith(f"error: {path}: split.a\\nb\\u2028c: unknown key")
    _assert_verdicts(path, data, stages, tmp_path, capsys)
