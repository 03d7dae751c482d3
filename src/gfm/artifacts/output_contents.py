"""What each kind of stage output may hold, and the marker that names its kind: the recognisers behind
:data:`gfm.artifacts.outputs.KINDS` (a kind's ``own``), which tell a stage's own artifact from anything else at its path.

Each recogniser returns None when everything at the path belongs to such an artifact, else what is there
instead, in the words :func:`gfm.artifacts.outputs.claim_output` refuses with. The marker alone proves nothing about a
file someone put into a marked directory, so the contents are judged too.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from gfm.artifacts.zarr_files import SNAKEMAKE_STAMP, foreign_files_on_disk

__all__ = [
    "MARKER_KEY", "MARKER_FILE", "WORKSPACE_MARKER", "REFUSAL_KIND", "COUNT_LIMIT", "marker_kind", "count_files",
    "plain_file", "json_kind", "own_trajectory_store", "own_forecasts", "own_models", "own_model", "own_plots",
    "own_report", "own_workspace", "own_refusal_json",
]

WORKSPACE_MARKER = ".gfm-workspace.json"  # written into every gfm workspace (gfm.tools.workspace)
MARKER_KEY = "gfm_output"  # {"kind": ..., "gfm": ...}: a JSON output's key, a store's root attribute
MARKER_FILE = ".gfm-output.json"  # {MARKER_KEY: marker} in every other directory output
REFUSAL_KIND = "model refusal JSON"  # the kind name of a model's refusal of a store (gfm.artifacts.refusals)
COUNT_LIMIT = 10_000  # files counted in a refused directory before "more than"
_JSON_BYTES = 256 << 20  # a JSON output larger than this is not parsed to find its marker (never ours)


# --- markers -----------------------------------------------------------------------------------------------
def _json_of(path: Path, limit: int) -> object:
    """The JSON in the regular file ``path`` (not a link), or None: missing, larger than ``limit``, not JSON."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None


def marker_kind(path: Path) -> str | None:
    """The kind named by the gfm marker at ``path`` (written by any gfm version), None if it carries none: a
    directory's :data:`MARKER_FILE` or, for a Zarr store, its root attributes; a JSON file's top-level key."""
    if path.is_dir():
        data = _json_of(path / MARKER_FILE, 1 << 16)
        if data is None:
            data = _zarr_attrs(path)
    else:
        data = _json_of(path, _JSON_BYTES)
    mark = data.get(MARKER_KEY) if isinstance(data, dict) else None
    kind = mark.get("kind") if isinstance(mark, dict) else None
    return kind if isinstance(kind, str) else None


# --- recognisers --------------------------------------------------------------------------------------------
def count_files(paths: list[Path], root: Path) -> tuple[int, str | None]:
    """Files (links and special files included, links not followed) at or under ``paths``, up to a limit,
    and the first one relative to ``root``."""
    n, first = 0, None
    for top in paths:
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirs, files in os.walk(top):
                dirs.sort()
                for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(dirpath, d))):
                    n += 1
                    first = first or os.path.relpath(os.path.join(dirpath, name), root)
                    if n > COUNT_LIMIT:
                        return n, first
        else:
            n += 1
            first = first or os.path.relpath(top, root)
        if n > COUNT_LIMIT:
            break
    return n, first


def _holds(paths: list[Path], root: Path, what: str) -> str:
    n, first = count_files(paths, root)
    if n == 0:
        return f"holds directories that are not {what} (e.g. {os.path.relpath(paths[0], root)})"
    count = f"more than {COUNT_LIMIT} files" if n > COUNT_LIMIT else f"{n} file{'s' if n != 1 else ''}"
    return f"holds {count} that {'is' if n == 1 else 'are'} not {what} (e.g. {first})"


def _entries(path: Path, what: str, legit: Callable[[Path], bool], required: str | None = None) -> str | None:
    """A directory artifact judged by its entries: None if every entry is ``legit`` (Snakemake's timestamp
    aside) and ``required`` is there, else what is wrong."""
    bad = [e for e in sorted(path.iterdir()) if not legit(e)
           and not (e.name in (SNAKEMAKE_STAMP, MARKER_FILE) and plain_file(e))]
    if bad:
        return _holds(bad, path, what)
    if required is not None and not (path / required).is_file():
        return f"holds no {required}, so it is not {what}"
    return None


def plain_file(p: Path, names: set[str] | None = None) -> bool:
    return (names is None or p.name in names) and p.is_file() and not p.is_symlink()


def _plain_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _zarr_attrs(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) and meta.get("node_type") == "group" else None
    return attrs if isinstance(attrs, dict) else None


def _zarr_artifact(path: Path, what: str, forecast: bool) -> str | None:
    attrs = _zarr_attrs(path)
    if attrs is None or not isinstance(attrs.get("schema_version"), int) \
            or (attrs.get("kind") == "forecast") != forecast or (not forecast and "layout" not in attrs):
        found = _describe(path)
        return f"holds {found}, not {what}" if found else _holds(sorted(path.iterdir()), path, what)
    foreign = foreign_files_on_disk(path)
    if foreign:
        n = len(foreign)
        return (f"holds {what} and {n} file{'s' if n != 1 else ''} that {'is' if n == 1 else 'are'} not part of "
                f"it (e.g. {foreign[0].relative_to(path)})")
    return None


def _describe(path: Path) -> str | None:
    """Another artifact of this pipeline at ``path`` (gfm check's recognition), as a phrase, or None."""
    from gfm.artifacts.verdict import artifact_kind as _kind

    try:
        kind = _kind(path)
    except OSError:
        return None
    return None if kind is None else f"a {kind}"


def own_trajectory_store(path: Path) -> str | None:
    return _zarr_artifact(path, "a trajectory store", forecast=False)


def _own_refusal(p: Path) -> bool:
    """A model refusal JSON (gfm.artifacts.refusals) written by a stage: a plain file marked as one."""
    return plain_file(p) and marker_kind(p) == REFUSAL_KIND and own_refusal_json(p) is None


def own_forecasts(path: Path) -> str | None:
    """forecast --out: a directory of ``<model>.zarr`` forecast stores and ``<model>.refused.json`` refusals."""
    return _entries(path, "forecast stores (<model>.zarr) or refusals (<model>.refused.json)",
                    lambda e: (e.name.endswith(".zarr") and _plain_dir(e)
                               and _zarr_artifact(e, "a forecast store", forecast=True) is None)
                    or (e.name.endswith(".refused.json") and _own_refusal(e)))


_MODEL_FILES = {"config.json", "weights.safetensors", "train_log.csv"}


def own_model(path: Path) -> str | None:
    return _entries(path, "a model directory (config.json, weights.safetensors, train_log.csv)",
                    lambda e: plain_file(e, _MODEL_FILES), required="config.json")


def own_models(path: Path) -> str | None:
    """train --out: summary.json and one model directory per dataset seed, or (a model that refused the store)
    refused.json alone."""
    if (path / "refused.json").exists() or (path / "refused.json").is_symlink():
        return _entries(path, "a model's refusal of a store (refused.json alone)",
                        lambda e: e.name == "refused.json" and _own_refusal(e), required="refused.json")
    return _entries(path, "trained models (summary.json and <seed>/ model directories)",
                    lambda e: plain_file(e, {"summary.json"})
                    or (e.name.isdigit() and _plain_dir(e) and own_model(e) is None), required="summary.json")


def own_plots(path: Path) -> str | None:
    names = {"mse_vs_horizon.csv", "trajectory.csv"}
    return _entries(path, "evaluate's plot data (mse_vs_horizon.csv, trajectory.csv)",
                    lambda e: plain_file(e, names))


def own_report(path: Path) -> str | None:
    def legit(e: Path) -> bool:
        if e.name == "figures":
            return _plain_dir(e) and all(f.suffix in (".png", ".svg") and plain_file(f) for f in e.iterdir())
        return plain_file(e, {"summary.md", "summary.html", "claims.json"})

    return _entries(path, "a report (summary.md, summary.html, claims.json, figures/)", legit, required="summary.md")


def own_workspace(path: Path) -> str | None:
    return None if (path / WORKSPACE_MARKER).is_file() else _holds(sorted(path.iterdir()), path, "a gfm workspace")


def json_kind(what: str, keys: set[str]) -> Callable[[Path], str | None]:
    def own(path: Path) -> str | None:
        try:
            if path.stat().st_size > 256 << 20:
                raise ValueError("too large")
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return f"is a file that is not {what} (not JSON)"
        if not isinstance(data, dict) or not keys <= set(data):
            shown = ", ".join(sorted(data)[:4]) if isinstance(data, dict) else type(data).__name__
            return f"is a JSON file that is not {what} (keys {shown or 'none'})"
        return None
    return own


# a model's refusal of a store (gfm.artifacts.refusals): written inside a trained-models or forecast directory, never alone
own_refusal_json = json_kind("a model refusal JSON", {"model", "kind", "refused"})
