"""Shared fixtures: the tiny params, a generated tiny store, and a throwaway copy of the repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from gfm.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "params.tiny.yaml"
BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"

# Files a pipeline run needs from the repository (everything tracked, minus data and caches).
REPO_ITEMS = ["Snakefile", "dvc.yaml", "params.yaml", "pyproject.toml", "workflow", "profiles", "src", ".dvcignore", ".gitignore"]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return load_params(TINY)


@pytest.fixture(scope="session")
def tiny_store(tiny_params, tmp_path_factory) -> Path:
    """mlp_regression-adam of the tiny params, generated once per session."""
    from gfm.stages import generate

    out = tmp_path_factory.mktemp("stores") / "mlp_regression" / "adam.zarr"
    generate.run(tiny_params, "mlp_regression-adam", out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module's fits (what Snakemake's `threads: 1` gives a job); restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``. ``GFM_TEST_THREADS`` overrides the count
    (tests/margins.py)."""
    from margins import THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_split(tiny_params, tiny_store, tmp_path_factory) -> Path:
    """The split file of :func:`tiny_store`, written once per session."""
    from gfm.stages.split import run as run_split

    out = tmp_path_factory.mktemp("split") / "adam.json"
    run_split(tiny_params.split, store=tiny_store, out=out)
    return out


def tool_env() -> dict[str, str]:
    """Environment for running the venv's tools (snakemake, dvc, gfm) in subprocesses."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "gfm-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "gfm-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return env


def run_tool(args: list[str], cwd: Path, *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A fresh git + DVC repository holding this project's pipeline files and the tiny params as params.yaml."""
    from repo_helpers import make_repo

    return make_repo(tmp_path / "repo", small=False, dvc_config=False)


# `make test-fast` (pytest -m fast): the day-to-day subset (its time: BENCHMARKS.md, "Test suite"). Every test
# is in it except those that use a fixture that drives the real tools on a copy of the repository or trains a
# study end to end, the modules whose every test does, and the test functions listed in tests/not_fast.txt
# (measured at 3 s or more); `make test` runs them all.
HEAVY_FIXTURES = {"repo_copy", "dry_repo", "ran_repo", "producer", "quick", "slow_repo", "repo", "workspace",
                  "page", "built", "finished", "written", "pipeline", "staged", "slurm", "first", "retry",
                  "fitted", "cifar_dir", "lstm_model", "lstm_dir", "tiny_sgd_gd", "closed_params",
                  "slow_params_file"}
HEAVY_MODULES = {"test_dag_agreement", "test_dvc_sharing", "test_pipeline", "test_experiments", "test_cluster",
                 "test_concurrency", "test_profiles", "test_handover"}
NOT_FAST = {line.strip() for line in (ROOT / "tests" / "not_fast.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        function = item.nodeid.split("[", 1)[0]
        if (module not in HEAVY_MODULES and function not in NOT_FAST
                and not HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.fast)
