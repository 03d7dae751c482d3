"""One DAG, two drivers: Snakemake and DVC must describe the same pipeline.

Everything is derived from the real tools, not from a list of stages: DVC's own resolution of dvc.yaml
(foreach/matrix expanded, `gfm.drivers.dvc_stages`) and Snakemake's own DAG (`snakemake --summary`).

* Structure (no jobs run; the default and the tiny study): every Snakemake output lies in exactly one DVC
  out and is made by a rule that stage allows; every stage is `snakemake --cores all --allowed-rules ...
  -- <targets>` with no machine flags; data and code inputs of a stage's jobs are its DVC deps and vice
  versa; the rules file of each allowed rule is a dep. (dvc.yaml is generated from gfm.pipeline's stage
  table; this checks the generated file against Snakemake's own DAG.)
* Params (on a run of the tiny study): a params key is a change for DVC exactly when it is one for
  Snakemake's params trigger, per top-level section, judged by the tools themselves (`dvc status`,
  `snakemake --summary` status "params changed").
* What the code reads: for one item of every stage, every params value the stage does NOT list is
  perturbed (keeping the file valid); then DVC must see no change, Snakemake must see no change, and
  re-running the stage (`dvc repro -f -s`) must give byte-identical outputs. A key the code reads but the
  DVC stage does not list changes the outputs and fails the test (shown by `test_a_missing_key_is_caught`).
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_tool
from gfm import drivers
from gfm.base.errors import ParamsError
from gfm.config import parse_params
from gfm.stages.train import model_problems
from repo_helpers import make_repo
from snakemake_helpers import snakemake_summary

pytestmark = pytest.mark.timeout(1800)

MACHINE_FLAGS = {"--profile", "--executor", "-j", "--jobs", "--cluster", "--resources", "--default-resources",
                 "--set-resources", "--workflow-profile"}


def _covers(path: str, key: str) -> bool:
    """True when DVC out/dep/param ``key`` covers ``path`` (equal, or ``path`` lies inside it)."""
    sep = "." if "/" not in key and "/" not in path else "/"
    return path == key or path.startswith(key + sep)


# ---------------------------------------------------------------------------------------------- structure

@pytest.fixture(scope="module", params=["params.yaml", "params.quick.yaml", "params.jump.yaml", "tests/params.tiny.yaml"])
def dry_repo(request, tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("dag") / "repo", params=ROOT / request.param, small=False,
                     dvc_config=False)


def _rule_files() -> dict[str, str]:
    found = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for name in re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M):
            found[name] = str(smk.relative_to(ROOT))
    return found


def test_same_outputs_rules_and_commands(dry_repo):
    stages = drivers.dvc_stages(dry_repo)
    assert stages
    problems = []
    for st in stages:
        argv = shlex.split(st.cmd)
        if argv[:4] != ["snakemake", "--cores", "all", "--allowed-rules"] or not st.rules or not st.targets:
            problems.append(f"{st.name}: cmd {st.cmd!r} is not `snakemake --cores all --allowed-rules R.. -- T..`")
        if flags := MACHINE_FLAGS & set(argv):
            problems.append(f"{st.name}: machine flags {sorted(flags)} in cmd (they belong in a profile)")
        for t in st.targets:
            if not any(_covers(t, o) for o in st.outs):
                problems.append(f"{st.name}: target {t} is not one of its outs {st.outs}")
        for rule in st.rules:
            smk = _rule_files().get(rule)
            if smk is None:
                problems.append(f"{st.name}: --allowed-rules {rule}, but no workflow/rules/*.smk defines it")
            elif smk not in st.deps:
                problems.append(f"{st.name}: rule {rule} lives in {smk}, which is not in its deps")
    outs = {o: st for st in stages for o in st.outs}
    jobs = [j for j in drivers.snakemake_jobs(dry_repo) if j["output"]]
    made = {path for j in jobs for path in j["output"]}
    job_inputs: dict[str, set[str]] = {st.name: set() for st in stages}
    for job in jobs:
        for path in job["output"]:
            owners = [o for o in outs if _covers(path, o)]
            if len(owners) != 1:
                problems.append(f"Snakemake output {path} (rule {job['rule']}) lies in {len(owners)} DVC outs {owners}")
                continue
            st = outs[owners[0]]
            if job["rule"] not in st.rules:
                problems.append(f"{path} is made by rule {job['rule']}, but its stage {st.name} allows {st.rules}")
            for i in job["input"]:
                job_inputs[st.name].add(i)
                if not any(_covers(i, o) for o in st.outs) and not any(_covers(i, d) for d in st.deps):
                    problems.append(f"{st.name}: Snakemake input {i} of {path} is not a DVC dep")
    for out, st in outs.items():
        if not any(_covers(p, out) for p in made):
            problems.append(f"DVC out {out} of {st.name} holds no Snakemake output")
    for st in stages:
        for d in st.deps:
            # data and code alike: a code dep is an input of the stage's rules, so Snakemake re-runs on code edits
            if d.startswith(("data/", "src/")) and not any(_covers(i, d) for i in job_inputs[st.name]):
                problems.append(f"{st.name}: DVC dep {d} is not an input of any of its Snakemake jobs")
    assert not problems, "\n".join(problems)


def test_every_dvc_param_key_exists(dry_repo):
    doc = yaml.safe_load((dry_repo / "params.yaml").read_text())
    missing = []
    for st in drivers.dvc_stages(dry_repo):
        for key in st.params:
            node = doc
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{st.name}: {key}")
                    break
                node = node[part]
    assert not missing, f"params keys DVC stages list but params.yaml lacks: {missing}"


# ------------------------------------------------------------------------------------------- perturbation

def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def _set(doc: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        doc = doc[p]
    doc[last] = value


def _allowed(doc: dict, key: str) -> list[str]:
    probe = copy.deepcopy(doc)
    _set(probe, key, "__probe__")
    try:
        parse_params(probe, source="probe")
    except ParamsError as exc:
        for problem in exc.problems:
            if problem.startswith(key + ":") and "expected one of" in problem:
                return re.findall(r"'([^']*)'", problem.split("expected one of", 1)[1])
    return []


def _candidates(doc: dict, key: str, value, names: set[str]):
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2 + 1, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value * 1.5, value + 1.0]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
        return [value[:-1] + [value[-1] + 1], value + [max(value) + 1]]
    if isinstance(value, str) and value not in names:   # names of stores/tasks/models shape the DAG
        return [a for a in _allowed(doc, key) if a != value]
    return []


def perturb(doc: dict, keys: list[str], names: set[str]) -> tuple[dict, list[str]]:
    """Change every leaf under ``keys`` while keeping the params valid; return (new doc, changed leaves)."""
    out = copy.deepcopy(doc)
    changed = []
    for leaf, value in list(_leaves(doc)):
        if not any(_covers(leaf, k) for k in keys):
            continue
        for cand in _candidates(out, leaf, value, names):
            trial = copy.deepcopy(out)
            _set(trial, leaf, cand)
            try:
                params = parse_params(trial, source="perturbed")
            except ParamsError:
                continue
            if model_problems(params, sorted(params.models)):  # the stage CLIs check model options too
                continue
            out = trial
            changed.append(leaf)
            break
    return out, changed


def _names(stages) -> set[str]:
    """Every path component of every output: perturbing a value that names a path changes the DAG."""
    return {part.removesuffix(".zarr").removesuffix(".json") for st in stages for o in st.outs
            for part in o.split("/")}


# ------------------------------------------------------------------------------------------ on a real run

@pytest.fixture(scope="module")
def ran_repo(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("dagrun") / "repo", dvc_config=False)
    run_tool(["dvc", "repro"], repo, timeout=1700)
    run_tool(["git", "add", "dvc.lock"], repo)
    run_tool(["git", "commit", "-qm", "run"], repo)
    return repo


class _Edit:
    """Write a perturbed params.yaml (and optionally dvc.yaml); restore files and Snakemake's metadata."""

    FILES = ("params.yaml", "dvc.yaml", "dvc.lock")

    def __init__(self, repo: Path):
        self.repo = repo

    def __enter__(self):
        self.saved = {f: (self.repo / f).read_bytes() for f in self.FILES}
        self.meta = Path(tempfile.mkdtemp(dir=self.repo.parent)) / "metadata"
        shutil.copytree(self.repo / ".snakemake" / "metadata", self.meta)
        return self

    def __exit__(self, *exc):
        for f, data in self.saved.items():
            (self.repo / f).write_bytes(data)
        shutil.rmtree(self.repo / ".snakemake" / "metadata")
        shutil.move(self.meta, self.repo / ".snakemake" / "metadata")
        # a re-run with perturbed params may have changed outputs: put back what dvc.lock records
        run_tool(["dvc", "checkout", "-f", "-q"], self.repo)


def _params_changed(repo: Path) -> tuple[set[str], set[str]]:
    """(DVC stages whose params changed, Snakemake outputs whose params changed), asked of the tools."""
    status = drivers.dvc_status(repo)
    dvc = {name for name, changes in status.items()
           for c in changes if isinstance(c, dict) and "params.yaml" in c.get("changed deps", {})}
    snk = {r["output_file"] for r in snakemake_summary(repo) if r["status"] == "params changed"}
    return dvc, snk


def _owner(stages, path: str) -> str:
    return next(st.name for st in stages if any(_covers(path, o) for o in st.outs))


def test_params_sections_agree(ran_repo):
    """Perturb one top-level section at a time: DVC and Snakemake must call the same stages changed."""
    stages = drivers.dvc_stages(ran_repo)
    doc = yaml.safe_load((ran_repo / "params.yaml").read_text())
    names = _names(stages)
    problems, tried = [], 0
    for section in doc:
        new, changed = perturb(doc, [section], names)
        if not changed:
            continue
        tried += 1
        with _Edit(ran_repo):
            (ran_repo / "params.yaml").write_text(yaml.safe_dump(new, sort_keys=False))
            dvc, snk = _params_changed(ran_repo)
        snk_stages = {_owner(stages, o) for o in snk}
        if dvc != snk_stages:
            problems.append(f"section {section!r} (changed {changed}): DVC re-runs {sorted(dvc - snk_stages)} "
                            f"but Snakemake does not; Snakemake re-runs {sorted(snk_stages - dvc)} but DVC does not")
    assert tried >= 3, "too few params sections could be perturbed for the test to mean anything"
    assert not problems, "\n".join(problems)


def _check_unlisted(repo: Path, stage: drivers.DvcStage, stages) -> list[str]:
    """Perturb every params value ``stage`` does not list; return what noticed (nothing may)."""
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    # `device` is read but listed nowhere on purpose: a machine setting whose CPU/GPU outputs differ by
    # round-off (docs/architecture.md §6); test_profiles.py checks that it invalidates nothing.
    unlisted = [leaf for leaf, _ in _leaves(doc)
                if leaf != "device" and not any(_covers(leaf, k) for k in stage.params)]
    new, changed = perturb(doc, unlisted, _names(stages))
    assert changed, f"{stage.name}: nothing to perturb"
    problems = []
    lock_before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage.name]["outs"]
    with _Edit(repo):
        (repo / "params.yaml").write_text(yaml.safe_dump(new, sort_keys=False))
        dvc, snk = _params_changed(repo)
        if stage.name in dvc:
            problems.append(f"DVC sees a params change for {stage.name} although only unlisted keys changed")
        mine = {o for o in snk if _owner(stages, o) == stage.name}
        if mine:
            problems.append(f"Snakemake's params trigger re-runs {sorted(mine)} on keys {stage.name} does not "
                            f"list in dvc.yaml (perturbed: {changed})")
        run_tool(["dvc", "repro", "-f", "-s", stage.name], repo, timeout=900)
        lock_after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage.name]["outs"]
        if lock_after != lock_before:
            problems.append(f"re-running {stage.name} with only unlisted keys perturbed changed its outputs: the "
                            f"code reads a key its DVC stage does not list (perturbed: {changed})")
    return problems


def _first_of_each_group() -> list[str]:
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("group", _first_of_each_group())
def test_stage_reads_only_the_params_it_lists(ran_repo, group):
    stages = drivers.dvc_stages(ran_repo)
    stage = next(st for st in stages if st.name == group or st.name.startswith(group + "@"))
    problems = _check_unlisted(ran_repo, stage, stages)
    assert not problems, "\n".join(problems)


def test_a_missing_key_is_caught(ran_repo):
    """The check above can fail: drop `seed` from the generate stages' params and it must notice."""
    text = (ran_repo / "dvc.yaml").read_text()
    stages = drivers.dvc_stages(ran_repo)
    gen = next(st for st in stages if st.name.startswith("generate@"))
    assert "seed" in gen.params
    with _Edit(ran_repo):
        edited = re.sub(r"(\n\s+params:\n)(\s+)- seed\n", r"\1", text, count=1)
        assert edited != text
        (ran_repo / "dvc.yaml").write_text(edited)
        lock = yaml.safe_load((ran_repo / "dvc.lock").read_text())
        for entry in lock["stages"].values():   # the lock must match the edited stage list
            entry.get("params", {}).get("params.yaml", {}).pop("seed", None)
        (ran_repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
        weakened = next(st for st in drivers.dvc_stages(ran_repo) if st.name == gen.name)
        assert "seed" not in weakened.params
        problems = _check_unlisted(ran_repo, weakened, stages)
    assert any("Snakemake's params trigger" in p for p in problems), problems
    assert any("changed its outputs" in p for p in problems), problems
