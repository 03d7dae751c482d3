"""Presets: run the pipeline on another params file without touching the repository's own outputs.

``params.yaml`` is the study, and DVC tracks it by that name. A preset such as ``params.quick.yaml`` is the same
DAG with other numbers; running it in place would overwrite the study's ``data/`` and ``dvc.lock``. So a preset
runs in a *workspace*: ``build/<preset>/``, a DVC project (no git) holding copies of the pipeline files
(Snakefile, dvc.yaml, workflow/, profiles/, src/) and the preset as its ``params.yaml``. ``dvc repro`` there
runs the real pipeline, and re-running it after an edit re-runs only what the edit made stale, because each
sync rewrites the copies (DVC hashes them) and leaves ``data/`` and ``dvc.lock`` alone.

    gfm workspace build/quick --params params.quick.yaml    # create or sync; then: cd build/quick && dvc repro
    make run PRESET=quick                                    # the same, and runs it

src/ is copied because dvc.yaml lists modules as stage dependencies; the code that runs is the installed
``gfm`` package, which is this repository's src/ (editable install), so the copy matches what runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gfm.errors import GFMError
from gfm.outputs import WORKSPACE_MARKER
from gfm.plots_page import use_offline_page

__all__ = ["PIPELINE_FILES", "MARKER", "WorkspaceError", "sync_workspace"]

# What a workspace needs from the repository: the DAG (both drivers), the profiles, and the code dvc.yaml
# lists as dependencies.
PIPELINE_FILES = ("Snakefile", "dvc.yaml", ".dvcignore", "workflow", "profiles", "src")
MARKER = WORKSPACE_MARKER   # written into every workspace; a directory without it is never overwritten


class WorkspaceError(GFMError):
    """A workspace cannot be created or synced (the message names the path and why)."""


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or n.endswith(".pyc")}


def sync_workspace(dest: str | Path, params: str | Path, *, repo: str | Path = ".") -> Path:
    """Create ``dest`` as a DVC project running ``repo``'s pipeline on ``params``, or bring an existing one up
    to date (pipeline files and params replaced, outputs kept). ``params`` is validated first. Returns ``dest``."""
    from gfm.config import load_params
    from gfm.outputs import unsafe_location

    repo, dest, params = Path(repo).resolve(), Path(dest), Path(params)
    if not params.is_file():
        raise WorkspaceError(f"{params}: no such params file (presets are params.<name>.yaml in the repository root)")
    load_params(params)   # ParamsError names the file, the key and what is allowed
    missing = [name for name in PIPELINE_FILES if not (repo / name).exists()]
    if missing:
        raise WorkspaceError(f"{repo}: not the pipeline repository (missing {', '.join(missing)})")
    dest_abs = dest.resolve()
    if dest_abs == repo or repo.is_relative_to(dest_abs):
        raise WorkspaceError(f"{dest}: a workspace cannot be the repository or contain it")
    why = unsafe_location(dest, repository_ok=True)  # /, ~, '.', '..': never made or synced into (gfm.outputs)
    if why is not None:
        raise WorkspaceError(f"{dest}: workspace path {why}; refusing to use it (choose e.g. build/<preset>)")
    if dest.exists() and not (dest / MARKER).exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise WorkspaceError(f"{dest}: exists and is not a gfm workspace (no {MARKER}); choose another path "
                                 "or remove it")

    dest.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        src, out = repo / name, dest / name
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)          # replaced whole, so files deleted upstream disappear here too
        elif out.exists() or out.is_symlink():
            out.unlink()
        if src.is_dir():
            shutil.copytree(src, out, ignore=_ignore)
        else:
            shutil.copy2(src, out)
    # Written only when it changed: DVC compares hashes, but Snakemake also compares mtimes.
    params_out = dest / "params.yaml"
    text = params.read_bytes()
    if not params_out.exists() or params_out.read_bytes() != text:
        params_out.write_bytes(text)
    (dest / "data").mkdir(exist_ok=True)
    if not (dest / ".dvc").is_dir():
        from gfm.drivers.process import run_tool, tool

        run_tool([tool("dvc"), "init", "--no-scm", "-q"], dest, what=f"dvc init in {dest}")
    use_offline_page(dest)   # dvc plots show there fills workflow/plots/page/template.html (no CDN)
    (dest / MARKER).write_text(json.dumps({"repository": str(repo), "params": str(params.resolve())}, indent=1) + "\n")
    return dest

