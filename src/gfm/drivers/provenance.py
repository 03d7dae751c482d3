"""Which stages ``dvc status`` reports must be re-run before ``dvc commit``: decided from content and from
what Snakemake recorded, never from file modification times (a shared filesystem whose nodes' clocks
disagree gets those wrong either way).

For a stage whose dependencies or params differ from ``dvc.lock``, the question is whether its outputs were
made from the current ones. Per changed dependency:

* a **file Snakemake checksummed** (a rule input up to 1 MB: split JSONs, model indexes, code files that
  are rule inputs): the checksum recorded with every output of the stage must equal the file's content now;
  a directory whose files are all such inputs (a code subpackage DVC tracks as one dependency) likewise, file
  by file;
* a **directory made by another stage** (a store, a model directory): every output of the stage must have
  been made by a job Snakemake started after the jobs that made that directory (the order of Snakemake's
  own job records, written by the one host that runs Snakemake);
* **params**: Snakemake's recorded params of every output equal what the current params give
  (``snakemake --list-changes params``);
* anything else (a code file or directory that is not a rule input, so Snakemake recorded nothing about
  it): the stage is stale when ``dvc.lock`` holds a different content for it, and current on its first
  commit (nothing was recorded before to differ from).

A stage whose outputs are missing or incomplete, whose command changed, or that Snakemake has no record
for while its dependencies changed, is stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gfm.drivers.dvc import PARAMS_FILE, DvcStage
from gfm.drivers.snakemake import Record

__all__ = ["StageVerdict", "Evidence", "stale_stages", "params_reported", "format_verdicts", "within"]

# Snakemake registers every job of a group job at one submission, in no fixed order, so the records of an
# upstream and a downstream job of one group can be out of order by this much; two separate Snakemake runs
# are always further apart (a run takes seconds to start).
SAME_SUBMISSION_S = 1.0


@dataclass(frozen=True)
class StageVerdict:
    """Why a stage that ``dvc status`` reports needs re-running before ``dvc commit`` (or not)."""

    name: str
    stale: bool
    reason: str


@dataclass(frozen=True)
class Evidence:
    """What the decision reads besides ``dvc status``.

    Attributes:
        records: Snakemake's finished-job record of each output (``snakemake.read_records``).
        incomplete: outputs whose job never finished.
        locked: stages ``dvc.lock`` holds a record of.
        params_changed: outputs whose recorded params differ from the current ones (None: not asked,
            because no stage reports a params change).
    """

    records: Mapping[str, Record]
    incomplete: frozenset[str] = frozenset()
    locked: frozenset[str] = frozenset()
    params_changed: frozenset[str] | None = None


def within(path: str, outs: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``outs`` or lies inside one of them."""
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _tree_files(path: Path, root: Path) -> list[str]:
    """The files under ``path`` as repository paths, without ``__pycache__`` (which .dvcignore leaves out)."""
    return sorted(p.relative_to(root).as_posix() for p in path.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def _changes(entries: list) -> tuple[str, list[str], bool]:
    """(a reason that makes the stage stale by itself, changed dependency paths, params changed)."""
    reason, deps, params = "", [], False
    for change in entries:
        if change == "changed command" or (isinstance(change, dict) and "changed command" in change):
            reason = "its command changed"
        elif isinstance(change, dict) and "changed deps" in change:
            for path in change["changed deps"]:
                if Path(path).name == PARAMS_FILE:
                    params = True
                else:
                    deps.append(path)
        elif isinstance(change, str) and change != "always changed":
            reason = reason or change
    return reason, deps, params


def params_reported(status: dict) -> bool:
    """Whether ``dvc status`` reports a params change for any stage (only then is Snakemake asked)."""
    return any(_changes(entries)[2] for entries in status.values())


def _dep_verdict(dep: str, made: list[Record], producers: list[Record], locked: bool, root: Path) -> str:
    """Why ``dep``'s change makes the stage stale ('' when its outputs were made from its current content)."""
    path = root / dep
    # the outputs whose jobs read dep (the stage's other outputs are made from those, inside the stage)
    readers = [r for r in made if any(within(i, [dep]) or within(dep, [i]) for i in r.inputs)] or made
    if path.is_file() and all(dep in r.checksums for r in readers):
        now = _sha256(path)
        differ = [r.output for r in readers if r.checksums[dep] != now]
        return f"{dep} differs from the content {differ[0]} was made from" if differ else ""
    files = _tree_files(path, root) if path.is_dir() else []
    if files and all(f in r.checksums for r in readers for f in files):
        # a code directory DVC tracks as one dep while Snakemake sees (and checksums) its files one by one
        now = {f: _sha256(root / f) for f in files}
        differ = [(f, r.output) for r in readers for f in files if r.checksums[f] != now[f]]
        return f"{differ[0][0]} differs from the content {differ[0][1]} was made from" if differ else ""
    if producers:
        first = min(r.started for r in readers)
        later = [p for p in producers if p.started > first + SAME_SUBMISSION_S]
        return (f"{dep} was re-made ({later[0].output}) after its outputs were made" if later else "")
    if locked:
        return f"{dep} changed since dvc.lock and Snakemake recorded nothing about it (not a rule input)"
    return ""


def _producers(dep: str, stage: DvcStage, evidence: Evidence) -> list[Record]:
    """The records of the outputs (of other stages' jobs) that make up ``dep``."""
    return [r for p, r in evidence.records.items()
            if (within(p, [dep]) or within(dep, [p])) and not within(p, stage.outs)]


def stale_stages(status: dict, stages: Sequence[DvcStage], evidence: Evidence,
                 root: str | Path = ".") -> list[StageVerdict]:
    """Decide, for each stage ``dvc status`` reports, whether its outputs must be re-made before commit.

    Args:
        status: ``dvc status --json`` (``dvc.status``).
        stages: ``dvc.dvc_stages(root)``.
        evidence: Snakemake's records and what ``dvc.lock`` holds.
        root: the repository root.

    Returns:
        One verdict per stage named in ``status``, in ``stages`` order.
    """
    root = Path(root)
    verdicts = []
    for stage in [s for s in stages if s.name in status]:
        reason, deps, params = _changes(status[stage.name])
        missing = [o for o in stage.outs if not (root / o).exists()]
        made = [r for p, r in evidence.records.items() if within(p, stage.outs)]
        unfinished = sorted(p for p in evidence.incomplete if within(p, stage.outs))
        if reason:
            verdicts.append(StageVerdict(stage.name, True, reason))
        elif missing:
            verdicts.append(StageVerdict(stage.name, True, f"output missing: {', '.join(missing)}"))
        elif unfinished:
            verdicts.append(StageVerdict(stage.name, True, f"output incomplete: {', '.join(unfinished)}"))
        elif not deps and not params:
            verdicts.append(StageVerdict(stage.name, False, "only its outputs changed"))
        elif not made:
            verdicts.append(StageVerdict(stage.name, True, "its dependencies changed and Snakemake holds no "
                                                           "record of what its outputs were made from"))
        else:
            locked = stage.name in evidence.locked
            why = [w for d in deps if (w := _dep_verdict(d, made, _producers(d, stage, evidence), locked, root))]
            if params and evidence.params_changed and any(r.output in evidence.params_changed for r in made):
                why.append("params changed since its outputs were made")
            verdicts.append(StageVerdict(stage.name, bool(why), why[0] if why else
                                         "Snakemake's records show its outputs were made from its current "
                                         "dependencies"))
    return verdicts


def format_verdicts(verdicts: Sequence[StageVerdict]) -> str:
    """One line per stage: ``re-run  name: reason`` or ``commit  name: reason``."""
    return "\n".join(f"{'re-run' if v.stale else 'commit'}  {v.name}: {v.reason}" for v in verdicts)
