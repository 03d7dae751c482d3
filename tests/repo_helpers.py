"""Helpers for the tests that drive the real tools on a throwaway copy of the repository
(test_dvc_sharing, test_dag_agreement, test_cluster)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from conftest import REPO_ITEMS, ROOT, TINY, run_tool

__all__ = ["make_repo", "shrink", "tree"]


def _cut(params: dict, stores: int | None, models: int | None) -> dict:
    out = dict(params)
    if stores is not None:
        out["stores"] = dict(list(params["stores"].items())[:stores])
    if models is not None and isinstance(params.get("train"), dict) and isinstance(params["train"].get("models"), list):
        out["train"] = {**params["train"], "models": params["train"]["models"][:models]}
    return out


def shrink(params: dict, *, stores: int = 2, models: int = 1) -> dict:
    """The tiny study cut further, with the same DAG shape: the first ``stores`` stores and the first
    ``models`` trained models. Every stage and every foreach item kind stays; each job pays a process start-up
    (BENCHMARKS.md, "Test suite"), so the number of jobs is what sets these tests' time.
    Params that refer across sections (a stage naming a store or a model) may not allow a cut: the first
    cut that still validates is used, down to no cut at all."""
    from gfm.base.errors import ParamsError
    from gfm.config import parse_params

    for cut in ((stores, models), (None, models), (stores, None), (None, None)):
        doc = _cut(params, *cut)
        try:
            parse_params(doc, source="shrunk")
        except ParamsError:
            continue
        return doc
    return params


def make_repo(dest: Path, *, params: Path = TINY, small: bool = True, dvc_config: bool = True) -> Path:
    """A git + DVC repository holding the pipeline files, ``params`` as params.yaml (shrunk unless
    ``small`` is False) and, with ``dvc_config``, the project's .dvc/config (its default remote)."""
    dest.mkdir(parents=True)
    for item in REPO_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / item)
    doc = yaml.safe_load(Path(params).read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(shrink(doc) if small else doc, sort_keys=False))
    (dest / "data").mkdir()
    shutil.copy2(ROOT / "data" / ".gitignore", dest / "data" / ".gitignore")
    run_tool(["git", "init", "-q"], dest)
    run_tool(["dvc", "init", "-q"], dest)
    if dvc_config:
        shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    run_tool(["git", "add", "-A"], dest)
    run_tool(["git", "commit", "-qm", "init"], dest)
    return dest


def tree(root: Path, outs: list[str]) -> dict[str, bytes]:
    """Every file under ``outs`` (DVC's ignore list applied: no .snakemake_timestamp) -> its bytes."""
    files = {}
    for out in outs:
        p = root / out
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            if f.name != ".snakemake_timestamp":
                files[str(f.relative_to(root))] = f.read_bytes()
    return files
