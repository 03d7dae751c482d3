"""Presets run in a workspace (gfm.tools.workspace): `make run PRESET=quick` = params.quick.yaml in build/quick/."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import ROOT, run_tool
from gfm.base.errors import ParamsError
from gfm.cli import main
from gfm.config import load_params
from gfm.tools.workspace import (
    MARKER,
    PIPELINE_FILES,
    WorkspaceError,
    sync_workspace,
    workspace_params_source,
)

QUICK = ROOT / "params.quick.yaml"


def test_quick_preset_is_the_same_study_shape():
    """Every kind of stage, store and model that params.yaml has, the quick preset has too (smaller)."""
    full, quick = load_params(ROOT / "params.yaml"), load_params(QUICK)
    kinds = lambda p: {p.tasks[s.task].kind for s in p.stores.values()}  # noqa: E731
    assert kinds(quick) == kinds(full)
    optimizers = lambda p: {s.optimizer.name for s in p.stores.values()}  # noqa: E731
    assert optimizers(quick) <= optimizers(full) and {"sgd", "adam"} <= optimizers(quick)
    assert set(quick.train.models) == set(full.train.models)
    assert quick.generalize.pairs and quick.accelerate.stores
    runs = lambda p: sum(p.tasks[s.task].runs_per_dataset * len(p.generate.dataset_seeds) for s in p.stores.values())  # noqa: E731
    assert runs(quick) * 10 < runs(full)


def test_sync_creates_a_git_and_dvc_project_with_the_preset_as_params(tmp_path):
    dest = sync_workspace(tmp_path / "quick", QUICK, repo=ROOT)
    assert (dest / "params.yaml").read_bytes() == QUICK.read_bytes()
    for name in PIPELINE_FILES:
        assert (dest / name).exists(), name
    assert (dest / "dvc.yaml").read_bytes() == (ROOT / "dvc.yaml").read_bytes()
    assert (dest / ".dvc" / "config").is_file()
    assert "no_scm" not in (dest / ".dvc" / "config").read_text()   # dvc exp needs git
    assert "/cache" in (dest / ".dvc" / ".gitignore").read_text().split()
    assert not list(dest.rglob("__pycache__"))
    assert json.loads((dest / MARKER).read_text())["repository"] == str(ROOT.resolve())
    # one commit holding the pipeline files and the params; nothing left uncommitted, no data, no cache
    assert run_tool(["git", "rev-list", "--count", "HEAD"], dest).stdout.strip() == "1"
    tracked = set(run_tool(["git", "ls-files"], dest).stdout.split())
    assert {"params.yaml", "dvc.yaml", "Snakefile", ".dvc/config", ".dvc/.gitignore", "data/.gitignore"} <= tracked
    assert not any(f.startswith(("data/", ".dvc/cache", ".dvc/tmp")) for f in tracked - {"data/.gitignore"})
    assert MARKER not in tracked
    assert not run_tool(["git", "status", "--porcelain"], dest).stdout.strip()
    assert workspace_params_source(dest) == "params.quick.yaml"
    assert workspace_params_source(ROOT) is None


def test_resync_replaces_pipeline_files_and_keeps_outputs(tmp_path):
    dest = sync_workspace(tmp_path / "ws", QUICK, repo=ROOT)
    (dest / "data" / "result.txt").write_text("kept")
    (dest / "dvc.lock").write_text("schema: '2.0'\n")
    stray = dest / "workflow" / "rules" / "deleted_upstream.smk"
    stray.write_text("# gone after a sync")
    (dest / "dvc.yaml").write_text("edited by hand")
    os.utime(dest / "params.yaml", (1, 1))
    sync_workspace(dest, QUICK, repo=ROOT)
    assert (dest / "data" / "result.txt").read_text() == "kept"
    assert (dest / "dvc.lock").exists()
    assert not stray.exists()
    assert (dest / "dvc.yaml").read_bytes() == (ROOT / "dvc.yaml").read_bytes()
    # unchanged params are not rewritten (Snakemake compares mtimes)
    assert (dest / "params.yaml").stat().st_mtime == 1


def test_a_directory_that_is_not_a_workspace_is_never_overwritten(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("precious")
    with pytest.raises(WorkspaceError, match=r"mine: exists and is not a gfm workspace"):
        sync_workspace(dest, QUICK, repo=ROOT)
    assert (dest / "notes.txt").read_text() == "precious" and len(list(dest.iterdir())) == 1


def test_the_repository_itself_is_refused(tmp_path):
    with pytest.raises(WorkspaceError, match="cannot be the repository"):
        sync_workspace(ROOT, QUICK, repo=ROOT)


def test_bad_preset_is_refused_before_anything_is_written(tmp_path):
    bad = tmp_path / "params.bad.yaml"
    doc = yaml.safe_load(QUICK.read_text())
    doc["split"]["train"] = 1.5
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ParamsError) as info:
        sync_workspace(tmp_path / "ws", bad, repo=ROOT)
    assert any("split.train" in p for p in info.value.problems)
    assert not (tmp_path / "ws").exists()
    with pytest.raises(WorkspaceError, match="params.nope.yaml: no such params file"):
        sync_workspace(tmp_path / "ws", tmp_path / "params.nope.yaml", repo=ROOT)


def test_a_preset_without_the_keys_dvc_tracks_is_refused_naming_them(tmp_path):
    """The loader fills a left-out section with its defaults; DVC stops at the first stage that tracks it
    (`gfm commit`: "dvc commit failed"), so the workspace refuses the preset first, naming every such key."""
    doc = yaml.safe_load(QUICK.read_text())
    del doc["evaluate"], doc["generalize"]
    doc["accelerate"] = {"models": [], "horizons": doc["accelerate"]["horizons"]}
    preset = tmp_path / "params.lean.yaml"
    preset.write_text(yaml.safe_dump(doc))
    with pytest.raises(WorkspaceError, match=r"params.lean.yaml: accelerate.stores, evaluate, generalize: missing; "
                                             r"DVC tracks these keys"):
        sync_workspace(tmp_path / "ws", preset, repo=ROOT)
    assert not (tmp_path / "ws").exists()


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["workspace", str(tmp_path / "ws"), "--params", str(QUICK), "--repo", str(ROOT)]) == 0
    assert "snakemake --cores all && gfm commit" in capsys.readouterr().out   # what make run runs there
    assert main(["workspace", str(tmp_path / "x"), "--params", str(tmp_path / "missing.yaml"), "--repo", str(ROOT)]) == 2
    assert "missing.yaml: no such params file" in capsys.readouterr().err
