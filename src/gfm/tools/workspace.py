"""Presets: run the pipeline on another params file without touching the repository's own outputs.

``params.yaml`` is the study, and DVC tracks it by that name. A preset such as ``params.quick.yaml`` is the same
DAG with other numbers; running it in place would overwrite the study's ``data/`` and ``dvc.lock``. So a preset
runs in a *workspace*: ``build/<preset>/``, a git + DVC project of its own holding copies of the pipeline files
(Snakefile, dvc.yaml, workflow/, profiles/, src/) and the preset as its ``params.yaml``. ``snakemake --cores all
&& gfm commit`` (what ``make run`` runs) or ``dvc repro`` there runs the real pipeline, and re-running it after
an edit re-runs only what the edit made stale, because each sync rewrites the copies (DVC hashes them) and
leaves ``data/`` and ``dvc.lock`` alone.

    gfm workspace build/quick --params params.quick.yaml    # create or sync
    cd build/quick && snakemake --cores all && gfm commit   # run it (or: dvc repro)
    make run PRESET=quick                                    # the same, in one command

A workspace is a git repository (``dvc exp run`` needs one) whose first commit holds the pipeline files and
the params, with DVC's ignores in place (``.dvc/.gitignore`` keeps the cache out, ``data/.gitignore`` the
outputs), so the README's experiment commands work there as written.

src/ is copied because dvc.yaml lists modules as stage dependencies; the code that runs is the installed
``gfm`` package, which is this repository's src/ (editable install), so the copy matches what runs.

Safety (RELIABILITY.md, "Workspaces and drivers"): a workspace is never made inside the repository except
below its ``build/`` (which nothing copies, and git and DVC ignore), nor inside a folder it copies. A new one
is built in a hidden sibling folder and renamed into place only when complete, so a failure leaves nothing
behind. An existing folder is synced only if its marker proves that ``gfm workspace`` made that very folder:
the marker names the folder's inode, which a marker copied or written into another folder does not match.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from gfm.artifacts.output_contents import WORKSPACE_MARKER
from gfm.base.atomic import write_text_atomic
from gfm.base.errors import GFMError, one_line
from gfm.tools.plots_page import use_offline_page

__all__ = ["PIPELINE_FILES", "MARKER", "BUILD_DIR", "WorkspaceError", "sync_workspace", "workspace_params_source"]

# What a workspace needs from the repository: the DAG (both drivers), the profiles, and the code dvc.yaml
# lists as dependencies.
PIPELINE_FILES = ("Snakefile", "dvc.yaml", ".dvcignore", "workflow", "profiles", "src")
MARKER = WORKSPACE_MARKER   # written into every workspace; a directory without a valid one is never overwritten
BUILD_DIR = "build"         # the one place inside the repository where workspaces may live (git/DVC-ignored)
MADE_BY = "gfm workspace"
_MARKER_MAX_BYTES = 64 << 10

# The workspace's own ignores (written once; DVC adds the outputs it caches outside data/ to this file).
# Snakemake's state and logs and DVC's plot pages are machine-local; the marker names this machine's inode.
GITIGNORE = """\
# gfm workspace: what git never tracks here (DVC adds the outputs it caches, e.g. /reports)
/.snakemake/
/logs/
/dvc_plots/
/reports
__pycache__/
*.egg-info/
.snakemake_timestamp
/.gfm-workspace.json
"""
# data/ holds DVC-managed outputs only; git never tracks them (the same file as the repository's data/).
DATA_GITIGNORE = """\
# data/ holds DVC-managed outputs only; git never tracks them.
*
!.gitignore
"""


class WorkspaceError(GFMError):
    """A workspace cannot be created or synced (the message names the path and why)."""


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or n.endswith(".pyc")}


def _guarded_ignore(*within: Path):
    """copytree's ``ignore`` that also refuses to descend into ``within`` (the folder being built): a symbolic
    link inside a copied tree that leads there would make the copy include itself, without end."""
    real = [os.path.realpath(p) for p in within]

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = os.path.realpath(directory)
        if any(here == r or here.startswith(r + os.sep) for r in real):
            raise WorkspaceError(one_line(f"{directory}: leads into the workspace being built (a symbolic link?); "
                                          "the copy would include itself; remove the link"))
        return _ignore(directory, names)
    return ignore


def _location_problem(dest_abs: Path, repo: Path) -> str | None:
    """Why ``dest_abs`` (resolved, neither the repository nor above it) may not hold a workspace of ``repo``,
    or None. Inside the repository only ``build/<name>`` is allowed: anywhere else the workspace would add
    files to the source tree (and inside a copied folder it would copy itself into itself)."""
    for name in PIPELINE_FILES:
        item = (repo / name).resolve()
        if dest_abs == item or dest_abs.is_relative_to(item):
            return f"lies inside {name}, which a workspace copies (the copy would include itself)"
    build = repo / BUILD_DIR
    if dest_abs.is_relative_to(repo) and not (dest_abs.is_relative_to(build) and dest_abs != build):
        return (f"is inside the repository {repo} but not below its {BUILD_DIR}/ (a workspace there would add "
                "files to the source tree)")
    return None


def _marker_problem(dest: Path) -> str | None:
    """None when ``dest``'s marker proves that ``gfm workspace`` made this very folder, else why not."""
    marker = dest / MARKER
    if marker.is_symlink() or not marker.is_file():
        return f"{MARKER} is not a regular file"
    if marker.stat().st_size > _MARKER_MAX_BYTES:
        return f"{MARKER} is larger than any marker gfm writes"
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{MARKER} is not the JSON gfm writes"
    if not isinstance(doc, dict) or doc.get("made_by") != MADE_BY or not isinstance(doc.get("directory"), dict):
        return f"{MARKER} was not written by this version of gfm workspace"
    # The inode alone: it survives a rename, and differs in every other folder of the filesystem; the device
    # number is not compared because a network filesystem's differs from one client machine to the next.
    if doc["directory"].get("inode") != dest.stat().st_ino:
        return f"{MARKER} belongs to another folder (copied or written here)"
    return None


def _write_marker(dest: Path, repo: Path, params: Path) -> None:
    doc = {"made_by": MADE_BY, "repository": str(repo), "params": str(params.resolve()),
           "directory": {"inode": dest.stat().st_ino}}
    write_text_atomic(dest / MARKER, json.dumps(doc, indent=1) + "\n")


def workspace_params_source(root: str | Path = ".") -> str | None:
    """The file name of the params file a workspace at ``root`` was made from (its params.yaml is a copy),
    or None when ``root`` is not a workspace this marker proves."""
    root = Path(root)
    if not (root / MARKER).exists() or _marker_problem(root) is not None:
        return None
    params = json.loads((root / MARKER).read_text()).get("params")
    return Path(params).name if isinstance(params, str) and params else None


def _git() -> str:
    found = shutil.which("git")
    if found is None:
        raise WorkspaceError("git: not found on PATH; a workspace is a git repository (dvc exp needs one); "
                             "install git and run gfm workspace again")
    return found


def _copy_pipeline(repo: Path, into: Path, *, guard: tuple[Path, ...]) -> None:
    for name in PIPELINE_FILES:
        src, out = repo / name, into / name
        if src.is_dir():
            shutil.copytree(src, out, ignore=_guarded_ignore(*guard))
        else:
            shutil.copy2(src, out)


def dvc_keys_missing(text: bytes) -> list[str]:
    """The params keys dvc.yaml reads (every stage's ``params`` and ``foreach``, from the stage table) that the
    params text does not write: the loader fills a left-out section with its defaults, DVC does not."""
    from gfm.base.params_yaml import parse_yaml
    from gfm.pipeline import STAGES

    data = parse_yaml(text.decode())
    keys = sorted({k for st in STAGES for k in (*st.params, *([st.foreach] if st.foreach else []))
                   if "{" not in k})
    missing = []
    for key in keys:
        node = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and not any(key.startswith(f"{m}.") for m in missing):
            missing.append(key)
    return missing


def _declared_paths_absolute(text: bytes, base: Path) -> bytes:
    """The preset's text, with the relative path of every declared store (a task of kind ``recorded``) made
    absolute: it is relative to the preset's directory, and the workspace's params.yaml lies elsewhere. Only
    those values change (ruamel's round trip keeps the rest as written); a preset without one is copied as is."""
    import io

    from ruamel.yaml import YAML

    if b"recorded" not in text:
        return text
    editor = YAML(typ="rt")
    editor.preserve_quotes = True
    editor.width = 4096
    doc = editor.load(text)
    changed = False
    for entry in (doc.get("tasks") or {}).values():
        if isinstance(entry, dict) and entry.get("kind") == "recorded" and isinstance(entry.get("path"), str) \
                and not os.path.isabs(entry["path"]):
            entry["path"] = str(base / entry["path"])
            changed = True
    if not changed:
        return text
    out = io.StringIO()
    editor.dump(doc, out)
    return out.getvalue().encode()


def _build(staging: Path, dest_abs: Path, repo: Path, params: Path, text: bytes) -> None:
    """A complete new workspace in the empty folder ``staging``: git and DVC first (dvc init then writes
    .dvc/.gitignore), then the copies, the ignores, the first commit, and the marker last."""
    from gfm.drivers.process import run_tool, tool

    git = _git()
    run_tool([git, "init", "-q"], staging, what=f"git init in {staging}")
    run_tool([tool("dvc"), "init", "-q"], staging, what=f"dvc init in {staging}")
    use_offline_page(staging)   # dvc plots show there fills workflow/plots/page/template.html (no CDN)
    _copy_pipeline(repo, staging, guard=(staging, dest_abs))   # .dvcignore: the repository's replaces DVC's
    (staging / "params.yaml").write_bytes(text)
    (staging / ".gitignore").write_text(GITIGNORE)
    (staging / "data").mkdir()
    (staging / "data" / ".gitignore").write_text(DATA_GITIGNORE)
    run_tool([git, "add", "-A"], staging, what="git add in the new workspace")
    # The tool's own commit: its author is gfm workspace, and the user's signing and hooks do not apply to it.
    run_tool([git, "-c", f"user.name={MADE_BY}", "-c", "user.email=gfm-workspace@localhost",
              "-c", "commit.gpgsign=false", "commit", "-q", "--no-verify",
              "-m", f"gfm workspace: the pipeline files, and {params.name} as params.yaml"],
             staging, what="git commit in the new workspace")
    _write_marker(staging, repo, params)


def _create(dest_abs: Path, repo: Path, params: Path, text: bytes) -> None:
    """Build in a hidden sibling folder and rename it into place (over an empty folder, if one is there); on
    any failure or interruption remove the sibling and the parent folders this call made, and nothing else."""
    made_parents = [p for p in reversed(dest_abs.parents) if not p.exists()]
    dest_abs.parent.mkdir(parents=True, exist_ok=True)
    staging = dest_abs.with_name(f".{dest_abs.name}.gfm-new-{os.getpid()}-{secrets.token_hex(4)}")
    staging.mkdir()   # a fresh name: ours alone (and, unlike mkdtemp's, with the umask's ordinary mode)
    try:
        _build(staging, dest_abs, repo, params, text)
        os.rename(staging, dest_abs)           # POSIX: replaces an empty directory, refuses a non-empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(made_parents):
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def _update(dest_abs: Path, repo: Path, params: Path, text: bytes) -> None:
    """Sync a proven workspace: each pipeline file or folder is copied beside its old one first, then swapped
    in, so a failure mid-copy leaves the old copies; outputs, dvc.lock and git history are kept."""
    staging = Path(tempfile.mkdtemp(prefix=".gfm-sync-", dir=dest_abs))
    try:
        _copy_pipeline(repo, staging, guard=(staging, dest_abs))
        for name in PIPELINE_FILES:
            out = dest_abs / name
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)          # replaced whole, so files deleted upstream disappear here too
            elif out.exists() or out.is_symlink():
                out.unlink()
            os.rename(staging / name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Written only when it changed: DVC compares hashes, but Snakemake also compares mtimes.
    params_out = dest_abs / "params.yaml"
    if not params_out.is_file() or params_out.read_bytes() != text:
        write_text_atomic(params_out, text.decode())
    (dest_abs / "data").mkdir(exist_ok=True)
    use_offline_page(dest_abs)   # also upgrades a workspace made before the offline page existed
    _write_marker(dest_abs, repo, params)


def sync_workspace(dest: str | Path, params: str | Path, *, repo: str | Path = ".") -> Path:
    """Create ``dest`` as a git + DVC project running ``repo``'s pipeline on ``params``, or bring an existing
    one up to date (pipeline files and params replaced, outputs kept). ``params`` is validated first, and
    every refusal comes before anything is written. Returns ``dest``."""
    from gfm.artifacts.outputs import unsafe_location
    from gfm.config import load_params

    repo, dest, params = Path(repo).resolve(), Path(dest), Path(params)
    if not params.is_file():
        raise WorkspaceError(f"{params}: no such params file (presets are params.<name>.yaml in the repository root)")
    load_params(params)   # ParamsError names the file, the key and what is allowed
    text = _declared_paths_absolute(params.read_bytes(), params.resolve().parent)
    missing = dvc_keys_missing(text)
    if missing:   # Snakemake would run it; DVC (gfm commit, dvc repro) would stop at the first stage that reads one
        raise WorkspaceError(f"{params}: {', '.join(missing)}: missing; DVC tracks these keys (dvc.yaml) and "
                             "refuses a params file without them; write each (e.g. `evaluate: {}`, "
                             "`accelerate: {stores: {}}`) to take its defaults")
    missing = [name for name in PIPELINE_FILES if not (repo / name).exists()]
    if missing:
        raise WorkspaceError(f"{repo}: not the pipeline repository (missing {', '.join(missing)})")
    dest_abs = dest.resolve()
    if dest_abs == repo or repo.is_relative_to(dest_abs):
        raise WorkspaceError(f"{dest}: a workspace cannot be the repository or contain it")
    why = unsafe_location(dest, repository_ok=True)  # /, ~, '.', '..': never made or synced into (gfm.artifacts.outputs)
    if why is not None:
        raise WorkspaceError(f"{dest}: workspace path {why}; refusing to use it (choose e.g. build/<preset>)")
    why = _location_problem(dest_abs, repo)
    if why is not None:
        raise WorkspaceError(one_line(f"{dest}: workspace path {why}; refusing to use it (choose "
                                      f"{BUILD_DIR}/<preset> or a folder outside the repository)"))
    if os.path.lexists(dest_abs / MARKER):
        problem = _marker_problem(dest_abs)
        if problem is not None:
            raise WorkspaceError(one_line(
                f"{dest}: not a workspace that gfm workspace made here ({problem}); nothing was changed; "
                "choose another path, or remove the folder if it is an old workspace you no longer need"))
        _update(dest_abs, repo, params, text)
        return dest
    if dest_abs.exists() and (not dest_abs.is_dir() or any(dest_abs.iterdir())):
        raise WorkspaceError(f"{dest}: exists and is not a gfm workspace (no {MARKER}); choose another path "
                             "or remove it")
    _create(dest_abs, repo, params, text)
    return dest
