"""Hostile cases of trajectory stores' chunk files (RELIABILITY.md, "Trajectory stores: every chunk accounted
for"): a per-run or final array's chunk equal to its fill value (runs none of which diverged, a weight decay of
0) is written and counted in the attribute ``chunks``, so a deleted chunk file is refused by ``gfm check`` and
by every stage instead of reading as zeros; stores written before the record are read as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import gfm
from gfm.artifacts.zarr_files import chunk_counts, partial_path
from gfm.base.errors import StoreSchemaError
from gfm.cli import main
from gfm.config import StoreLayoutConfig
from gfm.recording.importer import import_trajectories
from gfm.stages import generate
from gfm.store import writer as store
from gfm.store.reader import open_trajectories
from kill_helpers import interrupt_generate_at_block


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _record(path: Path, seed: int, mode: str) -> None:
    """One recorded run of a user loop (6 Adam steps, no weight decay, not diverged)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(seed))
    with gfm.record(path, model, opt, mode=mode, dataset_seed=0, chunk_steps=4) as rec:
        for _ in range(6):
            loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss)


@pytest.fixture(scope="module")
def stores(tiny_store, tmp_path_factory) -> dict[str, Path]:
    """A generated store (24 runs in 3 blocks), a recorded one grown by an append (2 runs, one chunk each) and an
    imported one without a loss (6 runs in 3 blocks: its loss and final/loss are NaN throughout)."""
    root = tmp_path_factory.mktemp("chunks")
    recorded = root / "recorded.zarr"
    _record(recorded, 0, "w")
    _record(recorded, 1, "a")
    np.save(root / "w.npy", np.random.default_rng(0).normal(size=(6, 5, 7)).astype(np.float32))
    imported = root / "imported.zarr"
    import_trajectories(root / "w.npy", imported, meta={"optimizer": {"name": "sgd", "lr": 0.1}},
                        chunks=StoreLayoutConfig(chunk_runs=2, shard_runs=2))
    return {"generated": tiny_store, "recorded": recorded, "imported": imported}


def _per_run_and_final(path: Path) -> list[str]:
    return sorted(name for name in chunk_counts(path) if name.startswith(("runs/", "final/")))


def _check(path: Path, capsys) -> tuple[int, str]:
    code = main(["check", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("kind", ["generated", "recorded", "imported"])
def test_every_chunk_is_written_and_the_record_matches_the_files(stores, kind, capsys):
    path = stores[kind]
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["chunks"] == chunk_counts(path)
    g = zarr.open_group(path, mode="r")
    for name in _per_run_and_final(path):  # every chunk of its grid has a file, zeros and NaN ones included
        assert attrs["chunks"][name] == g[name].nchunks, name
    assert not np.asarray(g["runs/diverged"][:]).any() and not np.asarray(g["runs/weight_decay"][:]).any()
    code, out = _check(path, capsys)
    assert code == 0 and "written before" not in out, out


@pytest.mark.parametrize("kind", ["generated", "recorded", "imported"])
def test_a_deleted_chunk_of_any_per_run_or_final_array_is_refused_naming_it(stores, kind, tmp_path, capsys):
    path = tmp_path / "s.zarr"
    shutil.copytree(stores[kind], path)
    names = _per_run_and_final(path)
    assert {"runs/diverged", "runs/index", "runs/weight_decay", "final/weights", "final/loss"} <= set(names)
    for name in names:
        chunk = sorted(p for p in (path / name / "c").rglob("*") if p.is_file())[-1]  # the last runs': zeros too
        key = chunk.relative_to(path / name).as_posix()
        moved = tmp_path / "aside"
        chunk.rename(moved)
        try:
            code, out = _check(path, capsys)
            assert code == 1 and f"array {name}: chunk {key} missing" in out, (name, out)
            with pytest.raises(StoreSchemaError, match=f"array {name}: chunk {key} missing"):
                open_trajectories(path)
        finally:
            moved.rename(chunk)
    assert _check(path, capsys)[0] == 0  # every chunk back: the store is whole again


def test_a_stage_refuses_the_store_in_one_line_and_writes_nothing(tiny_store, tmp_path, capsys):
    from conftest import TINY

    path = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, path)
    (path / "runs" / "diverged" / "c" / "1").unlink()  # runs 8..15, none diverged: zeros
    out = tmp_path / "split.json"
    code = main(["split", "--params", str(TINY), "--in", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "array runs/diverged: chunk c/1 missing" in err


@pytest.mark.parametrize("edit,needle", [
    (lambda r: {**r, "runs/index": r["runs/index"] + 1}, "array runs/index: 3 chunk files, attribute chunks records 4"),
    (lambda r: {**r, "runs/index": r["runs/index"] - 1}, "array runs/index: 3 chunk files, attribute chunks records 2"),
    (lambda r: {k: v for k, v in r.items() if k != "final/loss"}, "array final/loss is not in the completeness record"),
    (lambda r: {**r, "runs/planted": 1}, "attribute chunks records arrays the store does not hold: runs/planted"),
    (lambda r: [1, 2], "attribute chunks [1, 2]: expected the chunk files of each array by name"),
], ids=["more-recorded", "fewer-recorded", "array-unrecorded", "unknown-array", "not-a-mapping"])
def test_a_record_that_disagrees_with_the_files_is_refused(tiny_store, tmp_path, capsys, edit, needle):
    path = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["chunks"] = edit(meta["attributes"]["chunks"])
    (path / "zarr.json").write_text(json.dumps(meta))
    code, out = _check(path, capsys)
    assert code == 1 and needle in out, out
    with pytest.raises(StoreSchemaError, match="chunk"):
        open_trajectories(path)


@pytest.mark.parametrize("kind", ["generated", "recorded", "imported"])
def test_a_store_written_before_the_record_is_read_as_before(stores, kind, tmp_path, capsys):
    """What an older gfm wrote: no attribute chunks and no file for a chunk equal to the fill value."""
    path = tmp_path / "old.zarr"
    shutil.copytree(stores[kind], path)
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["chunks"]
    (path / "zarr.json").write_text(json.dumps(meta))
    g = zarr.open_group(path, mode="r")
    for name in ("runs/diverged", "runs/weight_decay"):  # all False / 0: an older gfm wrote no chunk for them
        assert not np.asarray(g[name][:]).any()
        shutil.rmtree(path / name / "c")
    ts = open_trajectories(path)
    assert not ts.runs["diverged"].any() and ts.n_runs == g["weights"].shape[0]
    code, out = _check(path, capsys)
    assert code == 0 and ": ok (" in out and "written before stores recorded their chunk files" in out, out


def test_a_generate_killed_and_resumed_writes_a_matching_record(tiny_params, tmp_path, monkeypatch, capsys):
    """Killed after its first block, then killed again once the record and the flag were written (before the
    rename): the resumed writer reuses every finished block and its store's record matches its files."""
    out = tmp_path / "out.zarr"
    real = generate.simulate
    interrupt_generate_at_block(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        generate.run(tiny_params, "mlp_regression-sgd", out=out, progress=False)
    monkeypatch.setattr(generate, "simulate", real)

    def killed_at_rename(stage, writer):
        if stage == "flagged":
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(store, "_finish_hook", killed_at_rename)
    with pytest.raises(KeyboardInterrupt):
        generate.run(tiny_params, "mlp_regression-sgd", out=out, progress=False)
    assert not out.exists() and "chunks" in json.loads((partial_path(out) / "zarr.json").read_text())["attributes"]
    monkeypatch.undo()
    summary = generate.run(tiny_params, "mlp_regression-sgd", out=out, progress=False)
    assert (summary.blocks_reused, summary.blocks_run) == (3, 0)  # the flagged store was resumed, not rebuilt
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert attrs["chunks"] == chunk_counts(out) and attrs["chunks"]["runs/diverged"] == 3
    code, text = _check(out, capsys)
    assert code == 0, text
