"""Hostile output paths (RELIABILITY.md, "outputs"): a stage replaces only its own earlier artifact, or nothing.

Every stage CLI is pointed at outputs that are not its to replace: a directory of user files, a user file,
``.``, ``..`` (an ancestor of the working directory), an empty path, ``/``, the home directory, a repository
root, a symbolic link to a user directory, a path below a user file, another stage's artifact, and its own
artifact with a user file planted inside. Each must exit 2 with one line on stderr, no traceback, and leave
every byte of the sandbox as it was (nothing deleted, nothing left beside the path). Re-running a stage over
its own earlier artifact still works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, TINY, tool_env
from gfm.cli import main
from gfm.tools.check import check_path

KEY = "mlp_regression-sgd"


# --- a small finished pipeline, built once through the CLI (re-running each stage over its own output) ----
@dataclass
class Built:
    root: Path
    params: Path
    store: Path
    split: Path
    models: Path  # holds last_value/ and linear/
    forecasts: Path
    metrics: Path
    plots: Path
    report: Path
    generalize: Path
    npz: Path


def _params_file(path: Path) -> Path:
    """The tiny study with two cheap models (every stage runs in well under a second)."""
    data = yaml.safe_load(TINY.read_text())
    dropped = set(data["models"]) - {"last_value", "linear"}

    def prune(x):  # every mention of a dropped model (train.models, tuning spaces, accelerate.models, ...)
        if isinstance(x, dict):
            return {k: prune(v) for k, v in x.items() if k not in dropped}
        if isinstance(x, list):
            return [prune(v) for v in x if not (isinstance(v, str) and v in dropped)]
        return x

    data = prune(data)
    if "claims" in data.get("report", {}):
        data["report"]["claims"] = []  # claims compare models this study does not train
    data["stores"] = {KEY: data["stores"][KEY]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("built")
    p = str(_params_file(root / "params.yaml"))
    b = Built(root, Path(p), root / "trajectories" / "mlp_regression" / "sgd.zarr",
              root / "splits" / "mlp_regression" / "sgd.json", root / "models" / "mlp_regression" / "sgd",
              root / "forecasts" / "mlp_regression" / "sgd", root / "metrics" / "mlp_regression" / "sgd.json",
              root / "plots" / "mlp_regression" / "sgd", root / "reports", root / "metrics" / "generalize.json",
              root / "runs.npz")
    for _ in range(2):  # the second round replaces every stage's own first output
        _ok(["generate", "--params", p, "--store", KEY, "--out", str(b.store), "--quiet"])
        _ok(["split", "--params", p, "--in", str(b.store), "--out", str(b.split)])
        for model in ("last_value", "linear"):
            _ok(["train", "--params", p, "--store", KEY, "--model", model, "--split", str(b.split), "--in",
                 str(b.store), "--out", str(b.models / model), "--quiet"])
        _ok(["forecast", "--params", p, "--store", KEY, "--in", str(b.store), "--split", str(b.split),
             "--models", str(b.models), "--out", str(b.forecasts)])
        _ok(["evaluate", "--params", p, "--store", KEY, "--in", str(b.store), "--split", str(b.split),
             "--forecasts", str(b.forecasts), "--metrics", str(b.metrics), "--plots", str(b.plots)])
        _ok(["generalize", "--params", p, "--data", str(root), "--out", str(b.generalize)])
        _ok(["report", "--params", p, "--metrics", str(root / "metrics"), "--plots", str(root / "plots"),
             "--accelerate", str(root / "none"), "--out", str(b.report)])
    rng = np.random.default_rng(0)
    np.savez(b.npz, weights=rng.normal(size=(4, 5, 3)).astype(np.float32))
    (root / "runs.meta.yaml").write_text(yaml.safe_dump(
        {"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "w", "shape": [3]}], "name": "imp"}))
    return b


def test_every_stage_replaces_its_own_earlier_output(built):
    """The fixture ran each stage twice over the same outputs; the second outputs are sound and nothing is
    left beside them."""
    for path in (built.store, built.split, built.models / "linear", built.forecasts, built.metrics, built.plots,
                 built.report):
        verdicts = check_path(path)
        assert all(v.ok for v in verdicts), [line for v in verdicts for line in v.lines()]
    leftovers = [p for p in built.root.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not leftovers
    json.loads(built.generalize.read_text())


# --- the corpus ---------------------------------------------------------------------------------------------
def _stage_argv(stage: str, out: str, b: Built, sandbox: Path) -> list[str]:
    p = str(b.params)
    return {
        "generate": ["generate", "--params", p, "--store", KEY, "--out", out, "--quiet"],
        "split": ["split", "--params", p, "--in", str(b.store), "--out", out],
        "train": ["train", "--params", p, "--store", KEY, "--model", "linear", "--split", str(b.split), "--in",
                  str(b.store), "--out", out, "--quiet"],
        "forecast": ["forecast", "--params", p, "--store", KEY, "--in", str(b.store), "--split", str(b.split),
                     "--models", str(b.models), "--out", out],
        "evaluate-plots": ["evaluate", "--params", p, "--store", KEY, "--in", str(b.store), "--split", str(b.split),
                           "--forecasts", str(b.forecasts), "--metrics", str(sandbox / "m.json"), "--plots", out],
        "evaluate-metrics": ["evaluate", "--params", p, "--store", KEY, "--in", str(b.store), "--split",
                             str(b.split), "--forecasts", str(b.forecasts), "--metrics", out, "--plots",
                             str(sandbox / "plots")],
        "report": ["report", "--params", p, "--metrics", str(b.root / "metrics"), "--plots", str(b.root / "plots"),
                   "--accelerate", str(b.root / "none"), "--out", out],
        "generalize": ["generalize", "--params", p, "--data", str(b.root), "--out", out],
        "accelerate": ["accelerate", "--params", p, "--store", KEY, "--split", str(b.split), "--models",
                       str(b.models), "--out", out, "--quiet"],
        "import": ["import", str(b.npz), out, "--overwrite"],
        "workspace": ["workspace", out, "--params", p, "--repo", str(Path(__file__).resolve().parents[1])],
    }[stage]


# another stage's artifact, for each stage's output
OTHER = {"generate": "forecasts", "split": "metrics", "train": "store", "forecast": "models",
         "evaluate-plots": "report", "evaluate-metrics": "split", "report": "plots", "generalize": "split",
         "accelerate": "metrics", "import": "forecasts", "workspace": "store"}


def _sandbox(tmp_path: Path, b: Built, stage: str) -> Path:
    """User files and a few artifacts; the working directory is sandbox/a/b and HOME is sandbox/home."""
    s = tmp_path / "sandbox"
    (s / "results" / "sub").mkdir(parents=True)
    (s / "results" / "notes.txt").write_text("precious notes\n")
    (s / "results" / "sub" / "data.bin").write_bytes(bytes(range(256)))
    (s / "notes.txt").write_text("a user file\n")
    (s / "link").symlink_to(s / "results", target_is_directory=True)
    (s / "repo" / ".git").mkdir(parents=True)
    (s / "repo" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (s / "repo" / "dvc.yaml").write_text("stages: {}\n")
    (s / "home").mkdir()
    (s / "home" / ".bashrc").write_text("export PS1='$ '\n")
    (s / "a" / "b").mkdir(parents=True)
    (s / "a" / "keep.txt").write_text("beside the working directory\n")
    src = {"forecasts": b.forecasts, "metrics": b.metrics, "store": b.store, "models": b.models / "linear",
           "report": b.report, "split": b.split, "plots": b.plots}[OTHER[stage]]
    dest = s / "other" / src.name
    dest.parent.mkdir()
    shutil.copytree(src, dest) if src.is_dir() else shutil.copy2(src, dest)
    return s


def _snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


WHERE = {  # name -> the output path, given the sandbox
    "user-dir": lambda s: str(s / "results"),
    "user-file": lambda s: str(s / "notes.txt"),
    "dot": lambda s: ".",
    "empty": lambda s: "",
    "root": lambda s: "/",
    "dotdot": lambda s: "..",
    "home": lambda s: str(s / "home"),
    "repo-root": lambda s: str(s / "repo"),
    "symlink-to-user-dir": lambda s: str(s / "link"),
    "inside-user-file": lambda s: str(s / "notes.txt" / "out"),
    "other-artifact": lambda s: str(next((s / "other").iterdir())),
}
STAGES = ["generate", "split", "train", "forecast", "evaluate-plots", "evaluate-metrics", "report", "generalize",
          "accelerate", "import"]
# workspace keeps its own rules for directories (a workspace is a DVC project; a non-empty directory without
# its marker is refused, tests/test_workspace.py); here: the locations no command may ever take
WORKSPACE_WHERE = ["dot", "empty", "root", "dotdot", "home"]
CASES = [(stage, where) for stage in STAGES for where in WHERE] + [("workspace", w) for w in WORKSPACE_WHERE]


def _assert_refused(rc: int, err: str, before: dict, sandbox: Path) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "refusing" in lines[0] or "a workspace cannot be the repository" in lines[0], err
    assert _snapshot(sandbox) == before, "the sandbox changed"
    return lines[0]


@pytest.mark.parametrize(("stage", "where"), CASES, ids=[f"{s}:{w}" for s, w in CASES])
def test_hostile_output_is_refused_untouched(stage, where, built, tmp_path, monkeypatch, capfd):
    sandbox = _sandbox(tmp_path, built, stage)
    monkeypatch.setenv("HOME", str(sandbox / "home"))
    monkeypatch.chdir(sandbox / "a" / "b")
    before = _snapshot(sandbox)
    capfd.readouterr()
    rc = main(_stage_argv(stage, WHERE[where](sandbox), built, sandbox))
    line = _assert_refused(rc, capfd.readouterr().err, before, sandbox)
    if where == "user-dir":
        assert "results: output path " in line and "2 files" in line  # names the path and what it holds


PLANTED = [("generate", "store"), ("train", "models"), ("report", "report"), ("forecast", "forecasts"),
           ("evaluate-plots", "plots")]


@pytest.mark.parametrize(("stage", "artifact"), PLANTED, ids=[s for s, _ in PLANTED])
def test_own_artifact_with_a_user_file_inside_is_refused(stage, artifact, built, tmp_path, monkeypatch, capfd):
    """A stage's own earlier output that someone put a file into is not replaced (the file would be lost)."""
    sandbox = _sandbox(tmp_path, built, stage)
    monkeypatch.chdir(sandbox / "a" / "b")
    src = {"store": built.store, "models": built.models / "linear", "report": built.report,
           "forecasts": built.forecasts, "plots": built.plots}[artifact]
    own = sandbox / "own" / src.name
    shutil.copytree(src, own)
    (own / "my-notes.txt").write_text("kept here on purpose\n")
    before = _snapshot(sandbox)
    capfd.readouterr()
    line = _assert_refused(main(_stage_argv(stage, str(own), built, sandbox)), capfd.readouterr().err, before,
                           sandbox)
    assert "my-notes.txt" in line


def test_a_stale_temporary_path_of_someone_else_is_refused(built, tmp_path, capfd):
    """``<out>.tmp`` holding user files (not a leftover of this stage: no marker) is not removed either."""
    out = tmp_path / "models"
    tmp = tmp_path / "models.tmp"
    tmp.mkdir()
    (tmp / "thesis.tex").write_text("\\section{}\n")
    before = _snapshot(tmp_path)
    rc = main(_stage_argv("train", str(out), built, tmp_path))
    line = _assert_refused(rc, capfd.readouterr().err, before, tmp_path)
    assert "models.tmp" in line


def test_a_leftover_of_an_interrupted_run_is_cleared(built, tmp_path, capfd):
    """The stage's own leftover (marked as its kind from the start) beside the output is removed and the
    stage runs."""
    from gfm.artifacts.output_contents import MARKER_FILE, marker_kind
    from gfm.artifacts.outputs import PLOTS, open_temp_dir

    tmp = open_temp_dir(tmp_path / "plots", PLOTS)  # what an interrupted evaluate leaves
    (tmp / "mse_vs_horizon.csv").write_text("model,hor")  # cut short by a kill
    assert main(_stage_argv("evaluate-plots", str(tmp_path / "plots"), built, tmp_path)) == 0
    assert not tmp.exists() and (tmp_path / "plots" / "trajectory.csv").is_file()
    assert (tmp_path / "plots" / MARKER_FILE).is_file() and marker_kind(tmp_path / "plots") == PLOTS.name


# --- real processes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["generate:user-dir", "split:dot", "report:home"])
def test_hostile_output_in_a_real_process(case, built, tmp_path):
    stage, where = case.split(":")
    sandbox = _sandbox(tmp_path, built, stage)
    before = _snapshot(sandbox)
    env = {**tool_env(), "HOME": str(sandbox / "home")}
    proc = subprocess.run([str(BIN / "gfm"), *_stage_argv(stage, WHERE[where](sandbox), built, sandbox)],
                          cwd=sandbox / "a" / "b", env=env, capture_output=True, text=True, timeout=300)
    _assert_refused(proc.returncode, proc.stderr, before, sandbox)
    assert proc.stdout == ""
