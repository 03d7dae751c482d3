"""A corpus of hostile inputs (RELIABILITY.md, "Hostile inputs"): crafted splits, models, stores and import
sources. Every stage that reads one refuses it the way `gfm check` does: exit 2, one bounded `error:` line
naming the file and what is wrong, no traceback, nothing written that looks complete, and never a hang
(FIFOs and /dev/zero are refused unread; every case runs under a watchdog). `gfm check` gives exit 1 and a
named problem line for the same inputs.

Most cases call `gfm.cli.main` in-process (parametrized); three run the real `gfm` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import TINY, tool_env
from gfm.cli import main
from gfm.forecasters.model_files import save_model
from test_reliability import KEY, staged  # noqa: F401  (module fixture: split/train/forecast/evaluate/report)

TIMEOUT = 60  # seconds; a FIFO or /dev/zero that is read instead of refused would block or run past it
MAX_LINE = 600  # one bounded line
DEEP = 10_000


def _deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def _cli(argv: list[str], capfd) -> tuple[int, str, str]:
    """``gfm.cli.main(argv)`` under a watchdog thread: a hang fails the test instead of blocking the suite."""
    result: dict = {}

    def target():
        try:
            result["code"] = main(argv)
        except BaseException as exc:  # noqa: BLE001 - reported below with the output
            result["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(TIMEOUT)
    out, err = capfd.readouterr()
    assert not t.is_alive(), f"gfm {argv[0]} still running after {TIMEOUT} s (a FIFO or device was read?)"
    assert "exc" not in result, f"gfm {argv[0]} raised {result.get('exc')!r}\n{err}"
    return result["code"], out, err


def _assert_refused(code: int, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < MAX_LINE, lines
    assert message in lines[0], (message, lines[0])


def _assert_named(code: int, out: str, message: str) -> None:
    assert code == 1, (code, out)
    assert "Traceback" not in out
    bad = [line for line in out.splitlines() if ": ok (" not in line]
    assert any(message in line for line in bad), (message, out)
    assert all(len(line) < 2 * MAX_LINE for line in out.splitlines()), out


# --- the artifacts the cases damage ---------------------------------------------------------------------
@dataclass
class Run:
    """Copies of one staged run's artifacts, private to a test."""

    root: Path
    store: Path
    split: Path
    models: Path
    params: Path

    @property
    def out(self) -> Path:
        return self.root / "forecasts"

    def forecast(self) -> list[str]:
        return ["forecast", "--params", str(self.params), "--store", KEY, "--model", "linear", "--in", str(self.store),
                "--split", str(self.split), "--models", str(self.models), "--out", str(self.out)]

    def train(self) -> list[str]:
        return ["train", "--params", str(self.params), "--store", KEY, "--model", "linear", "--split", str(self.split),
                "--in", str(self.store), "--out", str(self.root / "trained"), "--quiet"]

    lstm: Path | None = None

    def seed_dir(self, seed: str = "1") -> Path:
        return self.models / "linear" / seed

    def neural(self, seed: str = "1") -> Path:
        """Put a genuine LSTM (it has tensors; linear has none) where forecast loads seed ``seed``'s model."""
        d = self.seed_dir(seed)
        shutil.rmtree(d)
        shutil.copytree(self.lstm, d)
        return d

    def nothing_written(self) -> bool:
        leftovers = [p for p in self.root.iterdir() if p.name.startswith(("forecasts", "trained"))]
        return not leftovers


@pytest.fixture(scope="module")
def closed_params(tmp_path_factory) -> Path:
    """The tiny study with only the closed-form models the staged run trains (a params file the CLI reads)."""
    data = yaml.safe_load(TINY.read_text())
    keep = ("last_value", "linear")
    data["models"] = {k: v for k, v in data["models"].items() if k in keep}
    data["train"]["models"] = list(keep)
    space = (data["train"].get("tuning") or {}).get("space")
    if isinstance(space, dict):  # search spaces of the learned models dropped above
        data["train"]["tuning"]["space"] = {k: v for k, v in space.items() if k in keep}
    data["accelerate"]["models"] = ["linear"]
    data["report"]["claims"] = []
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def lstm_model(tiny_store, tmp_path_factory) -> Path:
    """A genuine saved LSTM forecaster, fitted for a couple of updates."""
    import dataclasses

    from gfm.forecasters import FORECASTERS, Trajectories, make_forecaster
    from gfm.store.reader import open_trajectories

    fields = {f.name for f in dataclasses.fields(FORECASTERS["lstm"].Config)}
    short = {k: v for k, v in {"steps": 2, "eval_every": 1, "max_epochs": 1}.items() if k in fields}
    traj = Trajectories.from_store(open_trajectories(tiny_store), list(range(12)))
    fc = make_forecaster("lstm", {"hidden": 4, **short}, prefix_end=8, horizons=[16, 24, 32, 40])
    fc.fit(traj.select(range(8)), traj.select(range(8, 12)), rng=torch.Generator().manual_seed(0))
    return save_model(fc, tmp_path_factory.mktemp("models") / "lstm")


@pytest.fixture
def run(staged, tiny_store, closed_params, lstm_model, tmp_path) -> Run:  # noqa: F811
    _, root, sp = staged
    r = Run(tmp_path / "run", tmp_path / "run" / "store.zarr", tmp_path / "run" / "split.json",
            tmp_path / "run" / "models", closed_params, lstm_model)
    r.root.mkdir()
    shutil.copytree(tiny_store, r.store)
    shutil.copy(sp, r.split)
    shutil.copytree(root / "models" / "linear", r.models / "linear")
    return r


def _edit_split(r: Run, change: Callable[[dict], None]) -> None:
    data = json.loads(r.split.read_text())
    change(data["datasets"])
    r.split.write_text(json.dumps(data))


def _seed_runs(r: Run, seed: int) -> list[int]:
    import zarr

    seeds = zarr.open_group(str(r.store), mode="r")["runs/dataset_seed"][:]
    return np.flatnonzero(seeds == seed).tolist()


def _edit_tensors(d: Path, change: Callable[[dict], dict]) -> None:
    w = d / "weights.safetensors"
    tensors = change(load_file(str(w)))
    w.unlink()
    save_file(tensors, str(w))


def _first_float(tensors: dict, value: float) -> dict:
    name = sorted(tensors)[0]
    t = tensors[name].clone()
    t.view(-1)[0] = value
    return {**tensors, name: t}


def _wrong_shape(tensors: dict) -> dict:
    name = sorted(tensors)[0]
    return {**tensors, name: torch.zeros(*tensors[name].shape, 3)}


def _f64(tensors: dict) -> dict:
    name = sorted(tensors)[0]
    return {**tensors, name: tensors[name].double()}


def _raw_header(d: Path, header: bytes, data: bytes = b"") -> None:
    (d / "weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)


def _truncate(d: Path) -> None:
    w = d / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-4])


def _config(d: Path, text: str) -> None:
    (d / "config.json").write_text(text)


def _nan_extra(d: Path) -> None:
    meta = json.loads((d / "config.json").read_text())
    meta["extra"] = {**meta.get("extra", {}), "scales": {"weight": float("nan")}}
    (d / "config.json").write_text(json.dumps(meta))


def _link_to(path: Path, target: str | Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    os.symlink(target, path)


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def _meta(store: Path, array: str, **changes) -> None:
    p = store / array / "zarr.json" if array else store / "zarr.json"
    meta = json.loads(p.read_text())
    for key, value in changes.items():
        if key == "attributes":
            meta["attributes"] = value(meta["attributes"])
        else:
            meta[key] = value
    p.write_text(json.dumps(meta))


def _shard(store: Path, array: str = "weights") -> Path:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]


def _outside_copy(r: Run, path: Path) -> Path:
    dest = r.root.parent / f"outside-{path.name}"
    (shutil.copytree if path.is_dir() else shutil.copy)(path, dest)
    return dest


def _drop_attrs(*keys: str):
    return lambda a: {k: v for k, v in a.items() if k not in keys}


# Each case: (damage(run), argv(run), message in the `error:` line). The stage is forecast unless argv says.
CASES: dict[str, tuple[Callable[[Run], None], Callable[[Run], list[str]], str]] = {
    # splits
    "split: test runs leak into train": (
        lambda r: _edit_split(r, lambda d: d["1"]["train"].append(d["1"]["test"][0])), Run.forecast,
        "train and test share runs"),
    "split: test runs leak into train (train stage)": (
        lambda r: _edit_split(r, lambda d: d["1"]["train"].append(d["1"]["test"][0])), Run.train,
        "test runs would leak into training"),
    "split: a run listed twice": (
        lambda r: _edit_split(r, lambda d: d["1"]["test"].append(d["1"]["test"][0])), Run.forecast,
        "lists runs more than once"),
    "split: runs of another dataset seed": (
        lambda r: _edit_split(r, lambda d: d["1"]["test"].append(_seed_runs(r, 2)[0])), Run.forecast,
        "lists runs of another dataset seed"),
    "split: runs of another dataset seed (train stage)": (
        lambda r: _edit_split(r, lambda d: d["2"]["train"].append(_seed_runs(r, 1)[0])), Run.train,
        "another dataset seed"),
    "split: a run id beyond the store": (
        lambda r: _edit_split(r, lambda d: d["1"]["test"].append(10_000)), Run.forecast, "must list run ids in 0..23"),
    "split: a dataset key that is a path": (
        lambda r: _edit_split(r, lambda d: d.update({"../x": d.pop("1")})), Run.forecast, "not a decimal dataset seed"),
    "split: JSON list": (lambda r: r.split.write_text("[1, 2]"), Run.forecast, "not a split file"),
    "split: JSON nested 10,000 deep": (
        lambda r: r.split.write_text(_deep_json()), Run.forecast, "nested deeper than"),
    "split: a FIFO": (lambda r: _fifo(r.split), Run.forecast, "a FIFO"),
    # models
    "model: NaN tensor": (
        lambda r: _edit_tensors(r.neural(), lambda t: _first_float(t, float("nan"))), Run.forecast,
        "hold non-finite values"),
    "model: Inf tensor": (
        lambda r: _edit_tensors(r.neural("2"), lambda t: _first_float(t, float("inf"))), Run.forecast,
        "hold non-finite values"),
    "model: tensor of the wrong shape": (
        lambda r: _edit_tensors(r.neural(), _wrong_shape), Run.forecast, "tensors do not fit a 'lstm' model"),
    "model: float64 tensor": (lambda r: _edit_tensors(r.neural(), _f64), Run.forecast, "expected F32"),
    "model: safetensors header a JSON list": (
        lambda r: _raw_header(r.seed_dir(), b"[1, 2, 3]"), Run.forecast, "must be a JSON object; got a list"),
    "model: safetensors header nested 10,000 deep": (
        lambda r: _raw_header(r.seed_dir(), _deep_json().encode()), Run.forecast, "nested deeper than"),
    "model: safetensors length field of 2**60": (
        lambda r: (r.seed_dir() / "weights.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}"),
        Run.forecast, "larger than allowed"),
    "model: safetensors truncated": (lambda r: _truncate(r.neural()), Run.forecast, "truncated or padded"),
    "model: safetensors offsets past the data": (
        lambda r: _raw_header(r.seed_dir(), json.dumps(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(), b"\0" * 4),
        Run.forecast, "truncated or padded"),
    "model: config.json a JSON list": (lambda r: _config(r.seed_dir(), "[]"), Run.forecast, "not a gfm-forecaster"),
    "model: config.json nested 10,000 deep": (
        lambda r: _config(r.seed_dir(), _deep_json()), Run.forecast, "nested deeper than"),
    "model: NaN fitted value in config.json": (lambda r: _nan_extra(r.seed_dir()), Run.forecast, "are not finite"),
    "model: weights linked to /dev/zero": (
        lambda r: _link_to(r.seed_dir() / "weights.safetensors", "/dev/zero"), Run.forecast, "symbolic link leaving"),
    "model: weights a FIFO": (lambda r: _fifo(r.seed_dir() / "weights.safetensors"), Run.forecast, "a FIFO"),
    # trajectory stores (stage input path: open_trajectories)
    "store: negative shape": (lambda r: _meta(r.store, "weights", shape=[-24, 41, 19]), Run.forecast,
                              "must be a list of non-negative integers"),
    "store: absurd weights shape": (lambda r: _meta(r.store, "weights", shape=[24, 41, 10**12]), Run.forecast,
                                    "the store's layout says (24, 41, 19) float32"),
    "store: float64 weights": (lambda r: _meta(r.store, "weights", data_type="float64"), Run.forecast,
                               "'float64'; the store's layout says"),
    "store: unknown codec": (
        lambda r: _meta(r.store, "loss", codecs=[{"name": "bytes"}, {"name": "evil_codec"}]), Run.forecast,
        "unknown codec 'evil_codec'"),
    "store: missing attributes": (
        lambda r: _meta(r.store, "", attributes=_drop_attrs("n_params", "layout")), Run.forecast,
        "n_params must be positive integers"),
    "store: n_params beyond the layout": (
        lambda r: _meta(r.store, "", attributes=lambda a: {**a, "n_params": 10**12}), Run.forecast, "layout covers"),
    "store: n_runs not the arrays' runs": (
        lambda r: _meta(r.store, "", attributes=lambda a: {**a, "n_runs": 25}), Run.forecast,
        "the store's layout says (25, 41, 19)"),
    "store: zarr.json nested 10,000 deep": (
        lambda r: (r.store / "zarr.json").write_text(_deep_json()), Run.forecast, "nested deeper than"),
    "store: zarr.json a list": (lambda r: (r.store / "zarr.json").write_text("[]"), Run.forecast,
                                "not a Zarr group with attributes"),
    "store: chunk linked to /dev/zero": (lambda r: _link_to(_shard(r.store), "/dev/zero"), Run.forecast,
                                         "symbolic links leaving the artifact"),
    "store: chunk linked outside the store": (
        lambda r: _link_to(_shard(r.store), _outside_copy(r, _shard(r.store))), Run.forecast,
        "symbolic links leaving the artifact"),
    "store: array directory linked outside the store": (
        lambda r: _link_to(r.store / "loss", _outside_copy(r, r.store / "loss")), Run.forecast,
        "symbolic links leaving the artifact (refused unread): loss ->"),
    "store: chunk a FIFO": (lambda r: _fifo(_shard(r.store)), Run.forecast, "a FIFO"),
    "store: chunk larger than its chunk can be": (
        lambda r: _shard(r.store, "loss").write_bytes(os.urandom(1 << 20)), Run.forecast,
        "larger than their chunk can encode to"),
    "store: damaged, gfm info": (
        lambda r: _meta(r.store, "", attributes=_drop_attrs("store", "task")),
        lambda r: ["info", str(r.store)], "attribute task must hold"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stage_refuses_a_hostile_input(case, run, capfd):
    damage, argv, message = CASES[case]
    damage(run)
    code, _, err = _cli(argv(run), capfd)
    _assert_refused(code, err, message)
    assert run.nothing_written(), sorted(p.name for p in run.root.iterdir())


# `gfm check` names the same problems (exit 1), reading nothing it should not.
CHECKED = {
    "split: test runs leak into train": ("split", "train and test share runs"),
    "split: a run listed twice": ("split", "lists runs more than once"),
    "split: JSON nested 10,000 deep": ("split", "nested deeper than"),
    "split: a FIFO": ("split", "a FIFO"),
    "model: NaN tensor": ("models", "hold non-finite values"),
    "model: safetensors header a JSON list": ("models", "must be a JSON object"),
    "model: safetensors header nested 10,000 deep": ("models", "nested deeper than"),
    "model: weights linked to /dev/zero": ("models", "symbolic link"),
    "model: weights a FIFO": ("models", "a FIFO"),
    "store: absurd weights shape": ("store", "the store's layout says"),
    "store: unknown codec": ("store", "unknown codec"),
    "store: chunk linked to /dev/zero": ("store", "symbolic links leaving the artifact"),
    "store: chunk linked outside the store": ("store", "symbolic links leaving the artifact"),
    "store: array directory linked outside the store": ("store", "symbolic links leaving the artifact"),
    "store: chunk a FIFO": ("store", "a FIFO"),
    "store: zarr.json nested 10,000 deep": ("store", "nested deeper than"),
}


@pytest.mark.parametrize("case", list(CHECKED))
def test_check_names_the_same_hostile_input(case, run, capfd):
    damage, _, _ = CASES[case]
    target, message = CHECKED[case]
    damage(run)
    code, out, _ = _cli(["check", str(getattr(run, target))], capfd)
    _assert_named(code, out, message)


def test_check_names_files_that_are_not_part_of_a_store(run, capfd):
    (run.store / "weights" / "c" / "stray.partial").write_bytes(b"\0" * 10)
    (run.store / "notes.txt").write_text("hi")
    code, out, _ = _cli(["check", str(run.store)], capfd)
    _assert_named(code, out, "files that are not part of the store: notes.txt, weights/c/stray.partial")


def test_check_and_a_resumed_writer_agree_which_chunk_files_are_foreign(run, capfd):
    """A copy of a chunk under a name zarr never reads (a leading zero) is foreign to gfm check exactly as
    to the writer that resumes a store and discards such files (one chunk-key rule, gfm.artifacts.zarr_files)."""
    from gfm.artifacts.zarr_files import foreign_files_on_disk

    chunk = next(p for p in sorted((run.store / "weights" / "c").rglob("*")) if p.is_file())
    odd = chunk.parent / f"0{chunk.name}"
    shutil.copyfile(chunk, odd)
    code, out, _ = _cli(["check", str(run.store)], capfd)
    rel = odd.relative_to(run.store).as_posix()
    _assert_named(code, out, f"files that are not part of the store: {rel}")
    assert foreign_files_on_disk(run.store) == [odd]


def test_check_does_not_follow_a_link_leaving_the_walked_directory(run, capfd):
    (run.root / "plots").mkdir()
    os.symlink("/dev/zero", run.root / "plots" / "zero.csv")
    os.symlink(run.root.parent, run.root / "plots" / "up")
    code, out, _ = _cli(["check", str(run.root / "plots")], capfd)
    _assert_named(code, out, "symbolic link leaving")
    assert out.count("symbolic link leaving") == 2, out


# --- import sources ---------------------------------------------------------------------------------------
class _Pwn:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _weights(n_runs=4, steps=6, params=3) -> np.ndarray:
    return np.cumsum(np.random.default_rng(0).normal(size=(n_runs, steps, params)), 1).astype(np.float32)


def _truncated_npy(path: Path, keep: int = 100) -> Path:
    np.save(path, _weights())
    path.write_bytes(path.read_bytes()[:keep])
    return path


META = {"optimizer": {"name": "sgd", "lr": 0.1}}

IMPORTS: dict[str, tuple[Callable[[Path], Path], dict | str | None, str]] = {
    "truncated .npy": (lambda d: _truncated_npy(d / "w.npy"), META, "not a readable NumPy file"),
    "object-dtype .npy (never unpickled)": (
        lambda d: (np.save(d / "w.npy", np.array([_Pwn()], dtype=object), allow_pickle=True), d / "w.npy")[1],
        META, "not a readable NumPy file"),
    "object array in an .npz": (
        lambda d: (np.savez(d / "w.npz", weights=_weights(), loss=np.array([_Pwn()] * 4, dtype=object)),
                   d / "w.npz")[1], META, "not a readable NumPy file"),
    "2-d weights": (lambda d: (np.save(d / "w.npy", _weights()[0]), d / "w.npy")[1], META,
                    "expected floats shaped (run, step, param)"),
    "string loss in an .npz": (
        lambda d: (np.savez(d / "w.npz", weights=_weights(), loss=np.full((4, 6), "x")), d / "w.npz")[1], META,
        "loss: got dtype <U1; expected floats"),
    "negative dataset seeds in an .npz": (
        lambda d: (np.savez(d / "w.npz", weights=_weights(), dataset_seed=np.array([-1, -1, 2, 2])), d / "w.npz")[1],
        META, "dataset_seed: negative values"),
    "NaN learning rate in an .npz": (
        lambda d: (np.savez(d / "w.npz", weights=_weights(), lr=np.full((4, 6), np.nan, np.float32)),
                   d / "w.npz")[1], META, "non-finite or negative learning rates"),
    "metadata a JSON list": (lambda d: (np.save(d / "w.npy", _weights()), d / "w.npy")[1], "[1, 2]",
                             "expected a mapping"),
    "metadata JSON nested 10,000 deep": (lambda d: (np.save(d / "w.npy", _weights()), d / "w.npy")[1], _deep_json(),
                                         "nested deeper than"),
    "metadata dataset_seed of the wrong length": (
        lambda d: (np.save(d / "w.npy", _weights()), d / "w.npy")[1], {**META, "dataset_seed": [1, 2]},
        "dataset_seed: got [1, 2]; expected an integer >= 0 or a list of 4"),
    "source a FIFO": (lambda d: (os.mkfifo(d / "w.npy"), d / "w.npy")[1], META, "a FIFO"),
}


@pytest.mark.parametrize("case", list(IMPORTS))
def test_import_refuses_a_hostile_source(case, tmp_path, capfd, monkeypatch):
    make, meta, message = IMPORTS[case]
    monkeypatch.chdir(tmp_path)
    src = make(tmp_path)
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    dest = tmp_path / "out.zarr"
    code, _, err = _cli(["import", str(src), str(dest), "--meta", str(meta_path)], capfd)
    _assert_refused(code, err, message)
    assert not dest.exists() and not (tmp_path / "out.zarr.partial").exists()
    assert not (tmp_path / "PWNED").exists()


# --- real processes ---------------------------------------------------------------------------------------
def _gfm(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gfm", *args], cwd=cwd, env=tool_env(), capture_output=True,
                          text=True, timeout=TIMEOUT * 2)


def test_subprocess_check_of_a_store_with_a_fifo_and_a_dev_zero_chunk(run):
    chunks = sorted(p for p in (run.store / "weights" / "c").rglob("*") if p.is_file())
    _fifo(chunks[0])
    _link_to(chunks[1], "/dev/zero")
    proc = _gfm(["check", str(run.store)], run.root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "a FIFO" in proc.stdout and "/dev/zero" in proc.stdout, proc.stdout


def test_subprocess_forecast_with_weights_linked_to_dev_zero(run):
    _link_to(run.seed_dir() / "weights.safetensors", "/dev/zero")
    proc = _gfm(run.forecast(), run.root)
    _assert_refused(proc.returncode, proc.stderr, "symbolic link leaving")
    assert run.nothing_written()


def test_subprocess_import_of_a_truncated_npy(tmp_path):
    _truncated_npy(tmp_path / "w.npy", keep=90)
    (tmp_path / "w.meta.json").write_text(json.dumps(META))
    proc = _gfm(["import", "w.npy", "w.zarr"], tmp_path)
    _assert_refused(proc.returncode, proc.stderr, "not a readable NumPy file")
    assert not (tmp_path / "w.zarr").exists()
