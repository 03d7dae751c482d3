"""Declared stores (gfm.config.declared): a store recorded with gfm.record, named in params by path and content hash,
checked when params are loaded, declared by `gfm declare`, and taken in by generate in the generated layout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from torch import nn

import gfm
from gfm.base.errors import ParamsError
from gfm.config import load_params
from gfm.config.declared import DeclareError, store_digest
from gfm.recording.declare import declare, intake

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "params.tiny.yaml"


def _record(path: Path, *, seeds=(1, 2), runs=4, steps=12, optimizer=torch.optim.SGD, **opt_kwargs) -> Path:
    first = True
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(32, 2, generator=g)
        y = torch.tanh(x @ torch.randn(2, generator=g))
        for r in range(runs):
            torch.manual_seed(100 * seed + r)
            model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
            opt = optimizer(model.parameters(), **({"lr": 0.05} | opt_kwargs))
            with gfm.record(path, model, opt, mode="w" if first else "a", dataset_seed=seed) as rec:
                for _ in range(steps):
                    loss = ((model(x).squeeze(-1) - y) ** 2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    rec.step(loss)
            first = False
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """8 runs (2 dataset seeds x 4) of 12 SGD steps of a Tanh MLP, one record per step (13 records)."""
    return _record(tmp_path_factory.mktemp("rec") / "mine.zarr")


def _study(tmp_path: Path, recorded: Path, **task) -> Path:
    """The tiny params with the recorded store declared as task ``mine`` (its store in the study's models)."""
    data = yaml.safe_load(TINY.read_text())
    store = tmp_path / "data" / "recorded" / "mine.zarr"
    if not store.exists():
        shutil.copytree(recorded, store)
    data["tasks"] = {"mine": {"kind": "recorded", "path": "data/recorded/mine.zarr", "sha256": store_digest(store),
                              **task}}
    data["stores"] = {"mine-sgd": {"task": "mine", "optimizer": {"name": "sgd"}}}
    data["forecast"] = {"prefix_end": 8, "horizons": [10, 12]}
    data["report"]["target_task"] = "mine"
    data["generalize"] = {"models": [], "pairs": []}
    data["accelerate"] = {**data.get("accelerate", {}), "stores": {}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _problems(path: Path) -> str:
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    return str(exc.value)


def test_a_declared_store_takes_its_sizes_from_the_store(tmp_path, recorded):
    p = load_params(_study(tmp_path, recorded))
    task = p.tasks["mine"]
    assert (task.kind, task.runs_per_dataset, task.steps, task.record_every, task.n_records) == \
        ("recorded", 4, 12, 1, 13)
    assert task.n_params() == gfm.open_trajectories(recorded).n_params == 17
    assert p.stores["mine-sgd"].optimizer.lr is None  # the runs' own learning rate is in the store


def test_a_missing_or_changed_store_is_refused_naming_the_key(tmp_path, recorded):
    path = _study(tmp_path, recorded)
    store = tmp_path / "data" / "recorded" / "mine.zarr"
    # changed since it was declared: one run's loss rewritten in place
    arr = zarr.open_array(store / "loss", mode="r+")
    arr[0, 0] = arr[0, 0] + 1
    msg = _problems(path)
    assert "tasks.mine.sha256: the store at data/recorded/mine.zarr changed since it was declared" in msg
    assert "gfm declare data/recorded/mine.zarr --task mine --write" in msg
    shutil.rmtree(store)
    msg = _problems(path)
    assert "tasks.mine.path:" in msg and "no store there" in msg


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["tasks"]["mine"].update(steps=200), "tasks.mine.steps: a recorded task takes it from its store"),
    (lambda d: d["stores"]["mine-sgd"]["optimizer"].update(lr=0.1),
     "stores.mine-sgd.optimizer.lr: a recorded store's hyper-parameters are its runs' own"),
    (lambda d: (d["stores"].pop("mine-sgd"), d["stores"].update({"mine-adam": {"task": "mine", "optimizer": {"name": "adam"}}})),
     "stores.mine-adam.optimizer.name: got 'adam'; the store at data/recorded/mine.zarr holds sgd runs"),
    (lambda d: d["tasks"]["mine"].update(sha256="abc"), "tasks.mine.sha256: got 'abc'; expected 64 lowercase hex"),
    (lambda d: d["accelerate"].update(stores={"mine-sgd": {"task": "mine", "optimizer": "sgd"}}),
     "accelerate.stores.mine-sgd: a recorded store cannot be re-trained by jump-ahead"),
    (lambda d: d["stores"]["mlp_regression-sgd"]["optimizer"].pop("lr"),
     "stores.mlp_regression-sgd.optimizer.lr: missing"),
])
def test_what_a_declared_entry_may_not_say_is_refused(tmp_path, recorded, edit, expected):
    path = _study(tmp_path, recorded)
    data = yaml.safe_load(path.read_text())
    if "mlp_regression-sgd" in expected:
        tiny = yaml.safe_load(TINY.read_text())
        data["tasks"]["mlp_regression"] = tiny["tasks"]["mlp_regression"]
        data["stores"]["mlp_regression-sgd"] = {"task": "mlp_regression", "optimizer": {"name": "sgd", "lr": 0.05}}
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert expected in _problems(path)


def test_gfm_declare_prints_or_writes_the_entries_keeping_comments(tmp_path, recorded):
    params = _study(tmp_path, recorded)
    text = "# my study\n" + params.read_text().replace("seed: 0", "seed: 0  # base seed", 1)
    params.write_text(text)
    store = tmp_path / "data" / "recorded" / "other.zarr"
    shutil.copytree(recorded, store)
    printed = declare(store, params_path=params, task="other")
    assert yaml.safe_load(printed) == {"tasks": {"other": {"kind": "recorded", "path": "data/recorded/other.zarr",
                                                           "sha256": store_digest(store)}},
                                       "stores": {"other-sgd": {"task": "other", "optimizer": {"name": "sgd"}}}}
    assert params.read_text() == text  # printing writes nothing
    declare(store, params_path=params, task="other", write=True)
    after = params.read_text()
    assert after.startswith("# my study\n") and "seed: 0  # base seed" in after
    loaded = load_params(params)
    assert loaded.tasks["other"].path == "data/recorded/other.zarr" and "other-sgd" in loaded.stores
    # a generated task's name is not taken over, and the file is left as it was
    with pytest.raises(DeclareError, match="tasks.mlp_regression: already a generated task"):
        data = yaml.safe_load(after)
        data["tasks"]["mlp_regression"] = yaml.safe_load(TINY.read_text())["tasks"]["mlp_regression"]
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        before = params.read_text()
        declare(store, params_path=params, task="mlp_regression", write=True)
    assert params.read_text() == before


def test_gfm_declare_cli_then_validate(tmp_path, recorded):
    params = _study(tmp_path, recorded)
    store = tmp_path / "data" / "recorded" / "mine.zarr"
    arr = zarr.open_array(store / "loss", mode="r+")
    arr[0, 1] = arr[0, 1] + 1  # re-recorded: validate refuses until it is declared again
    gfm_bin = [sys.executable, "-m", "gfm"]
    bad = subprocess.run([*gfm_bin, "validate", str(params)], capture_output=True, text=True)
    assert bad.returncode == 2 and "changed since it was declared" in bad.stderr
    ok = subprocess.run([*gfm_bin, "declare", str(store), "--params", str(params), "--task", "mine", "--write"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert subprocess.run([*gfm_bin, "validate", str(params)], capture_output=True, text=True).returncode == 0


def test_intake_copies_every_value_into_the_generated_layout(tmp_path, recorded):
    params = load_params(_study(tmp_path, recorded))
    out = tmp_path / "data" / "trajectories" / "mine" / "sgd.zarr"
    done = intake(params, "mine-sgd", out=out)
    assert done["runs"] == 8
    src, dst = zarr.open_group(recorded, mode="r"), zarr.open_group(out, mode="r")
    for name in ("weights", "loss", "lr", "final/weights", "final/loss", "runs/dataset_seed", "runs/index",
                 "runs/lr", "runs/diverged"):
        np.testing.assert_array_equal(dst[name][:], src[name][:], err_msg=name)
    # the recorder writes a run per chunk; the taken-in store has params.store's chunks of runs
    assert src["weights"].chunks[0] == 1 and dst["weights"].chunks[0] == params.store.chunk_runs
    assert dst.attrs["declared"] == {"path": "data/recorded/mine.zarr", "sha256": store_digest(recorded),
                                     "task": "mine"}
    assert dst.attrs["store"] == "mine-sgd" and dst.attrs["complete"] is True
    assert gfm.open_trajectories(out).layout == gfm.open_trajectories(recorded).layout


def test_intake_refuses_its_own_output_path_as_source(tmp_path, recorded):
    path = _study(tmp_path, recorded)
    data = yaml.safe_load(path.read_text())
    own = tmp_path / "data" / "trajectories" / "mine" / "sgd.zarr"
    own.parent.mkdir(parents=True)
    shutil.copytree(recorded, own)
    data["tasks"]["mine"]["path"] = "data/trajectories/mine/sgd.zarr"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(DeclareError, match="is the pipeline's own path"):
        intake(load_params(path), "mine-sgd", out=own)
    assert store_digest(own) == store_digest(recorded)  # left as it was


def test_a_workspace_reads_the_declared_store_from_where_the_preset_names_it(tmp_path, recorded):
    from gfm.tools.workspace import _declared_paths_absolute

    params = _study(tmp_path, recorded)
    text = _declared_paths_absolute(params.read_bytes(), tmp_path)
    data = yaml.safe_load(text)
    assert data["tasks"]["mine"]["path"] == str(tmp_path / "data" / "recorded" / "mine.zarr")
    assert {k: v for k, v in data.items() if k != "tasks"} == \
        {k: v for k, v in yaml.safe_load(params.read_text()).items() if k != "tasks"}
    # a preset without a declared store is copied byte for byte
    assert _declared_paths_absolute(TINY.read_bytes(), ROOT) == TINY.read_bytes()


def test_gfm_rechunk_rewrites_a_recorded_store_for_reading_many_runs_per_call(tmp_path, recorded):
    out = tmp_path / "fast.zarr"
    proc = subprocess.run([sys.executable, "-m", "gfm", "rechunk", str(recorded), str(out)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}: 8 runs x 13 records x 17 params, 8 runs per chunk"
    src, dst = zarr.open_group(recorded, mode="r"), zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(dst["weights"][:], src["weights"][:])
    assert dst["weights"].chunks[0] == 8 and dst.attrs["block_runs"] == 8
    # its own input is never its output, and a directory that is not a store is never replaced
    assert subprocess.run([sys.executable, "-m", "gfm", "rechunk", str(out), str(out)], capture_output=True,
                          text=True).returncode == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    bad = subprocess.run([sys.executable, "-m", "gfm", "rechunk", str(recorded), str(tmp_path / "mine")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
