"""gfm.record_runs: many runs of a loop into one store, written once, with gfm.record(mode="a")'s values."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import gfm
from gfm.artifacts.outputs import OutputError
from gfm.artifacts.zarr_files import partial_path
from gfm.base.errors import StoreLockedError
from gfm.config import StoreLayoutConfig
from gfm.recording.capture import RecordError
from gfm.recording.runset import WORK_SUFFIX
from margins import THREADS

STEPS = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


def make_run(r: int, hidden: int = 3):
    """Run ``r``: a Tanh MLP under Adam (lr differs between runs), its data and held-out data."""
    torch.manual_seed(r)
    model = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (1 + r % 3))
    g = torch.Generator().manual_seed(100 + r)
    x, xv = torch.randn(16, 2, generator=g), torch.randn(5, 2, generator=g)
    return model, opt, x, x.sum(1), xv, xv.sum(1)


def train(model, opt, x, y, rec, steps: int = STEPS) -> None:
    for k in range(steps):
        b = slice(k % 2 * 8, k % 2 * 8 + 8)
        loss = ((model(x[b]).squeeze(-1) - y[b]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(loss)


def seed_of(r: int) -> int:
    return [3, 1][r % 2]


def record_set(path, n: int, **kwargs):
    with gfm.record_runs(path, **kwargs) as runs:
        for r in range(n):
            model, opt, x, y, xv, yv = make_run(r)
            with runs.record(model, opt, dataset_seed=seed_of(r), loss="mse", eval_data=(xv, yv),
                             chunk_steps=4) as rec:
                train(model, opt, x, y, rec)
    return path


def record_appended(path, n: int):
    for r in range(n):
        model, opt, x, y, xv, yv = make_run(r)
        with gfm.record(path, model, opt, mode="w" if r == 0 else "a", dataset_seed=seed_of(r), loss="mse",
                        eval_data=(xv, yv), chunk_steps=4) as rec:
            train(model, opt, x, y, rec)
    return path


def arrays(path) -> dict[str, np.ndarray]:
    """Every array of the store by its path in the group."""
    def walk(g: zarr.Group, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}{name}": arr[:] for name, arr in g.arrays()}
        for name, sub in g.groups():
            out.update(walk(sub, f"{prefix}{name}/"))
        return out

    return walk(zarr.open_group(path, mode="r"), "")


def test_the_store_holds_what_appending_each_run_writes(tmp_path):
    """Every array (weights, loss, lr, state, final, runs/* with each run's index among its seed's runs,
    eval/*) and the network equal gfm.record(mode="a")'s for the same runs; hyper-parameters that differ
    between runs are "per run" in the attributes."""
    ref = gfm.open_trajectories(record_appended(tmp_path / "a.zarr", 4))
    got = gfm.open_trajectories(record_set(tmp_path / "s.zarr", 4, chunks=StoreLayoutConfig(chunk_runs=1,
                                                                                          shard_runs=2)))
    want, have = arrays(tmp_path / "a.zarr"), arrays(tmp_path / "s.zarr")
    assert sorted(have) == sorted(want) and {"state/exp_avg", "eval/x", "eval/y", "runs/index"} <= set(have)
    for name in want:
        assert have[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(have[name], want[name], err_msg=name)
    assert list(have["runs/index"]) == [0, 0, 1, 1] and list(have["runs/dataset_seed"]) == [3, 1, 3, 1]
    assert got.attrs["network"] == ref.attrs["network"] == {"activation": "tanh", "loss": "mse"}
    assert got.attrs["source"] == "gfm.record_runs" and got.attrs["dataset_seeds"] == [1, 3]
    assert got.attrs["optimizer"]["lr"] == "per run" and got.attrs["optimizer"]["beta1"] == 0.9
    assert (got.n_runs, got.n_records, got.layout) == (ref.n_runs, ref.n_records, ref.layout)
    assert not (tmp_path / f"s.zarr{WORK_SUFFIX}").exists() and not partial_path(tmp_path / "s.zarr").exists()


def test_runs_are_chunked_as_the_layout_says(tmp_path, monkeypatch):
    """chunk_runs runs per chunk and shard_runs per block, as gfm generate writes (the recorder writes one run
    per chunk), written a part of a block at a time; fewer runs than a block: chunks of the largest divisor of
    the run count up to chunk_runs."""
    monkeypatch.setattr("gfm.recording.runset_write._PART_BYTES", 1)  # parts of one chunk of runs: two per block here
    g = zarr.open_group(record_set(tmp_path / "s.zarr", 6, chunks=StoreLayoutConfig(chunk_runs=2, shard_runs=4,
                                                                                   chunk_steps=4)))
    for r in range(6):  # each run in its place
        np.testing.assert_array_equal(g["weights"][r, 0], torch.cat([p.detach().flatten()
                                                                     for p in make_run(r)[0].parameters()]))
    np.testing.assert_array_equal(g["final/weights"][:], g["weights"][:, -1])
    P = g["weights"].shape[2]
    assert g["weights"].chunks == (2, 4, P) and g["weights"].shards == (4, 8, P)
    assert g["state/exp_avg_sq"].chunks == (2, 4, P) and g["loss"].chunks == (4, STEPS + 1)
    assert g["runs/index"].chunks == (4,) and g.attrs["block_runs"] == 4
    monkeypatch.undo()
    g = zarr.open_group(record_set(tmp_path / "t.zarr", 3, chunks={"chunk_runs": 4, "shard_runs": 8}))
    assert g["weights"].chunks[0] == 3 and g["weights"].shards[0] == 3


def test_a_run_that_differs_is_refused_and_the_others_are_kept(tmp_path):
    """A layout that differs is refused before the run trains; a number of records that differs when its block
    ends, and its directory goes; the set goes on and the store holds the runs that match."""
    path = tmp_path / "s.zarr"
    work = tmp_path / f"s.zarr{WORK_SUFFIX}"
    with gfm.record_runs(path) as runs:
        for r in range(4):
            model, opt, x, y, xv, yv = make_run(r, hidden=5 if r == 1 else 3)
            if r == 1:
                with pytest.raises(RecordError, match="run 1 differs from run 0 in its parameter layout: .*refused "
                                                      "before it was recorded; the runs recorded so far are kept"):
                    runs.record(model, opt, loss="mse")
                continue
            if r == 2:
                with pytest.raises(RecordError, match="run 2 differs from run 0 in its number of records: 4, not 7; "
                                                      ".*so this run is dropped; the runs recorded so far are kept"):
                    with runs.record(model, opt, loss="mse") as rec:
                        train(model, opt, x, y, rec, steps=3)
                assert not (work / "2.zarr").exists() and (work / "0.zarr").is_dir()
                continue
            with runs.record(model, opt, loss="mse") as rec:
                train(model, opt, x, y, rec)
        assert runs.n_runs == 2
    ts = gfm.open_trajectories(path)
    assert ts.n_runs == 2 and ts.n_records == STEPS + 1
    for stored, r in zip(ts.weights[:, 0], (0, 3)):
        model = make_run(r)[0]
        np.testing.assert_array_equal(stored, torch.cat([p.detach().flatten() for p in model.parameters()]))


def test_an_exception_in_the_block_puts_nothing_at_the_path(tmp_path):
    """The store that was there stays as it was; the work directory keeps the finished runs, readable; a new
    record_runs of the path refuses it without overwrite=True and starts over with it."""
    path = tmp_path / "s.zarr"
    record_set(path, 2)
    before = arrays(path)
    for target, overwrite in ((path, True), (tmp_path / "n.zarr", False)):
        with pytest.raises(RuntimeError, match="user's loop"):
            with gfm.record_runs(target, overwrite=overwrite) as runs:
                model, opt, x, y, _, _ = make_run(7)
                with runs.record(model, opt) as rec:
                    train(model, opt, x, y, rec)
                raise RuntimeError("user's loop")
        work = target.with_name(target.name + WORK_SUFFIX)
        assert gfm.open_trajectories(work / "0.zarr").n_runs == 1 and not partial_path(target).exists()
    after = arrays(path)
    assert sorted(after) == sorted(before) and all(np.array_equal(after[k], before[k]) for k in before)
    assert not (tmp_path / "n.zarr").exists()
    with pytest.raises(RecordError, match=r"n.zarr.runs.partial: holds 1 runs of an interrupted record_runs of "
                                          r".*n.zarr; pass overwrite=True to discard them and start over"):
        record_set(tmp_path / "n.zarr", 1)
    assert (tmp_path / f"n.zarr{WORK_SUFFIX}" / "0.zarr").is_dir()
    for target in (path, tmp_path / "n.zarr"):
        record_set(target, 1, overwrite=True)
        assert gfm.open_trajectories(target).n_runs == 1
        assert not target.with_name(target.name + WORK_SUFFIX).exists()


def test_a_second_writer_of_the_path_is_refused(tmp_path):
    """In this process (a nested record_runs or gfm.record) and in another (gfm generate's writer lock)."""
    path = tmp_path / "s.zarr"
    with gfm.record_runs(path) as runs:
        with pytest.raises(StoreLockedError, match="another recorder of this process is writing this store"):
            with gfm.record_runs(path, overwrite=True):
                pass
        model, opt, x, y, _, _ = make_run(0)
        with pytest.raises(StoreLockedError, match="another recorder of this process"):
            gfm.record(path, model, opt, overwrite=True).__enter__()
        with runs.record(model, opt) as rec:
            train(model, opt, x, y, rec)
    assert gfm.open_trajectories(path).n_runs == 1
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom gfm.store.durable import lock_partial\n"
                               "fd = lock_partial(sys.argv[1])\nprint('held', flush=True)\nsys.stdin.readline()\n",
                               str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StoreLockedError, match="another process is writing this store"):
            with gfm.record_runs(path, overwrite=True):
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert gfm.open_trajectories(path).n_runs == 1


def test_a_path_that_is_not_a_store_is_refused_untouched(tmp_path):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="mine: output path holds 1 file that is not a trajectory store"):
            gfm.record_runs(path, overwrite=overwrite)
    assert [p.name for p in path.iterdir()] == ["notes.txt"] and (path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_misuse_is_refused_with_one_line(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(RecordError, match="chunks.shard_runs: got 10; expected a multiple of chunk_runs"):
        gfm.record_runs(path, chunks={"chunk_runs": 4, "shard_runs": 10})
    runs = gfm.record_runs(path)
    model, opt, *_ = make_run(0)
    with pytest.raises(RecordError, match="runs.record\\(\\) outside its `with gfm.record_runs"):
        runs.record(model, opt)
    with pytest.raises(RecordError, match="no run was recorded"):
        with runs:
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    record_set(path, 1)
    with pytest.raises(RecordError, match="exists; pass overwrite=True"):
        gfm.record_runs(path)
