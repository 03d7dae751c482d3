"""What a stage may replace: its own earlier artifact, or nothing (RELIABILITY.md, "outputs").

Every stage writes its output beside the target (``<out>.tmp`` / ``<out>.partial``) and renames it into place.
Every output carries a marker written by the command that made it: ``{"kind": <kind name>, "gfm": <version>}``
under :data:`~gfm.artifacts.output_contents.MARKER_KEY`, at the top of a JSON output, in a trajectory store's root
attributes, and in the :data:`~gfm.artifacts.output_contents.MARKER_FILE` of any other directory output (written into its
temporary directory before anything else).
Before anything is written, and again right before the rename, :func:`claim_output` decides whether the path
may be replaced:

* never a dangerous location, whatever it holds: an empty path or ``.``, ``/``, the home directory, the current
  directory or any directory above it, a repository root (a directory holding ``.git``, ``dvc.yaml`` or a
  ``Snakefile``), or a path below a file;
* absent, or an empty directory: fine (Snakemake and DVC delete declared outputs before a job runs, so this
  is the pipeline's normal case);
* this stage's own artifact: its marker names this kind, and it holds nothing but such an artifact's files
  (:data:`KINDS`); a symbolic link to one: the link is replaced, its target is left alone;
* anything else is refused with an :class:`OutputError` naming the path and what it holds, and left
  untouched: user files, whatever their names; another stage's artifact; an artifact of this kind without a
  marker (written before markers existed, or made by hand), which the user removes if it is an old output.

A leftover temporary path of an interrupted run is removed only if its marker names this stage's kind (or it
is an empty directory); anything else there is refused the same way. Readers never look at markers: an
artifact without one is as good an input as before.

Usage (every stage)::

    tmp = open_temp_dir(out, MODELS)        # refuses, or a temporary directory beside out holding the marker
    ...write into tmp...
    replace_output(tmp, out, MODELS)        # checks out again, removes the old artifact, renames

    write_json_output(out, SPLIT, data)     # JSON outputs: marked, checked, written beside out, renamed

What each kind's artifact may hold (its recogniser) and the marker's names are in :mod:`gfm.artifacts.output_contents`.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gfm._version import __version__
from gfm.artifacts.output_contents import (
    COUNT_LIMIT,
    MARKER_FILE,
    MARKER_KEY,
    REFUSAL_KIND,
    WORKSPACE_MARKER,
    count_files,
    json_kind,
    marker_kind,
    own_forecasts,
    own_model,
    own_models,
    own_plots,
    own_refusal_json,
    own_report,
    own_trajectory_store,
    own_workspace,
    plain_file,
)
from gfm.base.atomic import write_text_atomic
from gfm.base.errors import GFMError, one_line

__all__ = [
    "OutputError", "Kind", "KINDS", "marker", "marked",
    "claim_output", "unsafe_location", "open_temp_dir", "replace_output", "remove_output", "write_text_output",
    "write_json_output", "discard_temp",
    "TRAJECTORY_STORE", "FORECASTS", "MODELS", "MODEL", "PLOTS", "REPORT", "SPLIT", "METRICS", "GENERALIZE",
    "ACCELERATE", "WORKSPACE", "REFUSAL",
]

_OLD_TMP_MARKER = ".gfm-writing"  # the marker a gfm before MARKER_FILE wrote into a temporary directory


class OutputError(GFMError, ValueError):
    """An output path this stage must not replace (the message names it and what it holds)."""


@dataclass(frozen=True)
class Kind:
    """One kind of stage output, named in its marker. ``own(path)`` judges the contents: None if everything at
    ``path`` belongs to such an artifact, else what is there instead (the marker alone proves nothing about a
    file someone put into a marked directory). ``marker_of(path)``: the kind named by the marker at ``path``
    (default :func:`marker_kind`; a format that cannot hold :data:`~gfm.artifacts.output_contents.MARKER_KEY` brings
    its own)."""

    name: str
    is_dir: bool
    own: Callable[[Path], str | None]
    marker_of: Callable[[Path], str | None] | None = None

    def marked_as(self, path: Path) -> str | None:
        return (self.marker_of or marker_kind)(path)


# --- markers -----------------------------------------------------------------------------------------------
def marker(kind: Kind) -> dict[str, str]:
    """The marker of a ``kind`` output written by this gfm."""
    return {"kind": kind.name, "gfm": __version__}


def marked(kind: Kind, data: dict) -> dict:
    """``data`` (a JSON output, a store's root attributes) with the marker of ``kind`` as its first key."""
    return {MARKER_KEY: marker(kind), **{k: v for k, v in data.items() if k != MARKER_KEY}}


# --- the kinds (what each may hold: gfm.artifacts.output_contents) ---------------------------------------------------
TRAJECTORY_STORE = Kind("trajectory store", True, own_trajectory_store)
FORECASTS = Kind("forecast directory", True, own_forecasts)
MODELS = Kind("trained-models directory", True, own_models)
MODEL = Kind("model directory", True, own_model)
PLOTS = Kind("plot-data directory", True, own_plots)
REPORT = Kind("report directory", True, own_report)
# a workspace is marked by its own file (gfm.tools.workspace), which predates the other markers
WORKSPACE = Kind("gfm workspace", True, own_workspace,
                 lambda p: "gfm workspace" if (p / WORKSPACE_MARKER).is_file() else None)
SPLIT = Kind("split JSON", False, json_kind("a split JSON", {"datasets"}))
METRICS = Kind("metrics JSON", False, json_kind("a metrics JSON", {"models", "counts"}))
GENERALIZE = Kind("generalisation metrics JSON", False, json_kind("a generalisation metrics JSON", {"pairs"}))
ACCELERATE = Kind("accelerate metrics JSON", False, json_kind("an accelerate metrics JSON", {"plain", "models"}))
# a model's refusal of a store (gfm.artifacts.refusals): written inside a trained-models or forecast directory, never alone
REFUSAL = Kind(REFUSAL_KIND, False, own_refusal_json)
KINDS = {k.name: k for k in (TRAJECTORY_STORE, FORECASTS, MODELS, MODEL, PLOTS, REPORT, WORKSPACE, SPLIT, METRICS,
                             GENERALIZE, ACCELERATE, REFUSAL)}


# --- the checks --------------------------------------------------------------------------------------------
def unsafe_location(path: str | Path, *, repository_ok: bool = False) -> str | None:
    """Why ``path`` may never be replaced by a stage whatever it holds, or None. ``repository_ok``: a
    directory holding ``.git`` / ``dvc.yaml`` / ``Snakefile`` is not refused for that (a gfm workspace is one)."""
    text = os.fspath(path)
    if text in ("", "."):
        return "is empty or '.', the current directory"
    p = Path(text)
    absolute = Path(os.path.abspath(p))
    real = p.resolve()
    how = "is" if absolute == real else f"resolves to {real}:"
    if absolute == Path(absolute.anchor) or real == Path(real.anchor):
        return f"{how} the root directory"
    home = Path.home()
    if real == home.resolve() or absolute == home:
        return f"{how} your home directory"
    cwd = Path.cwd().resolve()
    if real == cwd or absolute == Path(os.getcwd()):
        return f"{how} the current directory"
    if real in cwd.parents or absolute in Path(os.getcwd()).parents:
        return f"{how} a directory above the current one"
    for marker in () if repository_ok else (".git", "dvc.yaml", "Snakefile"):
        if (real / marker).exists():
            return f"{how} a repository root (it holds {marker})"
    for parent in p.parents:  # the first existing directory above it must be a directory
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"is below {parent}, which is a file, not a directory"
            break
    return None


def _refuse(path: Path, why: str) -> OutputError:
    return OutputError(one_line(f"{path}: output path {why}; refusing to replace it (move it away or choose "
                                "another path)"))


def _judge(p: Path, kind: Kind) -> str | None:
    """None if ``p`` (an existing non-empty directory or a regular file) is this stage's own artifact: its
    marker names ``kind`` and nothing foreign is inside. Names and contents alone never make it ours."""
    found = kind.marked_as(p)
    if found == kind.name:
        return kind.own(p)
    verb = "holds" if p.is_dir() else "is"
    if found is not None:
        return f"{verb} a {found} (so its gfm marker says), not a {kind.name}"
    if kind.own(p) is None:  # the files of an output written before markers existed, or a look-alike
        return (f"{verb} a {kind.name} without a gfm ownership marker (written by a gfm before markers, or not "
                "by gfm; if it is an old output you no longer need, delete it yourself)")
    return kind.own(p)


def claim_output(path: str | Path, kind: Kind) -> Path:
    """Check that this stage may (re)place ``path`` with a new ``kind`` artifact; returns it as a Path.

    Raises:
        OutputError: a dangerous location, or something at ``path`` that is not this stage's own artifact.
    """
    why = unsafe_location(path)
    p = Path(path)
    if why is None:
        why = _what_blocks(p, kind)
    if why is not None:
        raise _refuse(p, why)
    return p


def _what_blocks(p: Path, kind: Kind) -> str | None:
    try:
        st = p.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror})"
    try:
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(p)
            if not p.exists():
                return f"is a symbolic link to {target}, which does not exist"
            inner = _what_blocks(p.resolve(), kind)
            return None if inner is None else f"is a symbolic link to {target}, which {inner}"
        if stat.S_ISDIR(st.st_mode):
            if not kind.is_dir:
                n, _ = count_files([p], p)
                held = f"more than {COUNT_LIMIT} files" if n > COUNT_LIMIT else f"{n} file{'s' if n != 1 else ''}"
                return f"is a directory (holding {held}), not a {kind.name}"
            if not any(p.iterdir()):
                return None
            return _judge(p, kind)
        if not stat.S_ISREG(st.st_mode):
            return f"is not a regular file or directory (a {_special(st.st_mode)}), not a {kind.name}"
        if kind.is_dir:
            return f"is a file ({p.name}, {st.st_size} bytes), not a {kind.name}"
        return _judge(p, kind)
    except OSError as exc:  # unreadable: never replaced
        return f"cannot be inspected ({exc.strerror or exc})"


def _special(mode: int) -> str:
    return "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"


def remove_output(path: str | Path, kind: Kind) -> None:
    """Remove ``path`` after claiming it: this stage's own artifact, an empty directory or a link to an own
    artifact (only the link goes). Nothing at ``path`` is fine."""
    p = claim_output(path, kind)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def _clear_leftover(tmp: Path, kind: Kind) -> None:
    """Remove a temporary path left by an interrupted run, only if it is ours: an empty directory, or one
    whose marker (written before anything else) names this kind, or holds the temporary marker of a gfm before
    ownership markers (a run killed before an upgrade must not block the next one)."""
    if not tmp.exists() and not tmp.is_symlink():
        return
    if tmp.is_dir() and not tmp.is_symlink() and (not any(tmp.iterdir()) or kind.marked_as(tmp) == kind.name
                                                  or plain_file(tmp / _OLD_TMP_MARKER)):
        shutil.rmtree(tmp)
        return
    why = _what_blocks(tmp, kind) or f"is not a temporary {kind.name} of this stage"
    raise OutputError(one_line(f"{tmp}: temporary path of the output {why}; refusing to remove it (move it "
                               "away or choose another output path)"))


def open_temp_dir(out: str | Path, kind: Kind, *, suffix: str = ".tmp") -> Path:
    """Claim ``out`` and return a temporary directory ``<out><suffix>`` beside it (a leftover of an
    interrupted run of this stage is removed first) that holds only the marker
    :data:`~gfm.artifacts.output_contents.MARKER_FILE`: it marks the unfinished output as ours, and stays in the finished
    one."""
    out = claim_output(out, kind)
    tmp = out.with_name(out.name + suffix)
    _clear_leftover(tmp, kind)
    tmp.mkdir(parents=True)
    (tmp / MARKER_FILE).write_text(json.dumps({MARKER_KEY: marker(kind)}) + "\n")
    return tmp


def discard_temp(tmp: str | Path) -> None:
    """Remove a temporary directory this run created (after a failure)."""
    shutil.rmtree(tmp, ignore_errors=True)


def replace_output(tmp: str | Path, out: str | Path, kind: Kind, *, keep_tmp_on_refusal: bool = False) -> Path:
    """Put the finished ``tmp`` at ``out``: claim ``out`` again (it may have changed while the stage ran),
    remove the old artifact there and rename. A refused ``out`` raises :class:`OutputError` and the
    temporary output is discarded (unless ``keep_tmp_on_refusal``: a resumable store keeps it)."""
    tmp, out = Path(tmp), Path(out)
    try:
        remove_output(out, kind)
    except OutputError:
        if not keep_tmp_on_refusal:
            discard_temp(tmp)
        raise
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def write_text_output(out: str | Path, kind: Kind, text: str) -> Path:
    """Write a file output whose ``text`` carries its marker: claim ``out``, then write it atomically
    (:func:`gfm.base.atomic.write_text_atomic`), claiming it again right before the rename: it may have changed
    while the stage ran. JSON outputs use :func:`write_json_output`, which adds the marker."""
    out = claim_output(out, kind)
    return write_text_atomic(out, text, check=lambda: claim_output(out, kind))


def write_json_output(out: str | Path, kind: Kind, data: dict, *, sort_keys: bool = True,
                      allow_nan: bool = True) -> Path:
    """Write the JSON output ``data`` with the marker of ``kind`` (:func:`marked`) as :func:`write_text_output`
    does; one space of indent, like every JSON output of the pipeline."""
    text = json.dumps(marked(kind, data), indent=1, sort_keys=sort_keys, allow_nan=allow_nan) + "\n"
    return write_text_output(out, kind, text)
