"""Hostile cases of `gfm workspace`, of the driver hand-overs and of Snakemake's --configfile: the source tree
and the user's folders stay intact, a failed command leaves nothing behind, and each refusal is one line.

Workspaces are made from a throwaway copy of the repository's pipeline files (a refusal that failed would
damage the copy, never this checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT, TINY, tool_env
from gfm.cli import main
from gfm.tools.workspace import MARKER, PIPELINE_FILES, sync_workspace


def _snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` with its bytes (links by target), to show that nothing changed."""
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            out[rel] = ("link", os.readlink(p)) if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The pipeline files of this repository (what a workspace copies) and the tiny params, in a throwaway
    folder; a test that changes it undoes the change."""
    root = tmp_path_factory.mktemp("source") / "repo"
    root.mkdir()
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, root / name)
    shutil.copy2(TINY, root / "params.tiny.yaml")
    return root


def _refused(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _no_leftovers(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if ".gfm-new-" in p.name or p.name.startswith(".gfm-sync-")]
    assert not left, left


# --- where a workspace may live ------------------------------------------------------------------------------
INSIDE = ["src/x", "src", "src/gfm/deep/er", "workflow/rules/ws", "profiles/p", "ws", "data/ws", "build"]


@pytest.mark.parametrize("where", INSIDE)
def test_a_workspace_inside_the_source_tree_is_refused_before_copying(source, where, capsys):
    before = _snapshot(source)
    line = _refused(["workspace", str(source / where), "--params", str(source / "params.tiny.yaml"),
                     "--repo", str(source)], capsys)
    assert "refusing to use it" in line and "build/<preset>" in line, line
    assert _snapshot(source) == before, "the source tree changed"


def test_build_is_the_place_inside_the_repository_and_is_not_copied(source):
    before = {k: v for k, v in _snapshot(source).items() if not k.startswith("build")}
    first = sync_workspace(source / "build" / "quick", source / "params.tiny.yaml", repo=source)
    second = sync_workspace(source / "build" / "other", source / "params.tiny.yaml", repo=source)
    assert (first / MARKER).is_file() and (second / MARKER).is_file()
    assert not (second / "build").exists() and not (second / "src" / "build").exists()
    after = {k: v for k, v in _snapshot(source).items() if not k.startswith("build")}
    assert after == before, "the source tree outside build/ changed"
    sync_workspace(first, source / "params.tiny.yaml", repo=source)   # and a sync there works
    shutil.rmtree(source / "build")


def test_a_link_that_makes_the_copy_include_itself_is_refused_and_cleaned_up(source, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine\n")
    link = source / "src" / "link"
    link.symlink_to(outside, target_is_directory=True)   # src/ now leads to the workspace's parent
    before = _snapshot(outside)
    try:
        line = _refused(["workspace", str(outside / "ws"), "--params", str(source / "params.tiny.yaml"),
                         "--repo", str(source)], capsys)
    finally:
        link.unlink()
    assert "the copy would include itself" in line, line
    assert _snapshot(outside) == before


# --- markers that do not prove a workspace -------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_workspace(source, tmp_path_factory) -> Path:
    return sync_workspace(tmp_path_factory.mktemp("real") / "ws", source / "params.tiny.yaml", repo=source)


def _plant(kind: str, user: Path, real: Path, source: Path) -> None:
    marker = user / MARKER
    if kind == "copied":
        shutil.copy2(real / MARKER, marker)
    elif kind == "empty-json":
        marker.write_text("{}\n")
    elif kind == "older-format":   # what gfm workspace wrote before markers named their folder
        marker.write_text(json.dumps({"repository": str(source), "params": str(source / "params.tiny.yaml")}))
    elif kind == "other-inode":
        doc = json.loads((real / MARKER).read_text())
        doc["directory"]["inode"] += 1
        marker.write_text(json.dumps(doc))
    elif kind == "not-json":
        marker.write_bytes(b"\xff\xfe not json")
    elif kind == "symlink":
        marker.symlink_to(real / MARKER)
    elif kind == "directory":
        marker.mkdir()
    else:
        raise AssertionError(kind)


PLANTED = ["copied", "empty-json", "older-format", "other-inode", "not-json", "symlink", "directory"]


@pytest.mark.parametrize("kind", PLANTED)
def test_a_planted_marker_does_not_make_a_folder_a_workspace(source, real_workspace, tmp_path, kind, capsys):
    user = tmp_path / "mine"
    (user / "src").mkdir(parents=True)
    (user / "src" / "analysis.py").write_text("print('precious')\n")
    (user / "dvc.yaml").write_text("stages: {}\n")
    (user / "notes.txt").write_text("precious\n")
    _plant(kind, user, real_workspace, source)
    before = _snapshot(user)
    line = _refused(["workspace", str(user), "--params", str(source / "params.tiny.yaml"), "--repo", str(source)], capsys)
    assert "not a workspace that gfm workspace made here" in line and "nothing was changed" in line, line
    assert _snapshot(user) == before
    _no_leftovers(user)


def test_a_copied_workspace_is_not_synced_but_the_original_is(source, real_workspace, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(real_workspace, copy, symlinks=True)
    before = _snapshot(copy)
    line = _refused(["workspace", str(copy), "--params", str(source / "params.tiny.yaml"), "--repo", str(source)], capsys)
    assert "belongs to another folder" in line, line
    assert _snapshot(copy) == before
    assert main(["workspace", str(real_workspace), "--params", str(source / "params.tiny.yaml"),
                 "--repo", str(source)]) == 0


# --- a failed creation leaves nothing, and the retry works ---------------------------------------------------
def _dvc_missing(monkeypatch) -> None:
    from gfm.drivers import process

    real_tool = process.tool

    def tool(name: str) -> str:
        if name == "dvc":
            raise process.DriverError("'dvc' not found next to python nor on PATH; it comes with gfm's "
                                      "`pipeline` extra")
        return real_tool(name)
    monkeypatch.setattr(process, "tool", tool)


def test_a_failed_creation_leaves_nothing_and_the_retry_works(source, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "new" / "parents" / "ws"
    argv = ["workspace", str(dest), "--params", str(source / "params.tiny.yaml"), "--repo", str(source)]
    with monkeypatch.context() as m:
        _dvc_missing(m)
        line = _refused(argv, capsys)
    assert "'dvc' not found" in line, line
    assert not (tmp_path / "new").exists(), "the parent folders the failed call made are still there"
    assert main(argv) == 0
    assert (dest / MARKER).is_file() and (dest / ".dvc").is_dir() and (dest / ".git").is_dir()
    _no_leftovers(dest.parent)


def test_a_failure_into_an_existing_empty_folder_keeps_that_folder(source, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "empty"
    dest.mkdir()
    with monkeypatch.context() as m:
        _dvc_missing(m)
        _refused(["workspace", str(dest), "--params", str(source / "params.tiny.yaml"), "--repo", str(source)], capsys)
    assert dest.is_dir() and not any(dest.iterdir())
    _no_leftovers(tmp_path)
    assert sync_workspace(dest, source / "params.tiny.yaml", repo=source) == dest and (dest / MARKER).is_file()


def test_an_interrupted_creation_leaves_nothing(source, tmp_path, monkeypatch, capsys):
    from gfm.drivers import process

    real_run = process.run_tool

    def interrupted(args, root, **kw):
        if "commit" in args:
            raise KeyboardInterrupt
        return real_run(args, root, **kw)
    monkeypatch.setattr(process, "run_tool", interrupted)
    assert main(["workspace", str(tmp_path / "ws"), "--params", str(source / "params.tiny.yaml"),
                 "--repo", str(source)]) == 130
    assert not (tmp_path / "ws").exists()
    _no_leftovers(tmp_path)


# --- the drivers outside a DVC repository ----------------------------------------------------------------------
DRIVER_CALLS = [["adopt"], ["adopt", "--pull"], ["commit"], ["commit", "--dry-run"], ["commit", "--push"],
                ["commit", "--profile", "profiles/slurm"]]


@pytest.mark.parametrize("argv", DRIVER_CALLS, ids=[" ".join(a) for a in DRIVER_CALLS])
def test_drivers_outside_a_dvc_repository_say_so_in_one_line(argv, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine\n")
    before = _snapshot(plain)
    line = _refused([*argv, "--repo", str(plain)], capsys)
    assert f"{plain.resolve()}: not a DVC repository" in line and "gfm workspace" in line, line
    assert _snapshot(plain) == before


def test_drivers_below_a_dvc_repository_name_its_root(real_workspace, capsys):
    line = _refused(["commit", "--dry-run", "--repo", str(real_workspace / "src")], capsys)
    assert f"the DVC repository holding it is {real_workspace.resolve()}" in line, line


# --- Snakemake's --configfile ---------------------------------------------------------------------------------
@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """What Snakemake needs to plan: the pipeline files (rules read their code deps from dvc.yaml), the tiny
    params as params.yaml and the quick preset beside it."""
    root = tmp_path / "flow"
    root.mkdir()
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, root / name)
    shutil.copy2(TINY, root / "params.yaml")
    shutil.copy2(ROOT / "params.quick.yaml", root / "params.quick.yaml")
    return root


def _snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=root, env=tool_env(), capture_output=True,
                          text=True, timeout=300)


def test_snakemake_configfile_is_refused_with_what_to_do(workflow_copy):
    proc = _snakemake(workflow_copy, "--configfile", "params.quick.yaml", "-n")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: --configfile params.quick.yaml: this pipeline reads only params.yaml")
    assert "gfm workspace build/<name> --params FILE" in errors[0]
    assert "Job stats" not in proc.stdout and "jobs" not in proc.stdout.lower(), "jobs were planned"
    # naming params.yaml itself changes nothing, so it is accepted
    same = _snakemake(workflow_copy, "--configfile", "params.yaml", "-n", "--quiet")
    assert same.returncode == 0, same.stdout + same.stderr
