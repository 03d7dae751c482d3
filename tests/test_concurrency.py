"""Concurrency (RELIABILITY.md): a second writer of the same outputs is refused with a clear lock message while
the first one runs, and the first one's outputs come out sound. Three layers: `gfm generate` (a POSIX lock in
the partial store), Snakemake (its working-directory lock) and DVC (its repository lock)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY, run_tool, tool_env
from gfm.artifacts.zarr_files import partial_path
from gfm.tools.check import check_path

TARGET = "data/trajectories/mlp_regression/sgd.zarr"


def _slow(params: dict) -> dict:
    """The tiny study with a mlp_regression store that takes several seconds to generate."""
    params["store"].update(shard_runs=4, chunk_runs=4)
    params["tasks"]["mlp_regression"].update(steps=16000, record_every=8)
    return params


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the first process ended before {what}: {out[-2000:]}\n{err[-2000:]}")
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"


def _sound(store: Path) -> None:
    (verdict,) = check_path(store)
    assert verdict.ok and verdict.kind == "trajectory store", verdict.lines()


def test_a_second_generate_of_the_same_store_is_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_slow(yaml.safe_load(TINY.read_text()))))
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "gfm", "generate", "--params", str(params), "--store", "mlp_regression-sgd",
           "--out", str(out), "--quiet"]
    first = subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(first, lambda: (partial_path(out) / "zarr.json").is_file(), "the store was created")
        second = subprocess.run(cmd, env=tool_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, "the first writer finished too early for the test to mean anything"
        assert second.stderr.strip().splitlines() == [
            f"error: {out}: another process is writing this store (it holds {partial_path(out)}/.writer.lock); "
            "wait for it to finish, or stop it and re-run to resume"]
    finally:
        _finish(first)
    _sound(out)
    assert not partial_path(out).exists() and not (out / ".writer.lock").exists()


@pytest.fixture
def slow_repo(repo_copy) -> Path:
    params = repo_copy / "params.yaml"
    params.write_text(yaml.safe_dump(_slow(yaml.safe_load(params.read_text())), sort_keys=False))
    run_tool(["git", "commit", "-qam", "slow store"], repo_copy)
    return repo_copy


def test_a_second_snakemake_on_the_same_outputs_is_refused(slow_repo):
    cmd = ["snakemake", "--cores", "1", "--allowed-rules", "generate", "--", TARGET]
    first = subprocess.Popen(cmd, cwd=slow_repo, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for(first, lambda: partial_path(slow_repo / TARGET).is_dir(), "the generate job started")
        second = run_tool(cmd, slow_repo, check=False, timeout=300)
        # (had the first run finished before the second looked, the second would succeed with nothing to do)
        assert second.returncode != 0, "the first run finished too early for the test to mean anything"
        assert "Directory cannot be locked" in second.stdout + second.stderr
    finally:
        _finish(first)
    _sound(slow_repo / TARGET)
    assert "Nothing to be done" in run_tool(["snakemake", "-n", "--", TARGET], slow_repo).stdout + \
        run_tool(["snakemake", "-n", "--", TARGET], slow_repo).stderr


def test_a_second_dvc_repro_is_refused(slow_repo):
    stage = "generate@mlp_regression-sgd"
    first = subprocess.Popen(["dvc", "repro", stage], cwd=slow_repo, env=tool_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(first, lambda: partial_path(slow_repo / TARGET).is_dir(), "the generate job started")
        second = run_tool(["dvc", "repro", stage], slow_repo, check=False, timeout=300)
        assert second.returncode != 0, "the first repro finished too early for the test to mean anything"
        said = second.stdout + second.stderr
        # DVC refuses at its repository lock or, if it gets past that, at the output's read/write lock
        assert "Unable to acquire lock" in said or ("is busy, it is being blocked by" in said and TARGET in said), said
    finally:
        _finish(first)
    _sound(slow_repo / TARGET)
    assert "up to date" in run_tool(["dvc", "status", stage], slow_repo).stdout


def test_a_second_generate_in_the_finish_window_cannot_touch_the_finished_store(tmp_path, monkeypatch):
    """The last window of a writer: the store is flagged complete, then renamed into place. A second
    `gfm generate` of the same store started while the flagged store is still at its partial path is refused
    (the lock is held through the rename; it used to be released first, and the second writer reused the
    flagged store, removed the first one's and renamed a store holding only zarr.json). One started right
    after the rename, while the first still holds its lock, starts a new store and replaces the first
    (identical) one. Both end with a store that checks clean, byte-identical to an undisturbed run."""
    from gfm.config import load_params
    from gfm.stages import generate
    from gfm.store import writer as store
    from test_hostile_outputs import KEY, _params_file
    from test_reliability import _files

    params_file = _params_file(tmp_path / "params.yaml")
    params = load_params(params_file)
    ref = tmp_path / "ref.zarr"
    generate.run(params, KEY, out=ref, progress=False)
    out = tmp_path / "s.zarr"
    seen: dict[str, subprocess.CompletedProcess] = {}

    def second_writer(stage: str, writer) -> None:
        seen[stage] = subprocess.run(
            [sys.executable, "-m", "gfm", "generate", "--params", str(params_file), "--store", KEY, "--out",
             str(out), "--quiet"], env=tool_env(), capture_output=True, text=True, timeout=300)

    monkeypatch.setattr(store, "_finish_hook", second_writer)
    generate.run(params, KEY, out=out, progress=False)
    flagged, renamed = seen["flagged"], seen["renamed"]
    assert flagged.returncode == 2 and flagged.stderr.strip().splitlines() == [
        f"error: {out}: another process is writing this store (it holds {partial_path(out)}/.writer.lock); "
        "wait for it to finish, or stop it and re-run to resume"], flagged.stderr
    assert renamed.returncode == 0, renamed.stderr
    assert json.loads(renamed.stdout)["blocks_reused"] == 0  # a new store, not the first one's
    _sound(out)
    assert _files(out) == _files(ref)
    assert not partial_path(out).exists() and not (out / ".writer.lock").exists()
