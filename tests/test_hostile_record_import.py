"""Hostile cases of gfm.record and gfm import (RELIABILITY.md, "Recording and importing: nothing lost, nothing
broken"): a killed append loses nothing, two recorders of one store exclude each other, and an import writes
only what `gfm check` accepts, streaming its input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gfm
from conftest import tool_env
from gfm.artifacts.zarr_files import partial_path
from gfm.base.errors import StoreLockedError
from gfm.cli import main
from gfm.recording import append as record_append
from gfm.recording.capture import RecordError
from kill_helpers import sigkill_at_zarr_write


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- gfm.record: appends are atomic, recorders exclude each other ---------------------------------------------
def record_run(path: Path, seed: int, mode: str, pause=None) -> None:
    """One run of a user loop into ``path`` (12 Adam steps, 13 records in chunks of 4), deterministic in
    ``seed``; ``pause`` is called once, halfway. The lock test runs it in a subprocess too."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(seed))
    y = x.sum(1, keepdim=True)
    with gfm.record(path, model, opt, mode=mode, dataset_seed=0, chunk_steps=4) as rec:
        for k in range(12):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss)
            if pause is not None and k == 5:
                pause()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A store of two recorded runs, and the same store grown by a third (seed 2) without interruption."""
    root = tmp_path_factory.mktemp("recorded")
    base = root / "base.zarr"
    record_run(base, 0, "w")
    record_run(base, 1, "a")
    grown = root / "grown.zarr"
    shutil.copytree(base, grown)
    record_run(grown, 2, "a")
    return base, grown


def _appended_and_killed(store: Path, *, at_write: int | None = None, at_stage: str | None = None) -> int:
    """Append seed 2 to ``store`` in a forked child that is SIGKILLed inside its ``at_write``-th file write
    through zarr (after writing half of zarr's temporary file) or at the append stage ``at_stage``. No cleanup
    of any kind runs. Returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            torch.set_num_threads(1)
            def hook(stage):
                if stage == at_stage:
                    os.kill(os.getpid(), signal.SIGKILL)

            sigkill_at_zarr_write(at_write)
            record_append._append_hook = hook
            record_run(store, 2, "a")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def test_killed_append_leaves_the_store_byte_identical_and_a_retry_succeeds(two_runs, tmp_path, monkeypatch):
    """SIGKILL at 10 points spread over an append (the recording of the new run, the building of the grown
    store) and right before the swap: each time the store is byte-identical to before the append, `gfm check`
    finds it clean, both earlier runs read back, and a retry of the append gives the store an uninterrupted
    append gives, with nothing left beside it."""
    from zarr.storage import _local

    base, grown = two_runs
    before, expected = _files(base), _files(grown)
    # fsync guards against a machine crash, not a killed process (the page cache survives it): skipped here
    monkeypatch.setattr(record_append, "fsync_tree", lambda root: None)
    real, writes = _local._put, [0]

    def counting(path, value, exclusive=False):
        writes[0] += 1
        return real(path, value, exclusive)

    probe = tmp_path / "probe" / "s.zarr"
    shutil.copytree(base, probe)
    monkeypatch.setattr(_local, "_put", counting)
    record_run(probe, 2, "a")
    monkeypatch.setattr(_local, "_put", real)
    total = writes[0]
    assert total > 40 and _files(probe) == expected  # the reference append is reproducible
    points = [*sorted(set(np.linspace(1, total, 10).round().astype(int).tolist())), None]
    for n in points:
        where = tmp_path / f"k{n}"
        store = where / "s.zarr"
        shutil.copytree(base, store)
        status = _appended_and_killed(store, at_write=n, at_stage="staged" if n is None else None)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (n, status)
        assert partial_path(store).is_dir(), f"write {n}: killed before the append began, so it means nothing"
        assert _files(store) == before, f"killed in write {n} of {total}: the store changed"
        assert main(["check", str(store)]) == 0
        ts = gfm.open_trajectories(store)
        assert ts.n_runs == 2 and np.isfinite(ts.weights[:]).all()
        record_run(store, 2, "a")  # the retry
        assert _files(store) == expected, f"killed in write {n} of {total}: the retried append differs"
        assert sorted(p.name for p in where.iterdir()) == ["s.zarr"]


def test_append_killed_after_the_swap_holds_the_grown_store(two_runs, tmp_path):
    """The one moment after which the append has happened: the store is the grown one, and the next append
    clears what the killed one left beside it."""
    base, grown = two_runs
    store = tmp_path / "s.zarr"
    shutil.copytree(base, store)
    status = _appended_and_killed(store, at_stage="swapped")
    assert os.WIFSIGNALED(status)
    assert _files(store) == _files(grown) and main(["check", str(store)]) == 0
    assert (tmp_path / "s.zarr.append.partial").is_dir()  # the old store, not yet removed
    record_run(store, 3, "a")
    assert gfm.open_trajectories(store).n_runs == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_append_without_a_one_step_swap_restores_the_store_after_a_kill(two_runs, tmp_path, monkeypatch):
    """Where directories cannot be swapped in one step (NFS): killed between its two renames, the append left
    the old store at ``<path>.previous.partial``; the next recorder of the path puts it back, then appends."""
    base, grown = two_runs
    monkeypatch.setattr(record_append, "exchange_paths", lambda a, b: False)
    store = tmp_path / "s.zarr"
    shutil.copytree(base, store)
    real, calls = os.rename, [0]

    def second_rename_dies(a, b):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt("killed between the two renames")
        real(a, b)

    monkeypatch.setattr(os, "rename", second_rename_dies)
    with pytest.raises(KeyboardInterrupt):
        record_run(store, 2, "a")
    monkeypatch.setattr(os, "rename", real)
    previous = tmp_path / "s.zarr.previous.partial"
    assert not store.exists() and _files(previous) == _files(base)
    record_run(store, 2, "a")
    assert _files(store) == _files(grown)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


SECOND = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_hostile_record_import import record_run

def pause():
    print("recording", flush=True)
    sys.stdin.readline()

record_run(sys.argv[1], 2, "a", pause)
"""


def test_a_second_recorder_of_the_same_store_is_refused(two_runs, tmp_path):
    """A recorder in another process is appending: a second one (append or overwrite) is refused with one
    line naming the store and the lock, and leaves the first one's `.partial` alone; the first one then
    finishes a store whose every record is finite."""
    base, grown = two_runs
    store = tmp_path / "s.zarr"
    shutil.copytree(base, store)
    first = subprocess.Popen([sys.executable, "-c", SECOND, str(store)], env=tool_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "recording\n", first.stderr.read()
        held = _files(partial_path(store))
        lock = partial_path(store) / ".writer.lock"
        for mode, kw in (("a", {}), ("w", {"overwrite": True})):
            model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
            with pytest.raises(StoreLockedError) as err:
                with gfm.record(store, model, torch.optim.Adam(model.parameters()), mode=mode, **kw):
                    raise AssertionError("a second recorder started")
            assert str(err.value) == (f"{store}: another process is writing this store (it holds {lock}); wait for "
                                      "it to finish, or stop it and re-run to resume")
        assert _files(partial_path(store)) == held
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    assert _files(store) == _files(grown) and main(["check", str(store)]) == 0


def test_two_recorders_of_one_store_in_one_process(two_runs, tmp_path):
    """A POSIX lock does not exclude its own process: the recorder keeps its own list, so a nested recorder of
    the same store is refused too, and the lock is free again once the outer block ends (even by an error)."""
    base, grown = two_runs
    store = tmp_path / "s.zarr"
    shutil.copytree(base, store)

    def nested():
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        with pytest.raises(StoreLockedError, match="another recorder of this process is writing this store"):
            with gfm.record(store, model, torch.optim.Adam(model.parameters()), mode="a"):
                pass

    def pause():
        nested()
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        record_run(store, 2, "a", pause=pause)
    assert _files(store) == _files(base)
    record_run(store, 2, "a")  # the error released the lock; the retry replaces the leftover .partial
    assert _files(store) == _files(grown)


@pytest.mark.parametrize("every", [np.int64(2), np.int32(2), np.uint8(2)])
def test_numpy_integers_are_integers(tmp_path, every):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfm.record(tmp_path / "n.zarr", model, opt, every=every, chunk_steps=np.int64(4),
                    dataset_seed=np.int64(3)) as rec:
        for _ in range(4):
            opt.step()
            rec.step(0.0)
    ts = gfm.open_trajectories(tmp_path / "n.zarr")
    assert ts.attrs["task"]["record_every"] == 2 and ts.n_records == 3 and list(ts.runs["dataset_seed"]) == [3]


@pytest.mark.parametrize("key,value", [("every", True), ("every", 2.0), ("every", np.float64(1)), ("every", 0),
                                       ("every", np.bool_(True)), ("chunk_steps", "4"), ("dataset_seed", -1),
                                       ("dataset_seed", 2**64), ("dataset_seed", 1.5)])
def test_bools_floats_and_out_of_range_integers_are_refused(tmp_path, key, value):
    model = nn.Linear(2, 1)
    with pytest.raises(RecordError, match=rf"^{key}=.*; expected an integer from [01] to 2\*\*63 - 1") as err:
        gfm.record(tmp_path / "n.zarr", model, torch.optim.SGD(model.parameters(), lr=0.1), **{key: value})
    assert "\n" not in str(err.value) and not (tmp_path / "n.zarr").exists()


# --- gfm import: nothing gfm check would refuse, one line per bad value, a block in memory --------------------
def _import_cli(capsys, tmp_path: Path, meta_text: str, *, suffix: str = ".yaml", src: Path | None = None):
    if src is None:
        src = tmp_path / "w.npy"
        np.save(src, np.zeros((2, 5, 13), dtype=np.float32))
    meta = tmp_path / f"meta{suffix}"
    meta.write_text(meta_text)
    code = main(["import", str(src), str(tmp_path / "out.zarr"), "--meta", str(meta)])
    err = capsys.readouterr().err
    return code, err


def _nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.zarr.partial").exists()


@pytest.mark.parametrize("meta,needle", [
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a", "shape": [-1, -13]}]}',
     "layout[0].shape: got [-1, -13]; expected a list of integers >= 1"),
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a b", "shape": [13]}]}',
     "layout[0].name: got 'a b'; expected letters, digits"),
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a/b", "shape": [13]}]}',
     "layout[0].name: got 'a/b'; expected letters, digits"),
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a", "shape": [13]}, {"name": "z", "shape": [0]}]}',
     "layout[1].shape: got [0]; expected a list of integers >= 1"),
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 4.0}', "steps: got 4.0; the arrays hold 5 records"),
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a", "shape": [6]}, {"name": "a", "shape": [7]}]}',
     "layout[1].name: 'a' is also the name of layout[0]; tensor names must be unique"),
    ('{"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a", "shape": [13], "offset": 5}]}',
     "layout[0]: got {'name': 'a', 'offset': 5, 'shape': [13]}; expected a mapping of exactly name and shape"),
])
def test_import_refuses_before_writing_what_gfm_check_would_refuse(tmp_path, capsys, meta, needle):
    code, err = _import_cli(capsys, tmp_path, meta, suffix=".json")
    assert code == 2 and needle in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("meta,needle", [
    ("optimizer: {name: sgd, lr: '0.1'}", "optimizer.lr: got '0.1'; expected a finite number >= 0, or a list of 2"),
    ("optimizer: {name: sgd, lr: [a, b]}", "optimizer.lr: got ['a', 'b']; expected a finite number"),
    ("optimizer: {name: sgd, lr: {x: 1}}", "optimizer.lr: got {'x': 1}; expected a finite number"),
    ("optimizer: {name: sgd, lr: [[0.1], [0.2, 0.3]]}", "optimizer.lr: got [[0.1], [0.2, 0.3]]; expected"),
    ("optimizer: {name: sgd, lr: [0.1, true]}", "optimizer.lr: got [0.1, True]; expected"),
    ("optimizer: {name: sgd, lr: 1e400}", "optimizer.lr: got inf; expected a finite number"),
    ("optimizer: {name: sgd, lr: 0.1}\ndataset_seed: 18446744073709551616",
     "dataset_seed: got 18446744073709551616; expected an integer >= 0 or a list of 2 (one per run), each at "
     "most 2**63 - 1"),
    ("optimizer: {name: sgd, lr: 0.1}\ndataset_seed: [0, 18446744073709551616]", "dataset_seed: got [0, "),
    ("optimizer: {name: sgd, lr: 0.1}\nlayout: [{name: a, shape: [1e400]}]", "layout[0].shape: got [inf]; expected"),
    ("optimizer: {name: sgd, lr: 0.1}\nlayout: [{name: a, shape: [100000000000000000000000000000, 0]}]",
     "layout[0].shape: got [100000000000000000000000000000, 0]; expected a list of integers >= 1"),
    ("optimizer: {name: sgd, lr: 0.1}\nrecord_every: 1180591620717411303424",
     "record_every: got 1180591620717411303424; expected an integer from 1 to 2305843009213693951"),
    ("optimizer: {name: sgd, lr: 0.1}\nname: [x]", "name: got ['x']; use letters, digits and '_'"),
    ("optimizer: {name: [sgd], lr: 0.1}", "optimizer.name: got ['sgd']; expected one of adam, adamw"),
    ("optimizer: {name: sgd, lr: 0.1, 1: 2, x: 3}", "optimizer.1: not used by 'sgd'; it reads eps, lr"),
    ("optimizer: {name: sgd, lr: 0.1}\n1: 2\nx: 3", "unknown keys [1, 'x']; expected some of"),
])
def test_import_metadata_values_are_one_line_naming_the_key(tmp_path, capsys, meta, needle):
    code, err = _import_cli(capsys, tmp_path, meta)
    assert code == 2 and needle in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert _nothing_written(tmp_path)


def test_gfm_check_refuses_a_store_whose_tensor_names_repeat(tmp_path, capsys):
    """The rule import applies to its metadata is gfm check's own: a store whose layout names one tensor twice
    (load_into would put both under one name) is refused by check as well."""
    import json

    from gfm.recording.importer import import_trajectories

    np.save(tmp_path / "w.npy", np.zeros((2, 5, 13), dtype=np.float32))
    import_trajectories(tmp_path / "w.npy", tmp_path / "s.zarr", meta={
        "optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "a", "shape": [6]}, {"name": "b", "shape": [7]}]})
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    meta["attributes"]["layout"][1]["name"] = "a"
    (tmp_path / "s.zarr" / "zarr.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "s.zarr")]) == 1
    assert "layout[1] is named 'a' like layout[0]; tensor names must be unique" in capsys.readouterr().out


def test_a_written_store_that_fails_gfm_check_is_not_put_in_place(tmp_path, monkeypatch):
    """The last gate: the written store goes through gfm check's own rules before it is flagged complete and
    renamed; a store they refuse is removed, and nothing is at the destination."""
    from gfm.recording.import_meta import TrajectoryImportError
    from gfm.recording.importer import import_trajectories
    from gfm.store import scan as store_scan

    np.save(tmp_path / "w.npy", np.zeros((2, 5, 13), dtype=np.float32))
    checked = []
    real = store_scan.check_trajectory_store

    def refusing(path, v):
        real(path, v)
        checked.append((Path(path), list(v.problems)))
        v.problems.append("weights: injected problem")

    monkeypatch.setattr(store_scan, "check_trajectory_store", refusing)
    with pytest.raises(TrajectoryImportError, match=r"out.zarr: the written store fails gfm check \(weights: "
                                                    r"injected problem\); nothing was put in place"):
        import_trajectories(tmp_path / "w.npy", tmp_path / "out.zarr", meta={"optimizer": {"name": "sgd", "lr": 0.1}})
    assert checked == [(tmp_path / "out.zarr.partial", [])]  # checked clean, before the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npy"]


def test_import_of_a_damaged_archive_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """A header that claims more data than the archive holds is refused before writing; a member whose data
    was altered (its CRC fails only once it has been read to the end) fails mid-write, and the half-written
    store is removed."""
    w = np.zeros((4, 5, 13), dtype=np.float32)
    meta = "optimizer: {name: sgd, lr: 0.1}"
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as zf, zf.open("weights.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (9, 5, 13)})
        f.write(w.tobytes())  # 4 runs of the 9 its header claims
    code, err = _import_cli(capsys, tmp_path, meta, src=tmp_path / "short.npz")
    assert code == 2 and "weights: the archive holds 1168 bytes for it; its header (shape (9, 5, 13), float32) " \
                          "needs 2468" in err and err.count("\n") == 1
    assert _nothing_written(tmp_path)

    np.savez(tmp_path / "flipped.npz", weights=np.zeros((4, 50, 1300), dtype=np.float32))
    raw = bytearray((tmp_path / "flipped.npz").read_bytes())
    raw[len(raw) // 2] = 1  # inside the weights' data, far past the header
    (tmp_path / "flipped.npz").write_bytes(bytes(raw))
    code, err = _import_cli(capsys, tmp_path, meta, src=tmp_path / "flipped.npz")
    # "BadZipFile:" is how the failure reads when it comes while the blocks are written (not at the headers)
    assert code == 2 and "not a readable NumPy file (BadZipFile: Bad CRC-32" in err and err.count("\n") == 1
    assert _nothing_written(tmp_path)

    np.savez_compressed(tmp_path / "deflated.npz", weights=np.random.default_rng(0).normal(size=(4, 50, 1300)))
    raw = bytearray((tmp_path / "deflated.npz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # a damaged deflate stream
    (tmp_path / "deflated.npz").write_bytes(bytes(raw))
    code, err = _import_cli(capsys, tmp_path, meta, src=tmp_path / "deflated.npz")
    assert code == 2 and "not a readable NumPy file (" in err and err.count("\n") == 1 and "Traceback" not in err
    assert _nothing_written(tmp_path)


def _zeros_npz(path: Path, shape: tuple[int, int, int]) -> None:
    """A deflated .npz of zero weights, written row by row (never whole in memory): tiny on disk, large inflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open("weights.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        row = np.zeros(shape[1:], dtype=np.float32).tobytes()
        for _ in range(shape[0]):
            f.write(row)


def test_import_streams_its_input_a_part_of_a_block_at_a_time(tmp_path, monkeypatch):
    """A 0.2 MB .npz that inflates to 157 MB of weights (one shard of 192 runs) is imported holding one part of
    8 runs (6.5 MB) at a time, `gfm check`'s pass over the written store included: the traced peak stays under
    a third of the weights, which loading any array whole would exceed."""
    import tracemalloc

    from gfm.artifacts import verdict
    from gfm.config import StoreLayoutConfig
    from gfm.recording import import_source, importer
    from gfm.store import check as store_check

    shape = (192, 25, 8192)
    _zeros_npz(tmp_path / "big.npz", shape)
    assert (tmp_path / "big.npz").stat().st_size < 400_000
    whole = np.prod(shape) * 4
    monkeypatch.setattr(import_source, "PART_BYTES", 8 << 20)
    monkeypatch.setattr(verdict, "READ_BYTES", 8 << 20)
    # gfm.artifacts.inputs.read_bytes reads a zarr.json with f.read(limit + 1), a buffer of the limit (64 MB) that is
    # never filled: tracemalloc counts it, the resident memory does not. A 1 MB limit keeps it out of the peak.
    monkeypatch.setattr(store_check, "MAX_JSON_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        summary = importer.import_trajectories(tmp_path / "big.npz", tmp_path / "big.zarr",
                                               meta={"optimizer": {"name": "sgd", "lr": 0.1}},
                                               chunks=StoreLayoutConfig(chunk_runs=8, chunk_steps=25))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["runs"] == 192 and main(["check", str(tmp_path / "big.zarr")]) == 0
    assert peak < whole / 3, f"peak {peak / 1e6:.0f} MB for {whole / 1e6:.0f} MB of weights"


def test_an_import_written_in_parts_is_byte_identical_to_one_written_whole(tmp_path, monkeypatch):
    from gfm.config import StoreLayoutConfig
    from gfm.recording import import_source, importer

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", weights=rng.normal(size=(24, 9, 13)).astype(np.float32),
             loss=rng.uniform(size=(24, 9)).astype(np.float32), state_momentum_buffer=rng.normal(size=(24, 9, 13)))
    meta = {"optimizer": {"name": "momentum", "lr": 0.1, "momentum": 0.9}}
    chunks = StoreLayoutConfig(chunk_runs=4, shard_runs=12, chunk_steps=4)
    importer.import_trajectories(tmp_path / "r.npz", tmp_path / "whole.zarr", meta=meta, chunks=chunks)
    monkeypatch.setattr(import_source, "PART_BYTES", 1)  # one inner chunk of 4 runs at a time
    importer.import_trajectories(tmp_path / "r.npz", tmp_path / "parts.zarr", meta=meta, chunks=chunks)
    assert _files(tmp_path / "parts.zarr") == _files(tmp_path / "whole.zarr")
